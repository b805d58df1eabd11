//! The server side of the relay: each read from the server is scanned,
//! ReadyForQuery / ParameterStatus / errors update the client's state, the
//! replies pgharbor injected are swallowed and the ones it answered itself
//! are put in their place, and the server goes back to the pool when the
//! transaction ends.

use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use super::buffers::{append, try_fill};
use super::expect::synthesize;
use super::expect::{Outcome, Undo};
use super::prepared::{client_names_in_error, row_shape, CHANGED_RESULT_TYPE};
use super::reset_all::error_at_client_position;
use super::session::temp_backstop::{tag_may_create_temp, TempCheck};
use super::session::Ending;
use super::session::{Session, SessionError};
use crate::config::PoolMode;
use crate::protocol::backend::parse_parameter_status;
use crate::protocol::error::ServerErrorFields;
use crate::protocol::frame::Step;
use crate::protocol::tag::{backend, TxStatus};
use crate::protocol::ProtocolError;
use crate::protocol::{sqlstate, PgError};
use crate::server::ServerError;

/// Server messages the relay must see whole.
fn server_inspects(tag: u8) -> bool {
    matches!(
        tag,
        backend::READY_FOR_QUERY
            | backend::PARAMETER_STATUS
            | backend::ERROR_RESPONSE
            | backend::COPY_IN_RESPONSE
            | backend::COPY_BOTH_RESPONSE
    )
}

/// In transaction mode also every reply that ends an extended-protocol
/// step while the expectation queue must count them, so replies can be
/// swallowed or synthesized between whole messages (and the
/// ParameterDescription of a Describe pgharbor injected, swallowed too).
fn server_inspects_tx(tag: u8) -> bool {
    server_inspects(tag) || super::expect::ends_step(tag) || tag == backend::PARAMETER_DESCRIPTION
}

/// In transaction mode also CommandComplete: with a LISTEN waiting for its
/// transaction's end it says whether that was COMMIT or ROLLBACK, and a
/// tag saying CREATE, DO or CALL has the server's temporary schema checked
/// before it goes back to the pool (`temp_backstop.rs`).
fn server_inspects_listen(tag: u8) -> bool {
    server_inspects(tag) || tag == backend::COMMAND_COMPLETE
}

/// While the server answers a statement pgharbor replaced: its row too.
fn inspect_all(_: u8) -> bool {
    true
}

/// What one read from the server decided, gathered as its messages are
/// scanned and acted on once the read is done.
#[derive(Default)]
struct ServerBurst {
    /// Bytes at the front of the read buffer decided on, for the client.
    ready: usize,
    /// The transaction ended and the server may go back to the pool.
    release: bool,
    /// The transaction ended: counted, its duration observed.
    txn_done: bool,
    /// LISTENs of the transaction take effect (`true`) or are dropped.
    listen_txn_end: Option<bool>,
    /// The next reply is dropped: the group runs again (`replay.rs`).
    drop_error: bool,
    /// The group runs again once the read is done.
    replay_now: bool,
    /// Where the ReadyForQuery ending a transaction that may have
    /// notified the client's channels starts in `to_client`.
    notified_ready_at: Option<usize>,
}

/// The statement bookkeeping of one read, settled once it is scanned. Apart
/// from [`ServerBurst`], whose flags then stay in registers: the queue is
/// given these by address.
#[derive(Default)]
struct StatementReplies {
    /// Statement bookkeeping of replies that failed or were skipped.
    undo: Vec<Undo>,
    /// Server statements whose Parse succeeded.
    parsed: Vec<Arc<str>>,
}

