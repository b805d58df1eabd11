//! What pgharbor knows to log in to Postgres as one user.
//!
//! One [`ServerCredential`] per user name lives across reloads and is shared
//! by that user's pools, so a password changed in the config (or in the file
//! or variable it names) reaches new server connections of pools already
//! open. For a user configured only by its SCRAM verifier it also holds the
//! ClientKey recovered from the last client that logged in with SCRAM: the
//! server checks a proof made from it against the same verifier, so pgharbor
//! can log in without ever knowing the password. Kept in memory only.

use std::sync::RwLock;

use super::scram::ScramSecret;

/// A ClientKey and the verifier it was checked against.
#[derive(Clone)]
pub struct ClientKey {
    pub key: [u8; 32],
    /// Salt and iterations the server must announce (the same verifier),
    /// and the ServerKey that checks the server's signature.
    pub secret: ScramSecret,
}

/// How pgharbor may log in as the user right now.
#[derive(Clone, Default)]
pub struct ServerLogin {
    /// Plaintext, or an `md5…` hash (usable for md5 only).
    pub password: Option<String>,
    /// Present once a client proved the password against `verifier`.
    pub client_key: Option<ClientKey>,
    /// The user was given only a SCRAM verifier (no password to send).
    pub verifier_only: bool,
}

/// Secrets never reach logs through `{:?}`.
impl std::fmt::Debug for ServerLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerLogin")
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("client_key", &self.client_key.as_ref().map(|_| "<hidden>"))
            .field("verifier_only", &self.verifier_only)
            .finish()
    }
}

#[derive(Default)]
pub struct ServerCredential {
    login: RwLock<ServerLogin>,
}

impl std::fmt::Debug for ServerCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCredential").finish_non_exhaustive()
    }
}

impl ServerCredential {
    /// A credential holding `password` as configured: plaintext, an md5
    /// hash, or a SCRAM verifier (which cannot be sent to a server).
    pub fn new(password: &str) -> ServerCredential {
        let c = ServerCredential::default();
        c.configure(password, None);
        c
    }

    /// Applies the configured password (at load and at each reload). A
    /// ClientKey learnt earlier is kept only while the verifier is the same.
    pub fn configure(&self, password: &str, verifier: Option<&ScramSecret>) {
        let mut login = self.login.write().unwrap_or_else(|e| e.into_inner());
        let verifier_only = password.starts_with("SCRAM-SHA-256$");
        login.password = (!password.is_empty() && !verifier_only).then(|| password.to_owned());
        login.verifier_only = verifier_only;
        let same = |k: &ClientKey| verifier.is_some_and(|v| v.stored_key == k.secret.stored_key);
        if !login.client_key.as_ref().is_some_and(same) || !verifier_only {
            login.client_key = None;
        }
    }

    /// Remembers the ClientKey a client just proved; only for users given
    /// by a verifier (others have a password to log in with).
    pub fn learn(&self, key: [u8; 32], secret: &ScramSecret) {
        let mut login = self.login.write().unwrap_or_else(|e| e.into_inner());
        if login.verifier_only {
            login.client_key = Some(ClientKey {
                key,
                secret: secret.clone(),
            });
        }
    }

    /// What to log in with now.
    pub fn current(&self) -> ServerLogin {
        self.login.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learnt_key_lasts_while_the_verifier_is_the_same() {
        let secret = ScramSecret::from_password("pw");
        let verifier = secret.to_verifier();
        let c = ServerCredential::new(&verifier);
        c.configure(&verifier, Some(&secret));
        assert!(c.current().verifier_only && c.current().password.is_none());
        c.learn([1; 32], &secret);
        assert!(c.current().client_key.is_some());
        // A reload with the same verifier keeps it.
        c.configure(&verifier, Some(&secret));
        assert!(c.current().client_key.is_some());
        // Another verifier (the password changed) forgets it.
        let other = ScramSecret::from_password("pw2");
        c.configure(&other.to_verifier(), Some(&other));
        assert!(c.current().client_key.is_none());
        // A plaintext password needs no key, and none is learnt.
        c.configure("plain", None);
        c.learn([1; 32], &secret);
        let login = c.current();
        assert!(login.client_key.is_none() && !login.verifier_only);
        assert!(!format!("{login:?}").contains("plain"));
    }
}
