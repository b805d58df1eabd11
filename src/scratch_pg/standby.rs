//! A hot standby of a scratch server, made as an operator makes one
//! (`pg_basebackup -R`), and the two moves of a failover: the primary
//! crashing, the standby promoted.

use super::*;

impl ScratchPostgres {
    /// A hot standby of this server: `pg_basebackup -R -X stream` over
    /// this server's unix socket into a fresh directory, configured as
    /// [`ScratchPostgres::start`] configures a server, started on its own
    /// port. It streams from this server until it is promoted. Dropped, it
    /// is stopped and deleted like any scratch server.
    pub fn start_standby(&self) -> Result<ScratchPostgres, ScratchPgError> {
        let dir = Self::new_dir("pgharbor-pg-standby-")?;
        let mut standby = ScratchPostgres {
            data_dir: dir.path().join("data"),
            dir,
            bin_dir: self.bin_dir.clone(),
            port: 0,
            as_postgres: self.as_postgres,
        };
        if standby.as_postgres {
            standby.hand_dir_to_postgres()?;
        }
        let mut cmd = standby.command(&self.bin_dir.join("pg_basebackup"));
        cmd.arg("-D")
            .arg(&standby.data_dir)
            .arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args([
                "-U",
                SUPERUSER,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ]);
        standby.run(
            cmd,
            "pg_basebackup failed; the primary must allow replication over its unix socket",
        )?;
        // The copied postgresql.conf names the primary's socket directory
        // and log; the lines appended now come later and win.
        standby.write_config()?;
        standby.start_on_a_free_port()?;
        Ok(standby)
    }

    /// Promotes a standby to a primary (`pg_ctl promote -w`): it leaves
    /// recovery and accepts writes once this returns.
    pub fn promote(&self) -> Result<(), ScratchPgError> {
        let mut cmd = self.command(&self.bin_dir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "promote"]);
        self.run(cmd, "is this server a running standby?")?;
        tracing::info!(port = self.port, "scratch PostgreSQL promoted");
        Ok(())
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`):
    /// every session is cut without a goodbye.
    pub fn crash(&self) -> Result<(), ScratchPgError> {
        self.pg_ctl_stop("immediate")
    }
}
