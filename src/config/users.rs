//! `[[users]]`: how clients authenticate to pgharbor, and the credentials
//! pgharbor uses toward Postgres.

use serde::Deserialize;

use super::error::invalid;
use super::ConfigError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    Trust,
    Md5,
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// The password in cleartext: refused on a connection without TLS
    /// unless `client_tls.allow_plaintext_password`.
    Password,
    /// A client certificate that chains to `client_tls.ca_file` and whose
    /// CN is the user name; no password.
    Cert,
}

impl AuthType {
    /// The authentication method this `auth_type` names.
    pub fn method(self) -> crate::auth::hba::Method {
        use crate::auth::hba::Method;
        match self {
            AuthType::Trust => Method::Trust,
            AuthType::Md5 => Method::Md5,
            AuthType::ScramSha256 => Method::ScramSha256,
            AuthType::Password => Method::Password,
            AuthType::Cert => Method::Cert,
        }
    }
}

/// One `[[users]]` entry: how clients authenticate to pgharbor, and the
/// credentials pgharbor uses toward Postgres.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Plaintext, `md5…` or `SCRAM-SHA-256$…`; plaintext is needed for
    /// pgharbor to log in to a server that asks for a password. After
    /// loading it also holds what `password_env` or `password_file` gave.
    #[serde(default)]
    pub password: String,
    /// The name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// A file holding the password (a mounted Kubernetes Secret); one
    /// trailing newline is dropped.
    pub password_file: Option<String>,
    #[serde(default)]
    pub auth_type: AuthType,
}

/// Never prints the password: configs end up in debug logs and panics.
impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("auth_type", &self.auth_type)
            .finish_non_exhaustive()
    }
}

impl UserConfig {
    /// Fills `password` from `password_env` or `password_file`, so that a
    /// reload re-reads them. Errors name the key and never the secret.
    pub(super) fn resolve_password(&mut self, key: &str) -> Result<(), ConfigError> {
        let given = [
            !self.password.is_empty(),
            self.password_env.is_some(),
            self.password_file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(invalid(
                format!("{key}.password"),
                "give only one of password, password_env and password_file",
            ));
        }
        if let Some(name) = &self.password_env {
            let key = format!("{key}.password_env");
            self.password = std::env::var(name).map_err(|e| {
                let why = match e {
                    std::env::VarError::NotPresent => "is not set",
                    std::env::VarError::NotUnicode(_) => "is not valid UTF-8",
                };
                invalid(&key, format!("environment variable `{name}` {why}"))
            })?;
            if self.password.is_empty() {
                return Err(invalid(
                    key,
                    format!("environment variable `{name}` is empty"),
                ));
            }
        } else if let Some(path) = &self.password_file {
            let key = format!("{key}.password_file");
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(&key, format!("cannot read `{path}`: {e}")))?;
            let text = text.strip_suffix('\n').unwrap_or(&text);
            self.password = text.strip_suffix('\r').unwrap_or(text).to_owned();
            if self.password.is_empty() {
                return Err(invalid(key, format!("`{path}` is empty")));
            }
        }
        Ok(())
    }
}