/// What a read from the server leaves to do, for the part that may await.
enum ServerRead {
    /// The server broke the protocol: the session ends.
    Broken(Box<ServerError>),
    Done {
        /// The server closed or failed after what was read.
        lost: Option<Box<ServerError>>,
        /// The transaction ended and the server may go back to the pool.
        release: bool,
        /// The clock at the end of the transaction, if one ended.
        ended: Option<Instant>,
        /// LISTENs of the transaction take effect (`true`) or are dropped.
        listen_txn_end: Option<bool>,
        /// See `ServerBurst::notified_ready_at`.
        notified_ready_at: Option<usize>,
    },
}

impl Session {
    /// Reads from the server and forwards; releases the server at the end of
    /// a transaction in transaction mode.
    pub(super) async fn on_server_readable(&mut self) -> Option<Result<(), SessionError>> {
        // The reading and scanning is a plain function, so its locals are
        // not part of this future's state (and of every client task's).
        let (lost, release, ended, listen_txn_end, notified_ready_at) = match self.read_server()? {
            ServerRead::Broken(e) => return Some(self.server_lost(*e).await),
            ServerRead::Done {
                lost,
                release,
                ended,
                listen_txn_end,
                notified_ready_at,
            } => (lost, release, ended, listen_txn_end, notified_ready_at),
        };
        // Before the ReadyForQuery reaches the client: a NOTIFY it sends
        // next must find the LISTEN in place, and what the transaction
        // notified comes before it, as on Postgres.
        // Boxed: a rare path kept out of the relay future's size.
        if let Some(at) = notified_ready_at {
            Box::pin(self.deliver_before_ready(at, listen_txn_end)).await;
        } else if listen_txn_end.is_some() {
            Box::pin(self.listen_transaction_end(listen_txn_end)).await;
        }
        if let Err(e) = self.flush_client() {
            return Some(Err(e));
        }
        if self.io.cbuf.capacity() > 0 && self.io.cbuf.is_empty() && !self.txn.status.in_block() {
            // Kept through the transaction block (`process_client_input`):
            // an idle client holds no buffer.
            super::buffers::give_back(&mut self.io.cbuf);
        }
        if let Some(e) = lost {
            return Some(self.server_lost(*e).await);
        }
        if release && self.txn.is_idle() {
            if !self.ext.expect.is_empty() {
                tracing::warn!("replies still expected at the end of a transaction; dropping them");
            }
            let reusable = if std::mem::take(&mut self.txn.temp_check) {
                // The check reads from the server.
                self.io.armed.server = false;
                match Box::pin(self.check_temp_schema()).await {
                    TempCheck::Pinned => return None,
                    TempCheck::Clean => true,
                    TempCheck::Close => false,
                }
            } else {
                true
            };
            self.hand_back_server(ended, reusable).await;
        }
        None
    }

    /// Reads what the server sent, scans it, and queues it for the client.
    fn read_server(&mut self) -> Option<ServerRead> {
        let pooled = self.server.as_mut()?;
        self.io.armed.server = false;
        let open = try_fill(&mut pooled.server.stream, &mut pooled.server.rbuf);
        // Boxed: kept across `on_server_readable`'s awaits, so its size
        // would be every client task's.
        let lost = match open {
            Ok(true) => None,
            Ok(false) => Some(Box::new(ServerError::Closed)),
            Err(e) => Some(Box::new(ServerError::Io(e))),
        };
        // Taken out while it is scanned, so that a message's body and the
        // session can be borrowed together; put back below.
        let mut rbuf = std::mem::take(&mut pooled.server.rbuf);
        let mut burst = ServerBurst::default();
        let mut statements = StatementReplies::default();
        let scanned = self.scan_server_bytes(&mut rbuf, &mut burst, &mut statements);
        if scanned.is_ok() {
            let chunk = rbuf.split_to(burst.ready);
            append(&mut self.io.to_client, chunk);
        }
        if let Some(pooled) = self.server.as_mut() {
            pooled.server.rbuf = rbuf;
        }
        if let Err(e) = scanned {
            return Some(ServerRead::Broken(Box::new(ServerError::Protocol(e))));
        }
        self.settle_statements(statements);
        let ended = burst.txn_done.then(|| self.end_of_transaction());
        if burst.replay_now {
            self.start_replay();
        }
        Some(ServerRead::Done {
            lost,
            release: burst.release,
            ended,
            listen_txn_end: burst.listen_txn_end,
            notified_ready_at: burst.notified_ready_at,
        })
    }

