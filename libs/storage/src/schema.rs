//! Table schemas read from a service's CQL migrations.
//!
//! The migrations are the one source of truth: the Cassandra backend executes them, and the
//! embedded backend reads the `CREATE TABLE` statements to learn partition keys, clustering keys
//! and column types.

use std::collections::BTreeMap;

use crate::StorageError;

/// A CQL column type the platform supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `text`, `varchar`, `ascii`.
    Text,
    /// `bigint` (the one integer type: `int` and smaller are refused so that both backends
    /// bind the same 64-bit values).
    BigInt,
    /// `boolean`.
    Boolean,
    /// `uuid`, `timeuuid`.
    Uuid,
    /// `timestamp` (milliseconds since the epoch).
    Timestamp,
    /// `blob`.
    Blob,
}

impl ColumnType {
    fn parse(cql: &str) -> Result<Self, StorageError> {
        Ok(match cql.to_ascii_lowercase().as_str() {
            "text" | "varchar" | "ascii" => ColumnType::Text,
            "bigint" => ColumnType::BigInt,
            "boolean" => ColumnType::Boolean,
            "uuid" | "timeuuid" => ColumnType::Uuid,
            "timestamp" => ColumnType::Timestamp,
            "blob" => ColumnType::Blob,
            other => {
                return Err(StorageError::Schema(format!(
                    "unsupported column type {other}"
                )));
            }
        })
    }
}

/// Sort order of a clustering column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Ascending (CQL's default).
    Asc,
    /// Descending.
    Desc,
}

/// A table: its columns and primary key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// Table name, without keyspace.
    pub name: String,
    /// Columns in declaration order.
    pub columns: Vec<(String, ColumnType)>,
    /// Partition key columns.
    pub partition_key: Vec<String>,
    /// Clustering columns with their order.
    pub clustering_key: Vec<(String, Order)>,
}

impl TableSchema {
    /// The type of a column, if the table has it.
    pub fn column_type(&self, column: &str) -> Option<ColumnType> {
        self.columns
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, t)| *t)
    }

    /// Every primary-key column: partition key then clustering key.
    pub fn primary_key(&self) -> impl Iterator<Item = &str> {
        self.partition_key
            .iter()
            .map(String::as_str)
            .chain(self.clustering_key.iter().map(|(c, _)| c.as_str()))
    }
}

/// A versioned migration file, e.g. `0001_init.cql`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Increasing version number.
    pub version: u32,
    /// File name, for the record of applied migrations.
    pub name: &'static str,
    /// The CQL statements, separated by `;`.
    pub cql: &'static str,
}

/// Builds a `&'static [Migration]` from files next to the crate's `migrations/` folder.
///
/// `migrations!(1 => "0001_init.cql", 2 => "0002_more.cql")`
#[macro_export]
macro_rules! migrations {
    ($($version:literal => $file:literal),+ $(,)?) => {
        &[$($crate::Migration {
            version: $version,
            name: $file,
            cql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $file)),
        }),+]
    };
}

