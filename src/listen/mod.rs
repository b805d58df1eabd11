//! LISTEN multiplexing for transaction pooling.
//!
//! One [`ListenHub`] per instance. For each database target it keeps one
//! dedicated listener connection holding the union of the clients' channels
//! (LISTEN when a channel's first subscriber arrives, UNLISTEN when its last
//! one leaves). Each NotificationResponse is parsed once and shared (`Bytes`)
//! into the bounded queue of every subscribed client (`listen.client_buffer`);
//! see [`queue`] for the overflow policies. A lost listener connection is
//! re-established with backoff (100 ms doubling to 5 s), every channel is
//! listened again, and every subscriber gets an overflow marker per channel.
//!
//! The relay owns one [`Subscriber`] per client and answers LISTEN / UNLISTEN
//! itself ([`parse`]); [`PendingListens`] holds those issued inside a
//! transaction until COMMIT.

mod connection;
mod notify_scan;
mod pending;
mod queue;
mod senders;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::{Endpoint, ListenConfig};
use crate::metrics::Metrics;
use crate::protocol::{sqlstate, PgError};
use crate::server::{ServerKey, ServerTarget};
use crate::sql::listen::truncate_channel;

pub use crate::sql::listen::{
    may_commit, parse, parse_many, plan, ListenCommand, ListenParseError, MixedQuery, QueryListens,
};
pub use connection::APPLICATION_NAME;
pub use notify_scan::{
    may_notify, notify_targets, statement_notifies, NotifyTargets, NotifyTemplate,
};
pub use pending::PendingListens;

use connection::{ListenFailure, Listener};
use queue::Queue;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// The listener connection could not LISTEN (server down, refused
    /// login).
    #[error("pgharbor: cannot LISTEN on \"{channel}\": {reason}")]
    Unavailable { channel: String, reason: String },
    /// The server refused the LISTEN itself: passed on in its own words,
    /// as the client connected to that server would have got it.
    #[error("{message}")]
    Refused { code: String, message: String },
}

impl ListenError {
    /// What the relay sends for a LISTEN that failed (an ERROR): a
    /// server's refusal with its SQLSTATE (when `sqlstate` names it), the
    /// listener's trouble as a connection exception.
    pub fn to_pg_error(&self) -> PgError {
        let code = match self {
            ListenError::Refused { code, .. } => sqlstate::named(code),
            ListenError::Unavailable { .. } => None,
        };
        PgError::error(
            code.unwrap_or(sqlstate::CONNECTION_EXCEPTION),
            self.to_string(),
        )
    }
}

/// What the listener task needs from the hub.
pub(crate) struct HubShared {
    /// `[listen]`, replaced by a RELOAD: a new buffer size and overflow
    /// policy reach the clients that subscribe after it, a new overflow
    /// payload every marker sent after it.
    pub(crate) cfg: arc_swap::ArcSwap<ListenConfig>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) senders: senders::Senders,
}

/// Listener connections are per (servers, dbname, user).
type ListenerKey = (Arc<[Endpoint]>, String, String);

fn listener_key(t: &ServerTarget) -> ListenerKey {
    (t.endpoints.clone(), t.dbname.clone(), t.user.clone())
}

pub struct ListenHub {
    shared: Arc<HubShared>,
    listeners: Mutex<HashMap<ListenerKey, Arc<Listener>>>,
    shutdown: CancellationToken,
    next_id: AtomicU64,
}

impl ListenHub {
    pub fn new(cfg: ListenConfig, metrics: Arc<Metrics>) -> Arc<ListenHub> {
        Arc::new(ListenHub {
            shared: Arc::new(HubShared {
                cfg: arc_swap::ArcSwap::from_pointee(cfg),
                metrics,
                senders: senders::Senders::default(),
            }),
            listeners: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            next_id: AtomicU64::new(1),
        })
    }

    /// A subscriber for one client. Opens nothing until its first LISTEN.
    pub fn subscriber(self: &Arc<Self>, target: &ServerTarget, client_pid: i32) -> Subscriber {
        let cfg = self.shared.cfg.load();
        Subscriber {
            hub: self.clone(),
            target: target.clone(),
            listener: None,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            client_pid,
            queue: Arc::new(Queue::new(cfg.client_buffer, cfg.on_overflow)),
            channels: BTreeSet::new(),
        }
    }

