//! Recognizing a simple Query that is one `DROP DATABASE` statement.
//!
//! Postgres refuses to drop a database while any session is connected to
//! it (55006, "being accessed by other users"), and pgharbor's idle server
//! connections are such sessions. When a client's `DROP DATABASE x` fails
//! that way, pgharbor closes its idle servers to `x` and runs the statement
//! once more (see `client/replay.rs`); DROP DATABASE cannot run inside a
//! transaction block, so running it again cannot repeat other work.
//!
//! Only the plain form is recognized: optional white space, `DROP DATABASE
//! [IF EXISTS] name`, an optional `WITH (...)` clause, an optional `;`. A
//! text with comments or several statements is forwarded as it is and gets
//! no retry.

use super::lex::{ident_cont, ident_start, lex, quoted, Tok};

/// The database a lone `DROP DATABASE` statement in `sql` drops, as
/// Postgres names it (unquoted names folded to lower case).
pub fn target(sql: &[u8]) -> Option<String> {
    let rest = keyword(sql, b"drop")?;
    let rest = keyword(rest, b"database")?;
    let rest = match keyword(rest, b"if").and_then(|r| keyword(r, b"exists")) {
        Some(r) => r,
        None => rest,
    };
    let (name, rest) = identifier(skip_space(rest))?;
    let rest = trim_end(skip_space(rest));
    let rest = trim_end(rest.strip_suffix(b";").unwrap_or(rest));
    if rest.is_empty() {
        return Some(name);
    }
    // `WITH (FORCE)` and the like; nothing after it may start a statement.
    let options = keyword(rest, b"with")?;
    (!options.contains(&b';')).then_some(name)
}

/// Whether `sql` may be what [`target`] or [`template`] recognizes: its
/// first byte after white space starts DROP, CREATE or a comment. One
/// look at every Query of an idle client.
pub fn may_be_one(sql: &[u8]) -> bool {
    matches!(
        skip_space(sql).first(),
        Some(b'd' | b'D' | b'c' | b'C' | b'-' | b'/')
    )
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

fn skip_space(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| is_space(b)).count();
    &s[n..]
}

fn trim_end(s: &[u8]) -> &[u8] {
    let n = s.iter().rev().take_while(|&&b| is_space(b)).count();
    &s[..s.len() - n]
}

/// `s` after white space and the keyword `word` (which must end there).
fn keyword<'a>(s: &'a [u8], word: &[u8]) -> Option<&'a [u8]> {
    let s = skip_space(s);
    let head = s.get(..word.len())?;
    if !head.eq_ignore_ascii_case(word) {
        return None;
    }
    let rest = &s[word.len()..];
    match rest.first() {
        None => Some(rest),
        Some(&b) if is_space(b) || b == b'"' || b == b'(' || b == b';' => Some(rest),
        Some(_) => None,
    }
}

/// A quoted or unquoted identifier at the start of `s`, and what follows.
/// Lexed as the LISTEN parser lexes channel names.
fn identifier(s: &[u8]) -> Option<(String, &[u8])> {
    if s.first() == Some(&b'"') {
        // The name must be UTF-8; what follows it is looked at as bytes.
        let text = match std::str::from_utf8(s) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&s[..e.valid_up_to()]).ok()?,
        };
        let (name, end) = quoted(text, 0, b'"')?;
        return (!name.is_empty()).then(|| (name, &s[end..]));
    }
    if !ident_start(*s.first()?) {
        return None;
    }
    let n = s.iter().take_while(|&&b| ident_cont(b)).count();
    let name = std::str::from_utf8(&s[..n]).ok()?.to_ascii_lowercase();
    Some((name, &s[n..]))
}

