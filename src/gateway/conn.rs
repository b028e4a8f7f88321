//! One TCP connection: read the HTTP request head, then either upgrade to a
//! WebSocket session or answer one admin HTTP request and close.

use std::io::{Read, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_core::config::Config;
use chorus_core::http::{self, Request, Response};
use chorus_core::jwt;
use chorus_core::metrics::Metric;
use chorus_core::phoenix::Vsn;
use chorus_core::ws;
use lunatic::net::TcpStream;
use serde_json::json;
use supervisors::Inbox;

use super::session::{self, SessionMsg};
use crate::host;

/// Paths a WebSocket client may connect to: Supabase's and Phoenix's.
const WS_PATHS: &[&str] = &["/realtime/v1/websocket", "/socket/websocket"];

/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one accepted connection inside its (supervised) session process.
pub fn serve(mut stream: TcpStream, config: Config, inbox: Inbox<SessionMsg>) {
    let max_head = config.limits.max_http_head_bytes as usize;
    let (request, rest) = match read_head(&mut stream, max_head) {
        Ok(Some(r)) => r,
        Ok(None) => return, // closed before sending anything
        Err(response) => {
            host::metric(Metric::ProtocolErrors, 1);
            let _ = stream.write_all(&response.to_bytes());
            return;
        }
    };
    if WS_PATHS.contains(&request.path.as_str()) {
        upgrade(stream, request, rest, config, inbox);
    } else {
        host::metric(Metric::HttpRequests, 1);
        let response = crate::admin::handle(&mut stream, &request, rest, &config);
        let _ = stream.write_all(&response.to_bytes());
    }
}

/// Reads until a full request head is buffered. Returns the request and the
/// bytes that followed the head (a body, or early WebSocket frames).
fn read_head(stream: &mut TcpStream, max: usize) -> Result<Option<(Request, Vec<u8>)>, Response> {
    let _ = stream.set_read_timeout(Some(HEAD_TIMEOUT));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(Response::text(400, "incomplete request head\n")),
            Ok(n) => n,
            Err(_) if buf.is_empty() => return Ok(None),
            Err(_) => return Err(Response::text(408, "request head timed out\n")),
        };
        buf.extend_from_slice(&chunk[..n]);
        match http::parse_request(&buf, max) {
            Ok(Some((request, head_len))) => {
                let rest = buf.split_off(head_len);
                let _ = stream.set_read_timeout(None);
                return Ok(Some((request, rest)));
            }
            Ok(None) => continue,
            Err(e) => return Err(e.to_response()),
        }
    }
}

/// With a JWT secret configured, the socket's `apikey` (query or
/// `x-api-key` header) must be a valid HS256 token.
fn authenticate(request: &Request, config: &Config) -> Result<Option<jwt::Claims>, String> {
    let secret = &config.auth.jwt_secret;
    if secret.is_empty() {
        return Ok(None);
    }
    let key = request
        .query_param("apikey")
        .or_else(|| request.header("x-api-key"))
        .ok_or("missing apikey")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    jwt::verify_hs256(key, secret.as_bytes(), now)
        .map(Some)
        .map_err(|e| format!("invalid apikey: {e}"))
}

fn upgrade(
    mut stream: TcpStream,
    request: Request,
    early: Vec<u8>,
    config: Config,
    inbox: Inbox<SessionMsg>,
) {
    let refuse = |stream: &mut TcpStream, response: Response| {
        host::metric(Metric::ProtocolErrors, 1);
        let _ = stream.write_all(&response.to_bytes());
    };
    let vsn = match Vsn::from_param(request.query_param("vsn")) {
        Ok(v) => v,
        Err(e) => {
            return refuse(
                &mut stream,
                Response::json(400, &json!({"error": e.to_string()})),
            )
        }
    };
    let claims = match authenticate(&request, &config) {
        Ok(c) => c,
        Err(reason) => return refuse(&mut stream, Response::json(401, &json!({"error": reason}))),
    };
    let accept = match ws::accept_upgrade(&request) {
        Ok(bytes) => bytes,
        Err(e) => return refuse(&mut stream, e.to_response()),
    };
    if stream.write_all(&accept).is_err() {
        return;
    }
    session::run(stream, vsn, early, config, claims, inbox);
}