    /// Which server messages this scan must see whole.
    fn server_inspects(&self) -> fn(u8) -> bool {
        // Session mode follows the expectation queue too while a Query it
        // rewrote is answered (`reset_all.rs`).
        let tx = self.mode == PoolMode::Transaction || !self.ext.expect.is_empty();
        // While the server reads COPY data, the CommandComplete that ends
        // the COPY is looked at too.
        let each = tx && self.ext.expect.needs_each_reply();
        if each && self.ext.expect.replaces_next() {
            inspect_all
        } else if each || self.txn.server_copy_in {
            server_inspects_tx
        } else if !tx {
            server_inspects
        } else if !self.listening.pending_listens.is_empty()
            || self.txn.pinned.is_none()
            || self.listening.notify_open
        {
            server_inspects_listen
        } else {
            server_inspects
        }
    }

    /// Scans `rbuf` message by message: what passes goes to the client
    /// as read, what is looked at whole goes to its handler.
    // Inlined, as the handler below: one function for a read, whose state
    // stays in registers (the way of every reply, per transaction).
    #[inline(always)]
    fn scan_server_bytes(
        &mut self,
        rbuf: &mut BytesMut,
        burst: &mut ServerBurst,
        statements: &mut StatementReplies,
    ) -> Result<(), ProtocolError> {
        loop {
            // Every byte of the read decided on: `step` would find nothing
            // (whatever the scanner's state), so the usual end of a read
            // does not ask which messages to look at once more.
            if burst.ready == rbuf.len() {
                return Ok(());
            }
            let inspects = self.server_inspects();
            match self
                .io
                .sscan
                .step(&rbuf[burst.ready..], 1 << 30, inspects)?
            {
                Step::Incomplete => return Ok(()),
                Step::Pass { tag, len } => {
                    if let (Some(r), Some(tag)) = (self.ext.replay.as_deref_mut(), tag) {
                        r.note_forwarded(tag);
                    }
                    burst.ready += len;
                }
                Step::Whole { tag, len } => {
                    self.on_whole_server_message(rbuf, burst, statements, tag, len)
                }
            }
        }
    }

