//! WhatsSound rooms, audio sync: the pure parts. A room `<id>` is the lanes
//! `room:<id>:audio|chat|reactions` (`realtime:room:<id>:…` through
//! realtime-js). On the audio lane only the room's host may publish the
//! `playback` event; the latest playback is retained as room state and sent
//! to every joiner. Clients align their clocks on the server's with the
//! `clock` event (NTP-style). No I/O here: the guest's `src/room.rs` is the
//! shell.

use serde_json::{Map, Value};

/// The broadcast event carrying a playback state.
pub const PLAYBACK_EVENT: &str = "playback";
/// The push event answering with the server's clock.
pub const CLOCK_EVENT: &str = "clock";
/// The error reason of a playback publish by someone who is not the host.
pub const NOT_ROOM_HOST: &str = "not_room_host";
/// The JWT claim listing the rooms the token's holder hosts.
pub const ROOM_HOST_CLAIM: &str = "room_host";
/// Longest `track` accepted, in bytes.
pub const MAX_TRACK_BYTES: usize = 512;

/// Which lane of a room a topic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Audio,
    Chat,
    Reactions,
}

/// `(room id, lane)` of `room:<id>:<lane>` or `realtime:room:<id>:<lane>`.
/// The id is everything between the prefix and the last `:` (non-empty).
pub fn parse_lane(topic: &str) -> Option<(&str, Lane)> {
    let t = topic.strip_prefix("realtime:").unwrap_or(topic);
    let rest = t.strip_prefix("room:")?;
    let (id, lane) = rest.rsplit_once(':')?;
    if id.is_empty() {
        return None;
    }
    let lane = match lane {
        "audio" => Lane::Audio,
        "chat" => Lane::Chat,
        "reactions" => Lane::Reactions,
        _ => return None,
    };
    Some((id, lane))
}

/// The room id of an audio-lane topic.
pub fn audio_room(topic: &str) -> Option<&str> {
    match parse_lane(topic) {
        Some((id, Lane::Audio)) => Some(id),
        _ => None,
    }
}

/// The canonical (realtime-js) topic of a room's audio lane.
pub fn audio_topic(room: &str) -> String {
    format!("realtime:room:{room}:audio")
}

/// A checked room id from the admin API's path.
pub fn validate_room_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("room id is empty".into());
    }
    if id.len() > 200 {
        return Err("room id longer than 200 bytes".into());
    }
    if id.chars().any(|c| c.is_control() || c == '/') {
        return Err("room id must not contain control characters or '/'".into());
    }
    Ok(())
}

/// A validated playback state.
#[derive(Debug, Clone, PartialEq)]
pub struct Playback {
    pub track: String,
    /// Position in the track when the state was taken.
    pub position_ms: f64,
    pub playing: bool,
    /// Server wall-clock time (Unix ms) the state was taken at, as the host
    /// estimates it with the `clock` event.
    pub taken_at_ms: f64,
}

fn non_negative(obj: &Map<String, Value>, key: &str) -> Result<f64, String> {
    match obj.get(key) {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Ok(f),
            _ => Err(format!(
                "invalid_playback: {key} must be a non-negative number"
            )),
        },
        None | Some(Value::Null) => Err(format!("invalid_playback: {key} is required")),
        Some(_) => Err(format!("invalid_playback: {key} must be a number")),
    }
}

/// Checks a `playback` payload `{track, position_ms, playing, taken_at_ms}`
/// (other fields are kept and passed on). The error is the reply's reason,
/// `invalid_playback: <why>`.
pub fn validate_playback(payload: &Value) -> Result<Playback, String> {
    let Value::Object(obj) = payload else {
        return Err("invalid_playback: payload must be a JSON object".into());
    };
    let track = match obj.get("track") {
        Some(Value::String(s)) if s.is_empty() => {
            return Err("invalid_playback: track must not be empty".into())
        }
        Some(Value::String(s)) if s.len() > MAX_TRACK_BYTES => {
            return Err(format!(
                "invalid_playback: track longer than {MAX_TRACK_BYTES} bytes"
            ))
        }
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => return Err("invalid_playback: track is required".into()),
        Some(_) => return Err("invalid_playback: track must be a string".into()),
    };
    let position_ms = non_negative(obj, "position_ms")?;
    let playing = match obj.get("playing") {
        Some(Value::Bool(b)) => *b,
        None | Some(Value::Null) => return Err("invalid_playback: playing is required".into()),
        Some(_) => return Err("invalid_playback: playing must be a boolean".into()),
    };
    let taken_at_ms = non_negative(obj, "taken_at_ms")?;
    Ok(Playback {
        track,
        position_ms,
        playing,
        taken_at_ms,
    })
}

impl Playback {
    /// The position in the track at server time `now_ms`: it advances in
    /// real time while playing and stands still while paused. A `now_ms`
    /// before `taken_at_ms` (clock estimate noise) does not rewind it.
    pub fn position_at(&self, now_ms: f64) -> f64 {
        if self.playing {
            self.position_ms + (now_ms - self.taken_at_ms).max(0.0)
        } else {
            self.position_ms
        }
    }
}

