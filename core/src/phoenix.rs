//! Phoenix Channels wire codec (serializers `1.0.0` and `2.0.0`), sans IO.
//!
//! Chorus must be byte-compatible with the npm clients `@supabase/realtime-js`
//! 2.x (checked against 2.119.1) and `phoenix` 1.8.x (checked against 1.8.16),
//! so every layout below was read from their serializers
//! (`realtime-js/src/lib/serializer.ts`, `phoenix/assets/js/phoenix/serializer.js`)
//! and the test vectors in `core/tests/phoenix.rs` were printed by running
//! those serializers under node.
//!
//! # Text frames
//!
//! * `1.0.0`: a JSON object `{"topic","event","payload","ref","join_ref"}`.
//!   realtime-js sends `JSON.stringify(msg)` and decodes with `JSON.parse`, so
//!   it reads the same keys back. Phoenix' server omits `join_ref`; we include
//!   it when we have one, which the client uses to drop messages meant for an
//!   older join of the same topic.
//! * `2.0.0`: a JSON array `[join_ref, ref, topic, event, payload]`, `null` for
//!   a missing ref (`[null, "4", "phoenix", "heartbeat", {}]` is a heartbeat).
//!
//! # Binary frames (`2.0.0` only)
//!
//! Byte 0 is the kind; every length is ONE unsigned byte (so each field is at
//! most 255 bytes of UTF-8, both clients throw above that); strings are
//! UTF-8 and have no terminator; the payload runs to the end of the frame.
//!
//! | kind | direction | layout after the kind byte |
//! |---|---|---|
//! | 0 push | client→server | `join_ref_len ref_len topic_len event_len` join_ref ref topic event payload |
//! | 0 push | server→client | `join_ref_len topic_len event_len` join_ref topic event payload (no ref) |
//! | 1 reply | server→client | `join_ref_len ref_len topic_len status_len` join_ref ref topic status response |
//! | 2 broadcast | server→client | `topic_len event_len` topic event payload |
//! | 3 user broadcast push | client→server | `join_ref_len ref_len topic_len user_event_len metadata_len encoding` join_ref ref topic user_event metadata payload |
//! | 4 user broadcast | server→client | `topic_len user_event_len metadata_len encoding` topic user_event metadata payload |
//!
//! `encoding` is 0 for a raw binary payload and 1 for a UTF-8 JSON payload;
//! `metadata` is a JSON object or empty (length 0).
//!
//! What the clients actually do with these, which drives [`encode`]:
//!
//! * realtime-js (vsn `2.0.0`, its default) turns EVERY
//!   `channel.send({type: "broadcast", event, payload})` into a kind-3 frame
//!   (its test is `event == "broadcast"` and `payload.event` is a string).
//!   The user payload is the raw bytes when it is an `ArrayBuffer`
//!   (encoding 0), otherwise `JSON.stringify(payload ?? {})` (encoding 1).
//!   `type` is not sent. `metadata` is the subset of the send arguments whose
//!   keys are allowed (default `["persist"]`), e.g. `{"persist":true}`, or
//!   empty when none is set. Empty `join_ref`/`ref` stand for `null`.
//! * realtime-js decodes ONLY kind 4 among binary frames; kinds 0, 1 and 2
//!   decode to `undefined` and its socket then throws. A kind-4 frame becomes
//!   `{join_ref: null, ref: null, topic, event: "broadcast",
//!   payload: {type: "broadcast", event: user_event, payload, meta?}}` where
//!   `payload` is parsed JSON (encoding 1) or an `ArrayBuffer` (otherwise) and
//!   `meta` (parsed JSON) is present only when `metadata_len > 0`. That is
//!   exactly what the JSON form delivers, so the channel cannot tell them apart.
//! * phoenix.js decodes kinds 0, 1 and 2 but not 4. A kind-1 reply becomes
//!   `phx_reply` with payload `{status, response: ArrayBuffer}`. It only
//!   encodes binary (kind 0) when the whole payload is an `ArrayBuffer`, and
//!   then writes a `null` join_ref as the four bytes `"null"`.
//!
//! Hence: replies and server messages with JSON payloads are always text
//! frames, which both clients decode; realtime broadcasts
//! ([`Outbound::UserBroadcast`]) are kind 4 under `2.0.0`, as the Supabase
//! server sends them for kind-3 pushes; kinds 0, 1 and 2 are only produced
//! for binary payloads of plain Phoenix messages, which only phoenix.js reads.
//!
//! Encoding returns owned bytes ([`Frame`]), so the gateway encodes a fan-out
//! broadcast once per protocol version and hands the same frame to every
//! subscriber.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde_json::{Map, Value};

