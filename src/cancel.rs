//! Cancel keys: issuing them, finding the server a key's client is using right
//! now, forwarding CancelRequests to it (or to the peer replica that owns the
//! key), and keeping a server out of the pool while a cancel for it is in
//! flight so that a cancel can never hit another client's query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::metrics::Metrics;
use crate::server::ServerKey;

const SHARDS: usize = 16;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// How long a forward may take before we give up on it.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// One client's cancel slot. The session updates it when it borrows and
/// returns a server; cancel forwarders read it.
pub struct CancelSlot {
    pub pid: i32,
    secret: i32,
    state: Mutex<SlotState>,
    forwards_done: Notify,
}

#[derive(Default)]
struct SlotState {
    /// The server running this client's work right now, if any.
    target: Option<ServerKey>,
    /// Cancels read from `target` and not yet delivered.
    in_flight: u32,
}

impl CancelSlot {
    pub fn secret(&self) -> i32 {
        self.secret
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server running this client's work right now (admin console).
    pub fn target(&self) -> Option<ServerKey> {
        self.lock().target
    }

    /// The client now has work running on `key`.
    pub fn set_target(&self, key: ServerKey) {
        self.lock().target = Some(key);
    }

    /// The client is about to give its server back: no new cancel may pick
    /// it up, and any cancel already on its way must land first, so that it
    /// cannot reach the next borrower's query.
    pub async fn clear_target(&self) {
        loop {
            let notified = self.forwards_done.notified();
            {
                let mut s = self.lock();
                s.target = None;
                if s.in_flight == 0 {
                    return;
                }
            }
            notified.await;
        }
    }

    /// The target if a cancel may be sent now; counts the cancel in flight.
    fn begin_forward(&self) -> Option<ServerKey> {
        let mut s = self.lock();
        let t = s.target?;
        s.in_flight += 1;
        Some(t)
    }

    fn end_forward(&self) {
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            self.forwards_done.notify_waiters();
        }
    }
}

/// Removes the slot from the registry when the client session ends.
pub struct CancelHandle {
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        self.registry.shard(self.slot.pid).remove(&self.slot.pid);
    }
}

/// What became of a CancelRequest, for logs and the metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    Forwarded,
    NoQuery,
    UnknownKey,
    BadSecret,
}

impl CancelOutcome {
    pub fn label(self) -> &'static str {
        match self {
            CancelOutcome::Forwarded => "forwarded",
            CancelOutcome::NoQuery => "no_query",
            CancelOutcome::UnknownKey => "unknown_key",
            CancelOutcome::BadSecret => "bad_secret",
        }
    }
}

/// All live cancel keys of this instance.
pub struct CancelRegistry {
    peer_id: u8,
    next: AtomicU32,
    shards: Vec<Mutex<HashMap<i32, Arc<CancelSlot>>>>,
    /// Other replicas by peer id.
    peers: HashMap<u8, String>,
    metrics: Arc<Metrics>,
}

impl CancelRegistry {
    pub fn new(peer_id: u8, peers: HashMap<u8, String>, metrics: Arc<Metrics>) -> CancelRegistry {
        CancelRegistry {
            peer_id,
            next: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            peers,
            metrics,
        }
    }

    fn shard(&self, pid: i32) -> std::sync::MutexGuard<'_, HashMap<i32, Arc<CancelSlot>>> {
        self.shards[(pid as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Issues a new key: a positive process id whose top bits name this
    /// replica, unique among live clients, and a random positive secret.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            if n == 0 {
                continue;
            }
            let pid = (i32::from(self.peer_id) << 24) | n as i32;
            let secret = (rand::random::<u32>() & 0x7fff_ffff) as i32;
            let slot = Arc::new(CancelSlot {
                pid,
                secret,
                state: Mutex::new(SlotState::default()),
                forwards_done: Notify::new(),
            });
            let mut shard = self.shard(pid);
            if shard.contains_key(&pid) {
                continue;
            }
            shard.insert(pid, slot.clone());
            return CancelHandle {
                slot,
                registry: self.clone(),
            };
        }
    }

    /// Handles a CancelRequest from any connection.
    pub async fn handle(&self, pid: i32, secret: &[u8]) -> CancelOutcome {
        let owner = ((pid >> 24) & 0x7f) as u8;
        if owner != self.peer_id {
            if let Some(addr) = self.peers.get(&owner) {
                let outcome = match forward_raw(addr, pid, secret).await {
                    Ok(()) => CancelOutcome::Forwarded,
                    Err(e) => {
                        tracing::warn!(peer = owner, %addr, error = %e, "cannot forward cancel to peer");
                        CancelOutcome::UnknownKey
                    }
                };
                self.count(outcome);
                return outcome;
            }
        }
        let outcome = self.cancel_local(pid, secret).await;
        self.count(outcome);
        outcome
    }

    fn count(&self, outcome: CancelOutcome) {
        self.metrics
            .cancel_requests
            .with_label_values(&[outcome.label()])
            .inc();
    }

    async fn cancel_local(&self, pid: i32, secret: &[u8]) -> CancelOutcome {
        let slot = self.shard(pid).get(&pid).cloned();
        let Some(slot) = slot else {
            return CancelOutcome::UnknownKey;
        };
        let expected = slot.secret.to_be_bytes();
        if secret.len() != 4 || !bool::from(expected.ct_eq(secret)) {
            return CancelOutcome::BadSecret;
        }
        let Some(target) = slot.begin_forward() else {
            return CancelOutcome::NoQuery;
        };
        let result = forward_raw_addr(target.addr, target.pid, &target.secret.to_be_bytes()).await;
        slot.end_forward();
        if let Err(e) = result {
            tracing::warn!(server = %target.addr, error = %e, "cannot forward cancel to server");
        }
        CancelOutcome::Forwarded
    }
}

