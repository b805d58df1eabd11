//! Cancel keys: issuing them, finding the server a key's client is using right
//! now, forwarding CancelRequests to it (or to the peer replica that owns the
//! key), and keeping a server out of the pool while a cancel for it is in
//! flight so that a cancel can never hit another client's query.
//!
//! # Why a cancel cannot reach the next borrower
//!
//! A client's slot names its server only while the client holds it
//! ([`CancelSlot::set_target`] on checkout, [`CancelSlot::clear_target`]
//! before the server goes back). A forward is counted in flight from the
//! moment it reads the target until the server's postmaster has *closed* the
//! cancel connection, and `clear_target` waits for that count to drop to 0.
//!
//! Is the close enough? Postgres handles a CancelRequest in the process
//! that accepted the cancel connection (a forked child up to PG 17, a
//! backend in PG 18): it looks the key up and calls `kill(pid, SIGINT)`
//! *before* it exits, and only its exit closes the socket. So when we read
//! EOF, the signal is already pending in the kernel on the target backend.
//! The handler runs at the backend's next return to user mode, which happens
//! no later than the `recv` that would read the next borrower's query (the
//! server goes back only at a ReadyForQuery with nothing more sent, so that
//! query must come through a fresh read). A cancel flag set while the backend
//! waits for a command is discarded: `ProcessInterrupts` ignores it while
//! `DoingCommandRead`, and PostgresMain runs `CHECK_FOR_INTERRUPTS()` once
//! more after `ReadCommand` returns, before clearing `DoingCommandRead`,
//! precisely so that a cancel that arrived while idle is dropped. So the
//! signal can end the cancelled client's own work or nothing.
//!
//! The close is the only confirmation we get. When it does not come (the
//! write failed half-way, or [`FORWARD_TIMEOUT`] passed with the postmaster
//! slow to fork), the signal may still land later; the slot is then marked
//! and `clear_target` tells the session to close that server instead of
//! returning it to the pool. A connect failure sent nothing and needs no such
//! care.
//!
//! # Peers
//!
//! With `[[peers]]`, the top 7 bits (below the sign bit) of every secret we
//! issue are this replica's `peer_id`: the secret, not the process id, since
//! a session-mode client is given its server's own process id. Process ids
//! we issue carry the `peer_id` in their top bits as well, which keeps them
//! apart from server pids (below 2^22 on Linux). A CancelRequest for another replica's key is passed to that
//! peer with a marker appended to the secret ([`PEER_MARK`]); a request
//! carrying the marker is always handled locally and never passed on, so a
//! cancel makes at most one hop, whatever the peer tables say (two replicas
//! with swapped or duplicate ids cannot bounce a request between them).
//!
//! # Protocol 3.2 and longer keys
//!
//! Postgres 18's protocol 3.2 allows cancel secrets of up to 256 bytes.
//! pgharbor speaks 3.0 on both sides: a client asking for 3.2 gets
//! NegotiateProtocolVersion(3.0) (see `client::startup`) and so expects the
//! 4-byte secret we issue in BackendKeyData, and server connections start
//! with protocol 3.0, so servers give us 4-byte keys too. A 31-bit CSPRNG
//! secret plus the per-instance process id is what Postgres itself offered
//! until 18. CancelRequests with longer secrets are parsed (up to 256 bytes)
//! but never match a key of ours, except for our own peer marker. Moving to
//! 3.2 means issuing longer secrets to clients that negotiate it and
//! storing variable-length server secrets in [`ServerKey`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::id_map::IdMap;
use crate::metrics::Metrics;
use crate::server::ServerKey;

