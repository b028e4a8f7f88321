//! Selective presence and relevant sets in large rooms, sans-IO (the
//! protocol is `docs/ROOMS.md`, "Presence shards and selective presence").
//!
//! A channel's viewers each see presence in one [`Mode`]:
//!
//! * [`Mode::Plain`]: Supabase presence, every key (small rooms);
//! * [`Mode::Subscribed`]: only the keys the client asked for with
//!   `presence_subscribe`, whatever the room's size;
//! * [`Mode::Relevant`]: in a large room, a client without a subscription
//!   sees its *relevant set* (the room host, its friends, recent chatters,
//!   then a deterministic sample, at most `presence.relevant_set_size` keys)
//!   and gets the member count as `presence_count`.
//!
//! [`Selective`] holds the viewers and turns each channel event into
//! [`Push`]es: an event name, a payload and the addresses of every viewer
//! that gets exactly that frame, so the caller encodes each distinct frame
//! once and fans it out. Per diff the work is one pass over the viewers with
//! a few set look-ups each; viewers that see the whole diff share one push.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde_json::{json, Map, Value};

use crate::config::PresenceConfig;
use crate::join::parse_keys;
use crate::presence::{Diff, Presence};
use crate::ring::stable_hash64;

/// The pushed event carrying a whole (or selected) presence view.
pub const PRESENCE_STATE: &str = "presence_state";
/// The pushed event carrying presence joins and leaves.
pub const PRESENCE_DIFF: &str = "presence_diff";
/// The pushed event carrying a large room's member count.
pub const PRESENCE_COUNT: &str = "presence_count";
/// The client push changing a selective subscription.
pub const SUBSCRIBE_EVENT: &str = "presence_subscribe";
/// The client push (topic `phoenix`) asking which keys are online.
pub const ONLINE_EVENT: &str = "presence_online";
/// `presence_count` goes out at most once per this period.
pub const COUNT_INTERVAL_MS: u64 = 1_000;

/// A viewer's id within its channel (the session's process id).
pub type ViewerId = u64;

/// The thresholds selective presence works with (from `[presence]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// More present keys than this make a large room.
    pub large_room_threshold: usize,
    /// Most keys in a relevant set.
    pub relevant_set_size: usize,
    /// How long a publisher counts as a recent chatter.
    pub recent_chat_ms: u64,
    /// Most keys in a subscription (and in one `presence_online` query).
    pub max_subscribed_keys: usize,
}

impl Limits {
    /// The limits of a node's `[presence]` section.
    pub fn from_config(c: &PresenceConfig) -> Limits {
        Limits {
            large_room_threshold: c.large_room_threshold as usize,
            relevant_set_size: c.relevant_set_size as usize,
            recent_chat_ms: c.recent_chat_ms,
            max_subscribed_keys: c.max_subscribed_keys as usize,
        }
    }

    /// Whether a room with `keys` present keys is large, given whether it
    /// was: it becomes large above the threshold and stays large until it
    /// falls below 90% of it (hysteresis).
    pub fn is_large(&self, was_large: bool, keys: usize) -> bool {
        if was_large {
            keys.saturating_mul(10) >= self.large_room_threshold.saturating_mul(9)
        } else {
            keys > self.large_room_threshold
        }
    }
}

/// How one viewer sees the channel's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Every key (Supabase presence).
    Plain,
    /// Only these keys (`presence_subscribe`).
    Subscribed(HashSet<String>),
    /// A large room's relevant set.
    Relevant(HashSet<String>),
}

/// Who a viewer is, as far as selection goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Member {
    /// The viewer's own presence key.
    pub key: String,
    /// Its friends (JWT claim `friends`, then `config.presence.friends`),
    /// in order of preference.
    pub friends: Vec<String>,
    /// Whether it asked for presence at join (`config.presence.enabled`):
    /// only such viewers get `presence_state` without asking.
    pub presence_enabled: bool,
}

/// One frame to deliver: the same event and payload to every address in `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Push<A> {
    pub to: Vec<A>,
    pub event: &'static str,
    pub payload: Value,
}

/// What a `presence_subscribe` did.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscribed<A> {
    /// Size of the set now (the reply's `keys`).
    pub keys: usize,
    /// Whether this switched the viewer to selective mode.
    pub first: bool,
    /// The `presence_state` (first time) or `presence_diff` to send.
    pub pushes: Vec<Push<A>>,
}

/// Why a `presence_subscribe` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeError {
    /// The resulting set would exceed `presence.max_subscribed_keys`.
    Cap { limit: usize },
    /// The viewer is not in the channel.
    NotJoined,
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeError::Cap { limit } => f.write_str(&cap_error(*limit)),
            SubscribeError::NotJoined => f.write_str("unmatched topic"),
        }
    }
}

/// The reason of a subscription (or `presence_online` query) over the cap.
pub fn cap_error(limit: usize) -> String {
    format!("presence_subscription_cap: at most {limit} keys (presence.max_subscribed_keys)")
}

/// Reads a list of keys at `field` of an object payload: absent or `null`
/// is empty; more than `cap` entries is the cap error.
fn keys_field(
    obj: &Map<String, Value>,
    field: &str,
    cap: usize,
) -> Result<Option<Vec<String>>, String> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) if items.len() > cap => Err(cap_error(cap)),
        Some(v) => parse_keys(v, field, cap).map(Some),
    }
}

