//! One listener connection per database target and the task that drives it:
//! keeps the server's LISTEN set equal to the union of the subscribers'
//! channels, fans notifications out, and reconnects when the connection is
//! lost.
//!
//! Subscribers change the registry under its mutex and mark the channel
//! dirty; then they poke the task (`Cmd::Sync`). The task sends LISTEN /
//! UNLISTEN for the dirty channels (each its own Query, so one failure affects
//! one channel) and answers each poke after the ReadyForQuery of everything
//! sent so far — after which a NOTIFY on a listened channel is delivered.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::queue::Queue;
use super::HubShared;
use crate::protocol::error::ServerErrorFields;
use crate::protocol::frame::split_message;
use crate::protocol::tag::backend as tag;
use crate::server::{Server, ServerTarget};
use crate::sql::quote::quote_ident;

/// Shown in pg_stat_activity for the listener connections.
pub const APPLICATION_NAME: &str = "pgharbor-listener";
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A listener with no channel closes its connection after this long.
const LINGER: Duration = Duration::from_secs(10);
const MAX_MESSAGE: usize = 1024 * 1024;

pub(crate) enum Cmd {
    /// Apply the dirty channels; answer once the server has done so.
    Sync(Option<oneshot::Sender<()>>),
    /// Answer once every notification committed before now has been
    /// fanned out (a round trip: the server delivers what it has before
    /// its ReadyForQuery). Answered at once without a connection.
    Barrier(oneshot::Sender<()>),
    /// The database moved to another server (RELOAD): leave the current
    /// connection and listen again on the new server.
    Move,
}

#[derive(Default)]
pub(crate) struct Channel {
    pub(crate) subs: HashMap<u64, Arc<Queue>>,
    /// The fan-out list, rebuilt after a change.
    snapshot: Option<Arc<[Arc<Queue>]>>,
    /// The server has executed LISTEN for it (on the current connection).
    pub(crate) confirmed: bool,
    /// Why the last LISTEN attempt failed.
    pub(crate) error: Option<ListenFailure>,
}

/// Why a LISTEN did not take.
#[derive(Debug, Clone)]
pub(crate) enum ListenFailure {
    /// The listener connection could not be opened, or broke.
    Unavailable(String),
    /// The server refused the LISTEN itself (a standby does: "cannot
    /// execute LISTEN during recovery"): its SQLSTATE and words.
    Refused { code: String, message: String },
}

#[derive(Default)]
pub(crate) struct Registry {
    pub(crate) channels: HashMap<String, Channel>,
    pub(crate) dirty: HashSet<String>,
}

impl Registry {
    /// Adds a subscription; returns whether the channel is already listened.
    pub(crate) fn add(&mut self, ch: &str, sub: u64, q: &Arc<Queue>) -> bool {
        let entry = self.channels.entry(ch.to_owned()).or_insert_with(|| {
            self.dirty.insert(ch.to_owned());
            Channel::default()
        });
        entry.subs.insert(sub, q.clone());
        entry.snapshot = None;
        entry.confirmed
    }

    /// Removes a subscription; returns true when the channel lost its last
    /// subscriber (the caller pokes the task).
    pub(crate) fn remove(&mut self, ch: &str, sub: u64) -> bool {
        let Some(entry) = self.channels.get_mut(ch) else {
            return false;
        };
        entry.subs.remove(&sub);
        entry.snapshot = None;
        if entry.subs.is_empty() {
            self.channels.remove(ch);
            self.dirty.insert(ch.to_owned());
            return true;
        }
        false
    }

    fn fanout(&mut self, ch: &str) -> Option<Arc<[Arc<Queue>]>> {
        let entry = self.channels.get_mut(ch)?;
        Some(
            entry
                .snapshot
                .get_or_insert_with(|| entry.subs.values().cloned().collect())
                .clone(),
        )
    }
}

pub(crate) struct Listener {
    /// Replaced when a RELOAD moves the database (see [`Cmd::Move`]).
    target: Mutex<ServerTarget>,
    registry: Mutex<Registry>,
    cmd: mpsc::UnboundedSender<Cmd>,
}

impl Listener {
    pub(crate) fn spawn(
        target: ServerTarget,
        hub: Arc<HubShared>,
        shutdown: CancellationToken,
    ) -> Arc<Listener> {
        let (tx, rx) = mpsc::unbounded_channel();
        let l = Arc::new(Listener {
            target: Mutex::new(target),
            registry: Mutex::new(Registry::default()),
            cmd: tx,
        });
        tokio::spawn(run(l.clone(), hub, rx, shutdown));
        l
    }

