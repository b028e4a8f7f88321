//! Supabase Realtime over Phoenix Channels, serializer `2.0.0`, as
//! realtime-js speaks it, built on Chorus' own codec
//! (`chorus_core::phoenix::client`) so the bench exercises it too.
//!
//! Every session joins `realtime:<room>` with broadcast `self: false,
//! ack: false`; publishes are kind-3 binary frames (what realtime-js sends
//! for `channel.send({type: "broadcast", …})`); broadcasts with JSON
//! payloads arrive as 2.0.0 text arrays (the form phoenix.js reads too),
//! binary payloads as kind-4 frames.

use chorus_core::phoenix::client::{decode_server, encode_push};
use chorus_core::phoenix::{Frame, FrameRef, Inbound, Message, Outbound, Payload, Vsn};
use serde_json::{json, Value};

use super::{Event, Out};
use crate::payload;

/// The join's ref; one topic per session, so it is always the first push.
const JOIN_REF: &str = "1";
/// User event name of benchmark messages.
pub const EVENT: &str = "m";
/// Kind byte of a client's user broadcast push (vsn 2.0.0 binary frame).
const KIND_USER_BROADCAST_PUSH: u8 = 3;
/// Encoding byte of a JSON payload in kind-3/4 frames.
const ENCODING_JSON: u8 = 1;
/// How a fan-out broadcast in the 2.0.0 text form starts (no refs).
const TEXT_BROADCAST_HEAD: &[u8] = b"[null,null,\"";
/// The envelope of a user broadcast in that form, after the topic.
const TEXT_BROADCAST_BODY: &[u8] = b"\"broadcast\",{\"type\":\"broadcast\"";

#[derive(Debug, Default)]
pub struct Client {
    next_ref: u64,
    /// The presence key when the session joins with presence on
    /// (chat-presence), `None` for broadcast-only channels.
    presence_key: Option<String>,
}

impl Client {
    pub fn new() -> Client {
        Client {
            next_ref: 1,
            presence_key: None,
        }
    }

    /// A session that joins with presence on under `key` and tracks.
    pub fn with_presence(key: String) -> Client {
        Client {
            next_ref: 1,
            presence_key: Some(key),
        }
    }

    pub fn presence_on(&self) -> bool {
        self.presence_key.is_some()
    }

    fn take_ref(&mut self) -> String {
        let r = self.next_ref;
        self.next_ref += 1;
        r.to_string()
    }

    /// The `phx_join` again, under the same join ref, after a refused one:
    /// the refused join ended that ref, nothing else was sent under it.
    pub fn rejoin(&mut self, room: &str) -> Out {
        self.next_ref = 1;
        self.join(room)
    }

    /// `phx_join` with the config realtime-js sends for a broadcast-only
    /// channel (or, with a presence key, a channel with presence).
    pub fn join(&mut self, room: &str) -> Out {
        let msg_ref = self.take_ref();
        debug_assert_eq!(msg_ref, JOIN_REF);
        let (key, enabled) = match &self.presence_key {
            Some(k) => (k.as_str(), true),
            None => ("", false),
        };
        let payload = json!({
            "config": {
                "broadcast": {"ack": false, "self": false},
                "presence": {"key": key, "enabled": enabled},
                "postgres_changes": [],
                "private": false
            }
        });
        encode(&Inbound::Push(Message {
            join_ref: Some(JOIN_REF.into()),
            msg_ref: Some(msg_ref),
            topic: topic(room),
            event: "phx_join".into(),
            payload: Payload::Json(payload),
        }))
    }

    /// A broadcast push (kind 3, JSON payload, no metadata): what
    /// realtime-js sends for `channel.send({type: "broadcast", …})`, its
    /// payload the `JSON.stringify` text. `body` is one JSON object
    /// ([`payload::make`]), spliced in as it is: the publisher's cost per
    /// message is a copy, as NATS' `PUB` and Centrifugo's `publish` are.
    pub fn publish(&mut self, room: &str, body: &[u8]) -> Out {
        let msg_ref = self.take_ref();
        let topic = topic(room);
        let lens = [JOIN_REF.len(), msg_ref.len(), topic.len(), EVENT.len()];
        let mut data = Vec::with_capacity(7 + lens.iter().sum::<usize>() + body.len());
        data.push(KIND_USER_BROADCAST_PUSH);
        // Refs, our topics and the event are a few bytes each.
        data.extend(lens.iter().map(|n| u8::try_from(*n).unwrap_or(u8::MAX)));
        data.push(0); // no metadata
        data.push(ENCODING_JSON);
        for field in [JOIN_REF, msg_ref.as_str(), topic.as_str(), EVENT] {
            data.extend_from_slice(field.as_bytes());
        }
        data.extend_from_slice(body);
        Out::binary(data)
    }

