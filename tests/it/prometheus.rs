//! A real Prometheus (Debian's package) scrapes an in-process pgharbor with
//! the repository's rules loaded, `for:` shortened to test size: the
//! pool-saturation alert fires while clients queue for a full pool and
//! resolves once the load stops.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const ALERT: &str = "PgharborPoolSaturated";

/// The Prometheus process, killed when the test ends however it ends.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// deploy/prometheus/alerts.yaml with every `for:` set to `for_`.
fn rules_with_for(for_: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yaml");
    let text = std::fs::read_to_string(path).expect("read alerts.yaml");
    text.lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!(
                "{}for: {for_}",
                &line[..line.len() - line.trim_start().len()]
            ),
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts Prometheus on a free loopback port, scraping `target` and
/// evaluating the rules every second.
async fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("rules.yaml"), rules_with_for("2s")).expect("write rules");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - rules.yaml\n\
         scrape_configs:\n  - job_name: pgharbor\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(PROMETHEUS)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start /usr/bin/prometheus (Debian package `prometheus`; .ci/run installs it)");
    let prometheus = Prometheus {
        child,
        addr,
        _dir: dir,
    };
    let ready = eventually(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/-/ready").await.0 == 200
    })
    .await;
    assert!(ready, "Prometheus did not become ready on {addr}");
    prometheus
}

/// The states of the alert `name` in Prometheus' /api/v1/alerts.
async fn alert_states(prometheus: &Prometheus, name: &str) -> Vec<String> {
    let (status, body) = http_get(prometheus.addr, "/api/v1/alerts").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
    json["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == name)
        .filter_map(|a| a["state"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn the_pool_saturation_alert_fires_under_load_and_resolves_after_it() {
    let text = config_text("transaction", 2, "") + "\n[metrics]\nlisten_addr = \"127.0.0.1:0\"\n";
    let proxy = start_proxy_with(&text).await;
    let prometheus = start_prometheus(proxy.metrics_addr().expect("metrics endpoint")).await;

    // Load: two clients hold both servers in open transactions, three more
    // queue for one.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let c = connect(&proxy, "app").await;
        c.batch_execute("BEGIN; SELECT 1").await.expect("begin");
        holders.push(c);
    }
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let c = connect(&proxy, "app").await;
        waiters.push(tokio::spawn(async move {
            c.simple_query("SELECT 1").await.map(|_| ())
        }));
    }
    let fired = eventually(Duration::from_secs(60), || async {
        alert_states(&prometheus, ALERT)
            .await
            .iter()
            .any(|s| s == "firing")
    })
    .await;
    assert!(fired, "{ALERT} did not fire within 60s of a saturated pool");

    // The load stops: the holders commit, the waiters get their servers.
    for c in &holders {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("waiters served once the pool frees up")
            .expect("waiter task")
            .expect("waiter query");
    }
    let resolved = eventually(Duration::from_secs(60), || async {
        alert_states(&prometheus, ALERT).await.is_empty()
    })
    .await;
    assert!(resolved, "{ALERT} still active 60s after the load stopped");
    drop(holders);
    proxy.begin_shutdown();
}
