//! The client half of the relay. Each message the client sent is given a
//! [`Route`] by [`Session::route`], from its tag and, in transaction mode,
//! from what it names and what its text holds; one method per route carries
//! it out. Messages that go to the server as sent stay in `cbuf` and leave
//! in one write at the end of the burst (`forward_ready`), so a
//! Parse/Bind/Execute/Sync batch reaches the server as the client sent it.
//!
//! The way of one message: `relay.rs` reads the socket into `cbuf`, this
//! file routes and queues it in `to_server` (rewriting it through
//! `extended.rs` where transaction mode must), and `relay.rs` writes
//! `to_server` to the server.

use std::time::Instant;

use super::expect::{Action, Reply};
use super::extended::Forwarded;
use super::known_parses::KnownParses;
use super::listen_relay::Intercept;
use super::session::listen_extended::LocalAction;
use super::session::replay::keep_for_replay;
use super::session::{Session, SessionError};
use super::whole_messages::{is_frontend_tag, WholeMessages};
use super::{buffers, unnamed};
use crate::config::PoolMode;
use crate::listen::MixedQuery;
use crate::protocol::frame::{read_cstr_bytes, Step};
use crate::protocol::tag::frontend;
use crate::protocol::{sqlstate, PgError, ProtocolError};
use crate::sql::query_scan;

/// How one client message leaves the burst of reading.
pub(super) enum Flow {
    /// On to the next message.
    Next,
    /// Stop reading for now: what is left waits for more bytes, or for
    /// the server to answer what went before it.
    Pause,
    /// The session ends.
    End(Result<(), SessionError>),
    /// The client broke the protocol: it gets a FATAL and the session ends.
    Violation(ProtocolError),
}

/// What the one look at a Query's or Parse's text found (transaction mode).
#[derive(Clone, Copy)]
pub(super) struct TextFacts {
    /// A statement worth a closer look for session state.
    pub may_hold_state: bool,
    /// What may be a DEALLOCATE, DISCARD ALL or EXECUTE (`prepared_sql`).
    pub names_statements: bool,
}

impl TextFacts {
    /// A text not looked at: checked for session state when it matters.
    const UNREAD: TextFacts = TextFacts {
        may_hold_state: true,
        names_statements: false,
    };
}

/// Where one client message goes. Variants carrying a length name the
/// message at the front of the undecided bytes, that many bytes long.
pub(super) enum Route {
    /// Not all of the next message has arrived.
    Incomplete,
    /// pgharbor answers this message itself, but only once what the
    /// client sent before it has been answered.
    Later,
    /// The rest of a message whose head passed on.
    Continuation { len: usize },
    /// Passes as sent, read no further than its header.
    Pass { tag: u8, len: usize },
    /// A whole message for the server, passed as sent or rewritten.
    Send {
        tag: u8,
        len: usize,
        text: TextFacts,
    },
    /// pgharbor answers, refuses, or drops the message itself.
    Here(Here),
}

/// The messages pgharbor answers, refuses or drops itself, and the end of
/// the session.
pub(super) enum Here {
    /// The client broke the protocol: it gets a FATAL.
    Broken(ProtocolError),
    /// Dropped unread: after an error pgharbor gave, the client's messages
    /// are ignored up to Sync, as Postgres ignores them.
    Skip { len: usize },
    /// Terminate: the client is done.
    Terminate,
    /// A Sync while no server is held: everything since the last one was
    /// answered here, and so is this.
    Sync { len: usize },
    /// A Flush while no server is held: only pgharbor's answers are due.
    Flush { len: usize },
    /// A message type no client may send.
    Invalid { tag: u8 },
    /// A burst of Parse messages for texts a server accepted, and its
    /// Sync, answered without a server (see `answer_known_parses`).
    Prepare(KnownParses),
    /// An extended-protocol message about a LISTEN statement or portal, or
    /// one that fails here.
    Local {
        len: usize,
        action: Box<LocalAction>,
    },
    /// A Query pgharbor may answer itself (LISTEN, DEALLOCATE, DISCARD ALL).
    Query(QueryRoute),
}

