//! Client commands: a frame parsed once into a typed command, or a reason.
//!
//! [`decode`] reads a client frame of either serializer into a [`Push`]
//! that borrows from the frame: refs, topic, and either a user broadcast
//! (event plus the payload's raw bytes, checked to be one JSON value) or
//! another Phoenix event with its raw payload. [`command`] then turns the
//! push into a [`Command`] the session applies with one `match`, or into
//! the reason the client is told. Nothing here builds a `serde_json::Value`
//! of a broadcast payload: it travels as the bytes the client sent.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::frame::BodyRef;
use crate::join::{self, JoinConfig};
use crate::phoenix::{event, DecodeError, FrameRef, Vsn, PHOENIX_TOPIC};
use crate::{json, room, selective};

/// What a client sent, parsed, borrowing from its frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Push<'a> {
    pub join_ref: Option<Cow<'a, str>>,
    pub msg_ref: Option<Cow<'a, str>>,
    pub topic: Cow<'a, str>,
    pub kind: Kind<'a>,
}

/// A user broadcast, or any other Phoenix event.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind<'a> {
    /// `broadcast` with `{type: "broadcast", event, payload}` (JSON form) or
    /// a kind-3 binary frame: the user's event and its payload.
    Broadcast {
        event: Cow<'a, str>,
        payload: BodyRef<'a>,
    },
    /// Any other push (join, leave, heartbeat, presence, …).
    Event {
        event: Cow<'a, str>,
        payload: Payload<'a>,
    },
}

/// The payload of a push that is not a user broadcast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Payload<'a> {
    /// JSON text, checked to be one value.
    Json(&'a str),
    /// A kind-0 binary push.
    Binary(&'a [u8]),
}

impl Push<'_> {
    /// The Phoenix event: `broadcast` for a user broadcast.
    pub fn event(&self) -> &str {
        match &self.kind {
            Kind::Broadcast { .. } => event::BROADCAST,
            Kind::Event { event, .. } => event,
        }
    }
}

/// Why a frame could not be read: the codec's typed reason. The session
/// answers it with `phx_error` on the socket topic (no ref of the frame can
/// be trusted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub DecodeError);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed message: {}", self.0)
    }
}

impl From<DecodeError> for Malformed {
    fn from(e: DecodeError) -> Malformed {
        Malformed(e)
    }
}

/// The reason of a frame nested deeper than `max` levels.
pub fn depth_refusal(max: usize) -> String {
    format!("JSON nested deeper than {max} levels (limits.max_json_depth)")
}

/// Levels of the Phoenix envelope itself around a payload: the 2.0.0 array
/// (or 1.0.0 object) and the broadcast body object.
const ENVELOPE_DEPTH: usize = 2;

/// Reads a client frame. `max_depth` caps the nesting of the payload.
pub fn decode<'a>(vsn: Vsn, frame: FrameRef<'a>, max_depth: usize) -> Result<Push<'a>, Malformed> {
    match frame {
        FrameRef::Text(text) => {
            if json::depth_exceeds(text.as_bytes(), max_depth + ENVELOPE_DEPTH) {
                return Err(DecodeError::TooDeep(max_depth).into());
            }
            decode_text(vsn, text)
        }
        FrameRef::Binary(_) if vsn == Vsn::V1 => Err(DecodeError::BinaryInV1.into()),
        FrameRef::Binary(bytes) => decode_binary(bytes, max_depth),
    }
}

/// The JSON form of a broadcast push's payload.
#[derive(Deserialize)]
struct BroadcastBody<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

fn bad_json(what: &'static str, e: serde_json::Error) -> DecodeError {
    DecodeError::InvalidJson {
        what,
        detail: e.to_string(),
    }
}

/// Whether JSON text starts (after white space) with `open`.
fn starts_with(text: &str, open: char) -> bool {
    text.trim_start().starts_with(open)
}