/// Whether `room` is listed in the `room_host` claim (an array of room ids,
/// or a single id).
pub fn claims_host(claims: &Map<String, Value>, room: &str) -> bool {
    match claims.get(ROOM_HOST_CLAIM) {
        Some(Value::Array(rooms)) => rooms.iter().any(|r| r.as_str() == Some(room)),
        Some(Value::String(r)) => r == room,
        _ => false,
    }
}

/// Whether `user` (the session's presence key, empty when none) may publish
/// playback in a room whose state is `state`: it is the state's `host`, or
/// its token claims the room (`by_claim`).
pub fn is_host(state: &Value, user: &str, by_claim: bool) -> bool {
    if by_claim {
        return true;
    }
    !user.is_empty() && state.get("host").and_then(Value::as_str) == Some(user)
}

/// The retained playback of a room state, if any.
pub fn retained_playback(state: &Value) -> Option<&Value> {
    state.get("playback").filter(|p| p.is_object())
}

/// Checks an admin patch of a room state (`PUT /realtime/v1/api/rooms/<id>`):
/// an object; `host` a non-empty string or `null`; `playback` a valid
/// playback or `null`.
pub fn validate_patch(patch: &Value) -> Result<(), String> {
    let Value::Object(obj) = patch else {
        return Err("body must be a JSON object, e.g. {\"host\": \"alice\"}".into());
    };
    match obj.get("host") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if !s.is_empty() => {}
        Some(_) => return Err("host must be a non-empty string (a user id) or null".into()),
    }
    match obj.get("playback") {
        None | Some(Value::Null) => {}
        Some(p) => {
            validate_playback(p)?;
        }
    }
    Ok(())
}

/// Shallow merge of `patch` into `state` (a non-object state is replaced by
/// an empty object first); `null` values remove keys.
pub fn merge(state: &mut Value, patch: &Value) {
    if !state.is_object() {
        *state = Value::Object(Map::new());
    }
    let (Value::Object(s), Value::Object(p)) = (state, patch) else {
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            s.remove(k);
        } else {
            s.insert(k.clone(), v.clone());
        }
    }
}

/// The reason of a `clock` push without a numeric `t0`.
pub const CLOCK_SHAPE: &str = "invalid_clock: payload must be {\"t0\": <client time in ms>}";

/// The reply to a `clock` push: `{t0, server_receive_ms, server_send_ms}`.
/// `t0` (the client's send time) is echoed as sent; it must be a number.
pub fn clock_reply(payload: &Value, receive_ms: f64, send_ms: f64) -> Result<Value, String> {
    let t0 = match payload.get("t0") {
        Some(Value::Number(n)) => Value::Number(n.clone()),
        _ => return Err(CLOCK_SHAPE.into()),
    };
    Ok(serde_json::json!({
        "t0": t0,
        "server_receive_ms": receive_ms,
        "server_send_ms": send_ms,
    }))
}

