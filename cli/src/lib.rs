//! The `sterling` command's library: run the bank in one process ([`bank`]) and act on a
//! running bank ([`tools`]). Tests use it to run the real services end to end.

pub mod bank;
pub mod bench;
pub mod dead_letters;
pub mod deploy;
pub mod load;
pub mod operate;
pub mod processor;
pub mod reconcile;
pub mod scaffold;
pub mod settlement;
pub mod tools;
