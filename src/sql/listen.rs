//! Recognizes LISTEN / UNLISTEN in a simple-Query text, the way Postgres's
//! lexer and grammar read them: case-insensitive keywords, unquoted
//! identifiers folded to lower case (ASCII only, as in a UTF8 database),
//! `"quoted ""identifiers"""`, `U&"\0441\+01F600"` with optional `UESCAPE`,
//! comments, and truncation to 63 bytes (NAMEDATALEN - 1) on a character
//! boundary. Strings (`'…'`, `E'…'`, `$tag$…$tag$`) are skipped when splitting
//! statements; `standard_conforming_strings = on` is assumed.

use super::lex::{lex_spanned, Spanned, Tok};
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
    match plan(sql)? {
        QueryListens::None => Ok(None),
        QueryListens::Only(cmds) => Ok(Some(cmds)),
        QueryListens::Mixed(_) | QueryListens::Unreadable => Err(ListenParseError::Mixed),
    }
}

/// What a simple Query's text holds of LISTEN/UNLISTEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryListens {
    /// No LISTEN/UNLISTEN statement.
    None,
    /// Nothing else: pgharbor answers the whole Query.
    Only(Vec<ListenCommand>),
    /// With other statements, which a server runs.
    Mixed(MixedQuery),
    /// With other statements, in a text that does not lex (an unterminated
    /// quote or comment): Postgres refuses all of it with a syntax error.
    Unreadable,
}

/// A Query mixing LISTEN/UNLISTEN with other statements, as the server
/// runs it: each LISTEN/UNLISTEN replaced by `SELECT` (one empty row, then
/// one CommandComplete: the relay swallows the row and puts the
/// LISTEN/UNLISTEN's CommandComplete in its place). The replacement is
/// padded to as many characters as the statement had, so the positions in
/// the server's errors are those of the client's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixedQuery {
    pub text: String,
    /// The statements up to the last LISTEN/UNLISTEN, in order: the
    /// command of each LISTEN/UNLISTEN, `None` for the others.
    pub statements: Vec<Option<ListenCommand>>,
}

impl MixedQuery {
    /// The LISTEN/UNLISTEN commands, in order.
    pub fn commands(&self) -> impl Iterator<Item = &ListenCommand> {
        self.statements.iter().flatten()
    }
}

/// Reads `sql` for [`QueryListens`]. A LISTEN/UNLISTEN that is not valid is
/// a syntax error (Postgres refuses the whole text for it).
pub fn plan(sql: &str) -> Result<QueryListens, ListenParseError> {
    let (tokens, lex_error) = lex_spanned(sql);
    let statements = split_statements(&tokens);
    let listens = statements.iter().filter(|s| is_listen_start(s)).count();
    if listens == 0 {
        return Ok(QueryListens::None);
    }
    if let Some(e) = lex_error {
        // The server reports it, unless the statement we cannot read is
        // the only one, and ours.
        return match statements.as_slice() {
            [only] if is_listen_start(only) => Err(ListenParseError::Syntax(e)),
            _ => Ok(QueryListens::Unreadable),
        };
    }
    let commands = statements
        .iter()
        .map(|s| is_listen_start(s).then(|| parse_statement(s)).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    if listens == statements.len() {
        return Ok(QueryListens::Only(commands.into_iter().flatten().collect()));
    }
    let mut text = String::with_capacity(sql.len());
    let mut copied = 0;
    for (s, cmd) in statements.iter().zip(&commands) {
        if let (Some(_), Some(first), Some(last)) = (cmd, s.first(), s.last()) {
            text.push_str(&sql[copied..first.start]);
            let chars = sql[first.start..last.end].chars().count();
            text.push_str("SELECT");
            text.extend(std::iter::repeat_n(' ', chars.saturating_sub(6)));
            copied = last.end;
        }
    }
    text.push_str(&sql[copied..]);
    let mut statements = commands;
    while statements.last().is_some_and(Option::is_none) {
        statements.pop();
    }
    Ok(QueryListens::Mixed(MixedQuery { text, statements }))
}

/// Whether running `sql` may commit a transaction, so that LISTENs pending
/// in it must be heard from then on: outside a transaction block
/// (`in_block` false) unless it opens one (BEGIN, START) and leaves it
/// open; inside one, if a statement ends it (COMMIT, END). Statements are
/// read as [`plan`] reads them; a text that does not lex may.
pub fn may_commit(sql: &str, mut in_block: bool) -> bool {
    let (tokens, lex_error) = lex_spanned(sql);
    if lex_error.is_some() {
        return true;
    }
    for s in split_statements(&tokens) {
        let Some(Tok::Word(w)) = s.first().map(|t| &t.tok) else {
            continue;
        };
        let is = |k: &str| w.eq_ignore_ascii_case(k);
        if is("begin") || is("start") {
            in_block = true;
        } else if is("commit") || is("end") {
            if in_block {
                return true;
            }
        } else if (is("rollback") || is("abort"))
            && !matches!(s.get(1).map(|t| &t.tok), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("to"))
        {
            in_block = false;
        }
    }
    !in_block
}

fn is_listen_start(s: &[Spanned]) -> bool {
    matches!(s.first().map(|t| &t.tok), Some(Tok::Word(w)) if w.eq_ignore_ascii_case("listen") || w.eq_ignore_ascii_case("unlisten"))
}

/// Whether a statement's first words are CREATE [OR REPLACE] FUNCTION or
/// PROCEDURE, whose SQL-standard body (BEGIN ATOMIC … END) holds semicolons.
fn is_routine(s: &[Spanned]) -> bool {
    let word = |i: usize, k: &str| matches!(s.get(i).map(|t| &t.tok), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k));
    let routine = |i| word(i, "function") || word(i, "procedure");
    word(0, "create") && (routine(1) || (word(1, "or") && word(2, "replace") && routine(3)))
}

/// The statements, split at the semicolons that end one: not those inside
/// parentheses (CREATE RULE's action lists) nor inside the BEGIN … END body
/// of a CREATE FUNCTION / PROCEDURE (psql's rule for the same question).
/// Empty statements are left out: Postgres runs nothing for them.
pub(crate) fn split_statements(tokens: &[Spanned]) -> Vec<&[Spanned]> {
    let mut out = Vec::new();
    let (mut start, mut parens, mut blocks) = (0, 0usize, 0usize);
    for (i, t) in tokens.iter().enumerate() {
        match &t.tok {
            Tok::Open => parens += 1,
            Tok::Close => parens = parens.saturating_sub(1),
            Tok::Word(w) if parens == 0 && is_routine(&tokens[start..i]) => {
                if w.eq_ignore_ascii_case("begin") || (blocks > 0 && w.eq_ignore_ascii_case("case"))
                {
                    blocks += 1;
                } else if w.eq_ignore_ascii_case("end") {
                    blocks = blocks.saturating_sub(1);
                }
            }
            Tok::Semi if parens == 0 && blocks == 0 => {
                if i > start {
                    out.push(&tokens[start..i]);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < tokens.len() {
        out.push(&tokens[start..]);
    }
    out
}

fn parse_statement(statement: &[Spanned]) -> Result<ListenCommand, ListenParseError> {
    let toks: Vec<Tok> = statement.iter().map(|t| t.tok.clone()).collect();
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
#[path = "listen_tests.rs"]
mod tests;
