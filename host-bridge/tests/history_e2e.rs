//! End-to-end tests of stored chat history (issue 4) against real `chorus
//! run` processes on the embedded SQLite backend: the history API and its
//! 400s, `broadcast.replay` on join, acknowledgements only after commit
//! (checked across a `kill -9` and a restart on the same data dir, which
//! also refills the restarted channel's in-memory history), and a failing
//! database turning writes into error replies with nothing acknowledged.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_core::phoenix::{Outbound, Payload, Vsn};
use common::{metric_value, spawn_chorus, try_http, wait_exit, Client, Node, TempDir};
use serde_json::{json, Value};

const TOPIC: &str = "realtime:room:42:chat";
const REST_TOPIC: &str = "room:42:chat";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap()
}

/// Publishes `payload` with ack and returns the reply's status and response.
fn publish_acked(c: &mut Client, join_ref: &str, payload: Value) -> (String, Value) {
    let r = c.broadcast(join_ref, TOPIC, "msg", payload);
    c.reply(&r)
}

fn history(node: &Node, query: &str) -> (u16, Value) {
    let resp = node.http(
        "GET",
        &format!("/realtime/v1/api/channels/{REST_TOPIC}/messages{query}"),
        &[],
        b"",
    );
    (resp.status, resp.json())
}

/// The `n` fields of a history answer's payloads, in answer order.
fn ns(body: &Value) -> Vec<i64> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages array in {body}"))
        .iter()
        .map(|m| m["payload"]["n"].as_i64().unwrap_or(-1))
        .collect()
}

fn labelled(node: &Node, name: &str, op: &str) -> i64 {
    let text = node.metrics();
    metric_value(&text, &format!("{name}{{op=\"{op}\"}}"))
        .unwrap_or_else(|| panic!("no {name}{{op={op}}} in\n{text}"))
}

