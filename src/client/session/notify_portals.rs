//! NOTIFY and `pg_notify` sent with the extended protocol in transaction
//! mode: which notifications an Execute sends, noted with the server that
//! runs it as a simple Query's are (`listen_relay.rs`), so that they carry
//! the sending client's pid (see `listen/senders.rs`).
//!
//! A statement's text is read once, when it is parsed, into the
//! `NotifyTemplate` the statement keeps (`Statement::notify`, the unnamed
//! statement's `notify`; `None` for every statement that notifies
//! nothing). A Bind of one fills in the parameters it can (a text value,
//! see `NotifyTemplate::targets`) and keeps the result under the portal's
//! name; the Execute of that portal tells the LISTEN hub. While the client
//! has no such portal, Bind and Execute are read as before (an unnamed
//! statement that notifies has its Bind read whole); while it has one,
//! every Bind and Execute is read whole, so that a portal bound again to
//! another statement is forgotten.
//!
//! A portal lives until its transaction ends. The ones kept here are
//! dropped when the transaction ends with nothing sent after it, or when
//! the server goes back. One kept longer is harmless: its name bound again
//! is seen, and an Execute of a portal the server no longer has fails, and
//! its transaction's notifications are dropped with it.

use super::Session;
use crate::listen::{NotifyTargets, NotifyTemplate};
use crate::protocol::frame::{read_cstr, read_cstr_bytes};
use crate::protocol::frontend::{bind_param, parse_bind, parse_parse};

/// At most this many portals are kept: a client binding more at once
/// has its oldest ones told as notifying nothing known.
const MAX_PORTALS: usize = 64;

/// A portal's name and what running it sends.
type Portal = (Box<str>, NotifyTargets);

/// The client's portals of statements that notify, with what each sends.
/// Boxed: nearly every client never has one.
#[derive(Debug, Default)]
pub(in crate::client) struct NotifyPortals(Option<Box<Kept>>);

/// The portals kept, oldest first; never empty.
#[derive(Debug, Default)]
struct Kept(Vec<Portal>);

impl NotifyPortals {
    pub(in crate::client) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The portals are gone (their transaction ended).
    pub(in crate::client) fn clear(&mut self) {
        self.0 = None;
    }

    /// `portal` is bound again: to a statement sending `targets`, or
    /// (`None`) to one that notifies nothing.
    fn bind(&mut self, portal: &str, targets: Option<NotifyTargets>) {
        if let Some(kept) = self.0.as_deref_mut() {
            kept.0.retain(|(name, _)| &**name != portal);
        }
        if let Some(targets) = targets {
            let kept = &mut self.0.get_or_insert_with(Default::default).0;
            if kept.len() == MAX_PORTALS {
                kept.remove(0);
            }
            kept.push((portal.into(), targets));
        }
        if self.0.as_ref().is_some_and(|kept| kept.0.is_empty()) {
            self.0 = None;
        }
    }

    fn get(&self, portal: &str) -> Option<&NotifyTargets> {
        let kept = self.0.as_deref()?;
        (kept.0.iter())
            .find(|(name, _)| &**name == portal)
            .map(|(_, t)| t)
    }
}

/// The text of parameter `$n` of a Bind (`rest`: its body after the
/// statement name), in either format; `None` for NULL, for a value that
/// is not UTF-8, or for no such parameter.
fn bind_text(rest: &[u8], n: u16) -> Option<&str> {
    let index = usize::from(n).checked_sub(1)?;
    match bind_param(rest, index)? {
        (0 | 1, Some(value)) => std::str::from_utf8(value).ok(),
        _ => None,
    }
}

/// What a portal of a statement sending `template` sends, bound with
/// the Bind body `rest` (after the statement name).
fn portal_targets(template: &NotifyTemplate, rest: &[u8]) -> NotifyTargets {
    template.targets(|n| bind_text(rest, n))
}

impl Session {
    /// Whether any client of the instance listens: only then are the
    /// notifications of statements noted (nobody would hear them).
    pub(in crate::client) fn anyone_listens(&self) -> bool {
        self.state.metrics().listen_subscriptions.get() > 0
    }

