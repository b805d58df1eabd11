//! Server pools keyed by (database, user): checkout with a FIFO wait queue,
//! return, health checks and lifetimes.

mod hot;
mod inspect;
mod janitor;
mod limits;
mod params;
mod registry;
mod reload;
mod slots;
mod waiting;

pub use crate::server::listing::{ServerInfo, ServerState};
pub use hot::HotSettings;
pub use limits::{ClientCount, Limits};
pub use params::no_params;
pub use registry::Pools;
pub use reload::Retired;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::config::PoolDefaults;
use crate::metrics::PoolStats;
use crate::protocol::tag::TxStatus;
use crate::server::listing::ServerList;
use crate::server::{Server, ServerError, ServerTarget};
use slots::Slots;
pub(crate) use waiting::{InLine, Permit, WaitEvent};

/// Process-wide server ids, for logs and the admin console.
static NEXT_SERVER_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.database, self.user)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("pgharbor: no server connection within query_wait_timeout ({timeout:?}): pool {key} has {in_use} of {size} in use")]
    Timeout {
        key: PoolKey,
        timeout: Duration,
        in_use: usize,
        size: usize,
    },
    #[error("pgharbor: cannot open a server connection for pool {key}: {source}")]
    Connect { key: PoolKey, source: ServerError },
    #[error("pgharbor: pool {0} is shutting down")]
    Closed(PoolKey),
    #[error("pgharbor: {0}")]
    Retired(Retired),
}

/// One pool. Shared by every client of its (database, user) through an `Arc`.
pub struct Pool {
    /// Shared with the SHOW CLIENTS entries of the pool's clients.
    pub key: Arc<PoolKey>,
    /// Replaced by a RELOAD (see `reload.rs`): read where used, never kept.
    settings: ArcSwap<PoolDefaults>,
    /// The settings read on the way of every transaction, copied from
    /// `settings` at each store.
    hot: HotSettings,
    /// Where servers are opened; replaced by a RELOAD. A new host, port or
    /// database also moves the generation on, so servers to the old one
    /// close (idle ones at once, busy ones when given back).
    target: ArcSwap<ServerTarget>,
    /// Idle servers, most recently used last (reused first: warm caches).
    /// Boxed on purpose: servers move in and out of this list once per
    /// transaction (see [`PooledServer::server`]).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Server>>>,
    /// One permit per server a client may hold, and the clients waiting
    /// for one, in order (see `slots.rs`).
    slots: Mutex<Slots>,
    pub stats: PoolStats,
    /// Server parameters as a fresh server reports them: what clients with
    /// default settings are told at login.
    template: Mutex<Option<Arc<BTreeMap<String, String>>>>,
    /// Parameter maps of recently logged-in clients, and the startup
    /// settings that produced them (see `params.rs`).
    params: Mutex<params::ParamMaps>,
    /// Servers opened before the current generation are closed on return
    /// (RECONNECT, DROP DATABASE retries).
    generation: AtomicU64,
    closed: AtomicBool,
    /// Why the pool was closed by a RELOAD (its database or user is gone),
    /// told to its clients as they next ask for a server.
    retired: std::sync::OnceLock<Retired>,
    /// Set when a RELOAD shrank the pool below the servers it lends: each
    /// server given back then checks whether to close instead.
    shrinking: AtomicBool,
    /// Every open server, for the admin console (see `inspect`).
    servers: Arc<ServerList>,
    /// Tells the wait timer (see `waiting`) that a client began to wait
    /// while nobody else did.
    wait_timer: Arc<Notify>,
    /// `max_db_connections` / `max_user_connections`, shared with the
    /// other pools under them; set once, right after the pool is made
    /// (they list the pool, which needs its `Arc`). Unset: no limit.
    limits: std::sync::OnceLock<limits::PoolLimits>,
}

/// A server lent to a client, with the permit that bounds the pool. Dropping
/// it without [`PooledServer::release`] closes the server.
pub struct PooledServer {
    /// Boxed: a server changes hands (idle list, checkout, session, back)
    /// several times per transaction, and moving a pointer is cheaper than
    /// moving the whole struct each time.
    pub server: Box<Server>,
    generation: u64,
    /// Also the way to the pool.
    permit: Permit,
}

/// What the fast checkout leaves to the slow one.
pub(crate) enum SlowCheckout {
    /// No permit was free: the client's place in line.
    Wait(InLine),
    /// A permit, and the idle server found due for a health check, if
    /// any (none: a server is to be opened, unless one is idle by then).
    Permit(Permit, Option<Box<Server>>),
}

