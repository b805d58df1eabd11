//! Running the proxy as a process: signals and reloads.

use std::path::{Path, PathBuf};

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::Proxy;

/// With `listen_reuseport`, how long after the listener closes the drain
/// begins (see [`serve_until_signal`]).
const LOGIN_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Start(#[from] crate::StartError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Demo(String),
    #[error("{0}")]
    Upgrade(String),
}

/// Runs `config` (loaded from `path`) until SIGTERM or SIGINT (then drains
/// for up to `shutdown_timeout`), reloads from `path` on SIGHUP, and
/// upgrades to the binary at its own path on SIGUSR2. Started by such an
/// upgrade ([`crate::upgrade::SOCKET_ENV`] set), it takes over the old
/// process's listeners and clients instead of binding.
pub async fn run_with_signals(path: PathBuf, config: Config) -> Result<(), RunError> {
    let proxy = match std::env::var_os(crate::upgrade::SOCKET_ENV) {
        Some(socket) => crate::takeover::take_over(config, socket.into()).await?,
        None => Proxy::start(config).await?,
    };
    crate::takeover::remember_launch(proxy.state());
    proxy.set_config_file(path.clone());
    serve_until_signal(&proxy, Some(&path)).await
}

/// Waits for SIGTERM / SIGINT (or an admin SHUTDOWN), then drains.
pub async fn serve_until_signal(proxy: &Proxy, reload_from: Option<&Path>) -> Result<(), RunError> {
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    let mut usr2 = signal(SignalKind::user_defined2()).map_err(RunError::Signal)?;
    if let Some(path) = reload_from {
        proxy.set_config_file(path.to_owned());
    }
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break }
            _ = proxy.shutdown_requested() => { tracing::info!("shutdown requested: draining"); break }
            _ = usr2.recv() => {
                // Logged by the upgrade, which may take a while: signals
                // are still served meanwhile.
                let state = proxy.state().clone();
                tokio::spawn(async move { state.upgrade().await });
            }
            _ = hup.recv() => {
                // Logged, and counted in the reload metrics, by the reload.
                if proxy.state().config_path().is_some() {
                    let _ = proxy.state().reload_from_file();
                }
            }
        }
    }
    if proxy.state().config().proxy.listen_reuseport {
        // Another instance serves the port: close the listener first, and
        // give clients accepted a moment ago time to log in and send their
        // first transaction before idle clients are told to go.
        proxy.state().stop_accepting().cancel();
        tokio::time::sleep(LOGIN_GRACE).await;
    }
    proxy.begin_shutdown();
    proxy.drain().await;
    crate::takeover::finish(proxy.state()).await;
    tracing::info!("stopped");
    Ok(())
}
