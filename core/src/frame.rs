//! Broadcast frames built by splicing bytes.
//!
//! A client's broadcast payload is checked once when it arrives (valid JSON,
//! nesting depth, size) and then travels as raw bytes through the session,
//! the channel, the modules and the store. The frame each serializer sends
//! is built here by writing the envelope around those bytes, never by
//! parsing and re-serializing a `serde_json::Value`. Every broadcast frame
//! of the server (fan-out, replay, retained playback, peak-mode batches)
//! goes through [`broadcast`].

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::phoenix::{event, Vsn};
use crate::ws;

/// A broadcast's payload as it travels between processes: JSON text (already
/// checked) or raw bytes (kind-3 binary pushes with the binary encoding).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    Json(#[serde(with = "serde_bytes")] Vec<u8>),
    Binary(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl Body {
    /// The payload borrowed.
    pub fn as_ref(&self) -> BodyRef<'_> {
        match self {
            Body::Json(b) => BodyRef::Json(b),
            Body::Binary(b) => BodyRef::Binary(b),
        }
    }

    /// Bytes of the payload (JSON text or binary).
    pub fn len(&self) -> usize {
        match self {
            Body::Json(b) | Body::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A payload borrowed from the frame or buffer it lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRef<'a> {
    /// JSON text, already checked to be one valid JSON value.
    Json(&'a [u8]),
    Binary(&'a [u8]),
}

impl BodyRef<'_> {
    pub fn to_owned(self) -> Body {
        match self {
            BodyRef::Json(b) => Body::Json(b.to_vec()),
            BodyRef::Binary(b) => Body::Binary(b.to_vec()),
        }
    }
}

/// Kind of a server user broadcast in vsn 2.0.0 binary frames.
const KIND_USER_BROADCAST: u8 = 4;
/// Encoding byte of a binary payload in a kind-4 frame.
const ENCODING_BINARY: u8 = 0;

/// The WebSocket frame that delivers user event `event` with `payload` on
/// `topic` to a client speaking `vsn`; `meta`, when given, is a JSON object
/// the receivers find as `payload.meta` (e.g. `{"id":…,"replayed":true}`).
///
/// * 1.0.0: the JSON object `{topic, event:"broadcast", payload:{type,
///   event, payload[, meta]}, ref:null}`.
/// * 2.0.0, JSON payload: the text array `[null, null, topic, "broadcast",
///   {type, event, payload[, meta]}]`. realtime-js and phoenix.js both read
///   it (phoenix.js cannot read the binary kind 4, realtime-js reads both).
/// * 2.0.0, binary payload: a kind-4 binary frame with the binary encoding.
///
/// `None` when the frame cannot be built: a binary payload under 1.0.0, or
/// a topic, event or meta too long for a kind-4 length byte.
pub fn broadcast(
    vsn: Vsn,
    topic: &str,
    user_event: &str,
    payload: BodyRef<'_>,
    meta: Option<&[u8]>,
) -> Option<Vec<u8>> {
    let mut text = Vec::with_capacity(96 + topic.len() + user_event.len() + payload_len(payload));
    match (vsn, payload) {
        (Vsn::V1, BodyRef::Json(json)) => {
            text.extend_from_slice(b"{\"topic\":");
            write_str(&mut text, topic);
            text.extend_from_slice(b",\"event\":\"");
            text.extend_from_slice(event::BROADCAST.as_bytes());
            text.extend_from_slice(b"\",\"payload\":");
            write_body(&mut text, user_event, json, meta);
            text.extend_from_slice(b",\"ref\":null}");
        }
        (Vsn::V2, BodyRef::Json(json)) => {
            text.extend_from_slice(b"[null,null,");
            write_str(&mut text, topic);
            text.extend_from_slice(b",\"");
            text.extend_from_slice(event::BROADCAST.as_bytes());
            text.extend_from_slice(b"\",");
            write_body(&mut text, user_event, json, meta);
            text.push(b']');
        }
        (Vsn::V1, BodyRef::Binary(_)) => return None,
        (Vsn::V2, BodyRef::Binary(bytes)) => {
            let meta = meta.unwrap_or_default();
            let lens = [
                u8::try_from(topic.len()).ok()?,
                u8::try_from(user_event.len()).ok()?,
                u8::try_from(meta.len()).ok()?,
            ];
            let mut body = Vec::with_capacity(5 + topic.len() + user_event.len() + bytes.len());
            body.push(KIND_USER_BROADCAST);
            body.extend_from_slice(&lens);
            body.push(ENCODING_BINARY);
            body.extend_from_slice(topic.as_bytes());
            body.extend_from_slice(user_event.as_bytes());
            body.extend_from_slice(meta);
            body.extend_from_slice(bytes);
            let mut out = Vec::with_capacity(body.len() + ws::MAX_HEADER_LEN);
            ws::encode_binary(&mut out, &body);
            return Some(out);
        }
    }
    Some(ws_text(&text))
}

/// A server message that is not a user broadcast, as a WebSocket text frame:
/// `[join_ref, ref, topic, event, payload]` (2.0.0) or `{topic, event,
/// payload, ref[, join_ref]}` (1.0.0), with `payload` JSON text spliced in.
pub fn message(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut text = Vec::with_capacity(64 + topic.len() + event.len() + payload.len());
    match vsn {
        Vsn::V1 => {
            text.extend_from_slice(b"{\"topic\":");
            write_str(&mut text, topic);
            text.extend_from_slice(b",\"event\":");
            write_str(&mut text, event);
            text.extend_from_slice(b",\"payload\":");
            text.extend_from_slice(payload);
            text.extend_from_slice(b",\"ref\":");
            write_opt(&mut text, msg_ref);
            if let Some(join_ref) = join_ref {
                text.extend_from_slice(b",\"join_ref\":");
                write_str(&mut text, join_ref);
            }
            text.push(b'}');
        }
        Vsn::V2 => {
            text.push(b'[');
            write_opt(&mut text, join_ref);
            text.push(b',');
            write_opt(&mut text, msg_ref);
            text.push(b',');
            write_str(&mut text, topic);
            text.push(b',');
            write_str(&mut text, event);
            text.push(b',');
            text.extend_from_slice(payload);
            text.push(b']');
        }
    }
    ws_text(&text)
}

/// A `phx_reply` with `{"status": status, "response": response}`, the
/// response being JSON text.
pub fn reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    status: &str,
    response: &[u8],
) -> Vec<u8> {
    let mut payload = Vec::with_capacity(32 + response.len());
    payload.extend_from_slice(b"{\"status\":");
    write_str(&mut payload, status);
    payload.extend_from_slice(b",\"response\":");
    payload.extend_from_slice(response);
    payload.push(b'}');
    message(vsn, join_ref, msg_ref, topic, event::REPLY, &payload)
}

/// An error reply `{"status":"error","response":{"reason": reason}}`.
pub fn error_reply(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    reason: &str,
) -> Vec<u8> {
    let mut response = Vec::with_capacity(16 + reason.len());
    response.extend_from_slice(b"{\"reason\":");
    write_str(&mut response, reason);
    response.push(b'}');
    reply(vsn, join_ref, msg_ref, topic, "error", &response)
}

fn payload_len(payload: BodyRef<'_>) -> usize {
    match payload {
        BodyRef::Json(b) | BodyRef::Binary(b) => b.len(),
    }
}

/// `{"type":"broadcast","event":E,"payload":P[,"meta":M]}`.
fn write_body(out: &mut Vec<u8>, user_event: &str, json: &[u8], meta: Option<&[u8]>) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(event::BROADCAST.as_bytes());
    out.extend_from_slice(b"\",\"event\":");
    write_str(out, user_event);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(json);
    if let Some(meta) = meta {
        out.extend_from_slice(b",\"meta\":");
        out.extend_from_slice(meta);
    }
    out.push(b'}');
}

/// A JSON string literal.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing a `str` into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_opt(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => {
            let _ = out.write_all(b"null");
        }
    }
}