const SHARDS: usize = 16;
const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// How long a forward may take (connect, send, wait for the close) before we
/// give up on it.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Outgoing cancel connections (to servers and peers) open at once; more
/// wait for a turn (within [`FORWARD_TIMEOUT`]), so a flood of cancel
/// requests cannot turn into a flood of connections.
const MAX_FORWARDS: usize = 512;
/// Appended to the secret of a CancelRequest passed to a peer: the peer
/// handles it itself and never passes it on. Protocol 3.2 allows secrets of
/// up to 256 bytes, so the packet stays a valid CancelRequest.
pub const PEER_MARK: &[u8] = b"pgharbor-peer-forward";
/// Length of the secrets we issue (protocol 3.0).
const SECRET_LEN: usize = 4;

/// One client's cancel slot. The session updates it when it borrows and
/// returns a server; cancel forwarders read it.
pub struct CancelSlot {
    /// The process id the client was given: one pgharbor issued, or in
    /// session mode its server's own ([`CancelHandle::adopt_pid`]). Set
    /// before the client learns it and not changed after.
    pid: AtomicI32,
    secret: i32,
    state: Mutex<SlotState>,
    /// Woken when the last in-flight forward ends (`clear_target` waits).
    forwards_done: Notify,
}

#[derive(Default)]
struct SlotState {
    /// The server running this client's work right now, if any.
    target: Option<ServerKey>,
    /// Cancels read from `target` and not yet delivered.
    in_flight: u32,
    /// A forward to `target` was sent but never confirmed: its signal may
    /// still arrive, so the server must not serve another client.
    unconfirmed: bool,
}

/// What the session may do with the server it is giving back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum AfterCancels {
    /// No cancel for this server can still arrive.
    Reusable,
    /// A cancel may still arrive: close the server.
    Close,
}

impl CancelSlot {
    /// The process id the client was given in BackendKeyData.
    pub fn pid(&self) -> i32 {
        self.pid.load(Ordering::Relaxed)
    }

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
        let mut s = self.lock();
        s.target = Some(key);
        s.unconfirmed = false;
    }

    /// The client is about to give its server back: no new cancel may pick
    /// it up, and any cancel already on its way must land first, so that it
    /// cannot reach the next borrower's query. Waits at most about
    /// [`FORWARD_TIMEOUT`] (the forwards' own bound).
    pub async fn clear_target(&self) -> AfterCancels {
        if let Some(after) = self.try_clear_target() {
            return after;
        }
        // Boxed: cancels in flight at the end of a transaction are rare,
        // and this future is part of every client task's.
        Box::pin(async {
            loop {
                // Registered before the count is read again, so the last
                // forward's notification cannot slip in between.
                let notified = self.forwards_done.notified();
                if let Some(after) = self.try_clear_target() {
                    return after;
                }
                notified.await;
            }
        })
        .await
    }

    /// Clears the target; `Some` unless cancels are still in flight.
    fn try_clear_target(&self) -> Option<AfterCancels> {
        let mut s = self.lock();
        s.target = None;
        if s.in_flight > 0 {
            return None;
        }
        Some(if std::mem::take(&mut s.unconfirmed) {
            AfterCancels::Close
        } else {
            AfterCancels::Reusable
        })
    }

    /// The target if a cancel may be sent now; the guard counts the cancel
    /// in flight until it is dropped.
    fn begin_forward(self: &Arc<Self>) -> Option<(ServerKey, InFlight)> {
        let mut s = self.lock();
        let t = s.target?;
        s.in_flight += 1;
        let guard = InFlight {
            slot: self.clone(),
            confirmed: false,
        };
        Some((t, guard))
    }
}

/// One forward in flight on a slot. Dropping it ends the forward, also when
/// the forwarding task is dropped half-way (then it counts as unconfirmed),
/// so `clear_target` can never wait forever.
struct InFlight {
    slot: Arc<CancelSlot>,
    /// The server closed the cancel connection: the signal was sent.
    confirmed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.slot.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if !self.confirmed {
            s.unconfirmed = true;
        }
        if s.in_flight == 0 {
            self.slot.forwards_done.notify_waiters();
        }
    }
}

