//! What the admin console sees of a pool: the server connections it has open.
//!
//! The list is touched only when a server is opened (a [`ServerTicket`] is
//! issued) and when it is closed (the ticket, which lives inside the
//! [`Server`], is dropped with it) — never per query or per checkout.

use std::collections::HashSet;
use std::time::SystemTime;

use super::Pool;
use crate::server::listing::{ServerInfo, ServerState, ServerTicket};
use crate::server::Server;

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
        let hold = hold.map(|h| Box::new(h) as Box<dyn std::any::Any + Send + Sync>);
        server.ticket = Some(ServerTicket::new(server.id, self.servers.clone(), hold));
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
