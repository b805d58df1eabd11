//! One look at a simple Query's text, on every query, for the two checks
//! that may need a closer one: may a statement be LISTEN or UNLISTEN (the
//! relay answers those itself), and may one hold session state (transaction
//! mode pins or refuses those)?
//!
//! Both only care about statement starts (the text's, and after each `;`)
//! and, for advisory locks, about opening parentheses, so one `memchr` pass
//! serves both; a `SELECT … INTO TEMP` or `INTO pg_temp.t` is found by a
//! second pass, for the word `temp`, only when the first found nothing. The answers may be true where the closer look finds
//! nothing, never false where it would find something.

/// Texts longer than this are not inspected.
pub(crate) const MAX_INSPECTED: usize = 64 * 1024;

/// What the closer looks must examine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct QueryScan {
    pub listen: bool,
    pub session_state: bool,
    /// A statement may be DEALLOCATE, DISCARD or EXECUTE (`prepared_sql`).
    pub names_statements: bool,
}

/// Scans `sql`; with `listen` false only for session state. Texts over
/// 64 KiB are not inspected (both answers false).
pub(crate) fn scan(sql: &[u8], listen: bool) -> QueryScan {
    let mut found = QueryScan::default();
    if sql.len() > MAX_INSPECTED {
        return found;
    }
    let mut walk = Walk {
        found: &mut found,
        listen,
        searched: false,
        may_create_temp: false,
    };
    walk.statement(sql);
    for i in memchr::memchr2_iter(b';', b'(', sql) {
        if walk.done() {
            break;
        }
        if sql[i] == b';' {
            walk.statement(&sql[i + 1..]);
        } else if !walk.found.session_state {
            walk.found.session_state = advisory_lock_call(&sql[..i]);
        }
    }
    let may_create_temp = walk.may_create_temp;
    if !found.session_state && may_create_temp {
        found.session_state = mentions_temp(sql);
    }
    found
}

/// White space before a statement, as Postgres's lexer skips it.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

/// Whether a statement starting with `rest` (its first byte `first`, lower
/// case) may begin with a word a closer look cares about (CREATE, DECLARE,
/// PREPARE, LOAD, SET, RESET, LISTEN, UNLISTEN, DEALLOCATE, DISCARD,
/// EXECUTE), or with what the looks read further (a comment, a non-ASCII
/// byte). SELECT, INSERT, UPDATE, BEGIN, COMMIT … end here, at one or two
/// byte comparisons.
fn may_begin_with_a_keyword(first: u8, rest: &[u8]) -> bool {
    match first {
        b'c' | b'd' | b'p' | b'l' | b'r' | b'e' | b'-' | b'/' => true,
        b'u' => rest
            .get(..8)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"unlisten")),
        b's' => rest
            .get(..3)
            .is_some_and(|w| w.eq_ignore_ascii_case(b"set")),
        c => !c.is_ascii(),
    }
}

struct Walk<'a> {
    found: &'a mut QueryScan,
    listen: bool,
    /// The rest of the text was searched for LISTEN anywhere already (a
    /// statement began with what may be a comment): later statements are
    /// part of that rest, so it is never searched twice.
    searched: bool,
    /// A statement starts like one that may create a temporary object
    /// (CREATE, SELECT … INTO, WITH, EXPLAIN, or a comment first), so the
    /// text is searched for `temp`.
    may_create_temp: bool,
}

impl Walk<'_> {
    fn done(&self) -> bool {
        self.found.session_state
            && self.found.names_statements
            && (self.found.listen || !self.listen)
    }

    /// A statement starts at `rest` (before its white space).
    fn statement(&mut self, rest: &[u8]) {
        let Some(at) = rest.iter().position(|&c| !is_space(c)) else {
            return;
        };
        let rest = &rest[at..];
        let first = rest[0].to_ascii_lowercase();
        self.may_create_temp |=
            matches!(first, b'c' | b's' | b'w' | b'e' | b'(' | b'-' | b'/') || !first.is_ascii();
        if !may_begin_with_a_keyword(first, rest) {
            return;
        }
        if !self.found.session_state {
            self.found.session_state = statement_may_hold(rest);
        }
        if !self.found.names_statements {
            self.found.names_statements = statement_may_name(rest);
        }
        if self.listen && !self.found.listen {
            match first_word_is_listen(rest) {
                Some(is) => self.found.listen = is,
                None if !self.searched => {
                    self.searched = true;
                    self.found.listen = may_be_listen(rest);
                }
                None => {}
            }
        }
    }
}

