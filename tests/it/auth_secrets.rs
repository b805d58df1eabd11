//! Passwords given through `password_env` and `password_file`: clients log
//! in with them (SCRAM), the auth_user's too, a RELOAD re-reads the file,
//! and neither password shows in pgharbor's debug log or in any SHOW
//! output.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;
use pgharbor::config::Config;

const ENV_USER: &str = "secret_env_user";
const ENV_PASSWORD: &str = "env-pw-Qx7f3a";
const FILE_USER: &str = "secret_file_user";
const FILE_PASSWORD: &str = "file-pw-Wc91c2";
const FILE_PASSWORD_NEW: &str = "file-pw-Zn5d0e";
const ENV_VAR: &str = "PGHARBOR_TEST_SECRET_ENV_PW";

/// pgharbor as its own process, logging at debug level into a file.
struct Logged {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(port: u16, password_file: &std::path::Path) -> String {
    let pg_port = pg().port();
    format!(
        r#"
[proxy]
listen_addr = "127.0.0.1:{port}"
admin_users = ["admin"]

[pool]
# The lookup logs in with the password from the variable.
auth_user = "{ENV_USER}"

[[databases]]
name = "app"
port = {pg_port}

[[users]]
name = "{ENV_USER}"
password_env = "{ENV_VAR}"

[[users]]
name = "{FILE_USER}"
password_file = "{}"

[[users]]
name = "admin"
password = "admin-pw"
"#,
        password_file.display()
    )
}

fn dsn(port: u16, user: &str, password: &str, db: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={user} password={password} dbname={db} connect_timeout=10"
    )
}

