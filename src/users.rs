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
    /// Present for scram-sha-256 users.
    pub scram: Option<ScramSecret>,
    /// `md5…` stored hash, present for md5 users.
    pub md5: Option<String>,
    /// How pgharbor logs in to Postgres as this user; the same one across
    /// reloads, shared with the user's pools.
    pub server: Arc<ServerCredential>,
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
            let (scram, md5) = match u.auth_type {
                AuthType::Trust => (None, None),
                AuthType::Md5 => (None, Some(md5_stored(&u.name, &u.password))),
                AuthType::ScramSha256 => {
                    let secret = if u.password.starts_with("SCRAM-SHA-256$") {
                        ScramSecret::parse(&u.password).map_err(|e| ConfigError::Invalid {
                            key: format!("users[{i}].password"),
                            reason: format!("not a valid SCRAM verifier: {e}"),
                        })?
                    } else {
                        ScramSecret::from_password(&u.password)
                    };
                    (Some(secret), None)
                }
            };
            let server = previous
                .and_then(|p| p.map.get(&u.name))
                .map(|e| e.server.clone())
                .unwrap_or_default();
            server.configure(&u.password, scram.as_ref());
            map.insert(
                u.name.clone(),
                Arc::new(UserEntry {
                    config: u.clone(),
                    scram,
                    md5,
                    server,
                }),
            );
        }
        Ok(Users { map })
    }

    pub fn get(&self, name: &str) -> Option<Arc<UserEntry>> {
        self.map.get(name).cloned()
    }
}
