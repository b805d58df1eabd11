//! Random, well-formed conversations from a seed, played against Postgres
//! and through pgharbor in both modes; a difference is shrunk to a minimal
//! conversation and printed as Rust for a regression test.
//!
//! A conversation is a list of units, each for one client: a simple Query
//! of one to three statements, an extended-protocol pipeline of Sync
//! groups, or the BEGIN / COMMIT or ROLLBACK around other units. Every
//! unit but BEGIN leaves its client with all its Syncs answered, and at
//! most one client at a time is inside a transaction, so clients can take
//! turns over a transaction pool of two without waiting for each other.
//! Only statements whose results do not depend on other clients or on the
//! time: each client notifies a channel of its own, and has a table of its
//! own (made afresh before each run) for COPY in and out, COPY that fails,
//! and DDL that changes a prepared statement's result type between its
//! executions. In conversations of at most two clients, one temporary
//! table (which pins its client's server in transaction mode, so a third
//! client could wait for a server forever).

use std::time::{Duration, Instant};

use super::conversation::{Conversation, Step};
use super::runner::{play, postgres_addr, Harbor, Mode, Outcome};
use super::wire::Front;
use crate::support::USER;

/// The seed of the run in `cargo test`.
const FIXED_SEED: u64 = 0x5eed_0022;
/// Clients of a generated conversation, at most.
const MAX_CLIENTS: usize = 3;
/// The transaction-mode pool: fewer servers than clients.
const TX_POOL: usize = 2;
/// How long a Flush waits for replies on Postgres.
const FLUSH_QUIET_MS: u64 = 150;

