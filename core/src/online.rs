//! Who is online anywhere (the "green dot"), as one presence shard keeps
//! it: per key, how many presences each reporting node's channels hold.
//!
//! Channels report a key's presence joins and leaves to the key's shard.
//! In a cluster those channels run on several nodes; when a node is lost,
//! the presences its channels reported go with it (their channels restart
//! elsewhere and their clients track again), so counts are kept per
//! reporting node and [`Online::retain_nodes`] drops a lost node's share
//! at once. A key is online while any node reports it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::ring::shard_of;

/// What one (key, reporting node) entry is counted as besides the key's
/// bytes: the map entries, the count and the key's allocation header.
pub const ENTRY_BYTES: usize = 64;

/// A shard's presence counts, by key and reporting node.
#[derive(Debug, Clone, Default)]
pub struct Online {
    counts: HashMap<String, BTreeMap<u64, u32>>,
    /// Per reporting node, how many keys it reports (so [`Self::reporters`]
    /// costs the number of nodes, not of keys).
    keys_by_node: BTreeMap<u64, usize>,
    /// Per reporting node, the bytes its entries are counted as (key bytes
    /// plus [`ENTRY_BYTES`] each).
    bytes_by_node: BTreeMap<u64, usize>,
}

fn entry_bytes(key: &str) -> usize {
    key.len() + ENTRY_BYTES
}

/// A budget for what a shard holds from other nodes' reports
/// (`presence.remote_bytes`): `here` is this node, whose own channels'
/// reports are never refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub here: u64,
    pub bytes: usize,
}

impl Online {
    /// No one online.
    pub fn new() -> Self {
        Self::default()
    }

    /// `node` reports `delta` presences of `key` (`+1` a join, `-1` a
    /// leave). A count never goes below zero: a leave without its join
    /// (a shard restarted in between) is ignored.
    pub fn delta(&mut self, node: u64, key: &str, delta: i32) {
        let per_node = self.counts.entry(key.to_string()).or_default();
        let before = per_node.get(&node).copied().unwrap_or(0);
        let after = before.saturating_add_signed(delta);
        if after == 0 {
            per_node.remove(&node);
        } else {
            per_node.insert(node, after);
        }
        if per_node.is_empty() {
            self.counts.remove(key);
        }
        match (before, after) {
            (0, a) if a > 0 => {
                *self.keys_by_node.entry(node).or_insert(0) += 1;
                *self.bytes_by_node.entry(node).or_insert(0) += entry_bytes(key);
            }
            (b, 0) if b > 0 => self.forget_one(node, key),
            _ => {}
        }
    }

    /// [`Self::delta`] of another node's report within `budget`: a key
    /// `node` does not report yet is refused (`false`, nothing changes)
    /// when it would take what this shard holds from other nodes past
    /// `budget.bytes`. This node's reports and leaves always pass.
    pub fn delta_within(&mut self, node: u64, key: &str, delta: i32, budget: Budget) -> bool {
        let new_entry = delta > 0
            && node != budget.here
            && self
                .counts
                .get(key)
                .is_none_or(|per_node| !per_node.contains_key(&node));
        if new_entry && self.bytes_from_others(budget.here) + entry_bytes(key) > budget.bytes {
            return false;
        }
        self.delta(node, key, delta);
        true
    }

    /// The bytes held for nodes other than `here`.
    pub fn bytes_from_others(&self, here: u64) -> usize {
        self.bytes_by_node
            .iter()
            .filter(|(n, _)| **n != here)
            .map(|(_, b)| *b)
            .sum()
    }

    fn forget_one(&mut self, node: u64, key: &str) {
        if let Some(n) = self.keys_by_node.get_mut(&node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.keys_by_node.remove(&node);
            }
        }
        if let Some(b) = self.bytes_by_node.get_mut(&node) {
            *b = b.saturating_sub(entry_bytes(key));
            if *b == 0 {
                self.bytes_by_node.remove(&node);
            }
        }
    }

    /// Whether `key` is online anywhere.
    pub fn is_online(&self, key: &str) -> bool {
        self.counts.contains_key(key)
    }

    /// Drops what nodes not in `live` reported; returns the keys that went
    /// offline because of it, sorted.
    pub fn retain_nodes(&mut self, live: impl Fn(u64) -> bool) -> Vec<String> {
        let lost: Vec<u64> = self
            .keys_by_node
            .keys()
            .copied()
            .filter(|n| !live(*n))
            .collect();
        if lost.is_empty() {
            return Vec::new();
        }
        for n in &lost {
            self.keys_by_node.remove(n);
            self.bytes_by_node.remove(n);
        }
        let mut gone = Vec::new();
        self.counts.retain(|key, per_node| {
            per_node.retain(|node, _| !lost.contains(node));
            if per_node.is_empty() {
                gone.push(key.clone());
                false
            } else {
                true
            }
        });
        gone.sort();
        gone
    }

    /// What `node` reports: its keys and their counts, by key.
    pub fn reported_by(&self, node: u64) -> Vec<(String, u32)> {
        if !self.keys_by_node.contains_key(&node) {
            return Vec::new();
        }
        let mut out: Vec<(String, u32)> = self
            .counts
            .iter()
            .filter_map(|(key, per_node)| per_node.get(&node).map(|c| (key.clone(), *c)))
            .collect();
        out.sort();
        out
    }

    /// `node`'s full report (a copy another node's shard sends when it
    /// first sees this one): with `replace`, what `node` reported before is
    /// dropped first; without, `counts` adds to it (the next part of a copy
    /// sent in parts). Each key within `budget` ([`Self::delta_within`]);
    /// returns how many were refused.
    pub fn set_node(
        &mut self,
        node: u64,
        counts: &[(String, u32)],
        replace: bool,
        budget: Budget,
    ) -> usize {
        if replace {
            self.retain_nodes(|n| n != node);
        }
        counts
            .iter()
            .filter(|(key, count)| {
                let delta = i32::try_from(*count).unwrap_or(i32::MAX);
                !self.delta_within(node, key, delta, budget)
            })
            .count()
    }

    /// The nodes that report anything, ascending.
    pub fn reporters(&self) -> impl Iterator<Item = u64> + '_ {
        self.keys_by_node.keys().copied()
    }

    /// Keys online.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether no key is online.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// Looks at the membership a presence shard keeps, in a cluster: every
