//! Lanes of a socket's outbound queue and the reaction counts that replace
//! individual reactions under backpressure or in peak mode. Pure: the host's
//! outlets (`host-bridge/src/outlet.rs`) and the channel processes share it.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::room::{self, parse_lane};

/// The broadcast event clients send on a reactions lane.
pub const REACTION_EVENT: &str = "reaction";
/// The broadcast event carrying aggregated reaction counts.
pub const REACTION_COUNTS_EVENT: &str = "reaction_counts";
/// Longest reaction key counted as itself; longer keys count as `other`.
pub const MAX_REACTION_KEY_BYTES: usize = 32;

/// Priority class of an outbound frame, highest first. The numbers are the
/// host-call ABI (`chorus::outlet_send`, `chorus::fanout`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[repr(u32)]
pub enum Lane {
    /// Replies, presence, `system`, errors, closes: never dropped.
    Control = 0,
    /// A room's audio lane: only the latest unwritten frame per topic is kept.
    Audio = 1,
    /// Chat and every topic that is not a room lane: never dropped; past the
    /// queue bound the socket is closed as a slow consumer.
    Chat = 2,
    /// A room's reactions: past a bound, counted instead of queued.
    Reactions = 3,
}

impl Lane {
    /// The lane with ABI number `n`.
    pub fn from_u32(n: u32) -> Option<Lane> {
        match n {
            0 => Some(Lane::Control),
            1 => Some(Lane::Audio),
            2 => Some(Lane::Chat),
            3 => Some(Lane::Reactions),
            _ => None,
        }
    }

    /// The lane of a broadcast on `topic`.
    pub fn of_broadcast(topic: &str) -> Lane {
        match parse_lane(topic) {
            Some((_, room::Lane::Audio)) => Lane::Audio,
            Some((_, room::Lane::Reactions)) => Lane::Reactions,
            _ => Lane::Chat,
        }
    }
}

/// What a reaction counts as: the payload's `emoji` string (at most
/// [`MAX_REACTION_KEY_BYTES`]), else the event name.
pub fn reaction_key(event: &str, payload: crate::frame::BodyRef<'_>) -> String {
    #[derive(serde::Deserialize)]
    struct Reaction<'a> {
        #[serde(borrow)]
        emoji: Option<&'a serde_json::value::RawValue>,
    }
    let emoji = match payload {
        crate::frame::BodyRef::Json(json) => serde_json::from_slice::<Reaction>(json)
            .ok()
            .and_then(|r| serde_json::from_str::<std::borrow::Cow<str>>(r.emoji?.get()).ok()),
        crate::frame::BodyRef::Binary(_) => None,
    };
    let key = emoji.as_deref().unwrap_or(event);
    if key.is_empty() || key.len() > MAX_REACTION_KEY_BYTES {
        "other".to_string()
    } else {
        key.to_string()
    }
}

/// The payload of a `reaction_counts` broadcast: counts per key, plus
/// `aggregated: true` (backpressure) or `interval_ms` (peak mode).
pub fn reaction_counts_payload(counts: &BTreeMap<String, u64>, interval_ms: Option<u64>) -> Value {
    let mut v = json!({ "counts": counts });
    match interval_ms {
        Some(ms) => v["interval_ms"] = json!(ms),
        None => v["aggregated"] = json!(true),
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_of_topics() {
        assert_eq!(Lane::of_broadcast("realtime:room:r1:audio"), Lane::Audio);
        assert_eq!(Lane::of_broadcast("room:r1:reactions"), Lane::Reactions);
        assert_eq!(Lane::of_broadcast("room:r1:chat"), Lane::Chat);
        assert_eq!(Lane::of_broadcast("realtime:lobby"), Lane::Chat);
        for n in 0..4 {
            assert_eq!(Lane::from_u32(n).map(|l| l as u32), Some(n));
        }
        assert_eq!(Lane::from_u32(4), None);
        assert!(Lane::Control < Lane::Audio && Lane::Chat < Lane::Reactions);
    }

    #[test]
    fn reaction_keys() {
        let key = |event: &str, v: Value| {
            let text = v.to_string();
            reaction_key(event, crate::frame::BodyRef::Json(text.as_bytes()))
        };
        assert_eq!(key("reaction", json!({"emoji": "🔥"})), "🔥");
        assert_eq!(key("clap", json!({})), "clap");
        assert_eq!(key("reaction", json!({"emoji": 3})), "reaction");
        assert_eq!(key("reaction", json!([1])), "reaction");
        assert_eq!(
            reaction_key("wave", crate::frame::BodyRef::Binary(b"\x00")),
            "wave"
        );
        let long = "x".repeat(MAX_REACTION_KEY_BYTES + 1);
        assert_eq!(key("reaction", json!({ "emoji": long })), "other");
    }

    #[test]
    fn counts_payloads() {
        let mut c = BTreeMap::new();
        c.insert("🔥".to_string(), 3u64);
        assert_eq!(
            reaction_counts_payload(&c, None),
            json!({"counts": {"🔥": 3}, "aggregated": true})
        );
        assert_eq!(
            reaction_counts_payload(&c, Some(500)),
            json!({"counts": {"🔥": 3}, "interval_ms": 500})
        );
    }
}
