//! Running the proxy as a process: signals and reloads.

use std::path::{Path, PathBuf};

use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::Proxy;

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
}

/// Runs `config` (loaded from `path`) until SIGTERM or SIGINT (then drains
/// for up to `shutdown_timeout`), and reloads from `path` on SIGHUP.
pub async fn run_with_signals(path: PathBuf, config: Config) -> Result<(), RunError> {
    let proxy = Proxy::start(config).await?;
    proxy.set_config_file(path.clone());
    serve_until_signal(&proxy, Some(&path)).await
}

/// Waits for SIGTERM / SIGINT (or an admin SHUTDOWN), then drains.
pub async fn serve_until_signal(proxy: &Proxy, reload_from: Option<&Path>) -> Result<(), RunError> {
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signal)?;
    if let Some(path) = reload_from {
        proxy.set_config_file(path.to_owned());
    }
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break }
            _ = proxy.shutdown_requested() => { tracing::info!("shutdown requested: draining"); break }
            _ = hup.recv() => {
                // Logged, and counted in the reload metrics, by the reload.
                if proxy.state().config_path.get().is_some() {
                    let _ = proxy.state().reload_from_file();
                }
            }
        }
    }
    proxy.begin_shutdown();
    proxy.drain().await;
    tracing::info!("stopped");
    Ok(())
}