    pub(crate) fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pokes the task; `done` fires once the server caught up.
    pub(crate) fn sync(&self, done: Option<oneshot::Sender<()>>) {
        let _ = self.cmd.send(Cmd::Sync(done));
    }

    /// See [`Cmd::Barrier`].
    pub(crate) fn barrier(&self, done: oneshot::Sender<()>) {
        let _ = self.cmd.send(Cmd::Barrier(done));
    }

    pub(crate) fn target(&self) -> ServerTarget {
        self.target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Listens on `target` from now on, leaving the current connection.
    pub(crate) fn move_to(&self, target: ServerTarget) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
        let _ = self.cmd.send(Cmd::Move);
    }

    fn wanted(&self) -> bool {
        !self.registry().channels.is_empty()
    }
}

enum Op {
    Listen(String),
    Unlisten,
    /// The end of a (re)connection's first batch.
    Barrier {
        markers: bool,
    },
}

struct InFlight {
    op: Op,
    /// The server's ErrorResponse to it: SQLSTATE and message.
    error: Option<(String, String)>,
    waiters: Vec<oneshot::Sender<()>>,
}

enum Outcome {
    Shutdown,
    Idle,
    Lost(String, Vec<oneshot::Sender<()>>),
}

async fn run(
    l: Arc<Listener>,
    hub: Arc<HubShared>,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    shutdown: CancellationToken,
) {
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut backoff = BACKOFF_START;
    // After a lost connection every subscriber is owed a marker.
    let mut markers = false;
    loop {
        if !l.wanted() {
            waiters.drain(..).for_each(|w| {
                let _ = w.send(());
            });
            markers = false;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                c = rx.recv() => match c {
                    None => return,
                    Some(Cmd::Sync(w)) => waiters.extend(w),
                    Some(Cmd::Barrier(w)) => {
                        let _ = w.send(());
                    }
                    // The next connection goes to the new target anyway.
                    Some(Cmd::Move) => {}
                },
            }
            continue;
        }
        let target = l.target();
        let conn = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = connect(&target) => r,
        };
        match conn {
            Ok(server) => {
                backoff = BACKOFF_START;
                let w = std::mem::take(&mut waiters);
                match session(&l, &hub, server, &mut rx, w, markers, &shutdown).await {
                    Outcome::Shutdown => return,
                    Outcome::Idle => markers = false,
                    Outcome::Lost(why, w) => {
                        tracing::warn!(db = %l.target().dbname, "listener connection lost: {why}; reconnecting");
                        waiters = w;
                        markers = true;
                        backoff_wait(&mut rx, &mut waiters, BACKOFF_START, &shutdown).await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(db = %l.target().dbname, "listener connection failed: {e}; retrying in {backoff:?}");
                {
                    let mut reg = l.registry();
                    for ch in reg.channels.values_mut().filter(|c| !c.confirmed) {
                        ch.error = Some(ListenFailure::Unavailable(format!(
                            "listener connection unavailable: {e}"
                        )));
                    }
                }
                waiters.drain(..).for_each(|w| {
                    let _ = w.send(());
                });
                if !backoff_wait(&mut rx, &mut waiters, backoff, &shutdown).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Sleeps, collecting pokes. False on shutdown.
async fn backoff_wait(
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    waiters: &mut Vec<oneshot::Sender<()>>,
    d: Duration,
    shutdown: &CancellationToken,
) -> bool {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            _ = shutdown.cancelled() => return false,
            c = rx.recv() => match c {
                None => return false,
                Some(Cmd::Sync(w)) => waiters.extend(w),
                Some(Cmd::Barrier(w)) => {
                    let _ = w.send(());
                }
                Some(Cmd::Move) => {}
            },
        }
    }
}

async fn connect(target: &ServerTarget) -> Result<Server, crate::server::ServerError> {
    let mut server = Server::connect(target, 0).await?;
    server
        .simple_query(&format!(
            "SET application_name = '{APPLICATION_NAME}'; SET client_encoding = 'UTF8'"
        ))
        .await?;
    Ok(server)
}

#[allow(clippy::too_many_arguments)]
async fn session(
    l: &Listener,
    hub: &HubShared,
    mut server: Server,
    rx: &mut mpsc::UnboundedReceiver<Cmd>,
    waiters: Vec<oneshot::Sender<()>>,
    markers: bool,
    shutdown: &CancellationToken,
) -> Outcome {
    let addr = server.key.addr;
    let mut actual: HashSet<String> = HashSet::new();
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let mut wbuf = BytesMut::new();
    {
        let mut reg = l.registry();
        let all: Vec<String> = reg.channels.keys().cloned().collect();
        reg.dirty.extend(all);
    }
    reconcile(l, hub, &mut actual, &mut inflight, &mut wbuf);
    // Its ReadyForQuery marks the end of the first batch.
    push_barrier(&mut wbuf, &mut inflight, markers, waiters);
    let mut rbuf = std::mem::take(&mut server.rbuf);
    let (mut rd, mut wr) = tokio::io::split(&mut server.stream);
    // Written bytes not yet pushed out (TLS holds them until flushed).
    let mut unflushed = false;
    let outcome = loop {
        let idle = inflight.is_empty() && actual.is_empty() && !l.wanted();
        if rbuf.capacity() - rbuf.len() < 4096 {
            rbuf.reserve(32 * 1024);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break Outcome::Shutdown,
            c = rx.recv() => match c {
                None => break Outcome::Shutdown,
                Some(Cmd::Move) => break lost(l, hub, &mut actual, inflight, "the database moved to another server (RELOAD)".into()),
                Some(Cmd::Sync(w)) => {
                    reconcile(l, hub, &mut actual, &mut inflight, &mut wbuf);
                    if let Some(w) = w {
                        match inflight.back_mut() {
                            Some(f) => f.waiters.push(w),
                            None => {
                                let _ = w.send(());
                            }
                        }
                    }
                }
                Some(Cmd::Barrier(w)) => push_barrier(&mut wbuf, &mut inflight, false, vec![w]),
            },
            r = rd.read_buf(&mut rbuf) => match r {
                Ok(0) => break lost(l, hub, &mut actual, inflight, "server closed the connection".into()),
                Err(e) => break lost(l, hub, &mut actual, inflight, e.to_string()),
                Ok(_) => {
                    if let Err(why) = handle_messages(l, hub, addr, &mut rbuf, &mut actual, &mut inflight) {
                        break lost(l, hub, &mut actual, inflight, why);
                    }
                }
            },
            r = write_or_flush(&mut wr, &mut wbuf), if !wbuf.is_empty() || unflushed => match r {
                Err(e) => break lost(l, hub, &mut actual, inflight, e.to_string()),
                Ok(flushed) => unflushed = !flushed,
            },
            _ = tokio::time::sleep(LINGER), if idle => break Outcome::Idle,
        }
    };
    if matches!(outcome, Outcome::Idle | Outcome::Shutdown) {
        say_goodbye(&mut wr).await;
        hub.metrics.listen_channels.sub(actual.len() as i64);
    }
    outcome
}

/// An empty query whose ReadyForQuery wakes `waiters`: everything sent
/// before it has been answered by then.
fn push_barrier(
    wbuf: &mut BytesMut,
    inflight: &mut VecDeque<InFlight>,
    markers: bool,
    waiters: Vec<oneshot::Sender<()>>,
) {
    let _ = frontend::query("", wbuf);
    inflight.push_back(InFlight {
        op: Op::Barrier { markers },
        error: None,
        waiters,
    });
}

/// A Terminate, given a second to reach the server.
async fn say_goodbye<W: AsyncWrite + Unpin>(wr: &mut W) {
    let mut bye = BytesMut::new();
    frontend::terminate(&mut bye);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        wr.write_all(&bye).await?;
        wr.flush().await
    })
    .await;
}

