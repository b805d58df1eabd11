//! `proxy.watch_config`: reload when the config file, or a file it names,
//! changes.
//!
//! The directories holding the files are watched, not the files: a
//! Kubernetes ConfigMap or Secret update writes a new directory and swaps
//! the `..data` symlink, which a watch on the old file would never see, and
//! editors replace a file by renaming a new one over it. Any event in a
//! watched directory starts a short quiet period (changes come in bursts);
//! then the files are read again, and only if their content differs from
//! what was last applied is the config reloaded. A reload that fails (a
//! half-written or invalid file) keeps the running config and is retried at
//! the next change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::state::State;

/// How long the directories must stay quiet before the files are read.
const QUIET: Duration = Duration::from_millis(200);
/// The longest a burst of events may delay a reload.
const MAX_DELAY: Duration = Duration::from_secs(2);

/// The config file and the files it names (TLS certificates, keys and CA,
/// password files), as the config gives them.
fn watched_files(config_path: &Path, config: &Config) -> Vec<PathBuf> {
    let tls = [
        &config.client_tls.cert_file,
        &config.client_tls.key_file,
        &config.client_tls.ca_file,
        &config.client_tls.crl_file,
        &config.server_tls.ca_file,
        // The access rules are read with the config too.
        &config.pool.hba_file,
    ];
    let passwords = config.users.iter().filter_map(|u| u.password_file.as_ref());
    std::iter::once(config_path.to_path_buf())
        .chain(
            tls.into_iter()
                .chain(passwords)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        )
        .collect()
}

/// The directories holding `files`.
fn directories(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect()
}

/// What the files hold now (`None`: unreadable), through any symlinks.
fn contents(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

/// Starts watching, if `proxy.watch_config` is on and the instance knows
/// its config file. The task ends when the instance shuts down.
pub(crate) fn spawn(state: &Arc<State>) {
    let Some(path) = state.config_path().map(Path::to_path_buf) else {
        return;
    };
    if !state.config().proxy.watch_config {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = watch(&state, &path).await {
            tracing::error!(error = %e, "watch_config: cannot watch the config files; reload with SIGHUP or RELOAD");
        }
    });
}

async fn watch(state: &Arc<State>, path: &Path) -> notify::Result<()> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })?;
    let mut files = watched_files(path, &state.config());
    let mut dirs = BTreeSet::new();
    watch_dirs(&mut watcher, &mut dirs, directories(&files))?;
    let mut applied = contents(&files);
    tracing::info!(files = ?files, "watch_config: watching the config files");
    loop {
        tokio::select! {
            event = rx.recv() => if event.is_none() { return Ok(()) },
            _ = state.shutdown().cancelled() => return Ok(()),
        }
        settle(&mut rx).await;
        let now = contents(&files);
        if now == applied {
            continue;
        }
        tracing::info!("watch_config: a watched file changed; reloading");
        if state.reload_from_file().is_err() {
            // Logged by the reload; retried at the next change.
            continue;
        }
        files = watched_files(path, &state.config());
        applied = contents(&files);
        watch_dirs(&mut watcher, &mut dirs, directories(&files))?;
    }
}

/// Waits until no event came for [`QUIET`], or [`MAX_DELAY`] passed.
async fn settle(rx: &mut mpsc::UnboundedReceiver<()>) {
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        let quiet = tokio::time::sleep(QUIET);
        tokio::select! {
            _ = quiet => return,
            _ = tokio::time::sleep_until(deadline) => return,
            event = rx.recv() => if event.is_none() { return },
        }
    }
}

/// Watches the directories of `wanted` not yet watched, and stops watching
/// those no longer wanted.
fn watch_dirs(
    watcher: &mut impl Watcher,
    watched: &mut BTreeSet<PathBuf>,
    wanted: BTreeSet<PathBuf>,
) -> notify::Result<()> {
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for dir in wanted.difference(watched) {
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    *watched = wanted;
    Ok(())
}