/// Event names of the Phoenix and Realtime protocols.
pub mod event {
    /// Client joins a topic.
    pub const JOIN: &str = "phx_join";
    /// Client leaves a topic.
    pub const LEAVE: &str = "phx_leave";
    /// Server answers a client push that carried a ref.
    pub const REPLY: &str = "phx_reply";
    /// Server closed the channel (after a leave).
    pub const CLOSE: &str = "phx_close";
    /// The channel crashed; the client will rejoin.
    pub const ERROR: &str = "phx_error";
    /// Keep-alive on topic [`PHOENIX_TOPIC`](super::PHOENIX_TOPIC).
    pub const HEARTBEAT: &str = "heartbeat";
    /// Realtime broadcast, both directions.
    pub const BROADCAST: &str = "broadcast";
}

/// Topic of socket-level messages such as heartbeats.
pub const PHOENIX_TOPIC: &str = "phoenix";

/// Serializer version, negotiated by the `vsn` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Vsn {
    /// `1.0.0`: JSON objects, text frames only.
    V1,
    /// `2.0.0`: JSON arrays plus binary frames.
    V2,
}

impl Vsn {
    /// The query-string spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Vsn::V1 => "1.0.0",
            Vsn::V2 => "2.0.0",
        }
    }

    /// Reads the `vsn` query parameter. Phoenix servers treat a missing `vsn`
    /// as `1.0.0` (very old clients never sent one), so we do too.
    pub fn from_param(vsn: Option<&str>) -> Result<Vsn, UnknownVsn> {
        vsn.map_or(Ok(Vsn::V1), str::parse)
    }
}

impl FromStr for Vsn {
    type Err = UnknownVsn;

    fn from_str(s: &str) -> Result<Vsn, UnknownVsn> {
        match s {
            "1.0.0" => Ok(Vsn::V1),
            "2.0.0" => Ok(Vsn::V2),
            other => Err(UnknownVsn(other.to_owned())),
        }
    }
}

impl fmt::Display for Vsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `vsn` the server does not speak; the connection should be refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVsn(pub String);

impl fmt::Display for UnknownVsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unsupported serializer vsn {:?} (supported: 1.0.0, 2.0.0)",
            self.0
        )
    }
}

impl std::error::Error for UnknownVsn {}

/// A message body: JSON, or raw bytes (binary frames only).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    Binary(Vec<u8>),
}

impl From<Value> for Payload {
    fn from(value: Value) -> Payload {
        Payload::Json(value)
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Payload {
        Payload::Binary(bytes)
    }
}

/// One Phoenix message as both serializers model it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Ref of the join this message belongs to; `None` for socket-level
    /// messages and fan-out broadcasts.
    pub join_ref: Option<String>,
    /// Ref the client matches replies against; `None` when no reply is due.
    pub msg_ref: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// A Realtime broadcast: user event `event` with `payload` on `topic`.
///
/// Its JSON form is event `broadcast` with payload
/// `{type: "broadcast", event, payload, meta?}`; its binary forms are kinds 3
/// (client push) and 4 (server fan-out).
#[derive(Debug, Clone, PartialEq)]
pub struct UserBroadcast {
    pub topic: String,
    /// The user's event name (e.g. `cursor-move`), not `broadcast`.
    pub event: String,
    /// From a client: the send options realtime-js forwards (e.g.
    /// `{"persist": true}`). From the server: what the receivers get as
    /// `payload.meta` (e.g. `{"id": …, "replayed": true}`). `None` is the
    /// empty metadata field.
    pub meta: Option<Map<String, Value>>,
    pub payload: Payload,
}

/// What a client sent, as the gateway handles it.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Any push: join, leave, heartbeat, presence, access_token, …
    Push(Message),
    /// A broadcast push, whichever frame carried it: a kind-3 binary frame or
    /// the JSON form (event `broadcast`, payload `{type: "broadcast", event,
    /// payload, …}`). Folding both into one variant means the gateway has one
    /// path for broadcasts whatever the client's vsn, and binary payloads
    /// stay binary.
    Broadcast {
        join_ref: Option<String>,
        msg_ref: Option<String>,
        broadcast: UserBroadcast,
    },
}

impl Inbound {
    pub fn topic(&self) -> &str {
        match self {
            Inbound::Push(m) => &m.topic,
            Inbound::Broadcast { broadcast, .. } => &broadcast.topic,
        }
    }

    /// The Phoenix event; `broadcast` for [`Inbound::Broadcast`].
    pub fn event(&self) -> &str {
        match self {
            Inbound::Push(m) => &m.event,
            Inbound::Broadcast { .. } => event::BROADCAST,
        }
    }

    pub fn join_ref(&self) -> Option<&str> {
        match self {
            Inbound::Push(m) => m.join_ref.as_deref(),
            Inbound::Broadcast { join_ref, .. } => join_ref.as_deref(),
        }
    }