fn ws_text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + ws::MAX_HEADER_LEN);
    ws::encode_text_bytes(&mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phoenix::{self, client, FrameRef, Outbound, Payload};
    use crate::ws::{FrameDecoder, WsEvent};
    use serde_json::{json, Value};

    /// Unwraps the WebSocket frame a server sent.
    fn unframe(bytes: &[u8]) -> WsEvent {
        let mut d = FrameDecoder::for_client(1 << 20);
        d.push(bytes);
        d.next().expect("valid frame").expect("a whole frame")
    }

    fn decoded(vsn: Vsn, bytes: &[u8]) -> Outbound {
        match unframe(bytes) {
            WsEvent::Text(t) => client::decode_server(vsn, FrameRef::Text(&t)).expect("decodes"),
            WsEvent::Binary(b) => {
                client::decode_server(vsn, FrameRef::Binary(&b)).expect("decodes")
            }
            other => panic!("not a data frame: {other:?}"),
        }
    }

    #[test]
    fn a_json_broadcast_reads_back_the_same_under_both_serializers() {
        let payload = br#"{"text":"hola \"t\u00fa\"","n":[1,2.5,null]}"#;
        let value: Value = serde_json::from_slice(payload).unwrap();
        let topic = "realtime:room:1:chat";
        let v1 = broadcast(Vsn::V1, topic, "message", BodyRef::Json(payload), None).unwrap();
        match decoded(Vsn::V1, &v1) {
            Outbound::UserBroadcast(b) => {
                assert_eq!(b.topic, topic);
                assert_eq!(b.event, "message");
                assert_eq!(b.payload, Payload::Json(value.clone()));
            }
            other => panic!("{other:?}"),
        }
        let v2 = broadcast(Vsn::V2, topic, "message", BodyRef::Json(payload), None).unwrap();
        let WsEvent::Text(text) = unframe(&v2) else {
            panic!("JSON goes as text under 2.0.0")
        };
        let array: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            array,
            json!([null, null, topic, "broadcast",
                   {"type":"broadcast","event":"message","payload":value}])
        );
        match decoded(Vsn::V2, &v2) {
            Outbound::UserBroadcast(b) => assert_eq!(b.payload, Payload::Json(value)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn meta_is_spliced_into_the_body() {
        let frame = broadcast(
            Vsn::V2,
            "t",
            "e",
            BodyRef::Json(b"1"),
            Some(br#"{"id":"7","replayed":true}"#),
        )
        .unwrap();
        let Outbound::UserBroadcast(b) = decoded(Vsn::V2, &frame) else {
            panic!("a broadcast")
        };
        assert_eq!(b.payload, Payload::Json(json!(1)));
        let meta = b.meta.map(Value::Object);
        assert_eq!(meta, Some(json!({"id":"7","replayed":true})));
    }

    #[test]
    fn a_binary_payload_is_kind_4_under_v2_and_refused_under_v1() {
        assert!(broadcast(Vsn::V1, "t", "e", BodyRef::Binary(b"\x00\x01"), None).is_none());
        let frame = broadcast(Vsn::V2, "t", "e", BodyRef::Binary(b"\x00\x01"), None).unwrap();
        let expected = phoenix::encode(
            Vsn::V2,
            &Outbound::user_broadcast("t", "e", Payload::Binary(vec![0, 1])),
        )
        .unwrap();
        match (unframe(&frame), expected) {
            (WsEvent::Binary(got), phoenix::Frame::Binary(want)) => assert_eq!(got, want),
            other => panic!("{other:?}"),
        }
        let long = "x".repeat(256);
        assert!(broadcast(Vsn::V2, &long, "e", BodyRef::Binary(b""), None).is_none());
    }

    #[test]
    fn replies_and_messages_match_the_codec() {
        for vsn in [Vsn::V1, Vsn::V2] {
            let ok = reply(vsn, Some("1"), Some("2"), "room:1", "ok", b"{}");
            let want = Outbound::reply(
                Some("1".into()),
                Some("2".into()),
                "room:1",
                "ok",
                json!({}),
            );
            assert_eq!(decoded(vsn, &ok), want);
            let err = error_reply(vsn, None, Some("3"), "phoenix", "bad \"thing\"");
            let want = Outbound::reply(
                None,
                Some("3".into()),
                "phoenix",
                "error",
                json!({"reason": "bad \"thing\""}),
            );
            assert_eq!(decoded(vsn, &err), want);
            let push = message(vsn, Some("4"), None, "t", "presence_state", br#"{"a":1}"#);
            assert_eq!(
                decoded(vsn, &push),
                Outbound::push(Some("4".into()), "t", "presence_state", json!({"a": 1}))
            );
        }
    }
}
