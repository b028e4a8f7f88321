use chorus_core::http::parse_request;
use chorus_core::ws::{
    accept_upgrade, encode_binary, encode_client_fragment, encode_client_frame, encode_close,
    encode_ping, encode_pong, encode_text, handshake_accept_key, FrameDecoder, HandshakeError,
    Opcode, WsError, WsEvent, MAX_HEADER_LEN,
};
use proptest::prelude::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn decode_all(dec: &mut FrameDecoder) -> Result<Vec<WsEvent>, WsError> {
    let mut out = Vec::new();
    while let Some(ev) = dec.next()? {
        out.push(ev);
    }
    Ok(out)
}

fn client(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client_frame(&mut out, opcode, payload, MASK);
    out
}

fn fragment(fin: bool, opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_client_fragment(&mut out, fin, opcode, payload, MASK);
    out
}

fn server_decode(bytes: &[u8]) -> Result<Vec<WsEvent>, WsError> {
    let mut dec = FrameDecoder::new(1 << 16);
    dec.push(bytes);
    decode_all(&mut dec)
}

// ---- handshake ----

#[test]
fn accept_key_matches_rfc_6455_example() {
    assert_eq!(
        handshake_accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

fn upgrade_request(lines: &[&str]) -> chorus_core::http::Request {
    let mut head = String::from("GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n");
    for l in lines {
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    parse_request(head.as_bytes(), 8192).unwrap().unwrap().0
}

const GOOD: [&str; 4] = [
    "Upgrade: websocket",
    "Connection: keep-alive, Upgrade",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
];

#[test]
fn valid_upgrade_gets_101_with_accept_key() {
    let resp = accept_upgrade(&upgrade_request(&GOOD), None).unwrap();
    assert_eq!(
        String::from_utf8(resp).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
}

#[test]
fn upgrade_header_tokens_are_case_insensitive() {
    let req = upgrade_request(&[
        "upgrade: WebSocket",
        "connection: UPGRADE",
        "sec-websocket-version: 13",
        "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
    ]);
    assert!(accept_upgrade(&req, None).is_ok());
}

#[test]
fn each_missing_piece_is_named() {
    let without = |i: usize| {
        let lines: Vec<&str> = GOOD
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, l)| *l)
            .collect();
        accept_upgrade(&upgrade_request(&lines), None).unwrap_err()
    };
    assert_eq!(without(0), HandshakeError::MissingUpgradeHeader);
    assert_eq!(without(1), HandshakeError::MissingConnectionUpgrade);
    assert_eq!(without(2), HandshakeError::UnsupportedVersion(None));
    assert_eq!(without(3), HandshakeError::MissingKey);
    assert!(without(0).to_string().contains("Upgrade: websocket"));
    assert!(without(3).to_string().contains("Sec-WebSocket-Key"));
}

#[test]
fn wrong_version_gets_426_advertising_13() {
    let mut lines = GOOD.to_vec();
    lines[2] = "Sec-WebSocket-Version: 8";
    let err = accept_upgrade(&upgrade_request(&lines), None).unwrap_err();
    assert_eq!(err, HandshakeError::UnsupportedVersion(Some("8".into())));
    let resp = err.to_response();
    assert_eq!(resp.status, 426);
    assert!(resp
        .headers
        .contains(&("Sec-WebSocket-Version".to_string(), "13".to_string())));
}

#[test]
fn bad_key_and_wrong_method_are_rejected() {
    let mut lines = GOOD.to_vec();
    lines[3] = "Sec-WebSocket-Key: c2hvcnQ=";
    assert_eq!(
        accept_upgrade(&upgrade_request(&lines), None).unwrap_err(),
        HandshakeError::InvalidKey
    );
    let mut req = upgrade_request(&GOOD);
    req.method = "POST".into();
    let err = accept_upgrade(&req, None).unwrap_err();
    assert_eq!(err, HandshakeError::NotGet("POST".into()));
    assert_eq!(err.to_response().status, 405);
}

// ---- decoding ----

#[test]
fn decodes_rfc_masked_hello() {
    let bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(client(Opcode::Text, b"Hello"), bytes);
    assert_eq!(
        server_decode(&bytes).unwrap(),
        vec![WsEvent::Text("Hello".into())]
    );
}

#[test]
fn byte_by_byte_feeding_yields_the_same_events() {
    let mut stream = client(Opcode::Text, "héllo".as_bytes());
    stream.extend(client(Opcode::Binary, &[0u8; 300]));
    stream.extend(client(Opcode::Ping, b"p"));
    let mut dec = FrameDecoder::new(1024);
    let mut events = Vec::new();
    for b in &stream {
        dec.push(std::slice::from_ref(b));
        events.extend(decode_all(&mut dec).unwrap());
    }
    assert_eq!(
        events,
        vec![
            WsEvent::Text("héllo".into()),
            WsEvent::Binary(vec![0; 300]),
            WsEvent::Ping(b"p".to_vec()),
        ]
    );
    assert_eq!(dec.buffered(), 0);
}

#[test]
fn sixty_four_bit_length_frames_decode() {
    let payload = vec![7u8; 70_000];
    let bytes = client(Opcode::Binary, &payload);
    assert_eq!(bytes[1], 0x80 | 127);
    let mut dec = FrameDecoder::new(100_000);
    dec.push(&bytes);
    assert_eq!(dec.next().unwrap(), Some(WsEvent::Binary(payload)));
}

#[test]
fn unmasked_client_frame_is_a_protocol_error() {
    let mut out = Vec::new();
    encode_text(&mut out, "hi");
    let err = server_decode(&out).unwrap_err();
    assert_eq!(err, WsError::Protocol("client frames must be masked"));
    assert_eq!(err.close_code(), 1002);
    assert!(err.to_string().contains("masked"));
}

#[test]
fn fragments_reassemble_with_interleaved_control_frames() {
    let mut s = fragment(false, Opcode::Text, b"Hel");
    s.extend(client(Opcode::Ping, b"x"));
    s.extend(fragment(false, Opcode::Continuation, b"lo, "));
    s.extend(client(Opcode::Pong, b""));
    s.extend(fragment(true, Opcode::Continuation, b"world"));
    assert_eq!(
        server_decode(&s).unwrap(),
        vec![
            WsEvent::Ping(b"x".to_vec()),
            WsEvent::Pong,
            WsEvent::Text("Hello, world".into()),
        ]
    );
}

#[test]
fn utf8_code_point_split_across_fragments_is_fine() {
    let e = "é".as_bytes();
    let mut s = fragment(false, Opcode::Text, &e[..1]);
    s.extend(fragment(true, Opcode::Continuation, &e[1..]));
    assert_eq!(server_decode(&s).unwrap(), vec![WsEvent::Text("é".into())]);
}

#[test]
fn invalid_utf8_fails_at_the_fragment_that_carries_it() {
    let mut dec = FrameDecoder::new(1024);
    dec.push(&fragment(false, Opcode::Text, b"ok \xff more"));
    let err = dec.next().unwrap_err();
    assert_eq!(err, WsError::InvalidUtf8);
    assert_eq!(err.close_code(), 1007);
    assert_eq!(
        server_decode(&client(Opcode::Text, b"\xc3\x28")).unwrap_err(),
        WsError::InvalidUtf8
    );
}

#[test]
fn continuation_without_a_message_is_rejected() {
    let err = server_decode(&fragment(true, Opcode::Continuation, b"x")).unwrap_err();
    assert_eq!(err.close_code(), 1002);
}

#[test]
fn new_message_inside_a_fragmented_one_is_rejected() {
    let mut s = fragment(false, Opcode::Binary, b"a");
    s.extend(client(Opcode::Text, b"b"));
    assert_eq!(server_decode(&s).unwrap_err().close_code(), 1002);
}

#[test]
fn control_frame_rules_are_enforced() {
    assert_eq!(
        server_decode(&client(Opcode::Ping, &[0; 126])).unwrap_err(),
        WsError::Protocol("control frame payload longer than 125 bytes")
    );
    assert_eq!(
        server_decode(&fragment(false, Opcode::Ping, b"")).unwrap_err(),
        WsError::Protocol("control frames must not be fragmented")
    );
    // A 125-byte ping is fine even when the data limit is smaller.
    let mut dec = FrameDecoder::new(10);
    dec.push(&client(Opcode::Ping, &[1; 125]));
    assert_eq!(dec.next().unwrap(), Some(WsEvent::Ping(vec![1; 125])));
}

#[test]
fn reserved_bits_and_opcodes_are_rejected() {
    let mut rsv = client(Opcode::Text, b"x");
    rsv[0] |= 0x40;
    assert_eq!(
        server_decode(&rsv).unwrap_err(),
        WsError::Protocol("reserved bits set without a negotiated extension")
    );
    let mut op = client(Opcode::Text, b"x");
    op[0] = 0x80 | 0x3;
    assert_eq!(
        server_decode(&op).unwrap_err(),
        WsError::Protocol("reserved opcode")
    );
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    let bytes = client(Opcode::Binary, &[0; 2000]);
    let mut dec = FrameDecoder::new(1000);
    dec.push(&bytes[..8]); // header only: 2 + 2 length + 4 mask
    let err = dec.next().unwrap_err();
    assert_eq!(err, WsError::TooLarge { limit: 1000 });
    assert_eq!(err.close_code(), 1009);
    assert!(err.to_string().contains("1000-byte"));
    // Errors are sticky and the buffer is released.
    dec.push(&bytes[8..]);
    assert_eq!(dec.next().unwrap_err(), WsError::TooLarge { limit: 1000 });
    assert_eq!(dec.buffered(), 0);
}

#[test]
fn oversized_reassembled_message_is_refused() {
    let mut s = fragment(false, Opcode::Binary, &[0; 600]);
    s.extend(fragment(true, Opcode::Continuation, &[0; 600]));
    let mut dec = FrameDecoder::new(1000);
    dec.push(&s);
    assert_eq!(dec.next().unwrap_err(), WsError::TooLarge { limit: 1000 });
}

#[test]
fn close_payloads_are_validated() {
    assert_eq!(
        server_decode(&client(Opcode::Close, b"")).unwrap(),
        vec![WsEvent::Close(None)]
    );
    assert_eq!(
        server_decode(&client(Opcode::Close, b"\x03\xe8bye")).unwrap(),
        vec![WsEvent::Close(Some((1000, "bye".into())))]
    );
    assert_eq!(
        server_decode(&client(Opcode::Close, b"\x03"))
            .unwrap_err()
            .close_code(),
        1002
    );
    // 1005 is reserved for "no status received" and must not be sent.
    assert_eq!(
        server_decode(&client(Opcode::Close, b"\x03\xed")).unwrap_err(),
        WsError::Protocol("invalid close code")
    );
    assert_eq!(
        server_decode(&client(Opcode::Close, b"\x03\xe8\xff")).unwrap_err(),
        WsError::InvalidUtf8
    );
}

// ---- encoding ----

#[test]
fn server_frames_have_exact_unmasked_bytes() {
    let mut out = Vec::new();
    encode_text(&mut out, "Hi");
    encode_pong(&mut out, b"p");
    encode_close(&mut out, 1000, "ok");
    assert_eq!(
        out,
        [0x81, 2, b'H', b'i', 0x8A, 1, b'p', 0x88, 4, 0x03, 0xE8, b'o', b'k']
    );
    let mut big = Vec::new();
    encode_binary(&mut big, &[0; 300]);
    assert_eq!(&big[..4], &[0x82, 126, 0x01, 0x2C]);
    assert_eq!(big.len(), 304);
}

#[test]
fn client_decoder_reads_batched_server_frames_and_rejects_masked_ones() {
    let mut out = Vec::new();
    encode_text(&mut out, "a");
    encode_binary(&mut out, b"b");
    encode_ping(&mut out, b"c");
    encode_close(&mut out, 4001, "bye");
    let mut dec = FrameDecoder::for_client(1024);
    dec.push(&out);
    assert_eq!(
        decode_all(&mut dec).unwrap(),
        vec![
            WsEvent::Text("a".into()),
            WsEvent::Binary(b"b".to_vec()),
            WsEvent::Ping(b"c".to_vec()),
            WsEvent::Close(Some((4001, "bye".into()))),
        ]
    );
    let mut dec = FrameDecoder::for_client(1024);
    dec.push(&client(Opcode::Text, b"x"));
    assert_eq!(
        dec.next().unwrap_err(),
        WsError::Protocol("server frames must not be masked")
    );
}

#[test]
fn long_close_reason_is_cut_at_a_char_boundary() {
    let reason = "é".repeat(100); // 200 bytes
    let mut out = Vec::new();
    encode_close(&mut out, 1008, &reason);
    let mut dec = FrameDecoder::for_client(1024);
    dec.push(&out);
    match dec.next().unwrap() {
        Some(WsEvent::Close(Some((1008, r)))) => assert_eq!(r, "é".repeat(61)),
        other => panic!("unexpected {other:?}"),
    }
    let mut ping = Vec::new();
    encode_ping(&mut ping, &[9; 200]);
    assert_eq!(ping[1], 125);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..40)
    ) {
        let limit = 256;
        let mut dec = FrameDecoder::new(limit);
        for c in &chunks {
            dec.push(c);
            while let Ok(Some(_)) = dec.next() {}
            prop_assert!(dec.buffered() <= limit + MAX_HEADER_LEN + c.len());
        }
    }

    #[test]
    fn client_messages_round_trip_through_any_split(
        msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..400), 1..8),
        mask in any::<[u8; 4]>(),
        split in 1usize..50,
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            encode_client_frame(&mut stream, Opcode::Binary, m, mask);
        }
        let mut dec = FrameDecoder::new(400);
        let mut got = Vec::new();
        for chunk in stream.chunks(split) {
            dec.push(chunk);
            got.extend(decode_all(&mut dec).unwrap());
        }
        let want: Vec<WsEvent> = msgs.into_iter().map(WsEvent::Binary).collect();
        prop_assert_eq!(got, want);
    }
}
