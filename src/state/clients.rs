//! The clients connected to this instance, for SHOW CLIENTS and SHOW LISTS.
//!
//! A client is entered once after login and removed once when its session
//! ends (its [`ClientEntry`] is dropped); nothing here runs per query. Which
//! server a client holds is read at SHOW time from its cancel slot, which the
//! session keeps current anyway.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::cancel::CancelSlot;
use crate::id_map::IdMap;
use crate::pool::PoolKey;

const SHARDS: usize = 16;

/// One logged-in client.
pub struct ClientInfo {
    /// pgharbor's id for this client (shown as `ptr`).
    pub id: u64,
    pub addr: SocketAddr,
    /// Our end of the connection.
    pub local_addr: Option<SocketAddr>,
    /// Database and user, shared with the client's pool.
    pub names: Arc<PoolKey>,
    pub application_name: String,
    pub connect_time: SystemTime,
    /// TLS version and cipher suite; empty for plaintext.
    pub tls: String,
    /// The client's cancel key; its target is the server it holds now.
    pub slot: Arc<CancelSlot>,
}

/// Every logged-in client, sharded so logins on many cores do not contend.
pub struct ClientRegistry {
    next: AtomicU64,
    shards: Vec<Mutex<IdMap<u64, Arc<ClientInfo>>>>,
}

/// Removes its client from the registry when dropped (session end).
pub struct ClientEntry {
    id: u64,
    registry: Arc<ClientRegistry>,
}

impl Drop for ClientEntry {
    fn drop(&mut self) {
        self.registry.shard(self.id).remove(&self.id);
    }
}

impl ClientRegistry {
    #[allow(clippy::new_without_default)]
    pub fn new() -> ClientRegistry {
        ClientRegistry {
            next: AtomicU64::new(1),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    fn shard(&self, id: u64) -> std::sync::MutexGuard<'_, IdMap<u64, Arc<ClientInfo>>> {
        // Plain inserts and removes: a panic cannot leave a map half-done.
        self.shards[(id as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Lists a client until the returned entry is dropped.
    pub fn register(
        self: &Arc<Self>,
        application_name: &str,
        names: Arc<PoolKey>,
        addr: SocketAddr,
        local_addr: Option<SocketAddr>,
        tls: String,
        slot: &Arc<CancelSlot>,
    ) -> ClientEntry {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(ClientInfo {
            id,
            addr,
            local_addr,
            names,
            application_name: application_name.to_owned(),
            connect_time: SystemTime::now(),
            tls,
            slot: slot.clone(),
        });
        self.shard(id).insert(id, info);
        ClientEntry {
            id,
            registry: self.clone(),
        }
    }

    /// A snapshot of every client, sorted by id.
    pub fn snapshot(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<Arc<ClientInfo>> = Vec::new();
        for i in 0..SHARDS {
            v.extend(self.shard(i as u64).values().cloned());
        }
        v.sort_by_key(|c| c.id);
        v
    }

    pub fn len(&self) -> usize {
        (0..SHARDS).map(|i| self.shard(i as u64).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
