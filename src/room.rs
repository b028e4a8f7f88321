//! WhatsSound rooms, audio sync: the guest shell around `chorus_core::room`.
//!
//! * The channel of a room's audio lane (`realtime:room:<id>:audio`) owns
//!   the room state: it reads it once through the data service when it
//!   starts (10,000 joiners cost one read), keeps it in memory, writes it
//!   back on every change, and is its only writer while it runs (the admin
//!   API's `PUT` goes through it).
//! * Only the room's host may publish `playback` there: the state's `host`
//!   (compared with the session's `config.presence.key`) or a token whose
//!   `room_host` claim lists the room (when auth is on).
//! * The latest playback is sent to each joiner right after its join reply,
//!   as a `playback` broadcast with `meta: {"retained": true}`.
//! * `clock` pushes are answered with the server's wall clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_core::config::Config;
use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::http::Response;
use chorus_core::join::JoinConfig;
use chorus_core::jwt;
use chorus_core::phoenix::{self, Outbound, Payload, UserBroadcast};
use chorus_core::room;
use lunatic::{host as lhost, Mailbox, Process, Tag};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::channel::{self, Body, ChannelMsg, Publish};
use crate::host;

/// How long the admin API waits for the audio channel to apply a patch.
const PATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Server wall clock in (fractional) Unix milliseconds.
pub fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Room messages to an audio-lane channel.
#[derive(Debug, Serialize, Deserialize)]
pub enum RoomMsg {
    /// A validated `playback` broadcast from session `from`, whose user id
    /// (presence key) is `user`; `by_claim` when its token claims the room.
    Playback {
        from: u64,
        user: String,
        by_claim: bool,
        payload: String,
        refs: (String, Option<String>),
        ack: bool,
    },
    /// A checked admin patch of the room state, merged and (with `persist`)
    /// written back; the new state (JSON text) or an error goes to
    /// `(node, pid)` under `tag`.
    Patch {
        patch: String,
        persist: bool,
        reply: Option<(u64, u64, Tag)>,
        /// `limits.room_state_bytes`: a patch that would take the state
        /// (JSON text) past it is refused and changes nothing.
        #[serde(default)]
        max_bytes: Option<u32>,
    },
}

/// What the channel does after a room message.
pub enum Action {
    None,
    /// Fan out (and acknowledge) like any broadcast.
    Publish(Publish),
    /// An error reply to session `from`.
    Error {
        from: u64,
        refs: (String, Option<String>),
        reason: String,
    },
}

/// The room state held by an audio-lane channel.
pub struct AudioLane {
    room: String,
    /// `None` until read from the data service (retried when a read failed,
    /// so a failed read never overwrites the stored state).
    state: Option<Value>,
}

impl AudioLane {
    /// For an audio-lane topic: the lane with its room state read once.
    pub fn for_topic(topic: &str) -> Option<AudioLane> {
        let room = room::audio_room(topic)?.to_string();
        let mut lane = AudioLane { room, state: None };
        let _ = lane.state();
        Some(lane)
    }

    fn state(&mut self) -> Result<&mut Value, String> {
        if self.state.is_none() {
            match host::data(&DataRequest::GetRoomState {
                room: self.room.clone(),
            }) {
                DataResponse::RoomState { state } => {
                    self.state = Some(state.unwrap_or_else(|| json!({})))
                }
                other => {
                    let reason = format!("room state unavailable: {other:?}");
                    host::log(host::Level::Warn, &format!("room {}: {reason}", self.room));
                    return Err(reason);
                }
            }
        }
        self.state.as_mut().ok_or_else(|| "no room state".into())
    }

    fn persist(&mut self) -> Result<(), String> {
        let state = self.state()?.clone();
        match host::data(&DataRequest::PutRoomState {
            room: self.room.clone(),
            state,
        }) {
            DataResponse::Done => Ok(()),
            DataResponse::Error { reason } => Err(reason),
            other => Err(format!("unexpected store answer {other:?}")),
        }
    }

