//! The Cassandra (and ScyllaDB) backend on the `scylla` driver.
//!
//! Each service owns keyspace `sterling_<service>`; its migrations run once per version under a
//! lightweight-transaction lock, so instances starting together do not race on schema. Every
//! statement is prepared once and cached; reads and writes run at LOCAL_QUORUM (configurable),
//! conditional writes with LOCAL_SERIAL. A conditional write whose outcome is unknown (a
//! timeout) is resolved by reading the rows back at SERIAL before answering.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::response::{PagingState, PagingStateResponse};
use scylla::statement::Consistency;
use scylla::statement::SerialConsistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlTimestamp, CqlValue};
use tokio::sync::Mutex;

use crate::schema::{self, ColumnType, Migration, Order, TableSchema};
use crate::{
    Applied, Condition, Mutation, Query, Result, Row, ScanPage, StorageError, Store, Value,
    check_type, validate_batch,
};

/// How to reach and use the cluster.
#[derive(Debug, Clone)]
pub struct CassandraConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// The keyspace's replication, as CQL, e.g.
    /// `{'class': 'NetworkTopologyStrategy', 'dc1': 3}`.
    pub replication: String,
    /// Consistency of reads and writes.
    pub consistency: Consistency,
    /// Client-side timeout of one request.
    pub request_timeout: Duration,
}

impl Default for CassandraConfig {
    fn default() -> Self {
        CassandraConfig {
            nodes: vec!["127.0.0.1:9042".into()],
            replication: "{'class': 'SimpleStrategy', 'replication_factor': 1}".into(),
            consistency: Consistency::LocalQuorum,
            request_timeout: Duration::from_secs(2),
        }
    }
}

impl CassandraConfig {
    /// From `STERLING_CASSANDRA_NODES` (comma separated), `STERLING_CASSANDRA_REPLICATION`,
    /// `STERLING_CASSANDRA_CONSISTENCY` (`local_quorum`, `quorum`, `one`, ...).
    pub fn from_env() -> Self {
        let mut config = CassandraConfig::default();
        if let Ok(nodes) = std::env::var("STERLING_CASSANDRA_NODES") {
            config.nodes = nodes.split(',').map(|n| n.trim().to_string()).collect();
        }
        if let Ok(replication) = std::env::var("STERLING_CASSANDRA_REPLICATION") {
            config.replication = replication;
        }
        if let Ok(c) = std::env::var("STERLING_CASSANDRA_CONSISTENCY") {
            config.consistency = parse_consistency(&c)
                .unwrap_or_else(|| panic!("STERLING_CASSANDRA_CONSISTENCY={c:?} is not a level"));
        }
        config
    }
}

/// What a claim on a migration's row found: whether this instance took it, and the row as it
/// stands (state, owner, last update).
struct MigrationClaim {
    applied: bool,
    state: Option<String>,
    owner: Option<uuid::Uuid>,
    updated: Option<CqlTimestamp>,
}

impl MigrationClaim {
    fn read(result: scylla::response::query_result::QueryResult) -> Result<MigrationClaim> {
        let mut claim = MigrationClaim {
            applied: false,
            state: None,
            owner: None,
            updated: None,
        };
        for (name, value) in lwt_columns(result)? {
            match (name.as_str(), value) {
                ("[applied]", Some(CqlValue::Boolean(b))) => claim.applied = b,
                ("state", Some(CqlValue::Text(s))) => claim.state = Some(s),
                ("owner", Some(CqlValue::Uuid(u))) => claim.owner = Some(u),
                ("updated_at", Some(CqlValue::Timestamp(t))) => claim.updated = Some(t),
                _ => {}
            }
        }
        Ok(claim)
    }
}

