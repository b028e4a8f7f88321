//! End-to-end tests of the realtime gateway (issue 3) against real `chorus
//! run` processes with real WebSocket clients: broadcast `self`/`ack`,
//! unmatched topics, leave, heartbeat timeout, limits, bad input, JWT auth,
//! the REST broadcast API and chat-lane persistence.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_core::jwt::sign_hs256;
use chorus_core::phoenix::{Message, Outbound, Payload, Vsn};
use common::{Client, Event, Node, RECV_TIMEOUT};
use serde_json::{json, Value};
use tungstenite::Message as WsMessage;

const QUIET: Duration = Duration::from_millis(400);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts the push `msg_ref` gets no reply within [`QUIET`].
fn assert_no_reply(c: &mut Client, msg_ref: &str) {
    let deadline = Instant::now() + QUIET;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match c.recv_event(left) {
            None => return,
            Some(Event::Msg(Outbound::Reply {
                msg_ref: Some(r), ..
            })) if r == msg_ref => panic!("unexpected reply to ref {msg_ref}"),
            Some(Event::Msg(_)) => {}
            Some(Event::Close(close)) => panic!("socket closed: {close:?}"),
        }
    }
}

#[test]
fn two_clients_broadcast_with_self_and_ack() {
    let node = Node::start();
    let topic = "realtime:room-a";
    // A: vsn 2.0.0 (binary broadcasts), self false, ack true.
    let mut a = node.connect(Vsn::V2);
    let a_join = a.join(topic, json!({"broadcast": {"self": false, "ack": true}}));
    // B: vsn 1.0.0 (JSON broadcasts), self true, no ack.
    let mut b = node.connect(Vsn::V1);
    let b_join = b.join(topic, json!({"broadcast": {"self": true}}));

    // A publishes: acknowledged to A, delivered to B, not echoed to A.
    let r = a.broadcast(&a_join, topic, "shout", json!({"from": "a", "n": 1}));
    assert_eq!(a.reply(&r), ("ok".to_string(), json!({})), "ack");
    assert_eq!(
        b.recv_broadcast(topic, "shout"),
        json!({"from": "a", "n": 1})
    );
    a.assert_no_broadcast(QUIET);

    // B publishes: echoed to B (self), delivered to A, never acknowledged.
    let r = b.broadcast(&b_join, topic, "shout", json!({"from": "b"}));
    assert_eq!(b.recv_broadcast(topic, "shout"), json!({"from": "b"}));
    assert_eq!(a.recv_broadcast(topic, "shout"), json!({"from": "b"}));
    assert_no_reply(&mut b, &r);

    // Per-channel order: a publisher's messages arrive in the order sent.
    for n in 0..30 {
        a.broadcast(&a_join, topic, "seq", json!({ "n": n }));
    }
    for n in 0..30 {
        assert_eq!(b.recv_broadcast(topic, "seq"), json!({ "n": n }));
    }
}

#[test]
fn pushes_to_a_topic_not_joined_get_unmatched_topic() {
    let node = Node::start();
    for vsn in [Vsn::V2, Vsn::V1] {
        let mut c = node.connect(vsn);
        let r = c.broadcast("1", "realtime:nobody-joined", "x", json!({}));
        assert_eq!(
            c.reply(&r),
            ("error".to_string(), json!({"reason": "unmatched topic"})),
            "{vsn} broadcast"
        );
        let r = c.push(Some("1"), "realtime:nobody-joined", "presence", json!({}));
        assert_eq!(
            c.reply(&r),
            ("error".to_string(), json!({"reason": "unmatched topic"})),
            "{vsn} push"
        );
        let r = c.push(Some("1"), "realtime:nobody-joined", "phx_leave", json!({}));
        assert_eq!(
            c.reply(&r),
            ("error".to_string(), json!({"reason": "unmatched topic"})),
            "{vsn} leave"
        );
        c.heartbeat();
    }
}