/// splitmix64: small, fast and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One unit of a generated conversation.
#[derive(Clone, Debug)]
enum Unit {
    /// One Query message of `;`-joined statements.
    Simple(Vec<String>),
    /// Sync groups sent in one write; a Flush inside a group waits for the
    /// replies so far.
    Pipeline(Vec<Vec<Front>>),
    Begin,
    /// COMMIT or ROLLBACK.
    End(&'static str),
    /// A COPY with the client's table, of `kind` (see `render_copy`).
    Copy {
        kind: usize,
        table: String,
        n: usize,
    },
}

#[derive(Clone, Debug)]
struct Placed {
    client: usize,
    unit: Unit,
}

/// A statement for the extended protocol: its text, declared parameter
/// types and a way to make parameter values.
struct Extended {
    sql: &'static str,
    types: &'static [u32],
    params: fn(&mut Rng, &str) -> Vec<Option<String>>,
}

fn none(_: &mut Rng, _: &str) -> Vec<Option<String>> {
    Vec::new()
}

fn small_int(r: &mut Rng, _: &str) -> Vec<Option<String>> {
    vec![Some(r.below(6).to_string())]
}

fn any_text(r: &mut Rng, _: &str) -> Vec<Option<String>> {
    let v = ["", "hello", "wörld", "it's", "x\ty"];
    vec![(!r.chance(10)).then(|| r.pick(&v).to_string())]
}

fn big_size(r: &mut Rng, _: &str) -> Vec<Option<String>> {
    vec![Some((r.below(300) * 1000 + 1).to_string())]
}

fn timestamp(r: &mut Rng, _: &str) -> Vec<Option<String>> {
    let v = [
        "2024-02-29 13:45:00+00",
        "1999-12-31 23:59:59.5-08",
        "not a time",
    ];
    vec![Some(r.pick(&v).to_string())]
}

fn notify_params(r: &mut Rng, channel: &str) -> Vec<Option<String>> {
    vec![
        Some(channel.to_string()),
        Some(format!("x{}", r.below(100))),
    ]
}

fn bad_int(_: &mut Rng, _: &str) -> Vec<Option<String>> {
    vec![Some("abc".into())]
}

/// The table client `channel` has to itself.
fn table(channel: &str) -> String {
    format!("{channel}_t")
}

const EXTENDED: &[Extended] = &[
    Extended {
        sql: "SELECT $1::int + 1 AS next",
        types: &[],
        params: small_int,
    },
    Extended {
        sql: "SELECT $1::int + 1 AS next",
        types: &[23],
        params: small_int,
    },
    Extended {
        sql: "SELECT $1::text || '!' AS shout",
        types: &[],
        params: any_text,
    },
    Extended {
        sql: "SELECT $1 AS untyped",
        types: &[25],
        params: any_text,
    },
    Extended {
        sql: "SELECT g, g * 2 AS twice FROM generate_series(1, $1::int) AS g",
        types: &[],
        params: small_int,
    },
    Extended {
        sql: "SELECT repeat('y', $1::int) AS big",
        types: &[],
        params: big_size,
    },
    Extended {
        sql: "SELECT 10 / $1::int AS q",
        types: &[],
        params: small_int,
    },
    Extended {
        sql: "SELECT $1::timestamptz AS ts, $1::timestamptz::date AS d",
        types: &[],
        params: timestamp,
    },
    Extended {
        sql: "SELECT $1::int AS strict",
        types: &[],
        params: bad_int,
    },
    Extended {
        sql: "SELECT * FROM conf_no_such_table",
        types: &[],
        params: none,
    },
    Extended {
        sql: "SELECT 1 AS one, 'a'::char(3) AS c, 2.5::float8 AS f, true AS b, NULL::uuid AS u",
        types: &[],
        params: none,
    },
    Extended {
        sql: "SELECT pg_notify($1, $2)",
        types: &[],
        params: notify_params,
    },
    Extended {
        sql: "SHOW TimeZone",
        types: &[],
        params: none,
    },
    Extended {
        sql: "SET application_name = 'gen_extended'",
        types: &[],
        params: none,
    },
    // The client's table (`{t}`): DDL between two executions of one
    // statement changes its result type.
    Extended {
        sql: "SELECT * FROM {t} ORDER BY a LIMIT 3",
        types: &[],
        params: none,
    },
    Extended {
        sql: "SELECT a, b FROM {t} WHERE a > $1::int ORDER BY a",
        types: &[],
        params: small_int,
    },
    Extended {
        sql: "INSERT INTO {t} (a, b) VALUES ($1::int, 'ext')",
        types: &[],
        params: small_int,
    },
    Extended {
        sql: "COPY (SELECT a, b FROM {t} ORDER BY a) TO STDOUT",
        types: &[],
        params: none,
    },
];

/// A statement on the client's table `t` for a simple Query.
fn table_statement(r: &mut Rng, t: &str) -> String {
    let n = r.below(1000);
    match r.below(8) {
        0 => format!("INSERT INTO {t} (a, b) VALUES ({n}, 'v{n}')"),
        1 => format!("SELECT * FROM {t} ORDER BY a LIMIT 3"),
        2 => format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS c int DEFAULT {n}"),
        3 => format!("ALTER TABLE {t} DROP COLUMN IF EXISTS c"),
        4 => format!(
            "ALTER TABLE {t} ALTER COLUMN a TYPE {}",
            r.pick(&["bigint", "int", "numeric"])
        ),
        5 => format!("DELETE FROM {t} WHERE a < {n}"),
        6 => format!("COPY (SELECT a, b FROM {t} ORDER BY a LIMIT 2) TO STDOUT"),
        _ => format!("TRUNCATE {t}"),
    }
}

/// A statement on the client's temporary table.
fn temp_statement(r: &mut Rng) -> String {
    let n = r.below(1000);
    r.pick(&[
        "CREATE TEMP TABLE IF NOT EXISTS gen_tmp (a int)".to_string(),
        format!("INSERT INTO gen_tmp VALUES ({n})"),
        "SELECT count(*) AS n FROM gen_tmp".to_string(),
        "SELECT count(*) AS n FROM pg_temp.gen_tmp".to_string(),
        "DROP TABLE IF EXISTS gen_tmp".to_string(),
    ])
    .clone()
}

const DATE_STYLES: &[&str] = &["ISO, MDY", "SQL, DMY", "German", "Postgres, YMD"];
const TIME_ZONES: &[&str] = &["UTC", "Asia/Tokyo", "America/New_York", "+03"];

/// A statement for a simple Query (no parameters).
fn simple_statement(r: &mut Rng, channel: &str, in_txn: bool) -> String {
    let n = r.below(1000);
    match r.below(if in_txn { 22 } else { 19 }) {
        0 => format!("SELECT {n} AS n"),
        1 => format!("SELECT {n}::int8 * 3 AS big, 'text {n}'::text AS t, NULL::int AS nothing, true AS yes, 1.5::numeric(10,2) AS num"),
        2 => format!("SELECT g, g * 2 AS twice FROM generate_series(1, {}) AS g", r.below(5)),
        3 => format!("SELECT repeat('x', {}) AS big", r.below(300) * 1000),
        4 => "SELECT '2024-02-29 13:45:00+00'::timestamptz AS ts, '2024-02-29'::date AS d, interval '1 day 2 hours' AS i".into(),
        5 => "SELECT ARRAY[1,2,3] AS a, '{\"a\": 1}'::jsonb AS j, 'abc'::bytea AS b, '192.168.0.1'::inet AS ip".into(),
        6 => format!("SHOW {}", r.pick(&["DateStyle", "TimeZone", "application_name"])),
        7 => r.pick(&["SELECT 1/0", "SELECT * FROM conf_no_such_table", "SELEC 1", "SELECT 'x'::int"]).to_string(),
        8 => format!("SET application_name = 'gen_{n}'"),
        9 => format!("SET DateStyle = '{}'", r.pick(DATE_STYLES)),
        10 => format!("SET TimeZone = '{}'", r.pick(TIME_ZONES)),
        11 => format!("RESET {}", r.pick(&["DateStyle", "TimeZone", "application_name"])),
        12 => format!("LISTEN {channel}"),
        13 => r.pick(&[format!("UNLISTEN {channel}"), "UNLISTEN *".to_string()]).clone(),
        14 => format!("NOTIFY {channel}, 'p{n}'"),
        15 => format!("SELECT pg_notify('{channel}', 'q{n}')"),
        16 => "SELECT current_setting('DateStyle'), current_setting('TimeZone'), current_setting('application_name')".into(),
        17 => format!("SET LOCAL TimeZone = '{}'", r.pick(TIME_ZONES)),
        18 => "SELECT 'x' WHERE false".into(),
        19 => "SAVEPOINT gen_sp".into(),
        20 => "ROLLBACK TO SAVEPOINT gen_sp".into(),
        _ => "RELEASE SAVEPOINT gen_sp".into(),
    }
}

/// One Sync group: a few Parse / Bind / Describe / Execute / Close, and
/// sometimes a Flush, then Sync.
fn sync_group(r: &mut Rng, channel: &str, flush_ok: bool) -> Vec<Front> {
    let mut g = Vec::new();
    for _ in 0..1 + r.below(3) {
        let stmt = r.pick(EXTENDED);
        let sql = stmt.sql.replace("{t}", &table(channel));
        let name = r.pick(&["", "", "s0", "s1"]).to_string();
        let portal = r.pick(&["", "", "p0"]).to_string();
        if !name.is_empty() && r.chance(40) {
            g.push(Front::Close(b'S', name.clone()));
        }
        if !r.chance(15) {
            g.push(Front::Parse {
                name: name.clone(),
                sql,
                types: stmt.types.to_vec(),
            });
        }
        if r.chance(25) {
            g.push(Front::Describe(b'S', name.clone()));
        }
        let mut params = (stmt.params)(r, channel);
        if r.chance(5) {
            params.push(Some("1".into()));
        }
        g.push(Front::Bind {
            portal: portal.clone(),
            statement: name,
            params,
            binary: r.chance(20),
        });
        if r.chance(30) {
            g.push(Front::Describe(b'P', portal.clone()));
        }
        let max_rows = *r.pick(&[0, 0, 0, 1, 2]);
        g.push(Front::Execute {
            portal: portal.clone(),
            max_rows,
        });
        if max_rows > 0 && r.chance(50) {
            g.push(Front::Execute {
                portal,
                max_rows: 0,
            });
        }
        if flush_ok && r.chance(8) {
            g.push(Front::Flush);
        }
    }
    g.push(Front::Sync);
    g
}

fn unit(r: &mut Rng, channel: &str, in_txn: bool, temp_ok: bool) -> Unit {
    if r.chance(8) {
        // In a transaction that may have failed, no extended-protocol
        // COPY in: its CopyInResponse would not come.
        let kind = r.below(COPY_KINDS);
        Unit::Copy {
            kind: if in_txn && kind == 4 { 0 } else { kind },
            table: table(channel),
            n: r.below(1000),
        }
    } else if r.chance(45) {
        let n = 1 + r.below(3);
        Unit::Simple(
            (0..n)
                .map(|_| match r.below(10) {
                    0 | 1 => table_statement(r, &table(channel)),
                    2 if temp_ok => temp_statement(r),
                    _ => simple_statement(r, channel, in_txn),
                })
                .collect(),
        )
    } else {
        let flush_ok = r.chance(30);
        Unit::Pipeline(
            (0..1 + r.below(3))
                .map(|_| sync_group(r, channel, flush_ok))
                .collect(),
        )
    }
}

/// The channel client `k` of conversation `seed` listens and notifies on.
fn channel(seed: u64, k: usize) -> String {
    format!("gen_{seed:x}_{k}")
}

/// A conversation of 1 to [`MAX_CLIENTS`] clients and up to 24 units.
fn generate(seed: u64) -> (usize, Vec<Placed>) {
    let mut r = Rng::new(seed);
    let clients = 1 + r.below(MAX_CLIENTS);
    let mut in_txn: Option<usize> = None;
    let mut units = Vec::new();
    for _ in 0..4 + r.below(21) {
        let client = match in_txn {
            Some(k) if r.chance(60) => k,
            _ => r.below(clients),
        };
        let ch = channel(seed, client);
        let unit = match in_txn {
            Some(k) if k == client && r.chance(25) => {
                in_txn = None;
                Unit::End(if r.chance(50) { "COMMIT" } else { "ROLLBACK" })
            }
            None if r.chance(15) => {
                in_txn = Some(client);
                Unit::Begin
            }
            _ => unit(&mut r, &ch, in_txn == Some(client), clients <= 2),
        };
        units.push(Placed { client, unit });
    }
    if let Some(client) = in_txn {
        units.push(Placed {
            client,
            unit: Unit::End("COMMIT"),
        });
    }
    (clients, units)
}

/// Whether at most `TX_POOL - 1` clients are inside a transaction at any
/// point, so nobody waits for a server another client holds.
fn well_formed(units: &[Placed]) -> bool {
    let mut open = Vec::new();
    for p in units {
        match p.unit {
            Unit::Begin if !open.contains(&p.client) => open.push(p.client),
            Unit::End(_) => open.retain(|&c| c != p.client),
            _ => {}
        }
        if open.len() > TX_POOL - 1 {
            return false;
        }
    }
    true
}

/// Kinds of [`Unit::Copy`].
const COPY_KINDS: usize = 6;

/// A COPY of `kind` with `table`: in, failed by the client, in with bad
/// data, out (simple Query), then in and out in the extended protocol.
fn render_copy(c: Conversation, kind: usize, table: &str, n: usize) -> Conversation {
    let copy_in = format!("COPY {table} (a, b) FROM STDIN");
    let row = format!("{n}\tcopied {n}\n");
    match kind {
        0 => c
            .query(&copy_in)
            .replies(1)
            .copy_data(&row)
            .copy_data("7\t\\N\n")
            .copy_done()
            .ready(),
        1 => c
            .query(&copy_in)
            .replies(1)
            .copy_data(&row)
            .copy_fail("gen: changed its mind")
            .ready(),
        2 => c
            .query(&copy_in)
            .replies(1)
            .copy_data("not a number\tx\n")
            .copy_done()
            .ready(),
        3 => c.simple(&format!(
            "COPY (SELECT a, b FROM {table} ORDER BY a) TO STDOUT"
        )),
        // The Sync sent with the Execute comes during the copy: Postgres
        // ignores it, and answers only the one after CopyDone. The
        // unnamed statement is closed after it: a later pipeline that
        // binds and runs it would start a copy-in and send it other
        // messages, and Postgres closes a connection that does (protocol
        // synchronization lost).
        4 => c
            .parse("", &copy_in, &[])
            .bind("", "", &[])
            .execute("", 0)
            .sync()
            .replies(3)
            .copy_data(&row)
            .copy_done()
            .sync()
            .ready()
            .close_statement("")
            .sync()
            .ready(),
        _ => c
            .parse(
                "",
                &format!("COPY (SELECT a, b FROM {table} ORDER BY a) TO STDOUT"),
                &[],
            )
            .bind("", "", &[])
            .execute("", 0)
            .sync()
            .ready(),
    }
}

/// Whether a unit names `table`.
fn names_table(unit: &Unit, table: &str) -> bool {
    match unit {
        Unit::Simple(stmts) => stmts.iter().any(|s| s.contains(table)),
        Unit::Pipeline(groups) => groups.iter().flatten().any(|m| match m {
            Front::Parse { sql, .. } => sql.contains(table),
            _ => false,
        }),
        Unit::Copy { table: t, .. } => t == table,
        Unit::Begin | Unit::End(_) => false,
    }
}

/// The units as a conversation. Each client table they name is made
/// afresh before each run (named by the conversation's seed, which
/// `name` ends with; a shrunk conversation keeps its clients' tables),
/// owned by the role the clients log in as, so their COPY and DDL run.
fn render(name: &str, clients: usize, units: &[Placed]) -> Conversation {
    let mut c = Conversation::new(name, clients);
    let seed = name.trim_start_matches("random_");
    for k in 0..MAX_CLIENTS {
        let t = table(&format!("gen_{seed}_{k}"));
        if units.iter().any(|p| names_table(&p.unit, &t)) {
            c = c.before_each_run(&format!(
                "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (a int, b text); INSERT INTO {t} VALUES (1, 'one'), (2, NULL); ALTER TABLE {t} OWNER TO {USER}"
            ));
        }
    }
    let mut current = None;
    for p in units {
        if current != Some(p.client) {
            c = c.on(p.client);
            current = Some(p.client);
        }
        c = match &p.unit {
            Unit::Simple(stmts) => c.simple(&stmts.join("; ")),
            Unit::Begin => c.simple("BEGIN"),
            Unit::End(sql) => c.simple(sql),
            Unit::Copy { kind, table, n } => render_copy(c, *kind, table, *n),
            Unit::Pipeline(groups) => {
                let mut unanswered = 0;
                for m in groups.iter().flatten() {
                    c = c.step(Step::Send(m.clone()));
                    match m {
                        Front::Flush => {
                            c = c.quiet(FLUSH_QUIET_MS);
                            unanswered = 0;
                        }
                        Front::Sync => unanswered += 1,
                        _ => {}
                    }
                }
                (0..unanswered).fold(c, |c, _| c.ready())
            }
        };
    }
    c
}

/// Smaller versions of `units`, most reduction first.
fn candidates(units: &[Placed]) -> Vec<Vec<Placed>> {
    let mut out = Vec::new();
    let n = units.len();
    let mut chunk = n / 2;
    while chunk >= 1 {
        for start in (0..n).step_by(chunk) {
            let mut v = units.to_vec();
            v.drain(start..(start + chunk).min(n));
            out.push(v);
        }
        chunk /= 2;
    }
    for (i, p) in units.iter().enumerate() {
        let mut with = |unit: Unit| {
            let mut v = units.to_vec();
            v[i].unit = unit;
            out.push(v);
        };
        match &p.unit {
            Unit::Simple(stmts) if stmts.len() > 1 => {
                for j in 0..stmts.len() {
                    let mut s = stmts.clone();
                    s.remove(j);
                    with(Unit::Simple(s));
                }
            }
            Unit::Pipeline(groups) => {
                for g in 0..groups.len() {
                    if groups.len() > 1 {
                        let mut gs = groups.clone();
                        gs.remove(g);
                        with(Unit::Pipeline(gs.clone()));
                    }
                    for m in 0..groups[g].len() - 1 {
                        let mut gs = groups.clone();
                        gs[g].remove(m);
                        with(Unit::Pipeline(gs));
                    }
                }
            }
            _ => {}
        }
    }
    out.retain(|v| well_formed(v));
    out
}

/// The units with their clients numbered 0.. in order of first use,
/// dropping clients that do nothing.
fn compact(units: &[Placed]) -> (usize, Vec<Placed>) {
    let mut seen: Vec<usize> = Vec::new();
    let units = units
        .iter()
        .map(|p| {
            let k = seen.iter().position(|&c| c == p.client).unwrap_or_else(|| {
                seen.push(p.client);
                seen.len() - 1
            });
            Placed {
                client: k,
                unit: p.unit.clone(),
            }
        })
        .collect();
    (seen.len().max(1), units)
}

/// Shrinks a failing conversation while it still fails the same way
/// (a reply lost in time stays a timeout, a wrong reply stays a wrong
/// reply), within `budget`.
async fn shrink(
    harbor: &Harbor,
    name: &str,
    clients: usize,
    mut units: Vec<Placed>,
    mut report: String,
    budget: Duration,
) -> (Conversation, String) {
    let started = Instant::now();
    let timeout = |r: &str| r.contains("no reply within");
    let was_timeout = timeout(&report);
    'outer: while started.elapsed() < budget {
        for candidate in candidates(&units) {
            if started.elapsed() >= budget {
                break 'outer;
            }
            let conv = render(name, clients, &candidate);
            if let Outcome::Differs(r) = harbor.differences(&conv).await {
                if timeout(&r) == was_timeout {
                    units = candidate;
                    report = r;
                    continue 'outer;
                }
            }
        }
        break;
    }
    let (clients, units) = compact(&units);
    (render(name, clients, &units), report)
}