/// Reads a `presence_subscribe` payload `{"add": [...], "remove": [...]}`
/// (at least one of the two) into `(add, remove)`.
pub fn parse_subscribe(payload: &Value, cap: usize) -> Result<(Vec<String>, Vec<String>), String> {
    const SHAPE: &str =
        "presence_subscribe payload must be an object like {\"add\": [\"k1\"], \"remove\": [\"k2\"]}";
    let Value::Object(obj) = payload else {
        return Err(SHAPE.into());
    };
    let add = keys_field(obj, "add", cap)?;
    let remove = keys_field(obj, "remove", cap)?;
    if add.is_none() && remove.is_none() {
        return Err(SHAPE.into());
    }
    Ok((add.unwrap_or_default(), remove.unwrap_or_default()))
}

/// Reads a `presence_online` payload `{"keys": [...]}`.
pub fn parse_online(payload: &Value, cap: usize) -> Result<Vec<String>, String> {
    const SHAPE: &str = "presence_online payload must be an object like {\"keys\": [\"k1\"]}";
    match payload {
        Value::Object(obj) => keys_field(obj, "keys", cap)?.ok_or_else(|| SHAPE.into()),
        _ => Err(SHAPE.into()),
    }
}

/// The `presence_online` reply: `{"online": {key: bool}}`.
pub fn online_reply(keys: &[String], online: &[String]) -> Value {
    let online: HashSet<&str> = online.iter().map(String::as_str).collect();
    let map: Map<String, Value> = keys
        .iter()
        .map(|k| (k.clone(), Value::Bool(online.contains(k.as_str()))))
        .collect();
    json!({ "online": map })
}

/// A `presence_state` payload holding `keys` that are present.
fn state_of<'a>(presence: &Presence, keys: impl IntoIterator<Item = &'a str>) -> Value {
    let mut map = Map::new();
    for k in keys {
        if let Some(metas) = presence.metas_json(k) {
            map.insert(k.to_string(), json!({ "metas": metas }));
        }
    }
    Value::Object(map)
}

/// The `presence_count` payload.
fn count_payload(count: usize) -> Value {
    json!({ "count": count })
}

struct Viewer<A> {
    addr: A,
    member: Member,
    mode: Mode,
}

/// What the room knows about relevance, shared by every viewer's selection.
struct Relevance<'a> {
    limits: &'a Limits,
    host: Option<&'a str>,
    chatters: &'a HashMap<String, u64>,
    now_ms: u64,
}

impl Relevance<'_> {
    fn recent_chatter(&self, key: &str) -> bool {
        self.chatters
            .get(key)
            .is_some_and(|t| self.now_ms.saturating_sub(*t) <= self.limits.recent_chat_ms)
    }

    /// Whether `key`, joining, belongs in `member`'s relevant set if it has
    /// room: the host, a friend or a recent chatter.
    fn tops_up(&self, member: &Member, key: &str) -> bool {
        self.host == Some(key)
            || self.recent_chatter(key)
            || member.friends.iter().any(|f| f == key)
    }

    /// `member`'s relevant set, in order: the host, friends (in their
    /// order), recent chatters (latest first), then a sample of the rest
    /// ordered by a hash seeded with the member's key. Only present keys.
    fn select(&self, member: &Member, presence: &Presence) -> Vec<String> {
        let cap = self.limits.relevant_set_size;
        let mut chosen: Vec<String> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        let take = |k: &str, chosen: &mut Vec<String>| {
            if chosen.len() < cap && presence.has_key(k) && !chosen.iter().any(|c| c == k) {
                chosen.push(k.to_string());
            }
        };
        if let Some(h) = self.host {
            take(h, &mut chosen);
        }
        for f in &member.friends {
            take(f, &mut chosen);
        }
        let mut recent: Vec<(&str, u64)> = self
            .chatters
            .iter()
            .filter(|(k, _)| self.recent_chatter(k))
            .map(|(k, t)| (k.as_str(), *t))
            .collect();
        recent.sort_by_key(|(k, t)| (Reverse(*t), *k));
        for (k, _) in recent {
            take(k, &mut chosen);
        }
        let room = cap.saturating_sub(chosen.len());
        if room == 0 {
            return chosen;
        }
        seen.extend(chosen.iter().map(String::as_str));
        let seed = stable_hash64(member.key.as_bytes());
        let mut rest: Vec<(u64, &str)> = presence
            .keys()
            .filter(|k| !seen.contains(k))
            .map(|k| (stable_hash64(k.as_bytes()) ^ seed, k))
            .collect();
        if rest.len() > room {
            rest.select_nth_unstable(room - 1);
            rest.truncate(room);
        }
        rest.sort_unstable();
        chosen.extend(rest.into_iter().map(|(_, k)| k.to_string()));
        chosen
    }
}

/// Which part of a diff one viewer gets.
enum Selection {
    Nothing,
    /// The whole diff, shared with every viewer that gets it whole.
    Whole,
    /// `keys` of the diff as they are, plus the current metas of keys just
    /// added to the viewer's set (`topped`) as joins.
    Part {
        keys: Vec<String>,
        topped: Vec<String>,
    },
}

