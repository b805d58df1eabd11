//! Limits shared by several pools, with PgBouncer 1.24's names:
//! `max_db_connections` and `max_user_connections` bound server connections
//! (of one database across its users, of one user across databases), and
//! `max_db_client_connections` / `max_user_client_connections` bound the
//! clients logged in.
//!
//! A server limit never fails a client: a pool that needs a server while
//! the limit is reached closes an idle server of another pool under the
//! same limit, or waits (within `query_wait_timeout`) until one is closed
//! or becomes idle. A client limit refuses the login with 53300 naming the
//! key.
//!
//! Every pool counts its servers under its database's and its user's limit
//! even while no maximum is set (an atomic add when a server opens, one
//! when it closes), so that a limit a RELOAD sets or lowers starts from the
//! true count: a lowered limit closes idle servers above it at once and
//! busy ones wait, as for a smaller `pool_size`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::{Pool, PoolKey};
use crate::config::PoolDefaults;
use crate::protocol::{sqlstate, PgError};
use crate::server::Server;

/// Counters of one database or one user.
#[derive(Default)]
struct Limit {
    /// The configured maximum; 0 = none (then nothing is counted).
    max: AtomicUsize,
    /// Server connections open, or clients logged in.
    count: AtomicUsize,
    /// Pools under this limit: where an idle server may be closed to make
    /// room for another pool's.
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl Limit {
    /// Counts one more unless that would pass the maximum.
    fn try_take(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }

    fn is_full(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        max != 0 && self.count.load(Ordering::Acquire) >= max
    }

    /// Servers counted beyond the maximum (after a RELOAD lowered it).
    fn excess(&self) -> usize {
        match self.max.load(Ordering::Relaxed) {
            0 => 0,
            max => self.count.load(Ordering::Acquire).saturating_sub(max),
        }
    }

    /// Takes one idle server of a pool under this limit other than
    /// `except`, to be closed.
    fn take_an_idle_server(&self, except: Option<&Pool>) -> Option<Box<Server>> {
        let pools: Vec<Arc<Pool>> = {
            let mut list = self.pools.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|p| p.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        let other = |p: &&Arc<Pool>| except.is_none_or(|e| !std::ptr::eq(p.as_ref(), e));
        for pool in pools.iter().filter(other) {
            let server = pool.idle_list().pop();
            if let Some(server) = server {
                pool.stats.servers_idle.dec();
                tracing::debug!(pool = %pool.key, server_id = server.id, "idle server closed to make room under a connection limit");
                return Some(server);
            }
        }
        None
    }
}

/// The limits of every database and user, shared by all pools.
#[derive(Default)]
pub struct Limits {
    databases: Mutex<HashMap<String, Arc<Limit>>>,
    users: Mutex<HashMap<String, Arc<Limit>>>,
    /// Woken when a server under any limit closes or goes idle, for pools
    /// waiting for room (rare: only while a limit is reached).
    room: Arc<Notify>,
    /// Pools waiting for room now; a returned server notifies only then.
    waiting: Arc<AtomicUsize>,
    /// Set while a RELOAD left more servers open than a lowered limit
    /// allows, so that a server given back checks its limits only then.
    lowered: Arc<AtomicBool>,
    /// Client counts, apart from the server ones.
    client_databases: Mutex<HashMap<String, Arc<Limit>>>,
    client_users: Mutex<HashMap<String, Arc<Limit>>>,
}

/// The (current) limit named `name` in `map`, its maximum set to `max`.
fn limit_of(map: &Mutex<HashMap<String, Arc<Limit>>>, name: &str, max: usize) -> Arc<Limit> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    let limit = map.entry(name.to_owned()).or_default().clone();
    limit.max.store(max, Ordering::Relaxed);
    limit
}

impl Limits {
    /// The server limits of a new pool; the pool is listed under them, so
    /// others may close its idle servers for room.
    pub(super) fn for_pool(&self, pool: &Arc<Pool>) -> PoolLimits {
        let s = pool.settings();
        let listed = |map, name: &str, max: usize| {
            let limit = limit_of(map, name, max);
            let mut pools = limit.pools.lock().unwrap_or_else(|e| e.into_inner());
            pools.push(Arc::downgrade(pool));
            drop(pools);
            limit
        };
        PoolLimits {
            database: listed(&self.databases, &pool.key.database, s.max_db_connections),
            user: listed(&self.users, &pool.key.user, s.max_user_connections),
            room: self.room.clone(),
            waiting: self.waiting.clone(),
            lowered: self.lowered.clone(),
        }
    }

    /// A RELOAD's `max_db_connections` and `max_user_connections` for the
    /// open pool `key`. Call [`Limits::settle`] once all pools are done.
    pub(super) fn apply(&self, key: &PoolKey, settings: &PoolDefaults) {
        limit_of(&self.databases, &key.database, settings.max_db_connections);
        limit_of(&self.users, &key.user, settings.max_user_connections);
    }

    /// After a RELOAD: closes idle servers above a lowered limit (busy
    /// ones are closed as they come back, see [`PoolLimits::over`]), and
    /// wakes pools waiting for room a raised limit may give them.
    pub(super) fn settle(&self) -> usize {
        let limits: Vec<Arc<Limit>> = [&self.databases, &self.users]
            .iter()
            .flat_map(|map| {
                let map = map.lock().unwrap_or_else(|e| e.into_inner());
                map.values().cloned().collect::<Vec<_>>()
            })
            .collect();
        let mut closed = 0;
        let mut still_over = false;
        for limit in limits {
            for _ in 0..limit.excess() {
                match limit.take_an_idle_server(None) {
                    // Dropping the server closes it and gives its room back.
                    Some(server) => drop(server),
                    None => break,
                }
                closed += 1;
            }
            still_over |= limit.excess() > 0;
        }
        self.lowered.store(still_over, Ordering::Release);
        self.room.notify_waiters();
        closed
    }