/// A required string field: its text, or why not.
fn string_field<'a>(
    field: &'static str,
    raw: Option<&'a RawValue>,
) -> Result<Cow<'a, str>, DecodeError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Err(DecodeError::MissingField(field)),
        Some(text) => {
            serde_json::from_str::<Cow<'a, str>>(text).map_err(|_| DecodeError::InvalidField {
                field,
                expected: "a string",
            })
        }
    }
}

/// A ref: a string, or null / absent / empty for none.
fn ref_field<'a>(
    field: &'static str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match raw.map(RawValue::get) {
        None | Some("null") => Ok(None),
        Some(text) => serde_json::from_str::<Cow<'a, str>>(text)
            .map(|s| (!s.is_empty()).then_some(s))
            .map_err(|_| DecodeError::InvalidField {
                field,
                expected: "a string or null",
            }),
    }
}

fn decode_text(vsn: Vsn, text: &str) -> Result<Push<'_>, Malformed> {
    let [join_ref, msg_ref, topic, event, payload] = match vsn {
        Vsn::V1 => {
            let mut fields: HashMap<Cow<str>, &RawValue> =
                serde_json::from_str(text).map_err(|e| match starts_with(text, '{') {
                    true => bad_json("frame", e),
                    false if serde_json::from_str::<&RawValue>(text).is_ok() => {
                        DecodeError::ExpectedObject
                    }
                    false => bad_json("frame", e),
                })?;
            ["join_ref", "ref", "topic", "event", "payload"].map(|k| fields.remove(k))
        }
        Vsn::V2 => {
            let items: Vec<&RawValue> =
                serde_json::from_str(text).map_err(|e| match starts_with(text, '[') {
                    true => bad_json("frame", e),
                    false if serde_json::from_str::<&RawValue>(text).is_ok() => {
                        DecodeError::ExpectedArray
                    }
                    false => bad_json("frame", e),
                })?;
            let len = items.len();
            let items: [&RawValue; 5] = items
                .try_into()
                .map_err(|_| DecodeError::WrongArrayLength(len))?;
            items.map(Some)
        }
    };
    let payload = payload.ok_or(DecodeError::MissingField("payload"))?;
    let topic = string_field("topic", topic)?;
    let event = string_field("event", event)?;
    let kind = match fold_broadcast(&event, payload) {
        Some(kind) => kind,
        None => Kind::Event {
            event,
            payload: Payload::Json(payload.get()),
        },
    };
    Ok(Push {
        join_ref: ref_field("join_ref", join_ref)?,
        msg_ref: ref_field("ref", msg_ref)?,
        topic,
        kind,
    })
}

/// The JSON form of a broadcast: event `broadcast` with payload
/// `{type:"broadcast", event:<string>, payload?}` (a missing inner payload is
/// `{}`, as realtime-js sends it when binary-encoding). Anything else with
/// event `broadcast` stays a plain event (and is refused as unknown).
fn fold_broadcast<'a>(event: &str, payload: &'a RawValue) -> Option<Kind<'a>> {
    if event != event::BROADCAST {
        return None;
    }
    let body: BroadcastBody<'a> = serde_json::from_str(payload.get()).ok()?;
    let kind: Cow<str> = serde_json::from_str(body.kind?.get()).ok()?;
    if kind != event::BROADCAST {
        return None;
    }
    let user_event: Cow<'a, str> = serde_json::from_str(body.event?.get()).ok()?;
    let json = body.payload.map_or(&b"{}"[..], |p| p.get().as_bytes());
    Some(Kind::Broadcast {
        event: user_event,
        payload: BodyRef::Json(json),
    })
}

const KIND_PUSH: u8 = 0;
const KIND_USER_BROADCAST_PUSH: u8 = 3;
const ENCODING_BINARY: u8 = 0;
const ENCODING_JSON: u8 = 1;

