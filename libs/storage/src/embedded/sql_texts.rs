//! The SQL text of each statement shape the embedded store runs, built once per thread.
//!
//! A statement's text follows from its table's schema and, for a write, the columns it sets.
//! Built anew for every read and write (every column quoted, lists joined, a dozen small
//! allocations), it cost about as much CPU as SQLite spent running the point reads. Each thread
//! keeps the texts it has built, so no lock is taken; a text is used only for a schema equal to
//! the one it was built from, since two stores may each have a table of one name with different
//! columns.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::schema::TableSchema;

/// What a statement does, as far as its text depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// A point read by the whole primary key.
    Get,
    /// A delete by the whole primary key.
    Delete,
    /// An insert that updates the columns it sets if the row exists (or, with
    /// `replace_expired`, replaces the row: an insert if not exists over an expired row).
    Upsert { replace_expired: bool },
}

/// Shapes kept per table name on a thread, beyond which texts are built every time (the
/// shapes are the code's, so a table has a handful).
const SHAPES_KEPT: usize = 64;

/// One text kept, with what it was built from.
struct Text {
    shape: Shape,
    schema: TableSchema,
    columns: Vec<String>,
    sql: Rc<str>,
}

thread_local! {
    static TEXTS: RefCell<HashMap<String, Vec<Text>>> = RefCell::new(HashMap::new());
}

/// The text of the `shape` statement on `table` that sets `columns` (none for a read or a
/// delete): `build`'s the first time on this thread, kept after that.
pub(super) fn text<'a>(
    shape: Shape,
    table: &TableSchema,
    columns: impl Iterator<Item = &'a str> + Clone,
    build: impl FnOnce() -> String,
) -> Rc<str> {
    TEXTS.with(|texts| {
        let mut texts = texts.borrow_mut();
        let kept = texts.get(table.name.as_str()).and_then(|kept| {
            kept.iter().find(|t| {
                t.shape == shape
                    && t.columns.iter().map(String::as_str).eq(columns.clone())
                    && t.schema == *table
            })
        });
        if let Some(text) = kept {
            return text.sql.clone();
        }
        let sql: Rc<str> = build().into();
        let kept = texts.entry(table.name.clone()).or_default();
        if kept.len() < SHAPES_KEPT {
            kept.push(Text {
                shape,
                schema: table.clone(),
                columns: columns.map(str::to_string).collect(),
                sql: sql.clone(),
            });
        }
        sql
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnType;

    fn table(columns: &[&str]) -> TableSchema {
        TableSchema {
            name: "t".into(),
            columns: columns
                .iter()
                .map(|c| (c.to_string(), ColumnType::Text))
                .collect(),
            partition_key: vec![columns[0].to_string()],
            clustering_key: vec![],
        }
    }

    #[test]
    fn a_text_is_built_once_per_shape_and_schema() {
        let (narrow, wide) = (table(&["id", "a"]), table(&["id", "a", "b"]));
        let built = std::cell::Cell::new(0);
        let build = |sql: &str| {
            built.set(built.get() + 1);
            sql.to_string()
        };
        let none = std::iter::empty::<&str>;
        assert_eq!(
            &*text(Shape::Get, &narrow, none(), || build("get narrow")),
            "get narrow"
        );
        assert_eq!(
            &*text(Shape::Get, &narrow, none(), || build("again")),
            "get narrow"
        );
        // A table of the same name in another store, with other columns, has its own text.
        assert_eq!(
            &*text(Shape::Get, &wide, none(), || build("get wide")),
            "get wide"
        );
        assert_eq!(
            &*text(Shape::Delete, &narrow, none(), || build("del")),
            "del"
        );
        let set = |c: &'static [&'static str]| c.iter().copied();
        let upsert = Shape::Upsert {
            replace_expired: false,
        };
        assert_eq!(
            &*text(upsert, &wide, set(&["a"]), || build("set a")),
            "set a"
        );
        assert_eq!(
            &*text(upsert, &wide, set(&["a", "b"]), || build("set ab")),
            "set ab"
        );
        assert_eq!(
            &*text(upsert, &wide, set(&["a"]), || build("again")),
            "set a"
        );
        let replace = Shape::Upsert {
            replace_expired: true,
        };
        assert_eq!(
            &*text(replace, &wide, set(&["a"]), || build("replace a")),
            "replace a"
        );
        assert_eq!(built.get(), 6);
    }
}
