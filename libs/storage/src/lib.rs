//! Storage with Cassandra's data model as the one abstraction.
//!
//! A service declares its tables in versioned CQL migrations (`migrations/*.cql`) and talks to a
//! [`Store`]: rows addressed by partition key and clustering key, conditional writes
//! (`IF NOT EXISTS`, `IF col = ?`) batched within one partition, and TTLs. The embedded backend
//! ([`embedded::SqliteStore`]) keeps the same semantics in a local SQLite file so the whole bank
//! runs on a fresh machine; the Cassandra backend runs the same migrations on a real cluster.

pub mod cassandra;
pub mod conformance;
pub mod embedded;
pub mod schema;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use schema::{ColumnType, Migration, Order, TableSchema};

/// Errors from storage.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A migration or schema could not be read.
    #[error("schema: {0}")]
    Schema(String),
    /// The request does not fit the schema (unknown table or column, wrong type, bad batch).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The engine failed or cannot be reached; the request may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded as asked.
    #[error("decode: {0}")]
    Decode(String),
}

/// Result of a storage operation.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// One column value, typed as in CQL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Value {
    /// No value.
    Null,
    /// `text`.
    Text(String),
    /// `bigint` (and the smaller integers).
    BigInt(i64),
    /// `boolean`.
    Boolean(bool),
    /// `uuid`.
    Uuid(uuid::Uuid),
    /// `timestamp`, milliseconds since the Unix epoch.
    Timestamp(i64),
    /// `blob`.
    Blob(Vec<u8>),
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::BigInt(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}
impl From<uuid::Uuid> for Value {
    fn from(v: uuid::Uuid) -> Self {
        Value::Uuid(v)
    }
}
impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Blob(v)
    }
}

/// A row (or a key, or a set of assignments): column name to value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row(pub BTreeMap<String, Value>);

impl Row {
    /// An empty row.
    pub fn new() -> Self {
        Row::default()
    }

    /// Adds a column, builder style: `Row::new().with("token", "abc")`.
    pub fn with(mut self, column: &str, value: impl Into<Value>) -> Self {
        self.0.insert(column.to_string(), value.into());
        self
    }

    /// Sets a column.
    pub fn set(&mut self, column: &str, value: impl Into<Value>) {
        self.0.insert(column.to_string(), value.into());
    }

    /// The value of a column, if present and not null.
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.get(column).filter(|v| **v != Value::Null)
    }

    fn missing(column: &str) -> StorageError {
        StorageError::Decode(format!("column {column} is missing or has another type"))
    }

    /// A `text` column.
    pub fn text(&self, column: &str) -> Result<&str> {
        match self.get(column) {
            Some(Value::Text(v)) => Ok(v),
            _ => Err(Self::missing(column)),
        }
    }

    /// A `bigint` column.
    pub fn i64(&self, column: &str) -> Result<i64> {
        match self.get(column) {
            Some(Value::BigInt(v)) => Ok(*v),
            _ => Err(Self::missing(column)),
        }
    }

    /// A `boolean` column.
    pub fn bool(&self, column: &str) -> Result<bool> {
        match self.get(column) {
            Some(Value::Boolean(v)) => Ok(*v),
            _ => Err(Self::missing(column)),
        }
    }

    /// A `timestamp` column in milliseconds.
    pub fn timestamp(&self, column: &str) -> Result<i64> {
        match self.get(column) {
            Some(Value::Timestamp(v)) => Ok(*v),
            _ => Err(Self::missing(column)),
        }
    }

    /// A `uuid` column.
    pub fn uuid(&self, column: &str) -> Result<uuid::Uuid> {
        match self.get(column) {
            Some(Value::Uuid(v)) => Ok(*v),
            _ => Err(Self::missing(column)),
        }
    }

    /// A `blob` column.
    pub fn blob(&self, column: &str) -> Result<&[u8]> {
        match self.get(column) {
            Some(Value::Blob(v)) => Ok(v),
            _ => Err(Self::missing(column)),
        }
    }
}

