//! Tables of an owner's rows (an account's transactions, a webhook's deliveries) kept in a
//! partition per owner and calendar month (UTC) of the row's UUIDv7 id, so no partition grows
//! without bound, with an index of the owner's months so a page walks back month by month.
//!
//! Rows whose id is not a UUIDv7 go to month 0, listed after every dated month.

use std::time::Duration;

use sterling_storage::{
    Migration, Mutation, Query, Row, SharedStore, Value, now_millis, utc_date, uuid_v7_millis,
};

use crate::error::Result;

/// The record of one-time moves of data, added to every service's store by the template.
pub const DATA_MOVES_MIGRATION: Migration = Migration {
    version: 1_000_004,
    name: "template_0004_data_moves.cql",
    cql: "CREATE TABLE IF NOT EXISTS data_moves (
              name text PRIMARY KEY,
              state text,
              owner text,
              rows bigint);",
};

/// How long a move's lease lasts unless its owner renews it (every third of it while the move
/// runs): a move whose owner died is taken over this long after its last renewal (moves are
/// idempotent, so a second mover only repeats writes).
pub const MOVE_LEASE: Duration = Duration::from_secs(30);

/// Rows read per page of a move.
const MOVE_PAGE: usize = 500;

/// Runs `copy`, a one-time move of data that may be repeated without harm, once for the
/// service however many instances start at once: recorded under `name` in `data_moves`, an
/// instance that finds it being run waits for it, and a run whose lease ([`MOVE_LEASE`]) is
/// not renewed is taken over. Returns what `copy` moved, or 0 when the move was done before.
/// Run before the service reads what it moves.
pub async fn move_data_once<F, Fut>(store: &SharedStore, name: &str, copy: F) -> Result<u64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    move_data_once_leased(store, name, MOVE_LEASE, copy).await
}

/// [`move_data_once`] under a lease of `lease`.
pub async fn move_data_once_leased<F, Fut>(
    store: &SharedStore,
    name: &str,
    lease: Duration,
    copy: F,
) -> Result<u64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let owner = uuid::Uuid::new_v4().to_string();
    let key = Row::new().with("name", name);
    let held = key
        .clone()
        .with("state", "moving")
        .with("owner", owner.as_str());
    loop {
        if let Some(row) = store.get("data_moves", &key).await? {
            if row.text("state")? == "done" {
                return Ok(0);
            }
            tokio::time::sleep(Duration::from_millis(100).min(lease / 3)).await;
            continue;
        }
        let claim = Mutation::insert_if_not_exists("data_moves", held.clone()).with_ttl(lease);
        if store.apply(vec![claim]).await?.applied() {
            break;
        }
    }
    let copying = copy();
    tokio::pin!(copying);
    let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
    let moved = loop {
        tokio::select! {
            moved = &mut copying => break moved?,
            _ = renewals.tick() => {
                // Plain: only the owner renews, and a renewal lost (another took the move
                // over) costs a repeat of idempotent writes at most.
                let renewal = Mutation::insert("data_moves", held.clone()).with_ttl(lease);
                if let Err(e) = store.apply(vec![renewal]).await {
                    tracing::warn!(move_name = name, error = %e, "cannot renew a move's lease");
                }
            }
        }
    };
    let done = key
        .with("state", "done")
        .with("owner", owner.as_str())
        .with("rows", moved as i64);
    store
        .apply(vec![Mutation::insert("data_moves", done)])
        .await?;
    Ok(moved)
}

/// Calls `each` on every row of `table`, a page at a time (for one-time moves of data, never
/// on a request path); returns how many rows there were.
pub async fn for_each_row<F, Fut>(store: &SharedStore, table: &str, mut each: F) -> Result<u64>
where
    F: FnMut(Row) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let (mut page, mut rows_seen) = (None, 0u64);
    loop {
        let (rows, next) = store.scan(table, page, MOVE_PAGE).await?;
        for row in rows {
            each(row).await?;
            rows_seen += 1;
        }
        match next {
            Some(token) => page = Some(token),
            None => return Ok(rows_seen),
        }
    }
}

/// The month (`YYYYMM`, UTC) a UUIDv7 id was made in; 0 for any other id.
pub fn month_of(id: &str) -> i64 {
    match uuid_v7_millis(id) {
        // utc_date gives YYYY-MM-DD.
        Some(millis) => utc_date(millis)[..7].replace('-', "").parse().unwrap_or(0),
        None => 0,
    }
}

/// A table of an owner's rows by month, and its index of months.
#[derive(Debug, Clone, Copy)]
pub struct ByMonth {
    /// The rows: partition (owner, `month`), clustered by id newest first.
    pub table: &'static str,
    /// The index: partition (owner), clustered by `month` newest first.
    pub months: &'static str,
    /// The owner column (`account_id`, `webhook_id`).
    pub owner: &'static str,
    /// The id column, a UUIDv7 (`transaction_id`, `event_id`).
    pub id: &'static str,
}

impl ByMonth {
    /// The full key of a row.
    pub fn key(&self, owner: &str, id: &str) -> Row {
        Row::new()
            .with(self.owner, owner)
            .with("month", month_of(id))
            .with(self.id, id)
    }

    /// The write that lists the row's month in the owner's index; written before the row
    /// (a month listed with no row in it costs one empty read).
    pub fn month_entry(&self, owner: &str, id: &str) -> Mutation {
        let row = Row::new()
            .with(self.owner, owner)
            .with("month", month_of(id));
        Mutation::insert(self.months, row)
    }

    /// Up to `limit` of the owner's rows, newest first, after the row `cursor` (an id).
    pub async fn page(
        &self,
        store: &SharedStore,
        owner: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Row>> {
        let cursor_month = cursor.map(month_of);
        let index = Query {
            to: cursor_month.map(|m| Value::BigInt(m + 1)),
            ..Query::partition(self.months, Row::new().with(self.owner, owner))
        };
        let mut rows = Vec::new();
        for entry in store.query(index).await? {
            if rows.len() >= limit {
                break;
            }
            let month = entry.i64("month")?;
            let partition = Row::new().with(self.owner, owner).with("month", month);
            let query = Query {
                after: cursor
                    .filter(|_| cursor_month == Some(month))
                    .map(|c| Row::new().with(self.id, c)),
                ..Query::partition(self.table, partition).limit(limit - rows.len())
            };
            rows.extend(store.query(query).await?);
        }
        Ok(rows)
    }

    /// Copies every row of `legacy` (the same columns, partitioned by owner alone) into this
    /// table, once for the service however many instances start at once; returns the rows
    /// this call moved (0 when the move was done before). Run before the service writes.
    pub async fn move_once(&self, store: &SharedStore, legacy: &str) -> Result<u64> {
        let name = format!("{legacy}->{}", self.table);
        let moved = move_data_once(store, &name, || self.copy(store, legacy)).await?;
        if moved > 0 {
            tracing::info!(
                from = legacy,
                to = self.table,
                rows = moved,
                "rows moved to monthly partitions"
            );
        }
        Ok(moved)
    }

    async fn copy(&self, store: &SharedStore, legacy: &str) -> Result<u64> {
        let started = now_millis();
        let moved = for_each_row(store, legacy, |mut row| async move {
            let (owner, id) = (
                row.text(self.owner)?.to_string(),
                row.text(self.id)?.to_string(),
            );
            row.set("month", month_of(&id));
            store.apply(vec![self.month_entry(&owner, &id)]).await?;
            store.apply(vec![Mutation::insert(self.table, row)]).await?;
            Ok(())
        })
        .await?;
        tracing::debug!(ms = now_millis() - started, "move copied");
        Ok(moved)
    }
}
