//! One HTTP request: the host read its head and body and spawned this
//! process from the exported `chorus_http`; the answer goes back through
//! the connection's outlet, and the host closes the connection when the
//! process returns.

use chorus_core::http::{Request, Response};
use chorus_core::metrics::Metric;
use serde::Deserialize;
use serde_json::json;

use crate::host;

/// What the host hands an HTTP handler (`Exchange` in `gateway.rs`).
#[derive(Deserialize)]
struct Exchange {
    request: Request,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

/// The HTTP handler process' entry, exported to the host.
pub fn run(socket: u64) {
    host::metric(Metric::HttpRequests, 1);
    let response = match host::socket_start(socket)
        .and_then(|bytes| bincode::deserialize::<Exchange>(&bytes).ok())
    {
        Some(exchange) => match crate::config() {
            Some(config) => crate::admin::handle(&exchange.request, &exchange.body, &config),
            None => Response::json(503, &json!({"error": "node configuration unavailable"})),
        },
        None => Response::json(
            500,
            &json!({"error": "request lost between host and guest"}),
        ),
    };
    host::outlet_send(socket, &response.to_bytes(), host::Route::CONTROL);
    host::outlet_close(socket, None);
}
