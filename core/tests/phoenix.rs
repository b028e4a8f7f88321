//! Tests of the Phoenix codec against bytes the real clients produce.
//!
//! Vectors marked "node" were printed by running the serializers of
//! `@supabase/realtime-js` 2.119.1 (`dist/main/lib/serializer.js`) and
//! `phoenix` 1.8.16 (`priv/static/phoenix.cjs.js`) under node 20; vectors
//! marked "node decodes" are bytes those serializers were fed, with the
//! message they decoded them into noted next to them.

use chorus_core::phoenix::{
    client, decode, encode, DecodeError, EncodeError, Frame, FrameRef, Inbound, Message, Outbound,
    Payload, UnknownVsn, UserBroadcast, Vsn,
};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn bytes(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

fn decode_bin(vsn: Vsn, b: &[u8]) -> Result<Inbound, DecodeError> {
    decode(vsn, FrameRef::Binary(b))
}

fn decode_text(vsn: Vsn, t: &str) -> Result<Inbound, DecodeError> {
    decode(vsn, FrameRef::Text(t))
}

fn meta(v: Value) -> Option<Map<String, Value>> {
    match v {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

// ---------------------------------------------------------------- vsn

#[test]
fn vsn_parses_the_two_known_versions_and_defaults_to_v1() {
    assert_eq!("1.0.0".parse(), Ok(Vsn::V1));
    assert_eq!("2.0.0".parse(), Ok(Vsn::V2));
    assert_eq!(Vsn::from_param(None), Ok(Vsn::V1));
    assert_eq!(Vsn::from_param(Some("2.0.0")), Ok(Vsn::V2));
    let err = "3.0.0".parse::<Vsn>().unwrap_err();
    assert_eq!(err, UnknownVsn("3.0.0".into()));
    assert!(err.to_string().contains("3.0.0"));
    assert_eq!(Vsn::V2.to_string(), "2.0.0");
}

// ------------------------------------------------- client -> server, real bytes

#[test]
fn kind3_json_broadcast_from_realtime_js_decodes_to_broadcast() {
    // node: channel.send({type:'broadcast', event:'msg', payload:{text:'hi'}}),
    // join_ref "1", ref "2", topic "realtime:room".
    let frame = [
        3, 1, 1, 13, 3, 0, 1, 49, 50, 114, 101, 97, 108, 116, 105, 109, 101, 58, 114, 111, 111,
        109, 109, 115, 103, 123, 34, 116, 101, 120, 116, 34, 58, 34, 104, 105, 34, 125,
    ];
    let expected = Inbound::Broadcast {
        join_ref: s("1"),
        msg_ref: s("2"),
        broadcast: UserBroadcast {
            topic: "realtime:room".into(),
            event: "msg".into(),
            meta: None,
            payload: Payload::Json(json!({"text": "hi"})),
        },
    };
    assert_eq!(decode_bin(Vsn::V2, &frame), Ok(expected.clone()));
    assert_eq!(expected.topic(), "realtime:room");
    assert_eq!(expected.event(), "broadcast");
    assert_eq!(expected.join_ref(), Some("1"));
    assert_eq!(expected.msg_ref(), Some("2"));
    assert_eq!(
        client::encode_push(Vsn::V2, &expected),
        Ok(Frame::Binary(frame.to_vec()))
    );
}

#[test]
fn kind3_binary_broadcast_from_realtime_js_keeps_payload_binary() {
    // node: payload: new Uint8Array([1,2,3,255]).buffer
    let frame = [
        3, 1, 1, 13, 3, 0, 0, 49, 50, 114, 101, 97, 108, 116, 105, 109, 101, 58, 114, 111, 111,
        109, 109, 115, 103, 1, 2, 3, 255,
    ];
    let expected = Inbound::Broadcast {
        join_ref: s("1"),
        msg_ref: s("2"),
        broadcast: UserBroadcast {
            topic: "realtime:room".into(),
            event: "msg".into(),
            meta: None,
            payload: Payload::Binary(vec![1, 2, 3, 255]),
        },
    };
    assert_eq!(decode_bin(Vsn::V2, &frame), Ok(expected.clone()));
    assert_eq!(
        client::encode_push(Vsn::V2, &expected),
        Ok(Frame::Binary(frame.to_vec()))
    );
}

#[test]
fn kind3_with_persist_carries_it_as_metadata_and_matches_the_json_form() {
    // node: send({type:'broadcast', event:'msg', payload:{a:1}, persist:true, other:5})
    // with join_ref "1", ref "3". realtime-js keeps only allowed keys ("persist").
    let frame = bytes(&[
        &[3, 1, 1, 13, 3, 16, 1],
        b"1",
        b"3",
        b"realtime:room",
        b"msg",
        br#"{"persist":true}"#,
        br#"{"a":1}"#,
    ]);
    let expected = Inbound::Broadcast {
        join_ref: s("1"),
        msg_ref: s("3"),
        broadcast: UserBroadcast {
            topic: "realtime:room".into(),
            event: "msg".into(),
            meta: meta(json!({"persist": true})),
            payload: Payload::Json(json!({"a": 1})),
        },
    };
    assert_eq!(decode_bin(Vsn::V2, &frame), Ok(expected.clone()));
    assert_eq!(
        client::encode_push(Vsn::V2, &expected),
        Ok(Frame::Binary(frame))
    );

    // The same send() under vsn 1.0.0 is JSON.stringify(msg).
    let v1 = r#"{"topic":"realtime:room","event":"broadcast","payload":{"type":"broadcast","event":"msg","payload":{"a":1},"persist":true},"ref":"3","join_ref":"1"}"#;
    assert_eq!(decode_text(Vsn::V1, v1), Ok(expected.clone()));
    // And as a vsn 2.0.0 JSON array (a client with a custom encoder).
    let v2 = r#"["1","3","realtime:room","broadcast",{"type":"broadcast","event":"msg","payload":{"a":1},"persist":true}]"#;
    assert_eq!(decode_text(Vsn::V2, v2), Ok(expected));
}

#[test]
fn kind3_without_refs_and_with_utf8_fields() {
    // node: topic 'realtime:café', event 'é', no payload, null refs.
    // realtime-js measures and writes UTF-8 bytes and sends `{}` for a
    // missing payload.
    let frame = [
        3, 0, 0, 14, 2, 0, 1, 114, 101, 97, 108, 116, 105, 109, 101, 58, 99, 97, 102, 195, 169,
        195, 169, 123, 125,
    ];
    let expected = Inbound::Broadcast {
        join_ref: None,
        msg_ref: None,
        broadcast: UserBroadcast {
            topic: "realtime:café".into(),
            event: "é".into(),
            meta: None,
            payload: Payload::Json(json!({})),
        },
    };
    assert_eq!(decode_bin(Vsn::V2, &frame), Ok(expected.clone()));
    // JSON form without an inner payload folds to the same `{}`.
    let v2 = r#"[null,null,"realtime:café","broadcast",{"type":"broadcast","event":"é"}]"#;
    assert_eq!(decode_text(Vsn::V2, v2), Ok(expected));
}

#[test]
fn text_pushes_from_realtime_js_decode_to_push() {
    // node: heartbeat and join as realtime-js encodes them under 2.0.0.
    let heartbeat = r#"[null,"4","phoenix","heartbeat",{}]"#;
    assert_eq!(
        decode_text(Vsn::V2, heartbeat),
        Ok(Inbound::Push(Message {
            join_ref: None,
            msg_ref: s("4"),
            topic: "phoenix".into(),
            event: "heartbeat".into(),
            payload: Payload::Json(json!({})),
        }))
    );
    let join = r#"["1","1","realtime:room","phx_join",{"config":{"broadcast":{"ack":false,"self":false}}}]"#;
    let Ok(Inbound::Push(m)) = decode_text(Vsn::V2, join) else {
        panic!("join must decode as a push");
    };
    assert_eq!(m.event, "phx_join");
    assert_eq!(m.join_ref.as_deref(), Some("1"));
    assert_eq!(
        m.payload,
        Payload::Json(json!({"config":{"broadcast":{"ack":false,"self":false}}}))
    );
    assert_eq!(
        client::encode_push(Vsn::V2, &Inbound::Push(m)),
        Ok(Frame::Text(join.into()))
    );

    // 1.0.0 heartbeat as JSON.stringify({topic, event, payload, ref}).
    let v1 = r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"7"}"#;
    let Ok(Inbound::Push(m)) = decode_text(Vsn::V1, v1) else {
        panic!("heartbeat must decode as a push");
    };
    assert_eq!((m.msg_ref.as_deref(), m.join_ref), (Some("7"), None));
}

#[test]
fn broadcast_event_without_broadcast_shape_stays_a_push() {
    let t = r#"["1","2","t","broadcast",{"type":"presence","event":"track"}]"#;
    assert!(matches!(decode_text(Vsn::V2, t), Ok(Inbound::Push(_))));
    let t = r#"["1","2","t","broadcast",{"type":"broadcast","event":5}]"#;
    assert!(matches!(decode_text(Vsn::V2, t), Ok(Inbound::Push(_))));
}

#[test]
fn kind0_push_from_phoenix_js_decodes_with_binary_payload() {
    // node (phoenix 1.8.16): push on 'room:a' event 'bin', refs "1"/"2", payload [9, 8].
    let frame = [
        0, 1, 1, 6, 3, 49, 50, 114, 111, 111, 109, 58, 97, 98, 105, 110, 9, 8,
    ];
    let expected = Inbound::Push(Message {
        join_ref: s("1"),
        msg_ref: s("2"),
        topic: "room:a".into(),
        event: "bin".into(),
        payload: Payload::Binary(vec![9, 8]),
    });
    assert_eq!(decode_bin(Vsn::V2, &frame), Ok(expected.clone()));
    assert_eq!(
        client::encode_push(Vsn::V2, &expected),
        Ok(Frame::Binary(frame.to_vec()))
    );
}

// ------------------------------------------------- server -> client, real bytes

#[test]
fn user_broadcast_encodes_as_kind4_that_realtime_js_decodes() {
    // node decodes these bytes to {join_ref:null, ref:null, topic:'realtime:room',
    // event:'broadcast', payload:{type:'broadcast', event:'msg', payload:{text:'hi'}}}.
    let expected = bytes(&[
        &[4, 13, 3, 0, 1],
        b"realtime:room",
        b"msg",
        br#"{"text":"hi"}"#,
    ]);
    let msg = Outbound::user_broadcast("realtime:room", "msg", json!({"text": "hi"}));
    assert_eq!(encode(Vsn::V2, &msg), Ok(Frame::Binary(expected)));

    // node decodes these to payload {type:'broadcast', event:'msg',
    // payload: ArrayBuffer[1,2,3,255], meta:{id:'abc1'}}.
    let expected = bytes(&[
        &[4, 13, 3, 13, 0],
        b"realtime:room",
        b"msg",
        br#"{"id":"abc1"}"#,
        &[1, 2, 3, 255],
    ]);
    let msg = Outbound::UserBroadcast(UserBroadcast {
        topic: "realtime:room".into(),
        event: "msg".into(),
        meta: meta(json!({"id": "abc1"})),
        payload: Payload::Binary(vec![1, 2, 3, 255]),
    });
    assert_eq!(encode(Vsn::V2, &msg), Ok(Frame::Binary(expected)));
}

#[test]
fn user_broadcast_under_v1_is_the_json_form_realtime_js_delivers() {
    let msg = Outbound::user_broadcast("realtime:room", "msg", json!({"text": "hi"}));
    assert_eq!(
        encode(Vsn::V1, &msg),
        Ok(Frame::Text(
            r#"{"topic":"realtime:room","event":"broadcast","payload":{"type":"broadcast","event":"msg","payload":{"text":"hi"}},"ref":null}"#.into()
        ))
    );
}

#[test]
fn replies_are_text_in_both_versions() {
    let reply = Outbound::reply(
        s("1"),
        s("2"),
        "realtime:room",
        "ok",
        json!({"postgres_changes": []}),
    );
    assert_eq!(
        encode(Vsn::V2, &reply),
        Ok(Frame::Text(
            r#"["1","2","realtime:room","phx_reply",{"status":"ok","response":{"postgres_changes":[]}}]"#.into()
        ))
    );
    assert_eq!(
        encode(Vsn::V1, &reply),
        Ok(Frame::Text(
            r#"{"topic":"realtime:room","event":"phx_reply","payload":{"status":"ok","response":{"postgres_changes":[]}},"ref":"2","join_ref":"1"}"#.into()
        ))
    );
    // A heartbeat reply has no join_ref.
    let hb = Outbound::reply(None, s("4"), "phoenix", "ok", json!({}));
    assert_eq!(
        encode(Vsn::V1, &hb),
        Ok(Frame::Text(
            r#"{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"4"}"#.into()
        ))
    );
}

#[test]
fn binary_reply_is_kind1_as_phoenix_js_decodes_it() {
    // node (phoenix): decodes to event 'phx_reply', join_ref '1', ref '2',
    // topic 't', payload {status:'ok', response: ArrayBuffer[9]}.
    let reply = Outbound::reply(s("1"), s("2"), "t", "ok", vec![9u8]);
    let expected = bytes(&[&[1, 1, 1, 1, 2], b"1", b"2", b"t", b"ok", &[9]]);
    assert_eq!(encode(Vsn::V2, &reply), Ok(Frame::Binary(expected)));
}

#[test]
fn binary_messages_are_kind0_with_join_ref_and_kind2_without() {
    // node (phoenix): [0,1,1,1,'1','t','e',7,8] decodes to join_ref '1', ref null.
    let push = Outbound::push(s("1"), "t", "e", vec![7u8, 8]);
    let expected = bytes(&[&[0, 1, 1, 1], b"1", b"t", b"e", &[7, 8]]);
    assert_eq!(encode(Vsn::V2, &push), Ok(Frame::Binary(expected)));
    // node (phoenix): [2,1,1,'t','e',5] decodes to a ref-less message.
    let bc = Outbound::broadcast("t", "e", vec![5u8]);
    assert_eq!(
        encode(Vsn::V2, &bc),
        Ok(Frame::Binary(bytes(&[&[2, 1, 1], b"t", b"e", &[5]])))
    );
}

#[test]
fn plain_server_messages_are_text() {
    assert_eq!(
        encode(
            Vsn::V2,
            &Outbound::broadcast("room:a", "new_msg", json!({"body": "hi"}))
        ),
        Ok(Frame::Text(
            r#"[null,null,"room:a","new_msg",{"body":"hi"}]"#.into()
        ))
    );
    // phx_close / phx_error carry ref = join_ref.
    assert_eq!(
        encode(Vsn::V2, &Outbound::close(s("1"), "realtime:room")),
        Ok(Frame::Text(
            r#"["1","1","realtime:room","phx_close",{}]"#.into()
        ))
    );
    assert_eq!(
        encode(Vsn::V1, &Outbound::channel_error(s("3"), "realtime:room")),
        Ok(Frame::Text(
            r#"{"topic":"realtime:room","event":"phx_error","payload":{},"ref":"3","join_ref":"3"}"#.into()
        ))
    );
    assert_eq!(
        encode(
            Vsn::V2,
            &Outbound::push(s("1"), "realtime:room", "presence_state", json!({}))
        ),
        Ok(Frame::Text(
            r#"["1",null,"realtime:room","presence_state",{}]"#.into()
        ))
    );
}

#[test]
fn encode_refuses_what_the_wire_cannot_carry() {
    let long = "x".repeat(256);
    assert_eq!(
        encode(
            Vsn::V2,
            &Outbound::user_broadcast(long.clone(), "e", json!({}))
        ),
        Err(EncodeError::FieldTooLong {
            field: "topic",
            len: 256
        })
    );
    // 255 bytes is still fine.
    assert!(encode(
        Vsn::V2,
        &Outbound::user_broadcast("x".repeat(255), "e", json!({}))
    )
    .is_ok());
    assert_eq!(
        encode(Vsn::V1, &Outbound::user_broadcast("t", "e", vec![1u8])),
        Err(EncodeError::BinaryInV1)
    );
    assert_eq!(
        encode(
            Vsn::V1,
            &Outbound::reply(None, s("1"), "t", "ok", vec![1u8])
        ),
        Err(EncodeError::BinaryInV1)
    );
    assert_eq!(
        encode(Vsn::V1, &Outbound::broadcast("t", "e", vec![1u8])),
        Err(EncodeError::BinaryInV1)
    );
    assert_eq!(
        EncodeError::FieldTooLong {
            field: "topic",
            len: 256
        }
        .to_string(),
        "topic is 256 bytes, binary frames allow at most 255"
    );
}

// ------------------------------------------------------------ decode errors

#[test]
fn malformed_text_frames_are_named() {
    let cases: &[(Vsn, &str, DecodeError, &str)] = &[
        (
            Vsn::V2,
            "[1,2]",
            DecodeError::WrongArrayLength(2),
            "array of 5 elements, got 2",
        ),
        (
            Vsn::V2,
            r#"{"topic":"t"}"#,
            DecodeError::ExpectedArray,
            "must be a JSON array",
        ),
        (
            Vsn::V1,
            "[]",
            DecodeError::ExpectedObject,
            "must be a JSON object",
        ),
        (
            Vsn::V1,
            r#"{"event":"e","payload":{}}"#,
            DecodeError::MissingField("topic"),
            "missing topic",
        ),
        (
            Vsn::V1,
            r#"{"topic":"t","event":"e"}"#,
            DecodeError::MissingField("payload"),
            "missing payload",
        ),
        (
            Vsn::V2,
            r#"[null,null,null,"e",{}]"#,
            DecodeError::MissingField("topic"),
            "missing topic",
        ),
        (
            Vsn::V2,
            r#"[null,null,5,"e",{}]"#,
            DecodeError::InvalidField {
                field: "topic",
                expected: "a string",
            },
            "topic must be a string",
        ),
        (
            Vsn::V2,
            r#"[1,null,"t","e",{}]"#,
            DecodeError::InvalidField {
                field: "join_ref",
                expected: "a string or null",
            },
            "join_ref must be a string or null",
        ),
    ];
    for (vsn, text, err, msg) in cases {
        let got = decode_text(*vsn, text);
        assert_eq!(got.as_ref(), Err(err), "{text}");
        assert!(err.to_string().contains(msg), "{err} lacks {msg}");
    }
    let Err(err) = decode_text(Vsn::V2, "not json") else {
        panic!("must fail");
    };
    assert!(matches!(
        err,
        DecodeError::InvalidJson { what: "frame", .. }
    ));
    assert!(err.to_string().starts_with("invalid JSON in frame"));
}

#[test]
fn malformed_binary_frames_are_named() {
    let cases: Vec<(Vsn, Vec<u8>, DecodeError, &str)> = vec![
        (
            Vsn::V1,
            vec![0, 0, 0, 0, 0],
            DecodeError::BinaryInV1,
            "need vsn 2.0.0",
        ),
        (
            Vsn::V2,
            vec![],
            DecodeError::EmptyFrame,
            "empty binary frame",
        ),
        (
            Vsn::V2,
            vec![7],
            DecodeError::UnknownKind(7),
            "unknown binary kind 7",
        ),
        (
            Vsn::V2,
            vec![1, 0, 0, 0, 0],
            DecodeError::WrongDirection(1),
            "binary kind 1",
        ),
        (
            Vsn::V2,
            vec![4, 0, 0, 0, 1],
            DecodeError::WrongDirection(4),
            "binary kind 4",
        ),
        (
            Vsn::V2,
            vec![0, 1, 1],
            DecodeError::FrameTooShort {
                kind: 0,
                needed: 5,
                got: 3,
            },
            "frame too short",
        ),
        (
            Vsn::V2,
            vec![3, 0, 0, 0, 0, 0],
            DecodeError::FrameTooShort {
                kind: 3,
                needed: 7,
                got: 6,
            },
            "needs a 7-byte header",
        ),
        (
            Vsn::V2,
            bytes(&[&[0, 5, 0, 0, 0], b"ab"]),
            DecodeError::LengthExceedsFrame("join_ref"),
            "length field of join_ref exceeds frame",
        ),
        (
            Vsn::V2,
            bytes(&[&[0, 0, 0, 3, 0], b"ab"]),
            DecodeError::LengthExceedsFrame("topic"),
            "exceeds frame",
        ),
        (
            Vsn::V2,
            bytes(&[&[0, 0, 0, 1, 1], &[0xff], b"e"]),
            DecodeError::InvalidUtf8("topic"),
            "topic is not valid UTF-8",
        ),
        (
            Vsn::V2,
            bytes(&[&[3, 0, 0, 1, 1, 0, 2], b"t", b"e", b"{}"]),
            DecodeError::UnknownEncoding(2),
            "unknown payload encoding 2",
        ),
        (
            Vsn::V2,
            bytes(&[&[3, 0, 0, 1, 1, 2, 1], b"t", b"e", b"[]", b"{}"]),
            DecodeError::InvalidField {
                field: "metadata",
                expected: "a JSON object",
            },
            "metadata must be a JSON object",
        ),
    ];
    for (vsn, frame, err, msg) in cases {
        assert_eq!(decode_bin(vsn, &frame), Err(err.clone()), "{frame:?}");
        assert!(err.to_string().contains(msg), "{err} lacks {msg}");
    }
    let bad_payload = bytes(&[&[3, 0, 0, 1, 1, 0, 1], b"t", b"e", b"{oops"]);
    assert!(matches!(
        decode_bin(Vsn::V2, &bad_payload),
        Err(DecodeError::InvalidJson {
            what: "payload",
            ..
        })
    ));
}

#[test]
fn client_decoder_rejects_client_kinds() {
    assert_eq!(
        client::decode_server(Vsn::V2, FrameRef::Binary(&[3, 0, 0, 0, 0, 0, 1])),
        Err(DecodeError::WrongDirection(3))
    );
}

// ------------------------------------------------------------- properties

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // serde_json's default float parser may be 1 ulp off for extreme
        // exponents (its `float_roundtrip` feature fixes that); keep to
        // floats it reads back exactly so the round trips test the codec.
        any::<f64>()
            .prop_filter("JSON has no NaN/inf", |f| f.is_finite())
            .prop_filter("serde_json reads it back exactly", |f| {
                serde_json::from_str::<f64>(&Value::from(*f).to_string()).ok() == Some(*f)
            })
            .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn payload(binary: bool) -> BoxedStrategy<Payload> {
    if binary {
        prop_oneof![
            json_value().prop_map(Payload::Json),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Binary),
        ]
        .boxed()
    } else {
        json_value().prop_map(Payload::Json).boxed()
    }
}

/// Refs are never empty: binary frames spell a missing ref as empty.
fn a_ref() -> impl Strategy<Value = Option<String>> {
    prop::option::of("[0-9a-z]{1,8}")
}

/// Any UTF-8 that fits a length byte (30 chars of at most 4 bytes).
fn name() -> impl Strategy<Value = String> {
    "\\PC{0,30}"
}

/// An event other than the two the decoders give a meaning to.
fn plain_event() -> impl Strategy<Value = String> {
    name().prop_filter("reserved", |e| e != "broadcast" && e != "phx_reply")
}

/// Non-empty metadata whose keys cannot collide with the JSON form's own.
fn push_meta() -> impl Strategy<Value = Option<Map<String, Value>>> {
    prop::option::of(
        prop::collection::btree_map(
            "[a-z]{1,8}".prop_filter("reserved", |k| {
                !["type", "event", "payload"].contains(&k.as_str())
            }),
            json_value(),
            1..3,
        )
        .prop_map(|m| m.into_iter().collect()),
    )
    // Binary frames carry the metadata's length in one byte.
    .prop_filter(
        "metadata fits its length byte",
        |m: &Option<Map<String, Value>>| {
            m.as_ref()
                .map_or(0, |m| Value::Object(m.clone()).to_string().len())
                <= 255
        },
    )
}

fn inbound(vsn: Vsn) -> impl Strategy<Value = Inbound> {
    let binary = vsn == Vsn::V2;
    prop_oneof![
        (a_ref(), a_ref(), name(), plain_event(), payload(binary)).prop_map(
            |(join_ref, msg_ref, topic, event, payload)| Inbound::Push(Message {
                join_ref,
                msg_ref,
                topic,
                event,
                payload,
            })
        ),
        (
            a_ref(),
            a_ref(),
            name(),
            name(),
            push_meta(),
            payload(binary)
        )
            .prop_map(|(join_ref, msg_ref, topic, event, meta, payload)| {
                Inbound::Broadcast {
                    join_ref,
                    msg_ref,
                    broadcast: UserBroadcast {
                        topic,
                        event,
                        meta,
                        payload,
                    },
                }
            }),
    ]
}

fn outbound(vsn: Vsn) -> impl Strategy<Value = Outbound> {
    let binary = vsn == Vsn::V2;
    let server_meta = prop::option::of(
        prop::collection::btree_map("\\PC{0,6}", json_value(), 0..3)
            .prop_map(|m| m.into_iter().collect::<Map<String, Value>>()),
    )
    .prop_filter("metadata fits its length byte", |m| {
        m.as_ref()
            .map_or(0, |m| Value::Object(m.clone()).to_string().len())
            <= 255
    });
    prop_oneof![
        (a_ref(), a_ref(), name(), name(), payload(binary)).prop_map(
            |(join_ref, msg_ref, topic, status, response)| Outbound::Reply {
                join_ref,
                msg_ref,
                topic,
                status,
                response,
            }
        ),
        (a_ref(), a_ref(), name(), plain_event(), payload(binary)).prop_map(
            |(join_ref, msg_ref, topic, event, payload)| {
                // Binary server messages have no room for a ref.
                let msg_ref = match payload {
                    Payload::Json(_) => msg_ref,
                    Payload::Binary(_) => None,
                };
                Outbound::Message(Message {
                    join_ref,
                    msg_ref,
                    topic,
                    event,
                    payload,
                })
            }
        ),
        (name(), name(), server_meta, payload(binary)).prop_map(|(topic, event, meta, payload)| {
            Outbound::UserBroadcast(UserBroadcast {
                topic,
                event,
                meta,
                payload,
            })
        }),
    ]
}

fn as_ref(frame: &Frame) -> FrameRef<'_> {
    frame.into()
}