/// Writes some of `wbuf`, or, once it is all written, flushes. `Ok(true)`:
/// flushed. Cancel-safe, as a `select!` branch must be.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    wr: &mut W,
    wbuf: &mut BytesMut,
) -> std::io::Result<bool> {
    if wbuf.is_empty() {
        wr.flush().await?;
        return Ok(true);
    }
    wr.write_buf(wbuf).await?;
    Ok(false)
}

/// Connection gone: nothing is listened any more; in-flight waiters wait
/// for the next connection.
fn lost(
    l: &Listener,
    hub: &HubShared,
    actual: &mut HashSet<String>,
    inflight: VecDeque<InFlight>,
    why: String,
) -> Outcome {
    hub.metrics.listen_channels.sub(actual.len() as i64);
    actual.clear();
    for ch in l.registry().channels.values_mut() {
        ch.confirmed = false;
    }
    let waiters = inflight.into_iter().flat_map(|f| f.waiters).collect();
    Outcome::Lost(why, waiters)
}

fn reconcile(
    l: &Listener,
    hub: &HubShared,
    actual: &mut HashSet<String>,
    inflight: &mut VecDeque<InFlight>,
    wbuf: &mut BytesMut,
) {
    let mut reg = l.registry();
    let dirty = std::mem::take(&mut reg.dirty);
    for ch in dirty {
        let (sql, op) = match reg.channels.get(&ch) {
            // LISTEN is idempotent: resent when a new entry was made while
            // the old one's LISTEN still stood, so the entry gets confirmed.
            Some(entry) if !entry.confirmed || !actual.contains(&ch) => {
                if actual.insert(ch.clone()) {
                    hub.metrics.listen_channels.inc();
                }
                (format!("LISTEN {}", quote_ident(&ch)), Op::Listen(ch))
            }
            None if actual.remove(&ch) => {
                hub.metrics.listen_channels.dec();
                (format!("UNLISTEN {}", quote_ident(&ch)), Op::Unlisten)
            }
            _ => continue,
        };
        // Channel names hold no NUL (they come from identifiers).
        if frontend::query(&sql, wbuf).is_ok() {
            inflight.push_back(InFlight {
                op,
                error: None,
                waiters: Vec::new(),
            });
        }
    }
}

