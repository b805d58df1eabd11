//! Postgres's lexer, as far as pgharbor's readers of SQL text need it:
//! keywords and identifiers, quoted identifiers (`"…"`, `U&"…"`), string
//! literals (`'…'`, `E'…'`, `U&'…'`, `$tag$…$tag$`), comments (nested
//! `/* */`) and the punctuation that separates statements and names.
//! `standard_conforming_strings = on` is assumed.

/// A token of Postgres's lexer, as far as pgharbor's readers of SQL text
/// (LISTEN, temporary objects, DROP DATABASE, the prepared-statement
/// commands) need to tell them apart.
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
    Open,
    Close,
    Other,
}

/// A token and the bytes of the text it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spanned {
    pub(crate) tok: Tok,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// Whether `word` (ASCII, any case) appears anywhere in `sql`: the cheap
/// first look before a text is lexed, one `memchr` pass for its first
/// letter.
pub(crate) fn mentions(sql: &[u8], word: &[u8]) -> bool {
    let Some(first) = word.first() else {
        return true;
    };
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    memchr::memchr2_iter(lower, upper, sql).any(|i| {
        sql.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    })
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
    let (tokens, error) = lex_spanned(sql);
    (tokens.into_iter().map(|t| t.tok).collect(), error)
}

/// [`lex`], with the byte offset where each token starts (the prepared
/// statement commands rewrite a name in place).
pub(crate) fn lex_spans(sql: &str) -> (Vec<Tok>, Vec<usize>, Option<String>) {
    let (tokens, error) = lex_spanned(sql);
    let starts = tokens.iter().map(|t| t.start).collect();
    (tokens.into_iter().map(|t| t.tok).collect(), starts, error)
}

/// [`lex`], each token with the bytes of the text it was read from.
pub(crate) fn lex_spanned(sql: &str) -> (Vec<Spanned>, Option<String>) {
    let mut out = Vec::new();
    let mut start = 0;
    while start < sql.len() {
        match token_at(sql, start) {
            Ok((Some(tok), end)) => {
                out.push(Spanned { tok, start, end });
                start = end;
            }
            Ok((None, end)) => start = end,
            Err(error) => return (out, Some(error.to_string())),
        }
    }
    (out, None)
}

/// What starts at byte `i` of `sql`: a token (`None` for white space and
/// comments) and the index after it, or the lexical error there.
fn token_at(sql: &str, i: usize) -> Result<(Option<Tok>, usize), &'static str> {
    let s = sql.as_bytes();
    let b = s[i];
    let next = s.get(i + 1).copied();
    if b.is_ascii_whitespace() {
        return Ok((None, i + 1));
    }
    if b == b'-' && next == Some(b'-') {
        let end = memchr::memchr(b'\n', &s[i..]).map_or(s.len(), |p| i + p);
        return Ok((None, end));
    }
    if b == b'/' && next == Some(b'*') {
        let end = block_comment_end(s, i).ok_or("unterminated /* comment")?;
        return Ok((None, end));
    }
    if matches!(b, b'U' | b'u') && next == Some(b'&') {
        match s.get(i + 2) {
            Some(b'"') => {
                let (text, end) =
                    quoted(sql, i + 2, b'"').ok_or("unterminated quoted identifier")?;
                return Ok((Some(Tok::UnicodeQuoted(text)), end));
            }
            Some(b'\'') => {
                let (_, end) = quoted(sql, i + 2, b'\'').ok_or("unterminated quoted string")?;
                return Ok((Some(Tok::Other), end));
            }
            _ => {}
        }
    }
    if matches!(b, b'E' | b'e') && next == Some(b'\'') {
        let end = escape_string_end(s, i).ok_or("unterminated quoted string")?;
        return Ok((Some(Tok::Other), end));
    }
    if ident_start(b) {
        let end = s[i..]
            .iter()
            .position(|&c| !ident_cont(c))
            .map_or(s.len(), |p| i + p);
        return Ok((Some(Tok::Word(sql[i..end].to_string())), end));
    }
    match b {
        b'"' => match quoted(sql, i, b'"') {
            Some((text, _)) if text.is_empty() => Err("zero-length delimited identifier"),
            Some((text, end)) => Ok((Some(Tok::Quoted(text)), end)),
            None => Err("unterminated quoted identifier"),
        },
        b'\'' => {
            let (text, end) = quoted(sql, i, b'\'').ok_or("unterminated quoted string")?;
            Ok((Some(Tok::Str(text)), end))
        }
        b'$' if next.is_some_and(|c| c == b'$' || ident_start(c)) => {
            Ok((Some(Tok::Other), dollar_quoted_end(sql, i)?))
        }
        b';' => Ok((Some(Tok::Semi), i + 1)),
        b'*' => Ok((Some(Tok::Star), i + 1)),
        b'.' => Ok((Some(Tok::Dot), i + 1)),
        b'(' => Ok((Some(Tok::Open), i + 1)),
        b')' => Ok((Some(Tok::Close), i + 1)),
        _ => Ok((Some(Tok::Other), i + 1)),
    }
}

/// The index after the (nested) `/* … */` comment at `i`.
fn block_comment_end(s: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0;
    while i + 1 < s.len() {
        if s[i] == b'/' && s[i + 1] == b'*' {
            depth += 1;
            i += 2;
        } else if s[i] == b'*' && s[i + 1] == b'/' {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Some(i);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// The index after the `E'…'` string at `i` (backslash escapes skipped in
/// pairs).
fn escape_string_end(s: &[u8], i: usize) -> Option<usize> {
    let mut i = i + 2;
    loop {
        match s.get(i)? {
            b'\\' => i += 2,
            b'\'' if s.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// The index after the `$tag$ … $tag$` string at `i` (a tag has no `$`
/// inside); a `$` that starts no tag is a byte of its own.
fn dollar_quoted_end(sql: &str, i: usize) -> Result<usize, &'static str> {
    let s = sql.as_bytes();
    let mut j = i + 1;
    while j < s.len() && ident_cont(s[j]) && s[j] != b'$' {
        j += 1;
    }
    if s.get(j) != Some(&b'$') {
        return Ok(i + 1);
    }
    let tag = &sql[i..=j];
    match sql[j + 1..].find(tag) {
        Some(k) => Ok(j + 1 + k + tag.len()),
        None => Err("unterminated dollar-quoted string"),
    }
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
