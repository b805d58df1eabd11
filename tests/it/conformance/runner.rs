//! Plays a conversation against Postgres directly (each client on its own
//! connection: the reference) and through pgharbor, records every reply each
//! client receives, and names the first one that differs.

use std::net::SocketAddr;
use std::time::Duration;

use pgharbor::Proxy;

use super::conversation::{Conversation, Step};
use super::wire::describe;
use crate::support::raw::{Msg, RawClient};
use crate::support::{
    config_text, connect_direct, pg, start_proxy, start_proxy_with, PASSWORD, USER,
};

/// How long a client waits for one reply before the runner calls it lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long pgharbor may take to deliver the notifications Postgres gave a
/// client (its LISTEN multiplexer delivers them from another connection).
const NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(5);
/// A client's last wait for notifications nobody expects (duplicates).
const EXTRA_NOTIFICATION_WAIT: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Session,
    Transaction,
}

/// What a client read at one step.
#[derive(Clone, Debug)]
pub enum Reply {
    Msg(Msg),
    /// No reply within [`REPLY_TIMEOUT`]; the client reads no more.
    TimedOut,
    /// The connection closed; the client reads no more.
    Closed,
}

impl Reply {
    /// The reply as compared: the message with the fields that may
    /// legitimately vary taken out (see [`normalise`]).
    fn key(&self) -> Vec<u8> {
        match self {
            Reply::Msg(m) => normalise(m),
            Reply::TimedOut => b"timeout".to_vec(),
            Reply::Closed => b"closed".to_vec(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Reply::Msg(m) => describe(m),
            Reply::TimedOut => format!("(no reply within {REPLY_TIMEOUT:?})"),
            Reply::Closed => "(connection closed)".into(),
        }
    }

    fn is_notification(&self) -> bool {
        matches!(self, Reply::Msg(m) if m.tag == b'A')
    }
}

/// The declared normalisations, each because Postgres itself would not
/// give the same value twice or pgharbor must not copy it:
/// - ErrorResponse / NoticeResponse: the `F` (source file), `L` (line) and
///   `R` (routine) fields name the C code that raised it; an error pgharbor
///   raises for Postgres carries its own or none, and no client reads them.
/// - RowDescription: the table OID of each column. Every run creates its
///   tables afresh (see `before_each_run`), so the same table has another
///   OID on each run; the column's name, attribute number, type, length,
///   modifier and format are compared.
/// - NotificationResponse: the sender's pid is a backend pid, different on
///   every run (which pid a client is told is issue 21's own test).
///
/// Login replies (authentication, BackendKeyData, the login's
/// ParameterStatus set) are not recorded at all: pgharbor answers the login
/// itself by design, and its BackendKeyData is its own key.
fn normalise(m: &Msg) -> Vec<u8> {
    let mut out = vec![m.tag];
    match m.tag {
        b'E' | b'N' => {
            let mut b = &m.body[..];
            while let Some((&code, rest)) = b.split_first() {
                if code == 0 {
                    break;
                }
                let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
                if !matches!(code, b'F' | b'L' | b'R') {
                    out.push(code);
                    out.extend_from_slice(&rest[..end]);
                    out.push(0);
                }
                b = &rest[(end + 1).min(rest.len())..];
            }
        }
        b'T' => out.extend_from_slice(&without_table_oids(&m.body)),
        b'A' if m.body.len() >= 4 => {
            out.extend_from_slice(&[0; 4]);
            out.extend_from_slice(&m.body[4..]);
        }
        _ => out.extend_from_slice(&m.body),
    }
    out
}

/// A RowDescription body with every table OID set to 0.
fn without_table_oids(body: &[u8]) -> Vec<u8> {
    let mut out = body.to_vec();
    let [a, b, ..] = *body else {
        return out;
    };
    let mut at = 2;
    let columns = i16::from_be_bytes([a, b]).max(0);
    for _ in 0..columns {
        let Some(nul) = out[at..].iter().position(|&c| c == 0) else {
            break;
        };
        at += nul + 1;
        if out.len() < at + 18 {
            break;
        }
        out[at..at + 4].fill(0);
        at += 18;
    }
    out
}

/// A reply with the index of the step that read it.
type Read = (usize, Reply);

/// Everything the clients of one run received.
#[derive(Clone, Debug, Default)]
pub struct Transcript {
    /// Per client: each reply with the index of the step that read it.
    pub clients: Vec<Vec<Read>>,
}

impl Transcript {
    fn count_at(&self, client: usize, step: usize) -> usize {
        self.clients[client]
            .iter()
            .filter(|(s, r)| *s == step && !r.is_notification())
            .count()
    }

    fn notifications(&self, client: usize) -> usize {
        self.clients[client]
            .iter()
            .filter(|(_, r)| r.is_notification())
            .count()
    }

    /// The number of replies and notifications recorded in all.
    pub fn len(&self) -> usize {
        self.clients.iter().map(Vec::len).sum()
    }

