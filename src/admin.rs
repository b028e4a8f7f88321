//! The admin HTTP API, served on the node's port by the connection process
//! that received the request (stateless, like Discord's admin servers): it
//! finds channels through the same ring as the gateway.
//!
//! | route | what |
//! |---|---|
//! | `GET /healthz` | liveness: 200 `ok`, 503 `draining` once a drain started, 503 `not_a_member` when the cluster's control server refuses the node |
//! | `GET /readyz` | readiness: the same answers as `/healthz` |
//! | `POST /realtime/v1/api/drain` | start the node's graceful drain (an admin route when auth is on) |
//! | `GET /metrics` | Prometheus text 0.0.4, or OpenMetrics when the `Accept` header asks |
//! | `GET /dashboard` | the operator dashboard (a page that polls the next route) |
//! | `GET /dashboard/stats` | live numbers as JSON (an admin route when auth is on) |
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
//!
//! With auth on (`auth.jwt_secret`), every `/realtime/v1/api/` route needs a
//! valid token (`Authorization: Bearer` or `apikey`), 401 otherwise; the
//! admin routes need `role: service_role`, 403 with the reason otherwise:
//! the room state (`GET`/`PUT`), the modules reload, the drain, `/dashboard/stats`, a
//! REST broadcast to a protected topic (one a topic policy covers, a message
//! marked `private: true`, or a room's audio lane) and the history of a
//! private topic (one a policy covers).

use std::time::Duration;

use chorus_core::config::Config;
use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::http::{Request, Response};
use chorus_core::jwt::Claims;
use chorus_core::policy::{self, Policies};
use serde_json::{json, Value};
use supervisors::SupervisorRef;

use crate::channel;
use crate::msg::{reply_to, Body, ChannelMsg, Located, Mailer, Publish};
use crate::{host, presence, tree};

/// Answers one request; the host has read its `body` (at most
/// `limits.max_frame_bytes`, refused with 413 before this).
pub fn handle(request: &Request, body: &[u8], config: &Config) -> Response {
    let mut claims = None;
    if !config.auth.jwt_secret.is_empty()
        && (request.path.starts_with("/realtime/v1/api/") || request.path == DASHBOARD_STATS)
    {
        match authorize(request, config) {
            Ok(c) => claims = Some(c),
            Err(reason) => return Response::json(401, &json!({ "error": reason })),
        }
    }
    let access = Access {
        claims: claims.as_ref(),
        config,
    };
    let path = request.path.as_str();
    match request.method.as_str() {
        "GET" if path == "/healthz" || path == "/readyz" => {
            let cluster = host::cluster_json();
            let refused = cluster["control_refused"].as_bool().unwrap_or(false);
            let (status, state) = chorus_core::drain::health(host::draining(), refused);
            Response::json(
                status,
                &json!({"status": state, "node": config.node.name, "cluster": cluster}),
            )
        }
        "POST" if path == "/realtime/v1/api/drain" => {
            if let Err(r) = access.admin("POST /realtime/v1/api/drain") {
                return r;
            }
            host::start_drain();
            Response::json(
                202,
                &json!({
                    "status": "draining",
                    "node": config.node.name,
                    "shutdown_timeout_ms": config.node.shutdown_timeout_ms,
                }),
            )
        }
        "GET" if path == "/metrics" => metrics(request),
        "GET" if path == "/dashboard" || path == "/dashboard/" => dashboard_page(),
        "GET" if path == DASHBOARD_STATS => match access.admin("GET /dashboard/stats") {
            Ok(()) => Response::new(200)
                .with_header("Content-Type", "application/json")
                .with_header("Cache-Control", "no-store")
                .with_body(host::stats_json(restarts())),
            Err(r) => r,
        },
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
            history(request, history_topic(path).unwrap_or(""), &access)
        }
        "GET" if path == "/demo" => Response::new(301)
            .with_header("Location", "/demo/")
            .with_body(Vec::new()),
        "GET" if path.starts_with("/demo/") => demo_file(&path["/demo/".len()..]),
        "GET" if path == "/realtime/v1/api/modules" => modules_json(host::modules_report_json()),
        "POST" if path == "/realtime/v1/api/modules/reload" => {
            if let Err(r) = access.admin("POST /realtime/v1/api/modules/reload") {
                return r;
            }
            let report = host::modules_reload();
            if let Err(e) = crate::modules::reconcile(config) {
                return Response::json(503, &json!({ "error": e }));
            }
            modules_json(report)
        }
        "GET" if path.starts_with(ROOMS) => match access.admin("GET /realtime/v1/api/rooms") {
            Ok(()) => crate::room::admin_get(&path[ROOMS.len()..]),
            Err(r) => r,
        },
        "PUT" if path.starts_with(ROOMS) => {
            if let Err(r) = access.admin("PUT /realtime/v1/api/rooms") {
                return r;
            }
            crate::room::admin_put(&path[ROOMS.len()..], body, config.limits.room_state_bytes)
        }
        "POST" if path == "/realtime/v1/api/broadcast" => broadcast_batch(body, &access),
        "POST" if path.starts_with("/realtime/v1/api/broadcast/") => {
            let Some((topic, event)) = path
                .trim_start_matches("/realtime/v1/api/broadcast/")
                .split_once("/events/")
            else {
                return Response::json(404, &json!({"error": "not found", "path": path}));
            };
            let topic = chorus_core::http::percent_decode(topic);
            let event = chorus_core::http::percent_decode(event);
            // realtime-js `httpSend` on a private channel adds `?private=true`.
            let marked_private = request.query_param("private") == Some("true");
            if let Err(r) = access.broadcast(&topic, marked_private) {
                return r;
            }
            let binary = request
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/octet-stream"));
            let payload = if binary {
                Body::Binary(body.to_vec())
            } else {
                match checked_json(body, config) {
                    Ok(()) => Body::Json(body.to_vec()),
                    Err(reason) => return bad_request(&reason),
                }
            };
            match publish(&topic, &event, payload, access.sub()) {
                Ok(()) => Response::json(202, &json!({})),
                Err(refused) => refused,
            }
        }
        _ => Response::json(404, &json!({"error": "not found", "path": path})),
    }
}

