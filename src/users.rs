//! Users as clients authenticate against them, with the SCRAM and md5 secrets
//! derived once at load time (not once per login, which is what makes SCRAM
//! logins expensive in other poolers).

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::credential::ServerCredential;
use crate::auth::md5::md5_stored;
use crate::auth::scram::ScramSecret;
use crate::config::{AuthType, Config, ConfigError, UserConfig};

pub struct UserEntry {
    pub config: UserConfig,
    /// Present for scram-sha-256 users and users given by a verifier.
    pub scram: Option<ScramSecret>,
    /// `md5…` stored hash, present unless the user has no password or only
    /// a verifier.
    pub md5: Option<String>,
    /// How pgharbor logs in to Postgres as this user; the same one across
    /// reloads, shared with the user's pools.
    pub server: Arc<ServerCredential>,
}

impl UserEntry {
    /// Derives the secrets clients are checked against and applies the
    /// password to `server` (kept across reloads and lookups).
    pub fn new(config: UserConfig, server: Arc<ServerCredential>) -> Result<UserEntry, String> {
        let password = &config.password;
        let verifier = password.starts_with("SCRAM-SHA-256$");
        // A verifier is parsed whatever the auth_type: an hba_file line may
        // ask for SCRAM, and `password` logins are checked against it. A
        // plaintext password is derived into SCRAM only for SCRAM users (it
        // is costly on purpose); others derive it at a login that needs it.
        let scram = if verifier {
            Some(
                ScramSecret::parse(password)
                    .map_err(|e| format!("not a valid SCRAM verifier: {e}"))?,
            )
        } else if config.auth_type == AuthType::ScramSha256 && !password.is_empty() {
            Some(ScramSecret::from_password(password))
        } else {
            None
        };
        // The md5 form is cheap: kept for any password it can be made from.
        let md5 = (!verifier && !password.is_empty()).then(|| md5_stored(&config.name, password));
        server.configure(&config.password, scram.as_ref());
        Ok(UserEntry {
            config,
            scram,
            md5,
            server,
        })
    }
}

#[derive(Default)]
pub struct Users {
    map: HashMap<String, Arc<UserEntry>>,
}

impl Users {
    /// The users of `config`. `previous` (at a reload) hands over each
    /// user's server credential, so open pools see the new password and a
    /// learnt ClientKey survives while the verifier is unchanged.
    pub fn from_config(config: &Config, previous: Option<&Users>) -> Result<Users, ConfigError> {
        let mut map = HashMap::new();
        for (i, u) in config.users.iter().enumerate() {
            let server = previous
                .and_then(|p| p.map.get(&u.name))
                .map(|e| e.server.clone())
                .unwrap_or_default();
            let entry =
                UserEntry::new(u.clone(), server).map_err(|reason| ConfigError::Invalid {
                    key: format!("users[{i}].password"),
                    reason,
                })?;
            map.insert(u.name.clone(), Arc::new(entry));
        }
        Ok(Users { map })
    }

    pub fn get(&self, name: &str) -> Option<Arc<UserEntry>> {
        self.map.get(name).cloned()
    }
}
