//! The binary upgrade, both sides. The running process (SIGUSR2, admin
//! UPGRADE) starts the binary at the path it was started from, with
//! [`SOCKET_ENV`] naming a Unix socket; the new process connects, greets,
//! takes the listening sockets and says when it serves on them. Then the
//! old one stops accepting and hands each idle client over at its next
//! safe point (`client/handover.rs`), drains what cannot move, and exits.
//! If the new binary does not start, exits, or does not say it is ready
//! within [`TAKEOVER_TIMEOUT`], it is stopped and the old one goes on
//! serving as if nothing happened.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::state::State;
use crate::upgrade::{self, Launch, Listeners, Message, SOCKET_ENV};
use crate::{Proxy, RunError};

/// How long the new binary has to connect, greet and serve.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Remembers how this process was started, for the binary it upgrades to.
pub(crate) fn remember_launch(state: &State) {
    match std::env::current_exe() {
        Ok(exe) => {
            let args = std::env::args_os().skip(1).collect();
            let _ = state.upgrader().launch.set(Launch { exe, args });
            state.set_upgrade(|state| Box::pin(async move { upgrade(&state).await }));
        }
        Err(e) => tracing::warn!(error = %e, "executable path unknown; binary upgrades are off"),
    }
}

/// Upgrades to the binary at this process's path; `Err` says why the new
/// process did not take over, and this one keeps serving.
pub(crate) async fn upgrade(state: &Arc<State>) -> Result<(), String> {
    if !state.upgrader().begin() {
        return Err("an upgrade is already under way".into());
    }
    match start_new(state).await {
        Ok(taken) => {
            hand_over(state, taken);
            Ok(())
        }
        Err(e) => {
            state.upgrader().abandon();
            tracing::error!(reason = %e, "upgrade failed; this process keeps serving");
            Err(e)
        }
    }
}

/// The new process, connected and serving on the listeners.
struct Taken {
    sock: UnixStream,
    /// Its version and pid, for the log.
    hello: String,
}

async fn start_new(state: &Arc<State>) -> Result<Taken, String> {
    let Some(launch) = state.upgrader().launch.get().cloned() else {
        return Err(
            "this instance was not started by the pgharbor command; no binary to start".into(),
        );
    };
    if state.shutdown().is_cancelled() || state.stop_accepting().is_cancelled() {
        return Err("this process is shutting down".into());
    }
    let listeners = state.upgrader().copy_listeners()?;
    tracing::info!(exe = %launch.exe.display(), "upgrade: starting the new binary");
    let launched = tokio::task::spawn_blocking(move || launch_and_greet(&launch, &listeners));
    launched.await.map_err(|e| e.to_string())?
}

/// Starts the new binary and walks it through the hand-over of the
/// listeners; on any failure it is stopped.
fn launch_and_greet(launch: &Launch, listeners: &Listeners) -> Result<Taken, String> {
    let dir = tempfile::Builder::new()
        .prefix("pgharbor-upgrade-")
        .tempdir()
        .map_err(|e| format!("cannot create the upgrade socket's directory: {e}"))?;
    let path = dir.path().join("socket");
    let listener = UnixListener::bind(&path)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("cannot bind the upgrade socket {}: {e}", path.display()))?;
    let mut child = Command::new(&launch.exe)
        .args(&launch.args)
        .env(SOCKET_ENV, &path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start the new binary {}: {e}", launch.exe.display()))?;
    let greeted = greet(&listener, &mut child, listeners);
    if greeted.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    greeted
}

fn greet(
    listener: &UnixListener,
    child: &mut Child,
    listeners: &Listeners,
) -> Result<Taken, String> {
    let deadline = Instant::now() + TAKEOVER_TIMEOUT;
    let sock = accept_child(listener, child, deadline)?;
    let broke = |e: std::io::Error| format!("the new process broke off the hand-over: {e}");
    let wait_until = |sock: &UnixStream| {
        let left = deadline.saturating_duration_since(Instant::now());
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
    };
    sock.set_nonblocking(false).map_err(broke)?;
    wait_until(&sock).map_err(broke)?;
    let hello = match upgrade::recv(&sock).map_err(broke)? {
        Some((Message::Hello { version, pid }, _)) => format!("{version}, pid {pid}"),
        other => return Err(unexpected(other)),
    };
    let mut fds = vec![listeners.client.as_fd()];
    fds.extend(listeners.metrics.as_ref().map(|m| m.as_fd()));
    let msg = Message::Listeners {
        metrics: listeners.metrics.is_some(),
    };
    upgrade::send(&sock, &msg, &fds).map_err(broke)?;
    wait_until(&sock).map_err(broke)?;
    match upgrade::recv(&sock).map_err(broke)? {
        Some((Message::Ready, _)) => {}
        other => return Err(unexpected(other)),
    }
    sock.set_read_timeout(None).map_err(broke)?;
    Ok(Taken { sock, hello })
}

fn unexpected(got: Option<(Message, Vec<OwnedFd>)>) -> String {
    match got {
        None => "the new process exited during the hand-over (see its log)".into(),
        Some((msg, _)) => format!("the new process answered out of turn: {msg:?}"),
    }
}