fn decode_binary(bytes: &[u8], max_depth: usize) -> Result<Push<'_>, Malformed> {
    let (&kind, _) = bytes.split_first().ok_or(DecodeError::EmptyFrame)?;
    match kind {
        KIND_PUSH => {
            let mut r = Fields::new(bytes, 4, 0)?;
            let join_ref = r.text("join_ref")?;
            let msg_ref = r.text("ref")?;
            let topic = r.text("topic")?;
            let event = r.text("event")?;
            Ok(Push {
                join_ref: nonempty(join_ref),
                msg_ref: nonempty(msg_ref),
                topic: topic.into(),
                kind: Kind::Event {
                    event: event.into(),
                    payload: Payload::Binary(r.rest()),
                },
            })
        }
        KIND_USER_BROADCAST_PUSH => {
            let mut r = Fields::new(bytes, 5, 1)?;
            let encoding = r.extra;
            let join_ref = r.text("join_ref")?;
            let msg_ref = r.text("ref")?;
            let topic = r.text("topic")?;
            let user_event = r.text("user_event")?;
            // The sender's options (realtime-js' `persist`…): checked JSON,
            // not carried further.
            let meta = r.field("metadata")?;
            if !meta.is_empty() {
                if json::depth_exceeds(meta, max_depth) {
                    return Err(DecodeError::TooDeep(max_depth).into());
                }
                serde_json::from_slice::<&RawValue>(meta).map_err(|e| bad_json("metadata", e))?;
            }
            let rest = r.rest();
            let payload = match encoding {
                ENCODING_BINARY => BodyRef::Binary(rest),
                ENCODING_JSON => {
                    if json::depth_exceeds(rest, max_depth) {
                        return Err(DecodeError::TooDeep(max_depth).into());
                    }
                    serde_json::from_slice::<&RawValue>(rest)
                        .map_err(|e| bad_json("payload", e))?;
                    BodyRef::Json(rest)
                }
                other => return Err(DecodeError::UnknownEncoding(other).into()),
            };
            Ok(Push {
                join_ref: nonempty(join_ref),
                msg_ref: nonempty(msg_ref),
                topic: topic.into(),
                kind: Kind::Broadcast {
                    event: user_event.into(),
                    payload,
                },
            })
        }
        1 | 2 | 4 => Err(DecodeError::WrongDirection(kind).into()),
        other => Err(DecodeError::UnknownKind(other).into()),
    }
}

/// Binary refs are empty when the sender had none.
fn nonempty(r: &str) -> Option<Cow<'_, str>> {
    (!r.is_empty()).then_some(Cow::Borrowed(r))
}

/// Bounds-checked walk over a binary frame: the kind byte, `n` length bytes,
/// `extra` header bytes (kind 3's encoding), the fields, then the payload.
struct Fields<'a> {
    lens: &'a [u8],
    extra: u8,
    body: &'a [u8],
    next: usize,
}

impl<'a> Fields<'a> {
    fn new(frame: &'a [u8], n: usize, extra: usize) -> Result<Fields<'a>, DecodeError> {
        let needed = 1 + n + extra;
        let header = frame.get(1..needed).ok_or(DecodeError::FrameTooShort {
            kind: frame.first().copied().unwrap_or_default(),
            needed,
            got: frame.len(),
        })?;
        Ok(Fields {
            lens: header.get(..n).unwrap_or_default(),
            extra: header.get(n).copied().unwrap_or_default(),
            body: frame.get(needed..).unwrap_or_default(),
            next: 0,
        })
    }

    fn field(&mut self, name: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.lens.get(self.next).copied().unwrap_or_default());
        self.next += 1;
        if len > self.body.len() {
            return Err(DecodeError::LengthExceedsFrame(name));
        }
        let (head, rest) = self.body.split_at(len);
        self.body = rest;
        Ok(head)
    }

    fn text(&mut self, name: &'static str) -> Result<&'a str, DecodeError> {
        let bytes = self.field(name)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8(name))
    }

    fn rest(self) -> &'a [u8] {
        self.body
    }
}

/// Limits that apply while reading commands.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most keys in a `presence_subscribe` or `presence_online` list.
    pub max_subscribed_keys: usize,
}

/// Test-only push on a joined topic that crashes its channel process
/// (`node.fault_injection`).
pub const CRASH_CHANNEL_EVENT: &str = "chorus_crash_channel";

