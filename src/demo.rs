//! `pgharbor demo`: a throwaway Postgres from the local binaries, pgharbor in
//! front of it, and the connection strings to try. Ctrl-C tears both down.

use crate::config::Config;
use crate::run::{serve_until_signal, RunError};
use crate::scratch_pg::ScratchPostgres;
use crate::Proxy;

const DEMO_USER: &str = "demo";
const DEMO_PASSWORD: &str = "demo";

/// Runs the demo with pgharbor on `listen` and its metrics endpoint on
/// `metrics_listen` (either may use port 0; the real addresses are printed).
pub async fn run(listen: &str, metrics_listen: &str) -> Result<(), RunError> {
    println!("pgharbor demo: starting a throwaway PostgreSQL ...");
    let pg = tokio::task::spawn_blocking(|| -> Result<ScratchPostgres, String> {
        let pg = ScratchPostgres::start().map_err(|e| e.to_string())?;
        pg.create_user(DEMO_USER, DEMO_PASSWORD, "scram-sha-256")
            .map_err(|e| e.to_string())?;
        pg.create_database(DEMO_USER, DEMO_USER)
            .map_err(|e| e.to_string())?;
        Ok(pg)
    })
    .await
    .map_err(|e| RunError::Demo(e.to_string()))?
    .map_err(RunError::Demo)?;
    let config = Config::from_toml_str(&demo_config(pg.port(), listen, metrics_listen))?;
    let proxy = Proxy::start(config).await?;
    let a = proxy.addr();
    println!();
    println!(
        "PostgreSQL from {} is running on 127.0.0.1:{} (data in {})",
        pg.bin_dir().display(),
        pg.port(),
        pg.socket_dir().display()
    );
    println!("pgharbor is listening on {a}; try:");
    println!();
    println!(
        "  psql 'postgresql://{DEMO_USER}:{DEMO_PASSWORD}@{}:{}/{DEMO_USER}' -c 'select 1'",
        a.ip(),
        a.port()
    );
    println!("  psql 'postgresql://{DEMO_USER}:{DEMO_PASSWORD}@{}:{}/{DEMO_USER}_session'   # session mode", a.ip(), a.port());
    if let Some(m) = proxy.metrics_addr() {
        println!("  curl http://{m}/metrics");
    }
    println!();
    println!("Press Ctrl-C to stop both.");
    let r = serve_until_signal(&proxy, None).await;
    drop(pg);
    println!("pgharbor demo: stopped, temporary PostgreSQL removed");
    r
}

fn demo_config(pg_port: u16, listen: &str, metrics_listen: &str) -> String {
    format!(
        r#"
[proxy]
listen_addr = "{listen}"
admin_users = ["{DEMO_USER}"]
shutdown_timeout = "5s"

[metrics]
listen_addr = "{metrics_listen}"

[pool]
pool_mode = "transaction"
pool_size = 10

[[databases]]
name = "{DEMO_USER}"
port = {pg_port}

[[databases]]
name = "{DEMO_USER}_session"
dbname = "{DEMO_USER}"
port = {pg_port}
pool_mode = "session"

[[users]]
name = "{DEMO_USER}"
password = "{DEMO_PASSWORD}"
auth_type = "scram-sha-256"
"#
    )
}
