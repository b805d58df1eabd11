//! Session-only state in transaction mode: statements whose effect outlives
//! the transaction on the server that ran them (temporary tables, session
//! advisory locks, cursors WITH HOLD, SQL-level PREPARE, LOAD, and SET/RESET
//! of parameters Postgres does not report with ParameterStatus).
//!
//! Detection is by statement inspection of simple Query and Parse texts:
//! temporary objects by reading the text's tokens (`temp_objects.rs`; what
//! a function or DO block creates is caught on the server by
//! `client/temp_backstop.rs`); the rest by lower-casing each `;`-separated
//! statement and comparing its leading words; advisory locks are found as
//! function names anywhere in the text. Texts
//! over 64 KiB are not inspected. SET of a reported parameter (TimeZone,
//! DateStyle, application_name, …) is not session state: pgharbor learns it
//! from ParameterStatus and applies it on every server the client lands on.

use bytes::BytesMut;

use super::query_scan::MAX_INSPECTED;
use super::quote::quote_literal;
use super::temp_objects::temp_object;
use crate::protocol::frontend;

/// What a statement does that only its own server remembers, for messages.
///
/// `sql` is in the client's encoding; only ASCII keywords are looked for, so
/// anything that is not UTF-8 is read lossily.
pub fn detect(sql: &[u8], is_reported: impl Fn(&str) -> bool) -> Option<String> {
    if sql.len() > MAX_INSPECTED || !may_hold_session_state(sql) {
        return None;
    }
    detect_closely(sql, is_reported)
}

/// [`detect`] without its cheap first look, which must never say no where
/// this finds something (the SQL fuzz target checks it).
pub(crate) fn detect_closely(sql: &[u8], is_reported: impl Fn(&str) -> bool) -> Option<String> {
    let text = String::from_utf8_lossy(sql);
    if let Some(what) = temp_object(&text) {
        return Some(what.to_string());
    }
    let lower = text.to_ascii_lowercase();
    for lock in [
        "pg_advisory_lock(",
        "pg_advisory_lock_shared(",
        "pg_try_advisory_lock(",
        "pg_try_advisory_lock_shared(",
    ] {
        if lower.contains(lock) {
            return Some(format!(
                "{} (session advisory lock)",
                lock.trim_end_matches('(')
            ));
        }
    }
    for stmt in lower.split(';') {
        let words: Vec<&str> = stmt.split_whitespace().take(6).collect();
        let w = |i: usize| words.get(i).copied().unwrap_or("");
        let found = match w(0) {
            "declare" if stmt.contains("with hold") => Some("DECLARE … WITH HOLD".into()),
            "prepare" if w(1) != "transaction" => Some("PREPARE (SQL-level)".into()),
            "load" => Some("LOAD".into()),
            "set" | "reset" => {
                let name = if w(1) == "session" && w(2) != "characteristics" {
                    w(2)
                } else {
                    w(1)
                };
                let name = name.split(['=', '\'']).next().unwrap_or("");
                // RESET ALL is not session state either: the server resets
                // what it holds, reports the reported parameters it changes,
                // and pgharbor forgets the unreported settings it applied
                // there (`client/server_replies.rs`), so the client's own startup
                // settings are applied again at its next checkout. asyncpg
                // sends it at every release of a pooled connection.
                let local_or_txn = matches!(
                    name,
                    "local" | "transaction" | "constraints" | "session" | "all" | "role" | ""
                );
                if local_or_txn || is_reported(name) {
                    None
                } else {
                    Some(format!("{} {name}", w(0).to_uppercase()))
                }
            }
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// A look that allocates nothing, run on every query: false when no
/// statement begins with a word [`detect`] reads further and no advisory
/// lock function is called, so [`detect`] cannot find anything. Ordinary traffic
/// (SELECT, INSERT, BEGIN, …) then skips the lower-cased copy and the word
/// lists, which cost a sixth of the proxy's instructions per transaction.
/// It may say true where `detect` finds nothing: it compares prefixes, and
/// a statement that begins with a non-ASCII character (Unicode white space
/// that `detect` would skip) always counts.
fn may_hold_session_state(b: &[u8]) -> bool {
    super::query_scan::scan(b, false).session_state
}

/// A simple Query whose execution raises `message` with SQLSTATE 0A000 on
/// the server, so the refusal lands exactly where Postgres would put an
/// error (and aborts an open transaction as an error would).
pub fn refusal_query(out: &mut BytesMut, message: &str) {
    frontend::query(out, &refusal_sql(message));
}

/// The same refusal as an unnamed-statement Parse (no parameters), for the
/// extended protocol: the error comes at Execute, in the Parse's place.
pub fn refusal_parse(out: &mut BytesMut, message: &str) {
    frontend::parse_untyped(out, "", &refusal_sql(message));
}

fn refusal_sql(message: &str) -> String {
    format!(
        "DO $pgharbor$ BEGIN RAISE EXCEPTION USING ERRCODE = '0A000', MESSAGE = {}; END $pgharbor$",
        quote_literal(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reported(n: &str) -> bool {
        matches!(n, "timezone" | "application_name" | "datestyle")
    }

    #[test]
    fn finds_session_state() {
        for sql in [
            "create temp table t (a int)",
            "CREATE TEMPORARY TABLE t AS select 1",
            "begin; create local temp table x(a int); commit",
            "select pg_advisory_lock(1)",
            "DECLARE c CURSOR WITH HOLD FOR select 1",
            "PREPARE p AS select 1",
            "SET statement_timeout = '5s'",
            "set session search_path to a",
        ] {
            assert!(detect(sql.as_bytes(), reported).is_some(), "{sql}");
        }
    }

    #[test]
    fn quick_look_agrees_with_the_full_one() {
        for sql in [
            "  CrEaTe TEMP table t (a int)",
            "select 1;\n\tSET statement_timeout = 0",
            "select PG_TRY_ADVISORY_LOCK_SHARED(1)",
            "reset all",
            "Load 'x'",
            "\u{a0}set search_path = a",
        ] {
            assert!(may_hold_session_state(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SELECT abalance FROM t WHERE aid = 1;",
            "begin",
            "END;",
            ";;",
            "",
        ] {
            assert!(!may_hold_session_state(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn leaves_ordinary_statements_alone() {
        for sql in [
            "select 'create temp table' as x",
            "SET TimeZone = 'UTC'",
            "set application_name to 'x'",
            "SET LOCAL statement_timeout = '1s'",
            "set transaction isolation level serializable",
            "select pg_advisory_xact_lock(1)",
            "PREPARE TRANSACTION 'x'",
            "RESET ALL",
            "select pg_advisory_unlock_all(); close all; unlisten *; reset all;",
            "insert into t values (1)",
            "",
        ] {
            assert!(detect(sql.as_bytes(), reported).is_none(), "{sql}");
        }
    }

    #[test]
    fn reads_texts_in_other_encodings() {
        // LATIN1 'é' (0xE9) is not UTF-8: still inspected, never rejected.
        let set = b"SET search_path = 'caf\xe9'";
        assert_eq!(detect(set, reported).as_deref(), Some("SET search_path"));
        assert!(detect(b"select 'caf\xe9'", reported).is_none());
    }
}
