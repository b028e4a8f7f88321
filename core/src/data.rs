//! The data-service ABI: what a guest asks the host's data service and what
//! it answers. Serialized as JSON across the `chorus::data` host call, so the
//! guest never opens a database itself and the host can coalesce, cache and
//! route requests (Discord's data services).
//!
//! Message payloads travel as [`RawJson`]: the JSON text the client sent,
//! stored and returned as it is, never parsed into a value on the way. The
//! enums are externally tagged (`{"append": {...}}`), the representation in
//! which raw JSON values survive serde.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// JSON text carried as it is (checked to be one valid JSON value).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl RawJson {
    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The JSON text of a value.
    pub fn of(value: &serde_json::Value) -> RawJson {
        // A `Value` always serializes to valid JSON.
        match RawValue::from_string(value.to_string()) {
            Ok(raw) => RawJson(raw),
            Err(_) => RawJson::null(),
        }
    }

    /// Text read back from storage: itself when it is JSON, else (a row
    /// written by something else) the text as a JSON string.
    pub fn from_stored(text: String) -> RawJson {
        if serde_json::from_str::<&RawValue>(&text).is_ok() {
            if let Ok(raw) = RawValue::from_string(text) {
                return RawJson(raw);
            }
            return RawJson::null();
        }
        RawJson::of(&serde_json::Value::String(text))
    }

    fn null() -> RawJson {
        RawJson(RawValue::NULL.to_owned())
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// Checks that `text` is one JSON value and wraps it.
pub fn raw_json(text: &[u8]) -> Result<RawJson, String> {
    let text = std::str::from_utf8(text).map_err(|e| format!("payload is not UTF-8: {e}"))?;
    RawValue::from_string(text.to_owned())
        .map(RawJson)
        .map_err(|e| format!("payload is not JSON: {e}"))
}

/// One request from a guest process to the data service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataRequest {
    /// Persist a message; answered once the backend has committed it.
    Append {
        topic: String,
        event: String,
        payload: RawJson,
    },
    /// Messages of a topic, newest first, strictly before/after the given ids.
    History {
        topic: String,
        before: Option<u64>,
        after: Option<u64>,
        limit: u32,
    },
    /// The stored state of a room (`None` when never set).
    GetRoomState { room: String },
    /// Replace the stored state of a room.
    PutRoomState {
        room: String,
        state: serde_json::Value,
    },
}

/// A stored message as the history API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Snowflake id, as a decimal string (JSON numbers lose 64-bit precision).
    pub id: String,
    pub topic: String,
    pub event: String,
    pub payload: RawJson,
    /// Milliseconds since the Unix epoch, from the id.
    pub inserted_at: u64,
}

/// The answer to a [`DataRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataResponse {
    Appended {
        id: String,
        inserted_at: u64,
    },
    Messages {
        messages: Vec<StoredMessage>,
    },
    RoomState {
        state: Option<serde_json::Value>,
    },
    Done,
    /// The request failed; `reason` is safe to show to the client.
    Error {
        reason: String,
    },
}

/// Most messages one history request may return.
pub const MAX_HISTORY_LIMIT: u32 = 1000;
/// Messages a history request returns when it names no `limit`.
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;

/// A checked history range, from the query string of
/// `GET /realtime/v1/api/channels/<topic>/messages?limit=&before=&after=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRange {
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: u32,
}

/// Parses the history query parameters; the error is the 400's reason.
/// Ids are decimal Snowflake ids; `before` must be greater than `after`;
/// `limit` is 1..=[`MAX_HISTORY_LIMIT`] (default [`DEFAULT_HISTORY_LIMIT`]).
pub fn parse_history_range(
    limit: Option<&str>,
    before: Option<&str>,
    after: Option<&str>,
) -> Result<HistoryRange, String> {
    fn id(name: &str, v: Option<&str>) -> Result<Option<u64>, String> {
        match v {
            None | Some("") => Ok(None),
            Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
                format!("{name} must be a message id (a decimal 64-bit integer), got {v:?}")
            }),
        }
    }
    let before = id("before", before)?;
    let after = id("after", after)?;
    let limit = match limit {
        None | Some("") => DEFAULT_HISTORY_LIMIT,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n))
            .ok_or_else(|| {
                format!("limit must be an integer from 1 to {MAX_HISTORY_LIMIT}, got {v:?}")
            })?,
    };
    if let (Some(b), Some(a)) = (before, after) {
        if b <= a {
            return Err(format!(
                "empty range: before ({b}) must be greater than after ({a})"
            ));
        }
    }
    Ok(HistoryRange {
        before,
        after,
        limit,
    })
}