    /// Where a client of this run lost its connection or waited in vain.
    pub fn broken_at(&self) -> Option<String> {
        self.clients.iter().enumerate().find_map(|(k, replies)| {
            let (step, r) = replies.iter().find(|(_, r)| !matches!(r, Reply::Msg(_)))?;
            Some(format!("client {k} at step {step}: {}", r.describe()))
        })
    }
}

/// One client of a run.
struct Player {
    conn: RawClient,
    /// Stopped reading after a timeout or a closed connection.
    done: bool,
    got: Vec<Read>,
}

impl Player {
    /// Reads one reply for `step` unless the client is done; false when
    /// there is nothing more to read.
    async fn read(&mut self, step: usize, wait: Duration) -> Option<u8> {
        if self.done {
            return None;
        }
        let reply = match tokio::time::timeout(wait, self.conn.recv()).await {
            Ok(Some(m)) => Reply::Msg(m),
            Ok(None) => Reply::Closed,
            Err(_) if wait < REPLY_TIMEOUT => return None,
            Err(_) => Reply::TimedOut,
        };
        let tag = match &reply {
            Reply::Msg(m) => Some(m.tag),
            _ => {
                self.done = true;
                None
            }
        };
        self.got.push((step, reply));
        tag
    }

    /// Reads until `n` replies other than notifications have arrived.
    async fn read_n(&mut self, step: usize, n: usize) {
        let mut seen = 0;
        while seen < n {
            match self.read(step, REPLY_TIMEOUT).await {
                Some(b'A') => {}
                Some(_) => seen += 1,
                None => return,
            }
        }
    }

    async fn read_until_ready(&mut self, step: usize) {
        while let Some(tag) = self.read(step, REPLY_TIMEOUT).await {
            if tag == b'Z' {
                return;
            }
        }
    }

    async fn read_until_quiet(&mut self, step: usize, quiet: Duration) {
        while self.read(step, quiet).await.is_some() {}
    }

    async fn send(&mut self, bytes: &[u8]) {
        if !self.done && self.conn.try_send(bytes).await.is_err() {
            self.got.push((usize::MAX, Reply::Closed));
            self.done = true;
        }
    }
}

/// Plays `conv` against `addr`. With a `reference` (the run on Postgres),
/// a [`Step::Quiet`] reads as many replies as the reference got there, and
/// the end waits for as many notifications as the reference got.
pub async fn play(
    conv: &Conversation,
    addr: SocketAddr,
    reference: Option<&Transcript>,
) -> Transcript {
    if !conv.before_each_run.is_empty() {
        let direct = connect_direct().await;
        for sql in &conv.before_each_run {
            direct
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("before each run, {sql}: {e}"));
        }
    }
    let mut players = Vec::new();
    for k in 0..conv.clients {
        let mut params = vec![("user", USER), ("database", "app")];
        let extra = conv.startup.iter().filter(|(c, _, _)| *c == k);
        params.extend(extra.map(|(_, name, value)| (name.as_str(), value.as_str())));
        let conn = RawClient::login_with(addr, PASSWORD, &params).await.0;
        players.push(Player {
            conn,
            done: false,
            got: Vec::new(),
        });
    }
    let mut current = 0;
    let mut pending = Vec::new();
    for (i, step) in conv.steps.iter().enumerate() {
        if !matches!(step, Step::Send(_)) && !pending.is_empty() {
            players[current].send(&pending).await;
            pending.clear();
        }
        let p = &mut players[current];
        match step {
            Step::On(k) => current = *k,
            Step::Send(m) => m.encode(&mut pending),
            Step::Ready => p.read_until_ready(i).await,
            Step::Replies(n) => p.read_n(i, *n).await,
            Step::Quiet(ms) => match reference {
                Some(r) => p.read_n(i, r.count_at(current, i)).await,
                None => p.read_until_quiet(i, Duration::from_millis(*ms)).await,
            },
        }
    }
    players[current].send(&pending).await;
    if conv.may_listen() {
        for (k, p) in players.iter_mut().enumerate() {
            let want = reference.map_or(0, |r| r.notifications(k));
            collect_notifications(p, conv.steps.len(), want).await;
        }
    }
    Transcript {
        clients: players.into_iter().map(|p| p.got).collect(),
    }
}

/// Reads the notifications still on their way to a client after its last
/// step: up to `want` within [`NOTIFICATION_TIMEOUT`], then any extra.
async fn collect_notifications(p: &mut Player, step: usize, want: usize) {
    let deadline = tokio::time::Instant::now() + NOTIFICATION_TIMEOUT;
    let have = |p: &Player| p.got.iter().filter(|(_, r)| r.is_notification()).count();
    while have(p) < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || p.read(step, left).await.is_none() {
            break;
        }
    }
    p.read_until_quiet(step, EXTRA_NOTIFICATION_WAIT).await;
}

/// Postgres itself, for the reference run.
pub fn postgres_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], pg().port()))
}

