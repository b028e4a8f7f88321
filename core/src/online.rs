//! Who is online anywhere (the "green dot"), as one presence shard keeps
//! it: per key, how many presences each reporting node's channels hold.
//!
//! Channels report a key's presence joins and leaves to the key's shard.
//! In a cluster those channels run on several nodes; when a node is lost,
//! the presences its channels reported go with it (their channels restart
//! elsewhere and their clients track again), so counts are kept per
//! reporting node and [`Online::retain_nodes`] drops a lost node's share
//! at once. A key is online while any node reports it.

use std::collections::{BTreeMap, HashMap};

/// A shard's presence counts, by key and reporting node.
#[derive(Debug, Clone, Default)]
pub struct Online {
    counts: HashMap<String, BTreeMap<u64, u32>>,
    /// Per reporting node, how many keys it reports (so [`Self::reporters`]
    /// costs the number of nodes, not of keys).
    keys_by_node: BTreeMap<u64, usize>,
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
            (0, a) if a > 0 => *self.keys_by_node.entry(node).or_insert(0) += 1,
            (b, 0) if b > 0 => self.forget_one(node),
            _ => {}
        }
    }

    fn forget_one(&mut self, node: u64) {
        if let Some(n) = self.keys_by_node.get_mut(&node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.keys_by_node.remove(&node);
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
