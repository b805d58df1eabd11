//! Server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it.
//!
//! Over TLS, `SCRAM-SHA-256-PLUS` is offered too, with the
//! `tls-server-end-point` channel binding (RFC 5929): the client proves it
//! saw the very certificate pgharbor serves, so a man in the middle holding
//! another certificate cannot relay the login. See [`ChannelBinding`] for
//! which GS2 headers each case accepts. As in PostgreSQL, the user name inside the client-first-message is
//! ignored (the startup packet already named the user).
//!
//! Peers' bytes are parsed without panicking; every error is a
//! [`ScramError`] whose text never echoes what the peer sent.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use rand::Rng as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use ScramError::Malformed;

type HmacSha256 = Hmac<Sha256>;

/// Iterations used for secrets we derive ourselves; PostgreSQL's default.
const DEFAULT_ITERATIONS: u32 = 4096;
/// Salt length used for secrets we derive ourselves; PostgreSQL's default.
const SALT_LEN: usize = 16;
/// Random bytes in our part of the nonce (base64-encoded on the wire).
const SERVER_NONCE_LEN: usize = 18;

/// Why a SCRAM exchange or a verifier was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ScramError {
    /// The client's message does not follow the SCRAM grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// The nonce in client-final-message is not the one we agreed on.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// The client's proof is wrong: it does not know the password.
    #[error("SCRAM client proof is invalid")]
    InvalidProof,
    /// The client asked for a channel binding type other than
    /// `tls-server-end-point`, or for binding where none was offered.
    #[error("SCRAM channel binding is not supported")]
    UnsupportedChannelBinding,
    /// The GS2 header contradicts the mechanism or the offer: a `y` flag
    /// when SCRAM-SHA-256-PLUS was offered (the offer was tampered with),
    /// or no binding after choosing SCRAM-SHA-256-PLUS.
    #[error("SCRAM channel binding negotiation error: {0}")]
    ChannelBindingNegotiation(&'static str),
    /// A stored verifier string could not be parsed.
    #[error("invalid SCRAM verifier: {0}")]
    InvalidVerifier(&'static str),
    /// A step was called out of order, or after the exchange ended.
    #[error("SCRAM exchange step called out of order")]
    OutOfOrder,
    /// The server announced a salt or iteration count other than the
    /// verifier's: it holds another verifier for the user, which a
    /// ClientKey made for this one cannot satisfy.
    #[error("the server's SCRAM salt or iteration count differs from the verifier pgharbor has for the user")]
    OtherVerifier,
    /// The server's signature (server-final-message) did not verify.
    #[error("the server's SCRAM signature did not verify")]
    ServerSignature,
}

/// What the server must know about a password: never the password itself.
#[derive(Clone, Debug)]
pub struct ScramSecret {
    /// PBKDF2 rounds the client must run; sent to it in server-first-message.
    pub iterations: u32,
    /// Salt the client must use; sent to it in server-first-message.
    pub salt: Vec<u8>,
    /// `H(ClientKey)`: checks the client's proof without letting us forge one.
    pub stored_key: [u8; 32],
    /// `HMAC(SaltedPassword, "Server Key")`: proves us to the client.
    pub server_key: [u8; 32],
}

impl ScramSecret {
    /// Derive once from a plaintext password with a fresh random 16-byte salt
    /// and 4096 iterations, as PostgreSQL's `password_encryption = scram-sha-256` does.
    ///
    /// The password's bytes are used as they are, without SASLprep. For ASCII
    /// passwords without control characters SASLprep is the identity, so this
    /// matches what clients compute; a non-ASCII password that SASLprep would
    /// change (e.g. one with a non-breaking space) will not match clients that
    /// normalise it, so store a verifier made by PostgreSQL for such passwords.
    pub fn from_password(password: &str) -> ScramSecret {
        let mut salt = vec![0u8; SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        Self::derive(password.as_bytes(), salt, DEFAULT_ITERATIONS)
    }

    /// A secret no password matches, for a user pgharbor does not know: the
    /// client gets a whole SCRAM exchange and then the same refusal as for
    /// a wrong password, as from Postgres. The salt is derived from the
    /// name with a key made at start, so asking twice shows the same salt
    /// (a real user's does not change either).
    pub fn mock(user: &str) -> ScramSecret {
        static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(rand::random);
        let salt = hmac(key, user.as_bytes())[..SALT_LEN].to_vec();
        ScramSecret {
            iterations: DEFAULT_ITERATIONS,
            salt,
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }

    /// Whether a cleartext password is the one this secret was made from
    /// (for the `password` method against a verifier).
    pub fn matches_password(&self, password: &str) -> bool {
        let other = Self::derive(password.as_bytes(), self.salt.clone(), self.iterations);
        bool::from(other.stored_key.ct_eq(&self.stored_key))
    }

    fn derive(password: &[u8], salt: Vec<u8>, iterations: u32) -> ScramSecret {
        let salted = hi(password, &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        ScramSecret {
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
            salt,
        }
    }

    /// Parse a PostgreSQL verifier
    /// `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`,
    /// as found in `pg_authid.rolpassword`, so that operators can configure
    /// users without putting plaintext passwords in the proxy's config.
    pub fn parse(verifier: &str) -> Result<ScramSecret, ScramError> {
        use ScramError::InvalidVerifier as Bad;
        let rest = verifier
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(Bad("missing SCRAM-SHA-256$ prefix"))?;
        let (params, keys) = rest.split_once('$').ok_or(Bad("missing '$'"))?;
        let (iter, salt) = params.split_once(':').ok_or(Bad("missing ':'"))?;
        let (stored, server) = keys.split_once(':').ok_or(Bad("missing ':'"))?;
        let iterations: u32 = iter.parse().map_err(|_| Bad("bad iteration count"))?;
        if iterations == 0 {
            return Err(Bad("iteration count is zero"));
        }
        let salt = B64.decode(salt).map_err(|_| Bad("bad salt base64"))?;
        if salt.is_empty() {
            return Err(Bad("empty salt"));
        }
        let key = |s: &str| -> Result<[u8; 32], ScramError> {
            let v = B64.decode(s).map_err(|_| Bad("bad key base64"))?;
            v.try_into().map_err(|_| Bad("key is not 32 bytes"))
        };
        Ok(ScramSecret {
            iterations,
            salt,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// The PostgreSQL verifier string for this secret; `parse` reads it back.
    pub fn to_verifier(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// HMAC-SHA-256 keyed without the fallible `new_from_slice`: HMAC zero-pads
/// short keys to the block size and hashes long ones first (RFC 2104), so we
/// do that ourselves and the constructor cannot fail.
fn keyed(key: &[u8]) -> HmacSha256 {
    let mut block = hmac::digest::Key::<HmacSha256>::default();
    if key.len() > block.len() {
        let digest = Sha256::digest(key);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    <HmacSha256 as KeyInit>::new(&block)
}

pub(super) fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = keyed(key);
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// SCRAM's `Hi()`: PBKDF2-HMAC-SHA-256 with a single 32-byte output block.
/// The keyed HMAC state is cloned per round instead of re-keyed, which halves
/// the work of the 4096-round loop.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let prf = keyed(password);
    let mut mac = prf.clone();
    mac.update(salt);
    mac.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = mac.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        let mut mac = prf.clone();
        mac.update(&u);
        u = mac.finalize().into_bytes().into();
        out = xor(out, &u);
    }
    out
}

pub(super) fn xor(mut a: [u8; 32], b: &[u8; 32]) -> [u8; 32] {
    a.iter_mut().zip(b).for_each(|(x, y)| *x ^= y);
    a
}

/// What channel binding one exchange works with (RFC 5802 §6).
#[derive(Clone, Debug)]
pub enum ChannelBinding {
    /// Only SCRAM-SHA-256 was offered (plaintext, or a certificate whose
    /// signature names no single hash): `n` and `y` are both fine.
    NotOffered,
    /// SCRAM-SHA-256-PLUS was offered and the client chose SCRAM-SHA-256.
    /// A `y` flag ("I could bind, but you cannot") then means someone
    /// removed PLUS from the offer on the way: refused, as Postgres does.
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS: the header must be
    /// `p=tls-server-end-point`, and `c=` must carry this hash of our
    /// certificate.
    TlsServerEndPoint(Arc<[u8]>),
}

enum State {
    /// Waiting for client-first-message.
    Initial,
    /// Server-first-message sent; what client-final-message is checked against.
    SentFirst {
        /// The GS2 header the client sent and, with binding, the binding
        /// data: what `c=` must carry (base64-decoded).
        expected_cbind: Vec<u8>,
        /// Client nonce followed by ours, which `r=` must repeat.
        nonce: String,
        /// `client-first-message-bare "," server-first-message ","`: the
        /// start of the AuthMessage both sides sign.
        auth_prefix: String,
    },
    /// Finished, successfully or not; any further call is an error.
    Done,
}

/// One SCRAM-SHA-256 exchange with one client, created after the client
/// chose the mechanism. Each step consumes the previous state, so an exchange
/// can neither be replayed nor resumed after an error.
pub struct ScramServer {
    secret: ScramSecret,
    binding: ChannelBinding,
    server_nonce: String,
    state: State,
    /// The ClientKey the client proved, after a successful exchange.
    client_key: Option<[u8; 32]>,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramServer").finish_non_exhaustive()
    }
}

impl ScramServer {
    /// Start an exchange without channel binding offered.
    pub fn new(secret: ScramSecret) -> ScramServer {
        ScramServer::with_channel_binding(secret, ChannelBinding::NotOffered)
    }

    /// Start an exchange; generates our 18-byte random nonce part (base64).
    pub fn with_channel_binding(secret: ScramSecret, binding: ChannelBinding) -> ScramServer {
        let mut raw = [0u8; SERVER_NONCE_LEN];
        rand::rng().fill_bytes(&mut raw);
        let server_nonce = B64.encode(raw);
        let state = State::Initial;
        ScramServer {
            secret,
            binding,
            server_nonce,
            state,
            client_key: None,
        }
    }

    /// The ClientKey recovered from a successful exchange (ClientProof XOR
    /// ClientSignature, checked against StoredKey): enough to log in to a
    /// server holding the same verifier. Taken once.
    pub fn take_client_key(&mut self) -> Option<[u8; 32]> {
        self.client_key.take()
    }

    /// Input: the client-first-message (from SASLInitialResponse).
    /// Output: the server-first-message for AuthenticationSASLContinue.
    pub fn handle_client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(
            std::mem::replace(&mut self.state, State::Done),
            State::Initial
        ) {
            return Err(ScramError::OutOfOrder);
        }
        let msg = std::str::from_utf8(msg).map_err(|_| Malformed("not UTF-8"))?;
        let (gs2_header, bare) = split_gs2(msg)?;
        let expected_cbind = self.check_binding(gs2_header)?;
        let mut attrs = bare.split(',');
        match attrs.next() {
            Some(a) if a.starts_with("m=") => return Err(Malformed("mandatory extension")),
            Some(a) if a.starts_with("n=") => {}
            _ => return Err(Malformed("missing user name attribute")),
        }
        let client_nonce = attr(attrs.next(), "r=")?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(Malformed("invalid nonce"));
        }
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let salt = B64.encode(&self.secret.salt);
        let server_first = format!("r={nonce},s={salt},i={}", self.secret.iterations);
        self.state = State::SentFirst {
            expected_cbind,
            nonce,
            auth_prefix: format!("{bare},{server_first},"),
        };
        Ok(server_first.into_bytes())
    }

    /// Input: the client-final-message (from SASLResponse). Checks the proof
    /// in constant time. Output: the server-final-message (`v=...`) for
    /// AuthenticationSASLFinal, which proves to the client that we know the key.
    pub fn handle_client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let state = std::mem::replace(&mut self.state, State::Done);
        let State::SentFirst {
            expected_cbind,
            nonce,
            auth_prefix,
        } = state
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| Malformed("not UTF-8"))?;
        // The proof is the last attribute and base64 has no ',' in it.
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(Malformed("missing p="))?;
        let mut attrs = without_proof.split(',');
        let cbind = B64.decode(attr(attrs.next(), "c=")?);
        if cbind.ok().as_deref() != Some(expected_cbind.as_slice()) {
            return Err(Malformed("channel binding data does not match GS2 header"));
        }
        if attr(attrs.next(), "r=")? != nonce {
            return Err(ScramError::NonceMismatch);
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(Malformed("proof is not 32 bytes of base64"))?;

        let auth_message = format!("{auth_prefix}{without_proof}");
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let client_key = xor(client_signature, &proof);
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&self.secret.stored_key)) {
            return Err(ScramError::InvalidProof);
        }
        self.client_key = Some(client_key);
        let signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(signature)).into_bytes())
    }
}