async fn login(
    port: u16,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) =
        tokio_postgres::connect(&dsn(port, user, password, "app"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// Every row of every SHOW subject of the admin console, as text.
async fn all_show_output(port: u16) -> String {
    let admin = login_admin(port).await;
    let mut text = String::new();
    for what in [
        "POOLS",
        "CLIENTS",
        "SERVERS",
        "STATS",
        "DATABASES",
        "CONFIG",
        "LISTS",
        "VERSION",
    ] {
        let rows = admin
            .simple_query(&format!("SHOW {what}"))
            .await
            .expect("SHOW");
        for m in rows {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                for i in 0..r.len() {
                    text.push_str(r.get(i).unwrap_or(""));
                    text.push('\t');
                }
                text.push('\n');
            }
        }
    }
    assert!(text.contains("app"), "SHOW output looks empty: {text}");
    text
}

async fn login_admin(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &dsn(port, "admin", "admin-pw", "pgharbor"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("admin login");
    tokio::spawn(conn);
    client
}

fn start(dir: &std::path::Path, password_file: &std::path::Path) -> Logged {
    let port = free_port();
    let path = dir.join("pgharbor.toml");
    std::fs::write(&path, config(port, password_file)).unwrap();
    let log = dir.join("pgharbor.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgharbor"))
        .arg("-c")
        .arg(&path)
        .env("PGHARBOR_LOG", "debug")
        .env(ENV_VAR, ENV_PASSWORD)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start pgharbor");
    Logged { child, port, log }
}

async fn query_one(client: &tokio_postgres::Client) -> String {
    simple_value(client, "SELECT current_user")
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn passwords_from_a_variable_and_a_file_log_in_reload_and_never_show() {
    pg().create_user(ENV_USER, ENV_PASSWORD, "scram-sha-256")
        .expect("role");
    pg().create_user(FILE_USER, FILE_PASSWORD, "scram-sha-256")
        .expect("role");
    // The auth_user reads pg_authid.
    pg().psql("app", &format!("ALTER ROLE {ENV_USER} SUPERUSER"))
        .expect("superuser");
    let looked_up = "secret_looked_up_user";
    pg().create_user(looked_up, "looked-up-pw", "scram-sha-256")
        .expect("role");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("file-user-password");
    std::fs::write(&secret_file, format!("{FILE_PASSWORD}\n")).unwrap();
    let proxy = start(dir.path(), &secret_file);
    let port = proxy.port;
    let up = eventually(Duration::from_secs(10), || async {
        login(port, ENV_USER, ENV_PASSWORD).await.is_ok()
    })
    .await;
    assert!(
        up,
        "pgharbor did not start or refused the password from the variable"
    );

    let env_client = login(port, ENV_USER, ENV_PASSWORD)
        .await
        .expect("password_env login");
    assert_eq!(query_one(&env_client).await, ENV_USER);
    let file_client = login(port, FILE_USER, FILE_PASSWORD)
        .await
        .expect("password_file login");
    assert_eq!(query_one(&file_client).await, FILE_USER);
    drop(file_client);
    // A user found by auth_query, which logged in as the auth_user.
    let found = login(port, looked_up, "looked-up-pw")
        .await
        .expect("auth_query login");
    assert_eq!(query_one(&found).await, looked_up);

    // The password changes in Postgres and in the mounted file; RELOAD,
    // then RECONNECT so the next server login uses the file's new content.
    pg().create_user(FILE_USER, FILE_PASSWORD_NEW, "scram-sha-256")
        .expect("role");
    std::fs::write(&secret_file, format!("{FILE_PASSWORD_NEW}\n")).unwrap();
    let admin = login_admin(port).await;
    admin.simple_query("RELOAD").await.expect("RELOAD");
    admin.simple_query("RECONNECT").await.expect("RECONNECT");
    let old = login(port, FILE_USER, FILE_PASSWORD)
        .await
        .expect_err("the old password is refused");
    assert_eq!(sqlstate(&old).as_deref(), Some("28P01"), "{old}");
    let file_client = login(port, FILE_USER, FILE_PASSWORD_NEW)
        .await
        .expect("the new password works");
    assert_eq!(query_one(&file_client).await, FILE_USER);

    let shown = all_show_output(port).await;
    drop((env_client, file_client, admin));
    let log = std::fs::read_to_string(&proxy.log).unwrap();
    assert!(
        log.contains("DEBUG"),
        "the log is not at debug level:\n{log}"
    );
    for secret in [ENV_PASSWORD, FILE_PASSWORD, FILE_PASSWORD_NEW] {
        assert!(!shown.contains(secret), "SHOW output holds a password");
        assert!(!log.contains(secret), "the log holds a password");
    }
}

#[test]
fn a_missing_variable_a_missing_file_or_two_sources_are_errors_naming_the_key() {
    let user = |keys: &str| format!("[[users]]\nname = \"u\"\n{keys}\n");
    let err = |text: String| {
        Config::from_toml_str(&text)
            .expect_err("must be refused")
            .to_string()
    };
    let e = err(user("password_env = \"PGHARBOR_TEST_NEVER_SET_VARIABLE\""));
    assert!(
        e.contains("users[0].password_env") && e.contains("is not set"),
        "{e}"
    );
    let e = err(user("password_file = \"/nonexistent/pgharbor-secret\""));
    assert!(
        e.contains("users[0].password_file") && e.contains("/nonexistent/pgharbor-secret"),
        "{e}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "s3cr3t-in-file\n").unwrap();
    let both = format!(
        "password = \"s3cr3t-inline\"\npassword_file = \"{}\"",
        file.display()
    );
    let e = err(user(&both));
    assert!(
        e.contains("users[0].password") && e.contains("only one of"),
        "{e}"
    );
    assert!(!e.contains("s3cr3t"), "the error shows a secret: {e}");
    let config = Config::from_toml_str(&user(&format!("password_file = \"{}\"", file.display())))
        .expect("valid");
    assert_eq!(
        config.users[0].password, "s3cr3t-in-file",
        "one trailing newline is dropped"
    );
    assert!(
        !format!("{config:?}").contains("s3cr3t"),
        "Debug output shows the password"
    );
}
