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