/// The template of a lone `CREATE DATABASE x … TEMPLATE [=] t` statement
/// in `sql`, as Postgres names it: copying a database also fails with 55006
/// while sessions are connected to the template, and is retried the same
/// way (CREATE DATABASE cannot run inside a transaction block either).
pub fn template(sql: &[u8]) -> Option<String> {
    // Every Query of an idle client comes here: lexed only when it may be
    // one (it starts with CREATE, or with a comment).
    let start = skip_space(sql);
    let create = start
        .get(..6)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"create"));
    if !(create || start.starts_with(b"--") || start.starts_with(b"/*")) {
        return None;
    }
    let text = std::str::from_utf8(sql).ok()?;
    let (tokens, error) = lex(text);
    if error.is_some() {
        return None;
    }
    let mut statements = tokens.split(|t| *t == Tok::Semi).filter(|s| !s.is_empty());
    let stmt = statements.next()?;
    if statements.next().is_some() {
        return None;
    }
    let word =
        |i: usize, k: &str| matches!(stmt.get(i), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k));
    if !word(0, "create") || !word(1, "database") {
        return None;
    }
    let at = (3..stmt.len()).find(|&i| word(i, "template"))?;
    let value = match stmt.get(at + 1) {
        Some(Tok::Other) => at + 2,
        _ => at + 1,
    };
    match stmt.get(value)? {
        Tok::Word(w) if !w.eq_ignore_ascii_case("default") => Some(w.to_ascii_lowercase()),
        Tok::Quoted(q) => Some(q.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{target, template};

    #[test]
    fn finds_the_template_of_a_lone_create_database() {
        let t = |sql: &str| template(sql.as_bytes());
        assert_eq!(t("CREATE DATABASE x TEMPLATE t").as_deref(), Some("t"));
        assert_eq!(
            t("create database x with template = Tpl;").as_deref(),
            Some("tpl")
        );
        assert_eq!(
            t("/* c */ create database \"X\" owner app template \"My T\" encoding 'UTF8'")
                .as_deref(),
            Some("My T")
        );
        for sql in [
            "create database x",
            "create database x template default",
            "create database x template t; select 1",
            "select 1; create database x template t",
            "create table template (a int)",
            "create database x template 'unterminated",
        ] {
            assert_eq!(t(sql), None, "{sql}");
        }
    }

    fn t(sql: &str) -> Option<String> {
        target(sql.as_bytes())
    }

    #[test]
    fn finds_the_database_of_a_lone_drop_database() {
        assert_eq!(t("DROP DATABASE shop").as_deref(), Some("shop"));
        assert_eq!(t("  drop database Shop_2;  ").as_deref(), Some("shop_2"));
        assert_eq!(t("drop database if exists x").as_deref(), Some("x"));
        assert_eq!(
            t("DROP DATABASE \"My \"\"Db\"\"\"").as_deref(),
            Some("My \"Db\"")
        );
        assert_eq!(t("drop database\n\"x\";").as_deref(), Some("x"));
        assert_eq!(t("DROP DATABASE x WITH (FORCE)").as_deref(), Some("x"));
        assert_eq!(t("drop database exists").as_deref(), Some("exists"));
        assert_eq!(t("drop database if").as_deref(), Some("if"));
    }

    #[test]
    fn the_first_look_lets_every_recognized_text_through() {
        for sql in [
            "DROP DATABASE shop",
            "  drop database x",
            "\ncreate database x template t",
            "/* c */ create database x template t",
            "-- c\ncreate database x template t",
        ] {
            assert!(super::may_be_one(sql.as_bytes()), "{sql}");
        }
        for sql in ["select 1", "  update t set a = 1", "begin", ""] {
            assert!(!super::may_be_one(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn leaves_everything_else_alone() {
        for sql in [
            "select 1",
            "drop table x",
            "drop databasex y",
            "drop database",
            "drop database x; drop database y",
            "drop database x; select 1",
            "drop database x with (force); select 1",
            "drop database \"\"",
            "drop database \"unterminated",
            "-- comment\ndrop database x",
            "drop database x y",
        ] {
            assert_eq!(t(sql), None, "{sql}");
        }
    }
}
