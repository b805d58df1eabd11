//! Recognizes LISTEN / UNLISTEN in a simple-Query text, the way Postgres's
//! lexer and grammar read them: case-insensitive keywords, unquoted
//! identifiers folded to lower case (ASCII only, as in a UTF8 database),
//! `"quoted ""identifiers"""`, `U&"\0441\+01F600"` with optional `UESCAPE`,
//! comments, and truncation to 63 bytes (NAMEDATALEN - 1) on a character
//! boundary. Strings (`'…'`, `E'…'`, `$tag$…$tag$`) are skipped when splitting
//! statements; `standard_conforming_strings = on` is assumed.

use crate::protocol::sqlstate;
use crate::protocol::PgError;

/// Longest channel name Postgres keeps, in bytes.
pub const MAX_CHANNEL_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenCommand {
    Listen(String),
    Unlisten(String),
    UnlistenAll,
}

impl ListenCommand {
    /// The CommandComplete tag Postgres sends for it.
    pub fn tag(&self) -> &'static str {
        match self {
            ListenCommand::Listen(_) => "LISTEN",
            _ => "UNLISTEN",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenParseError {
    /// LISTEN/UNLISTEN together with other statements in one Query.
    #[error("pgharbor: in transaction pooling mode LISTEN and UNLISTEN must be sent in a query of their own, not together with other statements")]
    Mixed,
    /// Starts with LISTEN/UNLISTEN but is not a valid one.
    #[error("syntax error in {0}")]
    Syntax(String),
}

impl ListenParseError {
    /// The error the relay sends (an ERROR; the session goes on).
    pub fn to_pg_error(&self) -> PgError {
        match self {
            ListenParseError::Mixed => {
                PgError::error(sqlstate::FEATURE_NOT_SUPPORTED, self.to_string())
                    .with_hint("Send LISTEN/UNLISTEN as a separate query (nothing was executed).")
            }
            ListenParseError::Syntax(_) => PgError::error(sqlstate::SYNTAX_ERROR, self.to_string()),
        }
    }
}

/// Exactly one LISTEN/UNLISTEN statement → `Some`; no LISTEN/UNLISTEN at all
/// → `None`; mixed with anything else (even another LISTEN) → `Err(Mixed)`.
pub fn parse(sql: &str) -> Result<Option<ListenCommand>, ListenParseError> {
    match parse_many(sql)? {
        None => Ok(None),
        Some(mut v) if v.len() == 1 => Ok(v.pop()),
        Some(_) => Err(ListenParseError::Mixed),
    }
}

/// Like [`parse`], but a text made only of LISTEN/UNLISTEN statements
/// (`LISTEN a; LISTEN b;`) yields them all, in order; the relay then sends one
/// CommandComplete per statement and one ReadyForQuery.
pub fn parse_many(sql: &str) -> Result<Option<Vec<ListenCommand>>, ListenParseError> {
    let (tokens, lex_error) = lex(sql);
    let mut statements: Vec<&[Tok]> = tokens
        .split(|t| *t == Tok::Semi)
        .filter(|s| !s.is_empty())
        .collect();
    if let Some(e) = lex_error {
        // An unterminated quote or comment: the server reports it, unless the
        // statement we cannot read is one of ours.
        let ours = statements.iter().any(|s| is_listen_start(s));
        let last_is_ours = statements.last().is_some_and(|s| is_listen_start(s));
        return match (ours, last_is_ours, statements.len()) {
            (false, _, _) => Ok(None),
            (true, true, 1) => Err(ListenParseError::Syntax(e)),
            _ => Err(ListenParseError::Mixed),
        };
    }
    let listens = statements.iter().filter(|s| is_listen_start(s)).count();
    if listens == 0 {
        return Ok(None);
    }
    if listens < statements.len() {
        return Err(ListenParseError::Mixed);
    }
    statements
        .drain(..)
        .map(parse_statement)
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A token of Postgres's lexer, as far as pgharbor's readers of SQL text
/// (this one and the session-state scanner) need to tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    Word(String),
    Quoted(String),
    /// The raw text between the quotes of `U&"…"`, escapes not yet applied.
    UnicodeQuoted(String),
    Str(String),
    Star,
    Semi,
    /// `.` between the parts of a qualified name.
    Dot,
    Other,
}

fn is_listen_start(s: &[Tok]) -> bool {
    matches!(s.first(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("listen") || w.eq_ignore_ascii_case("unlisten"))
}

/// A byte that may start an unquoted SQL identifier.
pub(crate) fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

/// A byte that may continue an unquoted SQL identifier.
pub(crate) fn ident_cont(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Tokens up to the end, or up to the first lexical error (returned too).
pub(crate) fn lex(sql: &str) -> (Vec<Tok>, Option<String>) {
    let (tokens, _, error) = lex_spans(sql);
    (tokens, error)
}

/// [`lex`], with the byte offset where each token starts (the prepared
/// statement commands rewrite a name in place).
pub(crate) fn lex_spans(sql: &str) -> (Vec<Tok>, Vec<usize>, Option<String>) {
    let s = sql.as_bytes();
    let mut out = Vec::new();
    let mut starts = Vec::new();
    let mut i = 0;
    // Each turn of the loop adds at most one token, starting at `at`.
    let mut at = 0;
    macro_rules! fail {
        ($msg:expr) => {
            return (out, starts, Some($msg.to_string()))
        };
    }
    while i < s.len() {
        if starts.len() < out.len() {
            starts.push(at);
        }
        at = i;
        let b = s[i];
        let next = s.get(i + 1).copied();
        if b.is_ascii_whitespace() {
            i += 1;
        } else if b == b'-' && next == Some(b'-') {
            while i < s.len() && s[i] != b'\n' {
                i += 1;
            }
        } else if b == b'/' && next == Some(b'*') {
            let mut depth = 0;
            loop {
                if i + 1 >= s.len() {
                    fail!("unterminated /* comment");
                }
                if s[i] == b'/' && s[i + 1] == b'*' {
                    depth += 1;
                    i += 2;
                } else if s[i] == b'*' && s[i + 1] == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if (b == b'U' || b == b'u') && next == Some(b'&') && s.get(i + 2) == Some(&b'"') {
            match quoted(sql, i + 2, b'"') {
                Some((text, end)) => {
                    out.push(Tok::UnicodeQuoted(text));
                    i = end;
                }
                None => fail!("unterminated quoted identifier"),
            }
        } else if (b == b'U' || b == b'u') && next == Some(b'&') && s.get(i + 2) == Some(&b'\'') {
            match quoted(sql, i + 2, b'\'') {
                Some((_, end)) => {
                    out.push(Tok::Other);
                    i = end;
                }
                None => fail!("unterminated quoted string"),
            }
        } else if (b == b'E' || b == b'e') && next == Some(b'\'') {
            // Backslash escapes: skip \x pairs.
            i += 2;
            loop {
                match s.get(i) {
                    None => fail!("unterminated quoted string"),
                    Some(b'\\') => i += 2,
                    Some(b'\'') if s.get(i + 1) == Some(&b'\'') => i += 2,
                    Some(b'\'') => break,
                    _ => i += 1,
                }
            }
            i += 1;
            out.push(Tok::Other);
        } else if ident_start(b) {
            let start = i;
            while i < s.len() && ident_cont(s[i]) {
                i += 1;
            }
            out.push(Tok::Word(sql[start..i].to_string()));
        } else if b == b'"' {
            match quoted(sql, i, b'"') {
                Some((text, _)) if text.is_empty() => fail!("zero-length delimited identifier"),
                Some((text, end)) => {
                    out.push(Tok::Quoted(text));
                    i = end;
                }
                None => fail!("unterminated quoted identifier"),
            }
        } else if b == b'\'' {
            match quoted(sql, i, b'\'') {
                Some((text, end)) => {
                    out.push(Tok::Str(text));
                    i = end;
                }
                None => fail!("unterminated quoted string"),
            }
        } else if b == b'$' && next.is_some_and(|c| c == b'$' || (ident_start(c))) {
            // $tag$ … $tag$ (a tag has no '$' inside); else an operator-ish byte.
            let mut j = i + 1;
            while j < s.len() && ident_cont(s[j]) && s[j] != b'$' {
                j += 1;
            }
            if s.get(j) != Some(&b'$') {
                out.push(Tok::Other);
                i += 1;
                continue;
            }
            let tag = &sql[i..=j];
            match sql[j + 1..].find(tag) {
                Some(k) => i = j + 1 + k + tag.len(),
                None => fail!("unterminated dollar-quoted string"),
            }
            out.push(Tok::Other);
        } else {
            out.push(match b {
                b';' => Tok::Semi,
                b'*' => Tok::Star,
                b'.' => Tok::Dot,
                _ => Tok::Other,
            });
            i += 1;
        }
    }
    if starts.len() < out.len() {
        starts.push(at);
    }
    (out, starts, None)
}

/// The text of a `q`-quoted token starting at `start` (doubled quotes
/// undone) and the index after it.
pub(crate) fn quoted(sql: &str, start: usize, q: u8) -> Option<(String, usize)> {
    let s = sql.as_bytes();
    let mut text = String::new();
    let mut i = start + 1;
    let mut seg = i;
    loop {
        match s.get(i) {
            None => return None,
            Some(&c) if c == q => {
                text.push_str(&sql[seg..i]);
                if s.get(i + 1) == Some(&q) {
                    text.push(q as char);
                    i += 2;
                    seg = i;
                } else {
                    return Some((text, i + 1));
                }
            }
            _ => i += 1,
        }
    }
}

fn parse_statement(toks: &[Tok]) -> Result<ListenCommand, ListenParseError> {
    let Some(Tok::Word(kw)) = toks.first() else {
        unreachable!("only called on LISTEN/UNLISTEN statements")
    };
    let listen = kw.eq_ignore_ascii_case("listen");
    let what = if listen { "LISTEN" } else { "UNLISTEN" };
    let syntax = |m: &str| ListenParseError::Syntax(format!("{what}: {m}"));
    if !listen && toks.len() == 2 && toks[1] == Tok::Star {
        return Ok(ListenCommand::UnlistenAll);
    }
    let name = match &toks[1..] {
        [Tok::Word(w)] => {
            if RESERVED.iter().any(|r| w.eq_ignore_ascii_case(r)) {
                return Err(syntax(&format!("\"{w}\" is a reserved word; quote it")));
            }
            w.to_ascii_lowercase()
        }
        [Tok::Quoted(q)] => q.clone(),
        [Tok::UnicodeQuoted(raw)] => unicode_escapes(raw, '\\').map_err(|m| syntax(&m))?,
        [Tok::UnicodeQuoted(raw), Tok::Word(u), Tok::Str(e)]
            if u.eq_ignore_ascii_case("uescape") =>
        {
            let mut chars = e.chars();
            let esc = match (chars.next(), chars.next()) {
                (Some(c), None)
                    if !c.is_ascii_hexdigit() && !c.is_whitespace() && !"+'\"".contains(c) =>
                {
                    c
                }
                _ => return Err(syntax("invalid Unicode escape character")),
            };
            unicode_escapes(raw, esc).map_err(|m| syntax(&m))?
        }
        [] => return Err(syntax("a channel name is missing")),
        _ => return Err(syntax("expected one channel name")),
    };
    if name.is_empty() {
        return Err(syntax("zero-length delimited identifier"));
    }
    let name = truncate_channel(&name).to_string();
    Ok(if listen {
        ListenCommand::Listen(name)
    } else {
        ListenCommand::Unlisten(name)
    })
}

/// Applies `U&"…"` escapes: `<esc>XXXX`, `<esc>+XXXXXX`, `<esc><esc>`.
fn unicode_escapes(raw: &str, esc: char) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    let mut high: Option<u32> = None;
    let hex = |chars: &mut std::iter::Peekable<std::str::Chars>, n: usize| -> Result<u32, String> {
        let mut v = 0;
        for _ in 0..n {
            let d = chars
                .next()
                .and_then(|c| c.to_digit(16))
                .ok_or("invalid Unicode escape")?;
            v = v * 16 + d;
        }
        Ok(v)
    };
    while let Some(c) = chars.next() {
        if c != esc {
            if high.is_some() {
                return Err("invalid Unicode surrogate pair".into());
            }
            out.push(c);
            continue;
        }
        let cp = match chars.peek() {
            Some(&c2) if c2 == esc => {
                chars.next();
                out.push(esc);
                continue;
            }
            Some('+') => {
                chars.next();
                hex(&mut chars, 6)?
            }
            _ => hex(&mut chars, 4)?,
        };
        let cp = match (high.take(), cp) {
            (None, 0xD800..=0xDBFF) => {
                high = Some(cp);
                continue;
            }
            (Some(h), 0xDC00..=0xDFFF) => 0x10000 + ((h - 0xD800) << 10) + (cp - 0xDC00),
            (Some(_), _) | (None, 0xDC00..=0xDFFF) => {
                return Err("invalid Unicode surrogate pair".into())
            }
            (None, cp) => cp,
        };
        match char::from_u32(cp) {
            Some(ch) if cp != 0 => out.push(ch),
            _ => return Err("invalid Unicode escape value".into()),
        }
    }
    if high.is_some() {
        return Err("invalid Unicode surrogate pair".into());
    }
    Ok(out)
}

/// Truncates to 63 bytes on a character boundary, as Postgres does.
pub fn truncate_channel(name: &str) -> &str {
    if name.len() <= MAX_CHANNEL_LEN {
        return name;
    }
    let mut end = MAX_CHANNEL_LEN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Reserved and type/function-name keywords: not a ColId unquoted.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "primary",
    "references",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "system_user",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
    "authorization",
    "binary",
    "collation",
    "concurrently",
    "cross",
    "current_schema",
    "freeze",
    "full",
    "ilike",
    "inner",
    "is",
    "isnull",
    "join",
    "left",
    "like",
    "natural",
    "notnull",
    "outer",
    "overlaps",
    "right",
    "similar",
    "tablesample",
    "verbose",
];

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