/// NTP's estimate from one `clock` exchange: `(offset, round_trip)` in ms,
/// where `server time ≈ client time + offset`.
/// `offset = ((t1 - t0) + (t2 - t3)) / 2`, `rtt = (t3 - t0) - (t2 - t1)`,
/// with t0 client send, t1 server receive, t2 server send, t3 client receive.
pub fn clock_offset(t0: f64, t1: f64, t2: f64, t3: f64) -> (f64, f64) {
    (((t1 - t0) + (t2 - t3)) / 2.0, (t3 - t0) - (t2 - t1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({"track": "spotify:track:1", "position_ms": 1500, "playing": true, "taken_at_ms": 1_700_000_000_000u64})
    }

    #[test]
    fn lanes_are_parsed() {
        assert_eq!(
            parse_lane("realtime:room:42:audio"),
            Some(("42", Lane::Audio))
        );
        assert_eq!(parse_lane("room:a:b:chat"), Some(("a:b", Lane::Chat)));
        assert_eq!(parse_lane("room:x:reactions"), Some(("x", Lane::Reactions)));
        assert_eq!(parse_lane("room::audio"), None);
        assert_eq!(parse_lane("room:1:video"), None);
        assert_eq!(parse_lane("lobby:1:audio"), None);
        assert_eq!(audio_room("realtime:room:7:audio"), Some("7"));
        assert_eq!(audio_room("realtime:room:7:chat"), None);
        assert_eq!(audio_topic("7"), "realtime:room:7:audio");
    }

    #[test]
    fn good_playback_validates() {
        let p = validate_playback(&good()).unwrap();
        assert_eq!(p.track, "spotify:track:1");
        assert_eq!(p.position_ms, 1500.0);
        assert!(p.playing);
        let mut extra = good();
        extra["title"] = json!("Song");
        assert!(validate_playback(&extra).is_ok());
    }

    #[test]
    fn malformed_playback_is_named() {
        let cases = [
            (json!([1]), "payload must be a JSON object"),
            (
                json!({"position_ms": 1, "playing": true, "taken_at_ms": 1}),
                "track is required",
            ),
            (
                json!({"track": 3, "position_ms": 1, "playing": true, "taken_at_ms": 1}),
                "track must be a string",
            ),
            (
                json!({"track": "", "position_ms": 1, "playing": true, "taken_at_ms": 1}),
                "track must not be empty",
            ),
            (
                json!({"track": "t", "position_ms": -5, "playing": true, "taken_at_ms": 1}),
                "position_ms must be a non-negative number",
            ),
            (
                json!({"track": "t", "position_ms": "10", "playing": true, "taken_at_ms": 1}),
                "position_ms must be a number",
            ),
            (
                json!({"track": "t", "position_ms": 1, "playing": "yes", "taken_at_ms": 1}),
                "playing must be a boolean",
            ),
            (
                json!({"track": "t", "position_ms": 1, "taken_at_ms": 1}),
                "playing is required",
            ),
            (
                json!({"track": "t", "position_ms": 1, "playing": false}),
                "taken_at_ms is required",
            ),
        ];
        for (payload, why) in cases {
            let e = validate_playback(&payload).unwrap_err();
            assert_eq!(e, format!("invalid_playback: {why}"), "{payload}");
        }
        let long = json!({"track": "x".repeat(MAX_TRACK_BYTES + 1), "position_ms": 1, "playing": true, "taken_at_ms": 1});
        assert!(validate_playback(&long)
            .unwrap_err()
            .contains("longer than"));
    }

    #[test]
    fn host_check() {
        let state = json!({"host": "alice"});
        assert!(is_host(&state, "alice", false));
        assert!(!is_host(&state, "bob", false));
        assert!(is_host(&state, "bob", true));
        assert!(!is_host(&json!({}), "", false));
        assert!(!is_host(&json!({"host": ""}), "", false));
        assert!(!is_host(&Value::Null, "alice", false));
    }

    #[test]
    fn host_claim() {
        let claims = json!({"room_host": ["1", "42"]});
        let m = claims.as_object().unwrap();
        assert!(claims_host(m, "42"));
        assert!(!claims_host(m, "4"));
        let single = json!({"room_host": "9"});
        assert!(claims_host(single.as_object().unwrap(), "9"));
        assert!(!claims_host(json!({}).as_object().unwrap(), "9"));
        assert!(!claims_host(
            json!({"room_host": 9}).as_object().unwrap(),
            "9"
        ));
    }

    #[test]
    fn position_math() {
        let p = Playback {
            track: "t".into(),
            position_ms: 1000.0,
            playing: true,
            taken_at_ms: 5000.0,
        };
        assert_eq!(p.position_at(5000.0), 1000.0);
        assert_eq!(p.position_at(7500.0), 3500.0);
        // Clock noise before the taken-at time does not rewind.
        assert_eq!(p.position_at(4990.0), 1000.0);
        let paused = Playback {
            playing: false,
            ..p
        };
        assert_eq!(paused.position_at(99_999.0), 1000.0);
    }

    #[test]
    fn clock_math() {
        // Client 100 ms behind the server, 10 ms each way, 2 ms in the server.
        let (t0, t1, t2, t3) = (1000.0, 1110.0, 1112.0, 1022.0);
        let (offset, rtt) = clock_offset(t0, t1, t2, t3);
        assert_eq!(offset, 100.0);
        assert_eq!(rtt, 20.0);
        let r = clock_reply(&json!({"t0": 1000}), 1110.0, 1112.0).unwrap();
        assert_eq!(
            r,
            json!({"t0": 1000, "server_receive_ms": 1110.0, "server_send_ms": 1112.0})
        );
        assert!(clock_reply(&json!({}), 1.0, 2.0).is_err());
        assert!(clock_reply(&json!({"t0": "now"}), 1.0, 2.0).is_err());
    }

    #[test]
    fn patches_merge_and_validate() {
        let mut state = Value::Null;
        merge(&mut state, &json!({"host": "alice"}));
        assert_eq!(state, json!({"host": "alice"}));
        merge(&mut state, &json!({"playback": good()}));
        assert_eq!(state["host"], "alice");
        assert_eq!(retained_playback(&state), Some(&good()));
        merge(&mut state, &json!({"host": null}));
        assert!(state.get("host").is_none());
        assert!(validate_patch(&json!({"host": "bob"})).is_ok());
        assert!(validate_patch(&json!({"host": null})).is_ok());
        assert!(validate_patch(&json!({"host": ""})).is_err());
        assert!(validate_patch(&json!({"host": 3})).is_err());
        assert!(validate_patch(&json!("bob")).is_err());
        assert!(validate_patch(&json!({"playback": {"track": 1}})).is_err());
        assert!(validate_room_id("42").is_ok());
        assert!(validate_room_id("").is_err());
        assert!(validate_room_id("a/b").is_err());
    }
}