/// What a run of the generator did.
#[derive(Default)]
struct Tally {
    conversations: usize,
    steps: usize,
    replies: usize,
    /// Each difference: the minimal conversation's report and Rust.
    differences: Vec<String>,
}

/// Plays generated conversations from `seed` on, in `modes`, until
/// `limit` conversations or `duration`; every difference is shrunk (within
/// `shrink_budget`) and kept.
async fn run(
    modes: &[Mode],
    seed: u64,
    limit: usize,
    duration: Duration,
    shrink_budget: Duration,
) -> Tally {
    let mut harbors = Vec::new();
    for &mode in modes {
        harbors.push(Harbor::start(mode, MAX_CLIENTS, TX_POOL).await);
    }
    let started = Instant::now();
    let mut tally = Tally::default();
    for i in 0..limit as u64 {
        if started.elapsed() >= duration {
            break;
        }
        let s = seed.wrapping_add(i);
        let (clients, units) = generate(s);
        let name = format!("random_{s:x}");
        let conv = render(&name, clients, &units);
        let want = play(&conv, postgres_addr(), None).await;
        if let Some(at) = want.broken_at() {
            panic!(
                "generator: Postgres did not answer conversation {s:#x} in full ({at}):\n{}",
                conv.to_rust()
            );
        }
        tally.conversations += 1;
        tally.steps += conv.steps.len();
        tally.replies += want.len();
        for harbor in &harbors {
            let Outcome::Differs(report) = harbor.differences_from(&conv, &want).await else {
                continue;
            };
            let (small, report) =
                shrink(harbor, &name, clients, units.clone(), report, shrink_budget).await;
            let text = format!(
                "seed {s:#x}, {report}\n\nThe minimal conversation:\n{}\n",
                small.to_rust()
            );
            eprintln!("DIFFERENCE {text}");
            tally.differences.push(text);
        }
    }
    eprintln!(
        "generator from seed {seed:#x}: {} conversations, {} steps, {} replies on Postgres, {} differences in {:?}",
        tally.conversations,
        tally.steps,
        tally.replies,
        tally.differences.len(),
        started.elapsed()
    );
    tally
}

