//! Which channels a statement text notifies, so that a notification can
//! carry the pid of the client that sent it (see `senders.rs`).
//!
//! Found: `NOTIFY channel [, 'payload']` statements and `pg_notify(channel,
//! payload)` calls whose channel is a literal or, in a prepared statement,
//! a `$n` parameter. A `pg_notify` whose channel is anything else makes the
//! text count as notifying any channel. Notifications sent by triggers or
//! functions are invisible here.
//!
//! A text is read once into a [`NotifyTemplate`]: a simple Query's at once
//! ([`notify_targets`]), a prepared statement's when it is parsed
//! ([`statement_notifies`]), its parameters filled in from each Bind.

use crate::sql::lex::{lex_spanned, mentions, Tok};
use crate::sql::listen::truncate_channel;

/// The channels a text notifies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NotifyTargets {
    pub channels: Vec<Box<str>>,
    /// A channel could not be read (`pg_notify(name_column, …)`): any
    /// channel.
    pub any: bool,
    /// Each notification the text sends by name, in the order of the text,
    /// with its payload when that is a plain literal (`None`: any payload,
    /// perhaps several notifications).
    pub sent: Vec<(Box<str>, Option<Box<str>>)>,
}

impl NotifyTargets {
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && !self.any
    }

    pub fn covers(&self, channel: &str) -> bool {
        self.any || self.channels.iter().any(|c| &**c == channel)
    }
}

/// A channel or payload as a statement's text gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NotifyArg {
    /// A literal: a NOTIFY's channel name, a plain string.
    Text(Box<str>),
    /// `$n` (1-based), of a type whose Bind value, in text or binary
    /// format, is the text itself (see [`param_is_plain_text`]).
    Param(u16),
    /// Known only when it runs.
    Unknown,
}

/// What a statement text notifies, read once: each notification it sends
/// by name, in order, its channel and payload a literal or a parameter.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NotifyTemplate {
    /// Channels are `Text` or `Param`, never `Unknown` (that is `any`).
    sends: Vec<(NotifyArg, NotifyArg)>,
    /// A `pg_notify` whose channel is neither a literal nor a parameter.
    any: bool,
}

impl NotifyTemplate {
    fn is_empty(&self) -> bool {
        self.sends.is_empty() && !self.any
    }

    /// What the statement notifies when `value(n)` is the text of its
    /// parameter `$n`, `None` when that is not known: a parameter channel
    /// not known counts for any channel, a payload for any payload.
    pub fn targets<'a>(&'a self, value: impl Fn(u16) -> Option<&'a str>) -> NotifyTargets {
        let mut found = NotifyTargets {
            any: self.any,
            ..NotifyTargets::default()
        };
        let read = |arg: &'a NotifyArg| -> Option<&'a str> {
            match arg {
                NotifyArg::Text(t) => Some(t),
                NotifyArg::Param(n) => value(*n),
                NotifyArg::Unknown => None,
            }
        };
        for (channel, payload) in &self.sends {
            let payload = read(payload);
            match read(channel) {
                Some(channel) => push(&mut found, channel, payload),
                None => found.any = true,
            }
        }
        found
    }
}

/// A cheap first look: does the word `notify` (any case) appear at all?
/// Also true for `pg_notify`.
pub fn may_notify(sql: &[u8]) -> bool {
    mentions(sql, b"notify")
}

/// The channels `sql` notifies, read with the LISTEN parser's lexer. A text
/// the lexer cannot finish is read up to where it stops.
pub fn notify_targets(sql: &str) -> NotifyTargets {
    notify_template(sql, &[]).targets(|_| None)
}

/// What a prepared statement of `sql` with the declared parameter types
/// `types` (a Parse's list, its count first) notifies; `None` for nearly
/// every statement, which notifies nothing (one `memchr` pass).
pub fn statement_notifies(sql: &[u8], types: &[u8]) -> Option<Box<NotifyTemplate>> {
    if !may_notify(sql) {
        return None;
    }
    let declared = crate::protocol::frontend::parameter_types(types).unwrap_or_default();
    let template = notify_template(&String::from_utf8_lossy(sql), &declared);
    (!template.is_empty()).then(|| Box::new(template))
}

/// Whether a parameter declared as `oid` (0: not given) in a statement
/// that passes it to `pg_notify` reaches it as the very text its Bind
/// value holds, in either format. Not given (or `unknown`), the type is
/// inferred as `text`, `pg_notify`'s; `text` and `varchar` read both
/// formats as the bytes themselves. Any other type goes through its own
/// input and a cast (`char(n)` drops trailing blanks), so it is not read.
fn param_is_plain_text(oid: u32) -> bool {
    const UNKNOWN: u32 = 705;
    const TEXT: u32 = 25;
    const VARCHAR: u32 = 1043;
    matches!(oid, 0 | UNKNOWN | TEXT | VARCHAR)
}

