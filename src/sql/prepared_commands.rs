//! The SQL commands that act on a session's prepared statements:
//! `DEALLOCATE [PREPARE] name | ALL`, `DISCARD ALL` and `EXECUTE name`,
//! read from a text with the statement name's place in it, so that the
//! client's names can be replaced by the server's.

use std::ops::Range;

use super::lex::{lex_spans, quoted, Tok};
use super::query_scan::statement_may_name;

/// What one statement of a text does to prepared statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(String),
    /// `DISCARD ALL`.
    DiscardAll,
    /// `EXECUTE name [(args)]`.
    Execute(String),
}

/// What running one statement does to every prepared statement of its
/// session, read from its text when a named statement is parsed: a Bind
/// of it must keep pgharbor's books true (see `Session::bind_drops_all`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DropsAll {
    #[default]
    No,
    /// `DEALLOCATE [PREPARE] ALL`.
    Deallocate,
    /// `DISCARD ALL`.
    Discard,
}

/// Whether the one statement of `sql` (a Parse's text) is `DEALLOCATE
/// ALL` or `DISCARD ALL`: the cheap test first, so a text is lexed only
/// when it may be.
pub(crate) fn drops_all(sql: &[u8]) -> DropsAll {
    if !statement_may_name(sql) {
        return DropsAll::No;
    }
    let found = std::str::from_utf8(sql).ok().and_then(commands);
    match found.as_ref().map(|(found, count)| (found.first(), count)) {
        Some((Some(c), 1)) if c.kind == Kind::DeallocateAll => DropsAll::Deallocate,
        Some((Some(c), 1)) if c.kind == Kind::DiscardAll => DropsAll::Discard,
        _ => DropsAll::No,
    }
}

/// A statement [`commands`] found, with where its name is in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Command {
    pub kind: Kind,
    /// Byte range of the statement name (empty for the `ALL` forms).
    pub name_at: Range<usize>,
}

/// The commands of `sql`, one per statement, `None` for statements that
/// are something else, and the number of statements. `None` when the text
/// cannot be lexed (the server then says why).
pub(crate) fn commands(sql: &str) -> Option<(Vec<Command>, usize)> {
    let (tokens, starts, error) = lex_spans(sql);
    if error.is_some() {
        return None;
    }
    let mut found = Vec::new();
    let mut count = 0;
    let mut i = 0;
    while i < tokens.len() {
        let end = tokens[i..]
            .iter()
            .position(|t| *t == Tok::Semi)
            .map_or(tokens.len(), |n| i + n);
        if end > i {
            count += 1;
            if let Some(c) = command(sql, &tokens[i..end], &starts[i..end]) {
                found.push(c);
            }
        }
        i = end + 1;
    }
    Some((found, count))
}

/// One statement's tokens, with their start offsets.
fn command(sql: &str, toks: &[Tok], starts: &[usize]) -> Option<Command> {
    let word =
        |i: usize, w: &str| matches!(toks.get(i), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w));
    let all = || Command {
        kind: Kind::DeallocateAll,
        name_at: 0..0,
    };
    if word(0, "discard") && word(1, "all") && toks.len() == 2 {
        return Some(Command {
            kind: Kind::DiscardAll,
            name_at: 0..0,
        });
    }
    if word(0, "deallocate") {
        let at = if word(1, "prepare") && toks.len() == 3 {
            2
        } else {
            1
        };
        if toks.len() != at + 1 {
            return None;
        }
        if word(at, "all") {
            return Some(all());
        }
        let (name, range) = name(sql, toks.get(at)?, *starts.get(at)?)?;
        return Some(Command {
            kind: Kind::Deallocate(name),
            name_at: range,
        });
    }
    if word(0, "execute") && toks.len() >= 2 {
        let (name, range) = name(sql, &toks[1], *starts.get(1)?)?;
        return Some(Command {
            kind: Kind::Execute(name),
            name_at: range,
        });
    }
    None
}

/// A statement name token at `start`: its value (unquoted names folded to
/// lower case, as Postgres does) and its byte range.
fn name(sql: &str, tok: &Tok, start: usize) -> Option<(String, Range<usize>)> {
    match tok {
        Tok::Word(w) => Some((w.to_ascii_lowercase(), start..start + w.len())),
        Tok::Quoted(q) => {
            let (_, end) = quoted(sql, start, b'"')?;
            Some((q.clone(), start..end))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_with_their_name_in_place() {
        let sql = r#"DEALLOCATE PREPARE "My ""x"""; execute _pg3_1 ('a;b'); select 'execute y'; DeAllocate All; discard all"#;
        let (found, count) = commands(sql).unwrap();
        assert_eq!(count, 5);
        assert_eq!(found[0].kind, Kind::Deallocate("My \"x\"".into()));
        assert_eq!(&sql[found[0].name_at.clone()], r#""My ""x""""#);
        assert_eq!(found[1].kind, Kind::Execute("_pg3_1".into()));
        assert_eq!(&sql[found[1].name_at.clone()], "_pg3_1");
        assert_eq!(found[2].kind, Kind::DeallocateAll);
        assert_eq!(found[3].kind, Kind::DiscardAll);
        assert_eq!(found.len(), 4);
        let (found, _) = commands("deallocate Foo").unwrap();
        assert_eq!(found[0].kind, Kind::Deallocate("foo".into()));
        assert!(commands("deallocate x y").unwrap().0.is_empty());
        assert!(commands("execute 'x").is_none());
    }
}
