use super::*;

#[test]
fn minimal_file_gets_defaults() {
    let c = Config::from_toml_str("[[databases]]\nname = \"app\"\n").unwrap();
    assert_eq!(c.pool.pool_size, 20);
    assert_eq!(c.pool.pool_mode, PoolMode::Transaction);
    assert_eq!(c.databases[0].server_dbname(), "app");
    assert_eq!(c.databases[0].port, 5432);
}

#[test]
fn durations_need_units_and_errors_name_the_key() {
    let err = Config::from_toml_str("[pool]\nquery_wait_timeout = \"5 parsecs\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("query_wait_timeout"), "{err}");
    let c = Config::from_toml_str("[pool]\nquery_wait_timeout = \"250ms\"\n").unwrap();
    assert_eq!(c.pool.query_wait_timeout, Duration::from_millis(250));
}

#[test]
fn unknown_keys_are_refused_by_name() {
    let err = Config::from_toml_str("[pool]\npool_sise = 3\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("pool_sise"), "{err}");
}

#[test]
fn hba_file_errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let hba = dir.path().join("hba.conf");
    let config = format!("[pool]\nhba_file = \"{}\"\n", hba.display());
    for (text, why) in [
        (
            "host all all all md5\nhost all all all ident\n",
            "line 2: method `ident`",
        ),
        (
            "host all all all cert\n",
            "line 1: method cert needs client certificates",
        ),
    ] {
        std::fs::write(&hba, text).unwrap();
        let err = Config::from_toml_str(&config).unwrap_err().to_string();
        assert!(err.contains("pool.hba_file") && err.contains(why), "{err}");
    }
    std::fs::write(&hba, "host all all 10.0.0.0/8 scram-sha-256\n").unwrap();
    assert!(Config::from_toml_str(&config).unwrap().hba.is_some());
}

#[test]
fn a_validation_error_names_the_line_of_its_key() {
    let text = "[pool]\npool_size = 4\n\n[[databases]]\nname = \"a\"\n\n[[databases]]\nname = \"b\"\npool_size = 0\n";
    assert_eq!(line_of_key(text, "pool.pool_size"), Some(2));
    assert_eq!(line_of_key(text, "databases[1].pool_size"), Some(9));
    assert_eq!(line_of_key(text, "databases[0].pool_size"), None);
    let err = Config::from_toml_str(text)
        .unwrap_err()
        .in_file(Path::new("/etc/pgharbor.toml"), text)
        .to_string();
    assert!(err.starts_with("/etc/pgharbor.toml, line 9:"), "{err}");
    assert!(err.contains("databases[1].pool_size"), "{err}");
}

#[test]
fn database_overrides_are_validated() {
    let err =
        Config::from_toml_str("[[databases]]\nname = \"a\"\npool_size = 2\nmin_pool_size = 3\n")
            .unwrap_err()
            .to_string();
    assert!(err.contains("databases[0].min_pool_size"), "{err}");
}

#[test]
fn login_timeout_and_tcp_options_read_with_their_defaults_and_per_database() {
    let c = Config::from_toml_str("[[databases]]\nname = \"app\"\n").unwrap();
    assert_eq!(c.proxy.client_login_timeout, Duration::from_secs(15));
    assert!(c.proxy.client_tcp_keepalive);
    assert_eq!(c.proxy.client_tcp_user_timeout, Duration::ZERO);
    assert!(c.pool.server_tcp_keepalive);
    assert_eq!(c.pool.server_tcp_user_timeout, Duration::ZERO);

    let text = "[proxy]\nclient_login_timeout = \"1500ms\"\nclient_tcp_keepalive = false\n\
                client_tcp_user_timeout = \"20s\"\n\
                [pool]\nserver_tcp_keepalive = false\nserver_tcp_user_timeout = \"2s\"\n\
                [[databases]]\nname = \"a\"\n\
                [[databases]]\nname = \"b\"\nserver_tcp_keepalive = true\nserver_tcp_user_timeout = \"1m\"\n";
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(c.proxy.client_login_timeout, Duration::from_millis(1500));
    assert!(!c.proxy.client_tcp_keepalive);
    assert_eq!(c.proxy.client_tcp_user_timeout, Duration::from_secs(20));
    let a = c.databases[0].pool_settings(&c.pool);
    assert!(!a.server_tcp_keepalive);
    assert_eq!(a.server_tcp_user_timeout, Duration::from_secs(2));
    let b = c.databases[1].pool_settings(&c.pool);
    assert!(b.server_tcp_keepalive);
    assert_eq!(b.server_tcp_user_timeout, Duration::from_secs(60));
}

#[test]
fn login_timeout_and_tcp_options_refuse_bad_values_by_name() {
    for (text, key) in [
        (
            "[proxy]\nclient_login_timeout = \"0s\"\n",
            "proxy.client_login_timeout",
        ),
        (
            "[proxy]\nclient_login_timeout = \"15\"\n",
            "client_login_timeout",
        ),
        (
            "[proxy]\nclient_tcp_keepalive = \"yes\"\n",
            "client_tcp_keepalive",
        ),
        (
            "[proxy]\nclient_tcp_user_timeout = \"soon\"\n",
            "client_tcp_user_timeout",
        ),
        ("[pool]\nserver_tcp_keepalive = 1\n", "server_tcp_keepalive"),
        (
            "[pool]\nserver_tcp_user_timeout = \"2\"\n",
            "server_tcp_user_timeout",
        ),
        (
            "[[databases]]\nname = \"a\"\nserver_tcp_user_timeout = \"x\"\n",
            "server_tcp_user_timeout",
        ),
    ] {
        let err = Config::from_toml_str(text).unwrap_err().to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}
