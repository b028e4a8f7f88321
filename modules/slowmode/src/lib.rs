//! `slowmode`: each user may post at most `messages` chat messages per
//! `per_seconds` in a room; past that a message is refused with a reason that
//! says how long to wait. What `moderation` does not show: state kept across
//! messages (per room and user, bounded), the publisher's identity and the
//! node's clock (`Chat::user`, `Chat::at_ms`).
//!
//! Settings (`slowmode.toml` beside `slowmode.wasm` in `modules.dir`):
//!
//! | key | default | |
//! |---|---|---|
//! | `messages` | 5 | messages one user may post in one room per window |
//! | `per_seconds` | 10 | the window |
//! | `max_tracked` | 10000 | (room, user) pairs remembered; past it the least recently active is forgotten |
//!
//! Messages without a user (posted through the REST API by a server) are
//! never limited.

use std::collections::{HashMap, VecDeque};

use chorus_module::{export_module, Chat, Module, Verdict};
use serde_json::Value;

/// The limit and what each (room, user) posted inside the window.
pub struct Slowmode {
    messages: usize,
    window_ms: u64,
    max_tracked: usize,
    /// Times (ms) of the recent messages of each (room, user), oldest first,
    /// at most `messages` of them.
    recent: HashMap<(String, String), VecDeque<u64>>,
}

fn positive(settings: &Value, key: &str, default: u64) -> Result<u64, String> {
    match settings.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{key}: expected a whole number above 0, got {v}")),
    }
}

impl Slowmode {
    /// Forgets pairs whose window has passed; if the table is still full,
    /// the least recently active pair.
    fn make_room(&mut self, now: u64) {
        let window = self.window_ms;
        self.recent.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.saturating_sub(*t) < window)
        });
        if self.recent.len() >= self.max_tracked {
            let oldest = self
                .recent
                .iter()
                .min_by_key(|(_, times)| times.back().copied().unwrap_or(0))
                .map(|(key, _)| key.clone());
            if let Some(key) = oldest {
                self.recent.remove(&key);
            }
        }
    }
}

impl Module for Slowmode {
    fn init(settings: &Value) -> Result<Self, String> {
        let Some(map) = settings.as_object() else {
            return Err("settings must be a table".into());
        };
        if let Some(key) = map
            .keys()
            .find(|k| !matches!(k.as_str(), "messages" | "per_seconds" | "max_tracked"))
        {
            return Err(format!(
                "unknown setting {key:?} (known: messages, per_seconds, max_tracked)"
            ));
        }
        Ok(Slowmode {
            messages: positive(settings, "messages", 5)? as usize,
            window_ms: positive(settings, "per_seconds", 10)?.saturating_mul(1000),
            max_tracked: positive(settings, "max_tracked", 10_000)? as usize,
            recent: HashMap::new(),
        })
    }

    fn on_chat(&mut self, chat: &Chat<'_>) -> Verdict {
        let Some(user) = chat.user else {
            return Verdict::Deliver;
        };
        let now = chat.at_ms;
        let key = (chat.room.to_string(), user.to_string());
        if !self.recent.contains_key(&key) && self.recent.len() >= self.max_tracked {
            self.make_room(now);
        }
        let times = self.recent.entry(key).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_sub(*t) >= self.window_ms)
        {
            times.pop_front();
        }
        if times.len() >= self.messages {
            let oldest = times.front().copied().unwrap_or(now);
            let wait_ms = (oldest + self.window_ms).saturating_sub(now);
            return Verdict::Reject(format!(
                "slowmode: at most {} messages per {} s in this room; wait {} s",
                self.messages,
                self.window_ms / 1000,
                wait_ms.div_ceil(1000)
            ));
        }
        times.push_back(now);
        Verdict::Deliver
    }
}

export_module!(Slowmode);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn module(settings: Value) -> Slowmode {
        Slowmode::init(&settings).expect("valid settings")
    }

    fn post(m: &mut Slowmode, room: &str, user: Option<&str>, at_ms: u64) -> Verdict {
        let payload = json!({"text": "hi"});
        m.on_chat(&Chat {
            room,
            topic: "",
            event: "msg",
            user,
            payload: &payload,
            at_ms,
        })
    }

    #[test]
    fn limits_each_user_per_room_within_the_window() {
        let mut m = module(json!({"messages": 2, "per_seconds": 10}));
        assert_eq!(post(&mut m, "r", Some("ana"), 1_000), Verdict::Deliver);
        assert_eq!(post(&mut m, "r", Some("ana"), 2_000), Verdict::Deliver);
        assert_eq!(
            post(&mut m, "r", Some("ana"), 2_500),
            Verdict::Reject("slowmode: at most 2 messages per 10 s in this room; wait 9 s".into())
        );
        // Another user, another room: their own budgets.
        assert_eq!(post(&mut m, "r", Some("bo"), 2_500), Verdict::Deliver);
        assert_eq!(post(&mut m, "s", Some("ana"), 2_500), Verdict::Deliver);
        // A refused message does not count; the window slides.
        assert_eq!(post(&mut m, "r", Some("ana"), 11_000), Verdict::Deliver);
        assert!(matches!(
            post(&mut m, "r", Some("ana"), 11_500),
            Verdict::Reject(_)
        ));
        assert_eq!(post(&mut m, "r", Some("ana"), 12_000), Verdict::Deliver);
        // REST posts have no user and are never limited.
        for t in 0..10 {
            assert_eq!(post(&mut m, "r", None, 12_000 + t), Verdict::Deliver);
        }
    }

    #[test]
    fn memory_is_bounded_by_max_tracked() {
        let mut m = module(json!({"messages": 1, "per_seconds": 60, "max_tracked": 3}));
        for (i, user) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            assert_eq!(post(&mut m, "r", Some(user), i as u64), Verdict::Deliver);
            assert!(m.recent.len() <= 3);
        }
        // The least recently active ("a", "b") were forgotten; "e" is limited.
        assert_eq!(post(&mut m, "r", Some("a"), 10), Verdict::Deliver);
        assert!(matches!(
            post(&mut m, "r", Some("e"), 10),
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn settings_are_checked() {
        for (settings, want) in [
            (json!({"messages": 0}), "messages:"),
            (json!({"per_seconds": "10"}), "per_seconds:"),
            (json!({"max_tracked": -1}), "max_tracked:"),
            (json!({"burst": 3}), "\"burst\""),
        ] {
            let err = Slowmode::init(&settings).err().unwrap_or_default();
            assert!(err.contains(want), "{settings}: {err}");
        }
        let m = module(json!({}));
        assert_eq!(
            (m.messages, m.window_ms, m.max_tracked),
            (5, 10_000, 10_000)
        );
    }
}
