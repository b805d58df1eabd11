//! Transaction mode's rewriting of Parse, Bind, Describe and Close so that a
//! client's named statements work on whichever server it lands on.

use std::sync::Arc;

use bytes::BytesMut;

use super::expect::{Action, Reply, Undo};
use super::prepared::Statement;
use super::session::Session;
use super::unnamed::names_unnamed_statement;
use super::unnamed_parse::UnnamedParse;
use crate::sql::prepared_commands::DropsAll;

use super::buffers::append;
use super::expect::synthesize;
use crate::config::SessionState;
use crate::protocol::error::PgError;
use crate::protocol::frame::read_cstr_bytes;
use crate::protocol::frontend::{
    build_bind, build_parse, build_target, parse_bind, parse_parse, parse_target,
};
use crate::protocol::sqlstate;
use crate::protocol::tag::{frontend, target, TxStatus};
use crate::protocol::ProtocolError;
use crate::sql::session_state::{detect, refusal_parse, refusal_query};

fn session_state_message(what: &str) -> String {
    let what: String = what.chars().take(80).collect();
    format!(
        "pgharbor: {what} keeps state on one server connection, which transaction pooling cannot give this session; \
         set session_state = \"pin\" for this database, use session mode, or use the transaction-scoped form \
         (SET LOCAL, pg_advisory_xact_lock, ON COMMIT DROP)"
    )
}

/// What becomes of a Bind of a client's statement before it is sent
/// (see [`Session::bind_check_in_transaction`]).
enum BindCheck {
    /// Sent, after its Parse or shape check if it needs them.
    Go,
    /// Looked at again once an earlier group is answered.
    Hold,
    /// Answered here with Postgres's error.
    Answered,
}

/// The server-side name under which a second Parse of a live name has its
/// text analysed (see [`Session::refuse_live_name`]). Client names never
/// reach a server in transaction mode, so none can take it.
const TEXT_CHECK: &str = "pgharbor_text_check";

/// What became of a whole client message the relay looked at.
pub(super) enum Forwarded {
    /// It goes to the server as the client sent it: it stays in `cbuf`
    /// with the bytes decided before it, and the burst leaves in one write
    /// without being cut apart and joined again.
    AsSent,
    /// It was taken out of `cbuf` (rewritten, answered here, or refused),
    /// after the bytes decided before it were queued for the server.
    Rewritten,
    /// It stays at the front of `cbuf`, to be looked at again once the
    /// server answered what pgharbor sent before it (`shape_wait`); the
    /// bytes decided before it were queued for the server.
    Held,
}

impl Session {
    /// A whole simple Query at `cbuf[at..at + len]`: forwarded as sent, or
    /// replaced by a refusal when it holds session state. `may_hold_state`:
    /// the one look at its text (see `query_scan`) found a statement worth
    /// a closer one.
    /// `names_statements`: the cheap test of `prepared_sql` found what may
    /// be a DEALLOCATE, DISCARD ALL or EXECUTE. Records the ReadyForQuery
    /// to expect.
    #[inline]
    pub(super) fn forward_query(
        &mut self,
        at: usize,
        len: usize,
        may_hold_state: bool,
        names_statements: bool,
    ) -> Forwarded {
        if self.ext.expect.server_skipping() {
            // Ignored by the server as by Postgres (see `rewrite_extended`).
            self.forward_ready(at);
            let _ = self.io.cbuf.split_to(len);
            return Forwarded::Rewritten;
        }
        // A text that may also hold session state is not rewritten: the
        // rare pair passes as sent, to be pinned or refused.
        if names_statements && !may_hold_state && self.rewrite_query_names(at, len) {
            self.emit_due_synthesized();
            return Forwarded::Rewritten;
        }
        // RESET is one of the words the scan looks closer at.
        if may_hold_state && self.rewrite_reset_all(at, len) {
            self.emit_due_synthesized();
            return Forwarded::Rewritten;
        }
        self.ext.expect.push(Reply::Ready, Action::Forward);
        let found = if may_hold_state {
            // The relay checked the text ends in its NUL.
            read_cstr_bytes(&self.io.cbuf[at + 5..at + len])
                .ok()
                .and_then(|(sql, _)| self.session_state_in(sql))
        } else {
            None
        };
        let forwarded = match found.and_then(|what| self.on_session_state(what)) {
            Some(refusal) => {
                self.forward_ready(at);
                let _ = self.io.cbuf.split_to(len);
                refusal_query(&mut self.io.to_server, &refusal);
                Forwarded::Rewritten
            }
            None => Forwarded::AsSent,
        };
        self.emit_due_synthesized();
        forwarded
    }

