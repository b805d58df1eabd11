//! TLS on a scratch server, for tests of `[server_tls]`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use super::{ScratchPgError, ScratchPostgres, OS_USER, PG_HBA};

impl ScratchPostgres {
    /// Turns `ssl` on with the given PEM certificate chain and private key
    /// (written to the data directory as `server.crt` / `server.key`,
    /// owned by the server's OS user, the key readable by it alone, as
    /// Postgres insists). Takes effect with a configuration reload: no
    /// restart, connections already open are untouched.
    pub fn enable_ssl(&self, cert_pem: &str, key_pem: &str) -> Result<(), ScratchPgError> {
        for (name, text, mode) in [
            ("server.crt", cert_pem, 0o644),
            ("server.key", key_pem, 0o600),
        ] {
            let path = self.data_dir.join(name);
            let io = |source| ScratchPgError::Io {
                context: format!("writing {}", path.display()),
                source,
            };
            fs::write(&path, text).map_err(io)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io)?;
            if self.as_postgres {
                let mut chown = Command::new("chown");
                chown.arg(format!("{OS_USER}:")).arg(&path);
                self.run(chown, "chown must be available")?;
            }
        }
        self.psql(
            "postgres",
            "ALTER SYSTEM SET ssl = on;\nSELECT pg_reload_conf();",
        )?;
        Ok(())
    }

    /// Whether the server now has `ssl` on (a reload is asynchronous).
    pub fn ssl_is_on(&self) -> bool {
        self.psql("postgres", "SHOW ssl").is_ok_and(|v| v == "on")
    }

    /// Lets TCP clients in over TLS only (`hostssl` lines instead of
    /// `host`); local socket connections stay trusted. Takes effect with a
    /// configuration reload.
    pub fn require_ssl_over_tcp(&self) -> Result<(), ScratchPgError> {
        let hba = self.data_dir.join("pg_hba.conf");
        let text = PG_HBA.replace("\nhost ", "\nhostssl ");
        fs::write(&hba, text).map_err(|source| ScratchPgError::Io {
            context: format!("writing {}", hba.display()),
            source,
        })?;
        self.psql("postgres", "SELECT pg_reload_conf();")?;
        Ok(())
    }
}
