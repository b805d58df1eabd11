//! Other replicas: which one owns a key, and passing a CancelRequest on to
//! it, or, when no replica is known to own it, to every replica found
//! through `peers_dns`. A request passed on is marked with [`PEER_MARK`]
//! and the receiver never passes a marked request on, so it makes at most
//! one hop.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use super::registry::CancelRegistry;
use super::{CancelOutcome, PEER_MARK, SECRET_LEN};
use crate::server::cancel::ForwardError;

/// The replicas this one passes cancels on to.
pub(super) struct Peers {
    /// `[[peers]]`: other replicas by the id their secrets carry.
    by_id: HashMap<u8, String>,
    /// `peers_dns`: the other replicas found at the last good lookup;
    /// `None` when `peers_dns` is off.
    resolved: Mutex<Option<Arc<[SocketAddr]>>>,
}

impl Peers {
    pub(super) fn new(by_id: HashMap<u8, String>) -> Peers {
        Peers {
            by_id,
            resolved: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<[SocketAddr]>>> {
        self.resolved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From now on, keys no replica is known to own are offered to the
    /// resolved set (empty until the first lookup answers).
    pub(super) fn enable_dns(&self) {
        self.lock().get_or_insert_with(|| Arc::from([]));
    }

    /// Replaces the resolved set; `true` when it changed.
    pub(super) fn set_resolved(&self, addrs: Vec<SocketAddr>) -> bool {
        let mut resolved = self.lock();
        let changed = resolved.as_deref() != Some(addrs.as_slice());
        *resolved = Some(Arc::from(addrs));
        changed
    }

    /// The replicas `peers_dns` resolved to, if it is on.
    pub(super) fn resolved(&self) -> Option<Arc<[SocketAddr]>> {
        self.lock().clone()
    }

    /// Whether the secrets we issue carry this replica's id.
    pub(super) fn ids_in_secrets(&self) -> bool {
        !self.by_id.is_empty()
    }

    /// The replica that issued a secret, by its top bits; `None` without
    /// peers (every key is this replica's).
    pub(super) fn owner(&self, secret: &[u8]) -> Option<u8> {
        if !self.ids_in_secrets() {
            return None;
        }
        secret.first().map(|b| b & 0x7f)
    }

    pub(super) fn addr(&self, id: u8) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }
}

/// `secret` with [`PEER_MARK`] appended.
pub(super) fn marked(secret: &[u8]) -> Vec<u8> {
    let mut marked = Vec::with_capacity(SECRET_LEN + PEER_MARK.len());
    marked.extend_from_slice(secret);
    marked.extend_from_slice(PEER_MARK);
    marked
}

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
    use crate::metrics::Metrics;
    use crate::server::cancel::tests::one_packet;
    use std::sync::Arc;
    use std::time::Duration;

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
    async fn a_key_nobody_owns_is_offered_to_every_resolved_peer_once() {
        let (p1, p2) = (
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        );
        let addrs = vec![p1.local_addr().unwrap(), p2.local_addr().unwrap()];
        let reg = Arc::new(CancelRegistry::new(
            1,
            HashMap::new(),
            Arc::new(Metrics::new()),
        ));
        let secret = 0x1234_5678i32.to_be_bytes();
        // Before the first lookup answers, nobody is asked.
        reg.peers.enable_dns();
        assert_eq!(reg.handle(77, &secret).await, CancelOutcome::UnknownKey);
        assert!(reg.peers.set_resolved(addrs.clone()));
        assert!(!reg.peers.set_resolved(addrs));
        let got = (tokio::spawn(one_packet(p1)), tokio::spawn(one_packet(p2)));
        assert_eq!(reg.handle(77, &secret).await, CancelOutcome::ToPeers);
        for packet in [got.0.await.unwrap(), got.1.await.unwrap()] {
            assert_eq!(&packet[4..8], &77i32.to_be_bytes());
            assert_eq!(&packet[8..12], &secret);
            assert_eq!(&packet[12..], PEER_MARK);
        }
        // A marked request is never offered again: handle returns only
        // after its offers were sent, so one would be waiting here.
        let p3 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        reg.peers.set_resolved(vec![p3.local_addr().unwrap()]);
        assert_eq!(
            reg.handle(77, &marked(&secret)).await,
            CancelOutcome::UnknownKey
        );
        let offered = tokio::time::timeout(Duration::from_millis(100), p3.accept()).await;
        assert!(offered.is_err(), "a marked request was passed on");
    }
}