fn select_part(diff_keys: &[&String], set: &HashSet<String>, topped: Vec<String>) -> Selection {
    let keys: Vec<String> = diff_keys
        .iter()
        .filter(|k| set.contains(k.as_str()) && !topped.contains(k))
        .map(|k| (*k).clone())
        .collect();
    if topped.is_empty() && keys.len() == diff_keys.len() {
        Selection::Whole
    } else if topped.is_empty() && keys.is_empty() {
        Selection::Nothing
    } else {
        Selection::Part { keys, topped }
    }
}

/// The part of `diff` made of `keys`, plus the current metas of `topped`.
fn part_of(diff: &Diff, presence: &Presence, keys: &[String], topped: &[String]) -> Diff {
    let mut out = Diff::default();
    for k in keys {
        if let Some(m) = diff.joins.get(k) {
            out.joins.insert(k.clone(), m.clone());
        }
        if let Some(m) = diff.leaves.get(k) {
            out.leaves.insert(k.clone(), m.clone());
        }
    }
    for k in topped {
        if let Some(metas) = presence.metas_json(k) {
            out.joins.insert(k.clone(), metas);
        }
    }
    out
}

/// The selective-presence state of one channel; `A` is how the caller
/// addresses a viewer (an outlet and its serializer).
pub struct Selective<A> {
    limits: Limits,
    viewers: BTreeMap<ViewerId, Viewer<A>>,
    large: bool,
    host: Option<String>,
    chatters: HashMap<String, u64>,
    /// Prune stale chatters when the map grows past this.
    prune_at: usize,
    /// Present keys after the latest diff.
    count: usize,
    /// The count last pushed and when (`presence_count` throttling).
    count_sent: Option<usize>,
    count_sent_ms: u64,
}

