//! The admin HTTP API, served on the node's port by the connection process
//! that received the request (stateless, like Discord's admin servers): it
//! finds channels through the same ring as the gateway.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | liveness |
//! | `GET /metrics` | Prometheus text 0.0.4, or OpenMetrics when the `Accept` header asks |
//! | `GET /dashboard` | the operator dashboard (a page that polls the next route) |
//! | `GET /dashboard/stats` | live numbers as JSON (guarded like the API) |
//! | `POST /realtime/v1/api/broadcast` | `{messages:[{topic, event, payload}]}` to subscribers |
//! | `POST /realtime/v1/api/broadcast/<topic>/events/<event>` | realtime-js `httpSend`: the body is the payload |
//! | `GET /realtime/v1/api/presence/online?keys=a,b` | which presence keys are online anywhere |
//! | `GET /realtime/v1/api/channels/<topic>/messages?limit=&before=&after=` | stored history, newest first, ids as strings |
//! | `GET /realtime/v1/api/rooms/<id>` | the room state (`{}` when never set) |
//! | `PUT /realtime/v1/api/rooms/<id>` | merge `{"host": "<user>"}` (etc.) into the room state |
//! | `GET /demo` | redirects to `/demo/` |
//! | `GET /demo/` | the demo room's page (`index.html` of `node.demo_dir`) |
//! | `GET /demo/<file>` | a file of the demo room |
//! | `GET /realtime/v1/api/modules` | the process modules: pipeline, each module's status and error |
//! | `POST /realtime/v1/api/modules/reload` | reload `modules.dir`; answers the same report once the module processes run |

use std::io::Read;

use chorus_core::config::Config;
use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::http::{Request, Response};
use chorus_core::phoenix::Payload;
use lunatic::net::TcpStream;
use serde_json::{json, Value};
use supervisors::SupervisorRef;

use crate::channel::{self, Body, ChannelMsg, Publish};
use crate::{host, presence, tree};

/// Answers one request. `body_start` holds body bytes read with the head.
pub fn handle(
    stream: &mut TcpStream,
    request: &Request,
    body_start: Vec<u8>,
    config: &Config,
) -> Response {
    if !config.auth.jwt_secret.is_empty()
        && (request.path.starts_with("/realtime/v1/api/") || request.path == DASHBOARD_STATS)
    {
        if let Err(reason) = authorize(request, config) {
            return Response::json(401, &json!({ "error": reason }));
        }
    }
    let path = request.path.as_str();
    match request.method.as_str() {
        "GET" if path == "/healthz" => {
            Response::json(200, &json!({"status": "ok", "node": config.node.name}))
        }
        "GET" if path == "/metrics" => metrics(request),
        "GET" if path == "/dashboard" || path == "/dashboard/" => Response::new(200)
            .with_header("Content-Type", "text/html; charset=utf-8")
            .with_header("Cache-Control", "no-store")
            .with_body(DASHBOARD_HTML.as_bytes().to_vec()),
        "GET" if path == DASHBOARD_STATS => Response::new(200)
            .with_header("Content-Type", "application/json")
            .with_header("Cache-Control", "no-store")
            .with_body(host::stats_json(restarts())),
        "GET" if path == "/realtime/v1/api/presence/online" => {
            let keys: Vec<String> = request
                .query_param("keys")
                .unwrap_or("")
                .split(',')
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect();
            let online = presence::online(&keys, config.presence.shards);
            Response::json(200, &json!({ "online": online }))
        }
        "GET" if history_topic(path).is_some() => {
            history(request, history_topic(path).unwrap_or(""))
        }
        "GET" if path == "/demo" => Response::new(301)
            .with_header("Location", "/demo/")
            .with_body(Vec::new()),
        "GET" if path.starts_with("/demo/") => demo_file(&path["/demo/".len()..]),
        "GET" if path == "/realtime/v1/api/modules" => modules_json(host::modules_report_json()),
        "POST" if path == "/realtime/v1/api/modules/reload" => {
            let report = host::modules_reload();
            if let Err(e) = crate::modules::reconcile(config) {
                return Response::json(503, &json!({ "error": e }));
            }
            modules_json(report)
        }
        "GET" if path.starts_with(ROOMS) => crate::room::admin_get(&path[ROOMS.len()..]),
        "PUT" if path.starts_with(ROOMS) => match read_body(stream, request, body_start, config) {
            Ok(body) => crate::room::admin_put(&path[ROOMS.len()..], &body),
            Err(r) => r,
        },
        "POST" if path == "/realtime/v1/api/broadcast" => {
            match read_body(stream, request, body_start, config) {
                Ok(body) => broadcast_batch(&body),
                Err(r) => r,
            }
        }
        "POST" if path.starts_with("/realtime/v1/api/broadcast/") => {
            let Some((topic, event)) = path
                .trim_start_matches("/realtime/v1/api/broadcast/")
                .split_once("/events/")
            else {
                return Response::json(404, &json!({"error": "not found", "path": path}));
            };
            let topic = chorus_core::http::percent_decode(topic);
            let event = chorus_core::http::percent_decode(event);
            let body = match read_body(stream, request, body_start, config) {
                Ok(b) => b,
                Err(r) => return r,
            };
            let binary = request
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/octet-stream"));
            let payload = if binary {
                Payload::Binary(body)
            } else {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(v) => Payload::Json(v),
                    Err(e) => return bad_request(&format!("body is not JSON: {e}")),
                }
            };
            publish(&topic, &event, &payload);
            Response::json(202, &json!({}))
        }
        _ => Response::json(404, &json!({"error": "not found", "path": path})),
    }
}

