//! A real cluster on loopback: `chorus cluster-ca`, a `chorus control`
//! process and three `chorus run` nodes on the CQL store, each a real
//! process. Checks membership from every node's `/healthz` and `/metrics`,
//! distinct node and worker ids, and the bad input of issue 14: a duplicate
//! node name, a wrong join secret, a node on SQLite, a control server that
//! cannot be reached, and a control server that goes away (the nodes keep
//! serving their clients).
//!
//! Needs `CHORUS_SCYLLA_NODES` (scripts/test.sh starts Apache Cassandra and
//! sets it); fails without it, like the other CQL tests.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use chorus_core::phoenix::Vsn;
use common::*;
use serde_json::{json, Value};

const SECRET: &str = "test-join-secret-0123456789";

fn cql_nodes() -> String {
    match std::env::var("CHORUS_SCYLLA_NODES") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!(
            "CHORUS_SCYLLA_NODES is not set: a cluster runs on the CQL store. Start a local \
             Apache Cassandra with `scripts/cassandra.sh start` and run with \
             CHORUS_SCYLLA_NODES=127.0.0.1:9042"
        ),
    }
}

/// The `chorus control` process, killed on drop.
struct Control {
    child: Child,
    addr: String,
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `chorus control` on `addr` (a free port when `None`), its table of
/// nodes kept in `data`.
fn start_control(ca: &std::path::Path, data: &std::path::Path, addr: Option<String>) -> Control {
    let addr = addr.unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
    let mut cmd = Command::new(chorus_bin());
    cmd.arg("control")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("CHORUS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("CHORUS_CLUSTER_CONTROL_BIND", &addr)
        .env("CHORUS_CLUSTER_CA_CERT", ca.join("ca.pem"))
        .env("CHORUS_CLUSTER_CA_KEY", ca.join("ca-key.pem"))
        .env("CHORUS_CLUSTER_JOIN_SECRET", SECRET)
        .env("CHORUS_CLUSTER_NODE_TIMEOUT_MS", "6000")
        .env("CHORUS_DATA_DIR", data);
    let mut child = cmd.spawn().expect("spawn chorus control");
    let stderr = Output::default();
    let pipe = child.stderr.take().expect("piped stderr");
    stderr.drain(pipe);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "control server not listening:\n{}",
            stderr.text()
        );
        thread::sleep(Duration::from_millis(50));
    }
    Control { child, addr }
}

/// The environment of a node `name` in `region` joining `control`.
fn node_env<'a>(
    control: &'a str,
    ca: &'a str,
    name: &'a str,
    region: &'a str,
) -> Vec<(&'a str, String)> {
    vec![
        ("CHORUS_CONTROL", control.to_string()),
        ("CHORUS_CLUSTER_CA_CERT", ca.to_string()),
        ("CHORUS_CLUSTER_JOIN_SECRET", SECRET.to_string()),
        ("CHORUS_NODE_NAME", name.to_string()),
        ("CHORUS_REGION", region.to_string()),
        ("CHORUS_STORE", "scylla".to_string()),
        ("CHORUS_SCYLLA_NODES", cql_nodes()),
        ("CHORUS_STORE_KEYSPACE", "chorus_cluster_test".to_string()),
        ("CHORUS_CLUSTER_JOIN_TIMEOUT_MS", "3000".to_string()),
    ]
}

fn start_node(env: &[(&str, String)]) -> Node {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Node::start_with(&env)
}