    /// The relay lends server `server` to the client with proxy-issued
    /// `client_pid` (call at checkout). Used to put the sending client's pid
    /// into notifications; see `senders.rs` for when it is trusted.
    pub fn note_server_pid(&self, server: &ServerKey, client_pid: i32) {
        self.shared
            .senders
            .note(server.addr, server.pid, client_pid);
    }

    /// The client with `client_pid`, holding `server`, sent it statements
    /// that notify `targets` (see `senders.rs`). A notification on a
    /// channel nobody listens to is never heard, so it is not kept: it
    /// would be taken for a later one, once the channel is listened to.
    pub fn note_notify(&self, server: &ServerKey, client_pid: i32, mut targets: NotifyTargets) {
        if !targets.sent.is_empty() {
            let listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            targets.sent.retain(|(channel, _)| {
                (listeners.values()).any(|l| l.registry().channels.contains_key(&**channel))
            });
        }
        self.shared
            .senders
            .note_notify(server.addr, server.pid, client_pid, targets);
    }

    /// The transaction of the client with `client_pid` on `server`, which
    /// sent notifications ([`ListenHub::note_notify`]), ended: committed or
    /// not (see `senders.rs`).
    pub fn end_notify_transaction(&self, server: &ServerKey, client_pid: i32, committed: bool) {
        self.shared
            .senders
            .end_transaction(server.addr, server.pid, client_pid, committed);
    }

    /// The server went back to the pool or was closed (call at return).
    pub fn forget_server_pid(&self, server: &ServerKey) {
        self.shared.senders.forget(server.addr, server.pid);
    }

    /// A RELOAD's `[listen]` (see [`HubShared::cfg`]).
    pub fn set_config(&self, cfg: ListenConfig) {
        self.shared.cfg.store(Arc::new(cfg));
    }

    /// A RELOAD moved a database from `old` to `new` (another host, port
    /// or database name): its listener connection moves too, listens
    /// again there, and its subscribers get the overflow marker, since
    /// notifications may have been missed meanwhile. A listener already
    /// open to `new` is left as it is.
    pub fn retarget(&self, old: &ServerTarget, new: &ServerTarget) {
        let key = listener_key;
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(&key(new)) {
            return;
        }
        if let Some(l) = map.remove(&key(old)) {
            l.move_to(new.clone());
            map.insert(key(new), l);
        }
    }

    /// Stops every listener task and closes their connections.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    fn listener(&self, t: &ServerTarget) -> Arc<Listener> {
        let key = listener_key(t);
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key)
            .or_insert_with(|| {
                Listener::spawn(t.clone(), self.shared.clone(), self.shutdown.child_token())
            })
            .clone()
    }
}

impl Drop for ListenHub {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One client's subscriptions and notification queue. Dropping it
/// unsubscribes from everything.
pub struct Subscriber {
    hub: Arc<ListenHub>,
    target: ServerTarget,
    listener: Option<Arc<Listener>>,
    id: u64,
    client_pid: i32,
    queue: Arc<Queue>,
    channels: BTreeSet<String>,
}

impl Subscriber {
    /// LISTEN `channel` (already folded, as [`parse`] returns it;
    /// truncated to 63 bytes here too). Returns once the listener connection
    /// has executed LISTEN: a NOTIFY committed after that is delivered.
    pub async fn listen(&mut self, channel: &str) -> Result<(), ListenError> {
        let ch = truncate_channel(channel);
        if self.channels.contains(ch) {
            return Ok(());
        }
        let l = self
            .listener
            .get_or_insert_with(|| self.hub.listener(&self.target))
            .clone();
        // Recorded first, so a cancelled call still unsubscribes on drop.
        self.channels.insert(ch.to_owned());
        self.hub.shared.metrics.listen_subscriptions.inc();
        if l.registry().add(ch, self.id, &self.queue) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        l.sync(Some(tx));
        let _ = rx.await;
        let failure = {
            let reg = l.registry();
            match reg.channels.get(ch) {
                Some(entry) if entry.confirmed => return Ok(()),
                Some(entry) => entry.error.clone(),
                None => None,
            }
        };
        self.unlisten(ch);
        Err(match failure {
            Some(ListenFailure::Refused { code, message }) => {
                ListenError::Refused { code, message }
            }
            Some(ListenFailure::Unavailable(reason)) => ListenError::Unavailable {
                channel: ch.to_owned(),
                reason,
            },
            None => ListenError::Unavailable {
                channel: ch.to_owned(),
                reason: "listener connection unavailable".into(),
            },
        })
    }