/// A condition of a conditional update, as CQL's `IF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `IF EXISTS`.
    Exists,
    /// `IF column = value` (the row must exist).
    Equals(String, Value),
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// `INSERT` (an upsert), or with `if_not_exists` a compare-and-set on absence.
    Insert {
        /// Table name.
        table: String,
        /// Every column to write, primary key included.
        row: Row,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
        /// `USING TTL`.
        ttl: Option<Duration>,
        /// The row's version column: the row is written only over a lower version (see
        /// [`Mutation::insert_newest`]).
        newest_by: Option<String>,
    },
    /// `UPDATE ... SET ... WHERE key [IF ...]`; without conditions an upsert.
    Update {
        /// Table name.
        table: String,
        /// Full primary key.
        key: Row,
        /// Columns to assign.
        set: Row,
        /// All must hold for the batch to apply.
        conditions: Vec<Condition>,
    },
    /// `DELETE ... WHERE key [IF EXISTS]`.
    Delete {
        /// Table name.
        table: String,
        /// Full primary key.
        key: Row,
        /// `IF EXISTS`.
        if_exists: bool,
    },
}

impl Mutation {
    /// An unconditional insert (upsert).
    pub fn insert(table: &str, row: Row) -> Self {
        Mutation::Insert {
            table: table.to_string(),
            row,
            if_not_exists: false,
            ttl: None,
            newest_by: None,
        }
    }

    /// An insert that applies only if the row does not exist yet.
    pub fn insert_if_not_exists(table: &str, row: Row) -> Self {
        Mutation::Insert {
            table: table.to_string(),
            row,
            if_not_exists: true,
            ttl: None,
            newest_by: None,
        }
    }

    /// An insert that keeps the highest version without a compare-and-set: `row` (every
    /// column, its non-negative `bigint` column `version` included) replaces the stored row
    /// only if that has a lower version, whatever order writes arrive in. On Cassandra the
    /// version is the write's timestamp (`USING TIMESTAMP`), so a table written this way must
    /// be written only this way (a plain write's timestamp, the time now, would outrank every
    /// version), two writes of one version must be the same row, and the insert cannot be part
    /// of a conditional batch.
    pub fn insert_newest(table: &str, row: Row, version: &str) -> Self {
        Mutation::Insert {
            table: table.to_string(),
            row,
            if_not_exists: false,
            ttl: None,
            newest_by: Some(version.to_string()),
        }
    }

    /// The version of an [`Mutation::insert_newest`] (`None` for any other mutation), or an
    /// error if its row lacks a non-negative `bigint` version.
    pub fn newest_version(&self) -> Result<Option<i64>> {
        let Mutation::Insert {
            row,
            newest_by: Some(column),
            ..
        } = self
        else {
            return Ok(None);
        };
        match row.get(column) {
            Some(Value::BigInt(v)) if *v >= 0 => Ok(Some(*v)),
            _ => Err(StorageError::Invalid(format!(
                "an insert of the newest version needs a non-negative bigint {column}"
            ))),
        }
    }

    /// An update with conditions (none for an upsert).
    pub fn update(table: &str, key: Row, set: Row, conditions: Vec<Condition>) -> Self {
        Mutation::Update {
            table: table.to_string(),
            key,
            set,
            conditions,
        }
    }

    /// Sets a TTL on an insert; other mutations are left as they are.
    pub fn with_ttl(mut self, duration: Duration) -> Self {
        if let Mutation::Insert { ttl, .. } = &mut self {
            *ttl = Some(duration);
        }
        self
    }

    /// The table written to.
    pub fn table(&self) -> &str {
        match self {
            Mutation::Insert { table, .. }
            | Mutation::Update { table, .. }
            | Mutation::Delete { table, .. } => table,
        }
    }

    /// Whether this mutation carries a condition (making its batch a compare-and-set).
    pub fn is_conditional(&self) -> bool {
        match self {
            Mutation::Insert { if_not_exists, .. } => *if_not_exists,
            Mutation::Update { conditions, .. } => !conditions.is_empty(),
            Mutation::Delete { if_exists, .. } => *if_exists,
        }
    }
}