    pub fn msg_ref(&self) -> Option<&str> {
        match self {
            Inbound::Push(m) => m.msg_ref.as_deref(),
            Inbound::Broadcast { msg_ref, .. } => msg_ref.as_deref(),
        }
    }
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// `phx_reply` with payload `{status, response}`, answering the push
    /// whose refs it echoes.
    Reply {
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: String,
        status: String,
        response: Payload,
    },
    /// Any other server message (`phx_close`, `phx_error`, `presence_state`,
    /// `presence_diff`, `system`, plain Phoenix broadcasts, …).
    ///
    /// A binary payload needs vsn `2.0.0` and becomes kind 0 when `join_ref`
    /// is set, kind 2 otherwise; neither layout has room for `msg_ref`, which
    /// is then dropped (as Phoenix does). realtime-js cannot read those kinds.
    Message(Message),
    /// A Realtime broadcast to subscribers: kind 4 under `2.0.0`, the JSON
    /// form under `1.0.0`.
    UserBroadcast(UserBroadcast),
}

impl Outbound {
    /// A `phx_reply`; `status` is `ok` or `error` in practice.
    pub fn reply(
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: impl Into<String>,
        status: impl Into<String>,
        response: impl Into<Payload>,
    ) -> Outbound {
        Outbound::Reply {
            join_ref,
            msg_ref,
            topic: topic.into(),
            status: status.into(),
            response: response.into(),
        }
    }

    /// A server message on a joined channel (`presence_state`, `system`, …);
    /// it carries the join's ref so the client can drop it if it rejoined.
    pub fn push(
        join_ref: Option<String>,
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: impl Into<Payload>,
    ) -> Outbound {
        Outbound::Message(Message {
            join_ref,
            msg_ref: None,
            topic: topic.into(),
            event: event.into(),
            payload: payload.into(),
        })
    }

    /// `phx_close` after a leave. Phoenix sets `ref = join_ref` on it, and the
    /// client uses that to tell which join was closed.
    pub fn close(join_ref: Option<String>, topic: impl Into<String>) -> Outbound {
        Outbound::lifecycle(join_ref, topic.into(), event::CLOSE)
    }

    /// `phx_error` when a channel crashed; the client rejoins. Same refs as
    /// [`Outbound::close`].
    pub fn channel_error(join_ref: Option<String>, topic: impl Into<String>) -> Outbound {
        Outbound::lifecycle(join_ref, topic.into(), event::ERROR)
    }

    fn lifecycle(join_ref: Option<String>, topic: String, event: &str) -> Outbound {
        Outbound::Message(Message {
            msg_ref: join_ref.clone(),
            join_ref,
            topic,
            event: event.to_owned(),
            payload: Payload::Json(Value::Object(Map::new())),
        })
    }

    /// A plain Phoenix fan-out broadcast (no refs): `[null, null, topic,
    /// event, payload]`.
    pub fn broadcast(
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: impl Into<Payload>,
    ) -> Outbound {
        Outbound::Message(Message {
            join_ref: None,
            msg_ref: None,
            topic: topic.into(),
            event: event.into(),
            payload: payload.into(),
        })
    }

    /// A Realtime broadcast of user event `event`, without metadata.
    pub fn user_broadcast(
        topic: impl Into<String>,
        event: impl Into<String>,
        payload: impl Into<Payload>,
    ) -> Outbound {
        Outbound::UserBroadcast(UserBroadcast {
            topic: topic.into(),
            event: event.into(),
            meta: None,
            payload: payload.into(),
        })
    }
}

