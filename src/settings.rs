//! What the config file resolves to: the config itself, the users clients
//! authenticate against (secrets derived once per load) and the TLS
//! acceptor and connector. Each is swapped whole at a reload; a reader
//! takes a snapshot, so a reload in the middle of a login applies to the
//! next one.

use arc_swap::{ArcSwap, Guard};
use std::sync::Arc;

use crate::config::Config;
use crate::tls::TlsSettings;
use crate::users::Users;

/// The running settings of one instance.
pub struct Settings {
    config: ArcSwap<Config>,
    users: ArcSwap<Users>,
    /// `[client_tls]` and `[server_tls]`.
    tls: ArcSwap<TlsSettings>,
}

impl Settings {
    pub(crate) fn new(config: Config, users: Users, tls: TlsSettings) -> Settings {
        Settings {
            config: ArcSwap::from_pointee(config),
            users: ArcSwap::from_pointee(users),
            tls: ArcSwap::from_pointee(tls),
        }
    }

    /// The current configuration snapshot.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// The current configuration, held beyond a short read.
    pub(crate) fn config_full(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn users(&self) -> Guard<Arc<Users>> {
        self.users.load()
    }

    /// The TLS acceptor and connector of the current configuration.
    pub fn tls(&self) -> Guard<Arc<TlsSettings>> {
        self.tls.load()
    }

    /// Puts a reloaded configuration in place, the users and TLS before
    /// the config that names them.
    pub(crate) fn store(&self, config: Arc<Config>, users: Users, tls: TlsSettings) {
        self.users.store(Arc::new(users));
        self.tls.store(Arc::new(tls));
        self.config.store(config);
    }
}