    /// One whole server message at `rbuf[burst.ready..]`: the session's
    /// state follows it, then it goes to the client as sent, renamed, or
    /// not at all, with pgharbor's own replies put in their places.
    #[inline(always)]
    fn on_whole_server_message(
        &mut self,
        rbuf: &mut BytesMut,
        burst: &mut ServerBurst,
        statements: &mut StatementReplies,
        tag: u8,
        len: usize,
    ) {
        let tx = self.mode == PoolMode::Transaction || !self.ext.expect.is_empty();
        let body = &rbuf[burst.ready + 5..burst.ready + len];
        if self.txn.server_copy_in
            && matches!(tag, backend::COMMAND_COMPLETE | backend::ERROR_RESPONSE)
        {
            self.txn.copy_in_ended(tag == backend::COMMAND_COMPLETE);
        }
        if tx && matches!(tag, backend::ROW_DESCRIPTION | backend::NO_DATA) {
            self.on_row_shape(tag, body);
        }
        // An error that may name a statement by pgharbor's name
        // (transaction mode): the client's goes in its place.
        let mut error = false;
        match tag {
            backend::READY_FOR_QUERY => self.on_ready_for_query(burst, body),
            backend::PARAMETER_STATUS => self.on_parameter_status(body),
            backend::ERROR_RESPONSE => error = self.on_error_response(burst, body) && tx,
            backend::COPY_IN_RESPONSE => {
                let ignored = self.txn.copy_in_started();
                if tx {
                    self.ext.expect.drop_ignored_syncs(ignored);
                }
            }
            backend::COMMAND_COMPLETE => self.on_command_complete(body),
            _ => {}
        }
        let mut outcome = if tx {
            self.ext.expect.on_server_message(
                tag,
                &mut statements.undo,
                &mut statements.parsed,
                &mut self.ext.unnamed,
            )
        } else {
            Outcome::Forward
        };
        // After the skip: a statement whose Close it skipped is the
        // client's again.
        let mut renamed = if error {
            self.client_names_in(body, &statements.undo)
        } else {
            None
        };
        if let (backend::ERROR_RESPONSE, Some(insertions)) =
            (tag, self.ext.reset_insertions.as_deref())
        {
            let body = renamed.as_deref().map_or(body, |m| &m[5..]);
            renamed = error_at_client_position(body, insertions).or(renamed);
        }
        if std::mem::take(&mut burst.drop_error) {
            outcome = Outcome::Swallow;
        }
        if let (Some(r), Outcome::Forward) = (self.ext.replay.as_deref_mut(), &outcome) {
            r.note_forwarded(tag);
        }
        if matches!(outcome, Outcome::Swallow) || renamed.is_some() {
            // Send what came before, then drop this reply (or send it
            // renamed).
            let before = rbuf.split_to(burst.ready);
            append(&mut self.io.to_client, before);
            let _ = rbuf.split_to(len);
            if let (Outcome::Forward, Some(msg)) = (&outcome, renamed) {
                self.io.to_client.extend_from_slice(&msg);
            }
            burst.ready = 0;
        } else {
            burst.ready += len;
        }
        if tx {
            self.emit_due_in_burst(rbuf, burst);
        }
    }

    /// pgharbor's own replies due after the server's last one: what the
    /// burst forwards so far goes first, then each of them.
    #[inline(always)]
    fn emit_due_in_burst(&mut self, rbuf: &mut BytesMut, burst: &mut ServerBurst) {
        while let Some(reply) = self.ext.expect.due_synthesized() {
            let before = rbuf.split_to(burst.ready);
            append(&mut self.io.to_client, before);
            burst.ready = 0;
            synthesize(
                &mut self.io.to_client,
                &mut self.listening.pending_listens,
                reply,
            );
        }
    }

    /// RowDescription or NoData: when it answers a Describe of a named
    /// statement, that statement's result shape (see `bind_fits` in
    /// `extended.rs`), for the client and for the server.
    fn on_row_shape(&mut self, tag: u8, body: &[u8]) {
        let Some((st, to_client)) = self.ext.expect.describing() else {
            return;
        };
        let shape = row_shape(tag, body);
        if to_client {
            st.set_client_shape(shape);
        }
        let name = st.name.clone();
        if let Some(p) = self.server.as_mut() {
            p.server.prepared.set_shape(&name, shape);
        }
        self.ext.shape_wait = false;
    }

