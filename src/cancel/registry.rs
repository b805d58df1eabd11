//! All live cancel keys of this instance: issuing them, and deciding where
//! a CancelRequest goes (the server a local client uses now, or a peer).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::Poll;

use subtle::ConstantTimeEq;
use tokio::net::ToSocketAddrs;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::peers::marked;
use super::peers::Peers;
use super::slot::{CancelHandle, CancelSlot, SlotTable};
use super::{CancelOutcome, FORWARD_TIMEOUT, PEER_MARK, SECRET_LEN};
use crate::id_map::IdMap;
use crate::metrics::Metrics;
use crate::server::cancel::{send_cancel, CancelTls, ForwardError};

/// Outgoing cancel connections (to servers and peers) open at once; more
/// wait for a turn (within [`FORWARD_TIMEOUT`]), so a flood of cancel
/// requests cannot turn into a flood of connections.
const MAX_FORWARDS: usize = 512;

/// All live cancel keys of this instance.
pub struct CancelRegistry {
    peer_id: u8,
    /// Next process id (low 24 bits); starts at a random point.
    next: AtomicU32,
    slots: Arc<SlotTable>,
    /// Other replicas.
    pub(super) peers: Peers,
    /// Bounds the outgoing cancel connections ([`MAX_FORWARDS`]).
    forwards: Semaphore,
    /// Where the process this one was handed over to by a binary upgrade
    /// listens: it holds the keys of the clients that left.
    successor: std::sync::OnceLock<std::net::SocketAddr>,
    metrics: Arc<Metrics>,
}

impl CancelRegistry {
    pub fn new(peer_id: u8, peers: HashMap<u8, String>, metrics: Arc<Metrics>) -> CancelRegistry {
        CancelRegistry {
            peer_id,
            next: AtomicU32::new(rand::random::<u32>() & 0x00ff_ffff),
            slots: Arc::new(SlotTable::new()),
            peers: Peers::new(peers),
            forwards: Semaphore::new(MAX_FORWARDS),
            successor: std::sync::OnceLock::new(),
            metrics,
        }
    }

    fn shard(&self, pid: i32) -> std::sync::MutexGuard<'_, IdMap<i32, Arc<CancelSlot>>> {
        self.slots.shard(pid)
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
            let slot = Arc::new(CancelSlot::new(pid, secret));
            match self.shard(pid).entry(pid) {
                Entry::Occupied(_) => continue,
                Entry::Vacant(v) => v.insert(slot.clone()),
            };
            return CancelHandle {
                slot,
                table: self.slots.clone(),
            };
        }
    }

    /// Registers a key another process issued: a client handed over by a
    /// binary upgrade keeps the key it was told. `None` when a client of
    /// this process already holds that pid.
    pub fn register_key(self: &Arc<Self>, pid: i32, secret: i32) -> Option<CancelHandle> {
        let slot = Arc::new(CancelSlot::new(pid, secret));
        match self.shard(pid).entry(pid) {
            Entry::Occupied(_) => return None,
            Entry::Vacant(v) => v.insert(slot.clone()),
        };
        Some(CancelHandle {
            slot,
            table: self.slots.clone(),
        })
    }

    /// From now on, cancels for keys this process does not hold go to the
    /// process at `addr`, which took its clients over.
    pub fn hand_over_to(&self, addr: std::net::SocketAddr) {
        let _ = self.successor.set(addr);
    }

    /// A positive random secret; with peers, its top 7 bits (below the sign
    /// bit) are this replica's `peer_id`.
    fn new_secret(&self) -> i32 {
        let random = (rand::random::<u32>() >> 1) as i32;
        if !self.peers.ids_in_secrets() {
            random
        } else {
            (i32::from(self.peer_id) << 24) | (random & 0x00ff_ffff)
        }
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
        let local = match self.peers.owner(secret) {
            Some(owner) if owner != self.peer_id => {
                if from_peer {
                    // A peer thinks we own this key, and we do not: the
                    // peer tables disagree on ids. Passing it on could
                    // loop, so stop here.
                    tracing::warn!(
                        pid,
                        owner,
                        peer_id = self.peer_id,
                        "a peer forwarded a cancel for a key this replica does not own; check proxy.peer_id and [[peers]] on every replica"
                    );
                    return CancelOutcome::UnknownKey;
                }
                if self.peers.addr(owner).is_some() {
                    return self.pass_to_owner(owner, pid, secret).await;
                }
                CancelOutcome::UnknownKey
            }
            _ => self.cancel_local(pid, secret).await,
        };
        let not_ours = matches!(local, CancelOutcome::UnknownKey | CancelOutcome::BadSecret);
        if from_peer || !not_ours {
            return local;
        }
        if let Some(&next) = self.successor.get() {
            return self.pass_to_successor(next, pid, secret).await;
        }
        self.offer_to_all(pid, secret, local).await
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
        match self.cancel_target_of(&slot).await {
            None => CancelOutcome::NoQuery,
            Some(_) => CancelOutcome::Forwarded,
        }
    }

    /// Cancels what `slot`'s client runs now on its server, the way a
    /// client's own CancelRequest does (counted in flight, so that
    /// `clear_target` waits for it). `None` when the client holds no
    /// server; `Some(Ok)` once the server confirmed; `Some(Err)` when the
    /// cancel was not sent, or sent and never confirmed (then the server
    /// is closed when given back).
    pub(crate) async fn cancel_target_of(
        &self,
        slot: &Arc<CancelSlot>,
    ) -> Option<Result<(), ForwardError>> {
        let (target, mut in_flight) = slot.begin_forward()?;
        let key = target.key;
        let secret = key.secret.to_be_bytes();
        let r = self
            .forward(key.addr, key.pid, &secret, target.tls.as_deref())
            .await;
        match &r {
            Ok(()) => in_flight.confirmed = true,
            Err(e @ ForwardError::NotSent(_)) => {
                in_flight.confirmed = true;
                tracing::warn!(server = %key.addr, error = %e, "cannot forward cancel to server");
            }
            Err(e @ ForwardError::Unconfirmed(_)) => {
                tracing::warn!(server = %key.addr, error = %e, "cancel to server not confirmed; the server will be closed, not reused");
            }
        }
        Some(r)
    }

    /// One outgoing cancel connection, waiting its turn among
    /// [`MAX_FORWARDS`].
    pub(super) async fn forward<A: ToSocketAddrs>(
        &self,
        addr: A,
        pid: i32,
        secret: &[u8],
        tls: Option<&CancelTls>,
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
        send_cancel(addr, pid, secret, tls, deadline).await
    }
}

