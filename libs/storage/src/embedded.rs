//! The embedded backend: Cassandra's semantics in one SQLite file per service.
//!
//! Each table of the migrations becomes a SQLite table with the same primary key, plus a hidden
//! `__expires_at` column for TTLs. Every batch runs in one SQLite transaction, so conditional
//! batches are atomic compare-and-sets like Cassandra's lightweight transactions. Writes are
//! durable (`journal_mode=WAL`, `synchronous=FULL`) unless asked otherwise, and committed in
//! groups by one writer per store ([`writer`]): concurrent writers share a commit and its
//! fsync. Reads use a connection of their own, which a commit in progress does not block.
//! Commits do not checkpoint the WAL; a thread of the store's does, without blocking either
//! ([`sterling_sqlite::Checkpointer`]).

mod sql_texts;
mod writer;

pub use sterling_sqlite::{SLOW, busy_waits, memory_used};

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OptionalExtension, Transaction, params_from_iter};
use sterling_sqlite::{
    CHECKPOINT_EVERY, Checkpointer, limit_wal, no_commit_checkpoints, plan_once, wait_when_busy,
};

use self::sql_texts::Shape;
use crate::schema::{self, ColumnType, Migration, Order, TableSchema};
use crate::{
    Applied, Condition, Mutation, Query, Result, Row, ScanPage, StorageError, Store, Value,
    check_type, now_millis,
};

/// How hard the embedded store works to keep a write through a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit (`synchronous=FULL`).
    #[default]
    Full,
    /// fsync at checkpoints only (`synchronous=NORMAL`): survives a process crash, not a power cut.
    Normal,
}

/// A [`Store`] on a local SQLite file.
pub struct SqliteStore {
    /// Reads (and the health check); for an in-memory store, also the writer's.
    connection: Arc<Mutex<Connection>>,
    writer: writer::Writer,
    tables: Arc<BTreeMap<String, TableSchema>>,
    /// Checkpoints a file's WAL (none in memory); stops with the store.
    _checkpointer: Option<Checkpointer>,
}

fn sql_err(e: rusqlite::Error) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