    pub fn handle(&mut self, msg: RoomMsg) -> Action {
        match msg {
            RoomMsg::Playback {
                from,
                user,
                by_claim,
                payload,
                refs,
                ack,
            } => {
                let playback: Value = match serde_json::from_str(&payload) {
                    Ok(v) => v,
                    Err(e) => {
                        let reason = format!("invalid_playback: {e}");
                        return Action::Error { from, refs, reason };
                    }
                };
                let state = match self.state() {
                    Ok(s) => s,
                    Err(reason) => return Action::Error { from, refs, reason },
                };
                if !room::is_host(state, &user, by_claim) {
                    host::metric(chorus_core::metrics::Metric::ProtocolErrors, 1);
                    return Action::Error {
                        from,
                        refs,
                        reason: room::NOT_ROOM_HOST.into(),
                    };
                }
                room::merge(state, &json!({ "playback": playback }));
                // The playback goes out even when the store fails: memory
                // still retains it for joiners of this channel.
                if let Err(reason) = self.persist() {
                    host::log(
                        host::Level::Warn,
                        &format!("room {}: playback not stored: {reason}", self.room),
                    );
                }
                Action::Publish(Publish {
                    from: Some(from),
                    event: room::PLAYBACK_EVENT.into(),
                    payload: Body::Json(payload),
                    ack: ack.then_some(refs),
                    reply: None,
                })
            }
            RoomMsg::Patch {
                patch,
                persist,
                reply,
                max_bytes,
            } => {
                let result = serde_json::from_str::<Value>(&patch)
                    .map_err(|e| e.to_string())
                    .and_then(|patch| {
                        let state = self.state()?;
                        let mut merged = state.clone();
                        room::merge(&mut merged, &patch);
                        let size = merged.to_string().len();
                        if let Some(max) = max_bytes.filter(|m| size > *m as usize) {
                            return Err(format!(
                                "room state would be {size} bytes, over {max} (limits.room_state_bytes)"
                            ));
                        }
                        *state = merged;
                        if persist {
                            self.persist()?;
                        }
                        Ok(self.state()?.to_string())
                    });
                if let Some((node, pid, tag)) = reply {
                    // SAFETY: `admin_put` waits for exactly this type under `tag`.
                    let to: Process<Result<String, String>> = unsafe { Process::new(node, pid) };
                    to.tag_send(tag, result);
                }
                Action::None
            }
        }
    }

    /// The retained playback as sent to a joiner right after its join reply.
    pub fn retained(&self, topic: &str, v2: bool) -> Option<Outbound> {
        let playback = room::retained_playback(self.state.as_ref()?)?.clone();
        let mut meta = serde_json::Map::new();
        meta.insert("retained".into(), Value::Bool(true));
        Some(if v2 {
            // JSON under 2.0.0 goes as the text array (see channel::publish).
            Outbound::push(
                None,
                topic,
                phoenix::event::BROADCAST,
                json!({"type": "broadcast", "event": room::PLAYBACK_EVENT, "payload": playback, "meta": meta}),
            )
        } else {
            Outbound::UserBroadcast(UserBroadcast {
                topic: topic.to_string(),
                event: room::PLAYBACK_EVENT.into(),
                meta: Some(meta),
                payload: Payload::Json(playback),
            })
        })
    }
}

/// Whether a client broadcast is a playback publish on an audio lane.
pub fn is_playback(topic: &str, event: &str) -> bool {
    event == room::PLAYBACK_EVENT && room::audio_room(topic).is_some()
}

/// Checks a session's playback publish and builds the channel message; the
/// error is the reply's reason.
pub fn playback_msg(
    topic: &str,
    payload: &Payload,
    join: &JoinConfig,
    socket_claims: Option<&jwt::Claims>,
    node: &Config,
    from: u64,
    refs: (String, Option<String>),
) -> Result<ChannelMsg, String> {
    let room_id = room::audio_room(topic).ok_or("not an audio lane")?;
    let Payload::Json(value) = payload else {
        return Err("invalid_playback: payload must be JSON".into());
    };
    room::validate_playback(value)?;
    let by_claim = host_by_claim(room_id, join, socket_claims, node);
    Ok(ChannelMsg::Room(RoomMsg::Playback {
        from,
        user: join.presence_key.clone(),
        by_claim,
        payload: value.to_string(),
        refs,
        ack: join.broadcast_ack,
    }))
}