    /// ReadyForQuery: the transaction's status, and whether the server
    /// may go back to the pool.
    #[inline(always)]
    fn on_ready_for_query(&mut self, burst: &mut ServerBurst, body: &[u8]) {
        let status = TxStatus::from_ready(body.first().copied());
        if let Some(p) = self.server.as_mut() {
            p.server.status = status;
        }
        self.txn.status = status;
        self.txn.ready_answered();
        self.ext.reset_insertions = None;
        // [prepared statements] A Bind held for a Parse of an earlier group
        // is looked at again.
        self.ext.shape_wait = false;
        let idle = status == TxStatus::Idle;
        if idle && (self.listening.notify_open || !self.listening.pending_listens.is_empty()) {
            // An explicit transaction ends with COMMIT or ROLLBACK (also
            // the tag of a failed COMMIT); an implicit one commits unless
            // it failed.
            let committed = match self.listening.last_command_tag.as_deref() {
                Some("COMMIT") => true,
                Some("ROLLBACK") => false,
                _ => !self.txn.failed,
            };
            if self.listening.notify_open {
                self.end_notify_transaction(committed);
            }
            if self.listening.pending_listens.is_empty() {
                self.listening.last_command_tag = None;
            } else {
                burst.listen_txn_end = Some(committed);
            }
        }
        self.txn.failed = false;
        if idle {
            if let Some(l) = self.listening.local.as_deref_mut() {
                l.end_of_transaction();
            }
            if std::mem::take(&mut self.listening.notified) && burst.notified_ready_at.is_none() {
                burst.notified_ready_at = Some(self.io.to_client.len() + burst.ready);
            }
        }
        let ended = idle && self.txn.pending == 0 && !self.txn.unsynced;
        if ended {
            // Nothing was sent after it: the transaction's portals are gone.
            self.listening.notify_portals.clear();
        }
        burst.txn_done |= ended;
        burst.release = ended && self.mode == PoolMode::Transaction && self.txn.pinned.is_none();
        if self.ext.replay.as_ref().is_some_and(|r| r.armed) {
            // The group runs again: this ReadyForQuery is not the
            // client's, and the server stays.
            burst.drop_error = true;
            burst.replay_now = true;
            burst.release = false;
            burst.txn_done = false;
            burst.listen_txn_end = None;
            burst.notified_ready_at = None;
        }
    }

    /// ParameterStatus: the server's value, and the client's view of it.
    fn on_parameter_status(&mut self, body: &[u8]) {
        let Some((k, v)) = parse_parameter_status(body) else {
            return;
        };
        if let Some(p) = self.server.as_mut() {
            p.server.set_param(k.clone(), v.clone());
        }
        if self.reported.get(&k) != Some(&v) {
            Arc::make_mut(&mut self.reported).insert(k, v);
        }
    }

    /// ErrorResponse: the transaction failed. True when the error may
    /// name a statement by pgharbor's name.
    #[inline(always)]
    fn on_error_response(&mut self, burst: &mut ServerBurst, body: &[u8]) -> bool {
        self.txn.failed = true;
        // A held Bind is looked at again (and skipped).
        self.ext.shape_wait = false;
        let alone = self.txn.pending == 1 && !self.txn.unsynced && self.io.cscan.at_boundary();
        if let Some(r) = self.ext.replay.as_deref_mut() {
            burst.drop_error = r.arm(body, alone);
        }
        let fields = ServerErrorFields::parse(body);
        if fields.is_fatal() {
            self.txn.server_fatal_sent = true;
        }
        // [prepared statements] A statement gone stale stays so on this
        // server: none of its statements is trusted, each is closed and
        // prepared again when next used.
        let stale =
            fields.code == sqlstate::FEATURE_NOT_SUPPORTED && fields.message == CHANGED_RESULT_TYPE;
        if stale && self.mode == PoolMode::Transaction {
            if let Some(p) = self.server.as_mut() {
                p.server.prepared.forget_all();
            }
        }
        true
    }

    /// CommandComplete, looked at in transaction mode: a tag that may have
    /// created a temporary object has the server checked before it goes
    /// back (`temp_backstop.rs`); RESET undoes what pgharbor applied; while
    /// LISTENs wait for their transaction's end, the tag says how it ended.
    fn on_command_complete(&mut self, body: &[u8]) {
        let tx = self.mode == PoolMode::Transaction;
        if tx && self.txn.pinned.is_none() && tag_may_create_temp(body) {
            self.txn.temp_check = true;
        }
        if tx && body == b"RESET\0" {
            // RESET ALL (or RESET of one setting): what pgharbor applied
            // there may be gone, so it is applied again at the next checkout.
            if let Some(p) = self.server.as_mut() {
                p.server.applied.clear();
            }
        }
        if self.listening.notify_open || !self.listening.pending_listens.is_empty() {
            self.listening.last_command_tag = crate::protocol::frame::read_cstr(body)
                .ok()
                .map(|(t, _)| t.to_owned());
        }
    }