impl SqliteStore {
    /// Opens (or creates) the store at `path` and applies the migrations not yet applied.
    pub fn open(
        path: &Path,
        migrations: &[Migration],
        durability: Durability,
    ) -> Result<SqliteStore> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| StorageError::Unavailable(format!("{}: {e}", parent.display())))?;
        }
        let connection = Connection::open(path).map_err(sql_err)?;
        // The writer's own connection: reads do not queue behind a commit's fsync.
        let writes = Connection::open(path).map_err(sql_err)?;
        no_commit_checkpoints(&connection).map_err(sql_err)?;
        no_commit_checkpoints(&writes).map_err(sql_err)?;
        limit_wal(&writes).map_err(sql_err)?;
        let name = path
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let mut store =
            Self::with_connection(connection, Some((name, writes)), migrations, durability)?;
        store._checkpointer = Some(
            Checkpointer::start(path, CHECKPOINT_EVERY)
                .map_err(|e| StorageError::Unavailable(format!("{}: {e}", path.display())))?,
        );
        Ok(store)
    }

    /// An in-memory store, for tests that need no persistence.
    pub fn in_memory(migrations: &[Migration]) -> Result<SqliteStore> {
        let connection = Connection::open_in_memory().map_err(sql_err)?;
        Self::with_connection(connection, None, migrations, Durability::Normal)
    }

    /// The store on `connection`, its writes on `writes` if given, with the store's name (a file
    /// has two connections; memory only one).
    fn with_connection(
        mut connection: Connection,
        writes: Option<(String, Connection)>,
        migrations: &[Migration],
        durability: Durability,
    ) -> Result<SqliteStore> {
        configure(&connection, durability)?;
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS __migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS __health (id INTEGER PRIMARY KEY, at INTEGER NOT NULL);",
            )
            .map_err(sql_err)?;
        let tables = schema::tables(migrations)?;
        let tx = connection.transaction().map_err(sql_err)?;
        for migration in migrations {
            let done: Option<i64> = tx
                .query_row(
                    "SELECT version FROM __migrations WHERE version = ?1",
                    [migration.version],
                    |r| r.get(0),
                )
                .optional()
                .map_err(sql_err)?;
            if done.is_some() {
                continue;
            }
            for statement in schema::statements(migration.cql) {
                let lower = statement.to_ascii_lowercase();
                if lower.starts_with("create table") {
                    let table = schema::parse_create_table(&statement)?;
                    create_table(&tx, &table)?;
                } else if lower.starts_with("alter table") {
                    // Adds the columns the table lacks, as the migrations declare it in the end.
                    let (name, _) = schema::parse_alter_table_add(&statement)?;
                    let table = tables.get(&name).ok_or_else(|| {
                        StorageError::Schema(format!("ALTER TABLE of unknown table {name}"))
                    })?;
                    create_table(&tx, table)?;
                }
            }
            tx.execute(
                "INSERT INTO __migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                rusqlite::params![migration.version, migration.name, now_millis()],
            )
            .map_err(sql_err)?;
        }
        tx.commit().map_err(sql_err)?;
        let connection = Arc::new(Mutex::new(connection));
        let tables = Arc::new(tables);
        let (name, writes) = match writes {
            Some((name, writes)) => {
                configure(&writes, durability)?;
                (name, Arc::new(Mutex::new(writes)))
            }
            None => ("memory".to_string(), connection.clone()),
        };
        Ok(SqliteStore {
            writer: writer::Writer::start(&name, writes, tables.clone(), durability)?,
            connection,
            tables,
            _checkpointer: None,
        })
    }

    fn schema(&self, table: &str) -> Result<&TableSchema> {
        self.tables
            .get(table)
            .ok_or_else(|| StorageError::Invalid(format!("unknown table {table}")))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &BTreeMap<String, TableSchema>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let connection = self.connection.clone();
        let tables = self.tables.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = connection
                .lock()
                .map_err(|_| StorageError::Unavailable("store lock poisoned".into()))?;
            work(&mut guard, &tables)
        })
        .await
        .map_err(|e| StorageError::Unavailable(format!("storage task failed: {e}")))?
    }
}

/// WAL, the durability asked for, and a wait for locks rather than an error.
fn configure(connection: &Connection, durability: Durability) -> Result<()> {
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    // Every table's statement shapes stay prepared (the default keeps 16, fewer than one
    // service's tables need, and parsing SQL again showed in profiles).
    connection.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
    plan_once(connection).map_err(sql_err)?;
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous};"
        ))
        .map_err(sql_err)?;
    wait_when_busy(connection).map_err(sql_err)
}

/// Prepared statements kept per connection.
const STATEMENTS_KEPT: usize = 512;

fn create_table(tx: &Transaction<'_>, table: &TableSchema) -> Result<()> {
    let columns: Vec<String> = table
        .columns
        .iter()
        .map(|(name, ty)| {
            let sql_type = match ty {
                ColumnType::Text | ColumnType::Uuid => "TEXT",
                ColumnType::BigInt | ColumnType::Boolean | ColumnType::Timestamp => "INTEGER",
                ColumnType::Blob => "BLOB",
            };
            format!("{} {sql_type}", quote(name))
        })
        .collect();
    let key: Vec<String> = table.primary_key().map(quote).collect();
    tx.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {} ({}, __expires_at INTEGER, PRIMARY KEY ({})) WITHOUT ROWID;",
        quote(&table.name),
        columns.join(", "),
        key.join(", ")
    ))
    .map_err(sql_err)?;
    // Columns added to an existing table by a later migration.
    let existing: Vec<String> = {
        let mut stmt = tx
            .prepare(&format!("PRAGMA table_info({})", quote(&table.name)))
            .map_err(sql_err)?;
        stmt.query_map([], |r| r.get::<_, String>(1))
            .map_err(sql_err)?
            .collect::<std::result::Result<_, _>>()
            .map_err(sql_err)?
    };
    for (column, definition) in table.columns.iter().zip(&columns) {
        if !existing.contains(&column.0) {
            tx.execute_batch(&format!(
                "ALTER TABLE {} ADD COLUMN {definition};",
                quote(&table.name)
            ))
            .map_err(sql_err)?;
        }
    }
    Ok(())
}

