//! What pgharbor does to its server connections between clients, seen
//! from Postgres: `server_lifetime` retires old servers (when given back
//! and from the idle list) but never one in use, `server_check_query` runs
//! on a server idle past `server_check_delay`, and a session-mode server
//! runs the configured `server_reset_query` when its client leaves.

use std::time::Duration;

use crate::support::*;

/// `select pg_backend_pid()` through `client`.
async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    simple_value(client, "select pg_backend_pid()")
        .await
        .and_then(|v| v.parse().ok())
        .expect("a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_past_server_lifetime_is_replaced_but_never_mid_transaction() {
    let user = "lifetime_role";
    let text = config_text_for_user("transaction", 1, "server_lifetime = \"1s\"", user);
    let proxy = start_proxy_with(&text).await;
    let client = connect_dsn(&dsn_as(&proxy, user, user)).await;
    let direct = connect_direct().await;

    // In a transaction longer than the lifetime, the server stays.
    client.batch_execute("BEGIN").await.expect("begin");
    let old = backend_pid(&client).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        backend_pid(&client).await,
        old,
        "another server mid-transaction"
    );
    assert_eq!(
        backend_state(&direct, old).await.as_deref(),
        Some("idle in transaction"),
        "the server in use was closed"
    );
    client.batch_execute("COMMIT").await.expect("commit");

    // Given back past its lifetime, it is closed; the next transaction
    // gets a new server.
    let new = backend_pid(&client).await;
    assert_ne!(new, old, "a server past server_lifetime served again");
    let gone = eventually(Duration::from_secs(5), || async {
        backend_state(&direct, old).await.is_none()
    })
    .await;
    assert!(gone, "the retired server {old} is still connected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_past_server_lifetime_is_closed_without_any_client() {
    let user = "lifetime_idle_role";
    let text = config_text_for_user("transaction", 1, "server_lifetime = \"1s\"", user);
    let proxy = start_proxy_with(&text).await;
    let client = connect_dsn(&dsn_as(&proxy, user, user)).await;
    let direct = connect_direct().await;
    let pid = backend_pid(&client).await;
    assert_eq!(backend_state(&direct, pid).await.as_deref(), Some("idle"));
    // No client does anything: the janitor closes it.
    let gone = eventually(Duration::from_secs(5), || async {
        backend_state(&direct, pid).await.is_none()
    })
    .await;
    assert!(gone, "the idle server {pid} outlived server_lifetime");
    assert_ne!(backend_pid(&client).await, pid);
}

/// How many times the health check's sequence was advanced.
async fn checks_run(direct: &tokio_postgres::Client) -> i64 {
    let row = direct
        .query_one(
            "select case when is_called then last_value else 0 end from server_check_seq",
            &[],
        )
        .await
        .expect("read the sequence");
    row.get(0)
}

/// The check is seen as the backend's query in pg_stat_activity while it
/// runs (it sleeps half a second to be seen: the client's own query
/// replaces it right after), and counted by a sequence it advances, which
/// no rollback undoes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_check_query_runs_on_a_server_idle_past_server_check_delay() {
    pg().psql(
        "app",
        "DROP SEQUENCE IF EXISTS server_check_seq; CREATE SEQUENCE server_check_seq; \
         GRANT ALL ON server_check_seq TO PUBLIC",
    )
    .expect("create sequence");
    let user = "check_query_role";
    let check = "select nextval('server_check_seq'), pg_sleep(0.5)";
    let extra = format!("server_check_query = \"{check}\"\nserver_check_delay = \"1s\"");
    let text = config_text_for_user("transaction", 1, &extra, user);
    let proxy = start_proxy_with(&text).await;
    let client = connect_dsn(&dsn_as(&proxy, user, user)).await;
    let direct = connect_direct().await;
    let pid = backend_pid(&client).await;
    // Used again at once: no check.
    assert_eq!(backend_pid(&client).await, pid);
    assert_eq!(checks_run(&direct).await, 0, "checked a server just used");
    // Idle longer than server_check_delay: checked with the query, then
    // lent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let query = tokio::spawn(async move { backend_pid(&client).await });
    let running = || async {
        direct
            .query_opt(
                "select query from pg_stat_activity where pid = $1 and state = 'active'",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .map(|r| r.get::<_, String>(0))
    };
    let seen = eventually(Duration::from_secs(3), || async {
        running().await.as_deref() == Some(check)
    })
    .await;
    assert!(seen, "server_check_query not seen running on {pid}");
    let served = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the query after the check")
        .expect("query task");
    assert_eq!(served, pid, "the checked server serves the query");
    assert_eq!(
        checks_run(&direct).await,
        1,
        "server_check_query did not run once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_server_reset_query_runs_when_a_session_client_leaves() {
    let user = "reset_query_role";
    let reset = "RESET ALL; SELECT 'reset-marker'";
    let text = config_text_for_user(
        "session",
        1,
        &format!("server_reset_query = \"{reset}\""),
        user,
    );
    let proxy = start_proxy_with(&text).await;
    let direct = connect_direct().await;
    let client = connect_dsn(&dsn_as(&proxy, user, user)).await;
    let pid = backend_pid(&client).await;
    client
        .batch_execute("SET application_name = 'before_reset'")
        .await
        .expect("set");
    drop(client);
    let last_query = || async {
        direct
            .query_opt(
                "select query from pg_stat_activity where pid = $1 and state = 'idle'",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .map(|r| r.get::<_, String>(0))
    };
    let reset_ran = eventually(Duration::from_secs(10), || async {
        last_query().await.as_deref() == Some(reset)
    })
    .await;
    assert!(reset_ran, "last query of {pid}: {:?}", last_query().await);
    // The server is kept for the next client, its settings reset.
    let next = connect_dsn(&dsn_as(&proxy, user, user)).await;
    assert_eq!(backend_pid(&next).await, pid);
    assert_ne!(
        simple_value(&next, "SHOW application_name")
            .await
            .as_deref(),
        Some("before_reset")
    );
}
