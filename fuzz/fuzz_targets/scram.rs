//! The server side of SCRAM-SHA-256: client-first-message and
//! client-final-message as a client may send them, before it proved
//! anything.
//!
//! The first byte picks the mode and the channel binding offered:
//! - mode 0: the rest is a client-first-message;
//! - mode 1: a valid client-first-message, then the rest as the
//!   client-final-message, with every `@N` replaced by the nonce the server
//!   chose (so the fuzzer gets past the nonce check to the proof);
//! - mode 2: the rest is a password; postgres-protocol's client logs in
//!   with it, which must succeed and recover the ClientKey, and with a
//!   changed password, which must fail.
//!
//! Must hold: no panic; a step that failed ends the exchange; a
//! server-first-message repeats the client's nonce and the verifier's salt
//! and iterations; no client-final-message made without the password is
//! accepted.
#![no_main]

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use pgharbor::auth::scram::{ChannelBinding, ScramError, ScramSecret, ScramServer};
use postgres_protocol::authentication::sasl;
use sha2::{Digest, Sha256};

/// Made by `postgres_protocol::password::scram_sha_256(b"pw")`.
const VERIFIER: &str = "SCRAM-SHA-256$4096:I8JK7WRF5Et6A+F8v8Pkjg==$\
    0UOeudtwrM1YFd6qsPbqXy1h2IF8wJe0AAdpGSFlr4c=:\
    x5vlzRQJzzcbxDLNlkG/durEs2ZHsEcj4OQCH1a9zIg=";

const CERT_HASH: [u8; 32] = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let offer = match (mode >> 2) % 3 {
        0 => ChannelBinding::NotOffered,
        1 => ChannelBinding::Declined,
        _ => ChannelBinding::TlsServerEndPoint(Arc::from(&CERT_HASH[..])),
    };
    match mode % 4 {
        0 => client_first(rest, offer),
        1 => client_final(rest, offer),
        _ => whole_exchange(rest, offer),
    }
});

fn secret() -> ScramSecret {
    ScramSecret::parse(VERIFIER).expect("verifier")
}

fn client_first(msg: &[u8], offer: ChannelBinding) {
    let secret = secret();
    let mut server = ScramServer::with_channel_binding(secret.clone(), offer);
    match server.handle_client_first(msg) {
        Ok(first) => {
            let first = String::from_utf8(first).expect("server-first is UTF-8");
            let text = std::str::from_utf8(msg).expect("accepted only UTF-8");
            let nonce = text
                .split(',')
                .find_map(|a| a.strip_prefix("r="))
                .expect("accepted only with r=");
            let want_tail = format!(",s={},i={}", B64.encode(&secret.salt), secret.iterations);
            assert!(first.starts_with(&format!("r={nonce}")), "{first}");
            assert!(first.ends_with(&want_tail), "{first}");
            // The server's half of the nonce: 18 random bytes in base64.
            let ours = &first[2 + nonce.len()..first.len() - want_tail.len()];
            assert_eq!(B64.decode(ours).map(|b| b.len()), Ok(18), "{first}");
            // A second client-first is out of order.
            let again = server.handle_client_first(msg);
            assert!(matches!(again, Err(ScramError::OutOfOrder)));
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(matches!(
                server.handle_client_first(b"n,,n=,r=abc"),
                Err(ScramError::OutOfOrder)
            ));
            assert!(matches!(
                server.handle_client_final(b"c=biws,r=abc,p="),
                Err(ScramError::OutOfOrder)
            ));
        }
    }
}

fn client_final(template: &[u8], offer: ChannelBinding) {
    let header = match offer {
        ChannelBinding::TlsServerEndPoint(_) => "p=tls-server-end-point,,",
        _ => "n,,",
    };
    let mut server = ScramServer::with_channel_binding(secret(), offer);
    let first = server
        .handle_client_first(format!("{header}n=,r=fuzzclient").as_bytes())
        .expect("valid client-first");
    let first = String::from_utf8(first).expect("UTF-8");
    let nonce = first
        .split(',')
        .next()
        .and_then(|r| r.strip_prefix("r="))
        .expect("r=");
    let msg = replace(template, b"@N", nonce.as_bytes());
    let result = server.handle_client_final(&msg);
    // Nobody here knows the password "pw" the verifier was made from.
    assert!(result.is_err(), "accepted a forged proof: {msg:?}");
    assert!(server.take_client_key().is_none());
    assert!(matches!(
        server.handle_client_final(&msg),
        Err(ScramError::OutOfOrder)
    ));
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// A verifier for `password` with one PBKDF2 round (cheap enough to make
/// at every run), and the ClientKey a client derives from it.
fn cheap_secret(password: &[u8]) -> (ScramSecret, [u8; 32]) {
    let salt = b"fuzz-salt".to_vec();
    let mac = |key: &[u8], msg: &[u8]| -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
        m.update(msg);
        m.finalize().into_bytes().into()
    };
    let mut salted_in = salt.clone();
    salted_in.extend_from_slice(&1u32.to_be_bytes());
    let salted = mac(password, &salted_in);
    let client_key = mac(&salted, b"Client Key");
    let verifier = format!(
        "SCRAM-SHA-256$1:{}${}:{}",
        B64.encode(&salt),
        B64.encode(Sha256::digest(client_key)),
        B64.encode(mac(&salted, b"Server Key")),
    );
    let secret = ScramSecret::parse(&verifier).expect("made here");
    assert_eq!(secret.to_verifier(), verifier);
    (secret, client_key)
}

fn whole_exchange(password: &[u8], offer: ChannelBinding) {
    // postgres-protocol's client applies SASLprep, which leaves printable
    // ASCII as it is (and pgharbor's verifiers hold the bytes as given).
    let password: Vec<u8> = password
        .iter()
        .copied()
        .filter(|b| b.is_ascii_graphic() || *b == b' ')
        .collect();
    let password = &password[..];
    let (secret, client_key) = cheap_secret(password);
    let binding = || match offer {
        ChannelBinding::TlsServerEndPoint(_) => {
            sasl::ChannelBinding::tls_server_end_point(CERT_HASH.to_vec())
        }
        _ => sasl::ChannelBinding::unsupported(),
    };
    // The right password logs in, and the server learns the ClientKey.
    let mut client = sasl::ScramSha256::new(password, binding());
    let mut server = ScramServer::with_channel_binding(secret.clone(), offer.clone());
    let first = server
        .handle_client_first(client.message())
        .expect("client-first of a real client");
    client.update(&first).expect("client accepts server-first");
    let last = server
        .handle_client_final(client.message())
        .expect("the right password");
    client.finish(&last).expect("client accepts server-final");
    assert_eq!(server.take_client_key(), Some(client_key));
    // Another password does not.
    let mut other = password.to_vec();
    other.push(b'!');
    let mut client = sasl::ScramSha256::new(&other, binding());
    let mut server = ScramServer::with_channel_binding(secret, offer);
    let first = server
        .handle_client_first(client.message())
        .expect("client-first of a real client");
    client.update(&first).expect("client accepts server-first");
    let result = server.handle_client_final(client.message());
    assert!(matches!(result, Err(ScramError::InvalidProof)));
    assert!(server.take_client_key().is_none());
}