/// The operator dashboard: one self-contained page (no CDN) that polls
/// [`DASHBOARD_STATS`] once a second. The host keeps it
/// (`host-bridge/src/dashboard.html`, asset `/dashboard`): in the guest it
/// would be in the data image every process slot maps.
fn dashboard_page() -> Response {
    match host::asset("/dashboard") {
        Some((content_type, body)) => Response::new(200)
            .with_header("Content-Type", &content_type)
            .with_header("Cache-Control", "no-store")
            .with_body(body),
        None => Response::json(500, &json!({"error": "the host has no dashboard page"})),
    }
}

/// The dashboard's JSON, guarded like the admin API.
const DASHBOARD_STATS: &str = "/dashboard/stats";

/// A file of the demo room (`index.html` for the directory itself).
fn demo_file(name: &str) -> Response {
    let name = if name.is_empty() { "index.html" } else { name };
    // A demo file is a plain name; `/…` names the host's own pages.
    let asset = if name.contains('/') {
        None
    } else {
        host::asset(name)
    };
    match asset {
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

/// Who is asking, for the routes that need more than a valid token.
struct Access<'a> {
    /// The request's verified claims; `None` when the node runs open.
    claims: Option<&'a Claims>,
    config: &'a Config,
}

impl Access<'_> {
    /// An admin route: with auth on, only `service_role` (403 otherwise).
    fn admin(&self, what: &str) -> Result<(), Response> {
        match self.claims {
            None => Ok(()),
            Some(c) => policy::needs_service_role(what, c.as_map())
                .map_err(|reason| Response::json(403, &json!({ "error": reason }))),
        }
    }

    /// The caller's identity, the token's `sub` (`None` when the node runs
    /// open or the token has none).
    fn sub(&self) -> Option<&str> {
        self.claims.and_then(Claims::sub)
    }

    /// Whether `topic` is private: a topic policy covers it. A config that
    /// does not compile (refused at start, so never here) counts as
    /// covering everything.
    fn private(&self, topic: &str) -> bool {
        Policies::compile(&self.config.auth.policies).map_or(true, |p| p.covers(topic))
    }

    /// A REST broadcast to `topic` (`marked_private`: the message says
    /// `private: true`): a protected topic needs `service_role`.
    fn broadcast(&self, topic: &str, marked_private: bool) -> Result<(), Response> {
        let audio_lane = chorus_core::room::audio_room(&full_topic(topic)).is_some();
        if marked_private || audio_lane || self.private(topic) {
            self.admin(&format!("a REST broadcast to protected topic {topic}"))
        } else {
            Ok(())
        }
    }
}

