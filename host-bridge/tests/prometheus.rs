//! `/metrics` as Prometheus itself sees it: `promtool check metrics` on a
//! live node's output, a real Prometheus server scraping the node (it asks
//! for OpenMetrics), and every query of the committed Grafana dashboard run
//! against that server, its metric names checked against the node's.
//!
//! The tools are Debian's `prometheus` package, unpacked (not installed) by
//! `scripts/test.sh` into `target/tools/prometheus`; `PROMTOOL` and
//! `PROMETHEUS` name other binaries. Missing tools fail the tests.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chorus_core::phoenix::Vsn;
use common::{free_port, try_http, Node, TempDir};
use serde_json::{json, Value};

fn tool(var: &str, name: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        common::workspace_root().join(format!("target/tools/prometheus/usr/bin/{name}"))
    });
    assert!(
        path.is_file(),
        "{name} not found at {} (scripts/test.sh unpacks Debian's prometheus package there; \
         or set {var})",
        path.display()
    );
    path
}

/// Runs `promtool check metrics` on `text`: (success, everything it said).
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new(tool("PROMTOOL", "promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// A node with some traffic behind it, so every histogram has samples, and
/// the two clients that made it (kept open for the scrapes).
fn busy_node() -> (Node, Vec<common::Client>) {
    let node = Node::start();
    let mut a = node.connect(Vsn::V2);
    let mut b = node.connect(Vsn::V1);
    let topic = "realtime:room:prom:chat";
    let join_ref = a.join(topic, json!({}));
    b.join(topic, json!({}));
    for i in 0..10 {
        a.broadcast(&join_ref, topic, "chat", json!({ "i": i }));
        b.recv_broadcast(topic, "chat");
    }
    let history = node.http(
        "GET",
        "/realtime/v1/api/channels/room:prom:chat/messages",
        &[],
        b"",
    );
    assert_eq!(history.status, 200, "{}", history.body_text());
    (node, vec![a, b])
}

#[test]
fn promtool_accepts_a_live_nodes_metrics() {
    // The checker itself must be able to say no.
    let (ok, said) =
        promtool_check("# HELP bad_counter x\n# TYPE bad_counter counter\nbad_counter 1\n");
    assert!(!ok && said.contains("_total"), "promtool lints: {said}");

    let (node, _clients) = busy_node();
    let text = node.metrics();
    let (ok, said) = promtool_check(&text);
    assert!(
        ok,
        "promtool check metrics failed:\n{said}\n--- metrics\n{text}"
    );
    assert!(said.trim().is_empty(), "promtool found problems:\n{said}");
}

/// GET on a local Prometheus' HTTP API.
fn api(port: u16, path_and_query: &str) -> Value {
    let resp = try_http(port, "GET", path_and_query, &[], b"")
        .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
    serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{path_and_query}: {e}: {}", resp.body_text()))
}

fn query(port: u16, expr: &str) -> Value {
    let encoded: String = expr
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    api(port, &format!("/api/v1/query?query={encoded}"))
}

/// Every `expr` of the dashboard's panels (rows and nested panels too).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner.iter());
        }
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                let title = panel["title"].as_str().unwrap_or("?").to_string();
                out.push((title, expr.to_string()));
            }
        }
    }
    out
}

/// Identifiers in a PromQL expression that name metrics (not functions,
/// keywords or label names).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find(|c: char| c.is_ascii_alphabetic() || c == '_') {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        let word = &tail[..end];
        let preceded_by_quote_or_var = rest[..i].ends_with('"') || rest[..i].ends_with('$');
        if (word.starts_with("chorus_") || word.starts_with("process_"))
            && !preceded_by_quote_or_var
        {
            names.insert(word.to_string());
        }
        rest = &tail[end..];
    }
    names
}

#[test]
fn prometheus_scrapes_the_node_and_the_grafana_dashboard_queries_it() {
    let (node, _clients) = busy_node();
    let dir = TempDir::new("prometheus");
    let prom_port = free_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: chorus\n    static_configs:\n      \
             - targets: ['127.0.0.1:{}']\n",
            node.port
        ),
    )
    .unwrap();
    let prometheus = Command::new(tool("PROMETHEUS", "prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log file"))
        .spawn()
        .expect("start prometheus");
    let prometheus_log =
        || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut guard = Kill(prometheus);

    // Wait for a successful scrape of the node (OpenMetrics, parsed by
    // Prometheus itself): up == 1 and build info present.
    let deadline = Instant::now() + Duration::from_secs(60);
    let scraped = loop {
        if let Ok(Some(status)) = guard.0.try_wait() {
            panic!("prometheus exited: {status}\n{}", prometheus_log());
        }
        if let Ok(r) = try_http(prom_port, "GET", "/api/v1/targets", &[], b"") {
            if let Ok(v) = serde_json::from_slice::<Value>(&r.body) {
                let target = &v["data"]["activeTargets"][0];
                let err = target["lastError"].as_str().unwrap_or("");
                assert!(err.is_empty(), "scrape error: {err}");
                if target["health"] == "up" {
                    let r = query(prom_port, "chorus_build_info");
                    if r["data"]["result"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty())
                    {
                        break r;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no successful scrape within 60 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let labels = &scraped["data"]["result"][0]["metric"];
    assert_eq!(labels["version"], env!("CARGO_PKG_VERSION"), "{scraped}");
    // A few more scrapes so rate() has two points.
    std::thread::sleep(Duration::from_secs(3));

    let text = node.metrics();
    let mut exported = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(name) = line.split(['{', ' ']).next() {
            exported.insert(name.to_string());
        }
    }
    let path = common::workspace_root().join("deploy/grafana/chorus.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the Grafana dashboard"))
            .expect("the Grafana dashboard is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let mut with_data = 0;
    for (title, expr) in &queries {
        for name in metric_names(expr) {
            assert!(
                exported.contains(&name),
                "panel {title:?} queries {name}, which the node does not export"
            );
        }
        let concrete = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "1m")
            .replace("$__range", "5m")
            .replace("$job", "chorus")
            .replace("$instance", ".+");
        let r = query(prom_port, &concrete);
        assert_eq!(r["status"], "success", "panel {title:?}: {concrete}\n{r}");
        if r["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
        {
            with_data += 1;
        }
    }
    assert!(
        with_data * 10 >= queries.len() * 8,
        "only {with_data} of {} queries returned data",
        queries.len()
    );
}

#[test]
fn metric_names_are_read_out_of_promql() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le, op) (rate(chorus_store_operation_seconds_bucket{job=~\"$job\",op=\"chorus_x\"}[$__rate_interval])))",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["chorus_store_operation_seconds_bucket".to_string()]
    );
}
