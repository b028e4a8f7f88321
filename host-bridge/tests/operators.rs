//! What an operator does with the `chorus` binary: its help, `version`,
//! `check-config`, `gentoken`, a node started from any directory with the
//! embedded guest, `/metrics` (histograms, build info, process metrics, both
//! text formats) and the `/dashboard` JSON, guarded when auth is on.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use chorus_core::phoenix::Vsn;
use common::{chorus_bin, free_port, try_http, Node, TempDir};
use serde_json::{json, Value};

/// Runs `chorus <args>` in `cwd` with only the given `CHORUS_*` variables.
fn chorus(args: &[&str], env: &[(&str, &str)], cwd: &std::path::Path) -> Output {
    let mut cmd = Command::new(chorus_bin());
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("CHORUS_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run chorus")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn help_lists_every_subcommand_and_each_has_its_own() {
    let dir = TempDir::new("help");
    let out = chorus(&["--help"], &[], dir.path());
    assert!(out.status.success());
    let help = text(&out.stdout);
    let commands = [
        "run",
        "exec",
        "check-config",
        "gentoken",
        "drain",
        "version",
    ];
    for c in commands {
        assert!(
            help.contains(&format!("\n  {c} ")),
            "{c} missing in\n{help}"
        );
    }
    for (c, option) in [
        ("run", "--config"),
        ("run", "--guest"),
        ("exec", "<WASM>"),
        ("check-config", "--print"),
        ("gentoken", "--sub"),
        ("gentoken", "--role"),
        ("gentoken", "--exp"),
        ("drain", "--addr"),
        ("version", "Usage: chorus version"),
    ] {
        let out = chorus(&[c, "--help"], &[], dir.path());
        assert!(out.status.success(), "{c} --help");
        assert!(
            text(&out.stdout).contains(option),
            "{c} --help lacks {option}"
        );
    }
    let out = chorus(&["no-such-command"], &[], dir.path());
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("unrecognized subcommand"));
}