/// Leading words of the statements `session_state::detect` looks at further.
const LEADING_WORDS: [&str; 6] = ["create", "declare", "prepare", "load", "set", "reset"];

/// Whether the text before an opening parenthesis ends with the name of a
/// lock function [`detect`] knows.
fn advisory_lock_call(before_paren: &[u8]) -> bool {
    ends_with_ignore_ascii_case(before_paren, b"advisory_lock")
        || ends_with_ignore_ascii_case(before_paren, b"advisory_lock_shared")
}

/// Whether `temp` (any case) is in the text: a `SELECT … INTO` may create
/// a temporary table (`INTO TEMP t`, `INTO pg_temp.t`), and SELECT is too
/// common a first word to look closer at every one. One `memchr` pass for
/// `p`; pgbench's texts and most others have none after `tem`.
fn mentions_temp(b: &[u8]) -> bool {
    memchr::memchr2_iter(b'p', b'P', b).any(|i| i >= 3 && b[i - 3..i].eq_ignore_ascii_case(b"tem"))
}

/// Whether the statement starting at `b` (after its white space) begins
/// with one of [`LEADING_WORDS`] or a non-ASCII character.
fn statement_may_hold(b: &[u8]) -> bool {
    let Some(first) = b
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c'))
    else {
        return false;
    };
    let rest = &b[first..];
    !rest[0].is_ascii()
        || LEADING_WORDS.iter().any(|k| {
            rest.get(..k.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(k.as_bytes()))
        })
}

fn ends_with_ignore_ascii_case(hay: &[u8], tail: &[u8]) -> bool {
    hay.len() >= tail.len() && hay[hay.len() - tail.len()..].eq_ignore_ascii_case(tail)
}

/// Cheap test before parsing: does the text mention LISTEN at all? Runs on
/// every query, so it only looks closer at the `l`s (found with `memchr`).
fn may_be_listen(sql: &[u8]) -> bool {
    sql.len() <= 64 * 1024
        && memchr::memchr2_iter(b'l', b'L', sql).any(|i| {
            sql.get(i + 1..i + 6)
                .is_some_and(|w| w.eq_ignore_ascii_case(b"isten"))
        })
}

/// Whether the statement starting at `sql` (before its white space, as the
/// LISTEN lexer skips it) begins with LISTEN or UNLISTEN; `None` when it
/// begins with what may be a comment or a semicolon, and only a search of
/// the whole text can tell.
fn first_word_is_listen(sql: &[u8]) -> Option<bool> {
    let start = sql
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(sql.len());
    let rest = &sql[start..];
    match rest.first() {
        None => Some(false),
        Some(b'-' | b'/' | b';') => None,
        Some(_) => Some([&b"listen"[..], b"unlisten"].iter().any(|k| {
            rest.get(..k.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(k))
        })),
    }
}

/// The leading words of the prepared-statement commands (DEALLOCATE,
/// DISCARD, EXECUTE; `client/prepared_sql.rs`).
const WORDS: [&[u8]; 3] = [b"deallocate", b"discard", b"execute"];

/// Whether the statement starting at `b` (before its white space and
/// comments) may be one of [`WORDS`]: a few byte comparisons, run on Query
/// and unnamed Parse texts, so that a text is lexed only when it may be
/// (a Parse holds one statement; a Query's statement starts are looked at
/// by `query_scan`, in its one pass).
pub(crate) fn statement_may_name(mut b: &[u8]) -> bool {
    loop {
        let Some(first) = b.iter().position(|c| !c.is_ascii_whitespace()) else {
            return false;
        };
        b = &b[first..];
        if b.starts_with(b"--") {
            match memchr::memchr(b'\n', b) {
                Some(end) => b = &b[end..],
                None => return false,
            }
        } else if b.starts_with(b"/*") {
            match memchr::memmem::find(&b[2..], b"*/") {
                // A nested comment: the lexer decides.
                Some(end) if memchr::memmem::find(&b[2..2 + end], b"/*").is_some() => return true,
                Some(end) => b = &b[end + 4..],
                None => return false,
            }
        } else {
            break;
        }
    }
    matches!(b[0] | 0x20, b'd' | b'e')
        && WORDS
            .iter()
            .any(|w| b.get(..w.len()).is_some_and(|p| p.eq_ignore_ascii_case(w)))
}

#[cfg(test)]
mod tests {
    use super::{may_be_listen, scan, statement_may_name, QueryScan};

    fn listen(sql: &str) -> bool {
        scan(sql.as_bytes(), true).listen
    }

