//! The readers of SQL text in `src/sql/`: the cheap scan every Query and
//! Parse gets (`query_scan`), the lexer, LISTEN/UNLISTEN parsing and
//! planning, temporary objects, session state, DROP/CREATE DATABASE.
//!
//! Must hold: no panic; the lexer's tokens lie in order on character
//! boundaries; the cheap scan never says "nothing here" where the closer
//! look (LISTEN planning, session-state detection) finds something; a
//! mixed LISTEN query's rewrite keeps the text's length in characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgharbor::fuzzing;
use pgharbor::sql::listen::{self, QueryListens};
use pgharbor::sql::{drop_database, session_state};

/// Texts over this are not inspected (`query_scan::MAX_INSPECTED`).
const MAX_INSPECTED: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INSPECTED {
        return;
    }
    let (listen_seen, state_seen, names_seen) = fuzzing::query_scan(data, true);
    assert_eq!(fuzzing::query_scan(data, false).1, state_seen);
    if !state_seen {
        assert_eq!(
            fuzzing::detect_closely(data),
            None,
            "scan missed session state"
        );
        assert_eq!(session_state::detect(data, |_| true), None);
    }
    let _ = (names_seen, fuzzing::statement_may_name(data));
    let _ = (drop_database::target(data), drop_database::template(data));
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    check_lexer(sql);
    if let Some(what) = fuzzing::temp_object(sql) {
        assert!(state_seen, "scan missed a temporary {what}");
    }
    let plan = listen::plan(sql);
    if !listen_seen {
        assert_eq!(plan, Ok(QueryListens::None), "scan missed a LISTEN");
    }
    if let Ok(QueryListens::Mixed(mixed)) = &plan {
        assert_eq!(mixed.text.chars().count(), sql.chars().count());
        assert!(mixed.commands().next().is_some());
    }
    let _ = listen::parse(sql);
    let _ = (
        listen::may_commit(sql, false),
        listen::may_commit(sql, true),
    );
    let _ = listen::truncate_channel(sql);
});

fn check_lexer(sql: &str) {
    let (spans, error) = fuzzing::lex_spans(sql);
    let mut at = 0;
    for (start, end) in spans {
        assert!(
            at <= start && start < end && end <= sql.len(),
            "{start}..{end}"
        );
        assert!(sql.is_char_boundary(start) && sql.is_char_boundary(end));
        at = end;
    }
    if error.is_none() {
        // Only white space and comments follow the last token.
        let rest = sql[at..].trim_start_matches(|c: char| c.is_ascii_whitespace());
        assert!(
            rest.is_empty() || rest.starts_with("--") || rest.starts_with("/*"),
            "{rest:?}"
        );
    }
}
