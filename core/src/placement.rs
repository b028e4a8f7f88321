//! Placement: which node of a cluster is a topic's home, which directory
//! shard on that node owns it, and which topics a membership change moves.
//!
//! Two levels of consistent hashing ([`HashRing`]):
//!
//! 1. a ring whose members are the cluster's nodes picks the topic's home
//!    node, where its single channel process runs;
//! 2. on that node, a ring of the node's [`DIRECTORIES`] directory shards
//!    picks the shard that starts and finds the channel.
//!
//! The second ring depends only on the shard count, never on the node set,
//! so a membership change moves a topic between nodes or not at all; it
//! never reshuffles topics among the shards of a node that keeps them.
//! Without a cluster the first ring has one member (this node) and every
//! topic is home, which is the single-node layout unchanged.
//!
//! Every node computes the same answer from the same member set: the rings
//! hash with [`crate::ring::stable_hash64`] and ignore the order in which
//! members were added.

use std::collections::BTreeMap;

use crate::ring::HashRing;

/// Directory shards on every node.
pub const DIRECTORIES: u32 = 4;
/// Virtual nodes per directory shard on a node's shard ring.
pub const DIRECTORY_VNODES: u32 = 64;
/// Virtual nodes per cluster node on the node ring: at 128 a node's share
/// of the topics has a spread of about 1/√128 ≈ 9 % (core/tests/placement.rs
/// measures it).
pub const NODE_VNODES: u32 = 128;

/// The registered name of directory shard `i` (each node registers its own
/// shards under these names in its node-local lunatic registry).
pub fn directory_name(i: u32) -> String {
    format!("chorus-dir-{i}")
}

/// A directory shard on a node's shard ring. Ordered by name first, so
/// ring ties (equal 64-bit positions) break as they did when the ring held
/// the bare names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Shard {
    name: String,
    index: u32,
}

impl AsRef<str> for Shard {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

/// Where a topic lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Home<'a, N> {
    /// The node whose channel process serves the topic.
    pub node: &'a N,
    /// The directory shard (in `0..DIRECTORIES`) on that node.
    pub directory: u32,
}

/// The placement of topics on a set of nodes named by `N` (any stable,
/// cluster-wide name: a node name or id rendered as text).
#[derive(Debug, Clone)]
pub struct Placement<N> {
    nodes: HashRing<N>,
    shards: HashRing<Shard>,
}

impl<N: Clone + Ord + AsRef<str>> Placement<N> {
    /// The placement over `nodes` (duplicates count once).
    pub fn new(nodes: impl IntoIterator<Item = N>) -> Self {
        let mut ring = HashRing::new(NODE_VNODES);
        for n in nodes {
            ring.add(n);
        }
        let mut shards = HashRing::new(DIRECTORY_VNODES);
        for index in 0..DIRECTORIES {
            shards.add(Shard {
                name: directory_name(index),
                index,
            });
        }
        Placement {
            nodes: ring,
            shards,
        }
    }

    /// The topic's home, `None` when there is no node at all.
    pub fn home(&self, topic: &str) -> Option<Home<'_, N>> {
        let node = self.nodes.owner(topic)?;
        Some(Home {
            node,
            directory: self.directory(topic),
        })
    }

    /// The directory shard that owns `topic` on its home node.
    pub fn directory(&self, topic: &str) -> u32 {
        self.shards.owner(topic).map_or(0, |s| s.index)
    }

    /// The member nodes, in order.
    pub fn nodes(&self) -> impl Iterator<Item = &N> {
        self.nodes.nodes()
    }

    /// Number of member nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no member node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// One topic whose home changed between two placements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move<'t, N> {
    pub topic: &'t str,
    /// Its old home, `None` if the old placement had no node.
    pub from: Option<N>,
    /// Its new home, `None` if the new placement has no node.
    pub to: Option<N>,
}

/// What a membership change does to a set of running topics: the topics to
/// hand over (stop on `from`, start on `to` at the next join) and how many
/// stay where they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover<'t, N> {
    pub moves: Vec<Move<'t, N>>,
    pub kept: usize,
}

impl<N: Clone + Ord> Handover<'_, N> {
    /// Number of topics whose home moved.
    pub fn moved(&self) -> usize {
        self.moves.len()
    }

    /// Moves counted per `(from, to)` pair, for logs and metrics.
    pub fn counts(&self) -> BTreeMap<(Option<N>, Option<N>), usize> {
        let mut counts = BTreeMap::new();
        for m in &self.moves {
            *counts.entry((m.from.clone(), m.to.clone())).or_insert(0) += 1;
        }
        counts
    }

    /// The moves that take a topic away from `node` (what `node` hands
    /// over).
    pub fn leaving<'a>(&'a self, node: &'a N) -> impl Iterator<Item = &'a Move<'a, N>> + 'a {
        self.moves
            .iter()
            .filter(move |m| m.from.as_ref() == Some(node))
    }
}

/// Which of `topics` change home from `old` to `new`. Only the node ring
/// matters: a topic that keeps its node keeps its directory shard.
pub fn handover<'t, N: Clone + Ord + AsRef<str>>(
    old: &Placement<N>,
    new: &Placement<N>,
    topics: impl IntoIterator<Item = &'t str>,
) -> Handover<'t, N> {
    let mut moves = Vec::new();
    let mut kept = 0;
    for topic in topics {
        let from = old.nodes.owner(topic);
        let to = new.nodes.owner(topic);
        if from == to {
            kept += 1;
        } else {
            moves.push(Move {
                topic,
                from: from.cloned(),
                to: to.cloned(),
            });
        }
    }
    Handover { moves, kept }
}
