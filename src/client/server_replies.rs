//! The server side of the relay: each read from the server is scanned,
//! ReadyForQuery / ParameterStatus / errors update the client's state, the
//! replies pgharbor injected are swallowed and the ones it answered itself
//! are put in their place, and the server goes back to the pool when the
//! transaction ends.

use std::sync::Arc;
use std::time::Instant;

use super::expect::Outcome;
use super::prepared::{client_names_in_error, row_shape, CHANGED_RESULT_TYPE};
use super::relay::{append, synthesize, try_fill, Ending};
use super::session::{Session, SessionError};
use super::temp_backstop::{tag_may_create_temp, TempCheck};
use crate::config::PoolMode;
use crate::protocol::error::ServerErrorFields;
use crate::protocol::frame::Step;
use crate::protocol::{backend, sqlstate, PgError};
use crate::server::ServerError;

/// Server messages the relay must see whole.
fn server_inspects(tag: u8) -> bool {
    matches!(tag, b'Z' | b'S' | b'E' | b'G' | b'W')
}

/// In transaction mode also every reply that ends an extended-protocol
/// step while the expectation queue must count them, so replies can be
/// swallowed or synthesized between whole messages (and the
/// ParameterDescription of a Describe pgharbor injected, swallowed too).
fn server_inspects_tx(tag: u8) -> bool {
    server_inspects(tag) || super::expect::ends_step(tag) || tag == b't'
}

/// In transaction mode also CommandComplete: with a LISTEN waiting for its
/// transaction's end it says whether that was COMMIT or ROLLBACK, and a
/// tag saying CREATE, DO or CALL has the server's temporary schema checked
/// before it goes back to the pool (`temp_backstop.rs`).
fn server_inspects_listen(tag: u8) -> bool {
    server_inspects(tag) || tag == b'C'
}

/// While the server answers a statement pgharbor replaced: its row too.
fn inspect_all(_: u8) -> bool {
    true
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
    },
}