/// The fixed-seed run of `cargo test` in one mode: a bounded prefix of
/// the same sequence of conversations every time.
async fn fixed_seed_run(mode: Mode) {
    // The two modes play the same conversations, with the same channels
    // and tables: one at a time, so that neither hears the other's
    // notifications.
    static ONE_MODE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_MODE_AT_A_TIME.lock().await;
    let tally = run(
        &[mode],
        FIXED_SEED,
        60,
        Duration::from_secs(30),
        Duration::from_secs(20),
    )
    .await;
    assert!(
        tally.differences.is_empty(),
        "{}",
        tally.differences.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_conversations_from_a_fixed_seed_get_what_postgres_sends_in_session_mode() {
    fixed_seed_run(Mode::Session).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_conversations_from_a_fixed_seed_get_what_postgres_sends_in_transaction_mode() {
    fixed_seed_run(Mode::Transaction).await;
}

/// `PGHARBOR_CONFORMANCE_SECONDS=1800 cargo test --test it --
/// --ignored conformance::generate::random_conversations_for_a_while` (seed from
/// `PGHARBOR_CONFORMANCE_SEED`, else the clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: PGHARBOR_CONFORMANCE_SECONDS sets its length"]
async fn random_conversations_for_a_while() {
    let env = |name: &str| std::env::var(name).ok();
    let seconds = env("PGHARBOR_CONFORMANCE_SECONDS").map_or(60, |s| s.parse().expect("seconds"));
    let seed = env("PGHARBOR_CONFORMANCE_SEED").map_or_else(
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() << 20)
        },
        |s| s.parse().expect("seed"),
    );
    let tally = run(
        &[Mode::Session, Mode::Transaction],
        seed,
        usize::MAX,
        Duration::from_secs(seconds),
        Duration::from_secs(120),
    )
    .await;
    assert!(
        tally.differences.is_empty(),
        "{}",
        tally.differences.join("\n")
    );
}

#[test]
fn the_fixed_seed_run_has_copies_ddl_and_temporary_tables() {
    let (mut copies, mut ddl, mut temp, mut prepared_on_tables) = (0, 0, 0, 0);
    for i in 0..60 {
        let (_, units) = generate(FIXED_SEED.wrapping_add(i));
        for p in &units {
            match &p.unit {
                Unit::Copy { .. } => copies += 1,
                Unit::Simple(stmts) => {
                    ddl += stmts
                        .iter()
                        .filter(|s| s.starts_with("ALTER TABLE"))
                        .count();
                    temp += stmts.iter().filter(|s| s.contains("gen_tmp")).count();
                }
                Unit::Pipeline(groups) => {
                    prepared_on_tables += groups
                        .iter()
                        .flatten()
                        .filter(|m| matches!(m, Front::Parse { sql, .. } if sql.contains("_t ")))
                        .count();
                }
                Unit::Begin | Unit::End(_) => {}
            }
        }
    }
    assert!(copies > 10, "{copies} COPY units");
    assert!(ddl > 10, "{ddl} ALTER TABLE statements");
    assert!(temp > 5, "{temp} statements on a temporary table");
    assert!(
        prepared_on_tables > 10,
        "{prepared_on_tables} Parses on a table"
    );
}