    /// What the unnamed Parse `msg` (whole) sends, read while anyone
    /// listens; `None` when it notifies nothing.
    pub(in crate::client) fn unnamed_parse_notifies(
        &self,
        msg: &[u8],
    ) -> Option<Box<NotifyTemplate>> {
        if !self.anyone_listens() {
            return None;
        }
        let p = parse_parse(msg.get(5..)?).ok()?;
        let (sql, types) = read_cstr_bytes(p.rest).ok()?;
        crate::listen::statement_notifies(sql, types)
    }

    /// A Bind of `portal` to a statement that sends `template` (`None`:
    /// one that notifies nothing), `rest` its body after the statement's
    /// name: what the portal sends is kept for its Execute.
    pub(in crate::client) fn bind_notify_portal(
        &mut self,
        portal: &str,
        template: Option<&NotifyTemplate>,
        rest: &[u8],
    ) {
        let targets = template
            .filter(|_| self.anyone_listens())
            .map(|t| portal_targets(t, rest));
        self.listening.notify_portals.bind(portal, targets);
    }

    /// The whole Bind at `cbuf[at..at + len]`, while the unnamed statement
    /// notifies or a portal that does exists: of the unnamed statement,
    /// or of a name the client does not have. A Bind of one of the
    /// client's named statements is noted where it is rewritten, with its
    /// statement at hand (`rewrite_bind`).
    pub(in crate::client) fn note_notify_bind(&mut self, at: usize, len: usize) {
        let body = &self.io.cbuf[at + 5..at + len];
        let Ok(b) = parse_bind(body) else {
            return;
        };
        let template = match b.statement {
            "" => self.ext.unnamed.notify.as_deref(),
            name if self.ext.statements.contains_key(name) => return,
            _ => None,
        };
        let targets = template
            .filter(|_| self.anyone_listens())
            .map(|t| portal_targets(t, b.rest));
        self.listening.notify_portals.bind(b.portal, targets);
    }

    /// The whole Execute at `cbuf[at..at + len]`, while a portal that
    /// notifies exists: if it runs one, what it sends is noted with the
    /// server the client holds.
    pub(in crate::client) fn note_notify_execute(&mut self, at: usize, len: usize) {
        let body = &self.io.cbuf[at + 5..at + len];
        let Ok((portal, _)) = read_cstr(body) else {
            return;
        };
        let Some(targets) = self.listening.notify_portals.get(portal).cloned() else {
            return;
        };
        self.listening.notified |= self.listening.listen.is_some();
        self.note_notify_targets(targets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(channel: &str) -> NotifyTargets {
        crate::listen::notify_targets(&format!("notify {channel}"))
    }

    #[test]
    fn a_portal_bound_again_to_a_statement_that_notifies_nothing_is_forgotten() {
        let mut p = NotifyPortals::default();
        assert!(p.is_empty());
        p.bind("", Some(targets("a")));
        p.bind("p1", Some(targets("b")));
        assert_eq!(p.get(""), Some(&targets("a")));
        p.bind("", Some(targets("c")));
        assert_eq!(p.get(""), Some(&targets("c")));
        p.bind("", None);
        assert_eq!(p.get(""), None);
        p.bind("p1", None);
        assert!(p.is_empty());
        for i in 0..=MAX_PORTALS {
            p.bind(&format!("p{i}"), Some(targets("a")));
        }
        assert_eq!(p.get("p0"), None);
        assert!(p.get(&format!("p{MAX_PORTALS}")).is_some());
    }

    #[test]
    fn a_parameter_is_read_as_text_in_either_format_but_never_null() {
        // two binary values "ch", NULL; then a text one
        let binary = [
            0u8, 1, 0, 1, 0, 2, 0, 0, 0, 2, b'c', b'h', 0xff, 0xff, 0xff, 0xff,
        ];
        assert_eq!(bind_text(&binary, 1), Some("ch"));
        assert_eq!(bind_text(&binary, 2), None);
        assert_eq!(bind_text(&binary, 0), None);
        assert_eq!(bind_text(&binary, 3), None);
        let text = [0u8, 0, 0, 1, 0, 0, 0, 1, b'x'];
        assert_eq!(bind_text(&text, 1), Some("x"));
    }
}