/// Outcome of [`Store::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Every mutation was written.
    Yes,
    /// A condition failed and nothing was written; the current rows the conditions looked at,
    /// in mutation order (`None` where the row does not exist).
    No(Vec<Option<Row>>),
}

impl Applied {
    /// Whether the batch was applied.
    pub fn applied(&self) -> bool {
        matches!(self, Applied::Yes)
    }
}

/// A read of one partition, in clustering order.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Table name.
    pub table: String,
    /// Every partition-key column.
    pub partition: Row,
    /// Only rows whose first clustering column is `>=` this value.
    pub from: Option<Value>,
    /// Only rows whose first clustering column is `<` this value.
    pub to: Option<Value>,
    /// Resume after this clustering key (from a previous page's last row).
    pub after: Option<Row>,
    /// At most this many rows.
    pub limit: Option<usize>,
}

impl Query {
    /// A read of the whole partition.
    pub fn partition(table: &str, partition: Row) -> Self {
        Query {
            table: table.to_string(),
            partition,
            ..Query::default()
        }
    }

    /// Limits the number of rows.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// A page of a [`Store::scan`]: its rows and the token of the next page (`None` at the end).
pub type ScanPage = (Vec<Row>, Option<Vec<u8>>);

/// A service's private store: its keyspace (Cassandra) or its file (embedded).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one row by its full primary key.
    async fn get(&self, table: &str, key: &Row) -> Result<Option<Row>>;

    /// Reads rows of one partition in clustering order.
    async fn query(&self, query: Query) -> Result<Vec<Row>>;

    /// Applies mutations atomically. Conditional mutations must all target one partition of one
    /// table (Cassandra's rule for conditional batches); then either all apply or none.
    async fn apply(&self, mutations: Vec<Mutation>) -> Result<Applied>;

    /// Applies batches one after the other, each atomically with its own conditions, exactly
    /// as a sequence of [`Store::apply`] calls would (a later batch sees the earlier ones'
    /// writes). A backend may commit them together: the embedded one makes them one
    /// transaction and one fsync; Cassandra applies them in turn. On an error, batches before
    /// the failing one may have been applied.
    async fn apply_in_order(&self, batches: Vec<Vec<Mutation>>) -> Result<Vec<Applied>> {
        let mut outcomes = Vec::with_capacity(batches.len());
        for batch in batches {
            outcomes.push(self.apply(batch).await?);
        }
        Ok(outcomes)
    }

    /// Applies mutations as [`Store::apply`] does, but lets the backend make them durable with
    /// a later commit instead of one of their own. Once answered they are visible and survive
    /// the process dying; a power cut may lose them, whole (never in part) and never a write
    /// answered before them. For records whose loss costs only repeated work, such as the ids
    /// of the events a consumer has handled. The embedded store commits them without an fsync
    /// when nothing else in the group needs one; Cassandra applies them as any other write.
    async fn apply_lazily(&self, mutations: Vec<Mutation>) -> Result<Applied> {
        self.apply(mutations).await
    }

    /// Reads a whole table a page of about `size` rows at a time, in no particular order:
    /// `page` is what the previous call returned (`None` to start), and the answer's token is
    /// `None` after the last page. For one-time moves of data, never on a request path.
    async fn scan(&self, table: &str, page: Option<Vec<u8>>, size: usize) -> Result<ScanPage>;

    /// Proves the store can be read and written (for health checks).
    async fn check(&self) -> Result<()>;

    /// The schemas of the tables, as read from the migrations.
    fn tables(&self) -> &BTreeMap<String, TableSchema>;
}

/// A shared handle to a store.
pub type SharedStore = Arc<dyn Store>;