/// Splits CQL text into statements, dropping `--` and `//` comments.
pub fn statements(cql: &str) -> Vec<String> {
    let without_comments: String = cql
        .lines()
        .map(|line| {
            let cut = [line.find("--"), line.find("//")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(line.len());
            &line[..cut]
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|s| !s.is_empty())
        .collect()
}

/// Reads every `CREATE TABLE` of the migrations, in order, into table schemas.
pub fn tables(migrations: &[Migration]) -> Result<BTreeMap<String, TableSchema>, StorageError> {
    let mut tables = BTreeMap::new();
    for migration in migrations {
        for statement in statements(migration.cql) {
            let lower = statement.to_ascii_lowercase();
            if lower.starts_with("create table") {
                let table = parse_create_table(&statement)?;
                tables.insert(table.name.clone(), table);
            } else if lower.starts_with("alter table") {
                let (name, added) = parse_alter_table_add(&statement)?;
                let table = tables.get_mut(&name).ok_or_else(|| {
                    StorageError::Schema(format!("ALTER TABLE of unknown table {name}"))
                })?;
                for (column, ty) in added {
                    if table.column_type(&column).is_none() {
                        table.columns.push((column, ty));
                    }
                }
            }
        }
    }
    Ok(tables)
}

/// Parses `ALTER TABLE name ADD [IF NOT EXISTS] column type[, column type ...]` (with or
/// without parentheses): the table's name and the columns added. Migrations write
/// `IF NOT EXISTS` so that a migration interrupted half-way can run again on Cassandra.
pub fn parse_alter_table_add(
    statement: &str,
) -> Result<(String, Vec<(String, ColumnType)>), StorageError> {
    let bad = |why: &str| StorageError::Schema(format!("{why}: {statement}"));
    let words: Vec<&str> = statement.split_whitespace().collect();
    let lower: Vec<String> = words.iter().map(|w| w.to_ascii_lowercase()).collect();
    let add = lower
        .iter()
        .position(|w| w == "add")
        .ok_or_else(|| bad("only ALTER TABLE ... ADD is supported"))?;
    let mut name_at = 2;
    if lower.get(2).map(String::as_str) == Some("if") {
        name_at = 4; // IF EXISTS
    }
    let name = words
        .get(name_at)
        .filter(|_| name_at < add)
        .ok_or_else(|| bad("no table name"))?
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut rest = words[add + 1..].join(" ");
    if rest.to_ascii_lowercase().starts_with("if not exists") {
        rest = rest["if not exists".len()..].to_string();
    }
    let rest = rest.trim().trim_start_matches('(').trim_end_matches(')');
    let mut columns = Vec::new();
    for definition in rest.split(',') {
        let parts: Vec<&str> = definition.split_whitespace().collect();
        match parts.as_slice() {
            [column, ty] => columns.push((column.to_string(), ColumnType::parse(ty)?)),
            _ => return Err(bad("bad column definition")),
        }
    }
    Ok((name, columns))
}

/// Parses one `CREATE TABLE` statement.
pub fn parse_create_table(statement: &str) -> Result<TableSchema, StorageError> {
    let bad = |why: &str| StorageError::Schema(format!("{why}: {statement}"));
    let open = statement.find('(').ok_or_else(|| bad("no column list"))?;
    let close = matching_paren(statement, open).ok_or_else(|| bad("unbalanced parentheses"))?;
    let head: Vec<&str> = statement[..open].split_whitespace().collect();
    let name = head
        .last()
        .ok_or_else(|| bad("no table name"))?
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string();
    let body = &statement[open + 1..close];
    let mut columns = Vec::new();
    let mut partition_key = Vec::new();
    let mut clustering = Vec::new();
    for part in split_top_level(body) {
        let lower = part.to_ascii_lowercase();
        if lower.starts_with("primary key") {
            let inner_open = part.find('(').ok_or_else(|| bad("bad primary key"))?;
            let inner_close =
                matching_paren(part, inner_open).ok_or_else(|| bad("bad primary key"))?;
            let keys = split_top_level(&part[inner_open + 1..inner_close]);
            let mut keys = keys.into_iter();
            let first = keys.next().ok_or_else(|| bad("empty primary key"))?;
            partition_key = first
                .trim_matches(|c| c == '(' || c == ')')
                .split(',')
                .map(|k| k.trim().to_string())
                .collect();
            clustering = keys.map(|k| k.trim().to_string()).collect();
        } else {
            let words: Vec<&str> = part.split_whitespace().collect();
            if words.len() < 2 {
                return Err(bad("bad column definition"));
            }
            columns.push((words[0].to_string(), ColumnType::parse(words[1])?));
            if lower.ends_with("primary key") {
                partition_key = vec![words[0].to_string()];
            }
        }
    }
    if partition_key.is_empty() {
        return Err(bad("no primary key"));
    }
    let orders = clustering_orders(&statement[close + 1..].to_ascii_lowercase())
        .ok_or_else(|| bad("bad clustering order"))?;
    let clustering_key = clustering
        .into_iter()
        .map(|c| {
            let order = orders
                .get(&c.to_ascii_lowercase())
                .copied()
                .unwrap_or(Order::Asc);
            (c, order)
        })
        .collect();
    let table = TableSchema {
        name,
        columns,
        partition_key,
        clustering_key,
    };
    for key in table.primary_key() {
        if table.column_type(key).is_none() {
            return Err(bad(&format!("key column {key} is not declared")));
        }
    }
    Ok(table)
}

/// The `WITH CLUSTERING ORDER BY (...)` of a table's options (`tail`, lower case), by column;
/// `None` when it is malformed.
fn clustering_orders(tail: &str) -> Option<BTreeMap<String, Order>> {
    let Some(at) = tail.find("clustering order by") else {
        return Some(BTreeMap::new());
    };
    let rest = &tail[at..];
    let o = rest.find('(')?;
    let c = matching_paren(rest, o)?;
    Some(
        rest[o + 1..c]
            .split(',')
            .filter_map(|item| {
                let mut w = item.split_whitespace();
                let col = w.next()?.to_string();
                let order = match w.next() {
                    Some("desc") => Order::Desc,
                    _ => Order::Asc,
                };
                Some((col, order))
            })
            .collect(),
    )
}

fn matching_paren(text: &str, open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices().skip_while(|(i, _)| *i < open) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_types_and_clustering_order() {
        let cql = "-- feed items\nCREATE TABLE IF NOT EXISTS sterling_feed.items (\n account_id text,\n item_id text,\n amount bigint, -- minor units\n seen boolean,\n PRIMARY KEY ((account_id), item_id)\n) WITH CLUSTERING ORDER BY (item_id DESC);\nCREATE TABLE cards (token text PRIMARY KEY, status text);";
        let tables = tables(&[Migration {
            version: 1,
            name: "0001.cql",
            cql,
        }])
        .unwrap();
        let items = &tables["items"];
        assert_eq!(items.partition_key, vec!["account_id"]);
        assert_eq!(
            items.clustering_key,
            vec![("item_id".to_string(), Order::Desc)]
        );
        assert_eq!(items.column_type("amount"), Some(ColumnType::BigInt));
        assert_eq!(items.column_type("seen"), Some(ColumnType::Boolean));
        let cards = &tables["cards"];
        assert_eq!(cards.partition_key, vec!["token"]);
        assert!(cards.clustering_key.is_empty());
    }

    #[test]
    fn refuses_undeclared_keys_and_unknown_types() {
        assert!(parse_create_table("CREATE TABLE t (a text, PRIMARY KEY (b))").is_err());
        assert!(parse_create_table("CREATE TABLE t (a list<text> PRIMARY KEY)").is_err());
        assert!(parse_create_table("CREATE TABLE t (a text PRIMARY KEY, n int)").is_err());
        assert!(parse_create_table("CREATE TABLE t (a text)").is_err());
        assert!(parse_alter_table_add("ALTER TABLE t DROP a").is_err());
        assert!(parse_alter_table_add("ALTER TABLE t ADD a list<text>").is_err());
    }

    #[test]
    fn later_migrations_add_columns() {
        let first = Migration {
            version: 1,
            name: "0001.cql",
            cql: "CREATE TABLE t (a text PRIMARY KEY, b bigint);",
        };
        let second = Migration {
            version: 2,
            name: "0002.cql",
            cql: "ALTER TABLE t ADD IF NOT EXISTS c boolean; ALTER TABLE ks.t ADD (d text, e timestamp);",
        };
        let tables = tables(&[first, second]).unwrap();
        let t = &tables["t"];
        assert_eq!(t.column_type("c"), Some(ColumnType::Boolean));
        assert_eq!(t.column_type("d"), Some(ColumnType::Text));
        assert_eq!(t.column_type("e"), Some(ColumnType::Timestamp));
        let unknown = Migration {
            version: 3,
            name: "0003.cql",
            cql: "ALTER TABLE nope ADD x text;",
        };
        assert!(super::tables(&[first, unknown]).is_err());
    }

    #[test]
    fn composite_partition_keys() {
        let t = parse_create_table(
            "CREATE TABLE t (a text, b bigint, c uuid, d timestamp, PRIMARY KEY ((a, b), c, d)) WITH CLUSTERING ORDER BY (c ASC, d DESC)",
        )
        .unwrap();
        assert_eq!(t.partition_key, vec!["a", "b"]);
        assert_eq!(
            t.clustering_key,
            vec![("c".into(), Order::Asc), ("d".into(), Order::Desc)]
        );
    }
}