/// A consistency level by its CQL name (`local_quorum`, `quorum`, `one`, ...).
pub fn parse_consistency(level: &str) -> Option<Consistency> {
    Some(match level.to_ascii_lowercase().as_str() {
        "one" => Consistency::One,
        "local_one" => Consistency::LocalOne,
        "quorum" => Consistency::Quorum,
        "local_quorum" => Consistency::LocalQuorum,
        "all" => Consistency::All,
        "each_quorum" => Consistency::EachQuorum,
        _ => return None,
    })
}

/// Schema changes wait for every node to agree: they get far longer than ordinary requests.
const DDL_TIMEOUT: Duration = Duration::from_secs(60);

/// A schema-change statement with [`DDL_TIMEOUT`].
fn ddl_statement(cql: impl Into<String>) -> scylla::statement::unprepared::Statement {
    let mut statement = scylla::statement::unprepared::Statement::new(cql);
    statement.set_request_timeout(Some(DDL_TIMEOUT));
    statement
}

fn unavailable(e: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(e.to_string())
}

/// Connects one session to the cluster.
pub async fn connect(config: &CassandraConfig) -> Result<Session> {
    let profile = ExecutionProfile::builder()
        .consistency(config.consistency)
        .serial_consistency(Some(SerialConsistency::LocalSerial))
        .request_timeout(Some(config.request_timeout))
        .build();
    let mut builder = SessionBuilder::new()
        .default_execution_profile_handle(profile.into_handle())
        .connection_timeout(Duration::from_secs(3));
    for node in &config.nodes {
        builder = builder.known_node(node);
    }
    builder.build().await.map_err(unavailable)
}

/// A [`Store`] on one keyspace of a Cassandra or ScyllaDB cluster.
pub struct CassandraStore {
    session: Arc<Session>,
    keyspace: String,
    tables: BTreeMap<String, TableSchema>,
    prepared: Mutex<HashMap<String, PreparedStatement>>,
}

/// The keyspace of a service in a namespace: `<namespace>_<service>` with `-` as `_`
/// (`sterling_cards`).
pub fn keyspace_of(namespace: &str, service: &str) -> String {
    format!("{namespace}_{service}").replace('-', "_")
}