    /// A whole Parse/Bind/Describe/Close (or Execute/Sync) at
    /// `cbuf[at..at + len]`: records the reply to expect and passes it as
    /// sent, or rewrites it (named statements, refusals). The client holds
    /// a server.
    #[inline]
    pub(super) fn rewrite_extended(
        &mut self,
        tag: u8,
        at: usize,
        len: usize,
        may_hold_state: bool,
        names_statements: bool,
    ) -> Result<Forwarded, ProtocolError> {
        if tag != frontend::SYNC && self.ext.expect.server_skipping() {
            // After an error of its group the server ignores everything up
            // to Sync, as Postgres: nothing pgharbor would answer or inject
            // for this message may take effect either.
            self.forward_ready(at);
            let _ = self.io.cbuf.split_to(len);
            return Ok(Forwarded::Rewritten);
        }
        let body = &self.io.cbuf[at + 5..at + len];
        // An unnamed Parse: its generation, and what the client's unnamed
        // statement was when the Parse may yet be skipped after an error
        // of an earlier message.
        let mut unnamed_parse = None;
        match tag {
            // An unnamed Parse: its name is the body's first NUL.
            frontend::PARSE if body.first() == Some(&0) => {
                unnamed_parse = Some(self.note_unnamed_parse(at, len));
            }
            frontend::BIND | frontend::DESCRIBE
                if !self.ext.unnamed.here && names_unnamed_statement(tag, body) =>
            {
                match self.ext.expect.unnamed_parse_pending() {
                    // Its Parse may yet be skipped: looked at again once
                    // it is answered.
                    Some(true) => {
                        self.forward_ready(at);
                        let msg = self.io.cbuf.split_to(len);
                        self.hold(msg);
                        return Ok(Forwarded::Held);
                    }
                    // In the Parse's own group: skipped with it, if so.
                    Some(false) => {}
                    None if self.ext.unnamed.exists => {
                        self.prepare_unnamed_again(tag, at, len);
                        return Ok(Forwarded::Rewritten);
                    }
                    None => {}
                }
            }
            frontend::CLOSE if body.starts_with(b"S\0") => self.ext.unnamed.destroyed(),
            _ => {}
        }
        let body = &self.io.cbuf[at + 5..at + len];
        let forwarded = match self.reply_as_sent(tag, body, may_hold_state, names_statements)? {
            Some(reply) => {
                match unnamed_parse {
                    Some(p) => self.push_unnamed_parse(Action::Forward, p),
                    None => self.ext.expect.push(reply, Action::Forward),
                }
                Forwarded::AsSent
            }
            None => {
                self.forward_ready(at);
                let msg = self.io.cbuf.split_to(len);
                self.rewrite(tag, msg, names_statements, unnamed_parse)?;
                if self.ext.shape_wait {
                    Forwarded::Held
                } else {
                    Forwarded::Rewritten
                }
            }
        };
        self.emit_due_synthesized();
        Ok(forwarded)
    }

    /// The reply a message produces when it can pass as sent: it names
    /// the unnamed statement, or a statement the client never prepared
    /// (the server then answers as Postgres would), and holds no session
    /// state (`may_hold_state`: the one look at a Parse's text found a
    /// statement worth a closer one). `None`: it must be rewritten.
    fn reply_as_sent(
        &self,
        tag: u8,
        body: &[u8],
        may_hold_state: bool,
        names_statements: bool,
    ) -> Result<Option<Reply>, ProtocolError> {
        // A name the client has, or had until a Close that may yet be
        // skipped (see `Session::hold`).
        let named = |name: &str| {
            !name.is_empty()
                && (self.ext.statements.contains_key(name)
                    || self.ext.expect.name_pending_in_earlier_group(name))
        };
        Ok(match tag {
            frontend::PARSE => {
                let p = parse_parse(body)?;
                let holds_state = || {
                    may_hold_state
                        && read_cstr_bytes(p.rest)
                            .ok()
                            .is_some_and(|(sql, _)| self.session_state_in(sql).is_some())
                };
                (p.name.is_empty() && !names_statements && !holds_state())
                    .then_some(Reply::ParseComplete)
            }
            frontend::BIND => (!named(parse_bind(body)?.statement)).then_some(Reply::BindComplete),
            frontend::DESCRIBE => {
                let (kind, name) = parse_target(body)?;
                (kind != target::STATEMENT || !named(name)).then_some(Reply::Describe)
            }
            frontend::CLOSE => {
                let (kind, name) = parse_target(body)?;
                (kind != target::STATEMENT || name.is_empty()).then_some(Reply::CloseComplete)
            }
            frontend::EXECUTE => Some(Reply::Execute),
            frontend::SYNC => Some(Reply::Ready),
            _ => None,
        })
    }