/// shard holds what every node's channels report (each node's shard sends
/// its own node's reports to the same shard on every other node), so a
/// query is answered by the asker's own node.
#[derive(Debug, Clone)]
pub struct Peers {
    here: u64,
    /// The other members at the last look.
    members: Vec<u64>,
    /// Reporters that are not members, and for how many looks in a row.
    absent: BTreeMap<u64, u32>,
}

/// How many looks in a row a reporter that was never a member here is kept
/// (a node that just joined reports before this node lists it).
pub const ABSENT_LOOKS: u32 = 3;

impl Peers {
    /// No other member known yet.
    pub fn new(here: u64) -> Self {
        Self {
            here,
            members: Vec::new(),
            absent: BTreeMap::new(),
        }
    }

    /// The other members at the last look: where this node's reports go.
    pub fn members(&self) -> &[u64] {
        &self.members
    }

    /// A look at the cluster's `members` now: drops from `online` what a
    /// node that left reported (at once when it had been a member, after
    /// [`ABSENT_LOOKS`] looks otherwise) and returns the nodes that joined
    /// since the last look (they get a copy of this node's reports).
    pub fn look(&mut self, members: &[u64], online: &mut Online) -> Vec<u64> {
        let now: Vec<u64> = members
            .iter()
            .copied()
            .filter(|n| *n != self.here)
            .collect();
        let joined: Vec<u64> = now
            .iter()
            .copied()
            .filter(|n| !self.members.contains(n))
            .collect();
        let left: Vec<u64> = self
            .members
            .iter()
            .copied()
            .filter(|n| !now.contains(n))
            .collect();
        let here = self.here;
        let mut drop = Vec::new();
        let reporters: Vec<u64> = online.reporters().collect();
        self.absent.retain(|n, _| reporters.contains(n));
        for n in reporters {
            if n == here || now.contains(&n) {
                self.absent.remove(&n);
            } else if left.contains(&n) {
                drop.push(n);
            } else {
                let looks = self.absent.entry(n).or_insert(0);
                *looks += 1;
                if *looks >= ABSENT_LOOKS {
                    drop.push(n);
                }
            }
        }
        if !drop.is_empty() {
            online.retain_nodes(|n| !drop.contains(&n));
            for n in &drop {
                self.absent.remove(n);
            }
        }
        self.members = now;
        joined
    }
}

/// Most bytes of keys in one part of a channel's re-report to a restarted
/// shard ([`report_parts`]), each key counted as its bytes plus
/// [`ENTRY_BYTES`]. (What one channel can re-report in all is bounded by
/// `limits.presence_bytes`: it holds no more keys than that.)
pub const REPORT_PART_BYTES: usize = 64 * 1024;