/// Runs a schema change and waits until every node agrees on it. The driver waits for the
/// node that ran it to agree; just after a node starts, that node may not be in the
/// session's pool yet, and the driver gives up on the wait (not the change, which is made):
/// then the nodes the pool reaches are waited for instead.
async fn schema_change(session: &Session, cql: String) -> Result<()> {
    match session.query_unpaged(ddl_statement(cql), &[]).await {
        Ok(_) => Ok(()),
        Err(scylla::errors::ExecutionError::SchemaAgreementError(e)) => {
            tracing::warn!(error = %e, "schema change made, its agreement not seen; waiting again");
            schema_agreement(session).await
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// Waits until every node the session reaches agrees on the schema, asking again a few times,
/// 200 ms apart, while a connection is not ready.
async fn schema_agreement(session: &Session) -> Result<()> {
    let mut attempt = 1;
    loop {
        match session.await_schema_agreement().await {
            Ok(_) => return Ok(()),
            Err(e) if attempt < 5 => {
                tracing::debug!(error = %e, attempt, "no schema agreement yet; asking again");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
}

impl CassandraStore {
    /// Drops the store's keyspace and everything in it: for tearing a namespace down (tests
    /// remove what they made).
    pub async fn drop_keyspace(&self) -> Result<()> {
        schema_change(
            &self.session,
            format!("DROP KEYSPACE IF EXISTS {}", self.keyspace),
        )
        .await
    }

    /// Opens a keyspace (creating it), applies pending migrations under a lock.
    pub async fn open(
        config: &CassandraConfig,
        keyspace: &str,
        migrations: &[Migration],
    ) -> Result<CassandraStore> {
        // A session of its own: migrations switch its keyspace.
        let session = Arc::new(connect(config).await?);
        let replication = &config.replication;
        let keyspace = keyspace.to_string();
        let tables = schema::tables(migrations)?;
        let ddl = |cql: String| {
            let session = session.clone();
            async move { schema_change(&session, cql).await }
        };
        ddl(format!(
            "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}"
        ))
        .await?;
        ddl(format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (version bigint PRIMARY KEY, name text, state text, owner uuid, updated_at timestamp)"
        ))
        .await?;
        ddl(format!(
            "CREATE TABLE IF NOT EXISTS {keyspace}.sterling_health (id bigint PRIMARY KEY, at timestamp)"
        ))
        .await?;
        let store = CassandraStore {
            session: session.clone(),
            keyspace: keyspace.clone(),
            tables,
            prepared: Mutex::new(HashMap::new()),
        };
        for migration in migrations {
            store.apply_migration(migration).await?;
        }
        Ok(store)
    }

    async fn apply_migration(&self, migration: &Migration) -> Result<()> {
        let ks = &self.keyspace;
        let me = uuid::Uuid::new_v4();
        let version = i64::from(migration.version);
        loop {
            let claim = self
                .session
                .query_unpaged(
                    format!("INSERT INTO {ks}.schema_migrations (version, name, state, owner, updated_at) VALUES (?, ?, 'applying', ?, toTimestamp(now())) IF NOT EXISTS"),
                    (version, migration.name, me),
                )
                .await
                .map_err(unavailable)?;
            let MigrationClaim {
                applied,
                state,
                owner,
                updated,
            } = MigrationClaim::read(claim)?;
            let mine = applied || owner == Some(me);
            if !mine && state.as_deref() == Some("applied") {
                return Ok(());
            }
            let stale = updated.is_some_and(|t| crate::now_millis() - t.0 > 60_000);
            if mine || stale {
                if stale && !mine {
                    // The instance applying it died: take the lock over.
                    let taken = self
                        .session
                        .query_unpaged(
                            format!("UPDATE {ks}.schema_migrations SET owner = ?, updated_at = toTimestamp(now()) WHERE version = ? IF owner = ?"),
                            (me, version, owner),
                        )
                        .await
                        .map_err(unavailable)?;
                    if !lwt_applied(taken)? {
                        continue;
                    }
                }
                self.run_statements(migration).await?;
                self.session
                    .query_unpaged(
                        format!("UPDATE {ks}.schema_migrations SET state = 'applied', updated_at = toTimestamp(now()) WHERE version = ? IF owner = ?"),
                        (version, me),
                    )
                    .await
                    .map_err(unavailable)?;
                tracing::info!(keyspace = %ks, migration = migration.name, "migration applied");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs a migration's statements in order, each agreed by the cluster before the next.
    async fn run_statements(&self, migration: &Migration) -> Result<()> {
        for statement in schema::statements(migration.cql) {
            self.session
                .use_keyspace(&self.keyspace, false)
                .await
                .map_err(unavailable)?;
            schema_change(&self.session, statement).await?;
        }
        Ok(())
    }

    fn schema(&self, table: &str) -> Result<&TableSchema> {
        self.tables
            .get(table)
            .ok_or_else(|| StorageError::Invalid(format!("unknown table {table}")))
    }

    async fn prepare(&self, cql: &str) -> Result<PreparedStatement> {
        if let Some(p) = self.prepared.lock().await.get(cql) {
            return Ok(p.clone());
        }
        let prepared = self.session.prepare(cql).await.map_err(unavailable)?;
        self.prepared
            .lock()
            .await
            .insert(cql.to_string(), prepared.clone());
        Ok(prepared)
    }

    fn select_list(table: &TableSchema) -> String {
        table
            .columns
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Counts one lightweight transaction of this keyspace (Paxos: a conditional write takes
    /// four round trips to the replicas, prepare, read, propose and commit; a read at SERIAL
    /// the first two): `sterling_cassandra_lightweight_transactions_total{keyspace, kind}`,
    /// `kind` a conditional write (a batch with conditions is one) or a read at SERIAL.
    fn count_paxos_round(&self, kind: &'static str) {
        metrics::counter!(
            "sterling_cassandra_lightweight_transactions_total",
            "keyspace" => self.keyspace.clone(),
            "kind" => kind
        )
        .increment(1);
    }

    async fn read_key(&self, table: &TableSchema, key: &Row, serial: bool) -> Result<Option<Row>> {
        let (predicate, values) = key_predicate(table, key)?;
        let cql = format!(
            "SELECT {} FROM {}.{} WHERE {predicate}",
            Self::select_list(table),
            self.keyspace,
            table.name
        );
        let mut prepared = self.prepare(&cql).await?;
        if serial {
            prepared.set_consistency(Consistency::LocalSerial);
            self.count_paxos_round("serial_read");
        }
        let result = self
            .session
            .execute_unpaged(&prepared, values)
            .await
            .map_err(unavailable)?;
        Ok(decode_rows(table, result)?.into_iter().next())
    }

    /// The rows the conditions of a batch look at, read linearizably (SERIAL).
    async fn conditional_rows(&self, mutations: &[Mutation]) -> Result<Vec<Option<Row>>> {
        let mut rows = Vec::new();
        for m in mutations.iter().filter(|m| m.is_conditional()) {
            let table = self.schema(m.table())?;
            let key = match m {
                Mutation::Insert { row, .. } => row,
                Mutation::Update { key, .. } | Mutation::Delete { key, .. } => key,
            };
            rows.push(self.read_key(table, key, true).await?);
        }
        Ok(rows)
    }

    /// Decides a conditional batch whose outcome is unknown by reading its rows at SERIAL:
    /// applied if every conditional row now holds what the batch wrote.
    async fn resolve_unknown(&self, mutations: &[Mutation]) -> Result<Applied> {
        let mut current_rows = Vec::new();
        let mut all_ours = true;
        for m in mutations.iter().filter(|m| m.is_conditional()) {
            let table = self.schema(m.table())?;
            let (key, expected): (&Row, Option<Row>) = match m {
                Mutation::Insert { row, .. } => (row, Some(row.clone())),
                Mutation::Update { key, set, .. } => {
                    let mut r = key.clone();
                    r.0.extend(set.0.clone());
                    (key, Some(r))
                }
                Mutation::Delete { key, .. } => (key, None),
            };
            let current = self.read_key(table, key, true).await?;
            let ours = match (&expected, &current) {
                (None, None) => true,
                (Some(e), Some(c)) => {
                    e.0.iter()
                        .all(|(k, v)| c.0.get(k).unwrap_or(&Value::Null) == v)
                }
                _ => false,
            };
            all_ours &= ours;
            current_rows.push(current);
        }
        Ok(if all_ours {
            Applied::Yes
        } else {
            Applied::No(current_rows)
        })
    }
}

/// The row a lightweight transaction answers, column by column (`[applied]` first).
fn lwt_columns(
    result: scylla::response::query_result::QueryResult,
) -> Result<Vec<(String, Option<CqlValue>)>> {
    let rows = result.into_rows_result().map_err(unavailable)?;
    let row = rows
        .rows::<scylla::value::Row>()
        .map_err(unavailable)?
        .next()
        .ok_or_else(|| unavailable("no LWT result"))?
        .map_err(unavailable)?;
    let names = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_string());
    Ok(names.zip(row.columns).collect())
}

fn lwt_applied(result: scylla::response::query_result::QueryResult) -> Result<bool> {
    Ok(lwt_columns(result)?
        .into_iter()
        .any(|(name, value)| name == "[applied]" && value == Some(CqlValue::Boolean(true))))
}

fn to_cql(value: &Value) -> Option<CqlValue> {
    match value {
        Value::Null => None,
        Value::Text(v) => Some(CqlValue::Text(v.clone())),
        Value::BigInt(v) => Some(CqlValue::BigInt(*v)),
        Value::Boolean(v) => Some(CqlValue::Boolean(*v)),
        Value::Uuid(v) => Some(CqlValue::Uuid(*v)),
        Value::Timestamp(v) => Some(CqlValue::Timestamp(CqlTimestamp(*v))),
        Value::Blob(v) => Some(CqlValue::Blob(v.clone())),
    }
}

fn from_cql(ty: ColumnType, value: CqlValue) -> Result<Value> {
    let bad = || StorageError::Decode(format!("stored value does not match type {ty:?}"));
    Ok(match (ty, value) {
        (ColumnType::Text, CqlValue::Text(v) | CqlValue::Ascii(v)) => Value::Text(v),
        (ColumnType::BigInt, CqlValue::BigInt(v)) => Value::BigInt(v),
        (ColumnType::BigInt, CqlValue::Int(v)) => Value::BigInt(i64::from(v)),
        (ColumnType::Boolean, CqlValue::Boolean(v)) => Value::Boolean(v),
        (ColumnType::Uuid, CqlValue::Uuid(v)) => Value::Uuid(v),
        (ColumnType::Uuid, CqlValue::Timeuuid(v)) => Value::Uuid(v.into()),
        (ColumnType::Timestamp, CqlValue::Timestamp(v)) => Value::Timestamp(v.0),
        (ColumnType::Blob, CqlValue::Blob(v)) => Value::Blob(v),
        _ => return Err(bad()),
    })
}

fn key_predicate(table: &TableSchema, key: &Row) -> Result<(String, Vec<Option<CqlValue>>)> {
    let mut parts = Vec::new();
    let mut values = Vec::new();
    for k in table.primary_key() {
        let v = key
            .get(k)
            .ok_or_else(|| StorageError::Invalid(format!("key column {k} missing")))?;
        check_type(table, k, v)?;
        parts.push(format!("{k} = ?"));
        values.push(to_cql(v));
    }
    Ok((parts.join(" AND "), values))
}

fn decode_rows(
    table: &TableSchema,
    result: scylla::response::query_result::QueryResult,
) -> Result<Vec<Row>> {
    let rows = result.into_rows_result().map_err(unavailable)?;
    let mut out = Vec::new();
    for row in rows.rows::<scylla::value::Row>().map_err(unavailable)? {
        let row = row.map_err(|e| StorageError::Decode(e.to_string()))?;
        let mut decoded = Row::new();
        for ((name, ty), value) in table.columns.iter().zip(row.columns) {
            if let Some(value) = value {
                decoded.0.insert(name.clone(), from_cql(*ty, value)?);
            }
        }
        out.push(decoded);
    }
    Ok(out)
}

/// One mutation as CQL with its bound values.
/// The `IF ...` of a conditional update (empty without conditions), its values appended to
/// `values`.
fn if_clause(
    table: &TableSchema,
    conditions: &[Condition],
    values: &mut Vec<Option<CqlValue>>,
) -> Result<String> {
    let mut ifs = Vec::new();
    for condition in conditions {
        match condition {
            Condition::Exists => ifs.push("EXISTS".to_string()),
            Condition::Equals(c, v) => {
                check_type(table, c, v)?;
                ifs.push(format!("{c} = ?"));
                values.push(to_cql(v));
            }
        }
    }
    if ifs.is_empty() {
        return Ok(String::new());
    }
    if ifs.iter().any(|i| i == "EXISTS") && ifs.len() > 1 {
        // `IF EXISTS` cannot be combined; column conditions imply existence.
        ifs.retain(|i| i != "EXISTS");
    }
    Ok(format!(" IF {}", ifs.join(" AND ")))
}

fn statement(
    keyspace: &str,
    table: &TableSchema,
    m: &Mutation,
) -> Result<(String, Vec<Option<CqlValue>>)> {
    let name = format!("{keyspace}.{}", table.name);
    Ok(match m {
        Mutation::Insert {
            row,
            if_not_exists,
            ttl,
            ..
        } => {
            let newest = m.newest_version()?;
            let mut columns = Vec::new();
            let mut values = Vec::new();
            for (c, v) in &row.0 {
                check_type(table, c, v)?;
                columns.push(c.as_str());
                values.push(to_cql(v));
            }
            let marks = vec!["?"; columns.len()].join(", ");
            let mut cql = format!(
                "INSERT INTO {name} ({}) VALUES ({marks})",
                columns.join(", ")
            );
            if *if_not_exists {
                cql.push_str(" IF NOT EXISTS");
            }
            let mut using = Vec::new();
            if let Some(ttl) = ttl {
                using.push(format!("TTL {}", ttl.as_secs().max(1)));
            }
            if let Some(version) = newest {
                // The version as the write's timestamp: the highest wins, in any order. Bound,
                // not written into the text, which is prepared once per shape.
                using.push("TIMESTAMP ?".to_string());
                values.push(to_cql(&Value::BigInt(version)));
            }
            if !using.is_empty() {
                cql.push_str(&format!(" USING {}", using.join(" AND ")));
            }
            (cql, values)
        }
        Mutation::Update {
            key,
            set,
            conditions,
            ..
        } => {
            let mut values = Vec::new();
            let mut assignments = Vec::new();
            for (c, v) in &set.0 {
                check_type(table, c, v)?;
                assignments.push(format!("{c} = ?"));
                values.push(to_cql(v));
            }
            let (predicate, key_values) = key_predicate(table, key)?;
            values.extend(key_values);
            let mut cql = format!(
                "UPDATE {name} SET {} WHERE {predicate}",
                assignments.join(", ")
            );
            cql.push_str(&if_clause(table, conditions, &mut values)?);
            (cql, values)
        }
        Mutation::Delete { key, if_exists, .. } => {
            let (predicate, values) = key_predicate(table, key)?;
            let mut cql = format!("DELETE FROM {name} WHERE {predicate}");
            if *if_exists {
                cql.push_str(" IF EXISTS");
            }
            (cql, values)
        }
    })
}

#[async_trait]
impl Store for CassandraStore {
    async fn get(&self, table: &str, key: &Row) -> Result<Option<Row>> {
        let schema = self.schema(table)?;
        self.read_key(schema, key, false).await
    }

    async fn query(&self, query: Query) -> Result<Vec<Row>> {
        let table = self.schema(&query.table)?;
        let mut predicate = Vec::new();
        let mut values: Vec<Option<CqlValue>> = Vec::new();
        for k in &table.partition_key {
            let v = query.partition.get(k).ok_or_else(|| {
                StorageError::Invalid(format!("partition key column {k} missing"))
            })?;
            check_type(table, k, v)?;
            predicate.push(format!("{k} = ?"));
            values.push(to_cql(v));
        }
        if query.after.is_some() && (query.from.is_some() || query.to.is_some()) {
            return Err(StorageError::Invalid(
                "a cursor cannot be combined with a clustering range".into(),
            ));
        }
        for (bound, op) in [(&query.from, ">="), (&query.to, "<")] {
            if let Some(v) = bound {
                let (column, _) = table.clustering_key.first().ok_or_else(|| {
                    StorageError::Invalid(format!("table {} has no clustering key", table.name))
                })?;
                check_type(table, column, v)?;
                predicate.push(format!("{column} {op} ?"));
                values.push(to_cql(v));
            }
        }
        if let Some(after) = &query.after {
            let orders: Vec<Order> = table.clustering_key.iter().map(|(_, o)| *o).collect();
            if orders.windows(2).any(|w| w[0] != w[1]) {
                return Err(StorageError::Invalid(
                    "cursors need one clustering order for all clustering columns".into(),
                ));
            }
            let columns: Vec<&str> = table
                .clustering_key
                .iter()
                .map(|(c, _)| c.as_str())
                .collect();
            let op = if orders.first() == Some(&Order::Desc) {
                "<"
            } else {
                ">"
            };
            for c in &columns {
                let v = after.get(c).ok_or_else(|| {
                    StorageError::Invalid(format!("cursor lacks clustering column {c}"))
                })?;
                check_type(table, c, v)?;
                values.push(to_cql(v));
            }
            predicate.push(format!(
                "({}) {op} ({})",
                columns.join(", "),
                vec!["?"; columns.len()].join(", ")
            ));
        }
        let mut cql = format!(
            "SELECT {} FROM {}.{} WHERE {}",
            Self::select_list(table),
            self.keyspace,
            table.name,
            predicate.join(" AND ")
        );
        if let Some(limit) = query.limit {
            cql.push_str(&format!(" LIMIT {limit}"));
        }
        let prepared = self.prepare(&cql).await?;
        let result = self
            .session
            .execute_unpaged(&prepared, values)
            .await
            .map_err(unavailable)?;
        decode_rows(table, result)
    }

    async fn apply(&self, mutations: Vec<Mutation>) -> Result<Applied> {
        validate_batch(&self.tables, &mutations)?;
        let conditional = mutations.iter().any(Mutation::is_conditional);
        if conditional {
            self.count_paxos_round("conditional_write");
        }
        let mut statements = Vec::new();
        for m in &mutations {
            let table = self.schema(m.table())?;
            statements.push(statement(&self.keyspace, table, m)?);
        }
        let outcome = if statements.len() == 1 {
            let (cql, values) = statements.pop().unwrap_or_default();
            let prepared = self.prepare(&cql).await?;
            self.session.execute_unpaged(&prepared, values).await
        } else {
            let mut batch = Batch::new(BatchType::Logged);
            let mut all_values = Vec::new();
            for (cql, values) in statements {
                batch.append_statement(self.prepare(&cql).await?);
                all_values.push(values);
            }
            self.session.batch(&batch, all_values).await
        };
        match outcome {
            Ok(result) if conditional => {
                if lwt_applied(result)? {
                    Ok(Applied::Yes)
                } else {
                    // Report the rows the conditions looked at, read linearizably.
                    Ok(Applied::No(self.conditional_rows(&mutations).await?))
                }
            }
            Ok(_) => Ok(Applied::Yes),
            Err(e) if conditional => {
                tracing::warn!(error = %e, "conditional write outcome unknown; reading back at SERIAL");
                self.resolve_unknown(&mutations)
                    .await
                    .map_err(|read| unavailable(format!("{e}; read-back failed: {read}")))
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn scan(&self, table: &str, page: Option<Vec<u8>>, size: usize) -> Result<ScanPage> {
        let table = self.schema(table)?;
        let cql = format!(
            "SELECT {} FROM {}.{}",
            Self::select_list(table),
            self.keyspace,
            table.name
        );
        let mut prepared = self.prepare(&cql).await?;
        prepared.set_page_size(i32::try_from(size).unwrap_or(i32::MAX).max(1));
        let state = page.map_or_else(PagingState::start, PagingState::new_from_raw_bytes);
        let (result, next) = self
            .session
            .execute_single_page(&prepared, (), state)
            .await
            .map_err(unavailable)?;
        let next = match next {
            PagingStateResponse::HasMorePages { state } => {
                state.as_bytes_slice().map(|bytes| bytes.to_vec())
            }
            PagingStateResponse::NoMorePages => None,
        };
        Ok((decode_rows(table, result)?, next))
    }

    async fn check(&self) -> Result<()> {
        let ks = &self.keyspace;
        let write = self
            .prepare(&format!(
                "INSERT INTO {ks}.sterling_health (id, at) VALUES (1, toTimestamp(now()))"
            ))
            .await?;
        self.session
            .execute_unpaged(&write, &[])
            .await
            .map_err(unavailable)?;
        let read = self
            .prepare(&format!("SELECT at FROM {ks}.sterling_health WHERE id = 1"))
            .await?;
        self.session
            .execute_unpaged(&read, &[])
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn tables(&self) -> &BTreeMap<String, TableSchema> {
        &self.tables
    }
}