/// Checks a batch against the schemas: known tables and columns, full keys, the rule that a
/// conditional batch stays within one partition of one table, and that an insert of the newest
/// version has its version and is not part of a conditional batch.
pub fn validate_batch(
    tables: &BTreeMap<String, TableSchema>,
    mutations: &[Mutation],
) -> Result<()> {
    let mut conditional_partition: Option<(String, Vec<Value>)> = None;
    let any_conditional = mutations.iter().any(Mutation::is_conditional);
    for m in mutations {
        let schema = tables
            .get(m.table())
            .ok_or_else(|| StorageError::Invalid(format!("unknown table {}", m.table())))?;
        if m.newest_version()?.is_some() && any_conditional {
            return Err(StorageError::Invalid(
                "an insert of the newest version cannot be part of a conditional batch".into(),
            ));
        }
        let (key_source, columns): (&Row, Vec<&String>) = match m {
            Mutation::Insert { row, .. } => (row, row.0.keys().collect()),
            Mutation::Update { key, set, .. } => (key, key.0.keys().chain(set.0.keys()).collect()),
            Mutation::Delete { key, .. } => (key, key.0.keys().collect()),
        };
        for column in columns {
            if schema.column_type(column).is_none() {
                return Err(StorageError::Invalid(format!(
                    "table {} has no column {column}",
                    schema.name
                )));
            }
        }
        for key in schema.primary_key() {
            if key_source.get(key).is_none() {
                return Err(StorageError::Invalid(format!(
                    "table {}: key column {key} missing",
                    schema.name
                )));
            }
        }
        if any_conditional {
            let partition: Vec<Value> = schema
                .partition_key
                .iter()
                .map(|k| key_source.0[k].clone())
                .collect();
            let this = (schema.name.clone(), partition);
            match &conditional_partition {
                None => conditional_partition = Some(this),
                Some(first) if *first == this => {}
                Some(_) => {
                    return Err(StorageError::Invalid(
                        "a conditional batch must stay within one partition of one table".into(),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Checks that `value` fits `column`'s type (null fits every type).
pub(crate) fn check_type(table: &TableSchema, column: &str, value: &Value) -> Result<()> {
    let ty = table.column_type(column).ok_or_else(|| {
        StorageError::Invalid(format!("table {} has no column {column}", table.name))
    })?;
    let fits = matches!(
        (ty, value),
        (_, Value::Null)
            | (ColumnType::Text, Value::Text(_))
            | (ColumnType::BigInt, Value::BigInt(_))
            | (ColumnType::Boolean, Value::Boolean(_))
            | (ColumnType::Uuid, Value::Uuid(_))
            | (ColumnType::Timestamp, Value::Timestamp(_))
            | (ColumnType::Blob, Value::Blob(_))
    );
    if fits {
        Ok(())
    } else {
        Err(StorageError::Invalid(format!(
            "{}.{column} is {ty:?}, got {value:?}",
            table.name
        )))
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// `YYYY-MM-DD` of a Unix time in milliseconds, in UTC (days to civil date, H. Hinnant's
/// algorithm).
pub fn utc_date(ms: i64) -> String {
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// When a UUIDv7 id was made, in Unix milliseconds; `None` for any other text (time-bucketed
/// tables put rows by their id's time).
pub fn uuid_v7_millis(id: &str) -> Option<i64> {
    let uuid = uuid::Uuid::parse_str(id).ok()?;
    let (seconds, nanos) = uuid
        .get_timestamp()
        .filter(|_| uuid.get_version_num() == 7)?
        .to_unix();
    Some(i64::try_from(seconds).ok()?.checked_mul(1000)? + i64::from(nanos / 1_000_000))
}

/// A UUIDv7 made at `ms` (Unix milliseconds) whose random part is `n`: ids of a known time
/// for tests of time-bucketed tables.
pub fn uuid_v7_at(ms: u64, n: u64) -> String {
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, (ms % 1000) as u32 * 1_000_000);
    let mut bytes = *uuid::Uuid::new_v7(ts).as_bytes();
    bytes[8..16].copy_from_slice(&(0x8000_0000_0000_0000u64 | n).to_be_bytes());
    uuid::Uuid::from_bytes(bytes).to_string()
}

#[cfg(test)]
mod calendar_tests {
    use super::utc_date;

    #[test]
    fn days_are_utc_calendar_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(86_399_999), "1970-01-01");
        assert_eq!(utc_date(86_400_000), "1970-01-02");
        assert_eq!(utc_date(951_782_400_000), "2000-02-29");
        assert_eq!(utc_date(1_798_761_599_000), "2026-12-31");
        assert_eq!(utc_date(-1), "1969-12-31");
    }
}