impl<A: Copy> Selective<A> {
    /// No viewers, a small room.
    pub fn new(limits: Limits) -> Self {
        Selective {
            limits,
            viewers: BTreeMap::new(),
            large: false,
            host: None,
            chatters: HashMap::new(),
            prune_at: 1024,
            count: 0,
            count_sent: None,
            count_sent_ms: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the room is large now.
    pub fn is_large(&self) -> bool {
        self.large
    }

    /// The room's host (room state `host`), first in every relevant set.
    pub fn set_host(&mut self, host: Option<String>) {
        self.host = host;
    }

    /// `key` published on the channel at `now_ms`.
    pub fn chatted(&mut self, key: &str, now_ms: u64) {
        if let Some(t) = self.chatters.get_mut(key) {
            *t = now_ms;
            return;
        }
        self.chatters.insert(key.to_string(), now_ms);
        if self.chatters.len() > self.prune_at {
            let keep = self.limits.recent_chat_ms;
            self.chatters
                .retain(|_, t| now_ms.saturating_sub(*t) <= keep);
            self.prune_at = (self.chatters.len() * 2).max(1024);
        }
    }

    /// Viewer `id`'s address.
    pub fn addr(&self, id: ViewerId) -> Option<A> {
        self.viewers.get(&id).map(|v| v.addr)
    }

    /// How viewer `id` sees presence.
    pub fn mode(&self, id: ViewerId) -> Option<&Mode> {
        self.viewers.get(&id).map(|v| &v.mode)
    }

    fn relevance(&self, now_ms: u64) -> Relevance<'_> {
        Relevance {
            limits: &self.limits,
            host: self.host.as_deref(),
            chatters: &self.chatters,
            now_ms,
        }
    }

    /// `member`'s relevant set now, in selection order.
    pub fn relevant_set(&self, member: &Member, presence: &Presence, now_ms: u64) -> Vec<String> {
        self.relevance(now_ms).select(member, presence)
    }

    /// A viewer joins (a second join of the same id replaces the first).
    /// Returns what it gets right after its join reply: in a small room the
    /// full `presence_state` (if it asked for presence); in a large room its
    /// relevant set's `presence_state` (likewise) and `presence_count`.
    pub fn join(
        &mut self,
        id: ViewerId,
        addr: A,
        member: Member,
        presence: &Presence,
        now_ms: u64,
    ) -> Vec<Push<A>> {
        let mut out = Vec::new();
        let mode = if self.large {
            let set = self.relevant_set(&member, presence, now_ms);
            if member.presence_enabled {
                out.push(Push {
                    to: vec![addr],
                    event: PRESENCE_STATE,
                    payload: state_of(presence, set.iter().map(String::as_str)),
                });
            }
            out.push(Push {
                to: vec![addr],
                event: PRESENCE_COUNT,
                payload: count_payload(presence.key_count()),
            });
            Mode::Relevant(set.into_iter().collect())
        } else {
            if member.presence_enabled {
                out.push(Push {
                    to: vec![addr],
                    event: PRESENCE_STATE,
                    payload: presence.state_json(),
                });
            }
            Mode::Plain
        };
        self.viewers.insert(id, Viewer { addr, member, mode });
        out
    }

    /// A viewer leaves; returns the mode it had.
    pub fn leave(&mut self, id: ViewerId) -> Option<Mode> {
        self.viewers.remove(&id).map(|v| v.mode)
    }

    /// `presence_subscribe`: the set becomes (current set ∪ `add`) minus
    /// `remove` (a key in both ends up removed). The first subscription
    /// sends the subscribed keys' `presence_state`; later ones a
    /// `presence_diff` of the keys added (joins) and removed (leaves) that
    /// are present. Over the cap nothing changes.
    pub fn subscribe(
        &mut self,
        id: ViewerId,
        add: &[String],
        remove: &[String],
        presence: &Presence,
    ) -> Result<Subscribed<A>, SubscribeError> {
        let cap = self.limits.max_subscribed_keys;
        let v = self.viewers.get_mut(&id).ok_or(SubscribeError::NotJoined)?;
        let old = match &v.mode {
            Mode::Subscribed(set) => Some(set),
            _ => None,
        };
        let mut set = old.cloned().unwrap_or_default();
        set.extend(add.iter().cloned());
        for k in remove {
            set.remove(k);
        }
        if set.len() > cap {
            return Err(SubscribeError::Cap { limit: cap });
        }
        let mut pushes = Vec::new();
        let first = old.is_none();
        match old {
            None => {
                let sorted: BTreeSet<&str> = set.iter().map(String::as_str).collect();
                pushes.push(Push {
                    to: vec![v.addr],
                    event: PRESENCE_STATE,
                    payload: state_of(presence, sorted),
                });
            }
            Some(old) => {
                let mut diff = Diff::default();
                for k in set.difference(old) {
                    if let Some(metas) = presence.metas_json(k) {
                        diff.joins.insert(k.clone(), metas);
                    }
                }
                for k in old.difference(&set) {
                    if let Some(metas) = presence.metas_json(k) {
                        diff.leaves.insert(k.clone(), metas);
                    }
                }
                if !diff.is_empty() {
                    pushes.push(Push {
                        to: vec![v.addr],
                        event: PRESENCE_DIFF,
                        payload: diff.to_json(),
                    });
                }
            }
        }
        let keys = set.len();
        v.mode = Mode::Subscribed(set);
        Ok(Subscribed {
            keys,
            first,
            pushes,
        })
    }

    /// Everything one channel diff (already applied to `presence`) sends:
    ///
    /// * crossing into a large room, plain viewers switch to their relevant
    ///   set (`presence_state` if they asked for presence, and
    ///   `presence_count`); falling below 90% of the threshold, they switch
    ///   back (full `presence_state`). Switching viewers skip this diff.
    /// * otherwise each viewer gets the part of the diff it sees (nothing
    ///   if that is empty); a friend, recent chatter or the host joining is
    ///   added to a relevant set that has room; keys that left for good
    ///   leave relevant sets.
    /// * in a large room, `presence_count` when the count changed and the
    ///   last one is at least [`COUNT_INTERVAL_MS`] old (else later, see
    ///   [`Selective::tick`]).
    ///
    /// Each push goes to `emit` as soon as it is built: crossing the
    /// threshold builds one `presence_state` per viewer, and holding them
    /// all at once would take megabytes in a room of a few hundred.
    pub fn fan_out(
        &mut self,
        diff: &Diff,
        presence: &Presence,
        now_ms: u64,
        emit: &mut impl FnMut(Push<A>),
    ) {
        self.count = presence.key_count();
        let was_large = self.large;
        self.large = self.limits.is_large(was_large, self.count);
        let to_large = self.large && !was_large;
        let to_small = was_large && !self.large;
        let diff_keys: Vec<&String> = {
            let mut keys: Vec<&String> = diff.joins.keys().chain(diff.leaves.keys()).collect();
            keys.sort_unstable();
            keys.dedup();
            keys
        };
        let relevance = Relevance {
            limits: &self.limits,
            host: self.host.as_deref(),
            chatters: &self.chatters,
            now_ms,
        };
        let cap = self.limits.relevant_set_size;
        // Keys that left for good leave every relevant set.
        let gone: Vec<&String> = diff
            .leaves
            .keys()
            .filter(|k| !presence.has_key(k))
            .collect();
        let mut whole: Vec<A> = Vec::new();
        let mut parts: BTreeMap<(Vec<String>, Vec<String>), Vec<A>> = BTreeMap::new();
        let mut full_state: Vec<A> = Vec::new();
        let mut counted: Vec<A> = Vec::new();
        for v in self.viewers.values_mut() {
            let selection = match &mut v.mode {
                Mode::Plain if to_large => {
                    let set = relevance.select(&v.member, presence);
                    if v.member.presence_enabled {
                        emit(Push {
                            to: vec![v.addr],
                            event: PRESENCE_STATE,
                            payload: state_of(presence, set.iter().map(String::as_str)),
                        });
                    }
                    counted.push(v.addr);
                    v.mode = Mode::Relevant(set.into_iter().collect());
                    continue;
                }
                Mode::Relevant(_) if to_small => {
                    if v.member.presence_enabled {
                        full_state.push(v.addr);
                    }
                    v.mode = Mode::Plain;
                    continue;
                }
                Mode::Plain => Selection::Whole,
                Mode::Subscribed(set) => select_part(&diff_keys, set, Vec::new()),
                Mode::Relevant(set) => {
                    let mut topped = Vec::new();
                    for k in diff.joins.keys() {
                        if set.len() < cap
                            && !set.contains(k)
                            && presence.has_key(k)
                            && relevance.tops_up(&v.member, k)
                        {
                            set.insert(k.clone());
                            topped.push(k.clone());
                        }
                    }
                    let selection = select_part(&diff_keys, set, topped);
                    for k in &gone {
                        set.remove(k.as_str());
                    }
                    selection
                }
            };
            match selection {
                Selection::Nothing => {}
                Selection::Whole => whole.push(v.addr),
                Selection::Part { keys, topped } => {
                    parts.entry((keys, topped)).or_default().push(v.addr)
                }
            }
        }
        if !full_state.is_empty() {
            emit(Push {
                to: full_state,
                event: PRESENCE_STATE,
                payload: presence.state_json(),
            });
        }
        if !whole.is_empty() && !diff.is_empty() {
            emit(Push {
                to: whole,
                event: PRESENCE_DIFF,
                payload: diff.to_json(),
            });
        }
        for ((keys, topped), to) in parts {
            let part = part_of(diff, presence, &keys, &topped);
            if !part.is_empty() {
                emit(Push {
                    to,
                    event: PRESENCE_DIFF,
                    payload: part.to_json(),
                });
            }
        }
        if to_large {
            self.count_sent = Some(self.count);
            self.count_sent_ms = now_ms;
            if !counted.is_empty() {
                emit(Push {
                    to: counted,
                    event: PRESENCE_COUNT,
                    payload: count_payload(self.count),
                });
            }
        } else if to_small {
            self.count_sent = None;
        } else {
            if let Some(p) = self.tick(now_ms) {
                emit(p);
            }
        }
    }

    /// The `presence_count` push to every relevant-set viewer, when the
    /// count changed and the last one is old enough.
    pub fn tick(&mut self, now_ms: u64) -> Option<Push<A>> {
        if self.wait_ms(now_ms) != Some(0) {
            return None;
        }
        self.count_sent = Some(self.count);
        self.count_sent_ms = now_ms;
        let to: Vec<A> = self
            .viewers
            .values()
            .filter(|v| matches!(v.mode, Mode::Relevant(_)))
            .map(|v| v.addr)
            .collect();
        (!to.is_empty()).then(|| Push {
            to,
            event: PRESENCE_COUNT,
            payload: count_payload(self.count),
        })
    }

    /// Milliseconds until [`Selective::tick`] has a count to send (`None`:
    /// nothing pending).
    pub fn wait_ms(&self, now_ms: u64) -> Option<u64> {
        if !self.large || self.count_sent == Some(self.count) {
            return None;
        }
        Some((self.count_sent_ms + COUNT_INTERVAL_MS).saturating_sub(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every push of one `fan_out`, in order.
    fn fan(s: &mut Selective<u64>, d: &Diff, p: &Presence, now_ms: u64) -> Vec<Push<u64>> {
        let mut out = Vec::new();
        s.fan_out(d, p, now_ms, &mut |push| out.push(push));
        out
    }

    fn limits(threshold: usize, set: usize) -> Limits {
        Limits {
            large_room_threshold: threshold,
            relevant_set_size: set,
            recent_chat_ms: 60_000,
            max_subscribed_keys: 4,
        }
    }

    fn member(key: &str, friends: &[&str]) -> Member {
        Member {
            key: key.into(),
            friends: friends.iter().map(|s| s.to_string()).collect(),
            presence_enabled: true,
        }
    }

    /// A presence with `keys`, each tracked by its own session (its index).
    fn present(keys: &[&str]) -> Presence {
        let mut p = Presence::new(10);
        for (i, k) in keys.iter().enumerate() {
            p.track(i as u64 + 1000, k, json!({"k": k})).unwrap();
        }
        p
    }

    fn keys_of(v: &Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Pushes of `event` reaching `addr`.
    fn to<'a>(pushes: &'a [Push<u64>], addr: u64, event: &str) -> Vec<&'a Value> {
        pushes
            .iter()
            .filter(|p| p.event == event && p.to.contains(&addr))
            .map(|p| &p.payload)
            .collect()
    }

    #[test]
    fn hysteresis_enters_above_and_leaves_below_ninety_percent() {
        let l = limits(10, 3);
        assert!(!l.is_large(false, 10));
        assert!(l.is_large(false, 11));
        assert!(l.is_large(true, 9));
        assert!(!l.is_large(true, 8));
        let l = limits(5, 3);
        assert!(l.is_large(false, 6));
        assert!(l.is_large(true, 5));
        assert!(!l.is_large(true, 4));
    }

    #[test]
    fn small_room_is_plain_supabase_presence() {
        let mut s: Selective<u64> = Selective::new(limits(10, 3));
        let mut p = present(&["a", "b"]);
        let pushes = s.join(1, 1, member("v", &[]), &p, 0);
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].event, PRESENCE_STATE);
        assert_eq!(pushes[0].payload, p.state_json());
        let mut quiet = member("w", &[]);
        quiet.presence_enabled = false;
        assert!(s.join(2, 2, quiet, &p, 0).is_empty());
        let d = p.track(9, "c", json!({})).unwrap();
        let pushes = fan(&mut s, &d, &p, 0);
        // One shared push to every viewer, the whole diff.
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].to, vec![1, 2]);
        assert_eq!(pushes[0].payload, d.to_json());
    }

    #[test]
    fn relevant_set_order_host_friends_chatters_then_sample() {
        let mut s: Selective<u64> = Selective::new(limits(2, 5));
        let p = present(&["a", "b", "c", "d", "e", "f", "g", "h", "host"]);
        s.set_host(Some("host".into()));
        s.chatted("g", 100);
        s.chatted("c", 200);
        s.chatted("zz-absent", 300);
        let m = member("v", &["f", "nobody", "b"]);
        let set = s.relevant_set(&m, &p, 1_000);
        assert_eq!(set[..5], strs(&["host", "f", "b", "c", "g"])[..]);
        // The cap cuts in the same order.
        let mut small: Selective<u64> = Selective::new(limits(2, 2));
        small.set_host(Some("host".into()));
        assert_eq!(small.relevant_set(&m, &p, 0), strs(&["host", "f"]));
        // An absent host takes no slot; chatters older than recent_chat_ms
        // do not count.
        s.set_host(Some("gone".into()));
        let set = s.relevant_set(&m, &p, 60_150);
        assert_eq!(set[..3], strs(&["f", "b", "c"])[..]);
        assert_eq!(set.len(), 5);
    }

    #[test]
    fn sample_is_deterministic_capped_and_seeded_by_the_viewer() {
        let keys: Vec<String> = (0..100).map(|i| format!("u{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let p = present(&refs);
        let s: Selective<u64> = Selective::new(limits(10, 7));
        let a1 = s.relevant_set(&member("alice", &[]), &p, 0);
        let a2 = s.relevant_set(&member("alice", &[]), &p, 0);
        let b = s.relevant_set(&member("bob", &[]), &p, 0);
        assert_eq!(a1, a2);
        assert_eq!(a1.len(), 7);
        assert_ne!(a1, b, "different viewers get different samples");
        let unique: HashSet<&String> = a1.iter().collect();
        assert_eq!(unique.len(), 7);
        // Fewer present keys than the cap: all of them.
        let p = present(&["x", "y"]);
        let mut all = s.relevant_set(&member("alice", &[]), &p, 0);
        all.sort();
        assert_eq!(all, strs(&["x", "y"]));
    }

    #[test]
    fn crossing_the_threshold_switches_plain_viewers_and_back() {
        let mut s: Selective<u64> = Selective::new(limits(5, 3));
        let mut p = present(&["a", "b", "c", "d", "e"]);
        s.set_host(Some("a".into()));
        s.join(1, 1, member("v1", &["b"]), &p, 0);
        s.join(2, 2, member("v2", &[]), &p, 0);
        s.join(3, 3, member("sub", &[]), &p, 0);
        s.subscribe(3, &strs(&["e", "f"]), &[], &p).unwrap();
        let d = p.track(100, "f", json!({})).unwrap();
        let pushes = fan(&mut s, &d, &p, 5_000);
        assert!(s.is_large());
        let st1 = to(&pushes, 1, PRESENCE_STATE);
        assert_eq!(st1.len(), 1);
        let k1 = keys_of(st1[0]);
        assert_eq!(k1.len(), 3);
        assert!(k1.contains(&"a".into()) && k1.contains(&"b".into()));
        assert_eq!(to(&pushes, 1, PRESENCE_COUNT), vec![&json!({"count": 6})]);
        assert_eq!(to(&pushes, 2, PRESENCE_COUNT), vec![&json!({"count": 6})]);
        // Switching viewers skip the diff; the subscriber gets its part.
        assert!(to(&pushes, 1, PRESENCE_DIFF).is_empty());
        assert_eq!(to(&pushes, 3, PRESENCE_DIFF).len(), 1);
        assert!(to(&pushes, 3, PRESENCE_COUNT).is_empty());
        assert!(matches!(s.mode(1), Some(Mode::Relevant(set)) if set.len() == 3));
        assert!(matches!(s.mode(3), Some(Mode::Subscribed(_))));

        // 5 keys: still large (not below 90% of 5).
        let d = p.untrack(100);
        let pushes = fan(&mut s, &d, &p, 5_100);
        assert!(s.is_large());
        assert!(to(&pushes, 1, PRESENCE_STATE).is_empty());
        // 4 keys: back to plain, full state to each.
        let d = p.untrack(1004);
        let pushes = fan(&mut s, &d, &p, 5_200);
        assert!(!s.is_large());
        let full: Vec<_> = pushes
            .iter()
            .filter(|x| x.event == PRESENCE_STATE)
            .collect();
        assert_eq!(full.len(), 1, "one shared full state");
        assert_eq!(full[0].to, vec![1, 2]);
        assert_eq!(full[0].payload, p.state_json());
        assert!(pushes.iter().all(|x| x.event != PRESENCE_COUNT));
        assert_eq!(s.mode(2), Some(&Mode::Plain));
        // The subscriber saw e leave.
        assert_eq!(
            keys_of(&to(&pushes, 3, PRESENCE_DIFF)[0]["leaves"]),
            strs(&["e"])
        );
    }

    #[test]
    fn relevant_viewers_get_only_their_keys_and_top_ups() {
        let mut s: Selective<u64> = Selective::new(limits(3, 2));
        let mut p = present(&["a", "b", "c", "d"]);
        fan(&mut s, &Diff::default(), &p, 0);
        assert!(s.is_large());
        s.set_host(Some("a".into()));
        s.join(1, 1, member("v1", &["z"]), &p, 0);
        let Some(Mode::Relevant(set)) = s.mode(1) else {
            panic!("not relevant")
        };
        let set: BTreeSet<String> = set.iter().cloned().collect();
        assert!(set.contains("a"));
        assert_eq!(set.len(), 2);
        let other = ["b", "c", "d"]
            .into_iter()
            .find(|k| !set.contains(*k))
            .unwrap();
        // A key outside the set changes: nothing is sent (beyond the count).
        let sess = 1000
            + ["a", "b", "c", "d"]
                .iter()
                .position(|k| *k == other)
                .unwrap() as u64;
        let d = p.track(sess, other, json!({"x": 1})).unwrap();
        let pushes = fan(&mut s, &d, &p, 10);
        assert!(to(&pushes, 1, PRESENCE_DIFF).is_empty());
        // The host updating its meta goes through whole.
        let d = p.track(1000, "a", json!({"x": 2})).unwrap();
        let pushes = fan(&mut s, &d, &p, 20);
        assert_eq!(to(&pushes, 1, PRESENCE_DIFF), vec![&d.to_json()]);
        // The friend joins while the set is full: not added.
        let d = p.track(50, "z", json!({})).unwrap();
        let pushes = fan(&mut s, &d, &p, 30);
        assert!(to(&pushes, 1, PRESENCE_DIFF).is_empty());
        p.untrack(50);
        // The sampled member leaves: it leaves the set (leave is sent).
        let sampled = set.iter().find(|k| *k != "a").unwrap().clone();
        let sess = 1000
            + ["a", "b", "c", "d"]
                .iter()
                .position(|k| *k == sampled)
                .unwrap() as u64;
        let d = p.untrack(sess);
        let pushes = fan(&mut s, &d, &p, 40);
        assert_eq!(
            keys_of(&to(&pushes, 1, PRESENCE_DIFF)[0]["leaves"]),
            vec![sampled.clone()]
        );
        // Now a stranger joining is not added, the friend is (with all its metas).
        p.track(60, "z", json!({"first": true})).unwrap();
        let d = p.track(61, "z", json!({"second": true})).unwrap();
        let stranger = p.track(62, "q", json!({})).unwrap();
        let mut both = d.clone();
        both.merge(stranger);
        let pushes = fan(&mut s, &both, &p, 50);
        let diffs = to(&pushes, 1, PRESENCE_DIFF);
        assert_eq!(diffs.len(), 1);
        assert_eq!(keys_of(&diffs[0]["joins"]), strs(&["z"]));
        assert_eq!(diffs[0]["joins"]["z"]["metas"].as_array().unwrap().len(), 2);
        assert!(
            matches!(s.mode(1), Some(Mode::Relevant(set)) if set.contains("z") && set.len() == 2)
        );
    }

    #[test]
    fn recent_chatter_joining_is_topped_up() {
        let mut s: Selective<u64> = Selective::new(limits(2, 5));
        let mut p = present(&["a", "b", "c"]);
        fan(&mut s, &Diff::default(), &p, 0);
        s.join(1, 1, member("v", &[]), &p, 0);
        s.chatted("talker", 1_000);
        s.chatted("old", 0);
        let d1 = p.track(70, "old", json!({})).unwrap();
        let pushes = fan(&mut s, &d1, &p, 61_000);
        // "old" chatted 61 s ago: not a recent chatter, so not added to the
        // set although it has room, and nothing is sent.
        assert!(to(&pushes, 1, PRESENCE_DIFF).is_empty());
        let d2 = p.track(71, "talker", json!({})).unwrap();
        let pushes = fan(&mut s, &d2, &p, 61_000);
        assert_eq!(
            keys_of(&to(&pushes, 1, PRESENCE_DIFF)[0]["joins"]),
            strs(&["talker"])
        );
    }

    #[test]
    fn viewers_seeing_the_same_part_share_one_push() {
        let mut s: Selective<u64> = Selective::new(limits(100, 3));
        let mut p = present(&["a", "b"]);
        for id in 1..=3 {
            s.join(id, id, member(&format!("v{id}"), &[]), &p, 0);
        }
        s.subscribe(1, &strs(&["a"]), &[], &p).unwrap();
        s.subscribe(2, &strs(&["a"]), &[], &p).unwrap();
        let mut d = p.track(1000, "a", json!({"n": 2})).unwrap();
        d.merge(p.track(1001, "b", json!({"n": 2})).unwrap());
        let pushes = fan(&mut s, &d, &p, 0);
        assert_eq!(pushes.len(), 2);
        let part = pushes.iter().find(|x| x.to == vec![1, 2]).unwrap();
        assert_eq!(keys_of(&part.payload["joins"]), strs(&["a"]));
        assert_eq!(keys_of(&part.payload["leaves"]), strs(&["a"]));
        let whole = pushes.iter().find(|x| x.to == vec![3]).unwrap();
        assert_eq!(whole.payload, d.to_json());
        // A diff of only b: subscribers get nothing at all.
        let d = p.track(1001, "b", json!({"n": 3})).unwrap();
        let pushes = fan(&mut s, &d, &p, 0);
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].to, vec![3]);
    }

    #[test]
    fn subscribe_state_then_diffs_and_cap() {
        let mut s: Selective<u64> = Selective::new(limits(100, 3));
        let p = present(&["a", "b", "c"]);
        s.join(1, 1, member("v", &[]), &p, 0);
        let r = s.subscribe(1, &strs(&["a", "x"]), &[], &p).unwrap();
        assert!(r.first);
        assert_eq!(r.keys, 2);
        assert_eq!(r.pushes.len(), 1);
        assert_eq!(r.pushes[0].event, PRESENCE_STATE);
        assert_eq!(keys_of(&r.pushes[0].payload), strs(&["a"]));
        let r = s
            .subscribe(1, &strs(&["b", "y"]), &strs(&["a"]), &p)
            .unwrap();
        assert!(!r.first);
        assert_eq!(r.keys, 3);
        assert_eq!(r.pushes[0].event, PRESENCE_DIFF);
        assert_eq!(keys_of(&r.pushes[0].payload["joins"]), strs(&["b"]));
        assert_eq!(keys_of(&r.pushes[0].payload["leaves"]), strs(&["a"]));
        // 5 keys > cap 4: refused, set unchanged.
        let err = s.subscribe(1, &strs(&["c", "z"]), &[], &p).unwrap_err();
        assert_eq!(err, SubscribeError::Cap { limit: 4 });
        assert_eq!(
            err.to_string(),
            "presence_subscription_cap: at most 4 keys (presence.max_subscribed_keys)"
        );
        let Some(Mode::Subscribed(set)) = s.mode(1) else {
            panic!()
        };
        assert_eq!(set.len(), 3);
        // Adding and removing absent keys sends nothing.
        let r = s.subscribe(1, &[], &strs(&["x"]), &p).unwrap();
        assert_eq!(r.keys, 2);
        assert!(r.pushes.is_empty());
        // Add and remove of the same key: removed.
        let r = s.subscribe(1, &strs(&["c"]), &strs(&["c"]), &p).unwrap();
        assert_eq!(r.keys, 2);
        assert_eq!(
            s.subscribe(9, &[], &[], &p).unwrap_err(),
            SubscribeError::NotJoined
        );
        assert_eq!(s.addr(1), Some(1));
        assert_eq!(
            s.leave(1).map(|m| matches!(m, Mode::Subscribed(_))),
            Some(true)
        );
        assert!(s.mode(1).is_none());
    }

    #[test]
    fn count_is_throttled_to_one_per_second_and_only_on_change() {
        let mut s: Selective<u64> = Selective::new(limits(2, 2));
        let mut p = present(&["a", "b", "c"]);
        s.join(1, 1, member("v", &[]), &p, 0);
        let pushes = fan(&mut s, &Diff::default(), &p, 1_000);
        assert_eq!(to(&pushes, 1, PRESENCE_COUNT), vec![&json!({"count": 3})]);
        assert_eq!(s.wait_ms(1_000), None);
        // Changes within the second: nothing now, one later with the latest.
        let d = p.track(5, "d", json!({})).unwrap();
        assert!(to(&fan(&mut s, &d, &p, 1_200), 1, PRESENCE_COUNT).is_empty());
        let d = p.track(6, "e", json!({})).unwrap();
        assert!(to(&fan(&mut s, &d, &p, 1_500), 1, PRESENCE_COUNT).is_empty());
        assert_eq!(s.wait_ms(1_500), Some(500));
        assert!(s.tick(1_999).is_none());
        let push = s.tick(2_000).unwrap();
        assert_eq!(push.payload, json!({"count": 5}));
        assert_eq!(push.to, vec![1]);
        assert_eq!(s.wait_ms(2_000), None);
        assert!(s.tick(5_000).is_none());
        // A change back and forth within the period sends nothing.
        let d = p.track(7, "f", json!({})).unwrap();
        fan(&mut s, &d, &p, 2_100);
        let d = p.untrack(7);
        fan(&mut s, &d, &p, 2_200);
        assert_eq!(s.wait_ms(2_200), None);
        // A joiner gets the count at once.
        let pushes = s.join(2, 2, member("w", &[]), &p, 2_300);
        assert_eq!(to(&pushes, 2, PRESENCE_COUNT), vec![&json!({"count": 5})]);
        assert_eq!(to(&pushes, 2, PRESENCE_STATE).len(), 1);
    }

    #[test]
    fn chatters_are_pruned_when_the_map_grows() {
        let mut s: Selective<u64> = Selective::new(limits(2, 2));
        for i in 0..1_100u64 {
            s.chatted(&format!("k{i}"), i * 100);
        }
        assert!(s.chatters.len() < 1_100);
        assert!(s.chatters.contains_key("k1099"));
    }

    #[test]
    fn payload_parsing() {
        let (add, remove) = parse_subscribe(&json!({"add": ["a"], "remove": ["b"]}), 3).unwrap();
        assert_eq!((add, remove), (strs(&["a"]), strs(&["b"])));
        assert_eq!(
            parse_subscribe(&json!({"add": ["a"]}), 3).unwrap(),
            (strs(&["a"]), vec![])
        );
        for bad in [
            json!(null),
            json!([]),
            json!({}),
            json!({"add": "a"}),
            json!({"add": [1]}),
            json!({"remove": [""]}),
        ] {
            assert!(parse_subscribe(&bad, 3).is_err(), "{bad}");
        }
        assert_eq!(
            parse_subscribe(&json!({"add": ["a", "b", "c", "d"]}), 3).unwrap_err(),
            cap_error(3)
        );
        assert_eq!(
            parse_online(&json!({"keys": ["a"]}), 3).unwrap(),
            strs(&["a"])
        );
        assert!(parse_online(&json!({"keys": 3}), 3).is_err());
        assert!(parse_online(&json!({}), 3).is_err());
        assert_eq!(
            parse_online(&json!({"keys": ["a", "b", "c", "d"]}), 3).unwrap_err(),
            cap_error(3)
        );
        assert_eq!(
            online_reply(&strs(&["a", "b"]), &strs(&["b"])),
            json!({"online": {"a": false, "b": true}})
        );
    }
}
