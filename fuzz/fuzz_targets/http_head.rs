//! The HTTP/1.1 request-head parser on any bytes: a request, "need more",
//! or an error that maps to an HTTP response, never a panic; and the
//! WebSocket upgrade check on whatever parsed.
#![no_main]

use chorus_core::http::{self, parse_request};
use chorus_core::ws;
use libfuzzer_sys::fuzz_target;

const MAX_HEAD: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    match parse_request(data, MAX_HEAD) {
        Ok(Some((request, head_len))) => {
            assert!(head_len <= data.len() && head_len <= MAX_HEAD);
            let _ = request.query_param("apikey");
            let _ = request.header("content-length");
            let _ = http::percent_decode(&request.path);
            let _ = ws::accept_upgrade(&request, None);
        }
        Ok(None) => {}
        Err(e) => {
            let status = e.status();
            let _ = e.to_response();
            assert!((400..600).contains(&status), "status {status}");
        }
    }
});
