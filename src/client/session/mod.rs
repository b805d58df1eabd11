//! The life of one client past its login: the session's state, the
//! server it holds, and the clean-up that guarantees no half-done
//! transaction is ever left on a server that goes back to the pool. How a
//! client gets here is in `accept.rs`; the relay loop in `relay.rs`.

pub(super) mod copy;
pub(super) mod deadlines;
pub(super) mod listen_extended;
pub(super) mod notify_portals;
pub(super) mod replay;
pub(super) mod temp_backstop;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::expect::Expectations;
use super::prepared::Statements;
use super::startup::StartupError;
use crate::cancel::{AfterCancels, CancelHandle};
use crate::config::PoolMode;
use crate::net::Stream;
use crate::pool::{Pool, PooledServer};
use crate::protocol::tag::TxStatus;
use crate::protocol::{FrameScanner, PgError, Side};
use crate::server::ServerError;
use crate::state::State;

/// How a session ends when it ends early (a FATAL sent, the server lost).
/// Boxed: these rare paths await writes and a cancel's clean-up, and as
/// plain async fns their state would be part of every client's task, idle
/// or not (a task is as large as its largest state).
pub(super) type Ending<'a> = Pin<Box<dyn Future<Output = Result<(), SessionError>> + Send + 'a>>;

/// Why a session ended. The large variants are boxed: the relay's result
/// is part of every client task's future, and idle clients should not pay
/// for the rare case.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Startup(Box<StartupError>),
    #[error("{0}")]
    Refused(Box<PgError>),
    #[error("client i/o error: {0}")]
    ClientIo(std::io::Error),
    #[error("client protocol error: {0}")]
    ClientProtocol(#[from] crate::protocol::ProtocolError),
    #[error("server connection lost: {0}")]
    ServerLost(Box<ServerError>),
}

impl SessionError {
    /// Who failed: the client (its connection, or the protocol), the
    /// server connection, or pgharbor, which refused or ended the session.
    pub fn side(&self) -> Side {
        match self {
            SessionError::Startup(e) => match &**e {
                StartupError::Refuse(e) => e.side(),
                _ => Side::Client,
            },
            SessionError::Refused(e) => e.side(),
            SessionError::ClientIo(_) | SessionError::ClientProtocol(_) => Side::Client,
            SessionError::ServerLost(_) => Side::Server,
        }
    }
}

impl From<StartupError> for SessionError {
    fn from(e: StartupError) -> Self {
        SessionError::Startup(Box::new(e))
    }
}

/// Where the client's current unit of work stands on its server.
#[derive(Debug, Default)]
pub(super) struct TxnState {
    /// Query, Sync and FunctionCall messages sent and not yet answered by
    /// ReadyForQuery.
    pub pending: u32,
    /// Extended-protocol messages sent since the last Sync: the server may
    /// hold an open implicit transaction, so it must stay with this client.
    pub unsynced: bool,
    /// The client is in COPY FROM STDIN: the server asked for its data and
    /// its CopyDone or CopyFail has not been sent yet (see `copy.rs`).
    pub copy_in: bool,
    /// The server reads COPY FROM STDIN data: from its CopyInResponse to
    /// the CommandComplete or ErrorResponse that ends the COPY.
    pub server_copy_in: bool,
    /// Bit `i`: the `i`-th of the `pending` messages is a Query (the others
    /// are Syncs and FunctionCalls), so a CopyInResponse tells whether the
    /// COPY's message is itself owed a ReadyForQuery.
    pub ready_queries: u32,
    /// CopyDone/CopyFail messages sent while no COPY was known to run: for
    /// each, how many of the `pending` messages were sent before it. Boxed:
    /// only clients that pipeline a COPY's data ever have one.
    pub copy_ends: Option<Box<copy::CopyEnds>>,
    /// Transaction status from the last ReadyForQuery.
    pub status: TxStatus,
    /// When the current unit of work began (for the duration histogram).
    pub started: Option<Instant>,
    /// The server sent an ErrorResponse since its last ReadyForQuery.
    pub failed: bool,
    /// A reply said CREATE, DO or CALL since the server was last checked:
    /// its temporary schema is looked at before it goes back to the pool
    /// (see `temp_backstop.rs`).
    pub temp_check: bool,
    /// Transaction mode with `session_state = "pin"`: why this client keeps
    /// its server until it disconnects.
    pub pinned: Option<String>,
    /// A FATAL from the server was forwarded; no second one is added.
    pub server_fatal_sent: bool,
    /// ReadyForQuery messages received, wrapping: a change tells the
    /// query deadline that the query it timed was answered
    /// (`deadlines.rs`).
    pub readies: u32,
}