/// What travels on the WebSocket, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// A received WebSocket data frame, borrowed from the connection's buffer so
/// decoding copies only the fields it keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRef<'a> {
    Text(&'a str),
    Binary(&'a [u8]),
}

impl<'a> From<&'a Frame> for FrameRef<'a> {
    fn from(frame: &'a Frame) -> FrameRef<'a> {
        match frame {
            Frame::Text(text) => FrameRef::Text(text),
            Frame::Binary(bytes) => FrameRef::Binary(bytes),
        }
    }
}

/// Why a frame could not be decoded. The gateway may send the text back in a
/// log or close reason, so each variant names the offending part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// `what` (the frame, metadata or a JSON payload) is not valid JSON.
    InvalidJson {
        what: &'static str,
        detail: String,
    },
    /// A `2.0.0` text frame that is not a JSON array.
    ExpectedArray,
    /// A `2.0.0` text frame whose array does not have 5 elements.
    WrongArrayLength(usize),
    /// A `1.0.0` text frame that is not a JSON object.
    ExpectedObject,
    MissingField(&'static str),
    /// A field of the wrong JSON type (e.g. a numeric topic).
    InvalidField {
        field: &'static str,
        expected: &'static str,
    },
    /// Binary frames exist only in `2.0.0`.
    BinaryInV1,
    EmptyFrame,
    /// The fixed header of binary kind `kind` needs `needed` bytes.
    FrameTooShort {
        kind: u8,
        needed: usize,
        got: usize,
    },
    /// A length byte points past the end of the frame.
    LengthExceedsFrame(&'static str),
    InvalidUtf8(&'static str),
    UnknownKind(u8),
    /// A known kind sent in the wrong direction (e.g. a client sending a
    /// reply).
    WrongDirection(u8),
    /// Payload encoding byte other than 0 (binary) or 1 (JSON).
    UnknownEncoding(u8),
    /// JSON nested deeper than the node allows (`limits.max_json_depth`).
    TooDeep(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::InvalidJson { what, detail } => {
                write!(f, "invalid JSON in {what}: {detail}")
            }
            DecodeError::ExpectedArray => f.write_str(
                "vsn 2.0.0 text frame must be a JSON array [join_ref, ref, topic, event, payload]",
            ),
            DecodeError::WrongArrayLength(n) => {
                write!(
                    f,
                    "vsn 2.0.0 text frame must be an array of 5 elements, got {n}"
                )
            }
            DecodeError::ExpectedObject => {
                f.write_str("vsn 1.0.0 text frame must be a JSON object")
            }
            DecodeError::MissingField(field) => write!(f, "missing {field}"),
            DecodeError::InvalidField { field, expected } => {
                write!(f, "{field} must be {expected}")
            }
            DecodeError::BinaryInV1 => f.write_str("binary frames need vsn 2.0.0"),
            DecodeError::EmptyFrame => f.write_str("empty binary frame"),
            DecodeError::FrameTooShort { kind, needed, got } => write!(
                f,
                "frame too short: binary kind {kind} needs a {needed}-byte header, got {got} bytes"
            ),
            DecodeError::LengthExceedsFrame(field) => {
                write!(f, "length field of {field} exceeds frame")
            }
            DecodeError::InvalidUtf8(field) => write!(f, "{field} is not valid UTF-8"),
            DecodeError::UnknownKind(kind) => write!(f, "unknown binary kind {kind}"),
            DecodeError::WrongDirection(kind) => {
                write!(f, "binary kind {kind} is not expected in this direction")
            }
            DecodeError::UnknownEncoding(enc) => {
                write!(f, "unknown payload encoding {enc} (0 binary, 1 JSON)")
            }
            DecodeError::TooDeep(max) => f.write_str(&crate::command::depth_refusal(*max)),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message cannot be put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A binary frame field longer than the 255 bytes its length byte can
    /// count. The gateway should refuse such topics at join under `2.0.0`.
    FieldTooLong { field: &'static str, len: usize },
    /// A binary payload on a `1.0.0` socket, which has only text frames.
    BinaryInV1,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::FieldTooLong { field, len } => {
                write!(f, "{field} is {len} bytes, binary frames allow at most 255")
            }
            EncodeError::BinaryInV1 => f.write_str("binary payloads need vsn 2.0.0"),
        }
    }
}

impl std::error::Error for EncodeError {}

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;
const KIND_USER_BROADCAST_PUSH: u8 = 3;
const KIND_USER_BROADCAST: u8 = 4;
const ENCODING_BINARY: u8 = 0;
const ENCODING_JSON: u8 = 1;

/// Decodes a frame a client sent. Never panics, whatever the bytes.
pub fn decode(vsn: Vsn, frame: FrameRef<'_>) -> Result<Inbound, DecodeError> {
    match frame {
        FrameRef::Text(text) => Ok(fold_broadcast(decode_text(vsn, text)?)),
        FrameRef::Binary(_) if vsn == Vsn::V1 => Err(DecodeError::BinaryInV1),
        FrameRef::Binary(bytes) => decode_client_binary(bytes),
    }
}

/// Encodes a server message for a socket speaking `vsn`.
pub fn encode(vsn: Vsn, msg: &Outbound) -> Result<Frame, EncodeError> {
    match (vsn, msg) {
        (
            _,
            Outbound::Reply {
                join_ref,
                msg_ref,
                topic,
                status,
                response: Payload::Json(response),
            },
        ) => {
            let payload = ReplyPayload { status, response };
            Ok(text_frame(
                vsn,
                join_ref.as_deref(),
                msg_ref.as_deref(),
                topic,
                event::REPLY,
                &payload,
            ))
        }
        (
            Vsn::V2,
            Outbound::Reply {
                join_ref,
                msg_ref,
                topic,
                status,
                response: Payload::Binary(response),
            },
        ) => binary_frame(
            KIND_REPLY,
            &[
                ("join_ref", opt_bytes(join_ref)),
                ("ref", opt_bytes(msg_ref)),
                ("topic", topic.as_bytes()),
                ("status", status.as_bytes()),
            ],
            &[],
            response,
        ),
        (_, Outbound::Message(m)) => match &m.payload {
            Payload::Json(payload) => Ok(text_frame(
                vsn,
                m.join_ref.as_deref(),
                m.msg_ref.as_deref(),
                &m.topic,
                &m.event,
                payload,
            )),
            Payload::Binary(_) if vsn == Vsn::V1 => Err(EncodeError::BinaryInV1),
            Payload::Binary(payload) => match &m.join_ref {
                Some(join_ref) => binary_frame(
                    KIND_PUSH,
                    &[
                        ("join_ref", join_ref.as_bytes()),
                        ("topic", m.topic.as_bytes()),
                        ("event", m.event.as_bytes()),
                    ],
                    &[],
                    payload,
                ),
                None => binary_frame(
                    KIND_BROADCAST,
                    &[("topic", m.topic.as_bytes()), ("event", m.event.as_bytes())],
                    &[],
                    payload,
                ),
            },
        },
        (Vsn::V1, Outbound::UserBroadcast(b)) => {
            let Payload::Json(payload) = &b.payload else {
                return Err(EncodeError::BinaryInV1);
            };
            let body = BroadcastBody {
                kind: event::BROADCAST,
                event: &b.event,
                payload,
                meta: b.meta.as_ref(),
            };
            Ok(text_frame(
                vsn,
                None,
                None,
                &b.topic,
                event::BROADCAST,
                &body,
            ))
        }
        (Vsn::V2, Outbound::UserBroadcast(b)) => {
            let meta = meta_json(b.meta.as_ref());
            let (encoding, payload) = payload_bytes(&b.payload);
            binary_frame(
                KIND_USER_BROADCAST,
                &[
                    ("topic", b.topic.as_bytes()),
                    ("user_event", b.event.as_bytes()),
                    ("metadata", meta.as_bytes()),
                ],
                &[encoding],
                &payload,
            )
        }
        (Vsn::V1, Outbound::Reply { .. }) => Err(EncodeError::BinaryInV1),
    }
}

/// The client side of the codec: what realtime-js / phoenix.js put on the
/// wire and how they read the server's frames. Used by tests for round trips
/// and by the benchmark load generator to impersonate real clients.
pub mod client {
    use super::*;

    /// Encodes a client push exactly as realtime-js 2.119 would: JSON pushes
    /// as text (object for `1.0.0`, array for `2.0.0`); under `2.0.0` a
    /// broadcast as kind 3 and a binary push as phoenix.js' kind 0.
    pub fn encode_push(vsn: Vsn, msg: &Inbound) -> Result<Frame, EncodeError> {
        match (vsn, msg) {
            (_, Inbound::Push(m)) => match &m.payload {
                Payload::Json(payload) => Ok(text_frame(
                    vsn,
                    m.join_ref.as_deref(),
                    m.msg_ref.as_deref(),
                    &m.topic,
                    &m.event,
                    payload,
                )),
                Payload::Binary(_) if vsn == Vsn::V1 => Err(EncodeError::BinaryInV1),
                Payload::Binary(payload) => binary_frame(
                    KIND_PUSH,
                    &[
                        ("join_ref", opt_bytes(&m.join_ref)),
                        ("ref", opt_bytes(&m.msg_ref)),
                        ("topic", m.topic.as_bytes()),
                        ("event", m.event.as_bytes()),
                    ],
                    &[],
                    payload,
                ),
            },
            (
                Vsn::V1,
                Inbound::Broadcast {
                    join_ref,
                    msg_ref,
                    broadcast: b,
                },
            ) => {
                let Payload::Json(payload) = &b.payload else {
                    return Err(EncodeError::BinaryInV1);
                };
                // realtime-js sends its send() arguments as the payload, so
                // options such as `persist` sit next to type/event/payload.
                let mut body = b.meta.clone().unwrap_or_default();
                body.insert("type".into(), Value::from(event::BROADCAST));
                body.insert("event".into(), Value::from(b.event.as_str()));
                body.insert("payload".into(), payload.clone());
                Ok(text_frame(
                    vsn,
                    join_ref.as_deref(),
                    msg_ref.as_deref(),
                    &b.topic,
                    event::BROADCAST,
                    &body,
                ))
            }
            (
                Vsn::V2,
                Inbound::Broadcast {
                    join_ref,
                    msg_ref,
                    broadcast: b,
                },
            ) => {
                // realtime-js writes '' rather than '{}' when no option is set.
                let meta = meta_json(b.meta.as_ref().filter(|m| !m.is_empty()));
                let (encoding, payload) = payload_bytes(&b.payload);
                binary_frame(
                    KIND_USER_BROADCAST_PUSH,
                    &[
                        ("join_ref", opt_bytes(join_ref)),
                        ("ref", opt_bytes(msg_ref)),
                        ("topic", b.topic.as_bytes()),
                        ("user_event", b.event.as_bytes()),
                        ("metadata", meta.as_bytes()),
                    ],
                    &[encoding],
                    &payload,
                )
            }
        }
    }

    /// Decodes a server frame as the clients read it, then classifies it: a
    /// text `phx_reply` whose payload is exactly `{status, response}` is a
    /// [`Outbound::Reply`]; a ref-less `broadcast` whose payload is exactly
    /// `{type: "broadcast", event, payload, meta?}` is an
    /// [`Outbound::UserBroadcast`]; anything else is a message. Never panics.
    pub fn decode_server(vsn: Vsn, frame: FrameRef<'_>) -> Result<Outbound, DecodeError> {
        match frame {
            FrameRef::Text(text) => Ok(classify_server(decode_text(vsn, text)?)),
            FrameRef::Binary(_) if vsn == Vsn::V1 => Err(DecodeError::BinaryInV1),
            FrameRef::Binary(bytes) => decode_server_binary(bytes),
        }
    }

    fn classify_server(m: Message) -> Outbound {
        match m {
            Message {
                join_ref,
                msg_ref,
                topic,
                event,
                payload: Payload::Json(Value::Object(mut p)),
            } if event == event::REPLY
                && p.len() == 2
                && p.get("status").is_some_and(Value::is_string)
                && p.contains_key("response") =>
            {
                Outbound::Reply {
                    status: take_string(&mut p, "status"),
                    response: Payload::Json(p.remove("response").unwrap_or_default()),
                    join_ref,
                    msg_ref,
                    topic,
                }
            }
            Message {
                join_ref: None,
                msg_ref: None,
                topic,
                event,
                payload: Payload::Json(Value::Object(mut p)),
            } if event == event::BROADCAST && is_user_broadcast_body(&p) => {
                let meta = match p.remove("meta") {
                    Some(Value::Object(meta)) => Some(meta),
                    _ => None,
                };
                Outbound::UserBroadcast(UserBroadcast {
                    event: take_string(&mut p, "event"),
                    payload: Payload::Json(p.remove("payload").unwrap_or_default()),
                    meta,
                    topic,
                })
            }
            other => Outbound::Message(other),
        }
    }

    /// Exactly `{type: "broadcast", event: <string>, payload, meta?: {…}}`,
    /// the shape [`encode`] gives a [`UserBroadcast`] in text frames.
    fn is_user_broadcast_body(p: &Map<String, Value>) -> bool {
        let meta_ok = match p.get("meta") {
            None => p.len() == 3,
            Some(meta) => meta.is_object() && p.len() == 4,
        };
        meta_ok
            && is_broadcast_type(p)
            && p.get("event").is_some_and(Value::is_string)
            && p.contains_key("payload")
    }

    fn decode_server_binary(bytes: &[u8]) -> Result<Outbound, DecodeError> {
        let (&kind, _) = bytes.split_first().ok_or(DecodeError::EmptyFrame)?;
        match kind {
            KIND_PUSH => {
                let mut r = Reader::new(bytes, 3, 0)?;
                let join_ref = r.opt_string("join_ref")?;
                let topic = r.string("topic")?;
                let event = r.string("event")?;
                Ok(Outbound::Message(Message {
                    join_ref,
                    msg_ref: None,
                    topic,
                    event,
                    payload: Payload::Binary(r.rest().to_vec()),
                }))
            }
            KIND_REPLY => {
                let mut r = Reader::new(bytes, 4, 0)?;
                let join_ref = r.opt_string("join_ref")?;
                let msg_ref = r.opt_string("ref")?;
                let topic = r.string("topic")?;
                let status = r.string("status")?;
                Ok(Outbound::Reply {
                    join_ref,
                    msg_ref,
                    topic,
                    status,
                    response: Payload::Binary(r.rest().to_vec()),
                })
            }
            KIND_BROADCAST => {
                let mut r = Reader::new(bytes, 2, 0)?;
                let topic = r.string("topic")?;
                let event = r.string("event")?;
                Ok(Outbound::Message(Message {
                    join_ref: None,
                    msg_ref: None,
                    topic,
                    event,
                    payload: Payload::Binary(r.rest().to_vec()),
                }))
            }
            KIND_USER_BROADCAST => {
                let mut r = Reader::new(bytes, 3, 1)?;
                let encoding = r.encoding();
                let topic = r.string("topic")?;
                let event = r.string("user_event")?;
                let meta = r.metadata()?;
                let payload = user_payload(encoding, r.rest())?;
                Ok(Outbound::UserBroadcast(UserBroadcast {
                    topic,
                    event,
                    meta,
                    payload,
                }))
            }
            KIND_USER_BROADCAST_PUSH => Err(DecodeError::WrongDirection(kind)),
            _ => Err(DecodeError::UnknownKind(kind)),
        }
    }
}

/// `{status, response}` of a `phx_reply`.
#[derive(Serialize)]
struct ReplyPayload<'a> {
    status: &'a str,
    response: &'a Value,
}

/// JSON form of a Realtime broadcast as the receiving channel sees it.
#[derive(Serialize)]
struct BroadcastBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    event: &'a str,
    payload: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Map<String, Value>>,
}

/// `1.0.0` frame. Phoenix' own V1 serializer never sends `join_ref`; we send
/// it when known because both clients use it to drop messages of a stale
/// join, and leave it out otherwise.
#[derive(Serialize)]
struct V1Frame<'a, P: Serialize> {
    topic: &'a str,
    event: &'a str,
    payload: &'a P,
    #[serde(rename = "ref")]
    msg_ref: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    join_ref: Option<&'a str>,
}