/// A pgharbor in one mode: session mode with a server for every client,
/// transaction mode (`session_state = "pin"`) with a pool of `pool_size`.
pub struct Harbor {
    pub proxy: Proxy,
    pub label: String,
}

impl Harbor {
    pub async fn start(mode: Mode, clients: usize, pool_size: usize) -> Harbor {
        match mode {
            Mode::Session => Harbor {
                proxy: start_proxy("session", clients).await,
                label: format!("pgharbor in session mode (pool_size {clients})"),
            },
            Mode::Transaction => {
                let text = config_text("transaction", pool_size, "session_state = \"pin\"");
                Harbor {
                    proxy: start_proxy_with(&text).await,
                    label: format!(
                        "pgharbor in transaction mode (pool_size {pool_size}, session_state = \"pin\")"
                    ),
                }
            }
        }
    }

    /// Plays `conv` on Postgres and through this pgharbor.
    pub async fn differences(&self, conv: &Conversation) -> Outcome {
        let want = play(conv, postgres_addr(), None).await;
        self.differences_from(conv, &want).await
    }

    /// Plays `conv` through this pgharbor and compares with `want`, the
    /// run on Postgres.
    pub async fn differences_from(&self, conv: &Conversation, want: &Transcript) -> Outcome {
        if let Some(at) = want.broken_at() {
            return Outcome::Broken(at);
        }
        let got = play(conv, self.proxy.addr(), Some(want)).await;
        match compare(conv, want, &got) {
            Some(d) => Outcome::Differs(format!("{}: {d}", self.label)),
            None => Outcome::Same,
        }
    }
}

/// What a run through pgharbor showed.
#[derive(Debug)]
pub enum Outcome {
    Same,
    /// The report of the first difference.
    Differs(String),
    /// On Postgres directly a client timed out or was closed (where): the
    /// conversation is not one Postgres answers in full.
    Broken(String),
}

/// Plays `conv` on Postgres and through a fresh pgharbor in `mode`; panics
/// with the first difference and the conversation as Rust.
pub async fn check(conv: Conversation, mode: Mode) {
    let original = conv;
    let conv = original.named_for(match mode {
        Mode::Session => "s",
        Mode::Transaction => "t",
    });
    let harbor = Harbor::start(mode, conv.clients, conv.tx_pool_size()).await;
    let report = match harbor.differences(&conv).await {
        Outcome::Same => return,
        Outcome::Differs(report) => report,
        Outcome::Broken(at) => format!("the conversation is broken on Postgres directly: {at}"),
    };
    panic!(
        "{report}\n\nThe conversation, to paste into a regression test:\n{}\n",
        original.to_rust()
    );
}

/// The first difference between the reference and a run through pgharbor,
/// told as a report for people.
pub fn compare(conv: &Conversation, want: &Transcript, got: &Transcript) -> Option<String> {
    for k in 0..conv.clients {
        let split = |t: &Transcript| -> (Vec<Read>, Vec<Read>) {
            t.clients[k]
                .iter()
                .cloned()
                .partition(|(_, r)| !r.is_notification())
        };
        let (want_replies, want_notes) = split(want);
        let (got_replies, got_notes) = split(got);
        if let Some(d) = first_difference(conv, k, "reply", &want_replies, &got_replies) {
            return Some(d);
        }
        // NotificationResponse is asynchronous in the protocol, and
        // pgharbor's LISTEN multiplexer delivers from another connection:
        // only the notifications and their order are compared, not where
        // they fall among the other replies.
        if let Some(d) = first_difference(conv, k, "notification", &want_notes, &got_notes) {
            return Some(d);
        }
    }
    None
}

fn first_difference(
    conv: &Conversation,
    client: usize,
    what: &str,
    want: &[Read],
    got: &[Read],
) -> Option<String> {
    let n = want.len().max(got.len());
    let i = (0..n).find(|&i| want.get(i).map(|w| w.1.key()) != got.get(i).map(|g| g.1.key()))?;
    let step = want.get(i).or(got.get(i)).map_or(usize::MAX, |r| r.0);
    let show = |r: Option<&Read>| r.map_or("(nothing)".into(), |r| r.1.describe());
    let around = |t: &[Read]| -> String {
        t.iter()
            .enumerate()
            .filter(|(_, r)| r.0 == step)
            .map(|(j, r)| format!("\n      #{j} {}", r.1.describe()))
            .collect()
    };
    let step_text = conv
        .steps
        .get(step)
        .map_or("the end (late notifications)".into(), |s| {
            format!("step {step} `{}`", s.to_rust())
        });
    Some(format!(
        "client {client}, {what} #{i} (read at {step_text}) differs:\n  Postgres: {}\n  pgharbor: {}\n  \
         at that step client {client} got on Postgres:{}\n  and through pgharbor:{}",
        show(want.get(i)),
        show(got.get(i)),
        around(want),
        around(got),
    ))
}