    /// realtime-js' `channel.track(meta)`: a `presence` push.
    pub fn track(&mut self, room: &str, meta: Value) -> Out {
        let msg_ref = self.take_ref();
        encode(&Inbound::Push(Message {
            join_ref: Some(JOIN_REF.into()),
            msg_ref: Some(msg_ref),
            topic: topic(room),
            event: "presence".into(),
            payload: Payload::Json(json!({"type": "presence", "event": "track", "payload": meta})),
        }))
    }

    /// `[null, "<ref>", "phoenix", "heartbeat", {}]`.
    pub fn heartbeat(&mut self) -> Out {
        let msg_ref = self.take_ref();
        encode(&Inbound::Push(Message {
            join_ref: None,
            msg_ref: Some(msg_ref),
            topic: "phoenix".into(),
            event: "heartbeat".into(),
            payload: Payload::Json(json!({})),
        }))
    }

    pub fn on_message(&mut self, binary: bool, data: &[u8], out: &mut Vec<Event>) {
        // The hot path, hundreds of thousands of times a second: a kind-4
        // broadcast (`4 topic_len event_len meta_len encoding topic event
        // meta payload`) whose payload carries a stamp is read without
        // decoding its JSON; anything else goes through the full codec.
        if binary && data.len() >= 5 && data[0] == 4 {
            let start = 5 + usize::from(data[1]) + usize::from(data[2]) + usize::from(data[3]);
            if let Some(stamp) = data.get(start..).and_then(payload::scan) {
                out.push(Event::Message(Some(stamp)));
                return;
            }
        }
        // The same for the text form the server uses for JSON payloads
        // (`[null,null,topic,"broadcast",{"type":"broadcast","event":…,
        // "payload":{…}}]`, which phoenix.js reads too): the stamp is
        // scanned after `"payload":`, as Centrifugo's publications are.
        if !binary && data.starts_with(TEXT_BROADCAST_HEAD) {
            if let Some(stamp) = payload::find(data, TEXT_BROADCAST_BODY)
                .and_then(|at| payload::find(&data[at..], b"\"payload\":").map(|p| at + p))
                .and_then(|at| payload::scan(&data[at..]))
            {
                out.push(Event::Message(Some(stamp)));
                return;
            }
        }
        let frame = if binary {
            FrameRef::Binary(data)
        } else {
            match std::str::from_utf8(data) {
                Ok(text) => FrameRef::Text(text),
                Err(_) => {
                    out.push(Event::Error("Phoenix text frame is not UTF-8".into()));
                    return;
                }
            }
        };
        match decode_server(Vsn::V2, frame) {
            Ok(Outbound::UserBroadcast(b)) => {
                let stamp = match &b.payload {
                    Payload::Json(v) => payload::parse_json(v),
                    Payload::Binary(bytes) => payload::parse(bytes),
                };
                out.push(Event::Message(stamp));
            }
            Ok(Outbound::Reply {
                msg_ref,
                status,
                response,
                topic,
                ..
            }) => {
                if msg_ref.as_deref() == Some(JOIN_REF) && topic != "phoenix" {
                    if status == "ok" {
                        out.push(Event::Subscribed);
                    } else {
                        out.push(Event::Error(format!(
                            "join of {topic} refused: {status} {}",
                            describe(&response)
                        )));
                    }
                } else if status != "ok" {
                    out.push(Event::Error(format!(
                        "push {msg_ref:?} on {topic} refused: {status} {}",
                        describe(&response)
                    )));
                }
            }
            Ok(Outbound::Message(m)) => match m.event.as_str() {
                "phx_error" | "phx_close" => {
                    out.push(Event::Error(format!("channel {} got {}", m.topic, m.event)));
                }
                "system" => {
                    if let Payload::Json(v) = &m.payload {
                        if v.get("status").and_then(Value::as_str) == Some("error") {
                            out.push(Event::Error(format!("system error: {v}")));
                        }
                    }
                }
                "presence_state" | "presence_diff" => out.push(Event::Presence),
                _ => {}
            },
            Err(e) => out.push(Event::Error(format!("undecodable server frame: {e}"))),
        }
    }
}

fn topic(room: &str) -> String {
    format!("realtime:{room}")
}

fn describe(p: &Payload) -> String {
    match p {
        Payload::Json(v) => v.to_string(),
        Payload::Binary(b) => format!("<{} bytes>", b.len()),
    }
}