/// The operator dashboard: one self-contained page (no CDN) that polls
/// [`DASHBOARD_STATS`] once a second.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// The dashboard's JSON, guarded like the admin API.
const DASHBOARD_STATS: &str = "/dashboard/stats";

/// A file of the demo room (`index.html` for the directory itself).
fn demo_file(name: &str) -> Response {
    let name = if name.is_empty() { "index.html" } else { name };
    match host::asset(name) {
        Some((content_type, body)) => Response::new(200)
            .with_header("Content-Type", &content_type)
            .with_header("Cache-Control", "no-cache")
            .with_body(body),
        None => Response::json(
            404,
            &json!({"error": format!("no demo file {name:?} (node.demo_dir; scripts/run.sh builds the demo)")}),
        ),
    }
}

/// The host's modules report, passed through.
fn modules_json(report: Vec<u8>) -> Response {
    match serde_json::from_slice::<Value>(&report) {
        Ok(v) => Response::json(200, &v),
        Err(e) => Response::json(500, &json!({ "error": format!("bad modules report: {e}") })),
    }
}

/// `GET|PUT /realtime/v1/api/rooms/<id>`: a room's state (see `room.rs`).
const ROOMS: &str = "/realtime/v1/api/rooms/";

/// The `<topic>` of `/realtime/v1/api/channels/<topic>/messages`.
fn history_topic(path: &str) -> Option<&str> {
    path.strip_prefix("/realtime/v1/api/channels/")?
        .strip_suffix("/messages")
}

/// `GET /realtime/v1/api/channels/<topic>/messages`: the topic's stored
/// messages through the data service, newest first.
fn history(request: &Request, topic: &str) -> Response {
    let topic = chorus_core::http::percent_decode(topic);
    if let Err(reason) = chorus_core::join::validate_topic(&topic) {
        return bad_request(&reason);
    }
    let range = match chorus_core::data::parse_history_range(
        request.query_param("limit"),
        request.query_param("before"),
        request.query_param("after"),
    ) {
        Ok(r) => r,
        Err(reason) => return bad_request(&reason),
    };
    match host::data(&DataRequest::History {
        topic: full_topic(&topic),
        before: range.before,
        after: range.after,
        limit: range.limit,
    }) {
        DataResponse::Messages { messages } => {
            Response::json(200, &json!({ "messages": messages }))
        }
        DataResponse::Error { reason } => Response::json(503, &json!({ "error": reason })),
        other => Response::json(
            500,
            &json!({ "error": format!("unexpected answer from the data service: {other:?}") }),
        ),
    }
}

