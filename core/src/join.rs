//! What a `phx_join` asks for, parsed and checked without I/O.

use serde_json::Value;

/// Longest topic accepted: binary frames (vsn 2.0.0) carry its length in one
/// byte, so a longer topic could never be broadcast to realtime-js.
pub const MAX_TOPIC_BYTES: usize = 255;

/// The join's `config`, with Supabase's defaults for what is missing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinConfig {
    /// `broadcast.self`: the sender receives its own broadcasts.
    pub broadcast_self: bool,
    /// `broadcast.ack`: the server acknowledges each broadcast push.
    pub broadcast_ack: bool,
    /// `presence.key`: empty means "generate one".
    pub presence_key: String,
    /// `presence.enabled`: whether to send `presence_state` after the join.
    pub presence_enabled: bool,
    /// `access_token` sent with the join, if any.
    pub access_token: Option<String>,
    /// `broadcast.replay`: stored messages to send after the join reply.
    pub replay: Option<Replay>,
    /// `presence.friends` (Chorus extension): keys that belong in this
    /// client's relevant set in a large room (besides a `friends` JWT claim).
    pub friends: Vec<String>,
    /// `chorus.batch` (Chorus extension): in peak mode, receive chat as one
    /// `batch` frame per period instead of one frame per message.
    pub batch: bool,
    /// `config.private`: the join asks for a private channel, authorized by
    /// the node's topic policies (`crate::policy`).
    pub private: bool,
}

/// The refusal of a join that binds `postgres_changes`: Chorus has no
/// database change feed, and an `ok` with the bindings dropped would leave
/// the client waiting for changes that never come.
pub const POSTGRES_CHANGES_REFUSED: &str = "postgres_changes is not supported: this server has no database change feed (join without postgres_changes bindings)";

/// Most entries of `config.presence.friends`.
pub const MAX_FRIENDS: usize = 500;
/// Longest presence key accepted in a friends list.
pub const MAX_KEY_BYTES: usize = 256;

/// Reads a list of presence keys (`friends`, subscriptions): strings of at
/// most [`MAX_KEY_BYTES`], at most `max` of them. `what` names the field in
/// errors.
pub fn parse_keys(v: &Value, what: &str, max: usize) -> Result<Vec<String>, String> {
    let Value::Array(items) = v else {
        return Err(format!("{what} must be a list of strings"));
    };
    if items.len() > max {
        return Err(format!("{what} has more than {max} entries"));
    }
    items
        .iter()
        .map(|i| match i {
            Value::String(s) if !s.is_empty() && s.len() <= MAX_KEY_BYTES => Ok(s.clone()),
            _ => Err(format!(
                "{what} must hold non-empty strings of at most {MAX_KEY_BYTES} bytes"
            )),
        })
        .collect()
}

/// Supabase's `config.broadcast.replay {since, limit}`: replay the stored
/// messages inserted at or after `since` (Unix ms), at most `limit` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    pub since_ms: u64,
    pub limit: u32,
}

/// Messages replayed when `replay.limit` is absent (Supabase's default).
pub const DEFAULT_REPLAY_LIMIT: u32 = 25;

/// Checks a presence key against `limits.presence_key_bytes`.
pub fn check_presence_key(key: &str, max: u32) -> Result<(), String> {
    if key.len() > max as usize {
        return Err(format!(
            "presence_key_too_long: config.presence.key is {} bytes, at most {max} (limits.presence_key_bytes)",
            key.len()
        ));
    }
    Ok(())
}

/// Checks a topic a client wants to join or publish to.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("join without a topic".into());
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(format!("topic longer than {MAX_TOPIC_BYTES} bytes"));
    }
    if topic == crate::phoenix::PHOENIX_TOPIC {
        return Err("the phoenix topic cannot be joined".into());
    }
    Ok(())
}