impl ScramServer {
    /// Checks the GS2 header against the mechanism and the offer; returns
    /// what `c=` must carry in client-final-message.
    fn check_binding(&self, gs2_header: &str) -> Result<Vec<u8>, ScramError> {
        let flag = gs2_header.as_bytes()[0];
        match (&self.binding, flag) {
            (ChannelBinding::NotOffered, b'n' | b'y') | (ChannelBinding::Declined, b'n') => {
                Ok(gs2_header.as_bytes().to_vec())
            }
            (ChannelBinding::Declined, b'y') => Err(ScramError::ChannelBindingNegotiation(
                "the client supports channel binding but thinks the server does not, and it does",
            )),
            (ChannelBinding::TlsServerEndPoint(data), b'p') => {
                if gs2_header != "p=tls-server-end-point,," {
                    return Err(ScramError::UnsupportedChannelBinding);
                }
                let mut expected = gs2_header.as_bytes().to_vec();
                expected.extend_from_slice(data);
                Ok(expected)
            }
            (ChannelBinding::TlsServerEndPoint(_), _) => {
                Err(ScramError::ChannelBindingNegotiation(
                    "SCRAM-SHA-256-PLUS chosen without channel binding data",
                ))
            }
            _ => Err(ScramError::UnsupportedChannelBinding),
        }
    }
}