    /// Writes what the server must see in place of `msg` into `to_server`
    /// and records the replies to expect.
    fn rewrite(
        &mut self,
        tag: u8,
        msg: BytesMut,
        names_statements: bool,
        unnamed_parse: Option<UnnamedParse>,
    ) -> Result<(), ProtocolError> {
        // Room for what is written in place of `msg` and for the Execute
        // and Sync copied in behind it, at once rather than grown part by
        // part: a buffer from the stock when it has one; otherwise a small
        // reservation, not a fresh 16 KiB buffer (with hundreds of clients
        // waiting for a server the stock is empty).
        if self.io.to_server.capacity() == 0 {
            if let Some(spare) = super::buffers::take_spare() {
                self.io.to_server = spare;
            }
        }
        self.io.to_server.reserve(msg.len() + 256);
        match tag {
            frontend::PARSE => self.rewrite_parse(msg, names_statements, unnamed_parse)?,
            frontend::BIND => self.rewrite_bind(msg)?,
            frontend::DESCRIBE => self.rewrite_describe(msg)?,
            frontend::CLOSE => self.rewrite_close(msg)?,
            // Execute and Sync come here whole only while LISTEN portals
            // exist or the client's messages are being skipped.
            frontend::EXECUTE => {
                append(&mut self.io.to_server, msg);
                self.ext.expect.push(Reply::Execute, Action::Forward);
            }
            frontend::SYNC => {
                append(&mut self.io.to_server, msg);
                self.ext.expect.push(Reply::Ready, Action::Forward);
            }
            _ => append(&mut self.io.to_server, msg),
        }
        Ok(())
    }

    /// A Parse: refused for session state, an unnamed one passed (its
    /// statement names rewritten), a second one of a live name refused
    /// with Postgres's 42P05 after its text is analysed, a new one
    /// prepared.
    fn rewrite_parse(
        &mut self,
        msg: BytesMut,
        names_statements: bool,
        unnamed_parse: Option<UnnamedParse>,
    ) -> Result<(), ProtocolError> {
        let p = parse_parse(&msg[5..])?;
        if !p.name.is_empty() && self.ext.expect.name_pending_in_earlier_group(p.name) {
            // Whether the name is taken (42P05) depends on it.
            self.hold(msg);
            return Ok(());
        }
        if let Ok((sql, _)) = read_cstr_bytes(p.rest) {
            if let Some(text) = self.check_session_state(sql) {
                // Refused: the error comes from the server in place of
                // this Parse; the extended pipeline then skips to Sync.
                refusal_parse(&mut self.io.to_server, &text);
                match unnamed_parse {
                    Some(p) => self.push_unnamed_parse(Action::Forward, p),
                    None => self.ext.expect.push(Reply::ParseComplete, Action::Forward),
                }
                return Ok(());
            }
        }
        if let Some(unnamed) = unnamed_parse {
            if !(names_statements && self.rewrite_parse_names(&msg)) {
                append(&mut self.io.to_server, msg);
            }
            self.push_unnamed_parse(Action::Forward, unnamed);
        } else if self.ext.statements.contains_key(p.name) {
            self.refuse_live_name(p.name, p.rest);
        } else {
            self.parse_new_statement(p.name.to_string(), p.rest);
        }
        Ok(())
    }

    /// A second Parse of a live name: Postgres analyses the new text
    /// (whose own error comes first), then refuses the name with 42P05.
    /// The server analyses it under a name of pgharbor's own, closed at
    /// once; the 42P05 is given here. Never under the name of the
    /// statement the server holds: where the server lacked it, the new
    /// text would be prepared under that name, for every client.
    fn refuse_live_name(&mut self, name: &str, rest: &[u8]) {
        build_parse(&mut self.io.to_server, TEXT_CHECK, rest);
        self.ext.expect.push(Reply::ParseComplete, Action::Swallow);
        self.close_on_server(TEXT_CHECK);
        let mut error = BytesMut::new();
        PgError::error(
            sqlstate::DUPLICATE_PREPARED_STATEMENT,
            format!("prepared statement \"{name}\" already exists"),
        )
        .encode(&mut error);
        self.fail_local_with(error);
    }

