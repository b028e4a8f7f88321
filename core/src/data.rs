//! The data-service ABI: what a guest asks the host's data service and what
//! it answers. Serialized as JSON across the `chorus::data` host call, so the
//! guest never opens a database itself and the host can coalesce, cache and
//! route requests (Discord's data services).

use serde::{Deserialize, Serialize};

/// One request from a guest process to the data service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum DataRequest {
    /// Persist a message; answered once the backend has committed it.
    Append {
        topic: String,
        event: String,
        payload: serde_json::Value,
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
    pub payload: serde_json::Value,
    /// Milliseconds since the Unix epoch, from the id.
    pub inserted_at: u64,
}

/// The answer to a [`DataRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_json() {
        let r = DataRequest::History {
            topic: "room:1:chat".into(),
            before: Some(7),
            after: None,
            limit: 50,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"op\":\"history\""), "{text}");
        assert_eq!(serde_json::from_str::<DataRequest>(&text).unwrap(), r);
    }
}
