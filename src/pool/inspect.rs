//! What the admin console sees of a pool: the server connections it has open.
//!
//! The list is touched only when a server is opened (a [`ServerTicket`] is
//! issued) and when it is closed (the ticket, which lives inside the
//! [`Server`], is dropped with it) — never per query or per checkout.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::Pool;
use crate::server::Server;

/// One open server connection, as registered when it was opened.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// pgharbor's id (process-wide), shown as `ptr`.
    pub id: u64,
    /// The backend's process id (`remote_pid`).
    pub pid: i32,
    /// The Postgres server's address.
    pub addr: SocketAddr,
    /// Our end of the connection.
    pub local_addr: Option<SocketAddr>,
    pub connect_time: SystemTime,
    /// TLS version and cipher suite; empty for plaintext.
    pub tls: String,
}

/// A server's state as the console reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Lent to a client.
    Active,
    /// In the pool's idle list.
    Idle,
}

impl ServerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Idle => "idle",
        }
    }
}

/// The open servers of one pool, by id.
#[derive(Debug, Default)]
pub struct ServerList {
    map: Mutex<HashMap<u64, ServerInfo>>,
}

impl ServerList {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ServerInfo>> {
        // Plain inserts and removes: a panic cannot leave the map half-done.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a server listed while it lives: stored in the [`Server`], it
/// removes the entry when the server is dropped, wherever that happens
/// (discard, idle timeout, lifetime, failed health check, RECONNECT).
pub struct ServerTicket {
    id: u64,
    list: Arc<ServerList>,
    /// The server's room under `max_db_connections` /
    /// `max_user_connections`, given back when it closes.
    _hold: Option<super::limits::Hold>,
}

impl Drop for ServerTicket {
    fn drop(&mut self) {
        self.list.lock().remove(&self.id);
    }
}

impl std::fmt::Debug for ServerTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTicket")
            .field("id", &self.id)
            .finish()
    }
}

impl Pool {
    /// Lists a freshly opened server until it is dropped.
    pub(super) fn register_server(&self, server: &mut Server, hold: Option<super::limits::Hold>) {
        let info = ServerInfo {
            id: server.id,
            pid: server.key.pid,
            addr: server.key.addr,
            local_addr: server.stream.local_addr().ok(),
            connect_time: SystemTime::now(),
            tls: server.stream.tls_description(),
        };
        self.servers.lock().insert(server.id, info);
        server.ticket = Some(ServerTicket {
            id: server.id,
            list: self.servers.clone(),
            _hold: hold,
        });
    }

    /// Every open server of this pool with its state, sorted by id.
    pub fn server_snapshot(&self) -> Vec<(ServerInfo, ServerState)> {
        let idle: HashSet<u64> = self.idle_list().iter().map(|s| s.id).collect();
        let mut v: Vec<_> = self
            .servers
            .lock()
            .values()
            .map(|info| {
                let state = if idle.contains(&info.id) {
                    ServerState::Idle
                } else {
                    ServerState::Active
                };
                (info.clone(), state)
            })
            .collect();
        v.sort_by_key(|(info, _)| info.id);
        v
    }

    /// Open servers (idle and lent), as listed.
    pub fn open_servers(&self) -> usize {
        self.servers.lock().len()
    }
}
