//! Consistent hashing: which node (or shard) owns a key.
//!
//! Channel servers are placed on a ring of virtual nodes (Discord's
//! approach): every node contributes `vnodes_per_node` points, a key belongs
//! to the first point at or after its hash. Adding or removing a node moves
//! only the keys of the arcs it gains or loses, about 1/N of them, so a
//! membership change restarts few channels. Fixed shard sets (presence
//! shards, data-service workers) use the simpler [`shard_of`].
//!
//! Every process on every node must compute the same owner, so hashing is
//! our own stable function ([`stable_hash64`]), never std's per-process
//! randomised `DefaultHasher`, and the ring depends only on the set of
//! nodes, not on the order they were added.

use std::collections::BTreeSet;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// A stable 64-bit hash: FNV-1a over the bytes, then the MurmurHash3
/// 64-bit finaliser. FNV-1a alone is stable and fast for short keys but
/// barely mixes its last bytes into the high bits, so keys like
/// `room:1`/`room:2` would land next to each other on the ring; the
/// finaliser spreads every input bit over the whole word.
///
/// Part of the cluster's wire contract: changing it reshuffles every key.
pub fn stable_hash64(bytes: &[u8]) -> u64 {
    fmix64(fnv1a(FNV_OFFSET, bytes))
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The ring position of a node's `index`-th virtual node. The 0xFF byte
/// cannot occur in UTF-8, so `("a", 12)` and `("a1", 2)` never collide.
fn vnode_hash(name: &str, index: u32) -> u64 {
    let h = fnv1a(FNV_OFFSET, name.as_bytes());
    let h = fnv1a(h, &[0xFF]);
    fmix64(fnv1a(h, &index.to_le_bytes()))
}

/// The shard (in `0..n_shards`) that owns `key`, for fixed shard sets.
///
/// Plain modulo: when the count changes almost every key moves, which is
/// fine for sets sized once in config. `n_shards == 0` is a configuration
/// error the config layer rejects; here it maps everything to shard 0
/// rather than panicking.
pub fn shard_of(key: &str, n_shards: usize) -> usize {
    let n = n_shards.max(1) as u64;
    // The remainder is < n_shards, which is a usize.
    (stable_hash64(key.as_bytes()) % n) as usize
}

/// A consistent-hash ring of nodes named by strings.
#[derive(Debug, Clone)]
pub struct HashRing<N> {
    vnodes_per_node: u32,
    nodes: BTreeSet<N>,
    /// Sorted by (position, node): ties (astronomically rare) are broken by
    /// node order, never by insertion order.
    points: Vec<(u64, N)>,
}

impl<N: Clone + Ord + AsRef<str>> HashRing<N> {
    /// An empty ring. More virtual nodes per node even out the arcs (the
    /// spread of load shrinks roughly as 1/√vnodes) at the cost of memory
    /// and lookup depth; 128–256 is the usual range. Zero is treated as 1.
    pub fn new(vnodes_per_node: u32) -> Self {
        HashRing {
            vnodes_per_node: vnodes_per_node.max(1),
            nodes: BTreeSet::new(),
            points: Vec::new(),
        }
    }

    /// Adds a node; returns false if it was already there.
    pub fn add(&mut self, node: N) -> bool {
        if self.nodes.contains(&node) {
            return false;
        }
        for i in 0..self.vnodes_per_node {
            self.points
                .push((vnode_hash(node.as_ref(), i), node.clone()));
        }
        self.points.sort_unstable();
        self.nodes.insert(node);
        true
    }

    /// Removes a node; returns false if it was not there.
    pub fn remove(&mut self, node: &N) -> bool {
        if !self.nodes.remove(node) {
            return false;
        }
        self.points.retain(|(_, n)| n != node);
        true
    }

    /// The node owning `key`, `None` if the ring is empty.
    pub fn owner(&self, key: &str) -> Option<&N> {
        let h = stable_hash64(key.as_bytes());
        let i = self.points.partition_point(|(p, _)| *p < h);
        self.points
            .get(i)
            .or_else(|| self.points.first())
            .map(|(_, n)| n)
    }

    /// The nodes in the ring, in order.
    pub fn nodes(&self) -> impl Iterator<Item = &N> {
        self.nodes.iter()
    }

    /// Whether `node` is in the ring.
    pub fn contains(&self, node: &N) -> bool {
        self.nodes.contains(node)
    }

    /// Number of nodes (not virtual nodes).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the ring has no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}