fn text_frame<P: Serialize>(
    vsn: Vsn,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &P,
) -> Frame {
    let json = match vsn {
        Vsn::V1 => serde_json::to_string(&V1Frame {
            topic,
            event,
            payload,
            msg_ref,
            join_ref,
        }),
        Vsn::V2 => serde_json::to_string(&(join_ref, msg_ref, topic, event, payload)),
    };
    // Serializing strings, options and `serde_json` values cannot fail: no
    // map has non-string keys and no custom `Serialize` impl can error.
    Frame::Text(json.unwrap_or_default())
}

/// Builds `kind, one length byte per field, extra header bytes, fields,
/// payload`. Kinds 3 and 4 put their encoding byte after the lengths.
fn binary_frame(
    kind: u8,
    fields: &[(&'static str, &[u8])],
    extra_header: &[u8],
    payload: &[u8],
) -> Result<Frame, EncodeError> {
    let fields_len: usize = fields.iter().map(|(_, f)| f.len()).sum();
    let mut out =
        Vec::with_capacity(1 + fields.len() + extra_header.len() + fields_len + payload.len());
    out.push(kind);
    for (name, field) in fields {
        let len = u8::try_from(field.len()).map_err(|_| EncodeError::FieldTooLong {
            field: name,
            len: field.len(),
        })?;
        out.push(len);
    }
    out.extend_from_slice(extra_header);
    for (_, field) in fields {
        out.extend_from_slice(field);
    }
    out.extend_from_slice(payload);
    Ok(Frame::Binary(out))
}

/// A missing ref travels as an empty field in binary frames.
fn opt_bytes(value: &Option<String>) -> &[u8] {
    value.as_deref().map_or(&[], str::as_bytes)
}

/// Metadata travels as compact JSON, or empty when absent.
fn meta_json(meta: Option<&Map<String, Value>>) -> String {
    // A map of JSON values always serializes; `unwrap_or_default` only
    // spares us a panic path.
    meta.and_then(|m| serde_json::to_string(m).ok())
        .unwrap_or_default()
}

/// Encoding byte and bytes of a kind-3/4 user payload.
fn payload_bytes(payload: &Payload) -> (u8, std::borrow::Cow<'_, [u8]>) {
    match payload {
        Payload::Binary(bytes) => (ENCODING_BINARY, bytes.as_slice().into()),
        Payload::Json(value) => (ENCODING_JSON, value.to_string().into_bytes().into()),
    }
}

fn user_payload(encoding: u8, bytes: &[u8]) -> Result<Payload, DecodeError> {
    match encoding {
        ENCODING_BINARY => Ok(Payload::Binary(bytes.to_vec())),
        ENCODING_JSON => serde_json::from_slice(bytes)
            .map(Payload::Json)
            .map_err(|e| DecodeError::InvalidJson {
                what: "payload",
                detail: e.to_string(),
            }),
        other => Err(DecodeError::UnknownEncoding(other)),
    }
}

fn is_broadcast_type(payload: &Map<String, Value>) -> bool {
    payload.get("type").and_then(Value::as_str) == Some(event::BROADCAST)
}

/// Parses a text frame of either serializer into a [`Message`].
fn decode_text(vsn: Vsn, text: &str) -> Result<Message, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson {
        what: "frame",
        detail: e.to_string(),
    })?;
    match vsn {
        Vsn::V1 => {
            let Value::Object(mut obj) = value else {
                return Err(DecodeError::ExpectedObject);
            };
            let mut take = |field: &'static str| obj.remove(field);
            Ok(Message {
                topic: string_field("topic", take("topic"))?,
                event: string_field("event", take("event"))?,
                payload: Payload::Json(
                    take("payload").ok_or(DecodeError::MissingField("payload"))?,
                ),
                msg_ref: ref_field("ref", take("ref"))?,
                join_ref: ref_field("join_ref", take("join_ref"))?,
            })
        }
        Vsn::V2 => {
            let Value::Array(items) = value else {
                return Err(DecodeError::ExpectedArray);
            };
            let len = items.len();
            let Ok([join_ref, msg_ref, topic, event, payload]) = <[Value; 5]>::try_from(items)
            else {
                return Err(DecodeError::WrongArrayLength(len));
            };
            Ok(Message {
                join_ref: ref_field("join_ref", Some(join_ref))?,
                msg_ref: ref_field("ref", Some(msg_ref))?,
                topic: string_field("topic", Some(topic))?,
                event: string_field("event", Some(event))?,
                payload: Payload::Json(payload),
            })
        }
    }
}

