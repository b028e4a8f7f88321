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

use std::time::Duration;

use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::frame::{self, BodyRef};
use chorus_core::http::Response;
use chorus_core::phoenix::Vsn;
use chorus_core::room;
use serde_json::{json, Value};

use crate::channel;
use crate::host;
use crate::msg::{Answer, Body, ChannelMsg, Mailer, Publish, RoomMsg, SessionRef};

/// How long the admin API waits for the audio channel to apply a patch.
const PATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the channel does after a room message.
pub enum Action {
    None,
    /// Fan out (and acknowledge) like any broadcast.
    Publish(Publish),
    /// An error reply to session `from`.
    Error {
        from: SessionRef,
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
                let playback: Value = match serde_json::from_slice(&payload) {
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
                    by: None,
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
                if let Some(reply) = reply {
                    reply.send(&result);
                }
                Action::None
            }
        }
    }

    /// The retained playback as sent to a joiner right after its join reply
    /// (a `playback` broadcast with `meta: {"retained": true}`).
    pub fn retained(&self, topic: &str, vsn: Vsn) -> Option<Vec<u8>> {
        let playback = room::retained_playback(self.state.as_ref()?)?.to_string();
        frame::broadcast(
            vsn,
            topic,
            room::PLAYBACK_EVENT,
            BodyRef::Json(playback.as_bytes()),
            Some(br#"{"retained":true}"#),
        )
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
    let answer = ch.call(
        |reply| {
            ChannelMsg::Room(RoomMsg::Patch {
                patch: patch.to_string(),
                persist: true,
                reply: Some(reply),
                max_bytes: Some(max_bytes),
            })
        },
        PATCH_TIMEOUT,
    );
    let state = match answer {
        Some(Ok(state)) => state,
        Some(Err(reason)) if reason.contains("limits.room_state_bytes") => {
            return Response::json(413, &json!({ "error": reason }))
        }
        Some(Err(reason)) => return Response::json(503, &json!({ "error": reason })),
        None => return Response::json(504, &json!({"error": "room channel did not answer"})),
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