/// The routes of a simple Query pgharbor may answer itself (transaction
/// mode). Each carries the Query's length, its text and what the look at it
/// found.
pub(super) enum QueryRoute {
    /// It holds LISTEN/UNLISTEN: answered here, or rewritten so the server
    /// runs the rest.
    Listen {
        len: usize,
        sql: String,
        text: TextFacts,
    },
    /// LISTENs of the open transaction wait for its end, which this Query
    /// may be.
    BeforeCommit {
        len: usize,
        sql: String,
        text: TextFacts,
    },
    /// It may hold a DEALLOCATE, DISCARD ALL or EXECUTE of the client's
    /// statements: answered here, rewritten, or passed on.
    StatementSql {
        len: usize,
        sql: String,
        text: TextFacts,
    },
}

impl Session {
    /// Routes and carries out every complete client message in `cbuf`, and
    /// queues for the server what it decided to forward.
    pub(super) async fn process_client_input(&mut self) -> Flow {
        // Bytes at the front of `cbuf` decided on, to be forwarded.
        let mut ready = 0usize;
        loop {
            if ready == self.io.cbuf.len() {
                // Nothing left to route: `route` would find nothing, so the
                // usual end of a burst skips its look at the session.
                break;
            }
            // The routes every message takes are carried out here, the
            // server taken in place rather than in a nested async fn: on
            // the way of every message, nested futures and their drop cost
            // instructions per transaction. The rest are boxed apart.
            let flow = match self.route(ready) {
                Route::Incomplete | Route::Later => Flow::Pause,
                Route::Continuation { len } => {
                    self.pass_continuation(ready, len);
                    ready += len;
                    Flow::Next
                }
                Route::Pass { tag, len } => {
                    if self.server.is_none() {
                        self.forward_ready(ready);
                        ready = 0;
                        if let Some(slow) = self.ensure_server() {
                            if let Some(end) = slow.await {
                                return Flow::End(end);
                            }
                        }
                    }
                    self.pass(&mut ready, tag, len)
                }
                Route::Send { tag, len, text } => {
                    if let Some(slow) = self.ensure_server() {
                        if let Some(end) = slow.await {
                            return Flow::End(end);
                        }
                    }
                    self.send(&mut ready, tag, len, text, None)
                }
                Route::Here(here) => Box::pin(self.answer_here(&mut ready, here)).await,
            };
            match flow {
                Flow::Next => {}
                Flow::Pause => break,
                Flow::End(end) => return Flow::End(end),
                Flow::Violation(e) => return self.protocol_violation(e).await,
            }
        }
        self.forward_ready(ready);
        if let Err(e) = self.flush_server() {
            return Flow::End(Err(e));
        }
        if self.io.cbuf.is_empty() && !self.txn.status.in_block() {
            // After the flush: what was forwarded from it is gone, so its
            // memory can be kept for the next read. Inside a transaction
            // block the client keeps it for its next statement (handing it
            // over and taking it again cost about 200 instructions a
            // statement); `on_server_readable` gives it back at the end.
            buffers::give_back(&mut self.io.cbuf);
        }
        Flow::Next
    }

    /// The route of the message at `cbuf[ready..]`. In transaction mode a
    /// Query's or Parse's text is looked at here, once, for LISTEN, session
    /// state and statement names.
    // Inlined, as the two below, into the loop: the way of every message.
    #[inline(always)]
    fn route(&mut self, ready: usize) -> Route {
        let tx = self.mode == PoolMode::Transaction;
        let (skipping, local_portals) = match self.listening.local.as_deref() {
            Some(l) => (l.skip_to_sync, l.has_portals()),
            None => (false, false),
        };
        let notify_portals = !self.listening.notify_portals.is_empty();
        let whole = WholeMessages {
            transaction_mode: tx,
            no_server: self.server.is_none(),
            skipping,
            // Most often settled by the first test (a driver with named
            // statements) or the last ones (one without).
            names: !self.ext.statements.is_empty()
                || self.listening.local.is_some()
                || !self.ext.unnamed.here
                || self.ext.expect.closing().next().is_some()
                || notify_portals
                || self.ext.unnamed.notify.is_some(),
            local_portals: local_portals || notify_portals,
        };
        let step = (self.io.cscan).step(&self.io.cbuf[ready..], self.io.max_message, |t| {
            whole.wanted(t)
        });
        let step = match step {
            Ok(step) => step,
            Err(e) => return Route::Here(Here::Broken(e)),
        };
        if skipping {
            if let Some(route) = self.route_while_skipping(&step) {
                return route;
            }
        }
        self.route_step(ready, step, &whole)
    }

