//! Fail points at the step boundaries of the money path, as TiKV uses the `fail` crate.
//!
//! A point does nothing unless the build enables `fail/failpoints` (only test builds do) and a
//! test configures it, e.g. `fail::cfg("ledger::place_hold::after_write", "return(error)")`.
//! The action is the point's argument:
//! - `error`: the step fails with `unavailable.fail_point` (a retryable error, the kind a dead
//!   dependency gives);
//! - `reject`: the step fails with `bad_request.fail_point` (what input that can never be
//!   handled gives; a consumer dead-letters the event at once);
//! - `sleep:<ms>`: the step waits that long without blocking the runtime (past a deadline);
//! - `abort`: the task panics where it stands, as if the process died between two lines.

use std::time::Duration;

use crate::error::{Error, Result};

/// Evaluates the fail point `name`: `Ok(())` when it is off.
pub async fn step(name: &str) -> Result<()> {
    let action = configured(name);
    let Some(action) = action else {
        return Ok(());
    };
    match action.as_str() {
        "error" => Err(Error::unavailable(
            "fail_point",
            format!("fail point {name}"),
        )),
        "reject" => Err(Error::bad_request(
            "fail_point",
            format!("fail point {name}"),
        )),
        "abort" => panic!("fail point {name}: abort"),
        other => {
            if let Some(ms) = other.strip_prefix("sleep:") {
                let ms: u64 = ms.parse().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Ok(())
        }
    }
}

/// The action configured for `name`, if fail points are compiled in and this one is on.
#[allow(unreachable_code, clippy::needless_return)]
fn configured(name: &str) -> Option<String> {
    let _ = name; // unused when fail points are compiled out
    fail::fail_point!(name, |arg: Option<String>| Some(arg.unwrap_or_default()));
    None
}
