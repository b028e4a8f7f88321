//! The admin HTTP API, served on the node's port by the connection process
//! that received the request (stateless, like Discord's admin servers).

use chorus_core::config::Config;
use chorus_core::http::{Request, Response};
use lunatic::net::TcpStream;
use serde_json::json;

use crate::host;

/// Answers one request. `_body_start` holds body bytes already read with the head.
pub fn handle(
    _stream: &mut TcpStream,
    request: &Request,
    _body_start: Vec<u8>,
    config: &Config,
) -> Response {
    match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/healthz") => {
            Response::json(200, &json!({"status": "ok", "node": config.node.name}))
        }
        ("GET", "/metrics") => Response::text(200, &host::metrics_text())
            .with_header("content-type", "text/plain; version=0.0.4"),
        _ => Response::json(404, &json!({"error": "not found", "path": request.path})),
    }
}