fn cancel_packet(pid: i32, secret: &[u8]) -> BytesMut {
    let mut b = BytesMut::with_capacity(12 + secret.len());
    b.put_i32(12 + secret.len() as i32);
    b.put_i32(CANCEL_REQUEST_CODE);
    b.put_i32(pid);
    b.put_slice(secret);
    b
}

/// Sends a CancelRequest and waits until the receiver closes the connection,
/// which Postgres does only after it has signalled the backend.
async fn send_cancel(mut stream: TcpStream, pid: i32, secret: &[u8]) -> std::io::Result<()> {
    stream.write_all(&cancel_packet(pid, secret)).await?;
    let mut sink = [0u8; 64];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

async fn forward_raw_addr(
    addr: std::net::SocketAddr,
    pid: i32,
    secret: &[u8],
) -> std::io::Result<()> {
    let work = async {
        let stream = TcpStream::connect(addr).await?;
        send_cancel(stream, pid, secret).await
    };
    tokio::time::timeout(FORWARD_TIMEOUT, work)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel forward timed out")
        })?
}

async fn forward_raw(addr: &str, pid: i32, secret: &[u8]) -> std::io::Result<()> {
    let work = async {
        let stream = TcpStream::connect(addr).await?;
        send_cancel(stream, pid, secret).await
    };
    tokio::time::timeout(FORWARD_TIMEOUT, work)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel forward timed out")
        })?
}

/// Cancels whatever `key`'s backend is running (used when a client vanished
/// mid-query).
pub async fn cancel_server(key: ServerKey) {
    if let Err(e) = forward_raw_addr(key.addr, key.pid, &key.secret.to_be_bytes()).await {
        tracing::debug!(server = %key.addr, error = %e, "cancel of abandoned query failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_positive_unique_and_carry_the_peer_id() {
        let reg = Arc::new(CancelRegistry::new(
            5,
            HashMap::new(),
            Arc::new(Metrics::new()),
        ));
        let handles: Vec<_> = (0..1000).map(|_| reg.register()).collect();
        let mut pids = std::collections::HashSet::new();
        for h in &handles {
            assert!(h.slot.pid > 0 && h.slot.secret() >= 0);
            assert_eq!(h.slot.pid >> 24, 5);
            assert!(pids.insert(h.slot.pid));
        }
    }

    #[tokio::test]
    async fn wrong_secret_and_idle_clients_send_nothing() {
        let reg = Arc::new(CancelRegistry::new(
            1,
            HashMap::new(),
            Arc::new(Metrics::new()),
        ));
        let h = reg.register();
        let wrong = (h.slot.secret() ^ 1).to_be_bytes();
        assert_eq!(
            reg.handle(h.slot.pid, &wrong).await,
            CancelOutcome::BadSecret
        );
        let right = h.slot.secret().to_be_bytes();
        assert_eq!(reg.handle(h.slot.pid, &right).await, CancelOutcome::NoQuery);
        assert_eq!(
            reg.handle(h.slot.pid + 1, &right).await,
            CancelOutcome::UnknownKey
        );
        let pid = h.slot.pid;
        drop(h);
        assert_eq!(reg.handle(pid, &right).await, CancelOutcome::UnknownKey);
    }
}