/// Reads a `phx_join` payload. Wrongly typed fields are errors (a client bug
/// better reported than ignored); absent ones take defaults.
pub fn parse_join(payload: &Value) -> Result<JoinConfig, String> {
    let empty = serde_json::Map::new();
    let root = match payload {
        Value::Object(m) => m,
        Value::Null => &empty,
        _ => return Err("join payload must be an object".into()),
    };
    let config = match root.get("config") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err("config must be an object".into()),
    };
    let section = |name: &str| -> Result<&serde_json::Map<String, Value>, String> {
        match config.get(name) {
            None | Some(Value::Null) => Ok(&empty),
            Some(Value::Object(m)) => Ok(m),
            Some(_) => Err(format!("config.{name} must be an object")),
        }
    };
    let flag = |m: &serde_json::Map<String, Value>, path: &str, key: &str| match m.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("config.{path}.{key} must be a boolean")),
    };
    let broadcast = section("broadcast")?;
    let presence = section("presence")?;
    let chorus = section("chorus")?;
    let friends = match presence.get("friends") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => parse_keys(v, "config.presence.friends", MAX_FRIENDS)?,
    };
    let presence_key = match presence.get("key") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err("config.presence.key must be a string".into()),
    };
    match config.get("postgres_changes") {
        None | Some(Value::Null) => {}
        Some(Value::Array(bindings)) if bindings.is_empty() => {}
        Some(Value::Array(_)) => return Err(POSTGRES_CHANGES_REFUSED.into()),
        Some(_) => return Err("config.postgres_changes must be a list".into()),
    }
    let private = match config.get("private") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err("config.private must be a boolean".into()),
    };
    let replay = match broadcast.get("replay") {
        None | Some(Value::Null) => None,
        Some(Value::Object(r)) => Some(parse_replay(r)?),
        Some(_) => return Err("config.broadcast.replay must be an object".into()),
    };
    let access_token = match root.get("access_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("access_token must be a string".into()),
    };
    Ok(JoinConfig {
        broadcast_self: flag(broadcast, "broadcast", "self")?,
        broadcast_ack: flag(broadcast, "broadcast", "ack")?,
        presence_key,
        presence_enabled: flag(presence, "presence", "enabled")?,
        access_token,
        replay,
        friends,
        batch: flag(chorus, "chorus", "batch")?,
        private,
    })
}