    /// While the rest of a failed Sync group is skipped: every message up
    /// to the Sync is dropped here (`None` for the Sync or a Terminate,
    /// which end the skip and take their own route).
    #[inline(always)]
    fn route_while_skipping(&mut self, step: &Step) -> Option<Route> {
        // Nothing waits in `ready` while skipping.
        match *step {
            Step::Incomplete => Some(Route::Incomplete),
            Step::Whole {
                tag: frontend::SYNC | frontend::TERMINATE,
                ..
            } => {
                if let Some(l) = self.listening.local.as_deref_mut() {
                    l.skip_to_sync = false;
                }
                None
            }
            Step::Whole { len, .. } | Step::Pass { len, .. } => {
                Some(Route::Here(Here::Skip { len }))
            }
        }
    }

    /// The route of a message `step` found at `cbuf[ready..]`.
    #[inline(always)]
    fn route_step(&mut self, ready: usize, step: Step, whole: &WholeMessages) -> Route {
        let tx = whole.transaction_mode;
        match step {
            Step::Incomplete => Route::Incomplete,
            Step::Pass { tag: None, len } => Route::Continuation { len },
            Step::Pass { tag: Some(tag), .. } if !is_frontend_tag(tag) => {
                Route::Here(Here::Invalid { tag })
            }
            Step::Pass {
                tag: Some(tag),
                len,
            } => Route::Pass { tag, len },
            Step::Whole {
                tag: frontend::TERMINATE,
                ..
            } => Route::Here(Here::Terminate),
            // With no server held nothing waits in `ready`: every message
            // passed on unread takes a server first.
            Step::Whole {
                tag: frontend::SYNC,
                len,
            } if whole.no_server => Route::Here(Here::Sync { len }),
            Step::Whole {
                tag: frontend::FLUSH,
                len,
            } if whole.no_server => Route::Here(Here::Flush { len }),
            // CopyData, CopyDone or CopyFail with no server held: no COPY
            // runs (its server would be held), e.g. the client sends the
            // data of a COPY that failed before its CopyInResponse.
            // Postgres ignores them outside a COPY, and so does pgharbor:
            // a server taken for them would wait for a ReadyForQuery that
            // never comes.
            Step::Whole {
                tag: frontend::COPY_DATA | frontend::COPY_DONE | frontend::COPY_FAIL,
                len,
            } if tx && whole.no_server => Route::Here(Here::Skip { len }),
            Step::Whole {
                tag: frontend::QUERY,
                len,
            } if tx => self.route_query(ready, len),
            Step::Whole { tag, len }
                if tx
                    && matches!(
                        tag,
                        frontend::PARSE
                            | frontend::BIND
                            | frontend::DESCRIBE
                            | frontend::EXECUTE
                            | frontend::CLOSE
                    ) =>
            {
                self.route_extended(ready, tag, len, whole.no_server)
            }
            Step::Whole { tag, len } => Route::Send {
                tag,
                len,
                text: TextFacts::UNREAD,
            },
        }
    }

    /// The route of a whole simple Query in transaction mode.
    #[inline(always)]
    fn route_query(&mut self, ready: usize, len: usize) -> Route {
        let sql = match read_cstr_bytes(&self.io.cbuf[ready + 5..ready + len]) {
            Ok((sql, _)) => sql,
            Err(e) => return Route::Here(Here::Broken(e)),
        };
        // A simple Query destroys the unnamed statement, here and on the
        // server (answered here or not).
        self.ext.unnamed.destroyed();
        let scan = query_scan::scan(sql, true);
        let text = TextFacts {
            may_hold_state: scan.session_state,
            names_statements: scan.names_statements,
        };
        // Texts that are not UTF-8 go to the server, which answers them.
        let utf8 = || std::str::from_utf8(sql).ok().map(str::to_owned);
        if scan.listen {
            if let Some(sql) = utf8() {
                // Answered only after what came before is answered.
                return if ready > 0 {
                    Route::Later
                } else {
                    Route::Here(Here::Query(QueryRoute::Listen { len, sql, text }))
                };
            }
        } else if !self.listening.pending_listens.is_empty() {
            if let Some(sql) = utf8() {
                return Route::Here(Here::Query(QueryRoute::BeforeCommit { len, sql, text }));
            }
        }
        if text.names_statements {
            if let Some(sql) = utf8() {
                return if ready > 0 {
                    Route::Later
                } else {
                    Route::Here(Here::Query(QueryRoute::StatementSql { len, sql, text }))
                };
            }
        }
        Route::Send {
            tag: frontend::QUERY,
            len,
            text,
        }
    }

