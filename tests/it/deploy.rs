//! deploy/: every Kubernetes overlay renders with `kubectl kustomize`,
//! validates against the Kubernetes schemas (`kubernetes-validate`), and
//! agrees with the pgharbor config it mounts; the Prometheus rules and the
//! Grafana dashboard name only metrics a live pgharbor exports.
//!
//! The tools come from `.ci/run` (kubectl from the machine or PyPI,
//! kubernetes-validate into target/deploy-venv).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::*;
use base64::Engine;
use pgharbor::config::{AuthType, Config};
use serde::Deserialize;
use serde_yaml::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `name` from PATH, or from the venv `.ci/run` installs into target/.
fn tool(name: &str) -> PathBuf {
    let venv = repo().join("target/deploy-venv/bin").join(name);
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!("{name} is not installed; .ci/run installs it (see its deploy step)")
    })
}

/// `to` written relative to `from` (kustomize refuses absolute paths).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

struct Rendering {
    name: &'static str,
    docs: Vec<Value>,
}

/// `kubectl kustomize DIR`, parsed into its documents.
fn kustomize(dir: &Path) -> Vec<Value> {
    let out = Command::new(tool("kubectl"))
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 manifests");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("rendered YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Each overlay, and the shared pooler with the HPA-on-a-metric component
/// (rendered through a kustomization written in a temp dir).
fn renderings() -> Vec<Rendering> {
    let k8s = repo().join("deploy/kubernetes");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let rel = |p: &str| relative(dir.path(), &k8s.join(p)).display().to_string();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {}\ncomponents:\n  - {}\n",
            rel("overlays/shared-pooler"),
            rel("components/hpa-pgharbor-metric")
        ),
    )
    .expect("write kustomization");
    vec![
        Rendering {
            name: "sidecar",
            docs: kustomize(&k8s.join("overlays/sidecar")),
        },
        Rendering {
            name: "shared-pooler",
            docs: kustomize(&k8s.join("overlays/shared-pooler")),
        },
        Rendering {
            name: "shared-pooler + hpa-pgharbor-metric",
            docs: kustomize(dir.path()),
        },
    ]
}

fn is_operator_kind(doc: &Value) -> bool {
    str_at(doc, &["apiVersion"]).starts_with("monitoring.coreos.com/")
}

/// The string at `path` (keys, or list indexes as strings), or "".
fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).and_then(Value::as_str).unwrap_or("")
}

fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter()
        .try_fold(v, |v, key| match key.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(*key),
        })
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|d| str_at(d, &["kind"]) == kind)
        .collect()
}

fn list(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// Fails the test unless the Prometheus Operator resource has what the
/// Operator requires of its kind (its CRD's required fields).
fn check_operator_resource(name: &str, doc: &Value) {
    let kind = str_at(doc, &["kind"]);
    assert_eq!(str_at(doc, &["apiVersion"]), "monitoring.coreos.com/v1");
    assert!(
        !str_at(doc, &["metadata", "name"]).is_empty(),
        "{name}: {kind} without a name"
    );
    match kind {
        "PrometheusRule" => {
            let groups = list(at(doc, &["spec", "groups"]));
            assert!(!groups.is_empty(), "{name}: PrometheusRule without groups");
            for g in groups {
                assert!(
                    !str_at(g, &["name"]).is_empty(),
                    "{name}: a group without a name"
                );
                for r in list(g.get("rules")) {
                    let named = r.get("alert").or(r.get("record")).is_some();
                    assert!(named && r.get("expr").is_some(), "{name}: rule {r:?}");
                }
            }
        }
        "ServiceMonitor" => {
            assert!(
                at(doc, &["spec", "selector"]).is_some(),
                "{name}: no selector"
            );
            assert!(
                !list(at(doc, &["spec", "endpoints"])).is_empty(),
                "{name}: no endpoints"
            );
        }
        "PodMonitor" => {
            assert!(
                at(doc, &["spec", "selector"]).is_some(),
                "{name}: no selector"
            );
            let endpoints = list(at(doc, &["spec", "podMetricsEndpoints"]));
            assert!(!endpoints.is_empty(), "{name}: no podMetricsEndpoints");
        }
        other => panic!("{name}: unexpected Prometheus Operator kind {other}"),
    }
}

#[test]
fn every_overlay_renders_and_validates_against_the_kubernetes_schemas() {
    let validate = tool("kubernetes-validate");
    for r in renderings() {
        let (operator, core): (Vec<&Value>, Vec<&Value>) =
            r.docs.iter().partition(|d| is_operator_kind(d));
        assert!(!core.is_empty(), "{}: nothing rendered", r.name);
        let file = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).expect("temp");
        let text: Vec<String> = core
            .iter()
            .map(|d| serde_yaml::to_string(d).expect("YAML"))
            .collect();
        std::fs::write(file.path(), text.join("---\n")).expect("write manifests");
        // The newest Kubernetes this kubernetes-validate knows (its default).
        let out = Command::new(&validate)
            .args(["--strict", "--quiet"])
            .arg(file.path())
            .output()
            .expect("run kubernetes-validate");
        assert!(
            out.status.success(),
            "{}: kubernetes-validate: {}{}",
            r.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !operator.is_empty(),
            "{}: no ServiceMonitor/PodMonitor/PrometheusRule",
            r.name
        );
        for doc in operator {
            check_operator_resource(r.name, doc);
        }
    }
}

