//! The open server connections of a pool, as the admin console lists them.
//!
//! The list is touched only when a server is opened (a [`ServerTicket`] is
//! issued, see `pool/inspect.rs`) and when it is closed (the ticket, which
//! lives inside the [`Server`](super::Server), is dropped with it) — never
//! per query or per checkout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ServerInfo>> {
        // Plain inserts and removes: a panic cannot leave the map half-done.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Keeps a server listed while it lives: stored in the
/// [`Server`](super::Server), it
/// removes the entry when the server is dropped, wherever that happens
/// (discard, idle timeout, lifetime, failed health check, RECONNECT).
pub struct ServerTicket {
    id: u64,
    list: Arc<ServerList>,
    /// What else the server holds while it lives (its room under the
    /// pool's connection limits), given back when it closes.
    _hold: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl ServerTicket {
    /// The ticket of server `id`, listed in `list`, holding `hold` until
    /// the server is dropped.
    pub(crate) fn new(
        id: u64,
        list: Arc<ServerList>,
        hold: Option<Box<dyn std::any::Any + Send + Sync>>,
    ) -> ServerTicket {
        ServerTicket {
            id,
            list,
            _hold: hold,
        }
    }
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