fn to_sql(value: &Value) -> SqlValue {
    match value {
        Value::Null => SqlValue::Null,
        Value::Text(v) => SqlValue::Text(v.clone()),
        Value::BigInt(v) | Value::Timestamp(v) => SqlValue::Integer(*v),
        Value::Boolean(v) => SqlValue::Integer(i64::from(*v)),
        Value::Uuid(v) => SqlValue::Text(v.hyphenated().to_string()),
        Value::Blob(v) => SqlValue::Blob(v.clone()),
    }
}

fn from_sql(ty: ColumnType, value: ValueRef<'_>) -> Result<Value> {
    let bad = || StorageError::Decode(format!("stored value does not match type {ty:?}"));
    Ok(match (ty, value) {
        (_, ValueRef::Null) => Value::Null,
        (ColumnType::Text, ValueRef::Text(t)) => {
            Value::Text(String::from_utf8(t.to_vec()).map_err(|_| bad())?)
        }
        (ColumnType::BigInt, ValueRef::Integer(i)) => Value::BigInt(i),
        (ColumnType::Timestamp, ValueRef::Integer(i)) => Value::Timestamp(i),
        (ColumnType::Boolean, ValueRef::Integer(i)) => Value::Boolean(i != 0),
        (ColumnType::Uuid, ValueRef::Text(t)) => Value::Uuid(
            std::str::from_utf8(t)
                .ok()
                .and_then(|s| uuid::Uuid::parse_str(s).ok())
                .ok_or_else(bad)?,
        ),
        (ColumnType::Blob, ValueRef::Blob(b)) => Value::Blob(b.to_vec()),
        _ => return Err(bad()),
    })
}