impl TxnState {
    /// Nothing in flight and no transaction open: the server may go back.
    pub(super) fn is_idle(&self) -> bool {
        self.pending == 0 && !self.unsynced && !self.copy_in && !self.status.in_block()
    }
}

/// The client's connection as the relay drives it: what was read and not
/// yet decided on, what waits to be written each way, and where each
/// side's message stream stands. A message's way: read into `cbuf`,
/// decided on (`route.rs`), moved to `to_server` (`forward_ready`),
/// written; replies from the server's buffer to `to_client`, written.
pub(super) struct Io {
    /// Bytes read from the client, not yet decided on.
    pub cbuf: BytesMut,
    /// Client bytes decided on, waiting to be written to the server.
    pub to_server: BytesMut,
    /// Bytes waiting to be written to the client.
    pub to_client: BytesMut,
    /// Where the client's message stream stands (capped at
    /// `max_message`).
    pub cscan: FrameScanner,
    /// Where the server's message stream stands.
    pub sscan: FrameScanner,
    /// `proxy.max_message_size`: the largest message read whole.
    pub max_message: usize,
    /// Which sockets' read wakers the relay's wait left registered.
    pub armed: crate::net::ArmedReads,
}

impl Io {
    /// A client's buffers after login: `cbuf` holds what it sent after its
    /// startup packet, `to_client` what goes before its first reply.
    pub(super) fn new(cbuf: BytesMut, to_client: BytesMut, max_message: usize) -> Io {
        Io {
            cbuf,
            to_server: BytesMut::new(),
            to_client,
            cscan: FrameScanner::with_limit(max_message),
            sscan: FrameScanner::default(),
            max_message,
            armed: crate::net::ArmedReads::default(),
        }
    }

    /// Moves `n` decided bytes from `cbuf` to the server's queue. Writing
    /// is left to the end of the read burst: a Parse/Bind/Execute/Sync
    /// batch leaves in one `send`, as the client sent it, not one per
    /// message pgharbor had to look at.
    #[inline]
    pub(super) fn forward_ready(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let chunk = self.cbuf.split_to(n);
        super::buffers::append(&mut self.to_server, chunk);
    }
}

/// Transaction mode's bookkeeping of the extended protocol (see
/// docs/transaction-mode.md): the client's statements, the replies to
/// swallow or synthesize in order, a Bind held for a result shape, and the
/// Sync group kept for a retry.
#[derive(Default)]
pub(super) struct Extended {
    /// The client's named statements.
    pub statements: Statements,
    /// The client's unnamed statement.
    pub unnamed: super::unnamed::UnnamedStatement,
    /// A Bind waits in `cbuf` until the server says the result shape of the
    /// statement it names (see `rewrite` in `extended.rs`); the client's
    /// messages are not read meanwhile.
    pub shape_wait: bool,
    /// Replies to swallow or synthesize, in order.
    pub expect: Expectations,
    /// The Query in flight had the client's startup settings put after its
    /// RESET ALLs: where (in characters of the text sent, and how many), so
    /// an error's position is told in the client's text (`reset_all.rs`).
    pub reset_insertions: Option<Box<[(u32, u32)]>>,
    /// The current Sync group, kept for a retry after a lone DROP
    /// DATABASE (or CREATE DATABASE … TEMPLATE) failed with 55006.
    pub replay: Option<Box<replay::Replay>>,
}

