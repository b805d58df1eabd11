//! A throwaway, real PostgreSQL server.
//!
//! `pgharbor demo` and the integration tests need a genuine PostgreSQL to
//! pool connections to, without touching any cluster the machine already
//! runs. [`ScratchPostgres::start`] runs `initdb` into a fresh temporary
//! directory, starts the server with `pg_ctl` on a free port of 127.0.0.1,
//! and [`Drop`] stops it and deletes everything again.
//!
//! The code is deliberately synchronous (`std::process::Command`): starting a
//! server takes a second or two and happens once per test or demo, so there is
//! nothing to gain from async here, and callers in async code can simply call
//! it during setup (or from `spawn_blocking`).
//!
//! PostgreSQL refuses to run as root. When the current process is root (as on
//! a fresh CI machine), the data directory is owned by the `postgres` OS user
//! and every PostgreSQL binary is run through `runuser -u postgres -- ...`.
//!
//! Authentication of the scratch server:
//! * unix socket (in [`ScratchPostgres::socket_dir`]): `trust`, which is how
//!   [`ScratchPostgres::psql`] administers the server without a password;
//! * TCP from 127.0.0.1/32 and ::1/128: password authentication. The
//!   `pg_hba.conf` method is `md5`, which PostgreSQL documents as "use SCRAM
//!   when the role's stored secret is SCRAM, MD5 otherwise". So roles created
//!   with `scram-sha-256` (including the `postgres` superuser) must do
//!   SCRAM-SHA-256, while roles created with `md5` do MD5: a pure
//!   `scram-sha-256` line would make MD5 roles unable to log in at all.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

mod error;
mod helpers;
mod ssl;
mod standby;

pub use error::ScratchPgError;
use helpers::*;

/// Where Debian/Ubuntu install PostgreSQL; the highest version's `bin`
/// directory below it is used unless [`PG_BIN_ENV`] says otherwise.
pub const PG_INSTALL_ROOT: &str = "/usr/lib/postgresql";

/// Environment variable naming a PostgreSQL `bin` directory (containing
/// `initdb`, `pg_ctl`, `psql`, ...), for machines where PostgreSQL is not
/// installed under [`PG_INSTALL_ROOT`] or to pin a specific version.
pub const PG_BIN_ENV: &str = "PGHARBOR_PG_BIN";

/// Name of the bootstrap superuser of every scratch server, so callers can
/// connect over TCP without asking the instance.
pub const SUPERUSER: &str = "postgres";

/// Password of [`SUPERUSER`] (stored as a SCRAM-SHA-256 secret).
pub const SUPERUSER_PASSWORD: &str = "postgres";

/// The address the scratch server listens on (IPv4 loopback only).
const LISTEN_HOST: &str = "127.0.0.1";

/// `pg_hba.conf` of every scratch server (see the module docs for why the
/// host method is `md5`).
const PG_HBA: &str = "\
# written by pgharbor scratch_pg
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
local   replication  all                  trust
host    all          all   127.0.0.1/32   md5
host    all          all   ::1/128        md5
host    replication  all   127.0.0.1/32   md5
host    replication  all   ::1/128        md5
";

/// OS user that runs PostgreSQL when this process is root.
const OS_USER: &str = "postgres";

/// How often `start` tries a fresh port when another process grabbed the
/// port between us probing it and PostgreSQL binding it.
const START_ATTEMPTS: u32 = 5;

/// Seconds `pg_ctl -w` waits for startup/shutdown before giving up.
const PG_CTL_TIMEOUT_SECS: &str = "60";

