//! SSLRequest at the edges, answered as Postgres 15 answers it: a request
//! with plaintext bytes behind it in the same write, with TLS offered (as
//! pgharbor with `[client_tls]`) and without, and a request made again
//! after its `N`. Each case sends the same bytes to Postgres directly and to
//! pgharbor and compares the whole replies: the one-byte answers, and each
//! message's type, severity, SQLSTATE, message, detail and hint (not the
//! source file and line Postgres adds). The Postgres without TLS is the
//! second scratch server, which never turns `ssl` on; the first one has it
//! on once a TLS test asked for it.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// The special startup packets: length 8, then the request code.
fn request(code: u32) -> Vec<u8> {
    let mut p = 8u32.to_be_bytes().to_vec();
    p.extend(code.to_be_bytes());
    p
}

fn ssl_request() -> Vec<u8> {
    request(80_877_103)
}

fn gssenc_request() -> Vec<u8> {
    request(80_877_104)
}

/// A StartupMessage of protocol `major`.0 for the test user and database.
fn startup(major: u16) -> Vec<u8> {
    let mut body = (u32::from(major) << 16).to_be_bytes().to_vec();
    for s in ["user", USER, "database", "app", ""] {
        body.extend(s.as_bytes());
        body.push(0);
    }
    let mut p = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    p.extend(body);
    p
}

/// A StartupMessage no server accepts, which ends a case with Postgres's
/// own FATAL once the requests before it were answered.
fn unsupported_startup() -> Vec<u8> {
    startup(9)
}

/// What a peer sent back, as compared: a one-byte answer to a request,
/// or a message with the fields that say what happened.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Byte(char),
    Message {
        tag: char,
        fields: Vec<(char, String)>,
    },
}

/// The replies in `bytes`: a byte that does not begin a whole message is
/// a one-byte answer. An ErrorResponse keeps severity, SQLSTATE, message,
/// detail and hint.
fn replies(bytes: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = bytes
            .get(at + 1..at + 5)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize);
        let whole = len.filter(|&len| len >= 4 && at + 1 + len <= bytes.len());
        let Some(len) = whole else {
            out.push(Reply::Byte(bytes[at] as char));
            at += 1;
            continue;
        };
        let body = &bytes[at + 5..at + 1 + len];
        let fields = (body.split(|&b| b == 0))
            .filter(|f| matches!(f.first(), Some(b'S' | b'V' | b'C' | b'M' | b'D' | b'H')))
            .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
            .collect();
        out.push(Reply::Message {
            tag: bytes[at] as char,
            fields,
        });
        at += 1 + len;
    }
    out
}

/// Sends `writes` one write each; after each but the last, reads the
/// one-byte answer, and stops there if it is anything else. Then reads up
/// to the close. What came back, in order.
async fn answers(addr: SocketAddr, writes: &[Vec<u8>]) -> Vec<Reply> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut got = Vec::new();
    for (i, bytes) in writes.iter().enumerate() {
        s.write_all(bytes).await.expect("send");
        if i + 1 == writes.len() {
            break;
        }
        let mut one = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut one));
        match read.await {
            Ok(Ok(1)) => got.push(one[0]),
            Ok(_) => return replies(&got),
            Err(_) => panic!("{addr} answered nothing to write {i}"),
        }
        if one[0] != b'N' {
            break;
        }
    }
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got));
    match read.await {
        Ok(_) => replies(&got),
        Err(_) => panic!("{addr} kept the connection open after {got:?}"),
    }
}

/// Each case's replies from Postgres without TLS and from pgharbor
/// without `[client_tls]`, which must be the same.
async fn same_as_postgres(case: &str, writes: Vec<Vec<u8>>) {
    let without_tls = std::net::SocketAddr::from(([127, 0, 0, 1], pg2().port()));
    let postgres = answers(without_tls, &writes).await;
    assert!(
        postgres.iter().any(|r| matches!(r, Reply::Message { .. })),
        "{case}: postgres ended it with a message: {postgres:?}"
    );
    let proxy = start_proxy("transaction", 1).await;
    let pgharbor = answers(proxy.addr(), &writes).await;
    assert_eq!(pgharbor, postgres, "{case}: pgharbor, then postgres");
}