    /// The ErrorResponse `body` with the client's statement names in
    /// place of pgharbor's, counting statements the burst's `undo` gives
    /// back; `None` when it names none. Of two names for one server
    /// statement, not one whose Parse came after the failed message (it
    /// was skipped with this error, or waits for its reply still).
    fn client_names_in(&self, body: &[u8], undo: &[Undo]) -> Option<BytesMut> {
        client_names_in_error(body, |server| {
            let restored = undo.iter().filter_map(|u| u.restore.as_ref());
            // [prepared statements] Or one closed after it.
            let restored = restored.chain(self.ext.expect.closing());
            let parsed_later = |name: &str| {
                undo.iter().any(|u| u.client_name.as_deref() == Some(name))
                    || self.ext.expect.parse_pending(name)
            };
            let mut all = self
                .ext
                .statements
                .iter()
                .filter(|(n, _)| !parsed_later(n))
                .chain(restored.map(|(n, st)| (n, st)));
            all.find(|(_, st)| &*st.name == server)
                .map(|(n, _)| n.clone())
        })
    }

    /// After a burst: texts a server accepted become known, and what
    /// failed or was skipped is undone, latest first (a Parse skipped after
    /// a Close of the same name, both skipped, leaves the statement the
    /// Close would have closed).
    #[inline(always)]
    fn settle_statements(&mut self, statements: StatementReplies) {
        // Nearly every read: no Parse answered, none undone.
        if statements.undo.is_empty() && statements.parsed.is_empty() {
            return;
        }
        self.settle_statement_replies(statements);
    }

    fn settle_statement_replies(&mut self, statements: StatementReplies) {
        let StatementReplies { undo, parsed } = statements;
        for name in parsed {
            self.state.known_statements().insert(name);
        }
        for u in undo.into_iter().rev() {
            if let Some((n, st)) = u.restore {
                self.ext.statements.insert(n, st);
                continue;
            }
            if u.closed_first {
                if let Some(p) = self.server.as_mut() {
                    p.server.prepared.mark_unsure();
                }
            }
            if let Some(n) = &u.server_name {
                if let Some(p) = self.server.as_mut() {
                    p.server.prepared.remove(n);
                }
                self.state.known_statements().remove(n);
            }
            if let Some(n) = &u.client_name {
                self.ext.statements.remove(n);
            }
        }
    }

    /// Counts the transaction; returns the clock reading at its end.
    fn end_of_transaction(&mut self) -> Instant {
        let now = Instant::now();
        self.pool.stats.transactions.inc();
        if let Some(t) = self.txn.started.take() {
            self.pool
                .stats
                .transaction_seconds
                .observe(now.saturating_duration_since(t).as_secs_f64());
        }
        now
    }

    /// The server died under the client: tell the client at once (unless
    /// the server's own FATAL already did), drop the server, end the session.
    pub(super) fn server_lost(&mut self, cause: ServerError) -> Ending<'_> {
        Box::pin(async move {
            if let Some(p) = self.server.take() {
                self.forget_sender();
                // The server is discarded whatever cancels are still on their way.
                let _ = self.cancel.slot.clear_target().await;
                self.pool.stats.clients_active.dec();
                self.pool.stats.clients_idle.inc();
                tracing::warn!(server_id = p.server.id, error = %cause, "server connection lost");
                p.discard();
            }
            if !self.txn.server_fatal_sent {
                let e = PgError::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!("pgharbor: server connection lost ({cause}); any open transaction was rolled back by the server"),
                )
                .with_hint("reconnect and retry the transaction");
                return self.send_fatal(e).await;
            }
            let _ = super::startup::send(&mut self.client, &self.io.to_client).await;
            Err(SessionError::ServerLost(Box::new(cause)))
        })
    }
}