/// A token as the NOTIFY reader sees it: `$n` is one, a comma is told
/// apart from other punctuation.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Tok(&'a Tok),
    Param(u16),
    Comma,
}

/// The tokens of `sql`, with each `$n` made one piece.
fn pieces<'a>(sql: &str, tokens: &'a [crate::sql::lex::Spanned]) -> Vec<Piece<'a>> {
    let s = sql.as_bytes();
    let mut out = Vec::with_capacity(tokens.len());
    let mut skip_to = 0;
    for t in tokens {
        if t.start < skip_to {
            continue;
        }
        if t.tok == Tok::Other && s[t.start] == b',' {
            out.push(Piece::Comma);
            continue;
        }
        if t.tok == Tok::Other && s[t.start] == b'$' {
            let digits = s[t.end..].iter().take_while(|c| c.is_ascii_digit()).count();
            let number = std::str::from_utf8(&s[t.end..t.end + digits]).ok();
            if let Some(n) = number.and_then(|d| d.parse::<u16>().ok()) {
                out.push(Piece::Param(n));
                skip_to = t.end + digits;
                continue;
            }
        }
        out.push(Piece::Tok(&t.tok));
    }
    out
}

/// What `sql` notifies, its parameters declared as `declared`.
fn notify_template(sql: &str, declared: &[u32]) -> NotifyTemplate {
    let (tokens, _) = lex_spanned(sql);
    let pieces = pieces(sql, &tokens);
    let arg = |piece: Option<&Piece>| match piece {
        Some(Piece::Tok(Tok::Str(text))) => NotifyArg::Text(text.as_str().into()),
        Some(Piece::Param(n)) => {
            let oid = declared.get(usize::from(*n).wrapping_sub(1)).copied();
            match param_is_plain_text(oid.unwrap_or(0)) {
                true => NotifyArg::Param(*n),
                false => NotifyArg::Unknown,
            }
        }
        _ => NotifyArg::Unknown,
    };
    let mut found = NotifyTemplate::default();
    for statement in pieces.split(|p| *p == Piece::Tok(&Tok::Semi)) {
        if let [Piece::Tok(Tok::Word(kw)), rest @ ..] = statement {
            if kw.eq_ignore_ascii_case("notify") {
                let payload = match rest.get(1..) {
                    Some([]) => NotifyArg::Text("".into()),
                    Some([Piece::Comma, Piece::Tok(Tok::Str(p))]) => {
                        NotifyArg::Text(p.as_str().into())
                    }
                    _ => NotifyArg::Unknown,
                };
                let channel = match rest.first() {
                    Some(Piece::Tok(Tok::Word(w))) => Some(w.to_ascii_lowercase()),
                    Some(Piece::Tok(Tok::Quoted(q))) => Some(q.clone()),
                    _ => None,
                };
                match channel {
                    Some(c) => found.sends.push((NotifyArg::Text(c.into()), payload)),
                    None => found.any = true,
                }
            }
        }
        for (i, piece) in statement.iter().enumerate() {
            let Piece::Tok(Tok::Word(w)) = piece else {
                continue;
            };
            if !w.eq_ignore_ascii_case("pg_notify")
                || statement.get(i + 1) != Some(&Piece::Tok(&Tok::Open))
            {
                // `pg_notify` as a name of something else (a column).
                continue;
            }
            let channel = match statement.get(i + 3) {
                Some(Piece::Comma) => arg(statement.get(i + 2)),
                _ => NotifyArg::Unknown,
            };
            let payload = match statement.get(i + 5) {
                Some(Piece::Tok(Tok::Close)) => arg(statement.get(i + 4)),
                _ => NotifyArg::Unknown,
            };
            match channel {
                NotifyArg::Unknown => found.any = true,
                channel => found.sends.push((channel, payload)),
            }
        }
    }
    found
}