proptest! {
    #[test]
    fn client_pushes_round_trip_v1(msg in inbound(Vsn::V1)) {
        let frame = client::encode_push(Vsn::V1, &msg).unwrap();
        prop_assert!(matches!(frame, Frame::Text(_)));
        prop_assert_eq!(decode(Vsn::V1, as_ref(&frame)), Ok(msg));
    }

    #[test]
    fn client_pushes_round_trip_v2(msg in inbound(Vsn::V2)) {
        let frame = client::encode_push(Vsn::V2, &msg).unwrap();
        prop_assert_eq!(decode(Vsn::V2, as_ref(&frame)), Ok(msg));
    }

    #[test]
    fn server_messages_round_trip_v1(msg in outbound(Vsn::V1)) {
        let frame = encode(Vsn::V1, &msg).unwrap();
        prop_assert_eq!(client::decode_server(Vsn::V1, as_ref(&frame)), Ok(msg));
    }

    #[test]
    fn server_messages_round_trip_v2(msg in outbound(Vsn::V2)) {
        let frame = encode(Vsn::V2, &msg).unwrap();
        // Only binary payloads leave the text path; realtime-js reads kind 4.
        let binary_payload = matches!(
            &msg,
            Outbound::Reply { response: Payload::Binary(_), .. }
                | Outbound::Message(Message { payload: Payload::Binary(_), .. })
        );
        let is_user_broadcast = matches!(msg, Outbound::UserBroadcast(_));
        prop_assert_eq!(matches!(frame, Frame::Binary(_)), binary_payload || is_user_broadcast);
        prop_assert_eq!(client::decode_server(Vsn::V2, as_ref(&frame)), Ok(msg));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(frame in prop::collection::vec(any::<u8>(), 0..300)) {
        for vsn in [Vsn::V1, Vsn::V2] {
            let _ = decode(vsn, FrameRef::Binary(&frame));
            let _ = client::decode_server(vsn, FrameRef::Binary(&frame));
        }
    }

    /// Frames with a known kind and small lengths reach the field parsers.
    #[test]
    fn decode_never_panics_on_plausible_binary(
        kind in 0u8..6,
        lens in prop::collection::vec(0u8..12, 0..7),
        tail in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let frame = bytes(&[&[kind], &lens, &tail]);
        let _ = decode(Vsn::V2, FrameRef::Binary(&frame));
        let _ = client::decode_server(Vsn::V2, FrameRef::Binary(&frame));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_text(text in "\\PC{0,200}") {
        for vsn in [Vsn::V1, Vsn::V2] {
            let _ = decode(vsn, FrameRef::Text(&text));
            let _ = client::decode_server(vsn, FrameRef::Text(&text));
        }
    }

    /// Well-formed JSON of the wrong shape reaches the field checks.
    #[test]
    fn decode_never_panics_on_arbitrary_json(value in json_value(), items in prop::collection::vec(json_value(), 0..7)) {
        for text in [value.to_string(), Value::Array(items).to_string()] {
            for vsn in [Vsn::V1, Vsn::V2] {
                let _ = decode(vsn, FrameRef::Text(&text));
                let _ = client::decode_server(vsn, FrameRef::Text(&text));
            }
        }
    }
}