fn string_field(field: &'static str, value: Option<Value>) -> Result<String, DecodeError> {
    match value {
        None | Some(Value::Null) => Err(DecodeError::MissingField(field)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DecodeError::InvalidField {
            field,
            expected: "a string",
        }),
    }
}

fn ref_field(field: &'static str, value: Option<Value>) -> Result<Option<String>, DecodeError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DecodeError::InvalidField {
            field,
            expected: "a string or null",
        }),
    }
}

/// Turns the JSON form of a broadcast push into [`Inbound::Broadcast`]. Keys
/// other than type/event/payload are the sender's options (realtime-js puts
/// `persist` there), the same thing kind 3 carries as metadata. A missing
/// inner payload becomes `{}`, as realtime-js does when it binary-encodes one.
fn fold_broadcast(m: Message) -> Inbound {
    match m {
        Message {
            join_ref,
            msg_ref,
            topic,
            event,
            payload: Payload::Json(Value::Object(mut body)),
        } if event == event::BROADCAST
            && is_broadcast_type(&body)
            && body.get("event").is_some_and(Value::is_string) =>
        {
            let user_event = take_string(&mut body, "event");
            body.remove("type");
            let payload = body
                .remove("payload")
                .unwrap_or_else(|| Value::Object(Map::new()));
            Inbound::Broadcast {
                join_ref,
                msg_ref,
                broadcast: UserBroadcast {
                    topic,
                    event: user_event,
                    meta: (!body.is_empty()).then_some(body),
                    payload: Payload::Json(payload),
                },
            }
        }
        other => Inbound::Push(other),
    }
}