/// `GET /realtime/v1/api/channels/<topic>/messages`: the topic's stored
/// messages through the data service, newest first. A private topic's
/// history is an admin route.
fn history(request: &Request, topic: &str, access: &Access<'_>) -> Response {
    let topic = chorus_core::http::percent_decode(topic);
    if let Err(reason) = chorus_core::join::validate_topic(&topic) {
        return bad_request(&reason);
    }
    if access.private(&topic) {
        if let Err(r) = access.admin(&format!("the history of private topic {topic}")) {
            return r;
        }
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
fn authorize(request: &Request, config: &Config) -> Result<Claims, String> {
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
        .map_err(|e| format!("invalid token: {e}"))
}

/// Checks a JSON body before it goes anywhere: valid JSON, nested at most
/// `limits.max_json_depth` levels.
fn checked_json(body: &[u8], config: &Config) -> Result<(), String> {
    let depth = config.limits.max_json_depth as usize;
    if chorus_core::json::depth_exceeds(body, depth) {
        return Err(chorus_core::command::depth_refusal(depth));
    }
    serde_json::from_slice::<&serde_json::value::RawValue>(body)
        .map(|_| ())
        .map_err(|e| format!("body is not JSON: {e}"))
}

/// Supabase topics over REST name the channel without the `realtime:` prefix.
fn full_topic(topic: &str) -> String {
    if topic.starts_with("realtime:") {
        topic.to_string()
    } else {
        format!("realtime:{topic}")
    }
}

/// How long a REST post to a chat lane waits for its channel to store it.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes one REST message. On a room's chat lane the message is stored
/// before the answer, whether or not a channel ran (one is started, so the
/// lane's modules, order and history see it like any other message); the
/// error is the response to send. Elsewhere only a running channel has
/// subscribers, and REST never starts one.
fn publish(topic: &str, event: &str, payload: Body, by: Option<&str>) -> Result<(), Response> {
    let full = full_topic(topic);
    if !channel::is_chat_lane(&full) {
        if let Some(ch) = channel::locate(&full, false) {
            ch.send(ChannelMsg::Publish(Publish {
                from: None,
                event: event.to_string(),
                payload,
                ack: None,
                reply: None,
                by: by.map(str::to_string),
            }));
        }
        return Ok(());
    }
    let ch = match channel::find(&full, true) {
        Located::Found(ch) | Located::Started(ch) => ch,
        Located::Full(reason) | Located::Unreachable(reason) => {
            return Err(Response::json(503, &json!({ "error": reason })))
        }
        Located::Absent => {
            return Err(Response::json(
                503,
                &json!({"error": "chat lane unavailable, retry"}),
            ))
        }
    };
    let outcome = supervisors::call(
        |reply| {
            ch.send(ChannelMsg::Publish(Publish {
                from: None,
                event: event.to_string(),
                payload,
                ack: None,
                reply: Some(reply_to(reply)),
                by: by.map(str::to_string),
            }))
        },
        STORE_TIMEOUT,
    );
    match outcome {
        Some(Ok(_id)) => Ok(()),
        Some(Err(reason)) => {
            let status = if reason.contains("storage") || reason.contains("unavailable") {
                503
            } else {
                422
            };
            Err(Response::json(status, &json!({ "error": reason })))
        }
        None => Err(Response::json(
            504,
            &json!({"error": "the chat lane did not confirm the write; retry"}),
        )),
    }
}

fn broadcast_batch(body: &[u8], access: &Access<'_>) -> Response {
    if let Err(reason) = checked_json(body, access.config) {
        return bad_request(&reason);
    }
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
        let (Some(topic), Some(_)) = (topic.filter(|t| !t.is_empty()), event) else {
            return bad_request(&format!("messages[{i}] needs a topic and an event"));
        };
        let marked_private = m.get("private").and_then(Value::as_bool) == Some(true);
        if let Err(r) = access.broadcast(topic, marked_private) {
            return r;
        }
    }
    for (i, m) in messages.iter().enumerate() {
        let topic = m.get("topic").and_then(Value::as_str).unwrap_or_default();
        let event = m.get("event").and_then(Value::as_str).unwrap_or_default();
        let payload = m
            .get("payload")
            .map_or_else(|| "{}".to_string(), Value::to_string);
        if let Err(refused) = publish(topic, event, Body::Json(payload.into_bytes()), access.sub())
        {
            // Say which message failed and that the ones before it went out.
            let reason = String::from_utf8_lossy(&refused.body).into_owned();
            let detail: Value = serde_json::from_str(&reason).unwrap_or(Value::Null);
            let error = detail.get("error").and_then(Value::as_str).unwrap_or("");
            return Response::json(
                refused.status,
                &json!({ "error": format!("messages[{i}]: {error}"), "accepted": i }),
            );
        }
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