impl Pool {
    pub fn new(
        key: PoolKey,
        settings: PoolDefaults,
        target: ServerTarget,
        stats: PoolStats,
    ) -> Arc<Pool> {
        stats.pool_size.set(settings.pool_size as i64);
        let pool = Arc::new(Pool {
            key: Arc::new(key),
            slots: Mutex::new(Slots::new(settings.pool_size)),
            hot: HotSettings::of(&settings),
            settings: ArcSwap::from_pointee(settings),
            target: ArcSwap::from_pointee(target),
            idle: Mutex::new(Vec::new()),
            stats,
            template: Mutex::new(None),
            params: Mutex::default(),
            generation: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            retired: std::sync::OnceLock::new(),
            shrinking: AtomicBool::new(false),
            servers: Arc::default(),
            wait_timer: Arc::default(),
            limits: std::sync::OnceLock::new(),
        });
        janitor::spawn(&pool);
        waiting::spawn_timer(&pool);
        pool
    }

    #[allow(clippy::vec_box)]
    fn idle_list(&self) -> std::sync::MutexGuard<'_, Vec<Box<Server>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The pool behind `weak`, while it exists and is not closed: what the
    /// pool's background tasks check before each round.
    fn live(weak: &Weak<Pool>) -> Option<Arc<Pool>> {
        let pool = weak.upgrade()?;
        (!pool.closed.load(Ordering::Acquire)).then_some(pool)
    }

    /// The pool's current settings (`[pool]` with the database's
    /// overrides, as of the last RELOAD).
    pub fn settings(&self) -> arc_swap::Guard<Arc<PoolDefaults>> {
        self.settings.load()
    }

    /// The settings the relay reads at every turn and checkout.
    pub fn hot(&self) -> &HotSettings {
        &self.hot
    }

    /// Where and as whom the pool's servers connect, as of the last RELOAD.
    pub fn target(&self) -> Arc<ServerTarget> {
        self.target.load_full()
    }

    /// Servers currently lent to clients.
    pub fn in_use(&self) -> usize {
        self.slots().in_use()
    }

    pub fn idle_count(&self) -> usize {
        self.idle_list().len()
    }

    /// Borrows a server, waiting in line up to `query_wait_timeout`.
    ///
    /// The rare steps (waiting for a permit, a health check, opening a
    /// server with its login) are boxed: their futures are large (opening a
    /// server is ~800 bytes) and would otherwise be part of every client
    /// task, idle or not, since a task is as large as its largest state.
    pub async fn checkout(self: &Arc<Self>) -> Result<PooledServer, CheckoutError> {
        match self.checkout_now(Instant::now()) {
            Ok(pooled) => Ok(pooled),
            // Boxed: waiting, health checks and connecting are rare, and
            // this future is part of every client task's.
            Err(slow) => Box::pin(self.checkout_slow(slow)).await,
        }
    }

    /// The common case without awaiting: a free permit and an idle server
    /// that needs no check. Otherwise the client's place in line (listed as
    /// waiting since `now`), or the permit and the idle server due for a
    /// check, for [`Pool::checkout_slow`].
    pub(crate) fn checkout_now(
        self: &Arc<Self>,
        now: Instant,
    ) -> Result<PooledServer, SlowCheckout> {
        let permit = self.permit_or_line(now).map_err(SlowCheckout::Wait)?;
        self.stats.wait_seconds.observe(0.0);
        self.lend_now(permit, now)
    }

    /// With a permit: the most recently used idle server, if it needs no
    /// health check.
    pub(crate) fn lend_now(
        self: &Arc<Self>,
        permit: Permit,
        now: Instant,
    ) -> Result<PooledServer, SlowCheckout> {
        let generation = self.generation.load(Ordering::Acquire);
        match self.pop_reusable(generation, now) {
            Some(server) if !self.due_for_check(&server, now) => {
                Ok(self.lend(server, generation, permit))
            }
            server => Err(SlowCheckout::Permit(permit, server)),
        }
    }

