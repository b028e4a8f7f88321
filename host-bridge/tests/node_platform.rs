//! End-to-end tests of the platform (issue 2) against real `chorus run`
//! processes: heartbeats on both serializers and both paths, /healthz,
//! /metrics, start-up errors (config keys, CHORUS_PORT, a busy port), garbage
//! before the handshake, clean shutdown on SIGTERM/SIGINT, a crashing session
//! that leaves its neighbours alone, and the SQLite file in the data dir.

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use chorus_core::phoenix::Vsn;
use common::{read_to_close, spawn_chorus, wait_exit, Client, Node, TempDir, RECV_TIMEOUT};
use serde_json::{json, Value};
use tungstenite::Message as WsMessage;

/// Reads one text frame and parses it as JSON.
fn recv_json(client: &mut Client) -> Value {
    let deadline = Instant::now() + RECV_TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no text frame within {RECV_TIMEOUT:?}"
        );
        match client.ws.read().expect("read a frame") {
            WsMessage::Text(t) => {
                return serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {t}"))
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

#[test]
fn heartbeat_is_answered_for_both_serializers_on_both_paths() {
    let node = Node::start();
    for path in ["/realtime/v1/websocket", "/socket/websocket"] {
        // vsn 2.0.0: JSON arrays.
        let mut c = Client::connect(&node.ws_url(path, "2.0.0"), Vsn::V2).expect("connect v2");
        c.send_text(r#"["1","1","phoenix","heartbeat",{}]"#);
        assert_eq!(
            recv_json(&mut c),
            json!(["1", "1", "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
            "{path} vsn=2.0.0"
        );
        // A second heartbeat with a null join_ref, as phoenix.js sends it.
        c.send_text(r#"[null,"2","phoenix","heartbeat",{}]"#);
        assert_eq!(
            recv_json(&mut c),
            json!([null, "2", "phoenix", "phx_reply", {"status": "ok", "response": {}}]),
            "{path} vsn=2.0.0, null join_ref"
        );

        // vsn 1.0.0: JSON objects.
        let mut c = Client::connect(&node.ws_url(path, "1.0.0"), Vsn::V1).expect("connect v1");
        c.send_text(r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#);
        let reply = recv_json(&mut c);
        assert_eq!(reply["topic"], "phoenix", "{path} vsn=1.0.0: {reply}");
        assert_eq!(reply["event"], "phx_reply", "{path} vsn=1.0.0: {reply}");
        assert_eq!(reply["ref"], "7", "{path} vsn=1.0.0: {reply}");
        assert_eq!(
            reply["payload"],
            json!({"status": "ok", "response": {}}),
            "{path} vsn=1.0.0: {reply}"
        );
    }
}

#[test]
fn unsupported_serializer_version_is_refused_with_400() {
    let node = Node::start();
    let err = Client::try_connect(&node.ws_url("/realtime/v1/websocket", "3.0.0"), Vsn::V2)
        .err()
        .expect("vsn=3.0.0 must be refused");
    assert_eq!(err.0, 400, "{err:?}");
    assert!(
        err.1.contains("3.0.0"),
        "reason should name the vsn: {err:?}"
    );
}

#[test]
fn healthz_answers_200_json() {
    let node = Node::start_with(&[("CHORUS_NODE_NAME", "e2e-health")]);
    let resp = node.http("GET", "/healthz", &[], b"");
    assert_eq!(resp.status, 200, "{}", resp.body_text());
    let ctype = resp.header("content-type").unwrap_or_default();
    assert!(
        ctype.starts_with("application/json"),
        "content-type {ctype:?}"
    );
    // Outside a cluster the `cluster` object says only that (tests/cluster.rs
    // checks its members inside one).
    assert_eq!(
        resp.json(),
        json!({"status": "ok", "node": "e2e-health", "cluster": {"enabled": false}})
    );

    let missing = node.http("GET", "/no-such-route", &[], b"");
    assert_eq!(missing.status, 404, "{}", missing.body_text());
}

#[test]
fn metrics_are_prometheus_text_with_the_node_counters() {
    let node = Node::start();
    let mut c = node.connect(Vsn::V2);
    c.heartbeat();
    c.join("realtime:metrics-room", json!({}));

    let resp = node.http("GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200);
    let ctype = resp.header("content-type").unwrap_or_default();
    assert!(ctype.starts_with("text/plain"), "content-type {ctype:?}");
    let text = resp.body_text();
    for (name, kind) in [
        ("chorus_sessions_open", "gauge"),
        ("chorus_channels", "gauge"),
        ("chorus_messages_in_total", "counter"),
        ("chorus_restarts_total", "counter"),
        ("chorus_processes", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "no `# TYPE {name} {kind}` in\n{text}"
        );
        assert!(
            common::metric_value(&text, name).is_some(),
            "no value line for {name} in\n{text}"
        );
    }
    let value = |name| common::metric_value(&text, name).unwrap();
    assert_eq!(
        value("chorus_sessions_open"),
        1,
        "one open WebSocket\n{text}"
    );
    assert_eq!(value("chorus_channels"), 1, "one joined topic\n{text}");
    assert!(
        value("chorus_messages_in_total") >= 2,
        "heartbeat + join\n{text}"
    );
    assert_eq!(value("chorus_restarts_total"), 0, "{text}");
    assert!(
        value("chorus_processes") > 10,
        "the tree alone has more\n{text}"
    );
    // Every non-comment line is `name{labels} value`, the node's own series
    // or the standard process ones.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, v) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            name.starts_with("chorus_") || name.starts_with("process_"),
            "{line:?}"
        );
        assert!(
            !series.contains('{') || series.ends_with('}'),
            "bad labels in {line:?}"
        );
        assert!(v.parse::<f64>().is_ok(), "{line:?}");
    }
}

/// Runs a node that must fail at start; returns its stderr.
fn start_fails(args: &[&str], env: &[(&str, &str)], cwd: &std::path::Path) -> String {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (mut child, stdout, stderr) = spawn_chorus(args, &env, cwd);
    let status = wait_exit(&mut child, Duration::from_secs(20));
    let logs = format!("{}{}", stdout.text(), stderr.text());
    let status = status.unwrap_or_else(|| panic!("node did not exit within 20 s:\n{logs}"));
    assert!(!status.success(), "node started despite bad input:\n{logs}");
    // Give the reader threads a moment to drain the pipes.
    std::thread::sleep(Duration::from_millis(50));
    format!("{}{}", stdout.text(), stderr.text())
}

#[test]
fn unknown_config_key_fails_naming_the_key_and_the_file() {
    let dir = TempDir::new("config");
    let file = dir.path().join("bad-node.toml");
    std::fs::write(&file, "[limits]\nmax_payload_bytez = 10\n").unwrap();
    let path = file.display().to_string();
    let port = common::free_port().to_string();
    let logs = start_fails(&["--config", &path], &[("CHORUS_PORT", &port)], dir.path());
    assert!(logs.contains("max_payload_bytez"), "key not named:\n{logs}");
    assert!(logs.contains(&path), "file not named:\n{logs}");

    // An unknown section, from the default lunatic.toml in the working dir.
    std::fs::write(dir.path().join("lunatic.toml"), "[nodes]\nport = 1\n").unwrap();
    let logs = start_fails(&[], &[("CHORUS_PORT", &port)], dir.path());
    assert!(logs.contains("nodes"), "section not named:\n{logs}");
    assert!(logs.contains("lunatic.toml"), "file not named:\n{logs}");

    // A known key with a value of the wrong type.
    std::fs::write(&file, "[node]\nport = \"four thousand\"\n").unwrap();
    let logs = start_fails(&["--config", &path], &[], dir.path());
    assert!(logs.contains("node.port"), "key not named:\n{logs}");
    assert!(logs.contains(&path), "file not named:\n{logs}");
}

#[test]
fn bad_chorus_port_value_names_the_variable() {
    let dir = TempDir::new("badport");
    for bad in ["http", "70000"] {
        let logs = start_fails(&[], &[("CHORUS_PORT", bad)], dir.path());
        assert!(logs.contains("CHORUS_PORT"), "CHORUS_PORT={bad}:\n{logs}");
        assert!(logs.contains(bad), "value {bad} not shown:\n{logs}");
    }
}

#[test]
fn busy_port_fails_naming_the_port() {
    let dir = TempDir::new("busy");
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let logs = start_fails(
        &[],
        &[
            ("CHORUS_PORT", &port),
            ("CHORUS_DATA_DIR", &dir.path().display().to_string()),
        ],
        dir.path(),
    );
    assert!(
        logs.contains(&format!(":{port}")),
        "port {port} not named:\n{logs}"
    );
    drop(holder);
}

#[test]
fn garbage_before_the_handshake_gets_400_and_a_close() {
    let node = Node::start();
    let cases: [&[u8]; 3] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        b"HELLO THERE\r\n\r\n",
        b"GET /realtime/v1/websocket\x00\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ];
    for garbage in cases {
        let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
        s.write_all(garbage).unwrap();
        let raw =
            read_to_close(&mut s, RECV_TIMEOUT).unwrap_or_else(|e| panic!("{garbage:?}: {e}"));
        let text = String::from_utf8_lossy(&raw);
        assert!(text.starts_with("HTTP/1.1 400"), "{garbage:?} got {text:?}");
    }
    // Garbage without a head terminator, then the client stops sending.
    let mut s = TcpStream::connect(("127.0.0.1", node.port)).unwrap();
    s.write_all(b"\x00\x01\x02\x03 not http").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let raw = read_to_close(&mut s, RECV_TIMEOUT).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 400"), "got {text:?}");

    // The node is unaffected.
    let mut c = node.connect(Vsn::V2);
    c.heartbeat();
    assert_eq!(node.http("GET", "/healthz", &[], b"").status, 200);
}

fn exits_zero_on(signal: &str) {
    let mut node = Node::start();
    // A live session and a joined channel must not hold the node up.
    let mut c = node.connect(Vsn::V2);
    c.join("realtime:shutdown", json!({}));
    let t0 = Instant::now();
    node.signal(signal);
    let status = wait_exit(&mut node.child, Duration::from_secs(10));
    let logs = node.logs();
    let status = status.unwrap_or_else(|| panic!("no exit within 10 s of SIG{signal}:\n{logs}"));
    assert_eq!(status.code(), Some(0), "SIG{signal}:\n{logs}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "SIG{signal} took {:?}",
        t0.elapsed()
    );
    assert!(
        TcpStream::connect(("127.0.0.1", node.port)).is_err(),
        "port still open after exit"
    );
}

#[test]
fn sigterm_exits_zero_promptly() {
    exits_zero_on("TERM");
}

#[test]
fn sigint_exits_zero_promptly() {
    exits_zero_on("INT");
}

#[test]
fn a_crashing_session_is_logged_and_leaves_other_sessions_alone() {
    let node = Node::start_with(&[("CHORUS_NODE_FAULT_INJECTION", "true")]);
    let topic = "realtime:crash-room";
    let mut survivor = node.connect(Vsn::V2);
    survivor.join(topic, json!({}));
    let mut victim = node.connect(Vsn::V1);
    let victim_join = victim.join(topic, json!({}));
    victim.heartbeat();
    assert_eq!(node.metric("chorus_sessions_open"), 2);

    victim.push(Some(&victim_join), "phoenix", "chorus_crash", json!({}));
    // The crashed session's socket closes (no close frame: the process died).
    victim.expect_close(Duration::from_secs(5));
    assert!(
        node.wait_log("fault injection", Duration::from_secs(5)),
        "the panic is not logged:\n{}",
        node.logs()
    );

    // The other session still answers and still receives broadcasts.
    survivor.heartbeat();
    let mut publisher = node.connect(Vsn::V2);
    let pub_join = publisher.join(topic, json!({}));
    publisher.broadcast(&pub_join, topic, "after-crash", json!({"n": 1}));
    assert_eq!(
        survivor.recv_broadcast(topic, "after-crash"),
        json!({"n": 1})
    );
    survivor.heartbeat();

    // Sessions are temporary children: a crash is not restarted, so the
    // restart counter stays at zero; the gauge counts the two live sessions.
    let text = node.metrics();
    assert_eq!(
        common::metric_value(&text, "chorus_restarts_total"),
        Some(0),
        "{text}"
    );
    assert_eq!(
        common::metric_value(&text, "chorus_sessions_open"),
        Some(2),
        "{text}"
    );

    // The node keeps accepting.
    let mut late = node.connect(Vsn::V1);
    late.heartbeat();
}

#[test]
fn the_sqlite_file_is_created_under_the_configured_data_dir() {
    let dir = TempDir::new("datadir");
    let data = dir.path().join("nested/data");
    let data_text = data.display().to_string();
    let node = Node::start_with(&[("CHORUS_DATA_DIR", &data_text)]);
    let db = data.join("chorus.db");
    assert!(
        db.is_file(),
        "{} not created:\n{}",
        db.display(),
        node.logs()
    );
    // Nothing is written to the node's working directory's ./data.
    assert!(!node.data_dir.path().join("chorus.db").exists());
    let out = Command::new("sqlite3")
        .arg(&db)
        .arg(".tables")
        .output()
        .expect("the sqlite3 CLI is required (apt-get install sqlite3)");
    let tables = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(tables.contains("messages"), "tables: {tables}");
}

/// The acceptor's listen backlog, as the kernel reports it: `ss` prints a
/// listening socket's backlog in its Send-Q column.
fn listen_backlog(port: u16) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .unwrap_or_else(|e| panic!("ss (iproute2, installed by scripts/lib.sh): {e}"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // State Recv-Q Send-Q Local:Port Peer:Port
    text.lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|q| q.parse().ok())
}

#[test]
fn the_listen_backlog_is_the_configured_one_not_tokios_1024() {
    let node = Node::start_with(&[("CHORUS_LIMITS_LISTEN_BACKLOG", "3000")]);
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096);
    assert_eq!(listen_backlog(node.port), Some(3000.min(somaxconn)));
    let node = Node::start_with(&[("CHORUS_LIMITS_LISTEN_BACKLOG", "100")]);
    assert_eq!(listen_backlog(node.port), Some(100));
}