/// What one overlay's pgharbor pod runs with: the container, the pod, the
/// config file it reads (ConfigMap + Secret, joined as the init container
/// joins them) and the config parsed by pgharbor's own parser.
struct Pod<'a> {
    spec: &'a Value,
    container: &'a Value,
    config: Config,
}

/// The file the init container writes: `cat A B > OUT` with A and B on
/// volumes of the pod. Returns (OUT, the text pgharbor will read).
fn joined_config(name: &str, docs: &[Value], spec: &Value) -> (String, String) {
    let init = list(spec.get("initContainers"))
        .iter()
        .find(|c| str_at(c, &["name"]) == "config")
        .unwrap_or_else(|| panic!("{name}: no init container `config`"));
    let script = str_at(init, &["command", "2"]);
    let words: Vec<&str> = script.split_whitespace().collect();
    let ["cat", parts @ .., ">", out] = words.as_slice() else {
        panic!("{name}: the init container runs {script:?}, not `cat … > FILE`");
    };
    let text: String = parts
        .iter()
        .map(|path| volume_file(name, docs, spec, init, path))
        .collect::<Vec<_>>()
        .join("\n");
    (out.to_string(), text)
}

/// The content of `path` inside `container`: the ConfigMap or Secret key
/// behind the volume mounted at its directory.
fn volume_file(name: &str, docs: &[Value], spec: &Value, container: &Value, path: &str) -> String {
    let (dir, key) = path.rsplit_once('/').expect("an absolute path");
    let mount = list(container.get("volumeMounts"))
        .iter()
        .find(|m| str_at(m, &["mountPath"]) == dir)
        .unwrap_or_else(|| panic!("{name}: nothing mounted at {dir} for {path}"));
    let volume = list(spec.get("volumes"))
        .iter()
        .find(|v| v.get("name") == mount.get("name"))
        .unwrap_or_else(|| panic!("{name}: no volume for the mount at {dir}"));
    let (kind, object) = if let Some(cm) = at(volume, &["configMap", "name"]) {
        ("ConfigMap", cm)
    } else if let Some(s) = at(volume, &["secret", "secretName"]) {
        ("Secret", s)
    } else {
        panic!("{name}: the volume at {dir} is neither a ConfigMap nor a Secret")
    };
    let doc = of_kind(docs, kind)
        .into_iter()
        .find(|d| at(d, &["metadata", "name"]) == Some(object))
        .unwrap_or_else(|| panic!("{name}: {kind} {object:?} is not rendered"));
    if kind == "ConfigMap" {
        return str_at(doc, &["data", key]).to_string();
    }
    // kustomize folds long base64 over several lines.
    let encoded: String = str_at(doc, &["data", key]).split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("Secret data is base64");
    String::from_utf8(bytes).expect("UTF-8 secret")
}

