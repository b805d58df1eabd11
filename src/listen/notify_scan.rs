//! Which channels a statement text notifies, so that a notification can
//! carry the pid of the client that sent it (see `senders.rs`).
//!
//! Found: `NOTIFY channel [, 'payload']` statements and `pg_notify('channel',
//! …)` calls with a literal channel. A `pg_notify` whose channel is not a
//! literal makes the text count as notifying any channel. Notifications sent
//! by triggers or functions are invisible here.

use crate::sql::lex::{lex, mentions, Tok};
use crate::sql::listen::truncate_channel;

/// The channels a text notifies.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NotifyTargets {
    pub channels: Vec<Box<str>>,
    /// A channel could not be read (`pg_notify($1, …)`): any channel.
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

/// A cheap first look: does the word `notify` (any case) appear at all?
/// Also true for `pg_notify`.
pub fn may_notify(sql: &[u8]) -> bool {
    mentions(sql, b"notify")
}

/// The channels `sql` notifies, read with the LISTEN parser's lexer. A text
/// the lexer cannot finish is read up to where it stops.
pub fn notify_targets(sql: &str) -> NotifyTargets {
    let (tokens, _) = lex(sql);
    let mut found = NotifyTargets::default();
    for statement in tokens.split(|t| *t == Tok::Semi) {
        if let [Tok::Word(kw), rest @ ..] = statement {
            if kw.eq_ignore_ascii_case("notify") {
                let payload = match rest.get(1..) {
                    Some([]) => Some(""),
                    Some([Tok::Other, Tok::Str(p)]) => Some(p.as_str()),
                    _ => None,
                };
                match rest.first() {
                    Some(Tok::Word(w)) => push(&mut found, &w.to_ascii_lowercase(), payload),
                    Some(Tok::Quoted(q)) => push(&mut found, q, payload),
                    _ => found.any = true,
                }
            }
        }
        for (i, t) in statement.iter().enumerate() {
            let Tok::Word(w) = t else { continue };
            if !w.eq_ignore_ascii_case("pg_notify") {
                continue;
            }
            match (statement.get(i + 1), statement.get(i + 2)) {
                (Some(Tok::Open), Some(Tok::Str(channel))) => {
                    let payload = match statement.get(i + 3..i + 6) {
                        Some([Tok::Other, Tok::Str(p), Tok::Close]) => Some(p.as_str()),
                        _ => None,
                    };
                    push(&mut found, channel, payload)
                }
                // `pg_notify` as a name of something else (a column).
                (Some(Tok::Open), _) => found.any = true,
                _ => {}
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