/// A node that must refuse to start: its exit status and stderr.
fn refused_node(env: &[(&str, String)]) -> (std::process::ExitStatus, String) {
    let dir = TempDir::new("cluster-refused");
    let mut all: Vec<(String, String)> = vec![
        ("CHORUS_PORT".into(), free_port().to_string()),
        ("CHORUS_DATA_DIR".into(), dir.path().display().to_string()),
    ];
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let (mut child, _out, err) = spawn_chorus(&[], &all, dir.path());
    let status = wait_exit(&mut child, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the node did not exit:\n{}", err.text()));
    // Let the reader thread take the last lines.
    thread::sleep(Duration::from_millis(100));
    (status, err.text())
}

/// The cross-node ping guest (supervisors/examples/cluster_ping.rs).
fn ping_wasm() -> std::path::PathBuf {
    let wasm = std::env::var_os("CHORUS_CLUSTER_PING_WASM")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join("target/wasm32-wasip1/release/examples/cluster_ping.wasm")
        });
    assert!(
        wasm.is_file(),
        "{} is not built: `build_guest -p supervisors --example cluster_ping` (scripts/lib.sh)",
        wasm.display()
    );
    wasm
}

/// `chorus exec cluster_ping.wasm args…` as a cluster node named `name`.
fn ping(control: &str, ca: &str, name: &str, args: &[&str]) -> (Child, Output) {
    let mut cmd = Command::new(chorus_bin());
    cmd.arg("exec")
        .arg(ping_wasm())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("CHORUS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in node_env(control, ca, name, "eu") {
        cmd.env(k, v);
    }
    cmd.env("CHORUS_RUNTIME_MAX_PROCESSES", "200")
        .env("CHORUS_RUNTIME_MIN_MAX_MAP_COUNT", "1");
    let mut child = cmd.spawn().expect("spawn chorus exec");
    let out = Output::default();
    out.drain(child.stdout.take().expect("piped stdout"));
    out.drain(child.stderr.take().expect("piped stderr"));
    (child, out)
}