fn pgharbor_pod<'a>(r: &'a Rendering) -> Pod<'a> {
    let deployments = of_kind(&r.docs, "Deployment");
    let [deployment] = deployments.as_slice() else {
        panic!("{}: expected one Deployment", r.name);
    };
    let spec = at(deployment, &["spec", "template", "spec"]).expect("pod spec");
    let container = list(spec.get("containers"))
        .iter()
        .find(|c| str_at(c, &["name"]) == "pgharbor")
        .unwrap_or_else(|| panic!("{}: no pgharbor container", r.name));
    let (written, text) = joined_config(r.name, &r.docs, spec);
    let args: Vec<&str> = list(container.get("args"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let read = args
        .windows(2)
        .find(|w| w[0] == "-c" || w[0] == "--config")
        .map(|w| w[1])
        .unwrap_or_else(|| panic!("{}: pgharbor is started without -c", r.name));
    assert_eq!(
        read, written,
        "{}: pgharbor reads another file than the init container writes",
        r.name
    );
    let (dir, _) = read.rsplit_once('/').expect("absolute config path");
    let shared = list(container.get("volumeMounts"))
        .iter()
        .any(|m| str_at(m, &["mountPath"]) == dir);
    assert!(
        shared,
        "{}: {dir} is not mounted in the pgharbor container",
        r.name
    );
    let config = Config::from_toml_str(&text)
        .unwrap_or_else(|e| panic!("{}: the mounted config does not validate: {e}", r.name));
    Pod {
        spec,
        container,
        config,
    }
}

fn container_port(name: &str, c: &Value, port_name: &str) -> u16 {
    list(c.get("ports"))
        .iter()
        .find(|p| str_at(p, &["name"]) == port_name)
        .and_then(|p| p.get("containerPort"))
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or_else(|| panic!("{name}: no container port named {port_name}"))
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("validated HOST:PORT")
}

/// The probe's path and the config port it reaches.
fn probe(name: &str, c: &Value, which: &str) -> (String, u16) {
    let get = at(c, &[which, "httpGet"]).unwrap_or_else(|| panic!("{name}: no {which}"));
    let port = match get.get("port") {
        Some(Value::String(named)) => container_port(name, c, named),
        Some(Value::Number(n)) => n.as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
        _ => panic!("{name}: {which} without a port"),
    };
    (str_at(get, &["path"]).to_string(), port)
}

#[test]
fn each_overlay_agrees_with_the_config_it_mounts() {
    for r in renderings() {
        let name = r.name;
        let pod = pgharbor_pod(&r);
        let c = pod.container;
        let proxy = addr(&pod.config.proxy.listen_addr);
        let metrics = addr(&pod.config.metrics.listen_addr);
        assert_eq!(
            container_port(name, c, "postgres"),
            proxy.port(),
            "{name}: client port"
        );
        assert_eq!(
            container_port(name, c, "metrics"),
            metrics.port(),
            "{name}: metrics port"
        );
        // The kubelet probes and Prometheus scrapes the pod IP.
        assert!(
            metrics.ip().is_unspecified(),
            "{name}: metrics on {metrics}, not the pod IP"
        );
        assert_eq!(
            probe(name, c, "livenessProbe"),
            ("/healthz".into(), metrics.port())
        );
        assert_eq!(
            probe(name, c, "startupProbe"),
            ("/healthz".into(), metrics.port())
        );
        assert_eq!(
            probe(name, c, "readinessProbe"),
            ("/readyz".into(), metrics.port())
        );
        // A Service reaches the pod IP; a sidecar's clients share its loopback.
        let services = of_kind(&r.docs, "Service");
        if !services.is_empty() {
            assert!(
                proxy.ip().is_unspecified(),
                "{name}: a Service cannot reach {proxy}"
            );
        }
        for s in services {
            for p in list(at(s, &["spec", "ports"])) {
                let target = str_at(p, &["targetPort"]);
                container_port(name, c, target);
            }
        }
        peers_dns_names_the_headless_service(name, &r.docs, &pod);
        let grace = at(pod.spec, &["terminationGracePeriodSeconds"])
            .and_then(Value::as_u64)
            .unwrap_or(30);
        let pre_stop = at(c, &["lifecycle", "preStop", "sleep", "seconds"])
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let drain = pod.config.proxy.shutdown_timeout.as_secs();
        assert!(
            grace > pre_stop + drain,
            "{name}: terminationGracePeriodSeconds {grace} <= preStop {pre_stop}s + shutdown_timeout {drain}s"
        );
    }
}

/// An overlay that can run several replicas (it has an HPA) finds them
/// through `peers_dns`, and the name is a headless Service, listing
/// not-ready pods too (a draining pod's clients may still be cancelled),
/// on the port pgharbor listens on.
fn peers_dns_names_the_headless_service(name: &str, docs: &[Value], pod: &Pod) {
    let peers_dns = &pod.config.proxy.peers_dns;
    if of_kind(docs, "HorizontalPodAutoscaler").is_empty() && peers_dns.is_empty() {
        return;
    }
    let (host, port) = peers_dns
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{name}: several replicas and no proxy.peers_dns"));
    // `NAME` or `NAME.<namespace>.svc…`: the pod's DNS search list puts a
    // bare name in its own namespace.
    let service_name = host.split('.').next().unwrap_or_default();
    let service = of_kind(docs, "Service")
        .into_iter()
        .find(|s| str_at(s, &["metadata", "name"]) == service_name)
        .unwrap_or_else(|| panic!("{name}: peers_dns names no rendered Service {service_name:?}"));
    assert_eq!(
        str_at(service, &["spec", "clusterIP"]),
        "None",
        "{name}: {service_name} is not headless"
    );
    assert_eq!(
        at(service, &["spec", "publishNotReadyAddresses"]).and_then(Value::as_bool),
        Some(true),
        "{name}: {service_name} must list draining pods too"
    );
    let listen = addr(&pod.config.proxy.listen_addr).port();
    assert_eq!(
        port.parse::<u16>().ok(),
        Some(listen),
        "{name}: peers_dns port"
    );
    let ports = list(at(service, &["spec", "ports"]));
    let reaches_proxy = ports.iter().any(|p| {
        at(p, &["port"]).and_then(Value::as_u64) == Some(u64::from(listen))
            && container_port(name, pod.container, str_at(p, &["targetPort"])) == listen
    });
    assert!(
        reaches_proxy,
        "{name}: {service_name} does not expose port {listen} to pgharbor's"
    );
}

/// Each overlay's config, pointed at the test's Postgres on loopback ports,
/// answers the probes' paths with 200: the paths are ones pgharbor serves.
#[tokio::test]
async fn the_probes_paths_answer_on_a_pgharbor_started_with_each_overlays_config() {
    for r in renderings() {
        let pod = pgharbor_pod(&r);
        let mut config = pod.config.clone();
        config.proxy.listen_addr = "127.0.0.1:0".into();
        config.metrics.listen_addr = "127.0.0.1:0".into();
        // The peers' name exists only in a cluster: never look it up here.
        config.proxy.peers_dns.clear();
        for db in &mut config.databases {
            db.host = "127.0.0.1".into();
            db.port = pg().port();
        }
        for u in config.users.iter_mut().filter(|u| u.name == USER) {
            u.password = PASSWORD.into();
            u.auth_type = AuthType::ScramSha256;
        }
        let proxy = pgharbor::Proxy::start(config)
            .await
            .expect("start pgharbor");
        let m = proxy.metrics_addr().expect("metrics endpoint");
        for which in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let (path, _) = probe(r.name, pod.container, which);
            let ok = eventually(Duration::from_secs(10), || async {
                http_get(m, &path).await.0 == 200
            })
            .await;
            assert!(ok, "{}: {which} {path} does not answer 200", r.name);
        }
        proxy.begin_shutdown();
    }
}

