//! HTTP handlers of customers: the authenticated customer's own profile, read and written
//! whole. What a profile holds is checked here: a legal name of 1 to 100 characters, a
//! preferred name of at most 50, a real calendar date of birth of someone 16 or older.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};
use sterling_storage::{now_millis, utc_date};
use sterling_template::Error;
use sterling_template::identity::Customer;
use sterling_template::server::Problem;

use crate::store::{Profile, ProfileStore};

type Shared = State<Arc<ProfileStore>>;
type Caller = Option<Extension<Customer>>;

/// The youngest a customer may be, in years.
pub const MINIMUM_AGE: i64 = 16;

fn customer(caller: &Caller) -> Result<&str, Problem> {
    caller
        .as_ref()
        .map(|Extension(c)| c.id())
        .ok_or_else(|| Problem(Error::unauthorized("customer", "no authenticated customer")))
}

fn profile_json(p: &Profile) -> Value {
    json!({
        "customer_id": p.customer_id,
        "legal_name": p.legal_name,
        "preferred_name": p.preferred_name,
        "date_of_birth": p.date_of_birth,
        "version": p.version,
        "updated_at_ms": p.updated_at_ms,
    })
}

/// `GET /v1/customers/me`: the profile, or 404 `not_found.profile` before the first write.
pub async fn get_profile(State(profiles): Shared, caller: Caller) -> Result<Json<Value>, Problem> {
    let profile = profiles
        .get(customer(&caller)?)
        .await?
        .ok_or_else(|| Error::not_found("profile", "no profile yet: PUT one"))?;
    Ok(Json(profile_json(&profile)))
}

/// What a profile takes.
#[derive(Deserialize)]
struct NewProfile {
    legal_name: String,
    #[serde(default)]
    preferred_name: String,
    date_of_birth: String,
}

/// `PUT /v1/customers/me`: writes the profile whole; the answer is what is stored.
pub async fn put_profile(
    State(profiles): Shared,
    caller: Caller,
    body: Bytes,
) -> Result<Json<Value>, Problem> {
    let customer_id = customer(&caller)?;
    let new: NewProfile = serde_json::from_slice(&body)
        .map_err(|e| Problem(Error::bad_request("json", format!("bad JSON: {e}"))))?;
    let legal_name = name("legal_name", &new.legal_name, 1, 100)?;
    let preferred_name = name("preferred_name", &new.preferred_name, 0, 50)?;
    let date_of_birth = birth_date(&new.date_of_birth, &utc_date(now_millis()))?;
    let profile = profiles
        .put(customer_id, legal_name, preferred_name, date_of_birth)
        .await?;
    Ok(Json(profile_json(&profile)))
}

/// `text` trimmed, with `min` to `max` characters and no control characters, or 400.
fn name<'a>(field: &str, text: &'a str, min: usize, max: usize) -> Result<&'a str, Problem> {
    let text = text.trim();
    let length = text.chars().count();
    if length < min || length > max || text.chars().any(char::is_control) {
        let why = format!("{field} is {min} to {max} characters, none of them control characters");
        return Err(Error::bad_request(field, why).into());
    }
    Ok(text)
}

/// A `YYYY-MM-DD` date that exists, of someone at least [`MINIMUM_AGE`] on `today`, or 400.
fn birth_date<'a>(text: &'a str, today: &str) -> Result<&'a str, Problem> {
    let refuse = |why: &str| Problem(Error::bad_request("date_of_birth", why.to_string()));
    let [year, month, day] = parts(text).ok_or_else(|| refuse("a date as YYYY-MM-DD"))?;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(refuse("no such month")),
    };
    if !(1..=days).contains(&day) || year < 1900 {
        return Err(refuse("no such date"));
    }
    let [y, m, d] = parts(today).ok_or_else(|| Problem(Error::internal("today's date")))?;
    if (year + MINIMUM_AGE, month, day) > (y, m, d) {
        return Err(refuse("customers are 16 or older"));
    }
    Ok(text)
}

fn parts(text: &str) -> Option<[i64; 3]> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    if !shaped {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text[range].parse().ok();
    Some([number(0..4)?, number(5..7)?, number(8..10)?])
}

#[cfg(test)]
mod tests {
    use super::birth_date;

    #[test]
    fn dates_of_birth_are_real_dates_of_adults() {
        let today = "2026-11-27";
        assert!(birth_date("2000-02-29", today).is_ok());
        assert!(birth_date("2010-11-27", today).is_ok(), "16 today");
        assert!(birth_date("2010-11-28", today).is_err(), "16 tomorrow");
        for bad in [
            "2001-02-29",
            "2000-13-01",
            "2000-00-10",
            "2000-04-31",
            "20000101",
            "1899-12-31",
            "2000-1-01",
            "２０００-01-01",
        ] {
            assert!(birth_date(bad, today).is_err(), "{bad}");
        }
    }
}