/// Removes the slot from the registry when the client session ends.
pub struct CancelHandle {
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl CancelHandle {
    /// Gives the client `pid` instead of the one issued, if no other live
    /// client has it: in session mode a client's key carries its server's
    /// real process id, so `pg_backend_pid()`, `pg_terminate_backend` and
    /// the sender pid of a notification agree with BackendKeyData as they
    /// do on Postgres. Call before the client is told its key. `false`
    /// (the issued pid stays) when the pid is taken, e.g. by a session on
    /// another host whose backend has the same pid.
    pub fn adopt_pid(&self, pid: i32) -> bool {
        let old = self.slot.pid();
        if pid <= 0 || pid == old {
            return pid == old;
        }
        match self.registry.shard(pid).entry(pid) {
            Entry::Occupied(_) => return false,
            Entry::Vacant(v) => v.insert(self.slot.clone()),
        };
        self.slot.pid.store(pid, Ordering::Relaxed);
        self.registry.shard(old).remove(&old);
        true
    }
}

impl Drop for CancelHandle {
    fn drop(&mut self) {
        let pid = self.slot.pid();
        self.registry.shard(pid).remove(&pid);
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
    /// Next process id (low 24 bits); starts at a random point.
    next: AtomicU32,
    shards: Vec<Mutex<IdMap<i32, Arc<CancelSlot>>>>,
    /// Other replicas by peer id.
    peers: HashMap<u8, String>,
    /// Bounds the outgoing cancel connections ([`MAX_FORWARDS`]).
    forwards: Semaphore,
    metrics: Arc<Metrics>,
}

/// Where a forward went wrong, which decides whether its signal may still
/// arrive later.
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    /// Nothing was sent.
    #[error("not sent: {0}")]
    NotSent(std::io::Error),
    /// The request may have arrived, but the receiver never confirmed it by
    /// closing the connection.
    #[error("not confirmed: {0}")]
    Unconfirmed(std::io::Error),
}

impl CancelRegistry {
    pub fn new(peer_id: u8, peers: HashMap<u8, String>, metrics: Arc<Metrics>) -> CancelRegistry {
        CancelRegistry {
            peer_id,
            next: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            peers,
            forwards: Semaphore::new(MAX_FORWARDS),
            metrics,
        }
    }