/// Handles every whole message in `rbuf`. Err = the connection is unusable.
fn handle_messages(
    l: &Listener,
    hub: &HubShared,
    addr: std::net::SocketAddr,
    rbuf: &mut BytesMut,
    actual: &mut HashSet<String>,
    inflight: &mut VecDeque<InFlight>,
) -> Result<(), String> {
    loop {
        let msg = match split_message(rbuf, MAX_MESSAGE) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        match msg[0] {
            tag::NOTIFICATION_RESPONSE => fan_out(l, hub, addr, msg),
            tag::ERROR_RESPONSE => {
                let f = ServerErrorFields::parse(&msg[5..]);
                if f.is_fatal() {
                    return Err(format!("{} ({})", f.message, f.code));
                }
                if let Some(front) = inflight.front_mut() {
                    front.error.get_or_insert((f.code, f.message));
                }
            }
            tag::READY_FOR_QUERY => {
                let Some(done) = inflight.pop_front() else {
                    return Err("unexpected ReadyForQuery".into());
                };
                complete(l, hub, actual, done);
            }
            _ => {} // CommandComplete, NoticeResponse, ParameterStatus
        }
    }
}

fn complete(l: &Listener, hub: &HubShared, actual: &mut HashSet<String>, done: InFlight) {
    let mut reg = l.registry();
    match done.op {
        Op::Listen(ch) => match (done.error, reg.channels.get_mut(&ch)) {
            (None, Some(entry)) if actual.contains(&ch) => {
                entry.confirmed = true;
                entry.error = None;
            }
            (Some((code, message)), entry) => {
                tracing::warn!(channel = %ch, %code, "LISTEN failed on the listener connection: {message}");
                if actual.remove(&ch) {
                    hub.metrics.listen_channels.dec();
                }
                if let Some(entry) = entry {
                    entry.error = Some(ListenFailure::Refused { code, message });
                }
            }
            _ => {}
        },
        Op::Unlisten => {}
        Op::Barrier { markers } => {
            if markers {
                for (name, ch) in reg.channels.iter().filter(|(_, c)| c.confirmed) {
                    for q in ch.subs.values() {
                        q.owe_markers([name.as_str()]);
                    }
                }
            }
        }
    }
    drop(reg);
    done.waiters.into_iter().for_each(|w| {
        let _ = w.send(());
    });
}

/// Parses a NotificationResponse once and queues it, shared, for every
/// subscriber of its channel. Never waits.
fn fan_out(l: &Listener, hub: &HubShared, addr: std::net::SocketAddr, msg: BytesMut) {
    let body = &msg[5..];
    if body.len() < 6 {
        return;
    }
    let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let Some(end) = body[4..].iter().position(|&b| b == 0) else {
        return;
    };
    let Ok(channel) = std::str::from_utf8(&body[4..4 + end]) else {
        return;
    };
    let Some(queues) = l.registry().fanout(channel) else {
        return;
    };
    let rest = &body[4 + end + 1..];
    let payload = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
    let shared: Bytes = match hub.senders.sender(addr, pid, channel, payload) {
        Some(client_pid) if client_pid != pid => {
            let mut m = BytesMut::with_capacity(msg.len());
            m.put_slice(&msg[..5]);
            m.put_i32(client_pid);
            m.put_slice(&msg[9..]);
            m.freeze()
        }
        // Copied once (not per subscriber), so a queued notification pins
        // only its own bytes, not the whole read buffer it arrived in.
        _ => Bytes::copy_from_slice(&msg),
    };
    for q in queues.iter() {
        let pushed = q.push(channel, shared.clone());
        Queue::count(&hub.metrics, pushed);
    }
}