fn select_list(table: &TableSchema) -> String {
    table
        .columns
        .iter()
        .map(|(c, _)| quote(c))
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_row(table: &TableSchema, row: &rusqlite::Row<'_>) -> Result<Row> {
    let mut out = Row::new();
    for (i, (name, ty)) in table.columns.iter().enumerate() {
        let value = from_sql(*ty, row.get_ref(i).map_err(sql_err)?)?;
        if value != Value::Null {
            out.0.insert(name.clone(), value);
        }
    }
    Ok(out)
}

fn key_values(table: &TableSchema, key: &Row) -> Result<Vec<SqlValue>> {
    table
        .primary_key()
        .map(|k| {
            let v = key
                .get(k)
                .ok_or_else(|| StorageError::Invalid(format!("key column {k} missing")))?;
            check_type(table, k, v)?;
            Ok(to_sql(v))
        })
        .collect()
}

/// `"c1" = ?1 AND "c2" = ?2 ...` over the table's primary key.
fn key_predicate(table: &TableSchema) -> String {
    table
        .primary_key()
        .enumerate()
        .map(|(i, k)| format!("{} = ?{}", quote(k), i + 1))
        .collect::<Vec<_>>()
        .join(" AND ")
}

fn get_row(conn: &Connection, table: &TableSchema, key: &Row) -> Result<Option<Row>> {
    let mut params = key_values(table, key)?;
    params.push(SqlValue::Integer(now_millis()));
    let sql = sql_texts::text(Shape::Get, table, std::iter::empty(), || {
        format!(
            "SELECT {} FROM {} WHERE {} AND (__expires_at IS NULL OR __expires_at > ?{})",
            select_list(table),
            quote(&table.name),
            key_predicate(table),
            table.primary_key().count() + 1
        )
    });
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
    let mut rows = stmt.query(params_from_iter(params)).map_err(sql_err)?;
    match rows.next().map_err(sql_err)? {
        Some(row) => Ok(Some(read_row(table, row)?)),
        None => Ok(None),
    }
}

/// Writes `row` (key plus columns) as an upsert that touches only the given columns.
fn upsert(
    conn: &Connection,
    table: &TableSchema,
    row: &Row,
    expires_at: Option<i64>,
    replace_expired: bool,
) -> Result<()> {
    let mut params = Vec::with_capacity(row.0.len() + 1);
    for (column, value) in &row.0 {
        check_type(table, column, value)?;
        params.push(to_sql(value));
    }
    params.push(expires_at.map_or(SqlValue::Null, SqlValue::Integer));
    let shape = Shape::Upsert { replace_expired };
    let set = row.0.keys().map(String::as_str);
    let sql = sql_texts::text(shape, table, set, || {
        upsert_text(table, row, replace_expired)
    });
    conn.prepare_cached(&sql)
        .map_err(sql_err)?
        .execute(params_from_iter(params))
        .map_err(sql_err)?;
    Ok(())
}

/// The text of [`upsert`]'s statement: `row`'s columns and `__expires_at`, in that order.
fn upsert_text(table: &TableSchema, row: &Row, replace_expired: bool) -> String {
    let mut columns: Vec<String> = row.0.keys().map(|c| quote(c)).collect();
    columns.push("__expires_at".to_string());
    let placeholders: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
    if replace_expired {
        return format!(
            "INSERT OR REPLACE INTO {} ({}) VALUES ({})",
            quote(&table.name),
            columns.join(", "),
            placeholders.join(", ")
        );
    }
    let keys: Vec<String> = table.primary_key().map(quote).collect();
    let updates: Vec<String> = row
        .0
        .keys()
        .filter(|c| !table.primary_key().any(|k| k == c.as_str()))
        .map(|c| format!("{0} = excluded.{0}", quote(c)))
        .chain(std::iter::once(
            "__expires_at = excluded.__expires_at".to_string(),
        ))
        .collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}",
        quote(&table.name),
        columns.join(", "),
        placeholders.join(", "),
        keys.join(", "),
        updates.join(", ")
    )
}

fn delete(conn: &Connection, table: &TableSchema, key: &Row) -> Result<()> {
    let sql = sql_texts::text(Shape::Delete, table, std::iter::empty(), || {
        format!(
            "DELETE FROM {} WHERE {}",
            quote(&table.name),
            key_predicate(table)
        )
    });
    conn.prepare_cached(&sql)
        .map_err(sql_err)?
        .execute(params_from_iter(key_values(table, key)?))
        .map_err(sql_err)?;
    Ok(())
}

fn conditions_hold(m: &Mutation, current: &Option<Row>) -> bool {
    match m {
        Mutation::Insert { if_not_exists, .. } => !*if_not_exists || current.is_none(),
        Mutation::Delete { if_exists, .. } => !*if_exists || current.is_some(),
        Mutation::Update { conditions, .. } => conditions.iter().all(|c| match (c, current) {
            (_, None) => false,
            (Condition::Exists, Some(_)) => true,
            (Condition::Equals(column, expected), Some(row)) => {
                row.0.get(column).unwrap_or(&Value::Null) == expected
            }
        }),
    }
}