/// One push as a WebSocket message (also the room scenarios' session).
pub fn encode(msg: &Inbound) -> Out {
    // Our own messages always fit the codec's limits (short topics and
    // refs), so an error here is a bench bug worth seeing in the results.
    match encode_push(Vsn::V2, msg) {
        Ok(Frame::Text(t)) => Out::text(t),
        Ok(Frame::Binary(b)) => Out::binary(b),
        Err(e) => Out::text(format!("chorus-bench encode error: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::phoenix::encode as server_encode;

    #[test]
    fn join_is_the_realtime_js_array_form() {
        let out = Client::new().join("r0");
        assert_eq!(out.opcode, chorus_core::ws::Opcode::Text);
        let v: Value = serde_json::from_slice(&out.data).expect("JSON");
        assert_eq!(v[0], "1");
        assert_eq!(v[1], "1");
        assert_eq!(v[2], "realtime:r0");
        assert_eq!(v[3], "phx_join");
        assert_eq!(v[4]["config"]["broadcast"]["self"], false);
        assert_eq!(v[4]["config"]["presence"]["enabled"], false);
    }

    #[test]
    fn heartbeat_has_null_join_ref_and_phoenix_topic() {
        let mut c = Client::new();
        let _ = c.join("r0");
        let hb = c.heartbeat();
        assert_eq!(hb.data, br#"[null,"2","phoenix","heartbeat",{}]"#);
    }

    #[test]
    fn publish_is_a_kind_3_frame_with_json_encoding() {
        let mut c = Client::new();
        let _ = c.join("r0");
        let body = payload::make(1, 2, 3, 100);
        let out = c.publish("r0", &body);
        assert_eq!(out.opcode, chorus_core::ws::Opcode::Binary);
        // kind, join_ref_len, ref_len, topic_len, event_len, meta_len, encoding
        assert_eq!(&out.data[..7], &[3, 1, 1, 11, 1, 0, 1]);
        assert_eq!(&out.data[7..21], b"12realtime:r0m");
        let sent: Value = serde_json::from_slice(&out.data[21..]).expect("JSON payload");
        assert_eq!(payload::parse_json(&sent), payload::parse(&body));
    }

    #[test]
    fn join_reply_and_kind_4_broadcast_decode() {
        let mut c = Client::new();
        let mut ev = Vec::new();
        let reply = server_encode(
            Vsn::V2,
            &Outbound::reply(
                Some("1".into()),
                Some("1".into()),
                "realtime:r0",
                "ok",
                json!({"postgres_changes": []}),
            ),
        )
        .expect("encode reply");
        let Frame::Text(reply) = reply else {
            panic!("replies are text")
        };
        c.on_message(false, reply.as_bytes(), &mut ev);
        let body: Value = serde_json::from_slice(&payload::make(77, 5, 0, 100)).expect("JSON");
        let bcast = server_encode(Vsn::V2, &Outbound::user_broadcast("realtime:r0", "m", body))
            .expect("encode broadcast");
        let Frame::Binary(bcast) = bcast else {
            panic!("user broadcasts are kind 4")
        };
        assert_eq!(bcast[0], 4);
        c.on_message(true, &bcast, &mut ev);
        assert_eq!(
            ev,
            vec![
                Event::Subscribed,
                Event::Message(Some(payload::Stamp {
                    sent_ns: 77,
                    client: 5
                }))
            ]
        );
    }

    #[test]
    fn text_broadcasts_are_read_by_the_fast_path_as_by_the_codec() {
        let body = payload::make(1_700_000_000_123_456_789, 42, 9, 100);
        let frame = chorus_core::frame::broadcast(
            Vsn::V2,
            "realtime:r4",
            EVENT,
            chorus_core::frame::BodyRef::Json(&body),
            None,
        )
        .expect("a frame");
        let mut d = chorus_core::ws::FrameDecoder::for_client(1 << 20);
        d.push(&frame);
        let Ok(Some(chorus_core::ws::WsEvent::Text(text))) = d.next() else {
            panic!("JSON broadcasts are text frames under 2.0.0")
        };
        let mut fast = Vec::new();
        Client::new().on_message(false, text.as_bytes(), &mut fast);
        let want = payload::parse(&body);
        assert!(want.is_some());
        assert_eq!(fast, vec![Event::Message(want)]);
        // The codec reads the same stamp from the same frame.
        let Ok(Outbound::UserBroadcast(b)) = decode_server(Vsn::V2, FrameRef::Text(&text)) else {
            panic!("a user broadcast")
        };
        let Payload::Json(v) = &b.payload else {
            panic!("a JSON payload")
        };
        assert_eq!(payload::parse_json(v), want);
        // A text message that is not a broadcast still goes through the codec.
        let mut other = Vec::new();
        Client::new().on_message(
            false,
            br#"[null,null,"realtime:r4","phx_error",{}]"#,
            &mut other,
        );
        assert!(matches!(&other[..], [Event::Error(e)] if e.contains("phx_error")));
    }

    #[test]
    fn refused_join_and_garbage_are_errors() {
        let mut c = Client::new();
        let mut ev = Vec::new();
        c.on_message(
            false,
            br#"["1","1","realtime:r0","phx_reply",{"status":"error","response":{"reason":"nope"}}]"#,
            &mut ev,
        );
        c.on_message(true, &[4, 200], &mut ev);
        c.on_message(false, b"not json", &mut ev);
        assert_eq!(ev.len(), 3);
        assert!(matches!(&ev[0], Event::Error(e) if e.contains("nope")));
        assert!(ev.iter().all(|e| matches!(e, Event::Error(_))));
    }
}