/// Longest unix socket path the kernel accepts (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A running, private PostgreSQL server living in a temporary directory.
///
/// It is stopped (`pg_ctl stop -m immediate`) and its directory deleted when
/// the value is dropped, so a test cannot leak a server unless the process
/// itself is killed. Several instances can run side by side: each has its own
/// directory, port and socket directory.
#[derive(Debug)]
pub struct ScratchPostgres {
    dir: TempDir,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl ScratchPostgres {
    /// Creates and starts a new server: `initdb` into a fresh temp dir,
    /// configure it (`listen_addresses='127.0.0.1'`, unix socket in the temp
    /// dir, `max_connections=300`, `fsync=off`, `shared_buffers=128MB`, log to
    /// [`ScratchPostgres::log_path`]), pick a free port and `pg_ctl -w start`.
    /// The superuser is [`SUPERUSER`] / [`SUPERUSER_PASSWORD`]. Blocks until
    /// the server accepts connections.
    pub fn start() -> Result<ScratchPostgres, ScratchPgError> {
        let bin_dir = find_bin_dir()?;
        let as_postgres = effective_uid_is_root();
        if as_postgres {
            ensure_postgres_user()?;
        }

        let dir = Self::new_dir("pgharbor-pg-")?;
        let pwfile = dir.path().join("superuser.pw");
        fs::write(&pwfile, format!("{SUPERUSER_PASSWORD}\n")).map_err(|source| {
            ScratchPgError::Io {
                context: format!("writing {}", pwfile.display()),
                source,
            }
        })?;

        let mut pg = ScratchPostgres {
            data_dir: dir.path().join("data"),
            dir,
            bin_dir,
            port: 0,
            as_postgres,
        };
        if as_postgres {
            pg.hand_dir_to_postgres()?;
        }
        tracing::debug!(
            bin_dir = %pg.bin_dir.display(),
            dir = %pg.dir.path().display(),
            as_postgres,
            "initdb for scratch PostgreSQL"
        );
        pg.initdb(&pwfile)?;
        // The password is in the cluster now; do not leave it lying around.
        let _ = fs::remove_file(&pwfile);
        pg.write_config()?;
        pg.start_on_a_free_port()?;
        Ok(pg)
    }

    /// A temporary directory for a cluster, reachable by the `postgres`
    /// user and short enough for the socket path.
    fn new_dir(prefix: &str) -> Result<TempDir, ScratchPgError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|source| ScratchPgError::Io {
                context: "creating a temporary directory".into(),
                source,
            })?;
        let socket_len = dir.path().as_os_str().len() + "/.s.PGSQL.65535".len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(ScratchPgError::BadTempDir {
                path: dir.path().to_path_buf(),
                reason: format!(
                    "the unix socket path would be {socket_len} bytes, more than the \
                     {MAX_SOCKET_PATH} the kernel allows"
                ),
            });
        }
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).map_err(|source| {
            ScratchPgError::Io {
                context: format!("chmod 0755 {}", dir.path().display()),
                source,
            }
        })?;
        Ok(dir)
    }

    /// Starts the configured server on a free port, trying another when
    /// the one picked was taken meanwhile.
    fn start_on_a_free_port(&mut self) -> Result<(), ScratchPgError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.port = free_port()?;
            match self.pg_ctl_start(attempt) {
                Ok(()) => break,
                Err(ScratchPgError::StartFailed { ref log_tail, .. })
                    if attempt < START_ATTEMPTS && log_tail.contains("Address already in use") =>
                {
                    tracing::debug!(port = self.port, "port taken meanwhile, retrying");
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(
            port = self.port,
            dir = %self.dir.path().display(),
            "scratch PostgreSQL started"
        );
        Ok(())
    }

    /// The TCP port the server listens on at [`ScratchPostgres::host`];
    /// chosen at start and kept across [`ScratchPostgres::restart`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address to connect to over TCP: always `"127.0.0.1"`, the only
    /// address the server listens on.
    pub fn host(&self) -> &str {
        LISTEN_HOST
    }

    /// The PostgreSQL `bin` directory in use, so callers can run `psql` or
    /// `pgbench` of exactly the server's version.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Directory holding the server's unix socket (`.s.PGSQL.<port>`); pass
    /// it as `host` to libpq tools for password-less (`trust`) superuser
    /// access.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file, to show or attach when something fails.
    /// Deleted along with everything else on drop.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Runs `sql` (one or more statements, psql meta-commands allowed) as the
    /// superuser in database `dbname`, over the unix socket, with
    /// `psql -X -v ON_ERROR_STOP=1 -qAt`, and returns its stdout trimmed
    /// (unaligned, tuples only: one row per line, columns separated by `|`).
    /// The SQL is fed on stdin, so statements run one by one rather than as a
    /// single implicit transaction (`CREATE DATABASE` works). Errors carry
    /// psql's stderr.
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ScratchPgError> {
        let psql = self.bin_dir.join("psql");
        let mut cmd = self.command(&psql);
        cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-qAt", "-h"])
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", dbname, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let program = describe(&cmd);
        let mut child = cmd.spawn().map_err(|source| ScratchPgError::Spawn {
            program: program.clone(),
            source,
        })?;
        let stdin = child.stdin.take();
        // Write from another thread so a large result cannot deadlock us
        // against psql's full stdout pipe.
        let output = std::thread::scope(|scope| {
            let writer = scope.spawn(move || -> std::io::Result<()> {
                if let Some(mut stdin) = stdin {
                    stdin.write_all(sql.as_bytes())?;
                    stdin.write_all(b"\n")?;
                }
                Ok(())
            });
            let output = child.wait_with_output();
            // A write error (psql exiting early) shows up in its exit status.
            let _ = writer.join();
            output
        })
        .map_err(|source| ScratchPgError::Spawn { program, source })?;

        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
            if stderr.is_empty() {
                stderr = format!("psql exited with {}", output.status);
            }
            Err(ScratchPgError::Sql {
                dbname: dbname.to_string(),
                sql: shorten(sql, 300),
                stderr,
                log_path: self.log_path(),
            })
        }
    }

    /// Makes sure a login role `name` exists with password `password`,
    /// stored with `encryption` (`"scram-sha-256"` or `"md5"`), so tests can
    /// exercise both backend authentication methods. Idempotent: an existing
    /// role gets its password (and encryption) reset.
    pub fn create_user(
        &self,
        name: &str,
        password: &str,
        encryption: &str,
    ) -> Result<(), ScratchPgError> {
        if encryption != "scram-sha-256" && encryption != "md5" {
            return Err(ScratchPgError::InvalidArgument(format!(
                "password encryption {encryption:?} is not supported: use \"scram-sha-256\" or \
                 \"md5\""
            )));
        }
        let ident = quote_ident(name)?;
        let exists = self.psql(
            "postgres",
            &format!(
                "SELECT 1 FROM pg_roles WHERE rolname = {}",
                quote_literal(name)?
            ),
        )?;
        let verb = if exists == "1" { "ALTER" } else { "CREATE" };
        self.psql(
            "postgres",
            &format!(
                "SET password_encryption = {};\n{verb} ROLE {ident} LOGIN PASSWORD {};",
                quote_literal(encryption)?,
                quote_literal(password)?
            ),
        )?;
        tracing::debug!(role = name, encryption, "scratch role ready");
        Ok(())
    }

    /// Makes sure database `name` exists and is owned by role `owner`.
    /// Idempotent: an existing database just gets its owner set.
    pub fn create_database(&self, name: &str, owner: &str) -> Result<(), ScratchPgError> {
        let ident = quote_ident(name)?;
        let owner_ident = quote_ident(owner)?;
        let exists = self.psql(
            "postgres",
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(name)?
            ),
        )?;
        let sql = if exists == "1" {
            format!("ALTER DATABASE {ident} OWNER TO {owner_ident};")
        } else {
            format!("CREATE DATABASE {ident} OWNER {owner_ident};")
        };
        self.psql("postgres", &sql)?;
        tracing::debug!(database = name, owner, "scratch database ready");
        Ok(())
    }

    /// Stops the server with `pg_ctl stop -m fast` (clients are disconnected,
    /// clean shutdown) and waits for it to exit, to test how the pooler copes
    /// with a vanished backend. Start it again with
    /// [`ScratchPostgres::restart`].
    pub fn stop(&self) -> Result<(), ScratchPgError> {
        self.pg_ctl_stop("fast")?;
        tracing::info!(port = self.port, "scratch PostgreSQL stopped");
        Ok(())
    }

    /// Starts the server again on the same port (stopping it first with
    /// `-m fast` if it is still running) and waits until it accepts
    /// connections, to test reconnection after a PostgreSQL restart.
    pub fn restart(&self) -> Result<(), ScratchPgError> {
        if self.is_running() {
            self.pg_ctl_stop("fast")?;
        }
        self.pg_ctl_start(1)?;
        tracing::info!(port = self.port, "scratch PostgreSQL restarted");
        Ok(())
    }

    /// Whether the server is currently running (`pg_ctl status`), e.g. to
    /// assert on state between [`ScratchPostgres::stop`] and
    /// [`ScratchPostgres::restart`].
    pub fn is_running(&self) -> bool {
        let mut cmd = self.command(&self.bin_dir.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data_dir).arg("status");
        cmd.stdin(Stdio::null());
        cmd.output().map(|o| o.status.success()).unwrap_or(false)
    }

    // ---- internals -------------------------------------------------------

    /// A command for a PostgreSQL binary, wrapped in `runuser` when root, run
    /// in the temp dir (so `postgres` can always access its cwd) and without
    /// any `PG*` environment variables that could redirect it elsewhere.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", OS_USER, "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        };
        cmd.current_dir(self.dir.path());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Runs a command to completion, turning failure into `CommandFailed`.
    fn run(&self, mut cmd: Command, hint: &str) -> Result<Output, ScratchPgError> {
        let command = describe(&cmd);
        let output = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ScratchPgError::Spawn {
                program: command.clone(),
                source,
            })?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(ScratchPgError::CommandFailed {
                command,
                status: output.status.to_string(),
                output: output_text(&output),
                hint: hint.to_string(),
            })
        }
    }

    /// As root: give the temp dir to `postgres` (it creates the data dir,
    /// socket and log file there) and check it can actually reach it.
    fn hand_dir_to_postgres(&self) -> Result<(), ScratchPgError> {
        let mut chown = Command::new("chown");
        chown
            .arg("-R")
            .arg(format!("{OS_USER}:"))
            .arg(self.dir.path());
        self.run(chown, "chown must be available and the temp dir writable")?;
        let mut probe = Command::new("runuser");
        probe
            .args(["-u", OS_USER, "--", "test", "-w"])
            .arg(self.dir.path());
        if self.run(probe, "").is_err() {
            return Err(ScratchPgError::BadTempDir {
                path: self.dir.path().to_path_buf(),
                reason: "the postgres user cannot reach it (a parent directory is not \
                         world-traversable)"
                    .into(),
            });
        }
        Ok(())
    }

    fn initdb(&self, pwfile: &Path) -> Result<(), ScratchPgError> {
        let mut cmd = self.command(&self.bin_dir.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]);
        self.run(
            cmd,
            "initdb failed; check free disk space in the temp dir and that the PostgreSQL \
             installation is complete",
        )?;
        Ok(())
    }

    fn write_config(&self) -> Result<(), ScratchPgError> {
        let conf = self.data_dir.join("postgresql.conf");
        let socket_dir = self.dir.path().to_string_lossy().replace('\'', "''");
        let log_path = self.log_path();
        let extra = format!(
            "\n# --- added by pgharbor scratch_pg ---\n\
             listen_addresses = '{LISTEN_HOST}'\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = 300\n\
             fsync = off\n\
             shared_buffers = 128MB\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%u@%d '\n"
        );
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(|source| ScratchPgError::Io {
                context: format!("opening {}", conf.display()),
                source,
            })?;
        file.write_all(extra.as_bytes())
            .map_err(|source| ScratchPgError::Io {
                context: format!("writing {}", conf.display()),
                source,
            })?;
        // initdb ran with `--auth-host=scram-sha-256` so that the superuser's
        // secret and the default `password_encryption` are SCRAM; only now is
        // the host method relaxed to `md5` (= SCRAM for SCRAM roles, MD5 for
        // MD5 roles), see the module docs.
        let hba = self.data_dir.join("pg_hba.conf");
        fs::write(&hba, PG_HBA).map_err(|source| ScratchPgError::Io {
            context: format!("writing {}", hba.display()),
            source,
        })?;
        tracing::trace!(log = %log_path.display(), "scratch PostgreSQL configured");
        Ok(())
    }

    /// `pg_ctl start -w` on `self.port`, logging to `log_path()`.
    fn pg_ctl_start(&self, attempt: u32) -> Result<(), ScratchPgError> {
        let log_path = self.log_path();
        let log_len_before = fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let mut cmd = self.command(&self.bin_dir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log_path)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start");
        match self.run(cmd, "") {
            Ok(_) => Ok(()),
            Err(ScratchPgError::CommandFailed { output, .. }) => {
                let log = fs::read(&log_path).unwrap_or_default();
                let start = usize::try_from(log_len_before).unwrap_or(0).min(log.len());
                let new_log = String::from_utf8_lossy(&log[start..]);
                Err(ScratchPgError::StartFailed {
                    port: self.port,
                    attempt,
                    output,
                    log_path,
                    log_tail: last_lines(&new_log, 20),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// `pg_ctl stop -w -m <mode>`.
    fn pg_ctl_stop(&self, mode: &str) -> Result<(), ScratchPgError> {
        let mut cmd = self.command(&self.bin_dir.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data_dir).args([
            "-w",
            "-t",
            PG_CTL_TIMEOUT_SECS,
            "-m",
            mode,
            "stop",
        ]);
        self.run(
            cmd,
            "is the server running? (stop() after stop() fails; use restart() to start it again)",
        )?;
        Ok(())
    }
}

impl ScratchPostgres {
    /// For a server kept in a static (statics are never dropped): a small
    /// shell process waits on a pipe from us, and when the pipe closes (this
    /// process exits, however it exits) it stops the server and removes its
    /// directory. Keep the returned `Child` for as long as the process runs.
    pub fn stop_when_process_exits(&self) -> Result<std::process::Child, ScratchPgError> {
        let stop = format!(
            "'{}' -D '{}' stop -m immediate -w >/dev/null 2>&1",
            self.bin_dir.join("pg_ctl").display(),
            self.data_dir.display()
        );
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {stop}")
        } else {
            stop
        };
        let script = format!(
            "cat >/dev/null; {stop}; rm -rf '{}'",
            self.dir.path().display()
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| ScratchPgError::Spawn {
                program: "sh".into(),
                source,
            })
    }
}

impl Drop for ScratchPostgres {
    /// Stops the server immediately (no checkpoint, the data is thrown away
    /// anyway); the temp dir is removed afterwards when `dir` is dropped.
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop("immediate");
    }
}