/// Test-only push on a joined topic, `{"key": "<presence key>"}`, that
/// crashes the presence shard owning that key (`node.fault_injection`).
pub const CRASH_PRESENCE_EVENT: &str = "chorus_crash_presence";

/// What a push asks the session to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command<'a> {
    /// `heartbeat` on `phoenix`.
    Heartbeat,
    /// `clock` (audio sync) on `phoenix` or a joined topic.
    Clock {
        t0: serde_json::Number,
    },
    /// `presence_online` on `phoenix`: which keys are online anywhere.
    Online {
        keys: Vec<String>,
    },
    /// `chorus_crash` on `phoenix` (honoured only with fault injection on).
    Crash,
    /// [`CRASH_CHANNEL_EVENT`] on a joined topic (fault injection only).
    CrashChannel,
    /// [`CRASH_PRESENCE_EVENT`] on a joined topic (fault injection only):
    /// the presence key whose shard crashes.
    CrashPresence {
        key: String,
    },
    Join(Box<JoinConfig>),
    Leave,
    /// A user broadcast.
    Broadcast {
        event: Cow<'a, str>,
        payload: BodyRef<'a>,
    },
    /// `presence` `track` with its meta (JSON text).
    Track {
        meta: &'a str,
    },
    /// `presence` `untrack`.
    Untrack,
    /// `access_token` with the new token (`None`: none given).
    AccessToken {
        token: Option<String>,
    },
    /// `presence_subscribe {add, remove}`.
    Subscribe {
        add: Vec<String>,
        remove: Vec<String>,
    },
}

/// Why a push is refused: the reason of the error reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An event the server does not know on this topic.
    UnknownEvent { event: String, on_phoenix: bool },
    /// A known event with a payload it cannot take.
    Invalid(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownEvent {
                event,
                on_phoenix: true,
            } => write!(f, "unknown event {event:?} on topic phoenix"),
            Refusal::UnknownEvent { event, .. } => write!(f, "unknown event {event:?}"),
            Refusal::Invalid(reason) => f.write_str(reason),
        }
    }
}

fn invalid(reason: impl Into<String>) -> Refusal {
    Refusal::Invalid(reason.into())
}

/// The JSON value of a (small, non-broadcast) payload, or `what` in the
/// refusal when it is binary.
fn json_of(payload: Payload<'_>, what: &str) -> Result<Value, Refusal> {
    match payload {
        Payload::Json(raw) => serde_json::from_str(raw).map_err(|e| invalid(e.to_string())),
        Payload::Binary(_) => Err(invalid(format!("{what} payload must be JSON"))),
    }
}

