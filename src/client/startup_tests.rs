//! Unit tests of the start of a client connection (`startup.rs`) over an
//! in-memory pipe: the client's end writes raw packets, pgharbor's end runs
//! the same functions the accept path runs on a TCP socket. What only a
//! real socket or TLS shows (peeking at a TLS record, the handshake) stays
//! in the integration tests.

use std::future::Future;
use std::time::Duration;

use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::time::timeout;

use super::*;
use crate::config::ClientTlsMode;
use crate::protocol::startup::{MAX_STARTUP_PACKET, PROTOCOL_3_0};

/// Every wait is bounded: a step that hangs fails its test instead.
const WAIT: Duration = Duration::from_secs(5);

const CANCEL_REQUEST: u32 = 80_877_102;

impl PeekByte for DuplexStream {
    /// Never reached: these tests offer no TLS, and `first_packet` peeks
    /// only when it does.
    async fn peek_byte(&mut self) -> std::io::Result<Option<u8>> {
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

fn no_tls() -> ClientTls {
    ClientTls {
        mode: ClientTlsMode::Disable,
        acceptor: None,
        end_point: None,
        not_after: None,
        client_certs: None,
    }
}

/// An untagged packet: its length, `code`, then `body`.
fn packet(code: u32, body: &[u8]) -> Vec<u8> {
    let len = (8 + body.len()) as u32;
    let mut p = len.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(body);
    p
}

fn startup_message(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in params {
        for s in [k, v] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
    }
    body.push(0);
    packet(version, &body)
}

/// The parameters of a StartupMessage with `params`, as pgharbor reads them.
fn startup_params(params: &[(&str, &str)]) -> StartupParams {
    let mut buf = BytesMut::from(&startup_message(PROTOCOL_3_0, params)[..]);
    match split_startup(&mut buf) {
        Ok(Some(StartupPacket::Startup { params, .. })) => params,
        other => panic!("not a StartupMessage: {other:?}"),
    }
}

/// Runs `first_packet` on pgharbor's end of a pipe while `client` plays
/// the other end. pgharbor's end closes when `first_packet` returns, so a
/// client reading to the end gets every byte it was answered.
async fn first_packet_with<F: Future>(
    client: impl FnOnce(DuplexStream) -> F,
) -> (Result<FirstPacket, StartupError>, F::Output) {
    let (theirs, mut ours) = duplex(64 * 1024);
    let tls = no_tls();
    let pgharbor = async move {
        let mut buf = BytesMut::new();
        first_packet(&mut ours, &mut buf, &tls).await
    };
    timeout(WAIT, async { tokio::join!(pgharbor, client(theirs)) })
        .await
        .expect("the first packet is read or refused, not waited for forever")
}

/// A client that sends `bytes` (closing its end after them when
/// `then_close`) and returns every byte it was answered.
async fn send_and_read(mut c: DuplexStream, bytes: Vec<u8>, then_close: bool) -> Vec<u8> {
    c.write_all(&bytes).await.expect("the pipe takes the bytes");
    if then_close {
        c.shutdown().await.expect("the client's end closes");
    }
    let mut answered = Vec::new();
    c.read_to_end(&mut answered)
        .await
        .expect("the answer reads");
    answered
}

/// A client that asks for encryption with `request`, reads the one-byte
/// answer, then sends a StartupMessage for `alice`; returns the answer and
/// whatever followed it.
async fn ask_then_start(mut c: DuplexStream, request: u32) -> (u8, Vec<u8>) {
    c.write_all(&packet(request, &[])).await.expect("sent");
    let mut answer = [0u8; 1];
    c.read_exact(&mut answer).await.expect("a one-byte answer");
    let startup = startup_message(PROTOCOL_3_0, &[("user", "alice")]);
    c.write_all(&startup).await.expect("sent");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).await.expect("the rest reads");
    (answer[0], rest)
}

/// The version and `user` of a StartupMessage that `first_packet` read.
fn read_startup(read: Result<FirstPacket, StartupError>) -> (u32, String) {
    match read {
        Ok(FirstPacket::Plain(Request::Startup { version, params })) => {
            (version, params.get("user").unwrap_or_default().to_owned())
        }
        Ok(FirstPacket::Plain(Request::Cancel { .. })) => panic!("read as a CancelRequest"),
        Ok(FirstPacket::Tls { .. }) => panic!("read as the start of TLS"),
        Err(e) => panic!("refused: {e:?}"),
    }
}

/// The error `first_packet` ended with.
fn error_of(read: Result<FirstPacket, StartupError>) -> StartupError {
    match read {
        Err(e) => e,
        Ok(_) => panic!("accepted"),
    }
}

/// The error a refused startup sends the client.
fn refusal(read: Result<FirstPacket, StartupError>) -> PgError {
    match error_of(read) {
        StartupError::Refuse(e) => e,
        e => panic!("not refused with an error to send: {e:?}"),
    }
}

/// Asks for encryption with `request`, then checks that the answer was
/// `N` alone and that the StartupMessage after it was read.
async fn check_refused_then_started(request: u32) {
    let (read, (answer, rest)) = first_packet_with(|c| ask_then_start(c, request)).await;
    assert_eq!(answer, b'N');
    assert_eq!(read_startup(read), (PROTOCOL_3_0, "alice".to_owned()));
    assert!(rest.is_empty(), "nothing but the N is sent: {rest:?}");
}

#[tokio::test]
async fn an_ssl_request_without_tls_is_answered_n_and_the_startup_message_after_it_is_read() {
    check_refused_then_started(SSL_REQUEST).await;
}

#[tokio::test]
async fn a_gssenc_request_is_answered_n_and_the_startup_message_after_it_is_read() {
    check_refused_then_started(GSSENC_REQUEST).await;
}

/// A client that sends `writes`, reading the one-byte answer after each
/// but the last, then everything up to the close; returns all it read.
async fn send_in_turn(mut c: DuplexStream, writes: Vec<Vec<u8>>) -> Vec<u8> {
    let mut answered = Vec::new();
    for (i, bytes) in writes.iter().enumerate() {
        c.write_all(bytes).await.expect("sent");
        if i + 1 < writes.len() {
            let mut one = [0u8; 1];
            c.read_exact(&mut one).await.expect("a one-byte answer");
            answered.push(one[0]);
        }
    }
    c.read_to_end(&mut answered).await.expect("the rest reads");
    answered
}

// The Postgres the integration tests run answers a GSSENCRequest with `G`
// (it is built with GSSAPI), so what a Postgres 15 without GSSAPI answers,
// as pgharbor must, is checked here: its `ProcessStartupPacket` tracks an
// SSLRequest and a GSSENCRequest apart. After an `N` the other kind may
// come, and after that the first again; the same kind twice in a row is
// read as a StartupMessage of protocol 1234.5679 (SSL) or 1234.5680
// (GSSENC). The words are those of its `unsupported frontend protocol`
// refusal, which the integration tests compare for the SSLRequest.

/// Sends `writes` in turn and checks that the client read `answered`, then
/// was refused with a FATAL of `code` and `message`.
async fn check_refused_in_turn(writes: Vec<Vec<u8>>, answered: &[u8], code: &str, message: &str) {
    let (read, got) = first_packet_with(|c| send_in_turn(c, writes)).await;
    assert_eq!(got, answered);
    let e = refusal(read);
    assert_eq!((e.code, e.message.as_str()), (code, message));
    assert!(e.is_fatal());
}

#[tokio::test]
async fn a_gssenc_request_after_its_n_is_refused_as_protocol_1234_5680() {
    let writes = vec![packet(GSSENC_REQUEST, &[]), packet(GSSENC_REQUEST, &[])];
    let words = "unsupported frontend protocol 1234.5680: server supports 3.0 to 3.0";
    check_refused_in_turn(writes, b"N", sqlstate::FEATURE_NOT_SUPPORTED, words).await;
}

#[tokio::test]
async fn ssl_and_gssenc_requests_taking_turns_are_each_answered_n() {
    let (ssl, gss) = (packet(SSL_REQUEST, &[]), packet(GSSENC_REQUEST, &[]));
    let start = startup_message(PROTOCOL_3_0, &[("user", "alice")]);
    let writes = vec![ssl.clone(), gss.clone(), ssl, gss, start];
    let (read, answered) = first_packet_with(|c| send_in_turn(c, writes)).await;
    assert_eq!(answered, b"NNNN");
    assert_eq!(read_startup(read), (PROTOCOL_3_0, "alice".to_owned()));
}

#[tokio::test]
async fn an_ssl_request_right_after_its_n_is_refused_even_after_a_gssenc_request() {
    let (ssl, gss) = (packet(SSL_REQUEST, &[]), packet(GSSENC_REQUEST, &[]));
    let words = "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.0";
    let writes = vec![gss, ssl.clone(), ssl];
    check_refused_in_turn(writes, b"NN", sqlstate::FEATURE_NOT_SUPPORTED, words).await;
}

#[tokio::test]
async fn plaintext_sent_with_a_gssenc_request_gets_the_n_then_a_fatal() {
    let mut both = packet(GSSENC_REQUEST, &[]);
    both.extend(startup_message(PROTOCOL_3_0, &[("user", "alice")]));
    let words = "received unencrypted data after GSSAPI encryption request";
    check_refused_in_turn(vec![both], b"N", sqlstate::PROTOCOL_VIOLATION, words).await;
}

#[tokio::test]
async fn a_cancel_request_is_read_as_its_pid_and_secret_and_answered_nothing() {
    let mut body = 4242i32.to_be_bytes().to_vec();
    body.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let cancel = packet(CANCEL_REQUEST, &body);
    let (read, answered) = first_packet_with(|c| send_and_read(c, cancel, false)).await;
    match read {
        Ok(FirstPacket::Plain(Request::Cancel { pid, secret })) => {
            assert_eq!(pid, 4242);
            assert_eq!(secret, [0xde, 0xad, 0xbe, 0xef]);
        }
        Ok(_) => panic!("not read as a CancelRequest"),
        Err(e) => panic!("refused: {e:?}"),
    }
    assert!(answered.is_empty(), "a CancelRequest gets no answer");
}

#[tokio::test]
async fn a_startup_packet_shorter_than_8_bytes_is_refused_as_a_protocol_violation() {
    // The length 7, then the 3 bytes it says follow.
    let short = vec![0, 0, 0, 7, 0, 3, 0];
    let (read, answered) = first_packet_with(|c| send_and_read(c, short, false)).await;
    let e = refusal(read);
    assert_eq!(e.code, sqlstate::PROTOCOL_VIOLATION);
    assert_eq!(e.message, "invalid startup packet length 7");
    assert!(answered.is_empty(), "the refusal is the caller's to send");
}

#[tokio::test]
async fn a_startup_packet_longer_than_the_maximum_is_refused_before_its_body_arrives() {
    // 10005 is the shortest length Postgres refuses too (it allows 10000
    // bytes after the length word). Only the length is sent: the refusal
    // must not wait for the rest.
    let long = 10_005u32.to_be_bytes().to_vec();
    let (read, _) = first_packet_with(|c| send_and_read(c, long, false)).await;
    let e = refusal(read);
    assert_eq!(e.code, sqlstate::PROTOCOL_VIOLATION);
    assert_eq!(e.message, "invalid startup packet length 10005");
}

#[tokio::test]
async fn a_startup_packet_of_the_maximum_length_is_read() {
    // Postgres 15 reads a startup packet of 10004 bytes (10000 after the
    // length word), and refuses 10005.
    assert_eq!(MAX_STARTUP_PACKET, 10_004);
    let fixed = startup_message(PROTOCOL_3_0, &[("user", "alice"), ("application_name", "")]);
    let name = "a".repeat(MAX_STARTUP_PACKET - fixed.len());
    let full = startup_message(
        PROTOCOL_3_0,
        &[("user", "alice"), ("application_name", &name)],
    );
    assert_eq!(full.len(), MAX_STARTUP_PACKET);
    let (read, _) = first_packet_with(|c| send_and_read(c, full, false)).await;
    assert_eq!(read_startup(read), (PROTOCOL_3_0, "alice".to_owned()));
}

#[tokio::test]
async fn a_terminate_before_the_startup_packet_closes_without_an_error_to_send() {
    // node-postgres's `connect(); end()`: Terminate, whose bytes read as a
    // startup length of 1476395008.
    let terminate = vec![b'X', 0, 0, 0, 4];
    let (read, _) = first_packet_with(|c| send_and_read(c, terminate, false)).await;
    let e = error_of(read);
    assert!(matches!(e, StartupError::EarlyTerminate), "{e:?}");
}

#[tokio::test]
async fn a_client_closing_before_a_whole_startup_packet_is_reported_closed() {
    let half = startup_message(PROTOCOL_3_0, &[("user", "alice")])[..10].to_vec();
    let (read, _) = first_packet_with(|c| send_and_read(c, half, true)).await;
    let e = error_of(read);
    assert!(matches!(e, StartupError::Closed), "{e:?}");
}

#[tokio::test]
async fn a_client_closing_before_any_byte_is_reported_closed() {
    let (read, _) = first_packet_with(|c| send_and_read(c, Vec::new(), true)).await;
    let e = error_of(read);
    assert!(matches!(e, StartupError::Closed), "{e:?}");
}

/// Runs `login_request` for a StartupMessage of `version` with `params`;
/// returns its result and every byte it sent.
async fn login_with(
    version: u32,
    params: &[(&str, &str)],
) -> (Result<LoginRequest, StartupError>, Vec<u8>) {
    let (mut theirs, mut ours) = duplex(64 * 1024);
    let params = startup_params(params);
    let login = timeout(WAIT, login_request(&mut ours, version, params))
        .await
        .expect("login_request returns");
    drop(ours);
    let mut sent = Vec::new();
    timeout(WAIT, theirs.read_to_end(&mut sent))
        .await
        .expect("the pipe's end is reached")
        .expect("the pipe reads");
    (login, sent)
}

#[tokio::test]
async fn protocol_3_0_is_accepted_without_a_negotiation_message() {
    let (login, sent) = login_with(PROTOCOL_3_0, &[("user", "alice"), ("database", "shop")]).await;
    let login = login.expect("accepted");
    assert_eq!((login.user(), login.database()), ("alice", "shop"));
    assert!(sent.is_empty(), "nothing is sent for 3.0: {sent:?}");
}

#[tokio::test]
async fn unsupported_major_versions_are_refused_as_postgres_15_refuses_them() {
    for major in [2u32, 4] {
        let (login, sent) = login_with(major << 16, &[("user", "alice")]).await;
        match login {
            Err(StartupError::Refuse(e)) => {
                assert_eq!(e.code, sqlstate::FEATURE_NOT_SUPPORTED);
                // Postgres 15's words, read from its ErrorResponse.
                let words =
                    format!("unsupported frontend protocol {major}.0: server supports 3.0 to 3.0");
                assert_eq!(e.message, words);
            }
            Err(e) => panic!("{major}.0 not refused with an error to send: {e:?}"),
            Ok(_) => panic!("{major}.0 accepted"),
        }
        assert!(sent.is_empty(), "nothing is sent before the refusal");
    }
}

/// The NegotiateProtocolVersion message's unrecognized options, when
/// `sent` is one.
fn negotiated_options(sent: &[u8]) -> Vec<String> {
    assert_eq!(
        sent.first(),
        Some(&b'v'),
        "not a NegotiateProtocolVersion: {sent:?}"
    );
    let len = u32::from_be_bytes(sent[1..5].try_into().expect("4 bytes")) as usize;
    assert_eq!(sent.len(), 1 + len, "one whole message");
    // Postgres 15 sends its whole newest version, 3.0, as 0x00030000.
    let version = u32::from_be_bytes(sent[5..9].try_into().expect("4 bytes"));
    assert_eq!(
        version, PROTOCOL_3_0,
        "the newest version, as Postgres sends it"
    );
    let count = u32::from_be_bytes(sent[9..13].try_into().expect("4 bytes")) as usize;
    let names: Vec<String> = sent[13..]
        .split(|&b| b == 0)
        .take(count)
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert_eq!(names.len(), count);
    names
}

#[tokio::test]
async fn a_minor_version_above_3_0_is_answered_with_negotiate_protocol_version() {
    let (login, sent) = login_with(PROTOCOL_3_0 | 2, &[("user", "alice")]).await;
    assert_eq!(login.expect("accepted").user(), "alice");
    assert_eq!(negotiated_options(&sent), Vec::<String>::new());
}

#[tokio::test]
async fn pq_options_are_named_in_negotiate_protocol_version_and_not_kept_as_parameters() {
    let params = [("user", "alice"), ("_pq_.compression", "on")];
    let (login, sent) = login_with(PROTOCOL_3_0, &params).await;
    let login = login.expect("accepted");
    assert_eq!(negotiated_options(&sent), ["_pq_.compression"]);
    assert_eq!(login.params.get("_pq_.compression"), None);
}