/// The history request that replays a topic's messages stored at or after
/// Unix time `since_ms` (Supabase's `config.broadcast.replay`): the newest
/// `limit` of them (the answer comes newest first; replay sends it reversed).
pub fn replay_request(topic: &str, since_ms: u64, limit: u32) -> DataRequest {
    let first = crate::snowflake::first_id_at(since_ms).as_u64();
    DataRequest::History {
        topic: topic.to_string(),
        before: None,
        after: first.checked_sub(1),
        limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_ranges_are_checked() {
        assert_eq!(
            parse_history_range(None, None, None),
            Ok(HistoryRange {
                before: None,
                after: None,
                limit: DEFAULT_HISTORY_LIMIT
            })
        );
        assert_eq!(
            parse_history_range(Some("10"), Some("9"), Some("3")),
            Ok(HistoryRange {
                before: Some(9),
                after: Some(3),
                limit: 10
            })
        );
        assert_eq!(
            parse_history_range(Some("1000"), None, None).unwrap().limit,
            1000
        );
        for (limit, before, after, needle) in [
            (Some("0"), None, None, "limit must be"),
            (Some("1001"), None, None, "limit must be"),
            (Some("-1"), None, None, "limit must be"),
            (Some("x"), None, None, "limit must be"),
            (None, Some("abc"), None, "before must be a message id"),
            (None, None, Some("1e3"), "after must be a message id"),
            (None, Some("-5"), None, "before must be"),
            (None, Some("18446744073709551616"), None, "before must be"),
            (None, Some("5"), Some("5"), "empty range"),
            (None, Some("4"), Some("5"), "empty range"),
        ] {
            let e = parse_history_range(limit, before, after).unwrap_err();
            assert!(e.contains(needle), "{limit:?} {before:?} {after:?}: {e}");
        }
    }

    #[test]
    fn replay_selects_ids_at_or_after_since() {
        let since = crate::snowflake::CHORUS_EPOCH_MS + 5_000;
        let DataRequest::History {
            after,
            before,
            limit,
            ..
        } = replay_request("t", since, 7)
        else {
            panic!("not a history request");
        };
        assert_eq!((before, limit), (None, 7));
        let first = crate::snowflake::first_id_at(since).as_u64();
        assert_eq!(after, Some(first - 1), "after is exclusive");
        // Before the epoch: everything.
        let DataRequest::History { after, .. } = replay_request("t", 0, 7) else {
            panic!("not a history request");
        };
        assert_eq!(after, None);
    }

    #[test]
    fn requests_round_trip_through_json() {
        let r = DataRequest::History {
            topic: "room:1:chat".into(),
            before: Some(7),
            after: None,
            limit: 50,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with("{\"history\":"), "{text}");
        assert_eq!(serde_json::from_str::<DataRequest>(&text).unwrap(), r);
    }

    #[test]
    fn payloads_travel_as_the_text_they_were() {
        let text = br#"{"b":1, "a" : [ 2.50 ]}"#;
        let r = DataRequest::Append {
            topic: "t".into(),
            event: "e".into(),
            payload: raw_json(text).unwrap(),
        };
        let wire = serde_json::to_string(&r).unwrap();
        assert!(wire.contains(r#"{"b":1, "a" : [ 2.50 ]}"#), "{wire}");
        let back: DataRequest = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, r);
        let answer = DataResponse::Messages {
            messages: vec![StoredMessage {
                id: "1".into(),
                topic: "t".into(),
                event: "e".into(),
                payload: raw_json(b"[1, 2]").unwrap(),
                inserted_at: 5,
            }],
        };
        let wire = serde_json::to_string(&answer).unwrap();
        assert_eq!(serde_json::from_str::<DataResponse>(&wire).unwrap(), answer);
        assert!(raw_json(b"{").is_err());
        assert!(raw_json(b"\xff").is_err());
    }
}
