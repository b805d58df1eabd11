//! What `RESET ALL` returns to: on Postgres, the settings the client gave
//! at startup. Run with tokio-postgres directly and through pgharbor in
//! transaction mode, unpinned (over a pool of one shared with a client of
//! other settings) and pinned; each `SHOW` must read the same.

use crate::support::{direct_dsn, dsn, start_proxy};

/// The client's startup settings: reported ones and an unreported one.
const STARTUP: &str = "application_name=startup_app options='-c DateStyle=SQL,DMY -c work_mem=8MB'";

/// The steps, with `pin` adding a statement that pins the client.
async fn settings_after_reset_all(base_dsn: &str, pin: bool) -> Vec<String> {
    let client = crate::support::connect_dsn(&format!("{base_dsn} {STARTUP}")).await;
    let other = crate::support::connect_dsn(base_dsn).await;
    let mut steps = vec![
        "SET application_name = 'changed'",
        "SET DateStyle = 'ISO, YMD'",
        "RESET ALL",
        "SHOW application_name",
        "SHOW DateStyle",
        "SHOW work_mem",
        "BEGIN",
        "SET application_name = 'in_a_rolled_back_transaction'",
        "RESET ALL",
        "ROLLBACK",
        "SHOW application_name",
    ];
    if pin {
        steps.insert(0, "SET temp_buffers = '2MB'");
    }
    let mut seen = Vec::new();
    let mut in_transaction = false;
    for sql in steps {
        in_transaction |= sql == "BEGIN";
        if !in_transaction {
            // Another client between the transactions, with its own
            // settings.
            other.simple_query("SELECT 1").await.expect("other client");
        }
        in_transaction &= sql != "ROLLBACK";
        let rows = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        for m in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                seen.push(format!("{sql}: {}", r.get(0).unwrap_or("NULL")));
            }
        }
    }
    seen
}

async fn reset_all_returns_to_the_startup_settings(pin: bool) {
    let want = settings_after_reset_all(&direct_dsn(), pin).await;
    // A pinned client keeps its server: the other one needs a second.
    let proxy = start_proxy("transaction", if pin { 2 } else { 1 }).await;
    let got = settings_after_reset_all(&dsn(&proxy, "app"), pin).await;
    assert_eq!(got, want, "through pgharbor (left) and directly (right)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_returns_to_the_startup_settings_in_transaction_mode() {
    reset_all_returns_to_the_startup_settings(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_returns_to_the_startup_settings_of_a_pinned_client() {
    reset_all_returns_to_the_startup_settings(true).await;
}