fn push(found: &mut NotifyTargets, channel: &str, payload: Option<&str>) {
    let channel = truncate_channel(channel);
    if !found.covers(channel) {
        found.channels.push(channel.into());
    }
    found.sent.push((channel.into(), payload.map(Into::into)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels(sql: &str) -> (Vec<String>, bool) {
        let t = notify_targets(sql);
        (t.channels.iter().map(|c| c.to_string()).collect(), t.any)
    }

    #[test]
    fn reads_notify_statements_and_literal_pg_notify_calls() {
        assert_eq!(channels("NOTIFY Jobs"), (vec!["jobs".into()], false));
        assert_eq!(
            channels("notify \"Jobs\", 'x'; select 1"),
            (vec!["Jobs".into()], false)
        );
        assert_eq!(
            channels("select pg_notify('A b', 'p'); /* c */ notify c"),
            (vec!["A b".into(), "c".into()], false)
        );
        assert_eq!(
            channels("select pg_catalog.pg_notify($1, $2)"),
            (vec![], true)
        );
        assert_eq!(channels("select 1"), (vec![], false));
    }

    fn sent(sql: &str) -> Vec<(String, Option<String>)> {
        let t = notify_targets(sql);
        (t.sent.iter())
            .map(|(c, p)| (c.to_string(), p.as_deref().map(String::from)))
            .collect()
    }

    #[test]
    fn reads_each_notification_with_its_payload_when_it_is_a_plain_literal() {
        let some = |c: &str, p: &str| (c.to_string(), Some(p.to_string()));
        let any = |c: &str| (c.to_string(), None);
        assert_eq!(
            sent("NOTIFY a; notify B, 'it''s'; select pg_notify('c', 'p')"),
            vec![some("a", ""), some("b", "it's"), some("c", "p")]
        );
        assert_eq!(
            sent("notify a, E'x'; select pg_notify('c', 'p' || 'q'), pg_notify('d', $1)"),
            vec![any("a"), any("c"), any("d")]
        );
    }

    /// What a prepared `sql` with parameters declared as `types` sends,
    /// bound with the text values `values` (`None`: not readable).
    fn bound(sql: &str, types: &[u32], values: &[Option<&str>]) -> Vec<(String, Option<String>)> {
        let mut list = (types.len() as i16).to_be_bytes().to_vec();
        types.iter().for_each(|t| list.extend(t.to_be_bytes()));
        let Some(template) = statement_notifies(sql.as_bytes(), &list) else {
            return vec![];
        };
        let t = template.targets(|n| *values.get(usize::from(n) - 1)?);
        let mut out: Vec<_> = (t.sent.iter())
            .map(|(c, p)| (c.to_string(), p.as_deref().map(String::from)))
            .collect();
        if t.any {
            out.push(("*".into(), None));
        }
        out
    }

    #[test]
    fn a_prepared_statement_reads_its_text_parameters_from_the_bind() {
        let some = |c: &str, p: &str| (c.to_string(), Some(p.to_string()));
        let values = [Some("ch"), Some("p")];
        assert_eq!(
            bound("SELECT pg_notify($1, $2)", &[], &values),
            vec![some("ch", "p")]
        );
        // text, varchar and unknown are read; not given, `text` is inferred
        for types in [&[25, 1043][..], &[705, 0], &[25]] {
            assert_eq!(
                bound("select pg_catalog.PG_NOTIFY($1,$2)", types, &values),
                vec![some("ch", "p")],
                "{types:?}"
            );
        }
        // char(n) is cast (trailing blanks dropped): not read as it is
        assert_eq!(
            bound("select pg_notify('c', $1)", &[1042], &values),
            vec![("c".to_string(), None)]
        );
        assert_eq!(
            bound("select pg_notify($1, 'p')", &[1042], &values),
            vec![("*".to_string(), None)]
        );
        // a value not known, an expression, a literal channel beside it
        assert_eq!(
            bound("select pg_notify($2, $1)", &[], &[None, Some("ch")]),
            vec![("ch".to_string(), None)]
        );
        assert_eq!(
            bound("select pg_notify($1 || 'x', $2)", &[], &values),
            vec![("*".to_string(), None)]
        );
        assert_eq!(
            bound("select pg_notify($1, $2::text)", &[], &values),
            vec![("ch".to_string(), None)]
        );
        assert_eq!(
            bound("NOTIFY Ch, 'lit';", &[], &[]),
            vec![some("ch", "lit")]
        );
        assert_eq!(bound("select $1, 'notify'", &[], &values), vec![]);
        // `$10` is one parameter, not `$1` and `0`
        let ten: Vec<_> = (1..=10)
            .map(|i| if i == 10 { Some("ten") } else { None })
            .collect();
        assert_eq!(
            bound("select pg_notify('c', $10)", &[], &ten),
            vec![some("c", "ten")]
        );
    }

    #[test]
    fn is_not_fooled_by_strings_and_comments() {
        assert_eq!(channels("select 'notify x'"), (vec![], false));
        assert_eq!(channels("-- notify x\nselect 1"), (vec![], false));
        assert_eq!(channels("select pg_notify from t"), (vec![], false));
    }

    #[test]
    fn the_first_look_finds_every_spelling() {
        for sql in ["NOTIFY a", "select Pg_Notify('a', '')", "nOtIfY"] {
            assert!(may_notify(sql.as_bytes()), "{sql}");
        }
        for sql in ["select 1", "notif", "not ify"] {
            assert!(!may_notify(sql.as_bytes()), "{sql}");
        }
    }
}
