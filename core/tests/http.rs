use chorus_core::http::{parse_request, percent_decode, HttpError, Response, MAX_HEADERS};
use serde_json::json;

const UPGRADE: &[u8] = b"GET /realtime/v1/websocket?apikey=abc%2Edef&vsn=1.0.0&x=a+b HTTP/1.1\r\n\
Host: localhost:4000\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

#[test]
fn parses_a_websocket_upgrade_head() {
    let (req, len) = parse_request(UPGRADE, 8192).unwrap().unwrap();
    assert_eq!(len, UPGRADE.len());
    assert_eq!(req.method, "GET");
    assert_eq!(req.path, "/realtime/v1/websocket");
    assert_eq!(
        req.query,
        vec![
            ("apikey".to_string(), "abc.def".to_string()),
            ("vsn".to_string(), "1.0.0".to_string()),
            ("x".to_string(), "a b".to_string()),
        ]
    );
    assert_eq!(req.query_param("vsn"), Some("1.0.0"));
    assert_eq!(req.query_param("missing"), None);
    assert_eq!(req.header("UPGRADE"), Some("websocket"));
    assert_eq!(
        req.headers[0],
        ("host".to_string(), "localhost:4000".to_string())
    );
    assert_eq!(req.content_length, None);
}

#[test]
fn every_proper_prefix_is_partial() {
    for n in 0..UPGRADE.len() {
        assert_eq!(parse_request(&UPGRADE[..n], 8192), Ok(None), "prefix {n}");
    }
}

#[test]
fn reports_where_the_body_starts_and_its_length() {
    let buf = b"POST /realtime/v1/api/broadcast HTTP/1.1\r\nContent-Length: 7\r\n\r\n{\"a\":1}";
    let (req, len) = parse_request(buf, 1024).unwrap().unwrap();
    assert_eq!(req.content_length, Some(7));
    assert_eq!(&buf[len..], b"{\"a\":1}");
}

#[test]
fn garbage_is_an_error_that_maps_to_400() {
    let err = parse_request(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1024).unwrap_err();
    assert!(matches!(err, HttpError::Malformed(_)), "{err:?}");
    assert_eq!(err.status(), 400);
    let resp = err.to_response().to_bytes();
    assert!(resp.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
}

#[test]
fn head_over_the_limit_is_rejected_even_when_incomplete() {
    let mut buf = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
    buf.extend(std::iter::repeat_n(b'a', 200));
    assert_eq!(
        parse_request(&buf, 100),
        Err(HttpError::HeadTooLarge { limit: 100 })
    );
    buf.extend_from_slice(b"\r\n\r\n");
    let err = parse_request(&buf, 100).unwrap_err();
    assert_eq!(err, HttpError::HeadTooLarge { limit: 100 });
    assert_eq!(err.status(), 431);
    assert!(err.to_string().contains("100-byte"));
}

#[test]
fn too_many_headers_is_431() {
    let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        buf.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    let err = parse_request(&buf, 1 << 20).unwrap_err();
    assert_eq!(err, HttpError::TooManyHeaders);
    assert_eq!(err.status(), 431);
}

#[test]
fn conflicting_or_bad_content_length_is_rejected() {
    let two = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
    assert_eq!(parse_request(two, 1024), Err(HttpError::BadContentLength));
    let nan = b"POST / HTTP/1.1\r\nContent-Length: lots\r\n\r\n";
    assert_eq!(parse_request(nan, 1024), Err(HttpError::BadContentLength));
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let err = parse_request(chunked, 1024).unwrap_err();
    assert_eq!(err.status(), 501);
}

#[test]
fn percent_decoding_keeps_malformed_escapes() {
    assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
    assert_eq!(percent_decode("%C3%A9"), "é");
    assert_eq!(percent_decode("%FF"), "\u{FFFD}");
}

#[test]
fn json_response_renders_length_and_close() {
    let bytes = Response::json(200, &json!({"ok": true})).to_bytes();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\
Connection: close\r\n\r\n{\"ok\":true}"
    );
}

#[test]
fn switching_protocols_has_no_content_length_and_keeps_caller_connection() {
    let bytes = Response::new(101)
        .with_header("Upgrade", "websocket")
        .with_header("Connection", "Upgrade")
        .to_bytes();
    assert_eq!(
        String::from_utf8(bytes).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    );
}

#[test]
fn header_values_cannot_inject_lines() {
    let bytes = Response::text(404, "nope")
        .with_header("X-Topic", "a\r\nSet-Cookie: x=1")
        .to_bytes();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("X-Topic: a  Set-Cookie: x=1\r\n"), "{text}");
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
    assert!(text.ends_with("\r\n\r\nnope"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_respect_the_limit(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
        match parse_request(&bytes, 256) {
            Ok(Some((_, len))) => proptest::prop_assert!(len <= 256 && len <= bytes.len()),
            Ok(None) => proptest::prop_assert!(bytes.len() <= 256),
            Err(e) => proptest::prop_assert!(matches!(e.status(), 400 | 431 | 501)),
        }
    }
}

#[test]
fn a_repeated_query_parameter_takes_its_last_value_as_phoenix_does() {
    // phoenix.js appends its own vsn after the user's params.
    let head = b"GET /socket/websocket?vsn=1.0.0&apikey=a&vsn=2.0.0 HTTP/1.1\r\nHost: x\r\n\r\n";
    let (req, _) = parse_request(head, 8192).unwrap().unwrap();
    assert_eq!(req.query_param("vsn"), Some("2.0.0"));
    assert_eq!(req.query_param("apikey"), Some("a"));
}