/// The value of a `k=value` attribute that must come next.
fn attr<'a>(field: Option<&'a str>, prefix: &'static str) -> Result<&'a str, ScramError> {
    field
        .and_then(|f| f.strip_prefix(prefix))
        .ok_or(Malformed("attribute missing or out of order"))
}

/// Split client-first-message into its GS2 header (`n,,`, `y,,` or
/// `p=type,,`) and the client-first-message-bare that follows it.
fn split_gs2(msg: &str) -> Result<(&str, &str), ScramError> {
    let (flag, rest) = msg.split_once(',').ok_or(Malformed("missing GS2 header"))?;
    match flag {
        "n" | "y" => {}
        f if f.len() > 2 && f.starts_with("p=") => {}
        _ => return Err(Malformed("bad channel binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or(Malformed("missing GS2 header"))?;
    if !authzid.is_empty() {
        return Err(Malformed("authorization identity unsupported"));
    }
    Ok((&msg[..flag.len() + 2], bare))
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Made by `postgres_protocol::password::scram_sha_256(b"pw")`.
    const VERIFIER: &str = "SCRAM-SHA-256$4096:I8JK7WRF5Et6A+F8v8Pkjg==$\
        0UOeudtwrM1YFd6qsPbqXy1h2IF8wJe0AAdpGSFlr4c=:\
        x5vlzRQJzzcbxDLNlkG/durEs2ZHsEcj4OQCH1a9zIg=";

    fn server() -> ScramServer {
        ScramServer::new(ScramSecret::parse(VERIFIER).expect("verifier"))
    }

    /// The variant name of an error, for table-driven tests.
    fn kind<T: std::fmt::Debug>(r: Result<T, ScramError>) -> String {
        let e = format!("{:?}", r.expect_err("must fail"));
        e.split('(').next().unwrap_or_default().to_owned()
    }

    /// Drive a full exchange with postgres-protocol's client.
    fn exchange(secret: ScramSecret, password: &str, cb: ChannelBinding) -> Result<(), ScramError> {
        exchange_offering(secret, super::ChannelBinding::NotOffered, password, cb)
    }

    /// The same, with the server's side of channel binding given.
    fn exchange_offering(
        secret: ScramSecret,
        offer: super::ChannelBinding,
        password: &str,
        cb: ChannelBinding,
    ) -> Result<(), ScramError> {
        let mut client = ScramSha256::new(password.as_bytes(), cb);
        let mut server = ScramServer::with_channel_binding(secret, offer);
        let first = server.handle_client_first(client.message())?;
        client.update(&first).expect("client accepts server-first");
        let final_msg = client.message().to_vec();
        let last = server.handle_client_final(&final_msg)?;
        client.finish(&last).expect("client accepts server-final");
        // A finished exchange cannot be replayed.
        assert_eq!(kind(server.handle_client_final(&final_msg)), "OutOfOrder");
        Ok(())
    }

    /// A server that has answered a valid client-first, and the `r=` attribute
    /// it expects back. No key derivation, so it is cheap to make many.
    fn after_first() -> (ScramServer, String) {
        let mut server = server();
        let first = server
            .handle_client_first(b"n,,n=,r=cl!ent")
            .expect("first");
        let first = String::from_utf8(first).expect("utf8");
        let nonce = first.split(',').next().expect("r=").to_owned();
        assert!(nonce.starts_with("r=cl!ent") && nonce.len() == "r=cl!ent".len() + 24);
        (server, nonce)
    }

    #[test]
    fn full_exchange_with_postgres_protocol_client() {
        let secret = ScramSecret::from_password("correct horse");
        assert_eq!((secret.iterations, secret.salt.len()), (4096, 16));
        let pw = "correct horse";
        exchange(secret.clone(), pw, ChannelBinding::unsupported()).expect("n,,");
        exchange(secret.clone(), pw, ChannelBinding::unrequested()).expect("y,,");
        let wrong = exchange(secret, "wrong", ChannelBinding::unsupported());
        assert_eq!(kind(wrong), "InvalidProof");
    }

    #[test]
    fn channel_binding_follows_the_offer_and_the_certificate() {
        use super::ChannelBinding as Offer;
        let secret = ScramSecret::from_password("pw");
        let hash: Arc<[u8]> = Sha256::digest(b"our certificate").to_vec().into();
        let bound = Offer::TlsServerEndPoint(hash.clone());
        let client_bound = || ChannelBinding::tls_server_end_point(hash.to_vec());
        exchange_offering(secret.clone(), bound.clone(), "pw", client_bound()).expect("PLUS");
        // A client that saw another certificate (a man in the middle).
        let other = ChannelBinding::tls_server_end_point(Sha256::digest(b"theirs").to_vec());
        let e = exchange_offering(secret.clone(), bound.clone(), "pw", other);
        assert_eq!(kind(e), "Malformed");
        // PLUS chosen, but no binding in the header.
        let e = exchange_offering(secret.clone(), bound, "pw", ChannelBinding::unsupported());
        assert_eq!(kind(e), "ChannelBindingNegotiation");
        // PLUS offered, plain chosen: `n` is fine, `y` means the offer was
        // tampered with.
        exchange_offering(
            secret.clone(),
            Offer::Declined,
            "pw",
            ChannelBinding::unsupported(),
        )
        .expect("n,,");
        let e = exchange_offering(
            secret.clone(),
            Offer::Declined,
            "pw",
            ChannelBinding::unrequested(),
        );
        assert_eq!(kind(e), "ChannelBindingNegotiation");
        // Binding the client asks for when none was offered.
        let e = exchange_offering(secret, Offer::NotOffered, "pw", client_bound());
        assert_eq!(kind(e), "UnsupportedChannelBinding");
    }

    #[test]
    fn postgres_verifier_parses_and_authenticates() {
        for v in [
            postgres_protocol::password::scram_sha_256(b"pw"),
            VERIFIER.into(),
        ] {
            let secret = ScramSecret::parse(&v).expect("parse");
            assert_eq!(secret.to_verifier(), v);
            exchange(secret.clone(), "pw", ChannelBinding::unsupported()).expect("auth");
            let wrong = exchange(secret, "pW", ChannelBinding::unsupported());
            assert_eq!(kind(wrong), "InvalidProof");
        }
    }

    #[test]
    fn pbkdf2_and_hmac_vectors() {
        let hex = |b: [u8; 32]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        // Well-known PBKDF2-HMAC-SHA-256 vectors (password, salt, c, 32).
        let v1 = "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b";
        let v4096 = "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a";
        assert_eq!(hex(hi(b"password", b"salt", 1)), v1);
        assert_eq!(hex(hi(b"password", b"salt", 4096)), v4096);
        // RFC 4231 test case 6: a 131-byte key, longer than the block.
        let msg = b"Test Using Larger Than Block-Size Key - Hash Key First";
        let v6 = "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54";
        assert_eq!(hex(hmac(&[0xaa; 131], msg)), v6);
    }

    #[test]
    fn bad_verifiers_are_rejected() {
        for v in [
            "",
            "md5abcdef",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$4096:c2FsdA==$K",
            "SCRAM-SHA-256$0:c2FsdA==$K:K",
            "SCRAM-SHA-256$-1:c2FsdA==$K:K",
            "SCRAM-SHA-256$4096:$K:K",
            "SCRAM-SHA-256$4096:!!!$K:K",
            "SCRAM-SHA-256$4096:c2FsdA==$c2hvcnQ=:K",
            "SCRAM-SHA-256$4096:c2FsdA==$K:Kx",
        ] {
            let v = v.replace('K', &B64.encode([7u8; 32]));
            assert_eq!(kind(ScramSecret::parse(&v)), "InvalidVerifier", "{v}");
        }
    }

    #[test]
    fn bad_client_first_messages() {
        for (msg, want) in [
            (&b""[..], "Malformed"),
            (b"n,,", "Malformed"),
            (b"n,,n=,", "Malformed"),
            (b"n,,n=,r=", "Malformed"),
            (b"n,,r=abc", "Malformed"),
            (b"n,,m=x,n=,r=abc", "Malformed"),
            (b"n,a=bob,n=,r=abc", "Malformed"),
            (b"x,,n=,r=abc", "Malformed"),
            (b"n,,n=,r=a\x01c", "Malformed"),
            (b"n,,n=,r=\xff\xfe", "Malformed"),
            (b"p=tls-unique,,n=,r=abc", "UnsupportedChannelBinding"),
        ] {
            let mut server = server();
            assert_eq!(kind(server.handle_client_first(msg)), want, "{msg:?}");
            // The exchange is over after an error.
            let again = server.handle_client_first(b"n,,n=,r=abc");
            assert_eq!(kind(again), "OutOfOrder");
        }
        assert_eq!(kind(server().handle_client_final(b"c=biws")), "OutOfOrder");
    }

    #[test]
    fn bad_client_final_messages() {
        let proof = B64.encode([0u8; 32]);
        for (template, want) in [
            ("", "Malformed"),
            ("c=biws,{r}", "Malformed"),
            ("c=biws,{r},p=***", "Malformed"),
            ("c=biws,{r},p=c2hvcnQ=", "Malformed"),
            ("c=eSws,{r},p={p}", "Malformed"),
            ("c=%%%,{r},p={p}", "Malformed"),
            ("{r},c=biws,p={p}", "Malformed"),
            ("c=biws,p={p}", "Malformed"),
            ("c=biws,r=wrongnonce,p={p}", "NonceMismatch"),
            ("c=biws,{r}x,p={p}", "NonceMismatch"),
            ("c=biws,{r},p={p}", "InvalidProof"),
            ("c=biws,{r},x=ext,p={p}", "InvalidProof"),
            ("c=biws,{r},p={p},x=1", "Malformed"),
        ] {
            let (mut server, nonce) = after_first();
            let msg = template.replace("{r}", &nonce).replace("{p}", &proof);
            assert_eq!(
                kind(server.handle_client_final(msg.as_bytes())),
                want,
                "{msg}"
            );
            let again = server.handle_client_final(msg.as_bytes());
            assert_eq!(kind(again), "OutOfOrder");
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = rand::rng();
        let secret = ScramSecret::parse(VERIFIER).expect("verifier");
        let first_msg = b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL".to_vec();
        for i in 0..3000 {
            let mut junk = vec![0u8; rng.next_u32() as usize % 96];
            rng.fill_bytes(&mut junk);
            let _ = ScramSecret::parse(&String::from_utf8_lossy(&junk));
            let (mut server, nonce) = after_first();
            let final_msg = format!("c=biws,{nonce},p={}", B64.encode([1u8; 32])).into_bytes();
            let _ = server.handle_client_final(&junk);
            // Random bytes, then truncated and corrupted real-shaped messages.
            for real in [&junk, &first_msg, &final_msg] {
                let mut m = real[..i % (real.len() + 1)].to_vec();
                if let Some(b) = m.get_mut(rng.next_u32() as usize % real.len().max(1)) {
                    *b = rng.next_u32() as u8;
                }
                let _ = ScramServer::new(secret.clone()).handle_client_first(&m);
                let _ = after_first().0.handle_client_final(&m);
            }
        }
    }
}