/// One batch inside a transaction: its conditions, then its writes if they all hold.
fn apply_in(
    tx: &Connection,
    tables: &BTreeMap<String, TableSchema>,
    mutations: &[Mutation],
) -> Result<Applied> {
    let mut current_rows = Vec::new();
    let mut all_hold = true;
    for m in mutations.iter().filter(|m| m.is_conditional()) {
        let table = &tables[m.table()];
        let key = match m {
            Mutation::Insert { row, .. } => row,
            Mutation::Update { key, .. } | Mutation::Delete { key, .. } => key,
        };
        let current = get_row(tx, table, key)?;
        all_hold &= conditions_hold(m, &current);
        current_rows.push(current);
    }
    if !all_hold {
        return Ok(Applied::No(current_rows));
    }
    let now = now_millis();
    for m in mutations {
        let table = &tables[m.table()];
        match m {
            Mutation::Insert {
                row,
                if_not_exists,
                ttl,
                newest_by,
                ..
            } => {
                if let (Some(column), Some(version)) = (newest_by, m.newest_version()?)
                    && let Some(stored) = get_row(tx, table, row)?
                    && matches!(stored.get(column), Some(Value::BigInt(v)) if *v >= version)
                {
                    continue;
                }
                let expires_at = ttl.map(|t| now + t.as_millis() as i64);
                upsert(tx, table, row, expires_at, *if_not_exists)?;
            }
            Mutation::Update { key, set, .. } => {
                let mut row = key.clone();
                row.0.extend(set.0.clone());
                upsert(tx, table, &row, None, false)?;
            }
            Mutation::Delete { key, .. } => delete(tx, table, key)?,
        }
    }
    Ok(Applied::Yes)
}

/// Strictly after `after` in clustering order: `(c1 beyond) OR (c1 = AND c2 beyond) ...`, its
/// values appended to `params`; `None` for a table without clustering columns.
fn after_predicate(
    table: &TableSchema,
    after: &Row,
    params: &mut Vec<SqlValue>,
) -> Result<Option<String>> {
    let mut alternatives = Vec::new();
    for (i, (column, order)) in table.clustering_key.iter().enumerate() {
        let mut parts = Vec::new();
        for (prev, _) in &table.clustering_key[..i] {
            let v = after.get(prev).ok_or_else(|| {
                StorageError::Invalid(format!("cursor lacks clustering column {prev}"))
            })?;
            params.push(to_sql(v));
            parts.push(format!("{} = ?{}", quote(prev), params.len()));
        }
        let v = after.get(column).ok_or_else(|| {
            StorageError::Invalid(format!("cursor lacks clustering column {column}"))
        })?;
        check_type(table, column, v)?;
        params.push(to_sql(v));
        let op = if *order == Order::Asc { ">" } else { "<" };
        parts.push(format!("{} {op} ?{}", quote(column), params.len()));
        alternatives.push(format!("({})", parts.join(" AND ")));
    }
    Ok((!alternatives.is_empty()).then(|| format!("({})", alternatives.join(" OR "))))
}

/// A page of a whole table in primary-key order; the token is the offset of the next page.
fn scan_rows(conn: &Connection, table: &TableSchema, offset: u64, size: usize) -> Result<ScanPage> {
    let keys: Vec<String> = table.primary_key().map(quote).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE (__expires_at IS NULL OR __expires_at > ?1) ORDER BY {} LIMIT ?2 OFFSET ?3",
        select_list(table),
        quote(&table.name),
        keys.join(", ")
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
    let params = [now_millis(), size as i64, offset as i64];
    let mut rows = stmt.query(params).map_err(sql_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err)? {
        out.push(read_row(table, row)?);
    }
    let next = (out.len() == size).then(|| (offset + size as u64).to_be_bytes().to_vec());
    Ok((out, next))
}