#[test]
fn leave_gets_an_ok_reply_then_phx_close_and_stops_delivery() {
    let node = Node::start();
    let topic = "realtime:leave-room";
    let mut leaver = node.connect(Vsn::V2);
    let join_ref = leaver.join(topic, json!({}));
    let mut other = node.connect(Vsn::V1);
    let other_join = other.join(topic, json!({"broadcast": {"ack": true}}));

    let r = leaver.push(Some(&join_ref), topic, "phx_leave", json!({}));
    assert_eq!(leaver.reply(&r), ("ok".to_string(), json!({})));
    let close = leaver.recv_until(
        RECV_TIMEOUT,
        "phx_close",
        |m| matches!(m, Outbound::Message(Message { event, .. }) if event == "phx_close"),
    );
    match close {
        Outbound::Message(m) => {
            assert_eq!(m.topic, topic);
            assert_eq!(m.join_ref.as_deref(), Some(join_ref.as_str()));
        }
        _ => unreachable!(),
    }

    // The leaver no longer receives the topic's broadcasts.
    let r = other.broadcast(&other_join, topic, "after-leave", json!({}));
    assert_eq!(other.reply(&r).0, "ok");
    leaver.assert_no_broadcast(QUIET);
    // ... and pushing to it is an unmatched topic again.
    let r = leaver.broadcast(&join_ref, topic, "x", json!({}));
    assert_eq!(leaver.reply(&r).1, json!({"reason": "unmatched topic"}));
}

#[test]
fn a_silent_socket_is_closed_after_the_heartbeat_timeout() {
    let node = Node::start_with(&[("CHORUS_LIMITS_HEARTBEAT_TIMEOUT_MS", "1500")]);
    let t0 = Instant::now();
    let mut silent = node.connect(Vsn::V2);
    let mut chatty = node.connect(Vsn::V1);
    // The chatty client heartbeats every 500 ms for 2.5 s and stays open.
    while t0.elapsed() < Duration::from_millis(2500) {
        chatty.heartbeat();
        std::thread::sleep(Duration::from_millis(500));
    }
    let close = silent.expect_close(Duration::from_secs(3));
    let elapsed = t0.elapsed();
    assert_eq!(
        close,
        Some((1000, "heartbeat timeout".to_string())),
        "close frame"
    );
    assert!(
        elapsed >= Duration::from_millis(1400),
        "closed too early: {elapsed:?}"
    );
    chatty.heartbeat();
}

#[test]
fn joins_beyond_max_channels_per_socket_are_refused_naming_the_limit() {
    let node = Node::start_with(&[("CHORUS_LIMITS_MAX_CHANNELS_PER_SOCKET", "2")]);
    let mut c = node.connect(Vsn::V2);
    c.join("realtime:one", json!({}));
    let two = c.join("realtime:two", json!({}));
    let (_, status, response) = c.try_join("realtime:three", json!({}));
    assert_eq!(status, "error");
    let reason = response["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("limits.max_channels_per_socket") && reason.contains('2'),
        "reason: {response}"
    );
    // Joining an already joined topic again replaces it (not a new channel).
    c.join("realtime:one", json!({}));
    // After a leave there is room again.
    let r = c.push(Some(&two), "realtime:two", "phx_leave", json!({}));
    assert_eq!(c.reply(&r).0, "ok");
    c.join("realtime:three", json!({}));
}

#[test]
fn payloads_over_the_limit_get_payload_size_exceeded() {
    let node = Node::start_with(&[("CHORUS_LIMITS_MAX_PAYLOAD_BYTES", "1024")]);
    let topic = "realtime:big";
    for vsn in [Vsn::V2, Vsn::V1] {
        let mut c = node.connect(vsn);
        let join_ref = c.join(topic, json!({"broadcast": {"self": true, "ack": true}}));
        let big = "x".repeat(2000);
        let r = c.broadcast(&join_ref, topic, "big", json!({ "text": big }));
        assert_eq!(
            c.reply(&r),
            (
                "error".to_string(),
                json!({"reason": "payload_size_exceeded"})
            ),
            "{vsn}"
        );
        c.assert_no_broadcast(QUIET);
        // The session carries on.
        let r = c.broadcast(&join_ref, topic, "small", json!({"text": "ok"}));
        assert_eq!(c.reply(&r).0, "ok", "{vsn}");
        assert_eq!(c.recv_broadcast(topic, "small"), json!({"text": "ok"}));
    }
}

#[test]
fn a_websocket_message_over_max_frame_bytes_closes_with_1009() {
    let node = Node::start_with(&[
        ("CHORUS_LIMITS_MAX_FRAME_BYTES", "65536"),
        ("CHORUS_LIMITS_MAX_PAYLOAD_BYTES", "65536"),
    ]);
    let mut bystander = node.connect(Vsn::V2);
    let mut c = node.connect(Vsn::V2);
    c.heartbeat();
    let huge = format!(
        r#"[null,"9","phoenix","heartbeat",{{"pad":"{}"}}]"#,
        "y".repeat(70_000)
    );
    c.ws.send(WsMessage::text(huge))
        .expect("send the large frame");
    let close = c.expect_close(Duration::from_secs(5));
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1009, "reason {reason:?}");
    assert!(reason.contains("max_frame_bytes"), "reason {reason:?}");
    bystander.heartbeat();
}