/// Waits for the new process to connect, while it lives and the deadline
/// allows.
fn accept_child(
    listener: &UnixListener,
    child: &mut Child,
    deadline: Instant,
) -> Result<UnixStream, String> {
    loop {
        match listener.accept() {
            Ok((sock, _)) => return Ok(sock),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("upgrade socket: {e}")),
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the new binary exited ({status}) before taking over"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the new binary did not take over within {TAKEOVER_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The new process serves: stop accepting, and send each client over as
/// it reaches a safe point.
fn hand_over(state: &Arc<State>, taken: Taken) {
    tracing::info!(new = %taken.hello, "upgrade: the new process serves the listeners; handing over clients");
    let (tx, rx) = std::sync::mpsc::channel::<upgrade::Leaving>();
    state.handover().open(tx);
    if let Some(&addr) = state.upgrader().listen_addr.get() {
        // The new process accepts there now; the cancels of the clients
        // that left reach it, also those this one still takes.
        state.cancel().hand_over_to(addr);
    }
    let sock = taken.sock;
    let sender = std::thread::spawn(move || {
        let mut sent = 0u64;
        for (client, fd) in rx {
            match upgrade::send(&sock, &Message::Client(client), &[fd.as_fd()]) {
                Ok(()) => sent += 1,
                Err(e) => {
                    tracing::error!(error = %e, "cannot hand a client over; it is disconnected")
                }
            }
        }
        tracing::info!(clients = sent, "upgrade: clients handed over");
    });
    state.upgrader().set_sender(sender);
    state.stop_accepting().cancel();
    state.shutdown().cancel();
}

/// After the drain: the last clients leave for the new process before
/// this one exits.
pub(crate) async fn finish(state: &Arc<State>) {
    state.handover().close();
    let sender = state.upgrader().take_sender();
    if let Some(sender) = sender {
        let _ = tokio::task::spawn_blocking(move || sender.join()).await;
    }
}

/// In a process started by an upgrade: takes the listeners from the
/// process at `socket`, starts serving on them, says so, and resumes the
/// clients it is sent.
pub(crate) async fn take_over(config: Config, socket: PathBuf) -> Result<Proxy, RunError> {
    let received = tokio::task::spawn_blocking(move || receive_listeners(&socket)).await;
    let failed = |e: String| RunError::Upgrade(format!("taking over failed: {e}"));
    let (sock, client, metrics) = received
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(e.to_string()))?;
    let tokio_listener = |l: std::net::TcpListener| {
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    };
    let client = tokio_listener(client).map_err(|e| failed(e.to_string()))?;
    let metrics = metrics
        .map(tokio_listener)
        .transpose()
        .map_err(|e| failed(e.to_string()))?;
    let proxy = Proxy::start_on(config, client, metrics).await?;
    upgrade::send(&sock, &Message::Ready, &[]).map_err(|e| failed(e.to_string()))?;
    let state = proxy.state().clone();
    let handle = tokio::runtime::Handle::current();
    std::thread::spawn(move || receive_clients(&sock, &state, &handle));
    tracing::info!("upgrade: serving the previous process's listeners");
    Ok(proxy)
}

type Received = (
    UnixStream,
    std::net::TcpListener,
    Option<std::net::TcpListener>,
);

fn receive_listeners(socket: &std::path::Path) -> std::io::Result<Received> {
    let sock = UnixStream::connect(socket)?;
    let hello = Message::Hello {
        version: crate::state::version(),
        pid: std::process::id(),
    };
    upgrade::send(&sock, &hello, &[])?;
    let Some((Message::Listeners { metrics }, fds)) = upgrade::recv(&sock)? else {
        return Err(std::io::Error::other(
            "the old process did not send its listeners",
        ));
    };
    let mut fds = fds.into_iter();
    let client = fds.next().map(std::net::TcpListener::from);
    let metrics_listener = fds.next().map(std::net::TcpListener::from);
    match (client, metrics, metrics_listener) {
        (Some(client), true, Some(m)) => Ok((sock, client, Some(m))),
        (Some(client), false, None) => Ok((sock, client, None)),
        _ => Err(std::io::Error::other(
            "the listeners did not come as announced",
        )),
    }
}

fn receive_clients(sock: &UnixStream, state: &Arc<State>, handle: &tokio::runtime::Handle) {
    let mut resumed = 0u64;
    loop {
        match upgrade::recv(sock) {
            Ok(Some((Message::Client(client), fds))) => {
                let Some(fd) = fds.into_iter().next() else {
                    tracing::warn!("a handed-over client came without its socket");
                    continue;
                };
                let serve = crate::client::resume(*client, fd, state.clone());
                state.tracker().spawn_on(serve, handle);
                resumed += 1;
            }
            Ok(Some((msg, _))) => tracing::warn!(?msg, "upgrade: unexpected message"),
            Ok(None) => break,
            Err(e) => {
                tracing::error!(error = %e, "upgrade: the hand-over connection broke");
                break;
            }
        }
    }
    tracing::info!(
        clients = resumed,
        "upgrade: took over the previous process's clients"
    );
}
