//! The CQL schema reader takes any text and gives a schema or an error, never a panic.

use proptest::prelude::*;
use sterling_storage::schema::{parse_create_table, statements};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn any_text_is_read_or_refused(text in "(CREATE TABLE |PRIMARY KEY|[(),;a-z_ ]|WITH CLUSTERING ORDER BY|DESC|text|bigint|--|\\n){0,40}") {
        for statement in statements(&text) {
            let _ = parse_create_table(&statement);
        }
    }

    #[test]
    fn arbitrary_unicode_too(text in ".{0,200}") {
        let _ = parse_create_table(&text);
    }
}