#[test]
fn bad_input_gets_an_error_and_only_affects_its_session() {
    let node = Node::start();
    let mut other = node.connect(Vsn::V2);
    for vsn in [Vsn::V2, Vsn::V1] {
        let mut c = node.connect(vsn);
        let join_ref = c.join("realtime:bad-input", json!({}));
        let phx_error = |m: &Outbound| {
            matches!(m, Outbound::Message(Message { topic, event, .. })
                if topic == "phoenix" && event == "phx_error")
        };
        // Malformed JSON.
        c.send_text("{not json");
        let m = c.recv_until(RECV_TIMEOUT, "phx_error for bad JSON", phx_error);
        assert!(format!("{m:?}").contains("malformed"), "{vsn}: {m:?}");
        // A malformed binary frame (truncated header).
        c.ws.send(WsMessage::binary(vec![3u8, 200, 200])).unwrap();
        let m = c.recv_until(RECV_TIMEOUT, "phx_error for a bad binary frame", phx_error);
        assert!(format!("{m:?}").contains("malformed"), "{vsn}: {m:?}");
        // An unknown event on a joined topic.
        let r = c.push(
            Some(&join_ref),
            "realtime:bad-input",
            "frobnicate",
            json!({}),
        );
        let (status, response) = c.reply(&r);
        assert_eq!(status, "error");
        assert!(
            response["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("frobnicate"),
            "{response}"
        );
        // An unknown event on the phoenix topic.
        let r = c.push(None, "phoenix", "frobnicate", json!({}));
        assert_eq!(c.reply(&r).0, "error");
        // A join without a topic.
        let (_, status, response) = c.try_join("", json!({}));
        assert_eq!(status, "error");
        assert_eq!(response, json!({"reason": "join without a topic"}));
        // A join with a wrongly typed config.
        let (_, status, response) =
            c.try_join("realtime:typed", json!({"broadcast": {"self": "yes"}}));
        assert_eq!(status, "error");
        assert_eq!(
            response,
            json!({"reason": "config.broadcast.self must be a boolean"})
        );
        c.heartbeat();
    }
    other.heartbeat();
}

#[test]
fn with_a_jwt_secret_bad_apikeys_are_refused_with_401_and_a_reason() {
    let secret = "e2e-secret-0123456789";
    let node = Node::start_with(&[("CHORUS_JWT_SECRET", secret)]);
    let valid = sign_hs256(
        &json!({"sub": "u1", "exp": now_secs() + 600}),
        secret.as_bytes(),
    );
    let expired = sign_hs256(
        &json!({"sub": "u1", "exp": now_secs() - 60}),
        secret.as_bytes(),
    );
    let forged = sign_hs256(
        &json!({"sub": "u1", "exp": now_secs() + 600}),
        b"not-the-secret",
    );
    let url = |key: Option<&str>| {
        let base = node.ws_url("/realtime/v1/websocket", "2.0.0");
        match key {
            Some(k) => format!("{base}&apikey={k}"),
            None => base,
        }
    };
    for (key, needle) in [
        (None, "missing apikey"),
        (Some(expired.as_str()), "expired"),
        (Some(forged.as_str()), "signature"),
        (Some("not-a-jwt"), "malformed"),
    ] {
        let err = Client::try_connect(&url(key), Vsn::V2)
            .err()
            .unwrap_or_else(|| panic!("apikey {key:?} was accepted"));
        assert_eq!(err.0, 401, "{key:?}: {err:?}");
        let body: Value = serde_json::from_str(&err.1).unwrap_or(Value::Null);
        let reason = body["error"].as_str().unwrap_or_default();
        assert!(reason.contains(needle), "{key:?}: {err:?}");
    }

    // A valid apikey connects; joins check their own access_token.
    let mut c = Client::connect(&url(Some(&valid)), Vsn::V2).expect("valid apikey");
    c.join("realtime:secure", json!({}));
    let join_ref = c.next_ref();
    c.send_inbound(&chorus_core::phoenix::Inbound::Push(Message {
        join_ref: Some(join_ref.clone()),
        msg_ref: Some(join_ref.clone()),
        topic: "realtime:secure-2".into(),
        event: "phx_join".into(),
        payload: Payload::Json(json!({"config": {}, "access_token": expired})),
    }));
    let (status, response) = c.reply(&join_ref);
    assert_eq!(status, "error");
    assert!(
        response["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{response}"
    );

    // The REST API wants a token too.
    let body = br#"{"messages":[{"topic":"secure","event":"e","payload":{}}]}"#;
    let resp = node.http("POST", "/realtime/v1/api/broadcast", &[], body);
    assert_eq!(resp.status, 401, "{}", resp.body_text());
    assert!(resp.body_text().contains("missing"), "{}", resp.body_text());
    let bearer = format!("Bearer {expired}");
    let resp = node.http(
        "POST",
        "/realtime/v1/api/broadcast",
        &[("Authorization", &bearer)],
        body,
    );
    assert_eq!(resp.status, 401, "{}", resp.body_text());
    let bearer = format!("Bearer {valid}");
    let resp = node.http(
        "POST",
        "/realtime/v1/api/broadcast",
        &[("Authorization", &bearer)],
        body,
    );
    assert_eq!(resp.status, 202, "{}", resp.body_text());
    assert_eq!(c.recv_broadcast("realtime:secure", "e"), json!({}));
}

#[test]
fn rest_broadcast_reaches_socket_subscribers() {
    let node = Node::start();
    let topic = "realtime:rest-room";
    let mut v2 = node.connect(Vsn::V2);
    v2.join(topic, json!({}));
    let mut v1 = node.connect(Vsn::V1);
    v1.join(topic, json!({}));

    let body = json!({"messages": [
        {"topic": "rest-room", "event": "announce", "payload": {"text": "hello"}},
        {"topic": "realtime:rest-room", "event": "announce", "payload": {"text": "again"}},
    ]})
    .to_string();
    let resp = node.http(
        "POST",
        "/realtime/v1/api/broadcast",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(resp.status, 202, "{}", resp.body_text());
    for c in [&mut v2, &mut v1] {
        assert_eq!(
            c.recv_broadcast(topic, "announce"),
            json!({"text": "hello"})
        );
        assert_eq!(
            c.recv_broadcast(topic, "announce"),
            json!({"text": "again"})
        );
    }

    // realtime-js' httpSend form: the body is the payload.
    let resp = node.http(
        "POST",
        "/realtime/v1/api/broadcast/rest-room/events/ping",
        &[("Content-Type", "application/json")],
        br#"{"n":7}"#,
    );
    assert_eq!(resp.status, 202, "{}", resp.body_text());
    assert_eq!(v2.recv_broadcast(topic, "ping"), json!({"n": 7}));
    assert_eq!(v1.recv_broadcast(topic, "ping"), json!({"n": 7}));

    // A malformed batch is a 400 and delivers nothing.
    let resp = node.http(
        "POST",
        "/realtime/v1/api/broadcast",
        &[],
        br#"{"messages":[{"event":"no-topic"}]}"#,
    );
    assert_eq!(resp.status, 400, "{}", resp.body_text());
    v2.assert_no_broadcast(QUIET);
}

#[test]
fn chat_lane_messages_are_persisted_in_sqlite() {
    let node = Node::start();
    let topic = "realtime:room:1:chat";
    let mut c = node.connect(Vsn::V2);
    let join_ref = c.join(topic, json!({"broadcast": {"ack": true}}));
    let r = c.broadcast(
        &join_ref,
        topic,
        "message",
        json!({"text": "persist me", "n": 42}),
    );
    assert_eq!(c.reply(&r), ("ok".to_string(), json!({})));
    // Not a chat lane: acknowledged but not stored.
    let other = "realtime:room:1:cursor";
    let other_join = c.join(other, json!({"broadcast": {"ack": true}}));
    let r = c.broadcast(&other_join, other, "move", json!({"x": 1}));
    assert_eq!(c.reply(&r).0, "ok");

    // The ack means committed: the row is there now.
    let out = Command::new("sqlite3")
        .arg("-json")
        .arg(node.db_path())
        .arg("SELECT channel_id, event, payload FROM messages")
        .output()
        .expect("the sqlite3 CLI is required (apt-get install sqlite3)");
    assert!(out.status.success(), "{out:?}");
    let rows: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("sqlite3 -json output ({e}): {out:?}"));
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["channel_id"], topic);
    assert_eq!(rows[0]["event"], "message");
    let payload: Value = serde_json::from_str(rows[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload, json!({"text": "persist me", "n": 42}));
}