/// LISTEN in transaction mode: the client's subscriptions, what its open
/// transaction issued, the LISTEN statements it prepared.
#[derive(Default)]
pub(super) struct Listening {
    /// This client's LISTEN subscriptions (created at its first LISTEN;
    /// dropping it unsubscribes). Boxed: most clients never listen, and
    /// unboxed it would add ~180 bytes to every client.
    pub listen: Option<Box<crate::listen::Subscriber>>,
    /// LISTEN/UNLISTEN issued inside the open transaction.
    pub pending_listens: crate::listen::PendingListens,
    /// LISTEN statements sent with the extended protocol (created at the
    /// first one).
    pub local: Option<Box<listen_extended::LocalStatements>>,
    /// Tag of the last CommandComplete, while LISTENs wait for COMMIT.
    pub last_command_tag: Option<String>,
    /// How many statements of the Query being sent the plan of its
    /// LISTENs already expects replies for (`reset_all.rs` goes on after).
    pub planned_statements: usize,
    /// The open transaction sent notifications the LISTEN hub keeps
    /// (`listen/senders.rs`): its end is told to the hub.
    pub notify_open: bool,
    /// The server this client holds was announced to the LISTEN hub.
    pub noted_sender: Option<crate::server::ServerKey>,
    /// Portals of statements that notify, with what each sends when it is
    /// executed (`notify_portals.rs`).
    pub notify_portals: notify_portals::NotifyPortals,
    /// The open transaction may have sent a NOTIFY while the client
    /// listens: at its end, what it notified is delivered before its
    /// ReadyForQuery, as on Postgres (`Subscriber::barrier`).
    pub notified: bool,
}

/// One logged-in client: who it is, the server it holds, and its state by
/// concern (buffers, the transaction and pinning, the extended protocol,
/// LISTEN).
pub(super) struct Session {
    pub client: Stream,
    pub mode: PoolMode,
    pub pool: Arc<Pool>,
    pub state: Arc<State>,
    /// The client's view of reported parameters (what it was told with
    /// ParameterStatus), synced onto every server it lands on.
    pub reported: Arc<BTreeMap<String, String>>,
    /// `reported` as it was at login: what a `DISCARD ALL` (or RESET)
    /// returns to.
    pub login_params: Arc<BTreeMap<String, String>>,
    /// Unreported settings from the startup packet (lower-case names).
    pub other: BTreeMap<String, String>,
    /// Session mode: the client's startup settings were applied on its
    /// server, whose RESET ALL would not return to them (`reset_all.rs`).
    pub own_startup: bool,
    pub cancel: CancelHandle,
    /// The server this client holds now, if any.
    pub server: Option<PooledServer>,
    pub io: Io,
    pub txn: TxnState,
    pub ext: Extended,
    pub listening: Listening,
    /// `query_timeout` / `transaction_timeout` bookkeeping, made at the
    /// first turn either is on (`timeouts.rs`).
    pub deadlines: Option<Box<deadlines::Deadlines>>,
}

impl Session {
    /// A client that passed authentication, before its login to `pool`.
    pub(super) fn new(
        client: Stream,
        pool: Arc<Pool>,
        state: Arc<State>,
        cancel: CancelHandle,
        io: Io,
    ) -> Session {
        Session {
            client,
            mode: pool.settings().pool_mode,
            pool,
            state,
            reported: crate::pool::no_params(),
            login_params: crate::pool::no_params(),
            other: BTreeMap::new(),
            own_startup: false,
            cancel,
            server: None,
            io,
            txn: TxnState::default(),
            ext: Extended::default(),
            listening: Listening::default(),
            deadlines: None,
        }
    }
}

impl Session {
    /// Gives the server back: to the pool if it is clean, closed otherwise.
    /// Tells the LISTEN hub this client no longer holds its server.
    pub(super) fn forget_sender(&mut self) {
        // What an open transaction sent there is dropped with it, and so
        // are its portals.
        self.listening.notify_open = false;
        self.listening.notify_portals.clear();
        if let Some(key) = self.listening.noted_sender.take() {
            self.state.listen().forget_server_pid(&key);
        }
    }

