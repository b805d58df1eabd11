//! A conversation: what one or more clients send, and where each waits for
//! replies. Built with chained calls; printed back as the same calls, so a
//! conversation the generator found can be pasted into a regression test.

use super::wire::Front;

/// One step of a conversation, for the client currently running.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Client `k` runs the following steps.
    On(usize),
    /// A message; consecutive messages go out in one write.
    Send(Front),
    /// Read replies up to and including the next ReadyForQuery.
    Ready,
    /// Read exactly this many replies.
    Replies(usize),
    /// On Postgres: read until nothing arrives for this many milliseconds.
    /// Through pgharbor: read as many replies as Postgres sent here, so a
    /// slower relay is not a difference (a missing or extra reply still is).
    Quiet(u64),
}

impl Step {
    /// The builder call that adds this step.
    pub fn to_rust(&self) -> String {
        match self {
            Step::On(k) => format!(".on({k})"),
            Step::Send(m) => m.to_rust(),
            Step::Ready => ".ready()".into(),
            Step::Replies(n) => format!(".replies({n})"),
            Step::Quiet(ms) => format!(".quiet({ms})"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    pub name: String,
    pub clients: usize,
    /// The transaction-mode pool size, when the conversation needs another
    /// than the default (one fewer than the clients, at least 1).
    pub tx_pool: Option<usize>,
    /// SQL run on Postgres directly before each run, not recorded: drops
    /// what an earlier run created, so every run starts alike.
    pub before_each_run: Vec<String>,
    /// Startup parameters a client sends besides its user and database:
    /// (client, name, value).
    pub startup: Vec<(usize, String, String)>,
    pub steps: Vec<Step>,
}

impl Conversation {
    /// A conversation of `clients` clients; client 0 runs first.
    pub fn new(name: &str, clients: usize) -> Conversation {
        Conversation {
            name: name.into(),
            clients,
            tx_pool: None,
            before_each_run: Vec::new(),
            startup: Vec::new(),
            steps: Vec::new(),
        }
    }

    /// The transaction-mode pool size the runner uses.
    pub fn tx_pool_size(&self) -> usize {
        self.tx_pool
            .unwrap_or(self.clients.saturating_sub(1))
            .max(1)
    }

    pub fn tx_pool(mut self, size: usize) -> Self {
        self.tx_pool = Some(size);
        self
    }

    pub fn before_each_run(mut self, sql: &str) -> Self {
        self.before_each_run.push(sql.into());
        self
    }

    /// Client `client` logs in with the startup parameter `name = value`.
    pub fn startup(mut self, client: usize, name: &str, value: &str) -> Self {
        assert!(client < self.clients, "client {client} of {}", self.clients);
        self.startup.push((client, name.into(), value.into()));
        self
    }

    /// The conversation with `{m}` in its SQL replaced by `tag`: cases that
    /// run at the same time in both modes use their own tables and
    /// channels, while Postgres and pgharbor see the same names.
    pub fn named_for(&self, tag: &str) -> Conversation {
        let fill = |s: &str| s.replace("{m}", tag);
        let mut c = self.clone();
        c.before_each_run = c.before_each_run.iter().map(|s| fill(s)).collect();
        for (_, _, value) in &mut c.startup {
            *value = fill(value);
        }
        for step in &mut c.steps {
            if let Step::Send(Front::Query(sql) | Front::Parse { sql, .. }) = step {
                *sql = fill(sql);
            }
        }
        c
    }

    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    fn send(self, m: Front) -> Self {
        self.step(Step::Send(m))
    }

    pub fn on(self, client: usize) -> Self {
        assert!(client < self.clients, "client {client} of {}", self.clients);
        self.step(Step::On(client))
    }

    pub fn ready(self) -> Self {
        self.step(Step::Ready)
    }

    pub fn replies(self, n: usize) -> Self {
        self.step(Step::Replies(n))
    }

    pub fn quiet(self, ms: u64) -> Self {
        self.step(Step::Quiet(ms))
    }

    pub fn query(self, sql: &str) -> Self {
        self.send(Front::Query(sql.into()))
    }

    /// A simple query and its replies up to ReadyForQuery.
    pub fn simple(self, sql: &str) -> Self {
        self.query(sql).ready()
    }

    pub fn parse(self, name: &str, sql: &str, types: &[u32]) -> Self {
        self.send(Front::Parse {
            name: name.into(),
            sql: sql.into(),
            types: types.to_vec(),
        })
    }

    /// Bind with text parameters and text results.
    pub fn bind(self, portal: &str, statement: &str, params: &[&str]) -> Self {
        let params: Vec<Option<&str>> = params.iter().map(|&p| Some(p)).collect();
        self.bind_full(portal, statement, &params, false)
    }

    /// Bind with NULLs allowed and all results in binary when `binary`.
    pub fn bind_full(
        self,
        portal: &str,
        statement: &str,
        params: &[Option<&str>],
        binary: bool,
    ) -> Self {
        self.send(Front::Bind {
            portal: portal.into(),
            statement: statement.into(),
            params: params.iter().map(|p| p.map(str::to_owned)).collect(),
            binary,
        })
    }

    /// Parse of statement `name` (no declared types), Sync, and its replies.
    pub fn prepare(self, name: &str, sql: &str) -> Self {
        self.parse(name, sql, &[]).sync().ready()
    }

    /// Bind of `statement` with text `params` to the unnamed portal,
    /// Execute, Sync, and the replies.
    pub fn run(self, statement: &str, params: &[&str]) -> Self {
        self.bind("", statement, params)
            .execute("", 0)
            .sync()
            .ready()
    }

    pub fn describe_statement(self, name: &str) -> Self {
        self.send(Front::Describe(b'S', name.into()))
    }

    pub fn describe_portal(self, name: &str) -> Self {
        self.send(Front::Describe(b'P', name.into()))
    }

    pub fn execute(self, portal: &str, max_rows: i32) -> Self {
        self.send(Front::Execute {
            portal: portal.into(),
            max_rows,
        })
    }

    pub fn close_statement(self, name: &str) -> Self {
        self.send(Front::Close(b'S', name.into()))
    }

    pub fn close_portal(self, name: &str) -> Self {
        self.send(Front::Close(b'P', name.into()))
    }

    pub fn sync(self) -> Self {
        self.send(Front::Sync)
    }

    pub fn flush(self) -> Self {
        self.send(Front::Flush)
    }

    pub fn copy_data(self, data: impl AsRef<[u8]>) -> Self {
        self.send(Front::CopyData(data.as_ref().to_vec()))
    }

    pub fn copy_done(self) -> Self {
        self.send(Front::CopyDone)
    }

    pub fn copy_fail(self, why: &str) -> Self {
        self.send(Front::CopyFail(why.into()))
    }

    pub fn terminate(self) -> Self {
        self.send(Front::Terminate)
    }

    /// The conversation as the Rust that builds it.
    pub fn to_rust(&self) -> String {
        let mut out = format!("Conversation::new({:?}, {})", self.name, self.clients);
        if let Some(n) = self.tx_pool {
            out.push_str(&format!("\n    .tx_pool({n})"));
        }
        for sql in &self.before_each_run {
            out.push_str(&format!("\n    .before_each_run({sql:?})"));
        }
        for (k, name, value) in &self.startup {
            out.push_str(&format!("\n    .startup({k}, {name:?}, {value:?})"));
        }
        for step in &self.steps {
            out.push_str("\n    ");
            out.push_str(&step.to_rust());
        }
        out
    }

    /// Whether any step may make a client listen, so notifications can
    /// still be on their way when the steps are done.
    pub fn may_listen(&self) -> bool {
        self.steps.iter().any(|s| match s {
            Step::Send(Front::Query(sql) | Front::Parse { sql, .. }) => {
                sql.to_ascii_lowercase().contains("listen")
            }
            _ => false,
        })
    }
}
