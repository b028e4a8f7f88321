//! Presence with Supabase Realtime semantics, sans-IO.
//!
//! A channel keeps, per presence key, the metas tracked under it, one per
//! tracking session. `presence_state` is the whole map; `presence_diff`
//! carries `joins` and `leaves`. An update of a session's meta is a leave of
//! the old meta plus a join of the new one whose `phx_ref_prev` names the old
//! (what realtime-js expects).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// Who tracks: the session's id within the channel.
pub type SessionId = u64;

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    session: SessionId,
    phx_ref: String,
    meta: Map<String, Value>,
    /// Its key's and meta's bytes (JSON text), counted against the budget.
    bytes: usize,
}

/// A presence change to fan out as `presence_diff`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Diff {
    pub joins: BTreeMap<String, Vec<Value>>,
    pub leaves: BTreeMap<String, Vec<Value>>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// The `presence_diff` payload.
    pub fn to_json(&self) -> Value {
        let side = |m: &BTreeMap<String, Vec<Value>>| {
            Value::Object(
                m.iter()
                    .map(|(k, metas)| (k.clone(), json!({ "metas": metas })))
                    .collect(),
            )
        };
        json!({ "joins": side(&self.joins), "leaves": side(&self.leaves) })
    }

    /// Folds `later` into this diff (peak mode merges diffs over an interval).
    pub fn merge(&mut self, later: Diff) {
        for (k, metas) in later.leaves {
            // A join and a leave of the same meta within the interval cancel.
            let joined = self.joins.entry(k.clone()).or_default();
            let mut rest = Vec::new();
            for m in metas {
                if let Some(i) = joined.iter().position(|j| j["phx_ref"] == m["phx_ref"]) {
                    joined.remove(i);
                } else {
                    rest.push(m);
                }
            }
            if joined.is_empty() {
                self.joins.remove(&k);
            }
            if !rest.is_empty() {
                self.leaves.entry(k).or_default().extend(rest);
            }
        }
        for (k, metas) in later.joins {
            self.joins.entry(k).or_default().extend(metas);
        }
    }
}

/// Why a track was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackError {
    /// The meta is not a JSON object.
    NotAnObject,
    /// More metas under one key than allowed.
    TooManyMetas { limit: usize },
    /// The channel's keys and metas would pass their byte budget.
    OverBudget { limit: usize },
}

impl std::fmt::Display for TrackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrackError::NotAnObject => write!(f, "presence payload must be a JSON object"),
            TrackError::TooManyMetas { limit } => {
                write!(f, "too many presences under one key (limit {limit})")
            }
            TrackError::OverBudget { limit } => write!(
                f,
                "presence_full: this channel holds at most {limit} bytes of presence keys and metas (limits.presence_bytes)"
            ),
        }
    }
}

/// The presence state of one channel.
#[derive(Debug, Clone, Default)]
pub struct Presence {
    by_key: BTreeMap<String, Vec<Entry>>,
    next_ref: u64,
    /// Largest number of metas per key (Supabase allows 10).
    max_per_key: usize,
    /// Bytes of keys and metas held, and the most allowed.
    bytes: usize,
    max_bytes: usize,
}

impl Presence {
    /// No byte budget (tests and tools); a channel uses [`Presence::with_budget`].
    pub fn new(max_per_key: usize) -> Self {
        Self::with_budget(max_per_key, usize::MAX)
    }

    /// At most `max_bytes` of keys and metas (JSON text) in all.
    pub fn with_budget(max_per_key: usize, max_bytes: usize) -> Self {
        Self {
            by_key: BTreeMap::new(),
            next_ref: 0,
            max_per_key: max_per_key.max(1),
            bytes: 0,
            max_bytes,
        }
    }

