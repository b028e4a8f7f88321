//! Relays: how a channel's frames reach sockets on every node.
//!
//! Sockets belong to the node that accepted them: only that node's host can
//! queue a frame on one. A subscriber is therefore addressed by an
//! [`Outlet`] — its node, that node's relay process, and the socket id the
//! node's host gave it. A channel builds each frame once per serializer,
//! queues it on its own node's outlets with one host call per serializer,
//! and sends every other node that has subscribers ONE message carrying
//! the frame bytes per serializer with that node's socket ids; the relay on
//! that node makes the host calls. [`plan`] is that split.
//!
//! Ordering: a channel sends to a given relay from one process, one message
//! at a time, and a relay handles its mail in order, so frames of one
//! channel reach each socket in the channel's order on every node.
//!
//! Regions: nodes carry a region label (`cluster.region`). [`regional`]
//! splits the remote batches further: nodes of the channel's own region
//! (and nodes whose region is unknown) get their batch directly; each other
//! region gets ONE message, to the relay of one node there (the region's
//! *hub* for this channel), carrying the batches of every node of that
//! region; the hub's relay queues its own part and forwards the others'
//! inside its region. A channel keeps its hub per region ([`Hubs`]) for as
//! long as that node is a member, even while it has no subscribers, so a
//! node's frames always take the same path and keep the channel's order.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where one subscriber's frames are queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Outlet {
    /// The node whose host holds the socket (a lunatic node id).
    pub node: u64,
    /// That node's relay process (its lunatic process id on `node`), as the
    /// session saw it when it joined.
    pub relay: u64,
    /// The socket id on `node`.
    pub socket: u64,
}

/// The outlets of one node, grouped like the input: `parts[i]` holds the
/// socket ids that get frame `K`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<K> {
    pub node: u64,
    pub relay: u64,
    pub parts: Vec<(K, Vec<u64>)>,
}

/// A fan-out split by node: the sockets here, and one batch per other
/// (node, relay), in ascending node order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<K> {
    pub local: Vec<(K, Vec<u64>)>,
    pub remote: Vec<Batch<K>>,
}

impl<K> Plan<K> {
    /// Messages the plan costs: host calls here plus one per remote batch.
    pub fn messages(&self) -> usize {
        self.local.len() + self.remote.len()
    }
}

/// Splits `groups` (a frame key, e.g. the serializer, with the outlets that
/// get that frame) by node as seen from node `here`. Empty groups are
/// dropped; a key keeps its position within each node's parts. Outlets of
/// one node naming different relays (a relay restarted between two joins)
/// go into one batch per relay, so none is lost.
pub fn plan<K: Copy>(here: u64, groups: impl IntoIterator<Item = (K, Vec<Outlet>)>) -> Plan<K> {
    let mut local = Vec::new();
    let mut remote: Vec<Batch<K>> = Vec::new();
    for (key, mut outlets) in groups {
        // Sorting keeps each node's sockets together, so one pass builds
        // the parts (and the output does not depend on the input's order).
        outlets.sort_unstable();
        let mut here_sockets = Vec::new();
        let mut i = 0;
        while let Some(first) = outlets.get(i) {
            let (node, relay) = (first.node, first.relay);
            let run = outlets[i..]
                .iter()
                .take_while(|o| o.node == node && o.relay == relay)
                .count();
            let sockets = outlets[i..i + run].iter().map(|o| o.socket);
            if node == here {
                here_sockets.extend(sockets);
            } else {
                let sockets: Vec<u64> = sockets.collect();
                match remote
                    .iter_mut()
                    .find(|b| b.node == node && b.relay == relay)
                {
                    Some(b) => b.parts.push((key, sockets)),
                    None => remote.push(Batch {
                        node,
                        relay,
                        parts: vec![(key, sockets)],
                    }),
                }
            }
            i += run;
        }
        if !here_sockets.is_empty() {
            local.push((key, here_sockets));
        }
    }
    remote.sort_by_key(|b| (b.node, b.relay));
    Plan { local, remote }
}

/// A node another region's traffic of one channel enters through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hub {
    pub node: u64,
    pub relay: u64,
}

/// One channel's hub per other region, kept across fan-outs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hubs(BTreeMap<String, Hub>);

impl Hubs {
    pub fn get(&self, region: &str) -> Option<Hub> {
        self.0.get(region).copied()
    }
}

/// What crosses to one other region: one message to `hub`'s relay with
/// the batches of that region's nodes (the hub's own among them when it
/// has subscribers), in ascending node order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing<K> {
    pub region: String,
    pub hub: Hub,
    pub batches: Vec<Batch<K>>,
}

/// Remote batches split by region, as seen from a node of `here`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Regional<K> {
    /// Batches sent to their node directly: nodes of this region, nodes of
    /// unknown region, and a region whose only batch is its hub's.
    pub direct: Vec<Batch<K>>,
    /// One per other region, in region order.
    pub crossings: Vec<Crossing<K>>,
}

/// Splits a plan's `remote` batches by region ([`module docs`](self)).
/// `region_of` names a member's region (`None`: not a member, or unknown);
/// `seed` (e.g. a hash of the topic) picks a new hub among the region's
/// nodes with subscribers, so channels spread their hubs over the region.
/// A kept hub that is no longer a member is replaced.
pub fn regional<'r, K>(
    remote: Vec<Batch<K>>,
    here: &str,
    region_of: impl Fn(u64) -> Option<&'r str>,
    hubs: &mut Hubs,
    seed: u64,
) -> Regional<K> {
    let mut direct = Vec::new();
    let mut by_region: BTreeMap<&str, Vec<Batch<K>>> = BTreeMap::new();
    for b in remote {
        match region_of(b.node) {
            Some(r) if r != here => by_region.entry(r).or_default().push(b),
            _ => direct.push(b),
        }
    }
    let mut crossings = Vec::new();
    for (region, batches) in by_region {
        let kept = hubs
            .get(region)
            .filter(|h| region_of(h.node) == Some(region));
        let hub = match kept {
            // The hub's relay as its newest outlets name it (a restarted
            // relay has a new process id).
            Some(h) => batches
                .iter()
                .find(|b| b.node == h.node)
                .map_or(h, |b| Hub {
                    node: b.node,
                    relay: b.relay,
                }),
            None => {
                let pick = &batches[(seed % batches.len() as u64) as usize];
                Hub {
                    node: pick.node,
                    relay: pick.relay,
                }
            }
        };
        hubs.0.insert(region.to_string(), hub);
        if let [only] = batches.as_slice() {
            if only.node == hub.node && only.relay == hub.relay {
                direct.extend(batches);
                continue;
            }
        }
        crossings.push(Crossing {
            region: region.to_string(),
            hub,
            batches,
        });
    }
    direct.sort_by_key(|b| (b.node, b.relay));
    Regional { direct, crossings }
}