/// Interprets a push. Whether its topic is joined is the session's concern.
pub fn command<'a>(push: &Push<'a>, limits: Limits) -> Result<Command<'a>, Refusal> {
    let (event_name, payload) = match &push.kind {
        Kind::Broadcast { event, payload } => {
            return Ok(Command::Broadcast {
                event: event.clone(),
                payload: *payload,
            })
        }
        Kind::Event { event, payload } => (event.as_ref(), *payload),
    };
    let on_phoenix = push.topic == PHOENIX_TOPIC;
    match event_name {
        event::HEARTBEAT if on_phoenix => Ok(Command::Heartbeat),
        room::CLOCK_EVENT => {
            let v = json_of(payload, "clock").map_err(|_| invalid(room::CLOCK_SHAPE))?;
            match v.get("t0") {
                Some(Value::Number(n)) => Ok(Command::Clock { t0: n.clone() }),
                _ => Err(invalid(room::CLOCK_SHAPE)),
            }
        }
        selective::ONLINE_EVENT if on_phoenix => {
            let v = json_of(payload, "presence_online")?;
            selective::parse_online(&v, limits.max_subscribed_keys)
                .map(|keys| Command::Online { keys })
                .map_err(Refusal::Invalid)
        }
        "chorus_crash" if on_phoenix => Ok(Command::Crash),
        other if on_phoenix => Err(Refusal::UnknownEvent {
            event: other.into(),
            on_phoenix,
        }),
        event::JOIN => {
            let v = json_of(payload, "join")?;
            join::parse_join(&v)
                .map(|c| Command::Join(Box::new(c)))
                .map_err(Refusal::Invalid)
        }
        event::LEAVE => Ok(Command::Leave),
        CRASH_CHANNEL_EVENT => Ok(Command::CrashChannel),
        CRASH_PRESENCE_EVENT => {
            let v = json_of(payload, CRASH_PRESENCE_EVENT)?;
            match v.get("key") {
                Some(Value::String(k)) => Ok(Command::CrashPresence { key: k.clone() }),
                _ => Err(invalid(
                    "chorus_crash_presence needs {\"key\": \"<presence key>\"}",
                )),
            }
        }
        "presence" => {
            let Payload::Json(raw) = payload else {
                return Err(invalid("presence payload must be JSON"));
            };
            presence_command(raw)
        }
        "access_token" => {
            let token = match payload {
                Payload::Json(raw) => serde_json::from_str::<Value>(raw)
                    .ok()
                    .and_then(|v| v.get("access_token")?.as_str().map(str::to_owned)),
                Payload::Binary(_) => None,
            };
            Ok(Command::AccessToken { token })
        }
        selective::SUBSCRIBE_EVENT => {
            let v = json_of(payload, "presence_subscribe")?;
            selective::parse_subscribe(&v, limits.max_subscribed_keys)
                .map(|(add, remove)| Command::Subscribe { add, remove })
                .map_err(Refusal::Invalid)
        }
        other => Err(Refusal::UnknownEvent {
            event: other.into(),
            on_phoenix,
        }),
    }
}