    pub(crate) async fn checkout_slow(
        self: &Arc<Self>,
        slow: SlowCheckout,
    ) -> Result<PooledServer, CheckoutError> {
        let (permit, due, now) = match slow {
            SlowCheckout::Permit(p, due) => (p, due, Instant::now()),
            SlowCheckout::Wait(line) => {
                let (permit, now) = line.await?;
                (permit, None, now)
            }
        };
        let generation = self.generation.load(Ordering::Acquire);
        // After a wait, the server just given back is usually idle and fit:
        // lend it without the health check's and the login's states, which
        // are boxed below.
        let due = match due {
            Some(server) => server,
            None => match self.pop_reusable(generation, now) {
                Some(server) if !self.due_for_check(&server, now) => {
                    return Ok(self.lend(server, generation, permit));
                }
                Some(server) => server,
                None => return Box::pin(self.open_and_lend(generation, permit)).await,
            },
        };
        Box::pin(self.check_and_lend(due, generation, now, permit)).await
    }

    /// Health-checks `server` (and, if it fails, the next idle ones) and
    /// lends the first that passes, or opens a new server.
    async fn check_and_lend(
        self: &Arc<Self>,
        server: Box<Server>,
        generation: u64,
        now: Instant,
        permit: Permit,
    ) -> Result<PooledServer, CheckoutError> {
        let mut next = Some(server);
        while let Some(mut server) = next.take().or_else(|| self.pop_reusable(generation, now)) {
            if self.due_for_check(&server, now) {
                self.stats.servers_testing.inc();
                let ok = self.health_check(&mut server).await;
                self.stats.servers_testing.dec();
                if !ok {
                    continue;
                }
            }
            return Ok(self.lend(server, generation, permit));
        }
        self.open_and_lend(generation, permit).await
    }

    async fn open_and_lend(
        self: &Arc<Self>,
        generation: u64,
        permit: Permit,
    ) -> Result<PooledServer, CheckoutError> {
        let hold = match self.limits.get() {
            None => None,
            Some(limits) => match self.room_under(limits, generation).await? {
                Room::Idle(server) => return Ok(self.lend(server, generation, permit)),
                Room::Hold(hold) => Some(hold),
            },
        };
        let server = self.open_server(hold).await?;
        Ok(self.lend(server, generation, permit))
    }

    /// Room for one more server under the pool's connection limits, or an
    /// idle server of this pool that turned up meanwhile. Closes an idle
    /// server of another pool under a full limit, else waits for one to
    /// close or go idle, within `query_wait_timeout`.
    async fn room_under(
        &self,
        limits: &limits::PoolLimits,
        generation: u64,
    ) -> Result<Room, CheckoutError> {
        let deadline = tokio::time::Instant::now() + self.settings().query_wait_timeout;
        let _waiting = limits.wait();
        loop {
            // Registered before the checks, so a change between a check
            // and the wait still wakes us.
            let room = limits.room().notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let now = Instant::now();
            if let Some(server) = self.pop_reusable(generation, now) {
                if !self.due_for_check(&server, now) {
                    return Ok(Room::Idle(server));
                }
                // Unchecked for a while: closing it makes room for a new one.
                continue;
            }
            if let Some(hold) = limits.try_hold() {
                return Ok(Room::Hold(hold));
            }
            if let Some(server) = limits.take_an_idle_server(self) {
                let within = self.settings().server_connect_timeout;
                limits::close_and_wait(server, within).await;
                continue;
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(self.wait_timed_out());
            }
        }
    }

    /// The most recently used idle server fit to lend; the unfit ones met
    /// on the way (older generation, past their lifetime) are dropped.
    fn pop_reusable(&self, generation: u64, now: Instant) -> Option<Box<Server>> {
        loop {
            let mut server = self.idle_list().pop()?;
            self.stats.servers_idle.dec();
            if self.reusable(&mut server, generation, now) {
                return Some(server);
            }
        }
    }

    fn due_for_check(&self, server: &Server, now: Instant) -> bool {
        now.saturating_duration_since(server.last_used) >= self.hot.server_check_delay()
    }

    fn lend(
        self: &Arc<Self>,
        server: Box<Server>,
        generation: u64,
        permit: Permit,
    ) -> PooledServer {
        self.stats.servers_active.inc();
        PooledServer {
            server,
            generation,
            permit,
        }
    }