#[tokio::test]
async fn plaintext_sent_with_an_ssl_request_is_refused_after_the_n_as_on_postgres() {
    let mut both = ssl_request();
    both.extend(startup(3));
    same_as_postgres("SSLRequest and StartupMessage in one write", vec![both]).await;
}

/// `bytes` (an SSLRequest and what follows it) sent to `addr` in one
/// write; after the `S`, a TLS handshake trusting `ca` for `localhost`,
/// and what comes through TLS until the peer closes.
async fn answers_through_tls(addr: SocketAddr, bytes: &[u8], ca: &str) -> Vec<Reply> {
    use rustls::pki_types::pem::PemObject;
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("send");
    let mut one = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut one));
    assert!(
        matches!(read.await, Ok(Ok(_))),
        "{addr} answered the SSLRequest"
    );
    assert_eq!(one[0], b'S', "{addr} offers TLS");
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.expect("CA")).expect("add CA");
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let handshake = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, s);
    let mut tls = tokio::time::timeout(Duration::from_secs(10), handshake)
        .await
        .unwrap_or_else(|_| panic!("{addr}: no TLS handshake within 10 s"))
        .expect("TLS handshake");
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut got));
    match read.await {
        // A peer may end TLS without close_notify after its FATAL.
        Ok(_) => replies(&got),
        Err(_) => panic!("{addr} kept the connection open after {got:?}"),
    }
}

/// Postgres 15 answers the SSLRequest with `S`, completes the TLS
/// handshake, and only then refuses the plaintext that came with the
/// request, through TLS (`ProcessStartupPacket` checks its buffer after
/// `secure_open_server`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_sent_with_an_ssl_request_is_refused_through_tls_after_the_handshake_as_on_postgres(
) {
    let mut both = ssl_request();
    both.extend(startup(3));
    let server_ca = tokio::task::spawn_blocking(tls::server_ca)
        .await
        .expect("ssl on");
    let postgres = answers_through_tls(direct_addr(), &both, server_ca).await;
    assert!(
        matches!(postgres.first(), Some(Reply::Message { tag: 'E', .. })),
        "postgres refuses through TLS: {postgres:?}"
    );
    let pki = tls::issue("pgharbor test client CA", &["localhost"]);
    let files = tls::PkiFiles::write(&pki);
    for mode in ["allow", "require"] {
        let text = tls::config("127.0.0.1", &tls::client_tls(mode, &files));
        let proxy = start_proxy_with(&text).await;
        let pgharbor = answers_through_tls(proxy.addr(), &both, &pki.ca_pem).await;
        assert_eq!(
            pgharbor, postgres,
            "client_tls {mode}: pgharbor, then postgres"
        );
    }
}

#[tokio::test]
async fn an_ssl_request_after_its_n_is_an_unsupported_protocol_as_on_postgres() {
    same_as_postgres("SSLRequest twice", vec![ssl_request(), ssl_request()]).await;
    let mut both = ssl_request();
    both.extend(startup(3));
    same_as_postgres(
        "SSLRequest, then SSLRequest and StartupMessage in one write",
        vec![ssl_request(), both],
    )
    .await;
}

/// The Postgres the tests run is built with GSSAPI: it answers a
/// GSSENCRequest with `G` and waits for a GSSAPI handshake, where pgharbor,
/// which has none, answers `N` as a Postgres without GSSAPI does. So the
/// cases with a GSSENCRequest cannot be compared here; the unit tests of
/// `client/startup.rs` hold them, after Postgres 15's
/// `ProcessStartupPacket`. This checks that it is so.
#[tokio::test]
async fn the_postgres_of_the_tests_offers_gssapi_encryption_which_pgharbor_does_not() {
    let mut s = TcpStream::connect(direct_addr()).await.expect("connect");
    s.write_all(&gssenc_request()).await.expect("send");
    let mut one = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut one));
    assert!(matches!(read.await, Ok(Ok(_))), "postgres answered");
    assert_eq!(one[0], b'G', "postgres offers GSSAPI encryption");
    let proxy = start_proxy("transaction", 1).await;
    let answered = answers(proxy.addr(), &[gssenc_request(), unsupported_startup()]).await;
    assert_eq!(answered[0], Reply::Byte('N'), "pgharbor: {answered:?}");
}