/// With auth on: the join's `access_token` (or else the socket's `apikey`)
/// lists `room` in its `room_host` claim. Without auth no claim counts.
fn host_by_claim(
    room_id: &str,
    join: &JoinConfig,
    socket_claims: Option<&jwt::Claims>,
    node: &Config,
) -> bool {
    let secret = &node.auth.jwt_secret;
    if secret.is_empty() {
        return false;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let join_claims = join
        .access_token
        .as_deref()
        .and_then(|t| jwt::verify_hs256(t, secret.as_bytes(), now).ok());
    match join_claims.as_ref().or(socket_claims) {
        Some(c) => room::claims_host(c.as_map(), room_id),
        None => false,
    }
}

/// The reply to a `clock` push received at `received_ms`.
pub fn clock(payload: &Payload, received_ms: f64) -> Result<Value, String> {
    match payload {
        Payload::Json(v) => room::clock_reply(v, received_ms, now_ms()),
        Payload::Binary(_) => Err("invalid_clock: payload must be JSON".into()),
    }
}

/// `GET /realtime/v1/api/rooms/<id>`: the stored room state (`{}` if none).
pub fn admin_get(id: &str) -> Response {
    let id = chorus_core::http::percent_decode(id);
    if let Err(reason) = room::validate_room_id(&id) {
        return Response::json(400, &json!({ "error": reason }));
    }
    match host::data(&DataRequest::GetRoomState { room: id }) {
        DataResponse::RoomState { state } => Response::json(200, &state.unwrap_or(json!({}))),
        other => Response::json(503, &json!({ "error": format!("{other:?}") })),
    }
}

/// `PUT /realtime/v1/api/rooms/<id>` with e.g. `{"host": "alice"}`: merged
/// into the room state by the room's audio channel (started if needed, so
/// it stays the state's single writer). Answers the new state; a state that
/// would pass `limits.room_state_bytes` is refused with 413.
pub fn admin_put(id: &str, body: &[u8], max_bytes: u32) -> Response {
    let id = chorus_core::http::percent_decode(id);
    if let Err(reason) = room::validate_room_id(&id) {
        return Response::json(400, &json!({ "error": reason }));
    }
    if body.len() > max_bytes as usize {
        let reason = format!(
            "room state patch of {} bytes is over {max_bytes} (limits.room_state_bytes)",
            body.len()
        );
        return Response::json(413, &json!({ "error": reason }));
    }
    let patch: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return Response::json(400, &json!({ "error": format!("body is not JSON: {e}") }))
        }
    };
    if let Err(reason) = room::validate_patch(&patch) {
        return Response::json(400, &json!({ "error": reason }));
    }
    let canonical = room::audio_topic(&id);
    let Some(ch) = channel::locate(&canonical, true) else {
        return Response::json(503, &json!({"error": "room channel unavailable, retry"}));
    };
    let tag = Tag::new();
    ch.send(ChannelMsg::Room(RoomMsg::Patch {
        patch: patch.to_string(),
        persist: true,
        reply: Some((lhost::node_id(), lhost::process_id(), tag)),
        max_bytes: Some(max_bytes),
    }));
    // SAFETY: the channel answers with exactly this type under `tag`.
    let mailbox: Mailbox<Result<String, String>> = unsafe { Mailbox::new() };
    let state = match mailbox.tag_receive_timeout(&[tag], PATCH_TIMEOUT) {
        Ok(Ok(state)) => state,
        Ok(Err(reason)) if reason.contains("limits.room_state_bytes") => {
            return Response::json(413, &json!({ "error": reason }))
        }
        Ok(Err(reason)) => return Response::json(503, &json!({ "error": reason })),
        Err(_) => return Response::json(504, &json!({"error": "room channel did not answer"})),
    };
    // A raw client may have joined the unprefixed topic: a separate
    // channel, kept in step in memory.
    if let Some(other) = channel::locate(&format!("room:{id}:audio"), false) {
        other.send(ChannelMsg::Room(RoomMsg::Patch {
            patch: patch.to_string(),
            persist: false,
            reply: None,
            max_bytes: None,
        }));
    }
    let state: Value = serde_json::from_str(&state).unwrap_or(Value::Null);
    Response::json(200, &state)
}