    /// Bytes of keys and metas held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("F{:x}", self.next_ref)
    }

    fn meta_json(entry: &Entry, prev: Option<&str>) -> Value {
        let mut m = entry.meta.clone();
        m.insert("phx_ref".into(), Value::String(entry.phx_ref.clone()));
        if let Some(prev) = prev {
            m.insert("phx_ref_prev".into(), Value::String(prev.to_string()));
        }
        Value::Object(m)
    }

    /// `session` tracks `meta` under `key`. Tracking the same meta again
    /// changes nothing (empty diff); a different meta is an update.
    pub fn track(
        &mut self,
        session: SessionId,
        key: &str,
        meta: Value,
    ) -> Result<Diff, TrackError> {
        let Value::Object(meta) = meta else {
            return Err(TrackError::NotAnObject);
        };
        let size = key.len() + serde_json::to_string(&meta).map_or(0, |t| t.len());
        let mut diff = Diff::default();
        let phx_ref = self.fresh_ref();
        let limit = self.max_per_key;
        let (held, max_bytes) = (self.bytes, self.max_bytes);
        let entries = self.by_key.entry(key.to_string()).or_default();
        let current = entries
            .iter()
            .find(|e| e.session == session)
            .map_or(0, |e| e.bytes);
        if held - current + size > max_bytes {
            if entries.is_empty() {
                self.by_key.remove(key);
            }
            return Err(TrackError::OverBudget { limit: max_bytes });
        }
        match entries.iter_mut().find(|e| e.session == session) {
            Some(e) if e.meta == meta => {}
            Some(e) => {
                self.bytes = held - e.bytes + size;
                e.bytes = size;
                let prev = e.phx_ref.clone();
                diff.leaves
                    .entry(key.to_string())
                    .or_default()
                    .push(Self::meta_json(e, None));
                e.meta = meta;
                e.phx_ref = phx_ref;
                diff.joins
                    .entry(key.to_string())
                    .or_default()
                    .push(Self::meta_json(e, Some(&prev)));
            }
            None => {
                if entries.len() >= limit {
                    if entries.is_empty() {
                        self.by_key.remove(key);
                    }
                    return Err(TrackError::TooManyMetas { limit });
                }
                let e = Entry {
                    session,
                    phx_ref,
                    meta,
                    bytes: size,
                };
                self.bytes = held + size;
                diff.joins
                    .entry(key.to_string())
                    .or_default()
                    .push(Self::meta_json(&e, None));
                entries.push(e);
            }
        }
        Ok(diff)
    }

    /// Removes every meta `session` tracks (untrack, leave, session gone).
    pub fn untrack(&mut self, session: SessionId) -> Diff {
        let mut diff = Diff::default();
        let mut freed = 0;
        self.by_key.retain(|key, entries| {
            entries.retain(|e| {
                if e.session == session {
                    freed += e.bytes;
                    diff.leaves
                        .entry(key.clone())
                        .or_default()
                        .push(Self::meta_json(e, None));
                    false
                } else {
                    true
                }
            });
            !entries.is_empty()
        });
        self.bytes -= freed;
        diff
    }

    /// The `presence_state` payload.
    pub fn state_json(&self) -> Value {
        Value::Object(
            self.by_key
                .iter()
                .map(|(k, entries)| {
                    let metas: Vec<Value> =
                        entries.iter().map(|e| Self::meta_json(e, None)).collect();
                    (k.clone(), json!({ "metas": metas }))
                })
                .collect(),
        )
    }

    /// Distinct keys present.
    pub fn key_count(&self) -> usize {
        self.by_key.len()
    }

    /// Whether `key` has at least one meta.
    pub fn has_key(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    /// Keys present with how many metas each holds, in order (what the
    /// channel reports to the green dot).
    pub fn counts(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_key.iter().map(|(k, e)| (k.as_str(), e.len()))
    }

    /// Keys present, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.by_key.keys().map(String::as_str)
    }

    /// The metas under `key` as `presence_state` and `presence_diff` carry
    /// them; `None` when the key is not present.
    pub fn metas_json(&self, key: &str) -> Option<Vec<Value>> {
        self.by_key
            .get(key)
            .map(|entries| entries.iter().map(|e| Self::meta_json(e, None)).collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_and_metas_are_held_within_a_byte_budget() {
        let mut p = super::Presence::with_budget(10, 100);
        let big = serde_json::json!({"bio": "x".repeat(60)});
        assert!(p.track(1, "alice", big.clone()).is_ok());
        let held = p.bytes();
        assert!(held > 60 && held <= 100, "{held}");
        // A second big meta would pass the budget: refused, nothing changes.
        let err = p.track(2, "bob", big.clone()).unwrap_err();
        assert!(err.to_string().contains("limits.presence_bytes"), "{err}");
        assert!(!p.has_key("bob"));
        assert_eq!(p.bytes(), held);
        // An update replaces the old meta's bytes instead of adding to them.
        assert!(p
            .track(1, "alice", serde_json::json!({"bio": "y".repeat(60)}))
            .is_ok());
        assert_eq!(p.bytes(), held);
        // Leaving frees the bytes for others.
        p.untrack(1);
        assert_eq!(p.bytes(), 0);
        assert!(p.track(2, "bob", big).is_ok());
    }

    use super::*;

    #[test]
    fn track_joins_then_same_meta_is_a_no_op() {
        let mut p = Presence::new(10);
        let d = p.track(1, "alice", json!({"status": "online"})).unwrap();
        assert_eq!(d.joins["alice"].len(), 1);
        assert_eq!(d.joins["alice"][0]["status"], "online");
        assert!(d.leaves.is_empty());
        let again = p.track(1, "alice", json!({"status": "online"})).unwrap();
        assert!(again.is_empty());
        assert_eq!(
            p.state_json()["alice"]["metas"].as_array().unwrap().len(),
            1
        );
    }

    #[test]
    fn update_is_leave_plus_join_with_prev_ref() {
        let mut p = Presence::new(10);
        let first = p.track(1, "alice", json!({"s": 1})).unwrap();
        let old_ref = first.joins["alice"][0]["phx_ref"].clone();
        let d = p.track(1, "alice", json!({"s": 2})).unwrap();
        assert_eq!(d.leaves["alice"][0]["phx_ref"], old_ref);
        assert_eq!(d.joins["alice"][0]["phx_ref_prev"], old_ref);
        assert_eq!(d.joins["alice"][0]["s"], 2);
        assert_ne!(d.joins["alice"][0]["phx_ref"], old_ref);
    }

    #[test]
    fn two_sessions_share_a_key_and_leave_separately() {
        let mut p = Presence::new(10);
        p.track(1, "bob", json!({})).unwrap();
        p.track(2, "bob", json!({})).unwrap();
        assert_eq!(p.state_json()["bob"]["metas"].as_array().unwrap().len(), 2);
        let d = p.untrack(1);
        assert_eq!(d.leaves["bob"].len(), 1);
        assert!(p.has_key("bob"));
        p.untrack(2);
        assert!(!p.has_key("bob"));
        assert_eq!(p.state_json(), json!({}));
    }

    #[test]
    fn non_object_meta_and_key_cap_are_refused() {
        let mut p = Presence::new(2);
        assert_eq!(p.track(1, "k", json!(3)), Err(TrackError::NotAnObject));
        p.track(1, "k", json!({})).unwrap();
        p.track(2, "k", json!({})).unwrap();
        assert_eq!(
            p.track(3, "k", json!({})),
            Err(TrackError::TooManyMetas { limit: 2 })
        );
    }

    #[test]
    fn diff_json_has_supabase_shape() {
        let mut p = Presence::new(10);
        let d = p.track(7, "u", json!({"a": 1})).unwrap();
        let v = d.to_json();
        assert_eq!(v["joins"]["u"]["metas"][0]["a"], 1);
        assert_eq!(v["leaves"], json!({}));
    }

    #[test]
    fn merged_join_and_leave_cancel() {
        let mut p = Presence::new(10);
        let mut d = p.track(1, "x", json!({})).unwrap();
        d.merge(p.untrack(1));
        assert!(d.is_empty(), "{d:?}");
    }
}