    /// UNLISTEN `channel`. Takes effect at once for this client; the
    /// listener's UNLISTEN (if it was the last subscriber) follows. What
    /// was queued for it goes with [`Subscriber::drop_unlistened`].
    pub fn unlisten(&mut self, channel: &str) {
        let ch = truncate_channel(channel);
        if !self.channels.remove(ch) {
            return;
        }
        self.hub.shared.metrics.listen_subscriptions.dec();
        self.queue.forget_channel(ch);
        if let Some(l) = &self.listener {
            if l.registry().remove(ch, self.id) {
                l.sync(None);
            }
        }
    }

    /// UNLISTEN *.
    pub fn unlisten_all(&mut self) {
        let Some(l) = &self.listener else {
            return;
        };
        let mut poke = false;
        {
            let mut reg = l.registry();
            for ch in &self.channels {
                poke |= reg.remove(ch, self.id);
                self.queue.forget_channel(ch);
            }
        }
        self.hub
            .shared
            .metrics
            .listen_subscriptions
            .sub(self.channels.len() as i64);
        self.channels.clear();
        if poke {
            l.sync(None);
        }
    }

    /// Returns once every notification committed before the call has
    /// been queued for its subscribers (at most `LIMIT` later: a listener
    /// connection that does not answer holds no client up for longer).
    pub async fn barrier(&self) {
        const LIMIT: std::time::Duration = std::time::Duration::from_secs(2);
        let Some(l) = &self.listener else {
            return;
        };
        if self.channels.is_empty() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        l.barrier(tx);
        let _ = tokio::time::timeout(LIMIT, rx).await;
    }

    /// After the UNLISTENs of a transaction or command took effect: what
    /// is queued for channels no longer listened to goes. Postgres reads
    /// its notifications after they have committed, and drops those.
    pub fn drop_unlistened(&self) {
        self.queue.keep_channels(|c| self.channels.contains(c));
    }

    /// Whether this client listens to `channel`.
    pub fn listens_to(&self, channel: &str) -> bool {
        self.channels.contains(truncate_channel(channel))
    }

    /// Drops what is queued for `channel` (see `PendingListens::take_early`).
    pub fn drop_queued(&self, channel: &str) {
        self.queue.drop_channel(channel);
    }

    /// The channels this client listens to.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(String::as_str)
    }

    /// Appends queued NotificationResponses (and overflow markers) to `out`;
    /// returns how many. Never waits.
    pub fn drain_into(&mut self, out: &mut BytesMut) -> usize {
        let (n, notifications) = self
            .queue
            .drain_into(out, &self.hub.shared.cfg.load().overflow_payload);
        self.hub
            .shared
            .metrics
            .listen_notifications
            .inc_by(notifications as u64);
        n
    }

    /// Resolves when something is queued or a FATAL is due. Cancel-safe.
    /// Stays ready until drained: select on it only when the relay can
    /// deliver (between messages).
    pub async fn ready(&self) {
        self.queue.ready().await
    }

    /// Queued messages (markers included), at most `client_buffer`.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// `Some` once if the disconnect policy fired: send it and close.
    pub fn take_fatal(&mut self) -> Option<PgError> {
        if !self.queue.take_fatal() {
            return None;
        }
        Some(
            PgError::fatal(
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                format!(
                    "pgharbor: terminating connection because this client did not read its notifications: more than listen.client_buffer ({}) were waiting",
                    self.queue.capacity()
                ),
            )
            .with_hint("Read notifications promptly, raise listen.client_buffer, or set listen.on_overflow = \"marker\"."),
        )
    }

    /// The pid pgharbor issued to this client.
    pub fn client_pid(&self) -> i32 {
        self.client_pid
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.unlisten_all();
    }
}
