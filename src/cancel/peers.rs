//! Other replicas: which one owns a key, and passing a CancelRequest on to
//! it, marked with [`PEER_MARK`] so that it makes at most one hop.

use std::collections::HashMap;

use super::registry::CancelRegistry;
use super::send::ForwardError;
use super::{CancelOutcome, PEER_MARK, SECRET_LEN};

/// The replicas this one passes cancels on to.
pub(super) struct Peers {
    /// `[[peers]]`: other replicas by the id their secrets carry.
    by_id: HashMap<u8, String>,
}

impl Peers {
    pub(super) fn new(by_id: HashMap<u8, String>) -> Peers {
        Peers { by_id }
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
        match self.forward(addr, pid, &marked(secret)).await {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cancel::send::tests::one_packet;
    use crate::metrics::Metrics;
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
}
