//! Client message ids on chat lanes (sans-IO): a client may put a string
//! `msg_id` in a chat broadcast's payload; a retry of the same id by the
//! same user within `limits.dedupe_window_ms` is acknowledged again without
//! being stored or delivered twice. A chat lane's channel remembers the ids
//! it stored in a [`Window`] bounded by time and by bytes
//! (`limits.dedupe_bytes`, the oldest go first).
//!
//! Only stored messages are remembered: a message the store or a module
//! refused can be retried with the same id.

use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use serde_json::value::RawValue;

/// The payload field carrying the client's message id.
pub const FIELD: &str = "msg_id";
/// Longest `msg_id` accepted, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// What one remembered id costs besides its strings (map and queue slots).
const ENTRY_OVERHEAD: usize = 96;

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    msg_id: Option<&'a RawValue>,
}

/// The `msg_id` of a chat payload (JSON text): `None` when the payload is
/// not an object or has none (or `null`); an error naming the field when it is not a
/// string of 1 to [`MAX_ID_BYTES`] bytes.
pub fn client_id(payload: &[u8]) -> Result<Option<String>, String> {
    let starts_object = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if !starts_object {
        return Ok(None);
    }
    let shape = || format!("{FIELD} must be a string of 1 to {MAX_ID_BYTES} bytes");
    let probe: Probe<'_> =
        serde_json::from_slice(payload).map_err(|e| format!("{}: {e}", shape()))?;
    let Some(raw) = probe.msg_id else {
        return Ok(None);
    };
    match serde_json::from_str::<String>(raw.get()) {
        Ok(id) if !id.is_empty() && id.len() <= MAX_ID_BYTES => Ok(Some(id)),
        _ => Err(shape()),
    }
}

type Key = (String, String);

/// The ids a chat lane stored lately, per user, with the stored message's
/// id, within a time window and a byte budget.
#[derive(Debug)]
pub struct Window {
    window_ms: u64,
    budget: usize,
    bytes: usize,
    /// Keys in the order they were remembered, with when.
    order: VecDeque<(u64, Key)>,
    stored: HashMap<Key, String>,
}

fn cost(key: &Key, stored: &str) -> usize {
    2 * (key.0.len() + key.1.len()) + stored.len() + ENTRY_OVERHEAD
}

impl Window {
    pub fn new(window_ms: u64, budget_bytes: u32) -> Window {
        Window {
            window_ms,
            budget: budget_bytes as usize,
            bytes: 0,
            order: VecDeque::new(),
            stored: HashMap::new(),
        }
    }

    /// The stored message id of `user`'s `msg_id`, if remembered at `now_ms`.
    pub fn seen(&mut self, user: &str, msg_id: &str, now_ms: u64) -> Option<&str> {
        self.expire(now_ms);
        self.stored
            .get(&(user.to_owned(), msg_id.to_owned()))
            .map(String::as_str)
    }

    /// Remembers that `user`'s `msg_id` was stored as `stored` at `now_ms`.
    pub fn remember(&mut self, user: &str, msg_id: &str, stored: &str, now_ms: u64) {
        self.expire(now_ms);
        let key = (user.to_owned(), msg_id.to_owned());
        let size = cost(&key, stored);
        if size > self.budget || self.stored.contains_key(&key) {
            return;
        }
        while self.bytes + size > self.budget {
            if !self.forget_oldest() {
                break;
            }
        }
        self.bytes += size;
        self.stored.insert(key.clone(), stored.to_owned());
        self.order.push_back((now_ms, key));
    }

    /// Ids remembered now.
    pub fn len(&self) -> usize {
        self.stored.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stored.is_empty()
    }

    /// Bytes the remembered ids count as (within the budget).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn expire(&mut self, now_ms: u64) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| at.saturating_add(self.window_ms) <= now_ms)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) -> bool {
        let Some((_, key)) = self.order.pop_front() else {
            return false;
        };
        if let Some(stored) = self.stored.remove(&key) {
            self.bytes -= cost(&key, &stored);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_read_from_the_payload_object() {
        assert_eq!(
            client_id(br#"{"text":"hi","msg_id":"a-1"}"#),
            Ok(Some("a-1".into()))
        );
        assert_eq!(client_id(br#" {"text":"hi"}"#), Ok(None));
        assert_eq!(client_id(br#"["msg_id"]"#), Ok(None), "not an object");
        assert_eq!(client_id(br#""msg_id""#), Ok(None));
        assert_eq!(client_id(br#"{"msg_id":null}"#), Ok(None), "null is no id");
        for bad in [
            &br#"{"msg_id":7}"#[..],
            br#"{"msg_id":""}"#,
            br#"{"msg_id":"a","msg_id":"b"}"#,
        ] {
            let e = client_id(bad).unwrap_err();
            assert!(e.contains("msg_id must be a string"), "{e}");
        }
        let long = format!(r#"{{"msg_id":"{}"}}"#, "x".repeat(MAX_ID_BYTES + 1));
        assert!(client_id(long.as_bytes()).is_err());
        let max = format!(r#"{{"msg_id":"{}"}}"#, "x".repeat(MAX_ID_BYTES));
        assert!(client_id(max.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn a_retry_within_the_window_is_seen_per_user() {
        let mut w = Window::new(1_000, 64 * 1024);
        assert_eq!(w.seen("ann", "m1", 0), None);
        w.remember("ann", "m1", "42", 0);
        assert_eq!(w.seen("ann", "m1", 500), Some("42"));
        assert_eq!(
            w.seen("bob", "m1", 500),
            None,
            "another user's id is not a retry"
        );
        assert_eq!(w.seen("ann", "m2", 500), None);
        assert_eq!(w.seen("ann", "m1", 1_000), None, "the window has passed");
        assert!(w.is_empty());
        assert_eq!(w.bytes(), 0);
    }

    #[test]
    fn the_byte_budget_forgets_the_oldest_first() {
        let one = cost(&("u".into(), "m0".into()), "100");
        let mut w = Window::new(60_000, (3 * one) as u32);
        for i in 0..5 {
            w.remember("u", &format!("m{i}"), "100", i);
        }
        assert_eq!(w.len(), 3);
        assert!(w.bytes() <= 3 * one);
        assert_eq!(w.seen("u", "m0", 10), None);
        assert_eq!(w.seen("u", "m1", 10), None);
        assert_eq!(w.seen("u", "m4", 10), Some("100"));
        // An entry bigger than the whole budget is not kept.
        let mut tiny = Window::new(60_000, 10);
        tiny.remember("u", "m", "1", 0);
        assert!(tiny.is_empty());
    }

    #[test]
    fn remembering_twice_keeps_the_first_answer() {
        let mut w = Window::new(60_000, 4096);
        w.remember("u", "m", "1", 0);
        w.remember("u", "m", "2", 1);
        assert_eq!(w.seen("u", "m", 2), Some("1"));
        assert_eq!(w.len(), 1);
    }
}