/// The Operator's resources carry the repository's rules and point at the
/// pods' metrics port.
#[test]
fn the_operator_resources_carry_the_repository_rules_and_scrape_the_metrics_port() {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yaml")).unwrap();
    let rules: Value = serde_yaml::from_str(&text).expect("alerts.yaml parses");
    for r in renderings() {
        let pr = of_kind(&r.docs, "PrometheusRule");
        assert_eq!(pr.len(), 1, "{}: one PrometheusRule", r.name);
        assert_eq!(
            at(pr[0], &["spec", "groups"]),
            rules.get("groups"),
            "{}: the PrometheusRule differs from deploy/prometheus/alerts.yaml",
            r.name
        );
        let pod = pgharbor_pod(&r);
        let labels = of_kind(&r.docs, "Deployment")
            .first()
            .and_then(|d| at(d, &["spec", "template", "metadata", "labels"]));
        for m in of_kind(&r.docs, "PodMonitor") {
            assert_selects(r.name, at(m, &["spec", "selector", "matchLabels"]), labels);
            for e in list(at(m, &["spec", "podMetricsEndpoints"])) {
                container_port(r.name, pod.container, str_at(e, &["port"]));
            }
        }
        for m in of_kind(&r.docs, "ServiceMonitor") {
            let selector = at(m, &["spec", "selector", "matchLabels"]);
            let services: Vec<&Value> = of_kind(&r.docs, "Service")
                .into_iter()
                .filter(|s| selects(selector, at(s, &["metadata", "labels"])))
                .collect();
            assert_eq!(
                services.len(),
                1,
                "{}: the ServiceMonitor selects one Service",
                r.name
            );
            for e in list(at(m, &["spec", "endpoints"])) {
                let port = str_at(e, &["port"]);
                let found = list(at(services[0], &["spec", "ports"]))
                    .iter()
                    .any(|p| str_at(p, &["name"]) == port);
                assert!(found, "{}: the selected Service has no port {port}", r.name);
            }
        }
    }
}