    /// A fresh Parse of a name the client does not have reaches the
    /// server, which answers as Postgres would (25P02 in a failed
    /// transaction, the error of a text that fails now, the types of
    /// objects created again) and plans it for this client's parameters.
    /// A statement the server has under the same name goes first: it may
    /// be stale.
    fn parse_new_statement(&mut self, client_name: String, rest: &[u8]) {
        let st = Arc::new(self.new_statement(rest));
        self.ext.statements.insert(client_name.clone(), st.clone());
        let closed_first = self.close_if_prepared(&st);
        self.record_prepared(&st);
        self.io.to_server.extend_from_slice(&st.parse);
        let undo = Undo {
            server_name: Some(st.name.clone()),
            client_name: Some(client_name),
            closed_first,
            ..Undo::default()
        };
        self.ext
            .expect
            .push_undo(Reply::ParseComplete, Action::Forward, undo);
    }

    /// A Bind: of a client's statement, sent under the server's name
    /// after its Parse (or held, see [`Session::hold`]); otherwise as sent.
    fn rewrite_bind(&mut self, msg: BytesMut) -> Result<(), ProtocolError> {
        let b = parse_bind(&msg[5..])?;
        if !b.statement.is_empty() && self.ext.expect.name_pending_in_earlier_group(b.statement) {
            self.hold(msg);
            return Ok(());
        }
        match self.ext.statements.get(b.statement).cloned() {
            Some(st) if !b.statement.is_empty() => {
                match self.bind_check_in_transaction(&st, b.statement, b.rest) {
                    BindCheck::Go => {}
                    BindCheck::Hold => {
                        self.hold(msg);
                        return Ok(());
                    }
                    BindCheck::Answered => return Ok(()),
                }
                let shape = st.client_shape();
                if shape == 0 {
                    self.ensure_prepared(&st);
                } else if !self.bind_fits(&st, shape) {
                    if self.ext.shape_wait {
                        // Looked at again once the shape is known.
                        self.hold(msg);
                    }
                    return Ok(());
                }
                build_bind(&mut self.io.to_server, b.portal, &st.name, b.rest);
                if st.notify.is_some() || !self.listening.notify_portals.is_empty() {
                    self.bind_notify_portal(b.portal, st.notify.as_deref(), b.rest);
                }
                match st.drops_all {
                    DropsAll::No => {}
                    // Postgres refuses it in a transaction block.
                    DropsAll::Discard if self.txn.status != TxStatus::Idle => {}
                    drops => self.server_drops_all(drops),
                }
            }
            // Unnamed, or a name the client never prepared: the server
            // answers exactly as Postgres would (26000).
            _ => append(&mut self.io.to_server, msg),
        }
        self.ext.expect.push(Reply::BindComplete, Action::Forward);
        Ok(())
    }

    /// In a failed transaction, a Bind of a statement its server lacks,
    /// or holds with a result shape not yet compared with the client's,
    /// gets Postgres's answer from here: the Parse or Describe pgharbor
    /// would send first would fail with 25P02 before the Bind's own checks
    /// ran. While an earlier group's ReadyForQuery is still to come, the
    /// status is not known yet, and such a Bind waits for it; so does one
    /// whose statement's Parse in an earlier group may yet be skipped.
    fn bind_check_in_transaction(&mut self, st: &Statement, name: &str, bind: &[u8]) -> BindCheck {
        let pending = self.ext.expect.sync_pending();
        if !pending && self.txn.status != TxStatus::Failed {
            // The common case, looked at first: no lookup.
            return BindCheck::Go;
        }
        if pending
            && self
                .ext
                .expect
                .server_parse_pending_in_earlier_group(&st.name)
        {
            // Its Parse may yet be skipped after an error of its group.
            return BindCheck::Hold;
        }
        let on_server = self
            .server
            .as_mut()
            .and_then(|p| p.server.prepared.touch_shape(&st.name));
        let shape = st.client_shape();
        let server_ready = on_server
            .is_some_and(|server_shape| !st.is_fresh() && (shape == 0 || server_shape == shape));
        if server_ready {
            return BindCheck::Go;
        }
        if pending {
            return BindCheck::Hold;
        }
        let Some(error) = st.bind_error_in_failed_transaction(name, bind) else {
            return BindCheck::Go;
        };
        let mut out = BytesMut::new();
        error.encode(&mut out);
        self.fail_local_with(out);
        BindCheck::Answered
    }