impl Session {
    /// Reads from the server and forwards; releases the server at the end of
    /// a transaction in transaction mode.
    pub(super) async fn on_server_readable(&mut self) -> Option<Result<(), SessionError>> {
        // The reading and scanning is a plain function, so its locals are
        // not part of this future's state (and of every client task's).
        let (lost, release, ended, listen_txn_end) = match self.read_server()? {
            ServerRead::Broken(e) => return Some(self.server_lost(*e).await),
            ServerRead::Done {
                lost,
                release,
                ended,
                listen_txn_end,
            } => (lost, release, ended, listen_txn_end),
        };
        if let Some(committed) = listen_txn_end {
            // Before the ReadyForQuery reaches the client: a NOTIFY it sends
            // next must find the LISTEN in place, as on Postgres.
            // Boxed: a rare path kept out of the relay future's size.
            if let Err(e) = Box::pin(self.end_of_listen_transaction(committed)).await {
                tracing::warn!(error = %e, "LISTEN at COMMIT failed");
            }
            self.last_command_tag = None;
        }
        if let Err(e) = self.flush_client() {
            return Some(Err(e));
        }
        if let Some(e) = lost {
            return Some(self.server_lost(*e).await);
        }
        if release && self.txn.is_idle() {
            if !self.expect.is_empty() {
                tracing::warn!("replies still expected at the end of a transaction; dropping them");
            }
            let reusable = if std::mem::take(&mut self.txn.temp_check) {
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
        let open = try_fill(&mut pooled.server.stream, &mut pooled.server.rbuf);
        // Boxed: kept across `on_server_readable`'s awaits, so its size
        // would be every client task's.
        let lost = match open {
            Ok(true) => None,
            Ok(false) => Some(Box::new(ServerError::Closed)),
            Err(e) => Some(Box::new(ServerError::Io(e))),
        };
        let mut release = false;
        let mut txn_done = false;
        let mut ready = 0usize;
        let tx = self.mode == PoolMode::Transaction;
        let mut undo = Vec::new();
        let mut parsed = Vec::new();
        let mut listen_txn_end = None;
        let mut drop_error = false;
        let mut replay_now = false;
        let pooled = self.server.as_mut()?;
        loop {
            // While the server reads COPY data, the CommandComplete that
            // ends the COPY is looked at too.
            let each = tx && self.expect.needs_each_reply();
            let inspects = if each && self.expect.replaces_next() {
                inspect_all
            } else if each || self.txn.server_copy_in {
                server_inspects_tx
            } else if !tx {
                server_inspects
            } else if !self.pending_listens.is_empty() || self.pinned.is_none() {
                server_inspects_listen
            } else {
                server_inspects
            };
            let rbuf = &pooled.server.rbuf;
            let step = match self.sscan.step(&rbuf[ready..], 1 << 30, inspects) {
                Ok(s) => s,
                Err(e) => return Some(ServerRead::Broken(Box::new(ServerError::Protocol(e)))),
            };
            match step {
                Step::Incomplete => break,
                Step::Pass { tag, len } => {
                    if let (Some(r), Some(tag)) = (self.replay.as_deref_mut(), tag) {
                        r.note_forwarded(tag);
                    }
                    ready += len
                }
                Step::Whole { tag, len } => {
                    let body = &rbuf[ready + 5..ready + len];
                    if self.txn.server_copy_in && matches!(tag, b'C' | b'E') {
                        self.txn.copy_in_ended(tag == b'C');
                    }
                    // The reply to a Describe of a named statement: its
                    // result shape (see `bind_fits` in `extended.rs`).
                    let described = if tx && matches!(tag, b'T' | b'n') {
                        self.expect.describing().map(|(st, to_client)| {
                            let shape = row_shape(tag, body);
                            if to_client {
                                st.set_client_shape(shape);
                            }
                            (st.clone(), shape)
                        })
                    } else {
                        None
                    };
                    // An error that may name a statement by pgharbor's
                    // name (transaction mode): the client's goes in its place.
                    let mut error = false;
                    match tag {
                        b'Z' => {
                            let status = body.first().copied().unwrap_or(b'I');
                            pooled.server.status = status;
                            self.txn.status = status;
                            self.txn.ready_answered();
                            // [prepared statements] A Bind held for a
                            // Parse of an earlier group is looked at again.
                            self.shape_wait = false;
                            release = false;
                            if status == b'I' && !self.pending_listens.is_empty() {
                                // An explicit transaction ends with COMMIT or
                                // ROLLBACK (also the tag of a failed COMMIT);
                                // an implicit one commits unless it failed.
                                listen_txn_end = Some(match self.last_command_tag.as_deref() {
                                    Some("COMMIT") => true,
                                    Some("ROLLBACK") => false,
                                    _ => !self.txn.failed,
                                });
                            }
                            self.txn.failed = false;
                            if status == b'I' {
                                if let Some(l) = self.local.as_deref_mut() {
                                    l.end_of_transaction();
                                }
                            }
                            if self.txn.pending == 0 && !self.txn.unsynced && status == b'I' {
                                txn_done = true;
                                release =
                                    self.mode == PoolMode::Transaction && self.pinned.is_none();
                            }
                            if self.replay.as_ref().is_some_and(|r| r.armed) {
                                // The group runs again: this ReadyForQuery is
                                // not the client's, and the server stays.
                                drop_error = true;
                                replay_now = true;
                                release = false;
                                txn_done = false;
                                listen_txn_end = None;
                            }
                        }
                        b'S' => {
                            if let Some((k, v)) = backend::parse_parameter_status(body) {
                                pooled.server.set_param(k.clone(), v.clone());
                                if self.reported.get(&k) != Some(&v) {
                                    Arc::make_mut(&mut self.reported).insert(k, v);
                                }
                            }
                        }
                        b'E' => {
                            self.txn.failed = true;
                            // A held Bind is looked at again (and skipped).
                            self.shape_wait = false;
                            let alone = self.txn.pending == 1
                                && !self.txn.unsynced
                                && self.cscan.at_boundary();
                            if let Some(r) = self.replay.as_deref_mut() {
                                drop_error = r.arm(body, alone);
                            }
                            let fields = ServerErrorFields::parse(body);
                            if fields.is_fatal() {
                                self.server_fatal_sent = true;
                            }
                            if tx {
                                // [prepared statements] A statement gone
                                // stale stays so on this server: none of its
                                // statements is trusted, each is closed and
                                // prepared again when next used.
                                if fields.code == "0A000" && fields.message == CHANGED_RESULT_TYPE {
                                    pooled.server.prepared.forget_all();
                                }
                                error = true;
                            }
                        }
                        b'G' => {
                            let ignored = self.txn.copy_in_started();
                            if tx {
                                self.expect.drop_ignored_syncs(ignored);
                            }
                        }
                        b'C' => {
                            if tx && self.pinned.is_none() && tag_may_create_temp(body) {
                                self.txn.temp_check = true;
                            }
                            if tx && body == b"RESET\0" {
                                // RESET ALL (or RESET of one setting): what
                                // pgharbor applied there may be gone, so it
                                // is applied again at the next checkout.
                                pooled.server.applied.clear();
                            }
                            if !self.pending_listens.is_empty() {
                                self.last_command_tag = crate::protocol::frame::read_cstr(body)
                                    .ok()
                                    .map(|(t, _)| t.to_owned());
                            }
                        }
                        _ => {}
                    }
                    if let Some((st, shape)) = described {
                        pooled.server.prepared.set_shape(&st.name, shape);
                        self.shape_wait = false;
                    }
                    let mut outcome = if tx {
                        self.expect.on_server_message(tag, &mut undo, &mut parsed)
                    } else {
                        Outcome::Forward
                    };
                    // After the skip: a statement whose Close it skipped
                    // is the client's again.
                    let renamed = error.then(|| {
                        let body = &pooled.server.rbuf[ready + 5..ready + len];
                        client_names_in_error(body, |server| {
                            let restored = undo.iter().filter_map(|u| u.restore.as_ref());
                            // [prepared statements] Or one closed after it.
                            let restored = restored.chain(self.expect.closing());
                            let mut all = self
                                .statements
                                .iter()
                                .chain(restored.map(|(n, st)| (n, st)));
                            all.find(|(_, st)| &*st.name == server)
                                .map(|(n, _)| n.clone())
                        })
                    });
                    let renamed = renamed.flatten();
                    if std::mem::take(&mut drop_error) {
                        outcome = Outcome::Swallow;
                    }
                    if let Some(r) = self.replay.as_deref_mut() {
                        if matches!(outcome, Outcome::Forward) {
                            r.note_forwarded(tag);
                        }
                    }
                    if matches!(outcome, Outcome::Swallow) || renamed.is_some() {
                        // Send what came before, then drop this reply (or
                        // send it renamed).
                        let before = pooled.server.rbuf.split_to(ready);
                        append(&mut self.to_client, before);
                        let _ = pooled.server.rbuf.split_to(len);
                        if let (Outcome::Forward, Some(msg)) = (&outcome, renamed) {
                            self.to_client.extend_from_slice(&msg);
                        }
                        ready = 0;
                    } else {
                        ready += len;
                    }
                    if tx {
                        while let Some(reply) = self.expect.due_synthesized() {
                            let before = pooled.server.rbuf.split_to(ready);
                            append(&mut self.to_client, before);
                            ready = 0;
                            synthesize(&mut self.to_client, &mut self.pending_listens, reply);
                        }
                    }
                }
            }
        }
        let chunk = pooled.server.rbuf.split_to(ready);
        append(&mut self.to_client, chunk);
        for name in parsed {
            self.state.known_statements.insert(name);
        }
        // Latest first: a Parse skipped after a Close of the same name,
        // both skipped, leaves the statement the Close would have closed.
        for u in undo.into_iter().rev() {
            // [unnamed statement] A skipped unnamed Parse changed nothing.
            if let Some(before) = u.unnamed {
                self.unnamed.undo_skipped(*before);
                continue;
            }
            if let Some((n, st)) = u.restore {
                self.statements.insert(n, st);
                continue;
            }
            if let Some(n) = &u.server_name {
                pooled.server.prepared.remove(n);
                self.state.known_statements.remove(n);
                if u.closed_first {
                    pooled.server.prepared.mark_unsure();
                }
            }
            if let Some(n) = &u.client_name {
                self.statements.remove(n);
            }
        }
        let ended = txn_done.then(|| self.end_of_transaction());
        if replay_now {
            self.start_replay();
        }
        Some(ServerRead::Done {
            lost,
            release,
            ended,
            listen_txn_end,
        })
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
            if !self.server_fatal_sent {
                let e = PgError::fatal(
                    sqlstate::CONNECTION_FAILURE,
                    format!("pgharbor: server connection lost ({cause}); any open transaction was rolled back by the server"),
                )
                .with_hint("reconnect and retry the transaction");
                return self.send_fatal(e).await;
            }
            let _ = super::startup::send(&mut self.client, &self.to_client).await;
            Err(SessionError::ServerLost(Box::new(cause)))
        })
    }
}