fn run_query(
    conn: &Connection,
    tables: &BTreeMap<String, TableSchema>,
    query: &Query,
) -> Result<Vec<Row>> {
    let table = tables
        .get(&query.table)
        .ok_or_else(|| StorageError::Invalid(format!("unknown table {}", query.table)))?;
    let mut predicate = Vec::new();
    let mut params = Vec::new();
    for k in &table.partition_key {
        let v = query
            .partition
            .get(k)
            .ok_or_else(|| StorageError::Invalid(format!("partition key column {k} missing")))?;
        check_type(table, k, v)?;
        params.push(to_sql(v));
        predicate.push(format!("{} = ?{}", quote(k), params.len()));
    }
    let first_clustering = table.clustering_key.first();
    for (bound, op) in [(&query.from, ">="), (&query.to, "<")] {
        if let Some(v) = bound {
            let (column, _) = first_clustering.ok_or_else(|| {
                StorageError::Invalid(format!("table {} has no clustering key", table.name))
            })?;
            check_type(table, column, v)?;
            params.push(to_sql(v));
            predicate.push(format!("{} {op} ?{}", quote(column), params.len()));
        }
    }
    if let Some(after) = &query.after
        && let Some(beyond) = after_predicate(table, after, &mut params)?
    {
        predicate.push(beyond);
    }
    params.push(SqlValue::Integer(now_millis()));
    predicate.push(format!(
        "(__expires_at IS NULL OR __expires_at > ?{})",
        params.len()
    ));
    let order_by: Vec<String> = table
        .clustering_key
        .iter()
        .map(|(c, o)| {
            format!(
                "{} {}",
                quote(c),
                if *o == Order::Asc { "ASC" } else { "DESC" }
            )
        })
        .collect();
    let mut sql = format!(
        "SELECT {} FROM {} WHERE {}",
        select_list(table),
        quote(&table.name),
        predicate.join(" AND ")
    );
    if !order_by.is_empty() {
        sql.push_str(&format!(" ORDER BY {}", order_by.join(", ")));
    }
    if let Some(limit) = query.limit {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_err)?;
    let mut rows = stmt.query(params_from_iter(params)).map_err(sql_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err)? {
        out.push(read_row(table, row)?);
    }
    Ok(out)
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, table: &str, key: &Row) -> Result<Option<Row>> {
        let schema = self.schema(table)?;
        // A point read from the page cache takes microseconds: done here when the read
        // connection is free, without a thread handoff (commits use the writer's connection,
        // so a read never waits for an fsync).
        if let Ok(connection) = self.connection.try_lock() {
            return get_row(&connection, schema, key);
        }
        let table = table.to_string();
        let key = key.clone();
        self.blocking(move |conn, tables| get_row(conn, &tables[&table], &key))
            .await
    }

    async fn query(&self, query: Query) -> Result<Vec<Row>> {
        self.blocking(move |conn, tables| run_query(conn, tables, &query))
            .await
    }

    async fn apply(&self, mutations: Vec<Mutation>) -> Result<Applied> {
        let mut applied = self.writer.apply(vec![mutations]).await?;
        Ok(applied.pop().unwrap_or(Applied::Yes))
    }

    async fn apply_in_order(&self, batches: Vec<Vec<Mutation>>) -> Result<Vec<Applied>> {
        self.writer.apply(batches).await
    }

    async fn apply_lazily(&self, mutations: Vec<Mutation>) -> Result<Applied> {
        let mut applied = self.writer.apply_lazily(vec![mutations]).await?;
        Ok(applied.pop().unwrap_or(Applied::Yes))
    }

    async fn scan(&self, table: &str, page: Option<Vec<u8>>, size: usize) -> Result<ScanPage> {
        self.schema(table)?;
        let table = table.to_string();
        let offset = match page {
            None => 0,
            Some(bytes) => u64::from_be_bytes(
                bytes
                    .try_into()
                    .map_err(|_| StorageError::Invalid("not a page token of this store".into()))?,
            ),
        };
        self.blocking(move |conn, tables| scan_rows(conn, &tables[&table], offset, size))
            .await
    }

    async fn check(&self) -> Result<()> {
        self.blocking(|conn, _| {
            conn.execute(
                "INSERT OR REPLACE INTO __health (id, at) VALUES (1, ?1)",
                [now_millis()],
            )
            .map_err(sql_err)?;
            conn.query_row("SELECT at FROM __health WHERE id = 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql_err)?;
            Ok(())
        })
        .await
    }

    fn tables(&self) -> &BTreeMap<String, TableSchema> {
        &self.tables
    }
}
