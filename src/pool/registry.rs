//! Every pool of this instance, keyed by (database, user): created on
//! first use, paused and resumed by the admin console, closed at shutdown.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{Pool, PoolKey, Retired};
use crate::config::{Config, DatabaseConfig, Endpoint, PoolDefaults};
use crate::metrics::Metrics;
use crate::server::ServerTarget;
use crate::tls::ServerTls;
use crate::users::UserEntry;

/// What the admin console paused: pools created later start paused too.
#[derive(Debug, Default)]
struct Paused {
    all: bool,
    databases: std::collections::HashSet<String>,
}

/// Every pool of this instance.
pub struct Pools {
    /// Database name, then user name: looked up with the login's names as
    /// they are, without building a key.
    map: RwLock<HashMap<String, HashMap<String, Arc<Pool>>>>,
    metrics: Arc<Metrics>,
    paused: RwLock<Paused>,
    /// Connection limits of databases and users, across their pools.
    pub limits: super::Limits,
    /// Databases served by the `*` entry: their pools are dropped once
    /// nothing uses them (see [`Pools::all`]).
    fallbacks: RwLock<std::collections::HashSet<String>>,
}

impl Pools {
    pub fn new(metrics: Arc<Metrics>) -> Pools {
        Pools {
            map: RwLock::new(HashMap::new()),
            metrics,
            paused: RwLock::default(),
            limits: super::Limits::default(),
            fallbacks: RwLock::default(),
        }
    }

    /// PAUSE of every pool (`None`) or of one database's pools, including
    /// pools first opened while the pause lasts.
    pub fn pause(&self, database: Option<&str>) {
        {
            let mut p = self.paused.write().unwrap_or_else(|e| e.into_inner());
            match database {
                None => p.all = true,
                Some(db) => {
                    p.databases.insert(db.to_string());
                }
            }
        }
        self.matching(database).iter().for_each(|p| p.pause());
    }

    /// RESUME of every pool (`None`: ends every pause) or of one database.
    pub fn resume(&self, database: Option<&str>) {
        {
            let mut p = self.paused.write().unwrap_or_else(|e| e.into_inner());
            match database {
                None => *p = Paused::default(),
                Some(db) => {
                    p.databases.remove(db);
                }
            }
        }
        self.matching(database).iter().for_each(|p| p.resume());
    }

    fn matching(&self, database: Option<&str>) -> Vec<Arc<Pool>> {
        self.all()
            .into_iter()
            .filter(|p| database.is_none_or(|db| p.key.database == db))
            .collect()
    }

    /// The pool for (database, user), created on first use.
    pub fn get_or_create(
        &self,
        db: &DatabaseConfig,
        user: &UserEntry,
        defaults: &PoolDefaults,
        tls: &Arc<crate::tls::ServerTls>,
    ) -> Arc<Pool> {
        if let Some(p) = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&db.name)
            .and_then(|users| users.get(&user.config.name))
        {
            return p.clone();
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.entry(db.name.clone())
            .or_default()
            .entry(user.config.name.clone())
            .or_insert_with(|| {
                let key = PoolKey {
                    database: db.name.clone(),
                    user: user.config.name.clone(),
                };
                let settings = db.pool_settings(defaults);
                let target = ServerTarget::new(db, &settings, user, tls.clone());
                let stats = self.metrics.pool_stats(&key.database, &key.user);
                let paused = {
                    let p = self.paused.read().unwrap_or_else(|e| e.into_inner());
                    p.all || p.databases.contains(&key.database)
                };
                let pool = Pool::new(key, settings, target, stats);
                if db.fallback {
                    let mut f = self.fallbacks.write().unwrap_or_else(|e| e.into_inner());
                    f.insert(db.name.clone());
                }
                let _ = pool.limits.set(self.limits.for_pool(&pool));
                if paused {
                    pool.pause();
                }
                pool
            })
            .clone()
    }

    /// A snapshot of all pools, sorted by key. Pools of databases served by
    /// the `*` entry that nothing uses any more (no client, no server: the
    /// janitor closed the idle ones after `server_idle_timeout`) are closed
    /// and dropped first, so each listing shows only live ones.
    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.drop_unused_fallbacks();
        let mut v: Vec<_> = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .flat_map(|users| users.values().cloned())
            .collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Closes the idle servers of every pool whose servers may be connected
    /// to database `dbname` on one of `servers` (as RECONNECT does), so that
    /// `DROP DATABASE` does not find pgharbor's sessions in its way; servers
    /// in use close when they are returned. Returns how many were closed.
    pub fn close_idle_to(&self, servers: &[Endpoint], dbname: &str) -> usize {
        self.all()
            .iter()
            .filter(|p| {
                let t = p.target();
                t.dbname == dbname && t.shares_a_server_with(servers)
            })
            .map(|p| p.reconnect())
            .sum()
    }

    fn drop_unused_fallbacks(&self) {
        let fallbacks = self.fallbacks.read().unwrap_or_else(|e| e.into_inner());
        if fallbacks.is_empty() {
            return;
        }
        // Only the map holds an unused pool: clients and lent servers hold
        // it too, its background tasks only weakly.
        let unused = |p: &Arc<Pool>| Arc::strong_count(p) == 1 && p.open_servers() == 0;
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        for db in fallbacks.iter() {
            let Some(users) = map.get_mut(db) else {
                continue;
            };
            users.retain(|_, p| {
                let keep = !unused(p);
                if !keep {
                    p.close();
                    self.metrics.forget_pool(&p.key.database, &p.key.user);
                    tracing::debug!(pool = %p.key, "unused pool of a database served by \"*\" closed");
                }
                keep
            });
            if users.is_empty() {
                map.remove(db);
            }
        }
    }

    /// A RELOAD: every open pool takes its database's new settings and
    /// server target; pools whose database, or whose `[[users]]` entry
    /// (`old` had it, `config` has not), is gone are retired and forgotten,
    /// so a database added again later starts afresh. Returns the moves
    /// (old target, new target) of pools whose server changed.
    pub fn apply_config(
        &self,
        old: &Config,
        config: &Config,
        tls: &Arc<ServerTls>,
    ) -> Vec<(Arc<ServerTarget>, Arc<ServerTarget>)> {
        let mut moves = Vec::new();
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|db_name, users| {
            // A database served by the `*` entry stays while that entry does.
            let Some(db) = config.database_for(db_name) else {
                users
                    .values()
                    .for_each(|p| p.retire(Retired::DatabaseRemoved(db_name.clone())));
                return false;
            };
            let settings = db.pool_settings(&config.pool);
            users.retain(|user, pool| {
                if old.user(user).is_some() && config.user(user).is_none() {
                    pool.retire(Retired::UserRemoved(user.clone()));
                    return false;
                }
                let mut target = ServerTarget::clone(&pool.target());
                target.set_database(&db, &settings, tls);
                self.limits.apply(&pool.key, &settings);
                let applied = pool.apply(settings.clone(), target);
                if let Some(from) = applied.moved_from {
                    tracing::info!(pool = %pool.key, host = %db.host, "pool moved to a new server by RELOAD; servers to the old one close as they are given back");
                    moves.push((from, pool.target()));
                }
                true
            });
            !users.is_empty()
        });
        drop(map);
        let closed = self.limits.settle();
        if closed > 0 {
            tracing::info!(
                idle_closed = closed,
                "idle servers above a lowered connection limit closed by RELOAD"
            );
        }
        moves
    }

    pub fn close_all(&self) {
        for p in self.all() {
            p.close();
        }
    }
}
