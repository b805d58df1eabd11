//! Where the `RESET ALL` statements of a simple Query's text are, read as
//! Postgres splits the text into statements (see `listen::split_statements`).
//! The relay sets a client's startup settings again right after each one
//! (`client/reset_all.rs`).

use super::lex::{lex_spanned, Tok};
use super::listen::split_statements;

/// One `RESET ALL` statement of a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetAll {
    /// Its place among the text's statements (empty ones not counted).
    pub statement: usize,
    /// The byte just after its last token.
    pub end: usize,
}

/// The `RESET ALL` statements of `sql`, in order; empty when there is
/// none or when the text does not lex (the server then refuses it).
pub fn reset_all_statements(sql: &str) -> Vec<ResetAll> {
    let (tokens, lex_error) = lex_spanned(sql);
    if lex_error.is_some() {
        return Vec::new();
    }
    let word = |t: &Tok, w: &str| matches!(t, Tok::Word(x) if x.eq_ignore_ascii_case(w));
    split_statements(&tokens)
        .iter()
        .enumerate()
        .filter_map(|(statement, s)| match s {
            [reset, all] if word(&reset.tok, "reset") && word(&all.tok, "all") => Some(ResetAll {
                statement,
                end: all.end,
            }),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(sql: &str) -> Vec<(usize, usize)> {
        (reset_all_statements(sql).iter())
            .map(|r| (r.statement, r.end))
            .collect()
    }

    #[test]
    fn finds_each_reset_all_statement_and_where_it_ends() {
        assert_eq!(found("RESET ALL"), vec![(0, 9)]);
        assert_eq!(found(" reset   all ; "), vec![(0, 12)]);
        assert_eq!(found("SELECT 1;; RESET ALL; SELECT 2"), vec![(1, 20)]);
        assert_eq!(
            found("reset all; /* c */ Reset\nAll;"),
            vec![(0, 9), (1, 28)]
        );
    }

    #[test]
    fn other_statements_and_texts_are_not_taken() {
        for sql in [
            "RESET work_mem",
            "select 'reset all'",
            "-- reset all\nselect 1",
            "RESET ALL x",
            "CREATE FUNCTION f() RETURNS void BEGIN ATOMIC RESET ALL; END",
            "RESET ALL; select 'unterminated",
            "",
        ] {
            assert_eq!(found(sql), vec![], "{sql}");
        }
    }
}
