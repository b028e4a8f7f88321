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
