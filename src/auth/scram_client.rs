//! Client side of SCRAM-SHA-256 with a ClientKey instead of a password:
//! how pgharbor logs in to Postgres for a user it knows only by verifier.
//!
//! The proof SCRAM asks for is `ClientKey XOR HMAC(StoredKey, AuthMessage)`
//! and `StoredKey = H(ClientKey)`, so the ClientKey a client proved to
//! pgharbor (against the verifier copied from `pg_authid`) satisfies a server
//! holding that same verifier; the salted password is never needed. The
//! server must announce the verifier's salt and iterations, else it holds
//! another verifier and the exchange stops before a proof is sent.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::Rng as _;
use subtle::ConstantTimeEq;

use super::credential::ClientKey;
use super::scram::{hmac, xor, ScramError};
use ScramError::Malformed;

/// Random bytes in our nonce, as libpq sends (18, base64-encoded).
const CLIENT_NONCE_LEN: usize = 18;

/// One exchange with one server.
pub struct KeyClient {
    key: ClientKey,
    /// `n,,` or `p=tls-server-end-point,,`.
    gs2_header: &'static str,
    /// The server certificate's hash, with channel binding.
    cbind_data: Vec<u8>,
    client_nonce: String,
    /// What [`KeyClient::message`] returns: client-first, then client-final.
    message: Vec<u8>,
    /// The server signature expected in server-final-message.
    server_signature: Option<[u8; 32]>,
}

impl KeyClient {
    /// Starts an exchange; `end_point` (the hash of the server's
    /// certificate) selects SCRAM-SHA-256-PLUS.
    pub fn new(key: ClientKey, end_point: Option<Vec<u8>>) -> KeyClient {
        let mut raw = [0u8; CLIENT_NONCE_LEN];
        rand::rng().fill_bytes(&mut raw);
        let client_nonce = B64.encode(raw);
        let gs2_header = if end_point.is_some() {
            "p=tls-server-end-point,,"
        } else {
            "n,,"
        };
        let message = format!("{gs2_header}n=,r={client_nonce}").into_bytes();
        KeyClient {
            key,
            gs2_header,
            cbind_data: end_point.unwrap_or_default(),
            client_nonce,
            message,
            server_signature: None,
        }
    }

    /// The message to send next.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// Reads server-first-message and prepares client-final-message.
    pub fn update(&mut self, server_first: &[u8]) -> Result<(), ScramError> {
        if self.server_signature.is_some() {
            return Err(ScramError::OutOfOrder);
        }
        let text = std::str::from_utf8(server_first).map_err(|_| Malformed("not UTF-8"))?;
        let mut attrs = text.split(',');
        let nonce = field(attrs.next(), "r=")?;
        let salt = field(attrs.next(), "s=")?;
        let iterations = field(attrs.next(), "i=")?;
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(ScramError::NonceMismatch);
        }
        let secret = &self.key.secret;
        let salt = B64.decode(salt).map_err(|_| Malformed("bad salt base64"))?;
        if salt != secret.salt || iterations.parse::<u32>().ok() != Some(secret.iterations) {
            return Err(ScramError::OtherVerifier);
        }
        let mut cbind = self.gs2_header.as_bytes().to_vec();
        cbind.extend_from_slice(&self.cbind_data);
        let without_proof = format!("c={},r={nonce}", B64.encode(cbind));
        let auth_message = format!("n=,r={},{text},{without_proof}", self.client_nonce);
        let signature = hmac(&secret.stored_key, auth_message.as_bytes());
        let proof = xor(self.key.key, &signature);
        self.server_signature = Some(hmac(&secret.server_key, auth_message.as_bytes()));
        self.message = format!("{without_proof},p={}", B64.encode(proof)).into_bytes();
        Ok(())
    }

    /// Checks server-final-message: the server proves it knows ServerKey.
    pub fn finish(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let expected = self.server_signature.ok_or(ScramError::OutOfOrder)?;
        let got = server_final
            .strip_prefix(b"v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::ServerSignature)?;
        if !bool::from(got.as_slice().ct_eq(&expected)) {
            return Err(ScramError::ServerSignature);
        }
        Ok(())
    }
}

/// The value of a `k=value` attribute that must come next.
fn field<'a>(a: Option<&'a str>, prefix: &'static str) -> Result<&'a str, ScramError> {
    a.and_then(|f| f.strip_prefix(prefix))
        .ok_or(Malformed("attribute missing or out of order"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::{ChannelBinding, ScramSecret, ScramServer};

    /// A ClientKey as a client's login to pgharbor yields it.
    fn learnt_key(secret: &ScramSecret, password: &str) -> ClientKey {
        use postgres_protocol::authentication::sasl::{self, ScramSha256};
        let mut client = ScramSha256::new(password.as_bytes(), sasl::ChannelBinding::unsupported());
        let mut server = ScramServer::new(secret.clone());
        let first = server.handle_client_first(client.message()).expect("first");
        client.update(&first).expect("update");
        let last = server.handle_client_final(client.message()).expect("final");
        client.finish(&last).expect("finish");
        ClientKey {
            key: server.take_client_key().expect("key"),
            secret: secret.clone(),
        }
    }

    fn run(
        key: ClientKey,
        server_secret: ScramSecret,
        bind: Option<Vec<u8>>,
    ) -> Result<(), ScramError> {
        let offer = match &bind {
            Some(h) => ChannelBinding::TlsServerEndPoint(h.clone().into()),
            None => ChannelBinding::NotOffered,
        };
        let mut server = ScramServer::with_channel_binding(server_secret, offer);
        let mut client = KeyClient::new(key, bind);
        let first = server.handle_client_first(client.message())?;
        client.update(&first)?;
        let last = server.handle_client_final(client.message())?;
        client.finish(&last)?;
        client
            .finish(b"v=AAAA")
            .expect_err("a wrong signature is refused");
        Ok(())
    }

    #[test]
    fn a_learnt_client_key_logs_in_to_a_server_with_the_same_verifier() {
        let secret = ScramSecret::from_password("pw");
        let key = learnt_key(&secret, "pw");
        run(key.clone(), secret.clone(), None).expect("SCRAM-SHA-256");
        run(key, secret, Some(vec![7; 32])).expect("SCRAM-SHA-256-PLUS");
    }

    #[test]
    fn another_verifier_of_the_same_password_is_refused_before_a_proof() {
        let secret = ScramSecret::from_password("pw");
        let key = learnt_key(&secret, "pw");
        let other = ScramSecret::from_password("pw");
        let e = run(key, other, None).expect_err("other salt");
        assert!(matches!(e, ScramError::OtherVerifier), "{e:?}");
    }

    #[test]
    fn malformed_server_first_messages_are_errors() {
        let secret = ScramSecret::from_password("pw");
        let key = learnt_key(&secret, "pw");
        for m in [
            &b""[..],
            b"r=x",
            b"s=a,r=b,i=1",
            b"r=,s=AAAA,i=4096",
            b"\xff",
        ] {
            let mut c = KeyClient::new(key.clone(), None);
            assert!(c.update(m).is_err(), "{m:?}");
        }
    }
}