    /// The route of a whole Parse, Bind, Describe, Execute or Close in
    /// transaction mode: answered here when it concerns a LISTEN statement
    /// or a statement that is missing; otherwise sent.
    #[inline(always)]
    fn route_extended(&mut self, ready: usize, tag: u8, len: usize, no_server: bool) -> Route {
        if no_server && tag == frontend::PARSE && ready == 0 {
            if let Some(parses) = self.known_parses() {
                return Route::Here(Here::Prepare(parses));
            }
        }
        let body = &self.io.cbuf[ready + 5..ready + len];
        let mut may_listen = true;
        let mut text = TextFacts::UNREAD;
        if tag == frontend::PARSE {
            if let Some(sql) = crate::protocol::frontend::parse_text(body) {
                let scan = query_scan::scan(sql, true);
                may_listen = scan.listen;
                text = TextFacts {
                    may_hold_state: scan.session_state,
                    names_statements: query_scan::statement_may_name(sql),
                };
            }
        }
        let mut action = self.classify_local(tag, body, may_listen);
        // Not when the server skips the message anyway.
        if matches!(action, LocalAction::NotLocal)
            && !self.ext.unnamed.here
            && !self.ext.unnamed.exists
            && !self.ext.expect.server_skipping()
            && unnamed::names_unnamed_statement(tag, body)
        {
            action = LocalAction::Fail(unnamed::missing_unnamed_statement());
        }
        if !matches!(action, LocalAction::NotLocal) {
            return Route::Here(Here::Local {
                len,
                action: Box::new(action),
            });
        }
        if let Some(l) = self.listening.local.as_deref_mut() {
            l.forget_shadowed(tag, &self.io.cbuf[ready + 5..ready + len]);
        }
        Route::Send { tag, len, text }
    }

    /// A Query pgharbor did not answer itself, at `cbuf[*ready..]`: takes
    /// a server if none is held, and sends it.
    async fn send_with_server(
        &mut self,
        ready: &mut usize,
        len: usize,
        text: TextFacts,
        mixed: Option<Box<MixedQuery>>,
    ) -> Flow {
        if let Some(slow) = self.ensure_server() {
            if let Some(end) = slow.await {
                return Flow::End(end);
            }
        }
        self.send(ready, frontend::QUERY, len, text, mixed)
    }

    /// A whole message at `cbuf[*ready..]` for the server, which the client
    /// holds: records what the transaction and the replay need, and
    /// forwards it as sent or rewritten. `mixed`: the plan of a Query whose
    /// LISTENs pgharbor answers in their places.
    // Inlined into the loop: the way of every message.
    #[inline(always)]
    fn send(
        &mut self,
        ready: &mut usize,
        tag: u8,
        len: usize,
        text: TextFacts,
        mixed: Option<Box<MixedQuery>>,
    ) -> Flow {
        let tx = self.mode == PoolMode::Transaction;
        let at = *ready;
        if tx || tag == frontend::QUERY {
            let idle = self.txn.is_idle();
            keep_for_replay(
                &mut self.ext.replay,
                idle,
                Some(tag),
                &self.io.cbuf[at..at + len],
            );
        }
        if tx {
            self.note_notifies(tag, at, len);
        }
        // Session mode follows no replies but those of a Query it rewrote,
        // which must then be the only ones owed.
        let alone = self.txn.pending == 0 && !self.txn.unsynced;
        self.note_client_message(tag);
        let forwarded = if !tx {
            // Session mode: the Query passes as sent, unless it resets the
            // startup settings pgharbor applied (`reset_all.rs`).
            if tag == frontend::QUERY
                && self.own_startup
                && alone
                && self.rewrite_reset_all(at, len)
            {
                self.emit_due_synthesized();
                Ok(Forwarded::Rewritten)
            } else {
                Ok(Forwarded::AsSent)
            }
        } else if tag == frontend::QUERY {
            // A Query mixing LISTEN with other statements is not also
            // rewritten for statement names (a rare pair): the replies its
            // LISTENs get are queued before its ReadyForQuery.
            let names = text.names_statements && mixed.is_none();
            if let Some(m) = mixed {
                self.listening.planned_statements = m.statements.len();
                self.expect_statements(*m);
            }
            let forwarded = self.forward_query(at, len, text.may_hold_state, names);
            self.listening.planned_statements = 0;
            Ok(forwarded)
        } else {
            let (state, names) = (text.may_hold_state, text.names_statements);
            self.rewrite_extended(tag, at, len, state, names)
        };
        match forwarded {
            Ok(Forwarded::AsSent) => {
                *ready += len;
                Flow::Next
            }
            Ok(Forwarded::Rewritten) => {
                *ready = 0;
                Flow::Next
            }
            Ok(Forwarded::Held) => {
                *ready = 0;
                Flow::Pause
            }
            Err(e) => Flow::Violation(e),
        }
    }