fn parse_replay(r: &serde_json::Map<String, Value>) -> Result<Replay, String> {
    let max = crate::data::MAX_HISTORY_LIMIT;
    let since_ms = match r.get("since") {
        Some(Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
            .ok_or("config.broadcast.replay.since must be a non-negative number of ms")?,
        _ => return Err("config.broadcast.replay.since must be a number (Unix ms)".into()),
    };
    let limit = match r.get("limit") {
        None | Some(Value::Null) => DEFAULT_REPLAY_LIMIT,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=u64::from(max)).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| {
                format!("config.broadcast.replay.limit must be an integer from 1 to {max}")
            })?,
    };
    Ok(Replay { since_ms, limit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chorus_extensions_in_the_join_config() {
        let c = parse_join(&json!({"config": {
            "presence": {"key": "a", "friends": ["b", "c"]},
            "chorus": {"batch": true}
        }}))
        .unwrap();
        assert_eq!(c.friends, vec!["b".to_string(), "c".to_string()]);
        assert!(c.batch);
        let plain = parse_join(&json!({"config": {}})).unwrap();
        assert!(plain.friends.is_empty() && !plain.batch);
        for bad in [
            json!({"config": {"presence": {"friends": "b"}}}),
            json!({"config": {"presence": {"friends": [1]}}}),
            json!({"config": {"presence": {"friends": [""]}}}),
            json!({"config": {"chorus": {"batch": "yes"}}}),
            json!({"config": {"chorus": []}}),
        ] {
            assert!(parse_join(&bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_FRIENDS).map(|i| i.to_string()).collect();
        assert!(parse_join(&json!({"config": {"presence": {"friends": many}}})).is_err());
    }

    #[test]
    fn realtime_js_join_payload_parses() {
        let p = json!({"config": {"broadcast": {"ack": true, "self": false},
            "presence": {"key": "u1", "enabled": true}, "postgres_changes": [], "private": false},
            "access_token": "tok"});
        let c = parse_join(&p).unwrap();
        assert!(c.broadcast_ack && !c.broadcast_self && c.presence_enabled);
        assert_eq!(c.presence_key, "u1");
        assert_eq!(c.access_token.as_deref(), Some("tok"));
    }

    #[test]
    fn postgres_changes_bindings_are_refused_with_a_reason() {
        let p = json!({"config": {"postgres_changes": [
            {"event": "*", "schema": "public", "table": "messages"}
        ]}});
        assert_eq!(parse_join(&p).unwrap_err(), POSTGRES_CHANGES_REFUSED);
        assert!(parse_join(&json!({"config": {"postgres_changes": []}})).is_ok());
        assert!(parse_join(&json!({"config": {"postgres_changes": {}}})).is_err());
    }

    #[test]
    fn long_presence_keys_are_refused_naming_the_limit() {
        assert!(check_presence_key(&"k".repeat(256), 256).is_ok());
        let e = check_presence_key(&"k".repeat(257), 256).unwrap_err();
        assert!(
            e.contains("limits.presence_key_bytes") && e.contains("257"),
            "{e}"
        );
    }

    #[test]
    fn private_is_read() {
        assert!(
            parse_join(&json!({"config": {"private": true}}))
                .unwrap()
                .private
        );
        assert!(
            !parse_join(&json!({"config": {"private": false}}))
                .unwrap()
                .private
        );
        assert!(!parse_join(&json!({})).unwrap().private);
        assert!(parse_join(&json!({"config": {"private": "yes"}})).is_err());
    }

    #[test]
    fn phoenix_js_empty_join_takes_defaults() {
        assert_eq!(parse_join(&json!({})).unwrap(), JoinConfig::default());
        assert_eq!(parse_join(&Value::Null).unwrap(), JoinConfig::default());
    }

    #[test]
    fn wrong_types_are_named() {
        let e = parse_join(&json!({"config": {"broadcast": {"self": "yes"}}})).unwrap_err();
        assert_eq!(e, "config.broadcast.self must be a boolean");
        assert!(parse_join(&json!([1])).is_err());
    }

    #[test]
    fn replay_is_parsed_and_checked() {
        let c = parse_join(
            &json!({"config": {"broadcast": {"replay": {"since": 1700000000000u64, "limit": 10}}}}),
        )
        .unwrap();
        assert_eq!(
            c.replay,
            Some(Replay {
                since_ms: 1_700_000_000_000,
                limit: 10
            })
        );
        let c = parse_join(&json!({"config": {"broadcast": {"replay": {"since": 5}}}})).unwrap();
        assert_eq!(
            c.replay,
            Some(Replay {
                since_ms: 5,
                limit: DEFAULT_REPLAY_LIMIT
            })
        );
        assert_eq!(parse_join(&json!({})).unwrap().replay, None);
        for bad in [
            json!({"since": "yesterday"}),
            json!({}),
            json!({"since": -1}),
            json!({"since": 1, "limit": 0}),
            json!({"since": 1, "limit": 5000}),
            json!({"since": 1, "limit": "ten"}),
        ] {
            let e = parse_join(&json!({"config": {"broadcast": {"replay": bad}}})).unwrap_err();
            assert!(e.starts_with("config.broadcast.replay."), "{bad}: {e}");
        }
        assert!(parse_join(&json!({"config": {"broadcast": {"replay": 3}}})).is_err());
    }

    #[test]
    fn topics_are_checked() {
        assert!(validate_topic("realtime:room").is_ok());
        assert!(validate_topic("").is_err());
        assert!(validate_topic("phoenix").is_err());
        assert!(validate_topic(&"x".repeat(256)).is_err());
    }
}