fn bad_request(reason: &str) -> Response {
    Response::json(400, &json!({ "error": reason }))
}

/// Bearer token or `apikey` header, verified like a socket's apikey.
fn authorize(request: &Request, config: &Config) -> Result<(), String> {
    let token = request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .or_else(|| request.header("apikey"))
        .ok_or("missing apikey or Authorization header")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    chorus_core::jwt::verify_hs256(token, config.auth.jwt_secret.as_bytes(), now)
        .map(|_| ())
        .map_err(|e| format!("invalid token: {e}"))
}

fn read_body(
    stream: &mut TcpStream,
    request: &Request,
    mut body: Vec<u8>,
    config: &Config,
) -> Result<Vec<u8>, Response> {
    let Some(len) = request.content_length else {
        return Err(Response::json(
            411,
            &json!({"error": "Content-Length required"}),
        ));
    };
    // A batch may hold many messages; each is capped by max_payload_bytes.
    let limit = config.limits.max_frame_bytes as usize;
    if len > limit {
        return Err(Response::json(
            413,
            &json!({"error": format!("payload_size_exceeded: body over {limit} bytes (limits.max_frame_bytes)")}),
        ));
    }
    let mut chunk = vec![0u8; 16 * 1024];
    while body.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return Err(bad_request("body shorter than Content-Length")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    body.truncate(len);
    Ok(body)
}

/// Supabase topics over REST name the channel without the `realtime:` prefix.
fn full_topic(topic: &str) -> String {
    if topic.starts_with("realtime:") {
        topic.to_string()
    } else {
        format!("realtime:{topic}")
    }
}

fn publish(topic: &str, event: &str, payload: &Payload) {
    // Only running channels have subscribers; REST never starts one.
    if let Some(ch) = channel::locate(&full_topic(topic), false) {
        ch.send(ChannelMsg::Publish(Publish {
            from: None,
            event: event.to_string(),
            payload: Body::from_payload(payload),
            ack: None,
        }));
    }
}

fn broadcast_batch(body: &[u8]) -> Response {
    let v: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad_request(&format!("body is not JSON: {e}")),
    };
    let Some(messages) = v.get("messages").and_then(Value::as_array) else {
        return bad_request("expected {\"messages\": [{\"topic\", \"event\", \"payload\"}]}");
    };
    for (i, m) in messages.iter().enumerate() {
        let topic = m.get("topic").and_then(Value::as_str);
        let event = m.get("event").and_then(Value::as_str);
        if topic.is_none_or(str::is_empty) || event.is_none() {
            return bad_request(&format!("messages[{i}] needs a topic and an event"));
        }
    }
    for m in messages {
        let topic = m.get("topic").and_then(Value::as_str).unwrap_or_default();
        let event = m.get("event").and_then(Value::as_str).unwrap_or_default();
        let payload = m.get("payload").cloned().unwrap_or(json!({}));
        publish(topic, event, &Payload::Json(payload));
    }
    Response::json(202, &json!({}))
}

/// Processes the supervision tree has restarted since the node started.
fn restarts() -> u64 {
    SupervisorRef::lookup(tree::ROOT)
        .and_then(|root| root.tree_restarts().ok())
        .unwrap_or(0)
}

/// `GET /metrics`: every metric, rendered by the host with
/// `prometheus-client` in the format the scraper's `Accept` asks for.
fn metrics(request: &Request) -> Response {
    use chorus_core::metrics::{wants_openmetrics, OPENMETRICS_TEXT, PROMETHEUS_TEXT};
    let openmetrics = wants_openmetrics(request.header("accept"));
    let text = host::metrics_text(openmetrics, restarts());
    let ctype = if openmetrics {
        OPENMETRICS_TEXT
    } else {
        PROMETHEUS_TEXT
    };
    Response::new(200)
        .with_header("Content-Type", ctype)
        .with_body(text.into_bytes())
}