    #[test]
    fn finds_listen_at_every_statement_start() {
        for sql in [
            "LISTEN a",
            "  unlisten *",
            "/* x */ Listen \"b\"",
            "select 1; lIsTeN c",
            "select 1;\n-- note\nlisten d",
            "begin; select 1; /* a */ /* b */ listen e; commit",
            "select ';' ; listen f",
        ] {
            assert!(listen(sql), "{sql}");
        }
    }

    #[test]
    fn passes_over_texts_without_a_listen_statement() {
        for sql in [
            "select 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
            "select 'listen'",
            "select listen from t",
            "",
            ";;",
        ] {
            assert!(!listen(sql), "{sql}");
        }
    }

    #[test]
    fn finds_listen_after_thousands_of_commented_statements() {
        // Every statement starts with what may be a comment; the text is
        // searched for LISTEN once, not once per statement.
        let sql = "select 1; -- x\n".repeat(4000) + "listen z";
        assert!(listen(&sql));
        let sql = "select 1; -- x\n".repeat(4000);
        assert!(!listen(&sql));
    }

    #[test]
    fn finds_both_in_one_pass() {
        let both = scan(b"set search_path = a; listen b", true);
        assert_eq!(
            both,
            QueryScan {
                listen: true,
                session_state: true,
                names_statements: false,
            }
        );
        let lock = scan(b"select pg_advisory_lock(1); select 2", false);
        assert!(lock.session_state && !lock.listen);
        assert_eq!(scan(b"select 1; select 2", true), QueryScan::default());
    }

    #[test]
    fn pgbench_texts_need_no_closer_look() {
        // select-only and tpcb-like, as pgbench sends them with -M simple
        // (values in the text) and -M extended / prepared ($n).
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "BEGIN;",
            "UPDATE pgbench_accounts SET abalance = abalance + -2127 WHERE aid = 48213;",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
            "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;",
            "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES (3, 1, 48213, -2127, CURRENT_TIMESTAMP);",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
            "END;",
        ] {
            assert_eq!(scan(sql.as_bytes(), true), QueryScan::default(), "{sql}");
        }
    }

    #[test]
    fn a_select_into_a_temporary_table_gets_a_closer_look() {
        for sql in [
            "select 1 as a into temp t",
            "SELECT 1 AS a INTO TEMPORARY t",
            "select 1 as a into pg_temp.t",
            "with x as (select 1) select * into \"pg_temp\".t from x",
        ] {
            assert!(scan(sql.as_bytes(), false).session_state, "{sql}");
        }
    }

    #[test]
    fn leaves_texts_over_the_limit_alone() {
        let sql = format!("listen a; set x = 1; select '{}'", "y".repeat(70 * 1024));
        assert_eq!(scan(sql.as_bytes(), true), QueryScan::default());
    }

    #[test]
    fn the_cheap_test_finds_every_statement_start() {
        for sql in [
            "DEALLOCATE x",
            "  discard all",
            "select 1; execute p(1)",
            "/* c */ deallocate all",
            "-- c\n /* d */ EXECUTE p",
            "/* a /* nested */ */ select 1",
        ] {
            let scan = scan(sql.as_bytes(), true);
            assert!(scan.names_statements, "{sql}");
        }
        assert!(!statement_may_name(b"select 1; execute p"));
        for sql in [
            "select 'deallocate'",
            "delete from t",
            "",
            "  ",
            "/* app=x */ select 1",
            "-- c\nselect 1",
        ] {
            let scan = scan(sql.as_bytes(), true);
            assert!(
                !scan.names_statements && !statement_may_name(sql.as_bytes()),
                "{sql}"
            );
        }
    }

    #[test]
    fn cheap_listen_test_finds_every_spelling() {
        for sql in [
            "LISTEN a",
            "  unlisten *",
            "/* x */ Listen \"b\"",
            "select 1; lIsTeN c",
        ] {
            assert!(may_be_listen(sql.as_bytes()), "{sql}");
        }
        for sql in ["select 1", "list", "l", "", "select 'liste'"] {
            assert!(!may_be_listen(sql.as_bytes()), "{sql}");
        }
    }

    /// A Parse's text gets the Query's one look (`query_scan`), which
    /// must find a LISTEN wherever it may start.
    #[test]
    fn a_parse_text_is_looked_at_for_listen_once() {
        let listen = |sql: &str| scan(sql.as_bytes(), true).listen;
        for sql in [
            "LISTEN a",
            " \n unlisten *",
            "/* x */ listen b",
            "-- c\nLISTEN d",
            "; listen e",
        ] {
            assert!(listen(sql), "{sql}");
        }
        for sql in ["SELECT abalance FROM t", "", "  ", "lis"] {
            assert!(!listen(sql), "{sql}");
        }
    }
}
