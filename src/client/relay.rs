//! The relay loop: client bytes to the server, server bytes to the client,
//! with the pinning decisions made per message tag. The server-side half
//! (scanning the server's replies, release at the end of a transaction) is in
//! `server_replies.rs`.
//!
//! Both sockets are driven through readiness (`readable`/`writable` plus
//! non-blocking reads and writes), so reading and writing in both directions
//! proceed together: a client pipelining a large batch can never deadlock
//! against a server that is busy sending results. Buffers are allocated only
//! while there is traffic, so an idle client costs a socket and a task.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Instant;

use bytes::BytesMut;

use super::buffers::{self, READ_CHUNK};
use super::expect::{Action, Reply, Synthesized};
use super::extended::Forwarded;
use super::listen_extended::LocalAction;
use super::listen_relay::Intercept;
use super::prepared_sql;
use super::query_scan;
use super::replay::keep_for_replay;
use super::session::{Session, SessionError};
use super::unnamed;
use super::wait::{Event, Wait, Wants};
use crate::config::PoolMode;
use crate::listen::PendingListens;
use crate::net::Stream;
use crate::pool::{PooledServer, SlowCheckout};
use crate::protocol::frame::{read_cstr_bytes, Step};
use crate::protocol::{backend, sqlstate, PgError};

/// Stop reading from a side while this much waits to be written to the other.
const HIGH_WATER: usize = 256 * 1024;

/// How a session ends when it ends early (a FATAL sent, the server lost).
/// Boxed: these rare paths await writes and a cancel's clean-up, and as
/// plain async fns their state would be part of every client's task, idle
/// or not (a task is as large as its largest state).
pub(super) type Ending<'a> = Pin<Box<dyn Future<Output = Result<(), SessionError>> + Send + 'a>>;

/// [`Session::finish_checkout`], boxed; `Some` ends the session.
type FinishingCheckout<'a> =
    Pin<Box<dyn Future<Output = Option<Result<(), SessionError>>> + Send + 'a>>;

/// Message types a client may send after login.
fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P'
            | b'B'
            | b'E'
            | b'D'
            | b'C'
            | b'H'
            | b'S'
            | b'F'
            | b'd'
            | b'c'
            | b'f'
            | b'X'
            | b'p'
    )
}

/// The SQL text of a Parse message's `body`, if it is well formed.
pub(super) fn parse_text(body: &[u8]) -> Option<&[u8]> {
    let p = super::prepared::parse_parse(body).ok()?;
    read_cstr_bytes(p.rest).ok().map(|(sql, _)| sql)
}

/// Appends `chunk` to `out` without copying when `out` is empty.
pub(super) fn append(out: &mut BytesMut, chunk: BytesMut) {
    if chunk.is_empty() {
        return;
    }
    if out.is_empty() {
        *out = chunk;
    } else {
        out.unsplit(chunk);
    }
}

/// A reply pgharbor gives in the server's place. A LISTEN/UNLISTEN answered
/// this way joins the transaction's pending ones.
pub(super) fn synthesize(out: &mut BytesMut, pending: &mut PendingListens, s: Synthesized) {
    if let Some(local) = s.local {
        out.extend_from_slice(&local.bytes);
        if let Some(cmd) = local.listen {
            pending.push(cmd);
        }
        return;
    }
    match s.reply {
        Reply::ParseComplete => backend::parse_complete(out),
        Reply::CloseComplete => backend::close_complete(out),
        // Other replies are synthesized only with their bytes (`local`).
        Reply::BindComplete
        | Reply::Describe
        | Reply::Execute
        | Reply::Ready
        | Reply::Statement => {}
    }
}