/// `{type:"presence", event:"track", payload:{…meta}}` or `event:"untrack"`.
fn presence_command(raw: &str) -> Result<Command<'_>, Refusal> {
    const SHAPE: &str = "presence event must be track or untrack";
    // A map, not a struct: `"payload": null` must stay a (refused) null
    // meta, where an `Option` field would read it as absent.
    let fields: HashMap<Cow<str>, &RawValue> =
        serde_json::from_str(raw).map_err(|_| invalid(SHAPE))?;
    let event = fields
        .get("event")
        .and_then(|e| serde_json::from_str::<Cow<str>>(e.get()).ok());
    match event.as_deref() {
        Some("track") => Ok(Command::Track {
            meta: fields.get("payload").map_or("{}", |m| m.get()),
        }),
        Some("untrack") => Ok(Command::Untrack),
        _ => Err(invalid(SHAPE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phoenix::{client, Inbound, Message, Payload as PPayload, UserBroadcast};
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_subscribed_keys: 3,
    };

    fn text(vsn: Vsn, s: &str) -> Result<Push<'_>, Malformed> {
        decode(vsn, FrameRef::Text(s), 32)
    }

    #[test]
    fn v2_text_push_is_read_with_refs_and_raw_payload() {
        let p = text(
            Vsn::V2,
            r#"["1","2","realtime:a","phx_join",{"config":{}}]"#,
        )
        .unwrap();
        assert_eq!(p.join_ref.as_deref(), Some("1"));
        assert_eq!(p.msg_ref.as_deref(), Some("2"));
        assert_eq!(p.topic, "realtime:a");
        assert_eq!(p.event(), "phx_join");
        match p.kind {
            Kind::Event {
                payload: Payload::Json(raw),
                ..
            } => assert_eq!(raw, r#"{"config":{}}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_text_push_needs_a_payload_and_takes_refs() {
        let p = text(
            Vsn::V1,
            r#"{"topic":"t","event":"heartbeat","payload":{},"ref":"9","join_ref":null}"#,
        )
        .unwrap();
        assert_eq!(p.msg_ref.as_deref(), Some("9"));
        assert_eq!(p.join_ref, None);
        let e = text(Vsn::V1, r#"{"topic":"t","event":"heartbeat","ref":"9"}"#).unwrap_err();
        assert_eq!(e.0, DecodeError::MissingField("payload"));
    }

    #[test]
    fn json_broadcast_keeps_the_payload_bytes() {
        let p = text(
            Vsn::V2,
            r#"["1",null,"t","broadcast",{"type":"broadcast","event":"msg","payload":{"a":[1, 2]}}]"#,
        )
        .unwrap();
        assert_eq!(
            p.kind,
            Kind::Broadcast {
                event: "msg".into(),
                payload: BodyRef::Json(br#"{"a":[1, 2]}"#)
            }
        );
        // Without an inner payload realtime-js means {}.
        let p = text(Vsn::V1, r#"{"topic":"t","event":"broadcast","payload":{"type":"broadcast","event":"m"},"ref":null}"#).unwrap();
        assert!(matches!(
            p.kind,
            Kind::Broadcast {
                payload: BodyRef::Json(b"{}"),
                ..
            }
        ));
        // Not the broadcast shape: a plain (unknown) event.
        let p = text(
            Vsn::V2,
            r#"[null,null,"t","broadcast",{"type":"x","event":"m"}]"#,
        )
        .unwrap();
        assert!(matches!(p.kind, Kind::Event { .. }));
        let p = text(
            Vsn::V2,
            r#"[null,null,"t","broadcast",{"type":"broadcast","event":5}]"#,
        )
        .unwrap();
        assert!(matches!(p.kind, Kind::Event { .. }));
    }

    #[test]
    fn binary_broadcast_from_realtime_js_reads_back() {
        let msg = Inbound::Broadcast {
            join_ref: Some("4".into()),
            msg_ref: Some("5".into()),
            broadcast: UserBroadcast {
                topic: "realtime:room:1:chat".into(),
                event: "message".into(),
                meta: None,
                payload: PPayload::Json(json!({"text": "hola"})),
            },
        };
        let phoenix::Frame::Binary(bytes) = client::encode_push(Vsn::V2, &msg).unwrap() else {
            panic!("binary")
        };
        let p = decode(Vsn::V2, FrameRef::Binary(&bytes), 32).unwrap();
        assert_eq!(p.join_ref.as_deref(), Some("4"));
        assert_eq!(p.topic, "realtime:room:1:chat");
        let Kind::Broadcast {
            event,
            payload: BodyRef::Json(json),
        } = p.kind
        else {
            panic!("a JSON broadcast")
        };
        assert_eq!(event, "message");
        assert_eq!(
            serde_json::from_slice::<Value>(json).unwrap(),
            json!({"text": "hola"})
        );
    }

    #[test]
    fn binary_pushes_are_bounds_checked() {
        for bad in [
            &b""[..],
            &[3u8][..],
            &[3, 5, 0, 0, 0, 0, 1][..],
            &[3, 0, 0, 1, 1, 0, 7, b't', b'e'][..],
            &[3, 0, 0, 1, 1, 0, 1, b't', b'e', b'{'][..],
            &[4, 0, 0, 0, 0][..],
            &[9][..],
        ] {
            assert!(
                decode(Vsn::V2, FrameRef::Binary(bad), 32).is_err(),
                "{bad:?}"
            );
        }
        assert!(decode(Vsn::V1, FrameRef::Binary(&[0, 0, 0, 0, 0]), 32).is_err());
        // Kind 0 with an empty payload is fine.
        let p = decode(Vsn::V2, FrameRef::Binary(&[0, 0, 0, 1, 1, b't', b'e']), 32).unwrap();
        assert_eq!(
            p.kind,
            Kind::Event {
                event: "e".into(),
                payload: Payload::Binary(b"")
            }
        );
    }

    #[test]
    fn deep_payloads_are_refused_before_parsing() {
        let deep = format!(
            "[null,null,\"t\",\"e\",{}1{}]",
            "[".repeat(40),
            "]".repeat(40)
        );
        let e = text(Vsn::V2, &deep).unwrap_err();
        assert_eq!(e.0, DecodeError::TooDeep(32));
        assert!(e.to_string().contains("limits.max_json_depth"));
        let ok = format!(
            "[null,null,\"t\",\"e\",{}1{}]",
            "[".repeat(32),
            "]".repeat(32)
        );
        assert!(text(Vsn::V2, &ok).is_ok());
        let mut bin = vec![3, 0, 0, 1, 1, 0, 1, b't', b'e'];
        bin.extend(std::iter::repeat_n(b'[', 40));
        bin.extend(std::iter::repeat_n(b']', 40));
        let e = decode(Vsn::V2, FrameRef::Binary(&bin), 32).unwrap_err();
        assert_eq!(e.0, DecodeError::TooDeep(32));
    }

    #[test]
    fn wrong_shapes_are_named_like_the_codec_names_them() {
        let err = |vsn, t: &str| text(vsn, t).unwrap_err().0;
        assert_eq!(
            err(Vsn::V1, r#"[null,"1","t","e",{}]"#),
            DecodeError::ExpectedObject
        );
        assert_eq!(err(Vsn::V2, r#"{"topic":"t"}"#), DecodeError::ExpectedArray);
        assert_eq!(
            err(Vsn::V2, r#"["1","1","t","e"]"#),
            DecodeError::WrongArrayLength(4)
        );
        assert_eq!(
            err(Vsn::V2, r#"["1","1",null,"e",{}]"#),
            DecodeError::MissingField("topic")
        );
        assert_eq!(
            err(Vsn::V2, r#"["1","1","t",7,{}]"#),
            DecodeError::InvalidField {
                field: "event",
                expected: "a string"
            }
        );
        assert_eq!(
            err(
                Vsn::V1,
                r#"{"topic":42,"event":"e","payload":{},"ref":"1"}"#
            ),
            DecodeError::InvalidField {
                field: "topic",
                expected: "a string"
            }
        );
        assert!(matches!(
            err(Vsn::V2, "[1,"),
            DecodeError::InvalidJson { .. }
        ));
        assert_eq!(
            decode(Vsn::V2, FrameRef::Binary(&[4, 1, 1, 0, 1, b'a', b'b']), 32)
                .unwrap_err()
                .0,
            DecodeError::WrongDirection(4)
        );
    }

    #[test]
    fn garbage_is_malformed_never_a_panic() {
        for bad in [
            "",
            "[",
            "{}",
            "[1,2,3]",
            "[null,null,null,\"e\",{}]",
            "[null,null,\"t\",7,{}]",
            "[1,null,\"t\",\"e\",{}]",
            "\"x\"",
        ] {
            assert!(text(Vsn::V2, bad).is_err(), "{bad}");
        }
        assert!(text(Vsn::V1, "[null,null,\"t\",\"e\",{}]").is_err());
    }

    fn cmd(topic: &str, event: &str, payload: &str) -> Result<Command<'static>, Refusal> {
        let frame = format!("[null,\"1\",{},{},{payload}]", json!(topic), json!(event));
        let frame: &'static str = Box::leak(frame.into_boxed_str());
        command(&text(Vsn::V2, frame).unwrap(), LIMITS)
    }

    #[test]
    fn phoenix_topic_commands() {
        assert_eq!(cmd("phoenix", "heartbeat", "{}"), Ok(Command::Heartbeat));
        assert_eq!(
            cmd("phoenix", "presence_online", r#"{"keys":["a"]}"#),
            Ok(Command::Online {
                keys: vec!["a".into()]
            })
        );
        assert!(
            matches!(cmd("phoenix", "presence_online", r#"{"keys":["a","b","c","d"]}"#), Err(Refusal::Invalid(r)) if r.starts_with("presence_subscription_cap"))
        );
        assert_eq!(cmd("phoenix", "chorus_crash", "{}"), Ok(Command::Crash));
        assert_eq!(
            cmd("phoenix", "nope", "{}").unwrap_err().to_string(),
            "unknown event \"nope\" on topic phoenix"
        );
        // A heartbeat elsewhere is no heartbeat.
        assert!(matches!(
            cmd("t", "heartbeat", "{}"),
            Err(Refusal::UnknownEvent { .. })
        ));
    }

    #[test]
    fn clock_needs_a_number() {
        assert!(matches!(
            cmd("t", "clock", r#"{"t0": 12.5}"#),
            Ok(Command::Clock { .. })
        ));
        assert_eq!(
            cmd("t", "clock", r#"{"t0": "x"}"#),
            Err(invalid(room::CLOCK_SHAPE))
        );
        assert_eq!(
            cmd("phoenix", "clock", "[]"),
            Err(invalid(room::CLOCK_SHAPE))
        );
    }

    #[test]
    fn channel_commands() {
        assert!(
            matches!(cmd("t", "phx_join", r#"{"config":{"broadcast":{"ack":true}}}"#), Ok(Command::Join(c)) if c.broadcast_ack)
        );
        assert_eq!(
            cmd(
                "t",
                "phx_join",
                r#"{"config":{"broadcast":{"self":"yes"}}}"#
            ),
            Err(invalid("config.broadcast.self must be a boolean"))
        );
        assert_eq!(cmd("t", "phx_leave", "{}"), Ok(Command::Leave));
        assert_eq!(
            cmd(
                "t",
                "presence",
                r#"{"type":"presence","event":"track","payload":{"a":1}}"#
            ),
            Ok(Command::Track { meta: r#"{"a":1}"# })
        );
        assert_eq!(
            cmd("t", "presence", r#"{"type":"presence","event":"untrack"}"#),
            Ok(Command::Untrack)
        );
        // A null meta is a meta (refused by the channel), not a missing one.
        assert_eq!(
            cmd(
                "t",
                "presence",
                r#"{"type":"presence","event":"track","payload":null}"#
            ),
            Ok(Command::Track { meta: "null" })
        );
        assert_eq!(
            cmd("t", "presence", r#"{"type":"presence","event":"track"}"#),
            Ok(Command::Track { meta: "{}" })
        );
        assert_eq!(
            cmd("t", "presence", r#"{"event":"wave"}"#),
            Err(invalid("presence event must be track or untrack"))
        );
        assert_eq!(
            cmd("t", "access_token", r#"{"access_token":"x"}"#),
            Ok(Command::AccessToken {
                token: Some("x".into())
            })
        );
        assert_eq!(
            cmd("t", "access_token", "{}"),
            Ok(Command::AccessToken { token: None })
        );
        assert_eq!(
            cmd("t", "presence_subscribe", r#"{"add":["a"]}"#),
            Ok(Command::Subscribe {
                add: vec!["a".into()],
                remove: vec![]
            })
        );
        assert!(cmd("t", "presence_subscribe", "[]").is_err());
        assert_eq!(
            cmd("t", "wave", "{}").unwrap_err().to_string(),
            "unknown event \"wave\""
        );
    }

    #[test]
    fn binary_payloads_of_json_commands_are_refused() {
        let frame = [
            0u8, 0, 0, 1, 8, b't', b'p', b'r', b'e', b's', b'e', b'n', b'c', b'e', 1,
        ];
        let p = decode(Vsn::V2, FrameRef::Binary(&frame), 32).unwrap();
        assert_eq!(
            command(&p, LIMITS),
            Err(invalid("presence payload must be JSON"))
        );
    }

    #[test]
    fn codec_messages_and_commands_agree() {
        // What the old codec decodes as a push decodes here with the same refs and event.
        let m = Inbound::Push(Message {
            join_ref: Some("1".into()),
            msg_ref: Some("2".into()),
            topic: "realtime:x".into(),
            event: "presence".into(),
            payload: PPayload::Json(json!({"type":"presence","event":"untrack"})),
        });
        for vsn in [Vsn::V1, Vsn::V2] {
            let phoenix::Frame::Text(t) = client::encode_push(vsn, &m).unwrap() else {
                panic!("text")
            };
            let p = text(vsn, &t).unwrap();
            assert_eq!(command(&p, LIMITS), Ok(Command::Untrack));
            assert_eq!(p.msg_ref.as_deref(), Some("2"));
        }
    }

    use crate::phoenix;
}