#[test]
fn version_names_lunatic_wasmtime_and_the_embedded_guest() {
    let dir = TempDir::new("version");
    let out = chorus(&["version"], &[], dir.path());
    assert!(out.status.success());
    let v = text(&out.stdout);
    let lock = std::fs::read_to_string(common::workspace_root().join("Cargo.lock")).unwrap();
    for (name, label) in [("lunatic-process", "lunatic"), ("wasmtime", "wasmtime")] {
        let at = lock
            .find(&format!("name = \"{name}\"\nversion = \""))
            .unwrap_or_else(|| panic!("{name} in Cargo.lock"));
        let version = lock[at..].lines().nth(1).unwrap();
        let version = version
            .trim_start_matches("version = \"")
            .trim_end_matches('"');
        assert!(
            v.contains(&format!("{label} {version}")),
            "{label} {version} in\n{v}"
        );
    }
    assert!(
        v.starts_with(&format!("chorus {}\n", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
    assert!(v.contains("guest: embedded"), "{v}");
}

#[test]
fn check_config_accepts_the_shipped_file_and_names_what_is_wrong() {
    let dir = TempDir::new("check");
    let shipped = common::workspace_root().join("lunatic.toml");
    let shipped = shipped.to_str().unwrap();
    let out = chorus(&["check-config", "--config", shipped], &[], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("config ok"),
        "{}",
        text(&out.stdout)
    );

    // --print shows the resolved config, variables applied, secret hidden.
    let out = chorus(
        &["check-config", "--print"],
        &[("CHORUS_PORT", "4321"), ("CHORUS_JWT_SECRET", "s3cret")],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("port = 4321"), "{printed}");
    assert!(!printed.contains("s3cret"), "the secret is never printed");
    assert!(printed.contains("built-in defaults"), "{printed}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_payload = 3\n").unwrap();
    let out = chorus(
        &["check-config", "--config", bad.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("limits.max_payload") && err.contains("bad.toml"),
        "{err}"
    );

    let out = chorus(&["check-config"], &[("CHORUS_PORT", "http")], dir.path());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("CHORUS_PORT"),
        "{}",
        text(&out.stderr)
    );

    let out = chorus(
        &["check-config", "--config", "/no/such.toml"],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/no/such.toml"));
    // A node that would join a cluster gets the checks it makes before it
    // joins: SQLite is refused with the key and the way out.
    let out = chorus(
        &["check-config"],
        &[("CHORUS_CONTROL", "127.0.0.1:7070")],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("store.backend") && err.contains("scylla"),
        "{err}"
    );
    let cluster = dir.path().join("cluster.toml");
    std::fs::write(
        &cluster,
        "[store]\nbackend = \"scylla\"\n[cluster]\ncontrol = \"127.0.0.1:7070\"\n\
         bind = \"0.0.0.0:7071\"\ninsecure_local = true\n",
    )
    .unwrap();
    let out = chorus(
        &["check-config", "--config", cluster.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cluster.bind"),
        "{}",
        text(&out.stderr)
    );
    let out = chorus(
        &["check-config", "--config", cluster.to_str().unwrap()],
        &[("CHORUS_CLUSTER_BIND", "127.0.0.1:7071")],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("joins the cluster of 127.0.0.1:7070"),
        "{}",
        text(&out.stdout)
    );
    // As a control server's config: without a join secret and a CA (and
    // not insecure_local) it is refused, naming the key.
    let out = chorus(&["check-config", "--control"], &[], dir.path());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("cluster.join_secret"),
        "{}",
        text(&out.stderr)
    );
    let out = chorus(
        &["check-config", "--control"],
        &[("CHORUS_CLUSTER_INSECURE_LOCAL", "true")],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("INSECURE LOCAL"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn gentoken_signs_with_the_node_secret() {
    let dir = TempDir::new("gentoken");
    let secret = [("CHORUS_JWT_SECRET", "operators-secret")];
    let args = [
        "gentoken",
        "--sub",
        "ops-1",
        "--role",
        "service_role",
        "--exp",
        "2h",
    ];
    let out = chorus(&args, &secret, dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = chorus_core::jwt::verify_hs256(&token, b"operators-secret", now).unwrap();
    assert_eq!(claims.sub(), Some("ops-1"));
    assert_eq!(claims.role(), Some("service_role"));
    let exp = claims.exp().unwrap();
    assert!(
        (now + 7_190..=now + 7_210).contains(&exp),
        "exp {exp} now {now}"
    );
    assert!(chorus_core::jwt::verify_hs256(&token, b"other", now).is_err());

    // The secret may come from the config file too.
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "[auth]\njwt_secret = \"from-file\"\n").unwrap();
    let out = chorus(
        &["gentoken", "--sub", "u", "--config", file.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    let claims = chorus_core::jwt::verify_hs256(&token, b"from-file", now).unwrap();
    assert_eq!(claims.role(), Some("authenticated"), "the default role");

    // No secret, or a nonsense lifetime: a clear refusal.
    let out = chorus(&["gentoken", "--sub", "u"], &[], dir.path());
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("jwt_secret"),
        "{}",
        text(&out.stderr)
    );
    let out = chorus(
        &["gentoken", "--sub", "u", "--exp", "5 weeks"],
        &secret,
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--exp"), "{}", text(&out.stderr));
}

#[test]
fn the_binary_alone_runs_a_node_from_any_directory() {
    // No --guest, no lunatic.toml, no data dir setting: the embedded guest
    // and built-in defaults, files under ./data of the working directory.
    let dir = TempDir::new("anydir");
    let port = free_port();
    let mut child = Command::new(chorus_bin())
        .arg("run")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir.path())
        .env("CHORUS_PORT", port.to_string())
        .env("CHORUS_RUNTIME_MAX_PROCESSES", "2000")
        .env("CHORUS_RUNTIME_MIN_MAX_MAP_COUNT", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chorus");
    let deadline = Instant::now() + common::START_TIMEOUT;
    let healthy = loop {
        if let Ok(r) = try_http(port, "GET", "/healthz", &[], b"") {
            break r.status == 200;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let output = child.wait_with_output().expect("wait");
    assert!(healthy, "no /healthz:\n{}", text(&output.stderr));
    assert!(
        dir.path().join("data").is_dir(),
        "the default data dir is ./data of the working directory"
    );
}

#[test]
fn a_missing_guest_file_is_named() {
    let dir = TempDir::new("noguest");
    let out = chorus(&["run", "--guest", "/no/such/guest.wasm"], &[], dir.path());
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("/no/such/guest.wasm"), "{err}");
    assert!(
        !err.contains("scripts/build.sh"),
        "no pointer to a script that does not exist"
    );
}

/// The value of a sample line `name{labels} v` (labels as written).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == series).then(|| v.parse().ok()).flatten()
    })
}

#[test]
fn metrics_have_histograms_build_info_and_process_metrics() {
    let node = Node::start();
    let mut a = node.connect(Vsn::V2);
    let mut b = node.connect(Vsn::V1);
    let topic = "realtime:ops-metrics";
    let join_ref = a.join(topic, json!({}));
    b.join(topic, json!({}));
    for i in 0..5 {
        a.broadcast(&join_ref, topic, "tick", json!({ "i": i }));
        b.recv_broadcast(topic, "tick");
    }

    let resp = node.http("GET", "/metrics", &[], b"");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = resp.body_text();
    assert_eq!(sample(&m, "chorus_sessions_open"), Some(2.0), "{m}");
    assert!(m.contains("# TYPE chorus_sessions_total counter\n"), "{m}");
    assert!(
        m.contains("# TYPE chorus_fanout_latency_seconds histogram\n"),
        "{m}"
    );
    let fanouts = sample(&m, "chorus_fanout_latency_seconds_count").unwrap_or(0.0);
    assert!(fanouts >= 5.0, "five broadcasts fanned out\n{m}");
    let inf = sample(&m, "chorus_fanout_latency_seconds_bucket{le=\"+Inf\"}");
    assert_eq!(inf, Some(fanouts), "+Inf bucket = count");
    let size_in = sample(&m, "chorus_message_size_bytes_count{direction=\"in\"}").unwrap_or(0.0);
    assert!(size_in >= 7.0, "2 joins + 5 broadcasts\n{m}");
    let size_out = sample(&m, "chorus_message_size_bytes_count{direction=\"out\"}").unwrap_or(0.0);
    assert!(size_out >= 5.0, "{m}");
    assert!(
        m.contains("chorus_store_operation_seconds_bucket{op=\"append\",le=\""),
        "{m}"
    );
    assert!(
        m.contains("# TYPE chorus_outlet_queue_depth_frames histogram\n"),
        "{m}"
    );
    assert!(m.contains("chorus_build_info{version=\""), "{m}");
    assert!(
        sample(&m, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6,
        "{m}"
    );
    assert!(sample(&m, "process_open_fds").unwrap_or(0.0) >= 3.0, "{m}");
    assert!(
        sample(&m, "process_start_time_seconds").unwrap_or(0.0) > 1.6e9,
        "{m}"
    );

    // Prometheus asks for OpenMetrics first.
    let accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    let resp = node.http("GET", "/metrics", &[("Accept", accept)], b"");
    let om = resp.body_text();
    assert!(
        resp.header("content-type")
            .unwrap_or_default()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        resp.head
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE chorus_sessions counter\n"), "{om}");
    assert!(!om.contains("# TYPE chorus_sessions_total"), "{om}");
}

fn stats(node: &Node, headers: &[(&str, &str)]) -> (u16, Value) {
    let r = node.http("GET", "/dashboard/stats", headers, b"");
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

#[test]
fn dashboard_serves_its_page_and_live_stats() {
    let node = Node::start_with(&[("CHORUS_NODE_NAME", "dash-node")]);
    let page = node.http("GET", "/dashboard", &[], b"");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    let html = page.body_text();
    assert!(html.contains("/dashboard/stats"), "the page polls the JSON");
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    // The page is the host's asset `/dashboard`; no demo file name reaches it.
    assert_eq!(node.http("GET", "/demo//dashboard", &[], b"").status, 404);

    let (status, s) = stats(&node, &[]);
    assert_eq!(status, 200, "{s}");
    assert_eq!(s["node"], "dash-node");
    assert_eq!(s["sessions"], 0, "{s}");
    for key in [
        "channels",
        "peak_channels",
        "messages_in_per_s",
        "messages_out_per_s",
        "restarts",
        "processes",
    ] {
        assert!(s[key].is_number(), "{key} in {s}");
    }
    for (section, key) in [
        ("store", "in_flight"),
        ("store", "latency"),
        ("queues", "queued_frames"),
        ("queues", "largest_queue_frames"),
        ("fanout_latency", "count"),
    ] {
        assert!(!s[section][key].is_null(), "{section}.{key} in {s}");
    }

    // Traffic shows up: sessions now, rates within a couple of samples.
    let mut a = node.connect(Vsn::V2);
    let topic = "realtime:room:dash:chat";
    let join_ref = a.join(topic, json!({}));
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Value::Null;
    while Instant::now() < deadline {
        for i in 0..20 {
            a.broadcast(&join_ref, topic, "chat", json!({ "i": i }));
        }
        let (_, s) = stats(&node, &[]);
        if s["messages_in_per_s"].as_f64().unwrap_or(0.0) > 0.0
            && s["store"]["latency"]["count"].as_u64().unwrap_or(0) > 0
        {
            seen = s;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(seen["sessions"], 1, "{seen}");
    assert!(seen["store"]["latency"]["p50_ms"].is_number(), "{seen}");
    assert!(
        seen["fanout_latency"]["count"].as_u64().unwrap_or(0) > 0,
        "{seen}"
    );
}

#[test]
fn dashboard_stats_are_an_admin_route_when_auth_is_on() {
    let secret = "dashboard-secret";
    let node = Node::start_with(&[("CHORUS_JWT_SECRET", secret)]);
    // The page itself holds no data and loads; its JSON needs a token.
    assert_eq!(node.http("GET", "/dashboard", &[], b"").status, 200);
    let (status, body) = stats(&node, &[]);
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string(), "a readable reason: {body}");
    let (status, _) = stats(&node, &[("Authorization", "Bearer not-a-token")]);
    assert_eq!(status, 401);

    let dir = TempDir::new("dash-token");
    let out = chorus(
        &["gentoken", "--sub", "ops", "--role", "service_role"],
        &[("CHORUS_JWT_SECRET", secret)],
        dir.path(),
    );
    assert!(out.status.success());
    let token = text(&out.stdout).trim().to_string();
    let bearer = format!("Bearer {token}");
    let (status, body) = stats(&node, &[("Authorization", bearer.as_str())]);
    assert_eq!(status, 200, "{body}");
    assert!(body["sessions"].is_number());

    // A valid token of a user is not an operator's: 403 with the reason.
    let out = chorus(
        &["gentoken", "--sub", "ana", "--role", "authenticated"],
        &[("CHORUS_JWT_SECRET", secret)],
        dir.path(),
    );
    assert!(out.status.success());
    let user = format!("Bearer {}", text(&out.stdout).trim());
    let (status, body) = stats(&node, &[("Authorization", user.as_str())]);
    assert_eq!(status, 403, "{body}");
    let reason = body["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("service_role") && reason.contains("authenticated"),
        "{body}"
    );
}