    /// A Describe: of a client's statement, sent under the server's name
    /// after its Parse; otherwise as sent.
    fn rewrite_describe(&mut self, msg: BytesMut) -> Result<(), ProtocolError> {
        let (kind, name) = parse_target(&msg[5..])?;
        if kind == target::STATEMENT
            && !name.is_empty()
            && self.ext.expect.name_pending_in_earlier_group(name)
        {
            self.hold(msg);
            return Ok(());
        }
        match self.ext.statements.get(name).cloned() {
            Some(st) if kind == target::STATEMENT && !name.is_empty() => {
                if self
                    .ext
                    .expect
                    .server_parse_pending_in_earlier_group(&st.name)
                {
                    // As for a Bind (see `bind_check_in_transaction`).
                    self.hold(msg);
                    return Ok(());
                }
                self.ensure_prepared(&st);
                build_target(
                    &mut self.io.to_server,
                    frontend::DESCRIBE,
                    target::STATEMENT,
                    &st.name,
                );
                // Its reply tells the client's shape and the server's.
                self.ext.expect.push_describe(Action::Forward, st);
            }
            _ => {
                append(&mut self.io.to_server, msg);
                self.ext.expect.push(Reply::Describe, Action::Forward);
            }
        }
        Ok(())
    }

    /// A Close: of a named statement, answered here (only the client's
    /// name goes; the server keeps the statement for whoever prepares the
    /// same text next); of a portal or the unnamed statement, as sent.
    fn rewrite_close(&mut self, msg: BytesMut) -> Result<(), ProtocolError> {
        let (kind, name) = parse_target(&msg[5..])?;
        if kind != target::STATEMENT || name.is_empty() {
            append(&mut self.io.to_server, msg);
            self.ext.expect.push(Reply::CloseComplete, Action::Forward);
            return Ok(());
        }
        if self.ext.expect.name_pending_in_earlier_group(name) {
            self.hold(msg);
            return Ok(());
        }
        // Skipped after an error of its group, it comes back.
        let undo = self.ext.statements.remove_entry(name).map(|st| Undo {
            restore: Some(st),
            ..Undo::default()
        });
        self.ext
            .expect
            .push_with(Reply::CloseComplete, Action::Synthesize, undo);
        Ok(())
    }

    /// Puts `msg` back at the front of `cbuf`, to be looked at again once
    /// the server has answered what went before it (`shape_wait`): a Bind
    /// whose statement's shape is being asked, or a message naming a
    /// statement whose Parse or Close, in an earlier Sync group, may yet
    /// be skipped after an error there (and undone, as on Postgres).
    fn hold(&mut self, mut msg: BytesMut) {
        self.ext.shape_wait = true;
        msg.unsplit(std::mem::take(&mut self.io.cbuf));
        self.io.cbuf = msg;
    }

    /// Sends the synthesized replies whose turn has come.
    pub(super) fn emit_due_synthesized(&mut self) {
        let mut synthesized = false;
        while let Some(reply) = self.ext.expect.due_synthesized() {
            synthesize(
                &mut self.io.to_client,
                &mut self.listening.pending_listens,
                reply,
            );
            synthesized = true;
        }
        if synthesized {
            // Errors surface on the next write; the relay loop handles them.
            let _ = self.flush_client();
        }
    }

    /// Pins the client (`session_state = "pin"`) or returns the refusal to
    /// send instead (`"error"`) when `sql` creates session-only state.
    fn check_session_state(&mut self, sql: &[u8]) -> Option<String> {
        let what = self.session_state_in(sql)?;
        self.on_session_state(what)
    }

    /// What in `sql` creates session-only state, unless the client is
    /// pinned already.
    fn session_state_in(&self, sql: &[u8]) -> Option<String> {
        if self.txn.pinned.is_some() {
            return None;
        }
        let reported = &self.reported;
        detect(sql, |name| {
            reported.keys().any(|k| k.eq_ignore_ascii_case(name))
        })
    }

    /// Pins the client for `what`, or returns the refusal to send.
    fn on_session_state(&mut self, what: String) -> Option<String> {
        match self.pool.settings().session_state {
            SessionState::Pin => {
                tracing::info!(statement = %what, "client pinned to its server (session_state = \"pin\")");
                self.state.metrics().session_pins.inc();
                self.txn.pinned = Some(what);
                None
            }
            SessionState::Error => Some(session_state_message(&what)),
        }
    }

    /// A new statement of the client for the definition `rest`, under a
    /// server name none of its others has (see `Statement::distinct`).
    fn new_statement(&self, rest: &[u8]) -> Statement {
        Statement::distinct(rest, |name| self.has_server_name(name))
    }

    /// Whether one of the client's statements has the server name `name`.
    pub(super) fn has_server_name(&self, name: &str) -> bool {
        self.ext.statements.values().any(|st| &*st.name == name)
    }
}
