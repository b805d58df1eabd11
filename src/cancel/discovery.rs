//! `[proxy] peers_dns`: the other replicas found by resolving one name (a
//! Kubernetes headless Service, which resolves to every pod's address), again
//! every `peers_dns_interval`, so an autoscaled fleet needs no per-replica
//! configuration. A failed lookup keeps the last good set.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::registry::CancelRegistry;

/// The longest one lookup may take before it counts as failed.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

impl CancelRegistry {
    /// Starts resolving `name` (`HOST:PORT`) now and every `every` until
    /// `stop` resolves or the registry is dropped. `me` is where this
    /// replica listens: its own address is left out of the set.
    pub fn discover_peers(
        self: &Arc<Self>,
        name: String,
        every: Duration,
        me: SocketAddr,
        stop: impl Future<Output = ()> + Send + 'static,
    ) {
        self.peers.enable_dns();
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::select! {
                _ = stop => {}
                _ = resolve_forever(registry, name, every, me) => {}
            }
        });
    }
}

async fn resolve_forever(
    registry: Weak<CancelRegistry>,
    name: String,
    every: Duration,
    me: SocketAddr,
) {
    loop {
        let found =
            tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host(name.as_str())).await;
        let Some(registry) = registry.upgrade() else {
            return;
        };
        match found {
            Ok(Ok(addrs)) => {
                let mut others: Vec<SocketAddr> = addrs.filter(|a| !is_me(*a, me)).collect();
                others.sort();
                others.dedup();
                if registry.peers.set_resolved(others.clone()) {
                    tracing::info!(%name, peers = ?others, "peers_dns: the set of peer replicas changed");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(%name, error = %e, "peers_dns: lookup failed; keeping the last peers found");
            }
            Err(_) => {
                tracing::warn!(%name, "peers_dns: lookup timed out; keeping the last peers found");
            }
        }
        drop(registry);
        tokio::time::sleep(every).await;
    }
}

/// Whether `addr` is this replica listening on `me`: the same address, or,
/// when we listen on every address (`0.0.0.0`, `::`), the same port on an
/// address of this host (one we can bind to).
fn is_me(addr: SocketAddr, me: SocketAddr) -> bool {
    if addr == me {
        return true;
    }
    addr.port() == me.port() && me.ip().is_unspecified() && is_local(addr.ip())
}

fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_leaves_itself_out() {
        let me: SocketAddr = "127.0.0.2:6432".parse().unwrap();
        assert!(is_me(me, me));
        assert!(!is_me("127.0.0.3:6432".parse().unwrap(), me));
        let any: SocketAddr = "0.0.0.0:6432".parse().unwrap();
        assert!(is_me("127.0.0.3:6432".parse().unwrap(), any));
        assert!(!is_me("127.0.0.3:6433".parse().unwrap(), any));
        // TEST-NET-1 is never an address of this host.
        assert!(!is_me("192.0.2.1:6432".parse().unwrap(), any));
    }
}