    /// Counts a client of `key` against the client limits of `settings`
    /// for as long as the returned value lives, or refuses it with 53300.
    pub fn admit_client(
        &self,
        key: &PoolKey,
        settings: &PoolDefaults,
    ) -> Result<Option<ClientCount>, PgError> {
        let checks = [
            (
                &self.client_databases,
                &key.database,
                settings.max_db_client_connections,
                "max_db_client_connections",
                "database",
            ),
            (
                &self.client_users,
                &key.user,
                settings.max_user_client_connections,
                "max_user_client_connections",
                "user",
            ),
        ];
        let mut held = Vec::new();
        for (map, name, max, setting, what) in checks {
            if max == 0 {
                continue;
            }
            let limit = limit_of(map, name, max);
            if !limit.try_take() {
                // `held` gives back what was counted so far as it drops.
                drop(ClientCount { held });
                return Err(PgError::fatal(
                    sqlstate::TOO_MANY_CONNECTIONS,
                    format!(
                        "pgharbor: too many client connections for {what} \"{name}\" ({setting} = {max})"
                    ),
                )
                .with_hint(format!(
                    "raise pool.{setting} or use fewer client connections"
                )));
            }
            held.push(limit);
        }
        Ok((!held.is_empty()).then_some(ClientCount { held }))
    }
}

/// A logged-in client, counted against its client limits until dropped.
pub struct ClientCount {
    held: Vec<Arc<Limit>>,
}

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.held.iter().for_each(|l| l.give_back());
    }
}

/// The server limits one pool is under.
pub(super) struct PoolLimits {
    database: Arc<Limit>,
    user: Arc<Limit>,
    room: Arc<Notify>,
    waiting: Arc<AtomicUsize>,
    lowered: Arc<AtomicBool>,
}

/// Room for one server under a pool's limits, kept by the server (in its
/// ticket) and given back when it closes.
pub(super) struct Hold {
    limits: [Arc<Limit>; 2],
    room: Arc<Notify>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.limits.iter().for_each(|l| l.give_back());
        self.room.notify_waiters();
    }
}

impl PoolLimits {
    fn limits(&self) -> [&Arc<Limit>; 2] {
        [&self.database, &self.user]
    }

    /// Room for one more server, if every limit has it.
    pub(super) fn try_hold(&self) -> Option<Hold> {
        if !self.database.try_take() {
            return None;
        }
        if !self.user.try_take() {
            self.database.give_back();
            return None;
        }
        Some(Hold {
            limits: [self.database.clone(), self.user.clone()],
            room: self.room.clone(),
        })
    }

    /// An idle server of another pool under a full limit, to be closed
    /// (with [`close_and_wait`]) to make room.
    pub(super) fn take_an_idle_server(&self, except: &Pool) -> Option<Box<Server>> {
        self.limits()
            .into_iter()
            .filter(|l| l.is_full())
            .find_map(|l| l.take_an_idle_server(Some(except)))
    }

    /// Whether a server given back now is to be closed because a RELOAD
    /// lowered a limit below the servers open under it.
    pub(super) fn over(&self) -> bool {
        self.lowered.load(Ordering::Acquire) && self.limits().into_iter().any(|l| l.excess() > 0)
    }

    /// A server went idle: pools waiting for room may take it.
    pub(super) fn server_idle(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Registers a waiter for room until the returned guard drops; the
    /// `Notify` to wait on is [`PoolLimits::room`].
    pub(super) fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting { limits: self }
    }

    pub(super) fn room(&self) -> &Notify {
        &self.room
    }
}

/// Ends `server` with a Terminate and waits (up to `within`) for Postgres
/// to close the connection, so that its session has left
/// `pg_stat_activity` before the room is given to a new server: the limit
/// holds as Postgres counts, not only as pgharbor does.
pub(super) async fn close_and_wait(mut server: Box<Server>, within: std::time::Duration) {
    use tokio::io::AsyncReadExt;
    let mut bye = bytes::BytesMut::new();
    postgres_protocol::message::frontend::terminate(&mut bye);
    let closed = async {
        server.send(&bye).await?;
        let mut sink = [0u8; 512];
        while server.stream.read(&mut sink).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(within, closed).await;
}

/// A pool waiting for room, counted while it lives.
pub(super) struct Waiting<'a> {
    limits: &'a PoolLimits,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.limits.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_either_limit_is_refused_naming_the_key_and_counts_nothing() {
        let limits = Limits::default();
        let settings = PoolDefaults {
            max_db_client_connections: 3,
            max_user_client_connections: 2,
            ..PoolDefaults::default()
        };
        let key = |db: &str, user: &str| PoolKey {
            database: db.into(),
            user: user.into(),
        };
        let a = limits.admit_client(&key("d", "u"), &settings).unwrap();
        let _b = limits.admit_client(&key("d", "u"), &settings).unwrap();
        let Err(e) = limits.admit_client(&key("d", "u"), &settings) else {
            panic!("a third client of user u was admitted");
        };
        assert_eq!(e.code, sqlstate::TOO_MANY_CONNECTIONS);
        assert!(
            e.message.contains("max_user_client_connections = 2"),
            "{}",
            e.message
        );
        let _c = limits.admit_client(&key("d", "v"), &settings).unwrap();
        let Err(e) = limits.admit_client(&key("d", "w"), &settings) else {
            panic!("a fourth client of database d was admitted");
        };
        assert!(
            e.message.contains("max_db_client_connections = 3"),
            "{}",
            e.message
        );
        drop(a);
        assert!(limits.admit_client(&key("d", "w"), &settings).is_ok());
    }
}
