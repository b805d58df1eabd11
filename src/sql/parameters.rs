//! What Postgres's Bind checks of a prepared statement, read from its
//! text: how many parameters it takes, and whether it ends a transaction
//! (the only statements a failed transaction still runs).

use super::lex::{lex_spanned, Tok};

/// The number of parameters Postgres gives a statement of `sql` parsed
/// with `declared` parameter types: the declared ones, or more if the
/// text refers to a higher `$n` (Postgres's variable parameters). A `$n`
/// inside a string, a quoted identifier or a comment is not one.
pub(crate) fn parameter_count(sql: &str, declared: usize) -> usize {
    let (tokens, _) = lex_spanned(sql);
    let s = sql.as_bytes();
    let highest = tokens
        .iter()
        .filter(|t| t.tok == Tok::Other && s[t.start] == b'$')
        .filter_map(|t| {
            let digits = s[t.end..].iter().take_while(|c| c.is_ascii_digit()).count();
            std::str::from_utf8(&s[t.end..t.end + digits])
                .ok()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    highest.max(declared)
}

/// Whether `sql` is one statement that ends a transaction, as Postgres's
/// `IsTransactionExitStmt`: COMMIT (END), ROLLBACK (ABORT), ROLLBACK TO a
/// savepoint, PREPARE TRANSACTION. Postgres parses and binds these in a
/// failed transaction; every other statement gets 25P02 there.
pub(crate) fn is_transaction_exit(sql: &str) -> bool {
    let (tokens, error) = lex_spanned(sql);
    if error.is_some() {
        return false;
    }
    let mut words = tokens.iter().map(|t| &t.tok);
    let first = match words.next() {
        Some(Tok::Word(w)) => w.to_ascii_lowercase(),
        _ => return false,
    };
    let rest: Vec<&Tok> = words.collect();
    let one_statement = rest
        .iter()
        .position(|t| **t == Tok::Semi)
        .is_none_or(|i| rest[i..].iter().all(|t| **t == Tok::Semi));
    if !one_statement {
        return false;
    }
    let second_is =
        |w: &str| matches!(rest.first(), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w));
    match first.as_str() {
        // COMMIT PREPARED and ROLLBACK PREPARED run outside a transaction
        // block; Postgres does not count them as ending one.
        "commit" | "rollback" => !second_is("prepared"),
        "end" | "abort" => true,
        "prepare" => second_is("transaction"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_count_is_the_highest_placeholder_or_the_declared_count() {
        for (sql, declared, want) in [
            ("SELECT 1", 0, 0),
            ("SELECT $1", 0, 1),
            ("SELECT $2, $1::int", 0, 2),
            ("SELECT $1", 3, 3),
            ("SELECT a FROM t WHERE a > $12", 0, 12),
            ("SELECT '$3', \"$4\", $$ $5 $$ -- $6\n, $1 /* $7 */", 0, 1),
            ("SELECT x$1 FROM t", 0, 0),
        ] {
            assert_eq!(parameter_count(sql, declared), want, "{sql}");
        }
    }

    #[test]
    fn only_statements_that_end_a_transaction_count_as_its_exit() {
        for (sql, want) in [
            ("COMMIT", true),
            ("commit work", true),
            ("END", true),
            ("ROLLBACK", true),
            ("ABORT;", true),
            ("ROLLBACK TO SAVEPOINT a", true),
            ("rollback to a", true),
            ("PREPARE TRANSACTION 'x'", true),
            ("COMMIT PREPARED 'x'", false),
            ("ROLLBACK PREPARED 'x'", false),
            ("PREPARE p AS SELECT 1", false),
            ("BEGIN", false),
            ("SAVEPOINT a", false),
            ("SELECT 1", false),
            ("COMMIT; SELECT 1", false),
            ("", false),
        ] {
            assert_eq!(is_transaction_exit(sql), want, "{sql}");
        }
    }
}