    fn shard(&self, pid: i32) -> std::sync::MutexGuard<'_, IdMap<i32, Arc<CancelSlot>>> {
        self.shards[(pid as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Issues a new key: a positive process id, unique among live clients,
    /// whose top bits name this replica (so issued pids never equal a
    /// server's, which stay below 2^22, unless `peer_id` is 0), and a random
    /// positive secret (`rand::random` draws from a CSPRNG). With peers, the
    /// secret's top bits name this replica too: a session-mode client's key
    /// carries its server's pid ([`CancelHandle::adopt_pid`]), so only the
    /// secret can say which replica owns the key.
    pub fn register(self: &Arc<Self>) -> CancelHandle {
        loop {
            let n = self.next.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff;
            if n == 0 {
                continue;
            }
            let pid = (i32::from(self.peer_id) << 24) | n as i32;
            let secret = self.new_secret();
            if secret == 0 {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                pid: AtomicI32::new(pid),
                secret,
                state: Mutex::new(SlotState::default()),
                forwards_done: Notify::new(),
            });
            match self.shard(pid).entry(pid) {
                Entry::Occupied(_) => continue,
                Entry::Vacant(v) => v.insert(slot.clone()),
            };
            return CancelHandle {
                slot,
                registry: self.clone(),
            };
        }
    }

    /// A positive random secret; with peers, its top 7 bits (below the sign
    /// bit) are this replica's `peer_id`.
    fn new_secret(&self) -> i32 {
        let random = (rand::random::<u32>() >> 1) as i32;
        if self.peers.is_empty() {
            random
        } else {
            (i32::from(self.peer_id) << 24) | (random & 0x00ff_ffff)
        }
    }

    /// The replica that issued a secret, by its top bits; `None` without
    /// peers (every key is this replica's).
    fn owner(&self, secret: &[u8]) -> Option<u8> {
        if self.peers.is_empty() {
            return None;
        }
        secret.first().map(|b| b & 0x7f)
    }

    /// Handles a CancelRequest from any connection. Returns once the
    /// request was delivered (the receiver closed the forward connection)
    /// or given up on, so the caller can close the requester's connection
    /// only then, as Postgres does.
    pub async fn handle(&self, pid: i32, secret: &[u8]) -> CancelOutcome {
        let outcome = self.route(pid, secret).await;
        self.metrics
            .cancel_requests
            .with_label_values(&[outcome.label()])
            .inc();
        outcome
    }

    async fn route(&self, pid: i32, secret: &[u8]) -> CancelOutcome {
        let (secret, from_peer) = match secret.strip_suffix(PEER_MARK) {
            Some(s) => (s, true),
            None => (secret, false),
        };
        let owner = match self.owner(secret) {
            Some(owner) if owner != self.peer_id => owner,
            _ => return self.cancel_local(pid, secret).await,
        };
        if from_peer {
            // A peer thinks we own this key, and we do not: the peer tables
            // disagree on ids. Passing it on could loop, so stop here.
            tracing::warn!(
                pid,
                owner,
                peer_id = self.peer_id,
                "a peer forwarded a cancel for a key this replica does not own; check proxy.peer_id and [[peers]] on every replica"
            );
            return CancelOutcome::UnknownKey;
        }
        let Some(addr) = self.peers.get(&owner) else {
            return CancelOutcome::UnknownKey;
        };
        if secret.len() != SECRET_LEN {
            return CancelOutcome::BadSecret;
        }
        let mut marked = Vec::with_capacity(SECRET_LEN + PEER_MARK.len());
        marked.extend_from_slice(secret);
        marked.extend_from_slice(PEER_MARK);
        match self.forward(addr.as_str(), pid, &marked).await {
            Ok(()) => CancelOutcome::Forwarded,
            Err(e) => {
                tracing::warn!(peer = owner, %addr, error = %e, "cannot forward cancel to peer");
                match e {
                    // The owner could not be asked: as if the key were unknown.
                    ForwardError::NotSent(_) => CancelOutcome::UnknownKey,
                    ForwardError::Unconfirmed(_) => CancelOutcome::Forwarded,
                }
            }
        }
    }

    async fn cancel_local(&self, pid: i32, secret: &[u8]) -> CancelOutcome {
        let slot = self.shard(pid).get(&pid).cloned();
        let Some(slot) = slot else {
            return CancelOutcome::UnknownKey;
        };
        let expected = slot.secret.to_be_bytes();
        if secret.len() != SECRET_LEN || !bool::from(expected.ct_eq(secret)) {
            return CancelOutcome::BadSecret;
        }
        let Some((target, mut in_flight)) = slot.begin_forward() else {
            return CancelOutcome::NoQuery;
        };
        match self
            .forward(target.addr, target.pid, &target.secret.to_be_bytes())
            .await
        {
            Ok(()) => in_flight.confirmed = true,
            Err(e @ ForwardError::NotSent(_)) => {
                in_flight.confirmed = true;
                tracing::warn!(server = %target.addr, error = %e, "cannot forward cancel to server");
            }
            Err(e @ ForwardError::Unconfirmed(_)) => {
                tracing::warn!(server = %target.addr, error = %e, "cancel to server not confirmed; the server will be closed, not reused");
            }
        }
        CancelOutcome::Forwarded
    }

    /// One outgoing cancel connection, waiting its turn among
    /// [`MAX_FORWARDS`].
    async fn forward<A: ToSocketAddrs>(
        &self,
        addr: A,
        pid: i32,
        secret: &[u8],
    ) -> Result<(), ForwardError> {
        let deadline = Instant::now() + FORWARD_TIMEOUT;
        let _permit = match tokio::time::timeout_at(deadline, self.forwards.acquire()).await {
            Ok(Ok(p)) => p,
            _ => {
                return Err(ForwardError::NotSent(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "too many cancel forwards in flight",
                )))
            }
        };
        send_cancel(addr, pid, secret, deadline).await
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

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "cancel forward timed out")
}

/// Sends a CancelRequest to `addr` (a server or a peer) and waits until the
/// receiver closes the connection, which Postgres does only after it has
/// signalled the backend, and a peer only after its own forward is done.
async fn send_cancel<A: ToSocketAddrs>(
    addr: A,
    pid: i32,
    secret: &[u8],
    deadline: Instant,
) -> Result<(), ForwardError> {
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| ForwardError::NotSent(timed_out()))?
        .map_err(ForwardError::NotSent)?;
    let _ = stream.set_nodelay(true);
    let confirm = async {
        stream.write_all(&cancel_packet(pid, secret)).await?;
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout_at(deadline, confirm)
        .await
        .map_err(|_| ForwardError::Unconfirmed(timed_out()))?
        .map_err(ForwardError::Unconfirmed)
}

/// Cancels whatever `key`'s backend is running (used when a client vanished
/// mid-query; the server is closed afterwards, so an unconfirmed cancel is
/// harmless).
pub async fn cancel_server(key: ServerKey) {
    let deadline = Instant::now() + FORWARD_TIMEOUT;
    if let Err(e) = send_cancel(key.addr, key.pid, &key.secret.to_be_bytes(), deadline).await {
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
            assert!(h.slot.pid() > 0 && h.slot.secret() > 0);
            assert_eq!(h.slot.pid() >> 24, 5);
            assert!(pids.insert(h.slot.pid()));
        }
    }