/// Passing requests on to other replicas ([`Peers`]).
impl CancelRegistry {
    /// Passes a request for a key of replica `owner` on to it.
    pub(super) async fn pass_to_owner(&self, owner: u8, pid: i32, secret: &[u8]) -> CancelOutcome {
        let Some(addr) = self.peers.addr(owner) else {
            return CancelOutcome::UnknownKey;
        };
        if secret.len() != SECRET_LEN {
            return CancelOutcome::BadSecret;
        }
        match self.forward(addr, pid, &marked(secret), None).await {
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

    /// Passes a request for a key this process does not hold to the
    /// process it was handed over to by a binary upgrade, which holds the
    /// keys of the clients that left.
    pub(super) async fn pass_to_successor(
        &self,
        addr: std::net::SocketAddr,
        pid: i32,
        secret: &[u8],
    ) -> CancelOutcome {
        if secret.len() != SECRET_LEN {
            return CancelOutcome::BadSecret;
        }
        match self.forward(addr, pid, &marked(secret), None).await {
            Ok(()) | Err(ForwardError::Unconfirmed(_)) => CancelOutcome::Forwarded,
            Err(e @ ForwardError::NotSent(_)) => {
                tracing::warn!(%addr, error = %e, "cannot pass a cancel to the new process");
                CancelOutcome::UnknownKey
            }
        }
    }

    /// Offers a request for a key that is not ours, and whose owner we do
    /// not know, to every replica `peers_dns` found, at once: the one that
    /// issued the key cancels, the others find nothing. Returns `otherwise`
    /// when no peer could be asked.
    pub(super) async fn offer_to_all(
        &self,
        pid: i32,
        secret: &[u8],
        otherwise: CancelOutcome,
    ) -> CancelOutcome {
        let Some(addrs) = self.peers.resolved() else {
            return otherwise;
        };
        if addrs.is_empty() || secret.len() != SECRET_LEN {
            return otherwise;
        }
        let marked = marked(secret);
        let mut offers: Vec<Pin<Box<dyn Future<Output = bool> + Send + '_>>> = addrs
            .iter()
            .map(|addr| Box::pin(self.offer(*addr, pid, &marked)) as Pin<Box<_>>)
            .collect();
        let mut reached = false;
        std::future::poll_fn(|cx| {
            offers.retain_mut(|offer| match offer.as_mut().poll(cx) {
                Poll::Ready(sent) => {
                    reached |= sent;
                    false
                }
                Poll::Pending => true,
            });
            if offers.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        if reached {
            CancelOutcome::ToPeers
        } else {
            otherwise
        }
    }

    /// One peer's offer; `true` when the request may have reached it.
    async fn offer(&self, addr: SocketAddr, pid: i32, marked: &[u8]) -> bool {
        match self.forward(addr, pid, marked, None).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot offer cancel to peer");
                matches!(e, ForwardError::Unconfirmed(_))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::AfterCancels;
    use crate::server::cancel::tests::{one_packet, server_key};

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
            assert_eq!(reg.peers.owner(&h.slot.secret().to_be_bytes()), Some(9));
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