fn selects(selector: Option<&Value>, labels: Option<&Value>) -> bool {
    let (Some(Value::Mapping(want)), Some(Value::Mapping(have))) = (selector, labels) else {
        return false;
    };
    !want.is_empty() && want.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn assert_selects(name: &str, selector: Option<&Value>, labels: Option<&Value>) {
    assert!(
        selects(selector, labels),
        "{name}: selector {selector:?} does not match the pod's labels {labels:?}"
    );
}

/// Metric names in a PromQL expression: identifiers outside quotes that
/// start with `pgharbor_` or name a recording rule (`pgharbor:`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'"' {
            // A label value: skip to the closing quote (\" does not close).
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if ident(bytes[i]) && (i == 0 || !ident(bytes[i - 1])) {
            let end = (i..bytes.len())
                .find(|&j| !ident(bytes[j]))
                .unwrap_or(bytes.len());
            let word = &expr[i..end];
            if word.starts_with("pgharbor_") || word.starts_with("pgharbor:") {
                names.insert(word.to_string());
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every metric a scrape lists (`# TYPE` lines), with a histogram's
/// `_bucket`, `_sum` and `_count` series.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// (where, expression) of every rule and every dashboard query.
fn rule_and_dashboard_queries() -> (Vec<(String, String)>, BTreeSet<String>) {
    let text = std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yaml")).unwrap();
    let rules: Value = serde_yaml::from_str(&text).expect("alerts.yaml parses");
    let mut queries = Vec::new();
    let mut recorded = BTreeSet::new();
    for g in list(rules.get("groups")) {
        for r in list(g.get("rules")) {
            let name = str_at(r, &["alert"]).to_string() + str_at(r, &["record"]);
            if let Some(record) = r.get("record").and_then(Value::as_str) {
                recorded.insert(record.to_string());
            }
            queries.push((format!("rule {name}"), str_at(r, &["expr"]).to_string()));
        }
    }
    let dir = repo().join("deploy/grafana");
    for entry in std::fs::read_dir(&dir).expect("deploy/grafana") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
            collect_exprs(&path.display().to_string(), &dash, &mut queries);
        }
    }
    (queries, recorded)
}

/// Every `expr` and templating `query` string under `v`.
fn collect_exprs(place: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                match (k.as_str(), child) {
                    ("expr" | "definition", serde_json::Value::String(s)) => {
                        out.push((place.to_string(), s.clone()))
                    }
                    _ => collect_exprs(place, child, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(place, i, out)),
        _ => {}
    }
}

#[tokio::test]
async fn rules_and_dashboard_name_only_metrics_pgharbor_exports() {
    let text = config_text("transaction", 2, "") + "\n[metrics]\nlisten_addr = \"127.0.0.1:0\"\n";
    let proxy = start_proxy_with(&text).await;
    // One query, so the pool's series exist.
    let client = connect(&proxy, "app").await;
    client.simple_query("select 1").await.expect("select 1");
    let m = proxy.metrics_addr().expect("metrics endpoint");
    let (status, scrape) = http_get(m, "/metrics").await;
    assert_eq!(status, 200);
    let exported = exported(&scrape);
    let (queries, recorded) = rule_and_dashboard_queries();
    assert!(
        queries.len() > 10,
        "rules and dashboard queries found: {}",
        queries.len()
    );
    let mut unknown: HashMap<String, Vec<String>> = HashMap::new();
    for (place, expr) in &queries {
        for name in metric_names(expr) {
            if !exported.contains(&name) && !recorded.contains(&name) {
                unknown.entry(name).or_default().push(place.clone());
            }
        }
    }
    assert!(unknown.is_empty(), "not exported by pgharbor: {unknown:?}");
}

#[test]
fn metric_names_are_read_from_promql_but_not_from_label_values() {
    let names = metric_names(
        r#"sum by (le) (rate(pgharbor_pool_wait_seconds_bucket{user="pgharbor_x"}[5m])) > pgharbor:p99"#,
    );
    let want: BTreeSet<String> = ["pgharbor:p99", "pgharbor_pool_wait_seconds_bucket"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}