    /// `now`: the clock read at the end of the transaction, if it was.
    pub(super) async fn release_server(&mut self, now: Option<Instant>) {
        self.hand_back_server(now, true).await;
    }

    /// Gives the server back to the pool, or closes it when `reusable` is
    /// false or it is not at rest.
    pub(super) async fn hand_back_server(&mut self, now: Option<Instant>, reusable: bool) {
        if self.server.is_none() {
            return;
        }
        self.forget_sender();
        // Awaited while the server is still in `self.server`: kept out of
        // this future's state, which is part of every client task's.
        let cancels = self.cancel.slot.clear_target().await;
        let Some(pooled) = self.server.take() else {
            return;
        };
        // Before the client's next message is looked at: a Bind of its
        // unnamed statement must not pass unread to the next server.
        self.ext.unnamed.here = false;
        self.ext.shape_wait = false;
        self.pool.stats.clients_active.dec();
        self.pool.stats.clients_idle.inc();
        if reusable
            && cancels == AfterCancels::Reusable
            && self.txn.is_idle()
            && pooled.server.rbuf.is_empty()
            && self.io.sscan.at_boundary()
        {
            pooled.release(now.unwrap_or_else(Instant::now));
        } else {
            pooled.discard();
        }
        self.io.sscan = FrameScanner::default();
        self.ext.expect.clear();
    }

    /// Clean-up when the client is gone or the session ends: a server still
    /// held is rolled back (or closed), never committed, never reused dirty.
    pub(super) async fn finish(&mut self) {
        let Some(mut pooled) = self.server.take() else {
            return;
        };
        self.forget_sender();
        let cancels = self.cancel.slot.clear_target().await;
        self.pool.stats.clients_active.dec();
        self.pool.stats.clients_idle.inc();
        let timeout = self
            .pool
            .settings()
            .server_connect_timeout
            .max(Duration::from_secs(2));
        let clean_boundary = pooled.server.rbuf.is_empty() && self.io.sscan.at_boundary();
        let t = &self.txn;
        let mid_query = !clean_boundary || t.pending > 0 || t.unsynced || t.copy_in;
        if mid_query {
            // Mid-query (or mid-COPY, or an unsynced implicit transaction
            // that a Sync would commit): cancel what runs and close; the
            // backend rolls back as it exits.
            crate::cancel::cancel_server(pooled.server.cancel_target()).await;
        }
        let reusable = if mid_query || cancels == AfterCancels::Close {
            // Closed rather than reused: it is busy, or a cancel of ours
            // that was never confirmed may still land on it.
            false
        } else if t.status.in_block() {
            let r = tokio::time::timeout(timeout, pooled.server.simple_query("ROLLBACK")).await;
            matches!(r, Ok(Ok(()))) && pooled.server.status == TxStatus::Idle
        } else {
            true
        };
        let reusable = reusable && {
            let reset = &self.pool.settings().server_reset_query;
            // A client pinned or not yet checked may leave session state
            // (temporary objects) behind: reset, or closed without a reset.
            // A server whose temporary schema was used is closed: after a
            // reset its `pg_temp` still exists, which a new session's
            // errors about `pg_temp.x` would show.
            let dirty = self.txn.pinned.is_some() || self.txn.temp_check;
            if dirty && temp_backstop::temp_schema_used(&mut pooled.server, timeout).await {
                false
            } else if (self.mode == PoolMode::Session || dirty) && !reset.is_empty() {
                let r = tokio::time::timeout(timeout, pooled.server.simple_query(reset)).await;
                pooled.server.forget_applied();
                matches!(r, Ok(Ok(()))) && pooled.server.status == TxStatus::Idle
            } else {
                !dirty
            }
        };
        if reusable {
            pooled.release(Instant::now());
        } else {
            pooled.discard();
        }
    }
}