/// Removes a string the caller has already checked is there.
fn take_string(map: &mut Map<String, Value>, key: &str) -> String {
    match map.remove(key) {
        Some(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn decode_client_binary(bytes: &[u8]) -> Result<Inbound, DecodeError> {
    let (&kind, _) = bytes.split_first().ok_or(DecodeError::EmptyFrame)?;
    match kind {
        KIND_PUSH => {
            let mut r = Reader::new(bytes, 4, 0)?;
            let join_ref = r.opt_string("join_ref")?;
            let msg_ref = r.opt_string("ref")?;
            let topic = r.string("topic")?;
            let event = r.string("event")?;
            Ok(Inbound::Push(Message {
                join_ref,
                msg_ref,
                topic,
                event,
                payload: Payload::Binary(r.rest().to_vec()),
            }))
        }
        KIND_USER_BROADCAST_PUSH => {
            let mut r = Reader::new(bytes, 5, 1)?;
            let encoding = r.encoding();
            let join_ref = r.opt_string("join_ref")?;
            let msg_ref = r.opt_string("ref")?;
            let topic = r.string("topic")?;
            let event = r.string("user_event")?;
            let meta = r.metadata()?;
            let payload = user_payload(encoding, r.rest())?;
            Ok(Inbound::Broadcast {
                join_ref,
                msg_ref,
                broadcast: UserBroadcast {
                    topic,
                    event,
                    meta,
                    payload,
                },
            })
        }
        KIND_REPLY | KIND_BROADCAST | KIND_USER_BROADCAST => Err(DecodeError::WrongDirection(kind)),
        _ => Err(DecodeError::UnknownKind(kind)),
    }
}

/// Bounds-checked walk over a binary frame: the kind byte, `n` length bytes
/// (plus, for kinds 3 and 4, the encoding byte right after them), then the
/// fields in the order of the length bytes, then the payload.
struct Reader<'a> {
    lens: &'a [u8],
    /// Header bytes after the lengths (the encoding byte, if any).
    tail: &'a [u8],
    body: &'a [u8],
    next_len: usize,
}

impl<'a> Reader<'a> {
    /// `n_lens` length bytes, then `n_extra` other header bytes.
    fn new(frame: &'a [u8], n_lens: usize, n_extra: usize) -> Result<Reader<'a>, DecodeError> {
        let kind = frame.first().copied().unwrap_or_default();
        let needed = 1 + n_lens + n_extra;
        let header = frame.get(1..needed).ok_or(DecodeError::FrameTooShort {
            kind,
            needed,
            got: frame.len(),
        })?;
        let (lens, tail) = header.split_at(n_lens);
        Ok(Reader {
            lens,
            tail,
            body: frame.get(needed..).unwrap_or_default(),
            next_len: 0,
        })
    }

    /// The encoding byte of kinds 3 and 4.
    fn encoding(&self) -> u8 {
        self.tail.first().copied().unwrap_or_default()
    }

    fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.lens.get(self.next_len).copied().unwrap_or_default());
        self.next_len += 1;
        if len > self.body.len() {
            return Err(DecodeError::LengthExceedsFrame(field));
        }
        let (head, rest) = self.body.split_at(len);
        self.body = rest;
        Ok(head)
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let bytes = self.bytes(field)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8(field))
    }

    /// Refs are empty when the sender had none.
    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        self.string(field).map(|s| (!s.is_empty()).then_some(s))
    }

    /// The metadata field: empty, or a JSON object.
    fn metadata(&mut self) -> Result<Option<Map<String, Value>>, DecodeError> {
        let bytes = self.bytes("metadata")?;
        if bytes.is_empty() {
            return Ok(None);
        }
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(meta)) => Ok(Some(meta)),
            Ok(_) => Err(DecodeError::InvalidField {
                field: "metadata",
                expected: "a JSON object",
            }),
            Err(e) => Err(DecodeError::InvalidJson {
                what: "metadata",
                detail: e.to_string(),
            }),
        }
    }

    fn rest(self) -> &'a [u8] {
        self.body
    }
}
