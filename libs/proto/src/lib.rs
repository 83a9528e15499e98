//! Generated code for Sterling's contracts in `proto/`: one module per package.
#![allow(missing_docs, clippy::all)]

/// The encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sterling_descriptor.bin"));

/// Shared messages.
pub mod common {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.common.v1");
    }
}

/// The cards service.
pub mod cards {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.cards.v1");
    }
}

/// The fx service.
pub mod fx {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.fx.v1");
    }
}

/// The ledger service.
pub mod ledger {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.ledger.v1");
    }
}

/// The transactions service.
pub mod transactions {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.transactions.v1");
    }
}

/// The card-processing service.
pub mod cardprocessing {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.cardprocessing.v1");
    }
}

/// The merchant service.
pub mod merchant {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.merchant.v1");
    }
}

/// The feed service.
pub mod feed {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.feed.v1");
    }
}

/// The push service.
pub mod push {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.push.v1");
    }
}

/// The webhooks service.
pub mod webhooks {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.webhooks.v1");
    }
}

/// Contracts for exercising the platform in tests and benchmarks.
pub mod testing {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.testing.v1");
    }
}

/// Events on the bus.
pub mod events {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("sterling.events.v1");
    }

    /// Event types, which are also the bus subjects.
    pub mod types {
        /// A card authorisation was approved (`CardAuthorisationDecided`).
        pub const CARD_AUTHORISATION_APPROVED: &str = "card.authorisation.approved";
        /// A card authorisation was declined (`CardAuthorisationDecided`).
        pub const CARD_AUTHORISATION_DECLINED: &str = "card.authorisation.declined";
        /// Every card decision, as a subject filter.
        pub const CARD_AUTHORISATION_ALL: &str = "card.authorisation.*";
        /// card-api declined on its own, without card-processing's decision
        /// (`CardAuthorisationStoodIn`); card-processing makes its record match. Outside
        /// `card.authorisation.*` on purpose: it is a command to card-processing, not news.
        pub const CARD_AUTHORISATION_STOOD_IN: &str = "card.stand_in.declined";
        /// A transaction's merchant was made readable (`TransactionEnriched`).
        pub const TRANSACTION_ENRICHED: &str = "transaction.enriched";
    }
}