/// A channel's re-report to presence shard `shard` of `shards`: of its
/// `counts` (presence key, metas held), the keys that hash to that shard,
/// in parts of at most `part_bytes` (at least one key per part). Always at
/// least one part, empty when no key hashes there: the shard waits for
/// every channel it asked.
pub fn report_parts<'a>(
    counts: impl IntoIterator<Item = (&'a str, usize)>,
    shard: usize,
    shards: usize,
    part_bytes: usize,
) -> Vec<Vec<(String, u32)>> {
    let mut parts = vec![Vec::new()];
    let mut bytes = 0;
    for (key, n) in counts {
        if n == 0 || shard_of(key, shards) != shard {
            continue;
        }
        let size = entry_bytes(key);
        if bytes + size > part_bytes && parts.last().is_some_and(|p| !p.is_empty()) {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(part) = parts.last_mut() {
            part.push((key.to_string(), u32::try_from(n).unwrap_or(u32::MAX)));
        }
    }
    parts
}

/// A presence shard rebuilding what its own node's channels hold: after
/// the shard restarted (it starts empty), or after one of the node's
/// channels crashed (nobody reported the leaves of the presences it held,
/// so its share would stay counted: the green dot stuck on).
///
/// The shard asks its node's channel directories, which name their
/// channels ([`Self::listed`]) and ask each to re-report, in parts, the
/// keys that hash to the shard as absolute counts ([`Self::counts`]).
/// These build the node's counts aside; [`Self::finish`] swaps them in for
/// what the shard counted for its node, so its answers stay those of its
/// live counts until then (no window where everyone looks offline).
/// Meanwhile channels keep reporting deltas: the shard counts them as
/// usual and hands them to [`Self::delta`]. Mail from one channel arrives
/// in the order it was sent, so a delta a channel sent before its re-report
/// is already in the counts and one sent after is not: until a channel's
/// re-report begins, its deltas are held and then dropped; from then on
/// they count in the counts built aside. No delta is counted twice. Deltas
/// of channels no directory named (started since) are exact from zero and
/// are added when the rebuild ends, as are those of a channel that never
/// re-reported (gone, or past the shard's deadline; its leaves of keys
/// held before are then ignored, as without a rebuild).
#[derive(Debug, Clone)]
pub struct Rebuild {
    here: u64,
    /// Directories that have not named their channels yet.
    directories: BTreeSet<u32>,
    /// Channels named by a directory whose re-report has not begun.
    awaited: BTreeSet<u64>,
    /// Channels whose re-report began: their deltas count as usual.
    reported: BTreeSet<u64>,
    /// Per channel whose re-report has not begun, its deltas since the
    /// rebuild began, net per key.
    held: HashMap<u64, HashMap<String, i64>>,
    /// The node's counts being rebuilt.
    fresh: Online,
}

impl Rebuild {
    /// A rebuild of node `here`'s reports, asking `directories`.
    pub fn new(here: u64, directories: impl IntoIterator<Item = u32>) -> Self {
        Self {
            here,
            directories: directories.into_iter().collect(),
            awaited: BTreeSet::new(),
            reported: BTreeSet::new(),
            held: HashMap::new(),
            fresh: Online::new(),
        }
    }

    /// A delta of `key` from `channel` on `node`, which the shard also
    /// counts in its live counts: whether it is held for the end of the
    /// rebuild (the channel's re-report has not begun) rather than counted
    /// in the counts built aside. Other nodes' deltas are not this
    /// rebuild's business (`false`).
    pub fn delta(&mut self, node: u64, channel: u64, key: &str, delta: i32) -> bool {
        if node != self.here {
            return false;
        }
        if self.reported.contains(&channel) {
            self.fresh.delta(node, key, delta);
            return false;
        }
        *self
            .held
            .entry(channel)
            .or_default()
            .entry(key.to_string())
            .or_insert(0) += i64::from(delta);
        true
    }

    /// Directory `directory` names its `channels` (each was asked to
    /// re-report).
    pub fn listed(&mut self, directory: u32, channels: &[u64]) {
        self.directories.remove(&directory);
        for c in channels {
            if !self.reported.contains(c) {
                self.awaited.insert(*c);
            }
        }
    }

    /// A part of `channel`'s re-report: its absolute `counts`, added to
    /// the counts built aside. The first part drops the deltas held from
    /// that channel (the counts include them).
    pub fn counts(&mut self, channel: u64, counts: &[(String, u32)]) {
        if self.reported.insert(channel) {
            self.held.remove(&channel);
            self.awaited.remove(&channel);
        }
        for (key, n) in counts {
            self.fresh
                .delta(self.here, key, i32::try_from(*n).unwrap_or(i32::MAX));
        }
    }

    /// Whether every directory named its channels and every one of them
    /// re-reported.
    pub fn is_done(&self) -> bool {
        self.directories.is_empty() && self.awaited.is_empty()
    }

    /// Ends the rebuild (done, or past the shard's deadline): the deltas
    /// still held are added to the counts built aside, which replace what
    /// `online` counted for this node (other nodes' reports stay). Returns
    /// the number of channels named by a directory that never re-reported
    /// (with the directories that never answered, for the log).
    pub fn finish(mut self, online: &mut Online) -> (usize, usize) {
        for (_, keys) in std::mem::take(&mut self.held) {
            for (key, net) in keys {
                let delta = i32::try_from(net).unwrap_or(if net < 0 { i32::MIN } else { i32::MAX });
                if delta != 0 {
                    self.fresh.delta(self.here, &key, delta);
                }
            }
        }
        let here = self.here;
        online.retain_nodes(|n| n != here);
        for (key, n) in self.fresh.reported_by(here) {
            online.delta(here, &key, i32::try_from(n).unwrap_or(i32::MAX));
        }
        (self.awaited.len(), self.directories.len())
    }
}