/// Two guests on two nodes: a message there and an answer back.
fn cross_node_round_trip(control: &str, ca: &str) {
    let (mut server, server_out) = ping(control, ca, "ping-serve", &["serve"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (node, pid) = loop {
        let text = server_out.text();
        if let Some(line) = text.lines().find(|l| l.starts_with("serving ")) {
            let mut w = line.split(' ').skip(1);
            let node: u64 = w.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            let pid: u64 = w.next().and_then(|x| x.parse().ok()).unwrap_or(0);
            break (node, pid);
        }
        assert!(
            Instant::now() < deadline,
            "ping server did not start:\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(node, 0, "the ping server is not in the cluster");
    let (mut sender, sender_out) = ping(
        control,
        ca,
        "ping-send",
        &["send", &node.to_string(), &pid.to_string()],
    );
    let status = wait_exit(&mut sender, Duration::from_secs(40));
    let text = sender_out.text();
    assert!(
        status.is_some_and(|s| s.success()),
        "ping sender failed:\n{text}"
    );
    assert!(text.contains(&format!("pong from {node}")), "{text}");
    let status = wait_exit(&mut server, Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "ping server failed:\n{}",
        server_out.text()
    );
    assert!(server_out.text().contains("served"));
}

fn health(node: &Node) -> Value {
    let resp = node.http("GET", "/healthz", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    serde_json::from_slice(&resp.body).expect("healthz JSON")
}

/// Two clients of `node` in one room: a broadcast `{"n": n}` from one
/// reaches the other.
fn serves_its_clients(node: &Node, n: u32, all: &[&Node]) {
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut one = node.connect(Vsn::V2);
        let mut two = node.connect(Vsn::V2);
        let r1 = one.join("room:cluster", json!({"broadcast": {"self": false}}));
        two.join("room:cluster", json!({"broadcast": {"self": false}}));
        one.broadcast(&r1, "room:cluster", "hello", json!({ "n": n }));
        two.recv_broadcast("room:cluster", "hello")
    }));
    match served {
        Ok(got) => assert_eq!(got, json!({ "n": n })),
        Err(e) => {
            eprintln!("the node at port {} did not serve broadcast {n}", node.port);
            for other in all {
                eprintln!(
                    "--- log of the node at port {}:\n{}",
                    other.port,
                    other.logs()
                );
            }
            std::panic::resume_unwind(e)
        }
    }
}

/// Waits until `node`'s /healthz lists `want` node names.
fn wait_members(node: &Node, want: &[&str]) -> Value {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = health(node);
        let names: BTreeSet<String> = h["cluster"]["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if names == want {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "node {} sees {names:?}, not {want:?}: {h}\n--- stderr\n{}",
            h["node"],
            node.logs()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_nodes_join_a_control_server_and_survive_bad_input() {
    let ca_dir = TempDir::new("cluster-ca");
    let made = Command::new(chorus_bin())
        .args(["cluster-ca", "--out"])
        .arg(ca_dir.path())
        .output()
        .expect("run chorus cluster-ca");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // A CA is never overwritten.
    let again = Command::new(chorus_bin())
        .args(["cluster-ca", "--out"])
        .arg(ca_dir.path())
        .output()
        .expect("run chorus cluster-ca");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not overwriting"));

    let control_data = TempDir::new("cluster-control");
    let control = start_control(ca_dir.path(), control_data.path(), None);
    let ca = ca_dir.path().join("ca.pem").display().to_string();
    let a = start_node(&node_env(&control.addr, &ca, "node-a", "eu"));
    let b = start_node(&node_env(&control.addr, &ca, "node-b", "eu"));
    let c = start_node(&node_env(&control.addr, &ca, "node-c", "us"));
    let nodes = [&a, &b, &c];

    // Every node sees all three, with the same ids and regions.
    let mut views = Vec::new();
    for node in nodes {
        let h = wait_members(node, &["node-a", "node-b", "node-c"]);
        assert_eq!(h["cluster"]["enabled"], json!(true));
        assert_eq!(h["cluster"]["control_reachable"], json!(true));
        views.push(h);
    }
    let listed = &views[0]["cluster"]["nodes"];
    for h in &views {
        assert_eq!(
            &h["cluster"]["nodes"], listed,
            "nodes disagree on membership"
        );
        let me = h["cluster"]["node_id"].as_u64().expect("node_id");
        let entry = listed
            .as_array()
            .and_then(|a| a.iter().find(|n| n["id"].as_u64() == Some(me)))
            .unwrap_or_else(|| panic!("{me} not in {listed}"));
        assert_eq!(entry["name"], h["node"]);
        assert_eq!(entry["region"], h["cluster"]["region"]);
        assert_eq!(entry["worker_id"], h["cluster"]["worker_id"]);
    }
    assert_eq!(views[2]["cluster"]["region"], json!("us"));
    let ids: BTreeSet<u64> = views
        .iter()
        .map(|h| h["cluster"]["node_id"].as_u64().unwrap_or(0))
        .collect();
    let workers: BTreeSet<u64> = views
        .iter()
        .map(|h| h["cluster"]["worker_id"].as_u64().unwrap_or(9999))
        .collect();
    assert_eq!(ids.len(), 3, "node ids must differ: {ids:?}");
    assert_eq!(workers.len(), 3, "worker ids must differ: {workers:?}");
    assert!(!ids.contains(&0));
    for node in nodes {
        assert_eq!(node.metric("chorus_cluster_nodes"), 3);
    }

    let control_addr = control.addr.clone();
    // A second node named node-a is refused, naming the key.
    let (status, logs) = refused_node(&node_env(&control_addr, &ca, "node-a", "eu"));
    assert!(!status.success());
    assert!(
        logs.contains("node.name \\\"node-a\\\" is already taken")
            || logs.contains("node.name \"node-a\" is already taken"),
        "{logs}"
    );
    // A wrong join secret gets no certificate.
    let mut wrong = node_env(&control_addr, &ca, "node-d", "eu");
    wrong.retain(|(k, _)| *k != "CHORUS_CLUSTER_JOIN_SECRET");
    wrong.push(("CHORUS_CLUSTER_JOIN_SECRET", "not-the-secret-at-all".into()));
    let (status, logs) = refused_node(&wrong);
    assert!(!status.success());
    assert!(logs.contains("join secret"), "{logs}");
    // A node on SQLite is refused before it contacts anyone.
    let mut sqlite = node_env(&control_addr, &ca, "node-e", "eu");
    sqlite.retain(|(k, _)| *k != "CHORUS_STORE");
    let (status, logs) = refused_node(&sqlite);
    assert!(!status.success());
    assert!(logs.contains("store.backend"), "{logs}");
    // A control server nobody runs: a clear error after the join timeout.
    let nobody = format!("127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let (status, logs) = refused_node(&node_env(&nobody, &ca, "node-f", "eu"));
    assert!(!status.success());
    assert!(logs.contains("cannot reach the control server"), "{logs}");
    assert!(logs.contains("cluster.join_timeout_ms"), "{logs}");
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "gave up before the timeout"
    );

    // A guest process sends to a process on another node and gets its answer.
    cross_node_round_trip(&control_addr, &ca);

    // Membership did not change, and the refused and finished nodes hold nothing.
    for node in nodes {
        wait_members(node, &["node-a", "node-b", "node-c"]);
    }

    // A node that leaves cleanly (SIGTERM) is dropped from the others' view.
    c.signal("TERM");
    for node in [&a, &b] {
        wait_members(node, &["node-a", "node-b"]);
    }

    // The control server goes away: the nodes keep serving their clients.
    drop(control);
    for node in [&a, &b] {
        assert!(
            node.wait_log("control server unreachable", Duration::from_secs(10)),
            "no log of the lost control server:\n{}",
            node.logs()
        );
        let h = health(node);
        assert_eq!(h["cluster"]["control_reachable"], json!(false), "{h}");
        assert_eq!(h["cluster"]["nodes"].as_array().map(Vec::len), Some(2));
        serves_its_clients(node, 1, &[&a, &b]);
    }

    // A control server without the data dir on that address answers, but
    // knows neither node: each says it is refused (not "unreachable"),
    // keeps serving its clients, and its health checks fail with
    // `not_a_member` so a load balancer moves clients away.
    let blank_data = TempDir::new("cluster-control-blank");
    let blank = start_control(ca_dir.path(), blank_data.path(), Some(control_addr.clone()));
    for node in [&a, &b] {
        assert!(
            node.wait_log(
                "the control server refuses this node",
                Duration::from_secs(10)
            ),
            "no log of the refusal:\n{}",
            node.logs()
        );
        for path in ["/healthz", "/readyz"] {
            let resp = node.http("GET", path, &[], b"");
            assert_eq!(resp.status, 503, "{path}: {}", resp.body_text());
            let h: Value = serde_json::from_slice(&resp.body).expect("healthz JSON");
            assert_eq!(h["status"], json!("not_a_member"), "{h}");
            assert_eq!(h["cluster"]["control_refused"], json!(true), "{h}");
            assert_eq!(h["cluster"]["control_reachable"], json!(true), "{h}");
        }
        serves_its_clients(node, 2, &[&a, &b]);
    }
    drop(blank);

    // It comes back on the same address and data dir: it takes its table
    // of nodes back (tokens, node ids), so the nodes are members again
    // without a restart, and a name in use is still refused.
    let control = start_control(
        ca_dir.path(),
        control_data.path(),
        Some(control_addr.clone()),
    );
    for node in [&a, &b] {
        assert!(
            node.wait_log(
                "control server knows this node again",
                Duration::from_secs(10)
            ),
            "the node did not get its control server back:\n{}",
            node.logs()
        );
        let h = health(node);
        assert_eq!(h["cluster"]["control_reachable"], json!(true), "{h}");
        wait_members(node, &["node-a", "node-b"]);
    }
    let (status, logs) = refused_node(&node_env(&control.addr, &ca, "node-a", "eu"));
    assert!(!status.success());
    assert!(logs.contains("already taken"), "{logs}");
}
