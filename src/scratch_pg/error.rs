//! What can go wrong with a scratch server, each message ending with what to do.

use std::path::PathBuf;

/// Everything that can go wrong while creating, running or talking to a
/// scratch server. Every message ends with what to do about it, because the
/// usual reader is someone whose test or demo just failed on a new machine.
#[derive(Debug, thiserror::Error)]
pub enum ScratchPgError {
    /// No `initdb` under `/usr/lib/postgresql/*/bin` and no override given.
    #[error(
        "no PostgreSQL binaries found under /usr/lib/postgresql/*/bin: install the postgresql \
         package (apt-get install postgresql postgresql-contrib) or set PGHARBOR_PG_BIN to a \
         directory containing initdb, pg_ctl and psql"
    )]
    NoBinaries,

    /// `PGHARBOR_PG_BIN` is set but does not point at PostgreSQL binaries.
    #[error(
        "PGHARBOR_PG_BIN={} does not contain an initdb executable: point it at a PostgreSQL bin \
         directory such as /usr/lib/postgresql/15/bin, or unset it",
        path.display()
    )]
    BadBinDir {
        /// The directory named by the environment variable.
        path: PathBuf,
    },

    /// Running as root, but there is nobody to run PostgreSQL as.
    #[error(
        "running as root but there is no `postgres` OS user to run PostgreSQL as (PostgreSQL \
         refuses to run as root): install the postgresql package, which creates it, or run \
         `useradd --system --home-dir /var/lib/postgresql postgres`"
    )]
    NoPostgresUser,

    /// The temporary directory is unusable for PostgreSQL.
    #[error("cannot use temporary directory {}: {reason}: set TMPDIR to a short, world-traversable directory such as /tmp", path.display())]
    BadTempDir {
        /// The directory that was created.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A local file operation failed.
    #[error("{context}: {source}: check permissions and free space of the temporary directory")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A program could not be started at all.
    #[error("could not run `{program}`: {source}: check that it is installed and executable")]
    Spawn {
        /// The program (and, as root, the runuser wrapper) that failed to start.
        program: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A PostgreSQL tool ran but reported failure.
    #[error("`{command}` failed ({status}): {output}\nhint: {hint}")]
    CommandFailed {
        /// The command line, for copy-pasting.
        command: String,
        /// Exit status description.
        status: String,
        /// Its stderr (or stdout when stderr was empty).
        output: String,
        /// What to do about it.
        hint: String,
    },

    /// The server did not come up.
    #[error(
        "PostgreSQL did not start on 127.0.0.1:{port} (attempt {attempt}): {output}\n\
         --- last lines of {} ---\n{log_tail}\n\
         hint: read the server log above; a busy port, too little shared memory (/dev/shm) or \
         a full disk are the usual causes",
        log_path.display()
    )]
    StartFailed {
        /// The port PostgreSQL was told to use.
        port: u16,
        /// Which attempt this was.
        attempt: u32,
        /// What `pg_ctl` printed.
        output: String,
        /// Server log file.
        log_path: PathBuf,
        /// Its last lines, so the reason is visible without the (deleted) file.
        log_tail: String,
    },

    /// `psql` reported an error for the SQL it was given.
    #[error(
        "SQL failed in database {dbname:?}: {stderr}\nSQL: {sql}\n\
         hint: fix the statement; the server log is {}",
        log_path.display()
    )]
    Sql {
        /// Database the SQL ran in.
        dbname: String,
        /// The (possibly shortened) SQL.
        sql: String,
        /// psql's error output.
        stderr: String,
        /// Server log file.
        log_path: PathBuf,
    },

    /// A caller passed something this module cannot turn into valid SQL.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}