#[test]
fn history_api_answers_newest_first_and_rejects_bad_ranges() {
    let node = Node::start();
    let mut c = node.connect(Vsn::V2);
    let j = c.join(TOPIC, json!({"broadcast": {"ack": true}}));
    for n in 0..5 {
        let (status, resp) = publish_acked(&mut c, &j, json!({ "n": n }));
        assert_eq!(status, "ok", "publish {n}: {resp}");
    }

    let (status, body) = history(&node, "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(ns(&body), vec![4, 3, 2, 1, 0], "newest first");
    let msgs = body["messages"].as_array().unwrap().clone();
    let ids: Vec<u64> = msgs
        .iter()
        .map(|m| {
            let id = m["id"]
                .as_str()
                .unwrap_or_else(|| panic!("id not a string: {m}"));
            id.parse().unwrap()
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "ids descend: {ids:?}");
    for m in &msgs {
        assert_eq!(m["topic"], TOPIC);
        assert_eq!(m["event"], "msg");
        let at = m["inserted_at"].as_u64().expect("inserted_at is a number");
        assert!(
            at.abs_diff(now_ms()) < 60_000,
            "inserted_at {at} is now-ish"
        );
    }

    // Pages.
    assert_eq!(ns(&history(&node, "?limit=2").1), vec![4, 3]);
    assert_eq!(
        ns(&history(&node, &format!("?before={}", ids[2])).1),
        vec![1, 0]
    );
    assert_eq!(
        ns(&history(&node, &format!("?after={}", ids[2])).1),
        vec![4, 3]
    );
    assert_eq!(
        ns(&history(&node, &format!("?after={}&before={}", ids[4], ids[0])).1),
        vec![3, 2, 1]
    );
    // The full topic name works too; unknown topics are empty.
    let resp = node.http(
        "GET",
        "/realtime/v1/api/channels/realtime%3Aroom%3A42%3Achat/messages?limit=1",
        &[],
        b"",
    );
    assert_eq!(ns(&resp.json()), vec![4]);
    let resp = node.http(
        "GET",
        "/realtime/v1/api/channels/room:nobody:chat/messages",
        &[],
        b"",
    );
    assert_eq!((resp.status, resp.json()), (200, json!({"messages": []})));

    // Bad input: 400 with the reason.
    for (query, reason) in [
        ("?limit=0", "limit must be an integer from 1 to 1000"),
        ("?limit=1001", "limit must be an integer from 1 to 1000"),
        ("?limit=ten", "limit must be an integer from 1 to 1000"),
        ("?before=abc", "before must be a message id"),
        ("?after=-3", "after must be a message id"),
        ("?before=5&after=5", "empty range"),
        ("?before=5&after=9", "empty range"),
    ] {
        let (status, body) = history(&node, query);
        assert_eq!(status, 400, "{query}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(reason), "{query}: {error}");
    }

    // Every request is counted, per op.
    assert_eq!(labelled(&node, "chorus_store_requests_total", "append"), 5);
    assert_eq!(
        labelled(&node, "chorus_store_backend_queries_total", "append"),
        5
    );
    assert!(labelled(&node, "chorus_store_requests_total", "history") >= 7);
}

#[test]
fn replay_on_join_sends_stored_messages_oldest_first_marked_replayed() {
    let node = Node::start();
    let mut c = node.connect(Vsn::V2);
    let j = c.join(TOPIC, json!({"broadcast": {"ack": true}}));
    let (status, _) = publish_acked(&mut c, &j, json!({"n": -1}));
    assert_eq!(status, "ok");
    // Messages older than `since` are not replayed.
    std::thread::sleep(Duration::from_millis(20));
    let since = now_ms();
    std::thread::sleep(Duration::from_millis(5));
    for n in 0..4 {
        assert_eq!(publish_acked(&mut c, &j, json!({ "n": n })).0, "ok");
    }
    let stored = history(&node, "?limit=4").1;
    let mut ids: Vec<String> = stored["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    ids.reverse();

    for vsn in [Vsn::V2, Vsn::V1] {
        let mut late = node.connect(vsn);
        late.join(
            TOPIC,
            json!({"broadcast": {"replay": {"since": since, "limit": 10}}}),
        );
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(recv_replayed(&mut late));
        }
        let payloads: Vec<i64> = got.iter().map(|(_, p)| p["n"].as_i64().unwrap()).collect();
        assert_eq!(payloads, vec![0, 1, 2, 3], "{vsn:?}: oldest first");
        let got_ids: Vec<String> = got.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(got_ids, ids, "{vsn:?}: meta.id is the stored id");
        late.assert_no_broadcast(Duration::from_millis(300));
    }

    // `limit` keeps the newest ones, still oldest first.
    let mut late = node.connect(Vsn::V2);
    late.join(
        TOPIC,
        json!({"broadcast": {"replay": {"since": since, "limit": 2}}}),
    );
    let two: Vec<i64> = (0..2)
        .map(|_| recv_replayed(&mut late).1["n"].as_i64().unwrap())
        .collect();
    assert_eq!(two, vec![2, 3]);
    late.assert_no_broadcast(Duration::from_millis(300));
    assert!(node.metric("chorus_replayed_messages_total") >= 10);

    // A bad replay config is a join error naming the key.
    let mut bad = node.connect(Vsn::V2);
    let (_, status, response) = bad.try_join(
        TOPIC,
        json!({"broadcast": {"replay": {"since": "yesterday"}}}),
    );
    assert_eq!(status, "error");
    assert!(
        response
            .to_string()
            .contains("config.broadcast.replay.since"),
        "{response}"
    );
}

/// The next user broadcast, which must carry `meta: {id, replayed: true}`.
fn recv_replayed(c: &mut Client) -> (String, Value) {
    let m = c.recv_until(
        Duration::from_secs(5),
        "a replayed broadcast",
        |m| matches!(m, Outbound::UserBroadcast(b) if b.topic == TOPIC),
    );
    let Outbound::UserBroadcast(b) = m else {
        unreachable!()
    };
    let meta = b
        .meta
        .unwrap_or_else(|| panic!("replayed broadcast without meta"));
    assert_eq!(meta.get("replayed"), Some(&json!(true)), "{meta:?}");
    let id = meta
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("meta.id missing: {meta:?}"))
        .to_string();
    let Payload::Json(p) = b.payload else {
        panic!("binary payload")
    };
    (id, p)
}

/// Starts a second node on `data_dir` (after the first was killed).
fn restart_on(data_dir: &std::path::Path) -> Node {
    let port = common::free_port();
    let env = vec![
        ("CHORUS_PORT".to_string(), port.to_string()),
        (
            "CHORUS_DATA_DIR".to_string(),
            data_dir.display().to_string(),
        ),
    ];
    let (child, stdout, stderr) = spawn_chorus(&[], &env, data_dir);
    let mut node = Node {
        child,
        port,
        data_dir: TempDir::new("unused"),
        stdout,
        stderr,
    };
    let deadline = Instant::now() + common::START_TIMEOUT;
    loop {
        if let Some(status) = node.child.try_wait().unwrap() {
            panic!("restarted node exited with {status}\n{}", node.logs());
        }
        if try_http(port, "GET", "/healthz", &[], b"").is_ok_and(|r| r.status == 200) {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "restarted node not healthy\n{}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_acknowledged_message_survives_kill_9_and_the_channel_refills() {
    const N: i64 = 60;
    let mut first = Node::start();
    let mut c = first.connect(Vsn::V2);
    let j = c.join(TOPIC, json!({"broadcast": {"ack": true}}));
    // Pipelined: many messages in flight, then the acknowledgements.
    let refs: Vec<String> = (0..N)
        .map(|n| c.broadcast(&j, TOPIC, "msg", json!({ "n": n })))
        .collect();
    let mut acked = Vec::new();
    for (n, r) in refs.iter().enumerate() {
        let (status, resp) = c.reply(r);
        assert_eq!(status, "ok", "message {n}: {resp}");
        acked.push(n as i64);
    }
    // More messages right before the kill: acknowledged or not, none may be
    // half there.
    let tail: Vec<String> = (N..N + 20)
        .map(|n| c.broadcast(&j, TOPIC, "msg", json!({ "n": n })))
        .collect();
    if let Some(first_tail) = tail.first() {
        let (status, _) = c.reply(first_tail);
        assert_eq!(status, "ok");
        acked.push(N);
    }
    first.signal("KILL");
    let status = wait_exit(&mut first.child, Duration::from_secs(10)).expect("node killed");
    assert!(!status.success(), "kill -9 is not a clean exit: {status}");

    let second = restart_on(first.data_dir.path());
    let (status, body) = history(&second, "?limit=1000");
    assert_eq!(status, 200, "{body}");
    let stored = ns(&body);
    for n in &acked {
        assert!(
            stored.contains(n),
            "acknowledged message {n} lost: {stored:?}"
        );
    }
    // Stored messages are whole and in order.
    let mut sorted = stored.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(stored, sorted, "newest first, no duplicates");
    sorted.dedup();
    assert_eq!(sorted.len(), stored.len());

    // The restarted channel server refilled its in-memory history from
    // storage (channel_history defaults to 100 messages).
    let mut c2 = second.connect(Vsn::V2);
    c2.join(TOPIC, json!({}));
    let refilled = second.metric("chorus_channel_history_refilled_total");
    assert_eq!(refilled as usize, stored.len().min(100));
    // And the stored messages replay on the new node.
    let mut late = second.connect(Vsn::V1);
    late.join(
        TOPIC,
        json!({"broadcast": {"replay": {"since": 0, "limit": 3}}}),
    );
    let newest: Vec<i64> = (0..3)
        .map(|_| recv_replayed(&mut late).1["n"].as_i64().unwrap())
        .collect();
    let mut expect: Vec<i64> = stored[..3].to_vec();
    expect.reverse();
    assert_eq!(newest, expect);
    drop(second);
    drop(first);
}

#[test]
fn a_failing_database_fails_the_write_with_an_error_and_acks_nothing() {
    let node = Node::start();
    let mut sender = node.connect(Vsn::V2);
    let j = sender.join(TOPIC, json!({"broadcast": {"ack": true}}));
    let mut watcher = node.connect(Vsn::V2);
    watcher.join(TOPIC, json!({}));
    assert_eq!(publish_acked(&mut sender, &j, json!({"n": 1})).0, "ok");
    assert_eq!(watcher.recv_broadcast(TOPIC, "msg"), json!({"n": 1}));

    // Another process holds SQLite's write lock: the node's commit fails
    // ("database is locked") after its busy timeout.
    let db = sqlite::open(node.db_path()).expect("open the node's database");
    db.execute("BEGIN EXCLUSIVE").expect("take the write lock");
    let (status, resp) = publish_acked(&mut sender, &j, json!({"n": 2}));
    assert_eq!(status, "error", "{resp}");
    let reason = resp["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("storage error") && reason.contains("locked"),
        "the reason says what failed: {reason}"
    );
    // Nothing was fanned out for the failed write.
    watcher.assert_no_broadcast(Duration::from_millis(300));

    // The database is back: writes succeed again, the failed one is absent.
    db.execute("COMMIT").expect("release the lock");
    drop(db);
    assert_eq!(publish_acked(&mut sender, &j, json!({"n": 3})).0, "ok");
    assert_eq!(watcher.recv_broadcast(TOPIC, "msg"), json!({"n": 3}));
    assert_eq!(ns(&history(&node, "").1), vec![3, 1]);
}
