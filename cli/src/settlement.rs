//! The daily settlement reconciliation: the processor's settlement file for a day checked
//! against the ledger's journal of the card scheme's settlement accounts, every mismatch
//! listed.
//!
//! The file is CSV with a header line and one movement per line:
//!
//! ```text
//! message_id,type,amount,currency
//! clr_0193...,clearing,350,GBP
//! rfd_0193...,refund,1000,GBP
//! frc_0193...,force_post,3000,GBP
//! ```
//!
//! `amount` is in minor units, always positive; `type` is `clearing`, `refund` or
//! `force_post`. A clearing or force post credits the settlement account, a refund debits it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use sterling_money::Currency;
use sterling_proto::ledger::v1::ListPostingsRequest;

use crate::tools::Clients;

/// One line of the settlement file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementLine {
    /// Line number in the file (1 is the header).
    pub line: usize,
    /// The processor's message id.
    pub message_id: String,
    /// clearing | refund | force_post
    pub kind: String,
    /// Minor units, positive.
    pub amount: i64,
    /// Its currency.
    pub currency: Currency,
}

impl SettlementLine {
    /// The ledger transfer it should be, and the signed amount on the settlement account.
    fn expected(&self) -> (String, i64) {
        match self.kind.as_str() {
            "refund" => (format!("refund:{}", self.message_id), -self.amount),
            "force_post" => (format!("force_post:{}", self.message_id), self.amount),
            _ => (self.message_id.clone(), self.amount),
        }
    }
}

/// A difference between the file and the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// A line that is not a movement.
    Malformed {
        /// Line number.
        line: usize,
        /// Why.
        why: String,
    },
    /// The same message twice in the file.
    Duplicate {
        /// Line number of the second.
        line: usize,
        /// The message.
        message_id: String,
    },
    /// In the file, not in the ledger that day.
    MissingInLedger {
        /// The line.
        line: SettlementLine,
    },
    /// In both, for different amounts.
    AmountDiffers {
        /// The line.
        line: SettlementLine,
        /// What the ledger posted, signed, on the settlement account.
        ledger: i64,
    },
    /// In the ledger that day, not in the file.
    MissingInFile {
        /// The ledger's transfer id.
        transfer_id: String,
        /// Signed amount on the settlement account.
        amount: i64,
        /// Its currency.
        currency: Currency,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Malformed { line, why } => write!(f, "line {line}: {why}"),
            Mismatch::Duplicate { line, message_id } => {
                write!(f, "line {line}: {message_id} is in the file twice")
            }
            Mismatch::MissingInLedger { line } => write!(
                f,
                "line {}: {} {} {} {} is not in the ledger",
                line.line, line.kind, line.message_id, line.amount, line.currency
            ),
            Mismatch::AmountDiffers { line, ledger } => write!(
                f,
                "line {}: {} {} is {} {} in the file, {} in the ledger",
                line.line, line.kind, line.message_id, line.amount, line.currency, ledger
            ),
            Mismatch::MissingInFile {
                transfer_id,
                amount,
                currency,
            } => write!(
                f,
                "ledger: {transfer_id} moved {amount} {currency} and is not in the file"
            ),
        }
    }
}

/// Parses a settlement file; malformed and duplicate lines come back as mismatches.
pub fn parse(text: &str) -> (Vec<SettlementLine>, Vec<Mismatch>) {
    let mut lines = Vec::new();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim();
        if line == 1 || raw.is_empty() {
            continue;
        }
        match parse_line(line, raw) {
            Ok(parsed) => {
                if !seen.insert((parsed.kind.clone(), parsed.message_id.clone())) {
                    problems.push(Mismatch::Duplicate {
                        line,
                        message_id: parsed.message_id,
                    });
                } else {
                    lines.push(parsed);
                }
            }
            Err(why) => problems.push(Mismatch::Malformed { line, why }),
        }
    }
    (lines, problems)
}

fn parse_line(line: usize, raw: &str) -> Result<SettlementLine, String> {
    let fields: Vec<&str> = raw.split(',').map(str::trim).collect();
    let [message_id, kind, amount, currency] = fields[..] else {
        return Err(format!(
            "expected message_id,type,amount,currency; got {} fields",
            fields.len()
        ));
    };
    if message_id.is_empty() || message_id.contains('"') {
        return Err("message_id must be plain text".into());
    }
    if !matches!(kind, "clearing" | "refund" | "force_post") {
        return Err(format!("unknown type {kind:?}"));
    }
    let amount: i64 = amount
        .parse()
        .map_err(|_| format!("amount {amount:?} is not whole minor units"))?;
    if amount <= 0 {
        return Err("amount must be positive".into());
    }
    let currency =
        Currency::from_code(currency).map_err(|_| format!("unknown currency {currency:?}"))?;
    Ok(SettlementLine {
        line,
        message_id: message_id.to_string(),
        kind: kind.to_string(),
        amount,
        currency,
    })
}

/// Checks a day's settlement file against the ledger's journal of the settlement account of
/// each currency in the file (and of `also`); returns every mismatch, none on a clean day.
pub async fn reconcile(
    clients: &Clients,
    text: &str,
    day: &str,
    also: &[Currency],
) -> anyhow::Result<(usize, Vec<Mismatch>)> {
    let (lines, mut mismatches) = parse(text);
    let mut currencies: BTreeSet<&'static str> = also.iter().map(|c| c.code()).collect();
    currencies.extend(lines.iter().map(|l| l.currency.code()));
    let mut ledger: BTreeMap<String, (i64, Currency)> = BTreeMap::new();
    for code in currencies {
        let currency = Currency::from_code(code)?;
        let postings = clients
            .ledger
            .clone()
            .list_postings(ListPostingsRequest {
                account_id: card_processing::payments::settlement_account(currency),
                day: day.to_string(),
            })
            .await;
        let postings = match postings {
            Ok(p) => p.into_inner().postings,
            // No settlement account yet: nothing settled in that currency.
            Err(status) if status.code() == tonic::Code::NotFound => Vec::new(),
            Err(status) => return Err(status.into()),
        };
        for p in postings {
            let amount = p.amount.map_or(0, |m| m.minor_units);
            ledger.insert(p.transfer_id, (amount, currency));
        }
    }
    let matched = lines.len();
    for line in lines {
        let (transfer_id, expected) = line.expected();
        match ledger.remove(&transfer_id) {
            None => mismatches.push(Mismatch::MissingInLedger { line }),
            Some((amount, currency)) if amount != expected || currency != line.currency => {
                mismatches.push(Mismatch::AmountDiffers {
                    line,
                    ledger: amount,
                })
            }
            Some(_) => {}
        }
    }
    for (transfer_id, (amount, currency)) in ledger {
        mismatches.push(Mismatch::MissingInFile {
            transfer_id,
            amount,
            currency,
        });
    }
    Ok((matched, mismatches))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_bad_ones_are_reported() {
        let (lines, problems) = parse(
            "message_id,type,amount,currency\nclr_1,clearing,350,GBP\nclr_1,clearing,350,GBP\nx,tip,1,GBP\ny,refund,-1,GBP\nz,refund,5,ZZZ\n",
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].expected(), ("clr_1".to_string(), 350));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(matches!(problems[0], Mismatch::Duplicate { line: 3, .. }));
    }
}