    #[tokio::test]
    async fn with_peers_the_secret_names_the_replica() {
        let reg = Arc::new(CancelRegistry::new(
            9,
            HashMap::from([(2, "127.0.0.1:9".to_string())]),
            Arc::new(Metrics::new()),
        ));
        for _ in 0..1000 {
            let h = reg.register();
            assert!(h.slot.secret() > 0);
            assert_eq!(h.slot.secret() >> 24, 9);
            assert_eq!(reg.owner(&h.slot.secret().to_be_bytes()), Some(9));
        }
    }

    #[tokio::test]
    async fn a_client_can_take_its_servers_pid_unless_another_has_it() {
        let reg = Arc::new(CancelRegistry::new(
            1,
            HashMap::new(),
            Arc::new(Metrics::new()),
        ));
        let a = reg.register();
        let b = reg.register();
        let issued = a.slot.pid();
        let right = a.slot.secret().to_be_bytes();
        assert!(a.adopt_pid(31_337));
        assert_eq!(a.slot.pid(), 31_337);
        // Found under the new pid only.
        assert_eq!(reg.handle(31_337, &right).await, CancelOutcome::NoQuery);
        assert_eq!(reg.handle(issued, &right).await, CancelOutcome::UnknownKey);
        // Taken: the other client keeps its own.
        let b_pid = b.slot.pid();
        assert!(!b.adopt_pid(31_337));
        assert_eq!(b.slot.pid(), b_pid);
        assert!(!b.adopt_pid(0) && !b.adopt_pid(-5));
        drop(a);
        assert_eq!(reg.handle(31_337, &right).await, CancelOutcome::UnknownKey);
        assert!(b.adopt_pid(31_337));
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
            reg.handle(h.slot.pid(), &wrong).await,
            CancelOutcome::BadSecret
        );
        let right = h.slot.secret().to_be_bytes();
        assert_eq!(
            reg.handle(h.slot.pid(), &right).await,
            CancelOutcome::NoQuery
        );
        assert_eq!(
            reg.handle(h.slot.pid() + 1, &right).await,
            CancelOutcome::UnknownKey
        );
        let pid = h.slot.pid();
        drop(h);
        assert_eq!(reg.handle(pid, &right).await, CancelOutcome::UnknownKey);
    }

    fn server_key(addr: std::net::SocketAddr) -> ServerKey {
        ServerKey {
            addr,
            pid: 4242,
            secret: 77,
        }
    }

    /// Accepts one connection, returns the packet it carried, closes.
    async fn one_packet(listener: tokio::net::TcpListener) -> Vec<u8> {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).await.unwrap();
        let mut rest = vec![0u8; i32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut rest).await.unwrap();
        rest
    }

    #[tokio::test]
    async fn a_request_makes_at_most_one_peer_hop() {
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap().to_string();
        let a = Arc::new(CancelRegistry::new(
            1,
            HashMap::from([(2, peer_addr.clone())]),
            Arc::new(Metrics::new()),
        ));
        // Replica 2's key: its id in the secret's top bits; the pid may be
        // anything (a session-mode client carries its server's).
        let pid = 4242;
        let secret = (2i32 << 24) | 7;
        let got = tokio::spawn(one_packet(peer));
        assert_eq!(
            a.handle(pid, &secret.to_be_bytes()).await,
            CancelOutcome::Forwarded
        );
        let packet = got.await.unwrap();
        assert_eq!(&packet[4..8], &pid.to_be_bytes());
        assert_eq!(&packet[8..12], &secret.to_be_bytes());
        assert_eq!(&packet[12..], PEER_MARK);

        // A replica that receives a marked request for a key it does not
        // own (ids misconfigured) stops there, even with a peer for it.
        let b = Arc::new(CancelRegistry::new(
            3,
            HashMap::from([(2, peer_addr)]),
            Arc::new(Metrics::new()),
        ));
        let mut marked = secret.to_be_bytes().to_vec();
        marked.extend_from_slice(PEER_MARK);
        let t = std::time::Instant::now();
        assert_eq!(b.handle(pid, &marked).await, CancelOutcome::UnknownKey);
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn clear_target_waits_for_forwards_and_reports_unconfirmed_ones() {
        let reg = Arc::new(CancelRegistry::new(
            1,
            HashMap::new(),
            Arc::new(Metrics::new()),
        ));
        let h = reg.register();
        let addr = "127.0.0.1:9".parse().unwrap();
        h.slot.set_target(server_key(addr));
        assert_eq!(h.slot.clear_target().await, AfterCancels::Reusable);
        assert!(h.slot.begin_forward().is_none(), "no target once cleared");

        h.slot.set_target(server_key(addr));
        let (_, mut guard) = h.slot.begin_forward().unwrap();
        let slot = h.slot.clone();
        let waiter = tokio::spawn(async move { slot.clear_target().await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "must wait for the forward");
        guard.confirmed = true;
        drop(guard);
        assert_eq!(waiter.await.unwrap(), AfterCancels::Reusable);

        h.slot.set_target(server_key(addr));
        let (_, guard) = h.slot.begin_forward().unwrap();
        drop(guard); // dropped half-way: never confirmed
        assert_eq!(h.slot.clear_target().await, AfterCancels::Close);
        h.slot.set_target(server_key(addr));
        assert_eq!(h.slot.clear_target().await, AfterCancels::Reusable);
    }

    #[tokio::test]
    async fn a_confirmed_forward_carries_the_server_key() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = server.local_addr().unwrap();
        let reg = Arc::new(CancelRegistry::new(
            1,
            HashMap::new(),
            Arc::new(Metrics::new()),
        ));
        let h = reg.register();
        h.slot.set_target(server_key(addr));
        let got = tokio::spawn(one_packet(server));
        let right = h.slot.secret().to_be_bytes();
        assert_eq!(
            reg.handle(h.slot.pid(), &right).await,
            CancelOutcome::Forwarded
        );
        let packet = got.await.unwrap();
        assert_eq!(&packet[4..8], &4242i32.to_be_bytes());
        assert_eq!(&packet[8..], &77i32.to_be_bytes());
        assert_eq!(h.slot.clear_target().await, AfterCancels::Reusable);
    }
}