    /// Opens a new server connection (the caller holds a permit for it,
    /// and `hold`, its room under the connection limits, if any).
    async fn open_server(&self, hold: Option<limits::Hold>) -> Result<Box<Server>, CheckoutError> {
        self.stats.servers_login.inc();
        let id = NEXT_SERVER_ID.fetch_add(1, Ordering::Relaxed);
        let target = self.target();
        let result = Server::connect(&target, id).await;
        self.stats.servers_login.dec();
        match result {
            Ok(mut server) => {
                self.register_server(&mut server, hold);
                server.retire_at = server.created.checked_add(self.settings().server_lifetime);
                let mut t = self.template.lock().unwrap_or_else(|e| e.into_inner());
                if t.is_none() {
                    *t = Some(Arc::new(server.params.clone()));
                }
                tracing::debug!(pool = %self.key, server_id = id, pid = server.key.pid, "server connection opened");
                Ok(Box::new(server))
            }
            Err(source) => {
                self.stats.server_connect_errors.inc();
                tracing::warn!(pool = %self.key, error = %source, "cannot open server connection");
                Err(CheckoutError::Connect {
                    key: PoolKey::clone(&self.key),
                    source,
                })
            }
        }
    }

    fn reusable(&self, server: &mut Server, generation: u64, now: Instant) -> bool {
        !past_lifetime(server, now)
            && server.status == TxStatus::Idle
            && self.server_generation_ok(server, generation)
            && server.is_alive()
    }

    fn server_generation_ok(&self, _server: &Server, generation: u64) -> bool {
        generation == self.generation.load(Ordering::Acquire)
    }

    /// The cheapest round trip (an empty query), or `server_check_query`.
    async fn health_check(&self, server: &mut Server) -> bool {
        let settings = self.settings.load_full();
        let q = if settings.server_check_query.is_empty() {
            ";"
        } else {
            settings.server_check_query.as_str()
        };
        let timeout = settings.server_connect_timeout;
        matches!(
            tokio::time::timeout(timeout, server.simple_query(q)).await,
            Ok(Ok(()))
        ) && server.status == TxStatus::Idle
    }

    /// Server parameters for a login: from the first server ever opened, or
    /// by opening one now.
    pub async fn template_params(
        self: &Arc<Self>,
    ) -> Result<Arc<BTreeMap<String, String>>, CheckoutError> {
        if let Some(t) = self
            .template
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(t);
        }
        let server = self.checkout().await?;
        server.release(Instant::now());
        let t = self
            .template
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        t.ok_or_else(|| self.closed_error())
    }

    /// Keeps `server` for reuse, last used at `now`, unless it is unfit.
    fn put_idle(&self, mut server: Box<Server>, generation: u64, now: Instant) {
        if self.closed.load(Ordering::Acquire)
            || self.above_size()
            || self.limits.get().is_some_and(limits::PoolLimits::over)
            || generation != self.generation.load(Ordering::Acquire)
            || past_lifetime(&server, now)
            || server.status != TxStatus::Idle
            || !server.rbuf.is_empty()
        {
            return;
        }
        server.last_used = now;
        self.stats.servers_idle.inc();
        self.idle_list().push(server);
        if let Some(limits) = self.limits.get() {
            limits.server_idle();
        }
    }

    /// Closes idle servers now and makes servers in use close when
    /// returned. Returns how many idle servers were closed.
    pub fn reconnect(&self) -> usize {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.forget_settled();
        let drained: Vec<Box<Server>> = std::mem::take(&mut *self.idle_list());
        self.stats.servers_idle.sub(drained.len() as i64);
        drained.len()
    }

    /// Stops lending and drops idle servers (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.close_slots();
        self.reconnect();
    }
}

/// What a pool waiting under its connection limits got.
enum Room {
    Idle(Box<Server>),
    Hold(limits::Hold),
}

/// `server_lifetime` is over for `server` (every pool server is opened by
/// [`Pool::open_server`], which sets `retire_at`; a RELOAD's new lifetime
/// reaches it while it is idle, see `janitor.rs`).
fn past_lifetime(server: &Server, now: Instant) -> bool {
    server.retire_at.is_some_and(|t| now >= t)
}

impl PooledServer {
    /// Returns a clean server (status `I`, nothing unread) to the pool, last
    /// used at `now` (the caller's clock reading at the end of the
    /// transaction).
    pub fn release(self, now: Instant) {
        let PooledServer {
            server,
            generation,
            permit,
        } = self;
        let pool = &permit.pool;
        pool.stats.servers_active.dec();
        let mut server = server;
        // A login's notices are for that login only.
        server.sync_notices.clear();
        // Idle before the permit goes back: a client woken by it finds
        // this server.
        pool.put_idle(server, generation, now);
        drop(permit);
    }

    /// Closes the server instead of returning it.
    pub fn discard(self) {
        let pool = &self.permit.pool;
        pool.stats.servers_active.dec();
        tracing::debug!(pool = %pool.key, server_id = self.server.id, "server connection closed");
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.permit.pool
    }
}