/// Reads what is available without blocking. `Ok(false)`: end of stream.
pub(super) fn try_fill(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<bool> {
    if buf.capacity() == 0 {
        *buf = buffers::take();
    } else if buf.capacity() - buf.len() < READ_CHUNK / 2 {
        buf.reserve(READ_CHUNK);
    }
    stream.try_read_available(buf)
}

/// Writes as much as the connection takes now.
fn try_flush(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<()> {
    stream.try_write_available(buf)?;
    if buf.is_empty() {
        // Give the memory back while the client is idle.
        buffers::give_back(buf);
    }
    Ok(())
}

impl Session {
    fn at_safe_point(&self) -> bool {
        match self.mode {
            PoolMode::Transaction if self.pinned.is_some() => self.txn.is_idle(),
            PoolMode::Transaction => self.server.is_none(),
            PoolMode::Session => self.txn.is_idle(),
        }
    }

    /// Runs until the client leaves, breaks the protocol, or shutdown.
    pub async fn relay(&mut self) -> Result<(), SessionError> {
        // One future for the whole session: building (and dropping) a
        // cancellation future on every turn of the loop takes the token's
        // lock each time.
        let shutdown = self.state.shutdown.cancelled_owned();
        tokio::pin!(shutdown);
        self.flush_client()?;
        // One timer for the session's idle timeouts, made when first needed
        // and moved at each turn, rather than one per turn.
        let mut idle_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let mut shutdown_armed = false;
        loop {
            let replay_armed = self.replay.as_ref().is_some_and(|r| r.armed);
            let reading = !replay_armed && !self.shape_wait;
            if !self.cbuf.is_empty() && self.to_server.len() < HIGH_WATER && reading {
                if let Some(end) = self.process_client_input().await? {
                    return end;
                }
            }
            let server = self.server.as_ref().map(|p| &p.server.stream);
            let server_unsent = server.is_some_and(Stream::has_unsent);
            let want_client_read = self.to_server.len() < HIGH_WATER && !replay_armed;
            let want_server_read = self.to_client.len() < HIGH_WATER;
            let safe = self.at_safe_point();
            let idle_timeout = self.arm_idle_timer(&mut idle_timer);
            let wants = Wants {
                client_write: !self.to_client.is_empty() || self.client.has_unsent(),
                server_read: want_server_read,
                server_write: !self.to_server.is_empty() || server_unsent,
                client_read: want_client_read,
                shutdown: safe,
                notify: self.listen.is_some()
                    && self.sscan.at_boundary()
                    && !self.pending_listens.holds_delivery()
                    && self.to_client.len() < HIGH_WATER,
                idle_timeout,
            };
            let ev = Wait {
                wants,
                client: &self.client,
                server,
                listen: self.listen.as_deref(),
                shutdown: shutdown.as_mut(),
                shutdown_armed: &mut shutdown_armed,
                idle_timer: idle_timer.as_mut().map(|t| t.as_mut()),
                listen_wait: None,
                cancelled: &self.state.shutdown,
            }
            .await?;
            match ev {
                Event::Shutdown => {
                    let e = PgError::fatal(
                        sqlstate::ADMIN_SHUTDOWN,
                        "pgharbor is shutting down; reconnect to another instance",
                    );
                    return self.send_fatal(e).await;
                }
                Event::IdleTimeout => {
                    let e = if self.server.is_none() {
                        PgError::fatal(
                            sqlstate::IDLE_SESSION_TIMEOUT,
                            "pgharbor: closing idle client connection (client_idle_timeout)",
                        )
                    } else {
                        PgError::fatal(
                            sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
                            "pgharbor: terminating connection due to idle-in-transaction timeout (idle_transaction_timeout)",
                        )
                    };
                    return self.send_fatal(e).await;
                }
                Event::ClientWritable => self.flush_client()?,
                Event::Notify => {
                    let fatal = match self.listen.as_mut() {
                        Some(sub) => {
                            sub.drain_into(&mut self.to_client);
                            sub.take_fatal()
                        }
                        None => None,
                    };
                    if let Some(e) = fatal {
                        return self.send_fatal(e).await;
                    }
                    self.flush_client()?;
                }
                Event::ServerWritable => self.flush_server()?,
                Event::ClientReadable => {
                    let n_before = self.cbuf.len();
                    let open = try_fill(&mut self.client, &mut self.cbuf)
                        .map_err(SessionError::ClientIo)?;
                    if !open {
                        return Ok(());
                    }
                    let n = self.cbuf.len() - n_before;
                    if n > 0 {
                        self.pool.stats.bytes_received.inc_by(n as u64);
                    }
                }
                Event::ServerReadable => {
                    if let Some(end) = self.on_server_readable().await {
                        return end;
                    }
                }
            }
        }
    }

    /// Sets the idle timer for this turn's wait, if a timeout applies
    /// (`client_idle_timeout` with no server held, `idle_transaction_timeout`
    /// inside a transaction with nothing in flight). Read from the pool's
    /// settings at each turn rather than kept: what the relay keeps across
    /// its wait is part of every idle client's task.
    fn arm_idle_timer(&self, timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) -> bool {
        let settings = self.pool.settings();
        let timeout = if self.server.is_none() {
            settings.client_idle_timeout
        } else if self.txn.pending == 0 && (self.txn.status == b'T' || self.txn.status == b'E') {
            settings.idle_transaction_timeout
        } else {
            return false;
        };
        if timeout.is_zero() {
            return false;
        }
        let at = tokio::time::Instant::now() + timeout;
        match timer.as_mut() {
            Some(t) => t.as_mut().reset(at),
            None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
        }
        true
    }

    fn flush_server(&mut self) -> Result<(), SessionError> {
        if let Some(p) = self.server.as_mut() {
            if let Err(e) = try_flush(&mut p.server.stream, &mut self.to_server) {
                return Err(SessionError::ServerLost(Box::new(e.into())));
            }
        }
        Ok(())
    }

    pub(super) fn flush_client(&mut self) -> Result<(), SessionError> {
        let before = self.to_client.len();
        let r = try_flush(&mut self.client, &mut self.to_client).map_err(SessionError::ClientIo);
        let sent = before - self.to_client.len();
        if sent > 0 {
            self.pool.stats.bytes_sent.inc_by(sent as u64);
        }
        r
    }

    /// Sends a FATAL error and ends the session.
    pub(super) fn send_fatal(&mut self, e: PgError) -> Ending<'_> {
        Box::pin(async move {
            e.encode(&mut self.to_client);
            let _ = super::startup::send(&mut self.client, &self.to_client).await;
            self.to_client.clear();
            Err(SessionError::Refused(Box::new(e)))
        })
    }

    /// Decides on every complete client message in `cbuf`. Returns
    /// `Some(result)` when the session must end.
    async fn process_client_input(
        &mut self,
    ) -> Result<Option<Result<(), SessionError>>, SessionError> {
        // Bytes at the front of cbuf already decided on, to be forwarded.
        let mut ready = 0usize;
        let tx = self.mode == PoolMode::Transaction;
        loop {
            let no_server = self.server.is_none();
            let (skipping, local_portals) = match self.local.as_deref() {
                Some(l) => (l.skip_to_sync, l.has_portals()),
                None => (false, false),
            };
            // A Bind or Describe needs a look only to find a name it must
            // rewrite or answer here: with no named statement and no
            // LISTEN statement, it passes as sent (drivers that use only
            // the unnamed statement: pgbench -M extended, libpq's
            // PQexecParams).
            // Nor when the client's unnamed statement was parsed on the
            // server it holds (see `unnamed.rs`).
            let names = !self.statements.is_empty() || self.local.is_some() || !self.unnamed.here;
            // Sync and Flush are answered here when no server is held, and
            // Execute when it may name a LISTEN portal.
            // In session mode a Query is read whole too, only for the
            // DROP DATABASE retry (`replay.rs`).
            let inspect = |t: u8| {
                t == b'X'
                    || (!tx && t == b'Q')
                    || (tx
                        && (matches!(t, b'P' | b'C' | b'Q')
                            || (names && matches!(t, b'B' | b'D'))
                            || (t == b'S' && (no_server || skipping))
                            || (t == b'H' && no_server)
                            || (t == b'E' && local_portals)))
            };
            let step = self
                .cscan
                .step(&self.cbuf[ready..], self.max_message, inspect);
            let mut step = match step {
                Ok(s) => s,
                Err(e) => {
                    return Ok(Some(self.send_fatal(PgError::protocol_violation(e)).await));
                }
            };
            if skipping {
                // After an error pgharbor gave itself: as Postgres, ignore
                // everything up to Sync. Nothing is waiting in `ready`.
                match step {
                    Step::Incomplete => break,
                    Step::Whole {
                        tag: b'S' | b'X', ..
                    } => {
                        if let Some(l) = self.local.as_deref_mut() {
                            l.skip_to_sync = false;
                        }
                    }
                    Step::Whole { len, .. } | Step::Pass { len, .. } => {
                        let _ = self.cbuf.split_to(len);
                        continue;
                    }
                }
            }
            // A Query's or Parse's text is looked at once, for both LISTEN
            // and session state; `true` until looked at.
            let mut text_may_hold_state = true;
            // The cheap test of `prepared_sql` on that text: it may hold a
            // DEALLOCATE, DISCARD ALL or EXECUTE.
            let mut names_statements = false;
            // A Query mixing LISTEN/UNLISTEN with other statements, as the
            // server runs it.
            let mut mixed = None;
            // LISTEN and session state matter in transaction mode only.
            if let (true, Step::Whole { tag: b'Q', len }) = (tx, step) {
                let body = &self.cbuf[ready + 5..ready + len];
                let sql = match read_cstr_bytes(body) {
                    Ok((sql, _)) => sql,
                    Err(e) => {
                        return Ok(Some(self.send_fatal(PgError::protocol_violation(e)).await))
                    }
                };
                // A simple Query destroys the unnamed statement, here and
                // on the server (answered here or not).
                self.unnamed.destroyed();
                let scan = query_scan::scan(sql, true);
                text_may_hold_state = scan.session_state;
                names_statements = scan.names_statements;
                // A LISTEN in a text that is not UTF-8 goes to the server.
                if let Some(sql) = scan
                    .listen
                    .then(|| std::str::from_utf8(sql).ok().map(str::to_owned))
                    .flatten()
                {
                    if ready > 0 {
                        // Answer only after what came before is answered.
                        break;
                    }
                    // What went before must reach the server before waiting.
                    self.flush_server()?;
                    match Box::pin(self.intercept_listen(sql)).await {
                        Intercept::Handled => {
                            let _ = self.cbuf.split_to(len);
                            continue;
                        }
                        Intercept::Wait => break,
                        Intercept::Forward => {}
                        Intercept::Rewrite(m) => {
                            let cmds: Vec<_> = m.commands().cloned().collect();
                            Box::pin(self.hear_before_commit(&m.text, &cmds)).await;
                            let len = self.rewrite_mixed_query(len, &m);
                            step = Step::Whole { tag: b'Q', len };
                            mixed = Some(m);
                        }
                    }
                } else if !self.pending_listens.is_empty() {
                    // LISTENs wait for their COMMIT, which this may be.
                    if let Ok(sql) = std::str::from_utf8(sql).map(str::to_owned) {
                        self.forward_ready(ready);
                        ready = 0;
                        self.flush_server()?;
                        Box::pin(self.hear_before_commit(&sql, &[])).await;
                    }
                }
                // pgharbor's answer to a lone DEALLOCATE or DISCARD ALL.
                if names_statements && mixed.is_none() {
                    let sql = &self.cbuf[ready + 5..ready + len - 1];
                    if let Ok(sql) = std::str::from_utf8(sql).map(str::to_owned) {
                        if ready > 0 {
                            break;
                        }
                        match self.intercept_statement_sql(&sql) {
                            Intercept::Handled => {
                                let _ = self.cbuf.split_to(len);
                                continue;
                            }
                            Intercept::Wait => break,
                            // Only LISTEN texts are rewritten.
                            Intercept::Forward | Intercept::Rewrite(_) => {}
                        }
                    }
                }
            }
            match step {
                Step::Incomplete => break,
                Step::Whole { tag: b'X', .. } => {
                    self.forward_ready(ready);
                    self.flush_server()?;
                    // Terminate: the client is done. The server stays ours
                    // and is cleaned up by `finish`.
                    return Ok(Some(Ok(())));
                }
                // With no server held nothing waits in `ready`: every message
                // passed on unread takes a server first.
                Step::Whole { tag: b'S', len } if no_server => {
                    let _ = self.cbuf.split_to(len);
                    Box::pin(self.answer_sync_locally()).await;
                }
                Step::Whole { tag: b'H', len } if no_server => {
                    let _ = self.cbuf.split_to(len);
                    self.flush_client()?;
                }
                Step::Whole { tag, len } => {
                    // A message transaction mode rewrites (named statements).
                    if no_server && tag == b'P' && ready == 0 && self.answer_prepare_locally() {
                        continue;
                    }
                    if tx && matches!(tag, b'P' | b'B' | b'D' | b'E' | b'C') {
                        let body = &self.cbuf[ready + 5..ready + len];
                        let mut may_listen = true;
                        if tag == b'P' {
                            if let Some(sql) = parse_text(body) {
                                let scan = query_scan::scan(sql, true);
                                may_listen = scan.listen;
                                text_may_hold_state = scan.session_state;
                                names_statements = prepared_sql::statement_may_name(sql);
                            }
                        }
                        let mut action = self.classify_local(tag, body, may_listen);
                        if let LocalAction::NotLocal = action {
                            // Not when the server skips the message anyway.
                            if !self.unnamed.here
                                && !self.unnamed.exists
                                && !self.expect.server_skipping()
                                && unnamed::names_unnamed_statement(tag, body)
                            {
                                action = LocalAction::Fail(unnamed::missing_unnamed_statement());
                            }
                        }
                        if let LocalAction::NotLocal = action {
                            if let Some(l) = self.local.as_deref_mut() {
                                l.forget_shadowed(tag, &self.cbuf[ready + 5..ready + len]);
                            }
                        } else {
                            self.forward_ready(ready);
                            ready = 0;
                            let _ = self.cbuf.split_to(len);
                            self.answer_local(action);
                            continue;
                        }
                    }
                    if let Some(slow) = self.ensure_server() {
                        if let Some(end) = slow.await {
                            return Ok(Some(end));
                        }
                    }
                    if tx || tag == b'Q' {
                        let idle = self.txn.is_idle();
                        let msg = &self.cbuf[ready..ready + len];
                        keep_for_replay(&mut self.replay, idle, Some(tag), msg);
                    }
                    if tx && matches!(tag, b'Q' | b'P') {
                        self.note_notifies(tag, ready, len);
                    }
                    self.note_client_message(tag);
                    let forwarded = if !tx {
                        // Session mode: the Query passes as sent.
                        Ok(Forwarded::AsSent)
                    } else if tag == b'Q' {
                        // A Query mixing LISTEN with other statements is
                        // not also rewritten for statement names (a rare
                        // pair): the replies its LISTENs get are queued
                        // before its ReadyForQuery.
                        let names = names_statements && mixed.is_none();
                        if let Some(m) = mixed.take() {
                            self.expect_statements(*m);
                        }
                        Ok(self.forward_query(ready, len, text_may_hold_state, names))
                    } else {
                        self.rewrite_extended(
                            tag,
                            ready,
                            len,
                            text_may_hold_state,
                            names_statements,
                        )
                    };
                    match forwarded {
                        Ok(Forwarded::AsSent) => ready += len,
                        Ok(Forwarded::Rewritten) => ready = 0,
                        Ok(Forwarded::Held) => {
                            ready = 0;
                            break;
                        }
                        Err(e) => {
                            return Ok(Some(self.send_fatal(PgError::protocol_violation(e)).await))
                        }
                    }
                }
                Step::Pass { tag: None, len } => {
                    if tx && self.replay.is_some() {
                        let bytes = &self.cbuf[ready..ready + len];
                        keep_for_replay(&mut self.replay, false, None, bytes);
                    }
                    ready += len
                }
                Step::Pass {
                    tag: Some(tag),
                    len,
                } => {
                    if !is_frontend_tag(tag) {
                        let e = PgError::fatal(
                            sqlstate::PROTOCOL_VIOLATION,
                            format!("invalid frontend message type {}", tag),
                        );
                        return Ok(Some(self.send_fatal(e).await));
                    }
                    if self.server.is_none() {
                        self.forward_ready(ready);
                        ready = 0;
                        if let Some(slow) = self.ensure_server() {
                            if let Some(end) = slow.await {
                                return Ok(Some(end));
                            }
                        }
                    }
                    if tx {
                        let idle = self.txn.is_idle();
                        let bytes = &self.cbuf[ready..ready + len];
                        keep_for_replay(&mut self.replay, idle, Some(tag), bytes);
                    }
                    let owed = self.note_client_message(tag);
                    if tx && owed {
                        match tag {
                            b'B' => self.expect.push(Reply::BindComplete, Action::Forward, None),
                            b'D' => self.expect.push(Reply::Describe, Action::Forward, None),
                            b'E' => self.expect.push(Reply::Execute, Action::Forward, None),
                            b'S' | b'Q' | b'F' => {
                                self.expect.push(Reply::Ready, Action::Forward, None)
                            }
                            _ => {}
                        }
                    }
                    ready += len;
                }
            }
        }
        self.forward_ready(ready);
        self.flush_server()?;
        if self.cbuf.is_empty() {
            // After the flush: what was forwarded from it is gone, so its
            // memory can be kept for the next read.
            buffers::give_back(&mut self.cbuf);
        }
        Ok(None)
    }

    /// Borrows a server if the client has none and one is free now;
    /// otherwise the rest of the checkout to await, whose `Some` ends the
    /// session. A plain function with the rest boxed: the awaiting
    /// caller's future, part of every client task, then holds a pointer
    /// rather than the checkout's state (awaited in place, at the two
    /// places that take a server, it made every client's task 384 bytes
    /// larger: 1,192 against 808).
    fn ensure_server(&mut self) -> Option<FinishingCheckout<'_>> {
        if self.server.is_some() {
            return None;
        }
        // One clock reading for the checkout and the transaction's start.
        let now = Instant::now();
        match self.acquire_server_now(now) {
            Ok(()) => {
                self.txn.started.get_or_insert(now);
                None
            }
            Err(attempt) => Some(Box::pin(self.finish_checkout(now, attempt))),
        }
    }

    /// Finishes a checkout [`Session::ensure_server`] began at `now`;
    /// `Some` ends the session. The wait in line, the common case once
    /// clients outnumber servers, is awaited here, and the server it brings
    /// is taken at once when idle, fit and in sync. Connecting, health
    /// checks and settings are boxed apart, so that their state is not
    /// part of this future, boxed once per wait.
    async fn finish_checkout(
        &mut self,
        now: Instant,
        attempt: Result<PooledServer, SlowCheckout>,
    ) -> Option<Result<(), SessionError>> {
        let attempt = match attempt {
            Err(SlowCheckout::Wait(line)) => match line.await {
                Ok((permit, then)) => self.pool.lend_now(permit, then),
                Err(e) => {
                    let e = self.checkout_failed(e);
                    return Some(self.send_fatal(e).await);
                }
            },
            other => other,
        };
        let attempt = match attempt {
            Ok(pooled) => match self.take_if_in_sync(pooled) {
                Ok(()) => {
                    self.txn.started.get_or_insert(now);
                    return None;
                }
                Err(pooled) => Ok(pooled),
            },
            other => other,
        };
        Box::pin(self.checkout_slow_path(now, attempt)).await
    }

    async fn checkout_slow_path(
        &mut self,
        now: Instant,
        attempt: Result<PooledServer, SlowCheckout>,
    ) -> Option<Result<(), SessionError>> {
        match self.acquire_server_slow(attempt).await {
            Ok(()) => {
                self.txn.started.get_or_insert(now);
                None
            }
            Err(e) => Some(self.send_fatal(e).await),
        }
    }

    /// Moves `n` decided bytes from `cbuf` to the server's queue. Writing
    /// is left to the end of the read burst: a Parse/Bind/Execute/Sync
    /// batch leaves in one `send`, as the client sent it, not one per
    /// message pgharbor had to look at.
    pub(super) fn forward_ready(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let chunk = self.cbuf.split_to(n);
        append(&mut self.to_server, chunk);
    }

    /// Pinning bookkeeping for a client message about to be forwarded.
    /// `false`: a Sync or Flush the server will read as COPY data and
    /// ignore, which is owed no reply (see `copy.rs`).
    fn note_client_message(&mut self, tag: u8) -> bool {
        if self.txn.started.is_none() {
            self.txn.started = Some(Instant::now());
        }
        match tag {
            b'S' | b'H' if self.txn.copy_ignores() => return false,
            b'Q' => {
                self.txn.ready_sent(true);
                self.pool.stats.queries.inc();
            }
            b'S' | b'F' => self.txn.ready_sent(false),
            b'E' => {
                self.txn.unsynced = true;
                self.pool.stats.queries.inc();
            }
            b'P' | b'B' | b'D' | b'C' | b'H' => self.txn.unsynced = true,
            b'c' | b'f' => self.txn.copy_end_sent(),
            _ => {}
        }
        true
    }
}