    /// Transaction mode: what the whole message at `cbuf[at..at + len]`
    /// notifies is noted with the server that runs it (`listen_relay.rs`,
    /// `session/notify_portals.rs`). A Bind or an Execute costs a look
    /// only while a statement or portal of the client notifies.
    #[inline(always)]
    fn note_notifies(&mut self, tag: u8, at: usize, len: usize) {
        match tag {
            frontend::QUERY => self.note_query_notifies(at, len),
            frontend::BIND
                if self.ext.unnamed.notify.is_some()
                    || !self.listening.notify_portals.is_empty() =>
            {
                self.note_notify_bind(at, len)
            }
            frontend::EXECUTE if !self.listening.notify_portals.is_empty() => {
                self.note_notify_execute(at, len)
            }
            _ => {}
        }
    }

    /// A message read no further than its header, at `cbuf[*ready..]`, for
    /// the server the client holds: records the reply it is owed.
    fn pass(&mut self, ready: &mut usize, tag: u8, len: usize) -> Flow {
        let tx = self.mode == PoolMode::Transaction;
        let at = *ready;
        if tx {
            let idle = self.txn.is_idle();
            keep_for_replay(
                &mut self.ext.replay,
                idle,
                Some(tag),
                &self.io.cbuf[at..at + len],
            );
        }
        let owed = self.note_client_message(tag);
        if tx && owed {
            match tag {
                frontend::BIND => self.ext.expect.push(Reply::BindComplete, Action::Forward),
                frontend::DESCRIBE => self.ext.expect.push(Reply::Describe, Action::Forward),
                frontend::EXECUTE => self.ext.expect.push(Reply::Execute, Action::Forward),
                frontend::SYNC | frontend::QUERY | frontend::FUNCTION_CALL => {
                    self.ext.expect.push(Reply::Ready, Action::Forward)
                }
                _ => {}
            }
        }
        *ready += len;
        Flow::Next
    }

    /// The rest of a message whose head passed on, at `cbuf[ready..]`.
    fn pass_continuation(&mut self, ready: usize, len: usize) {
        if self.mode == PoolMode::Transaction && self.ext.replay.is_some() {
            let bytes = &self.io.cbuf[ready..ready + len];
            keep_for_replay(&mut self.ext.replay, false, None, bytes);
        }
    }

    /// The client broke the protocol: a FATAL, and the session ends.
    async fn protocol_violation(&mut self, e: ProtocolError) -> Flow {
        Flow::End(self.send_fatal(PgError::protocol_violation(e)).await)
    }

    /// See [`Io::forward_ready`](super::session::Io::forward_ready).
    #[inline]
    pub(super) fn forward_ready(&mut self, n: usize) {
        self.io.forward_ready(n);
    }

    /// Pinning bookkeeping for a client message about to be forwarded.
    /// `false`: a Sync or Flush the server will read as COPY data and
    /// ignore, which is owed no reply (see `copy.rs`).
    fn note_client_message(&mut self, tag: u8) -> bool {
        if self.txn.started.is_none() {
            self.txn.started = Some(Instant::now());
        }
        match tag {
            frontend::SYNC | frontend::FLUSH if self.txn.copy_ignores() => return false,
            frontend::QUERY => {
                self.txn.ready_sent(true);
                self.pool.stats.queries.inc();
            }
            frontend::SYNC | frontend::FUNCTION_CALL => self.txn.ready_sent(false),
            frontend::EXECUTE => {
                self.txn.unsynced = true;
                self.pool.stats.queries.inc();
            }
            frontend::PARSE
            | frontend::BIND
            | frontend::DESCRIBE
            | frontend::CLOSE
            | frontend::FLUSH => self.txn.unsynced = true,
            frontend::COPY_DONE | frontend::COPY_FAIL => self.txn.copy_end_sent(),
            _ => {}
        }
        true
    }
}

// The messages pgharbor answers itself.
#[path = "route_here.rs"]
mod here;
