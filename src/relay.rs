//! The one way channel frames reach a socket.
//!
//! Only the node that accepted a socket can queue frames on it, so every
//! subscriber is addressed by a [`core::relay::Outlet`](Outlet): its node,
//! that node's relay (the host's native relay process,
//! `chorus_core::msg::RELAY_PID`) and the socket id. [`fanout`] and [`send`]
//! queue frames on this node's sockets with host calls, and send each other
//! node that has subscribers ONE [`RelayMsg`] with the frame bytes per
//! serializer and that node's socket ids (`core::relay::plan`); the relay
//! there queues them natively, in the order they came. On a node alone every
//! outlet is local and no relay message is ever sent.
//!
//! Across regions (`cluster.region`) a fan-out sends each other region ONE
//! [`RelayMsg::Region`], to the relay of that region's hub for the channel
//! (`core::relay::regional`), which queues its own part and forwards each
//! other node's part in its region as a [`RelayMsg::Frames`].

use std::cell::RefCell;
use std::collections::HashMap;

use chorus_core::msg::{Onward, Part, RelayMsg};
use chorus_core::relay::{plan, regional, Batch, Hubs, Outlet};
use supervisors::{mail, ChildRef};

use crate::host::{self, Route};

/// Queues each group's frame on its outlets: one host call per group for
/// this node's sockets, one relay message per other node of this region,
/// one per other region (to its hub).
pub fn fanout<B: AsRef<[u8]>>(groups: Vec<(B, Vec<Outlet>)>, route: Route<'_>) {
    deliver(groups, route, true);
}

/// [`fanout`], for a broadcast (`true`: every local group goes through the
/// host's fan-out, whose writer wakes count for `node.fanout_write_delay_*`)
/// or for one reply (`false`: written at once).
fn deliver<B: AsRef<[u8]>>(groups: Vec<(B, Vec<Outlet>)>, route: Route<'_>, broadcast: bool) {
    // Plans by group index, so the frames are not copied until a remote
    // node needs them.
    let mut frames = Vec::with_capacity(groups.len());
    let mut outlets = Vec::with_capacity(groups.len());
    for (i, (bytes, to)) in groups.into_iter().enumerate() {
        frames.push(bytes);
        outlets.push((i, to));
    }
    let p = plan(mail::node_id(), outlets);
    for (i, sockets) in &p.local {
        if let Some(bytes) = frames.get(*i).map(AsRef::as_ref) {
            match sockets.as_slice() {
                [one] if !broadcast => {
                    host::outlet_send(*one, bytes, route);
                }
                many => {
                    host::fanout(many, bytes, route);
                }
            }
        }
    }
    if p.remote.is_empty() {
        return;
    }
    let split = REGIONS.with(|r| r.borrow_mut().split(p.remote, route.topic));
    let frame = |i: usize| frames.get(i).map(|b| b.as_ref().to_vec());
    for batch in split.direct {
        let parts = batch
            .parts
            .into_iter()
            .filter_map(|(i, sockets)| frame(i).map(|bytes| Part { bytes, sockets }))
            .collect();
        ChildRef::<RelayMsg>::at(batch.node, batch.relay).send(RelayMsg::Frames {
            lane: route.lane,
            topic: route.topic.to_string(),
            key: route.key.to_string(),
            parts,
        });
    }
    for crossing in split.crossings {
        // The frames this region needs, each once, renumbered.
        let mut used: Vec<usize> = Vec::new();
        let onward = crossing
            .batches
            .into_iter()
            .map(|b: Batch<usize>| Onward {
                node: b.node,
                relay: b.relay,
                parts: b
                    .parts
                    .into_iter()
                    .map(|(i, sockets)| {
                        let at = used.iter().position(|u| *u == i).unwrap_or_else(|| {
                            used.push(i);
                            used.len() - 1
                        });
                        (at as u32, sockets)
                    })
                    .collect(),
            })
            .collect();
        let region_frames = used
            .iter()
            .map(|i| serde_bytes::ByteBuf::from(frame(*i).unwrap_or_default()))
            .collect();
        ChildRef::<RelayMsg>::at(crossing.hub.node, crossing.hub.relay).send(RelayMsg::Region {
            lane: route.lane,
            topic: route.topic.to_string(),
            key: route.key.to_string(),
            frames: region_frames,
            onward,
        });
    }
}

thread_local! {
    /// This process's view of the regions and its hubs (a channel's hubs
    /// are its own: each guest process has its own instance).
    static REGIONS: RefCell<Regions> = RefCell::new(Regions::default());
}

/// The members' regions as this process last read them, and its hubs.
#[derive(Default)]
struct Regions {
    members: Vec<u64>,
    here: String,
    region_of: HashMap<u64, String>,
    hubs: Hubs,
}

impl Regions {
    /// Splits remote batches by region, re-reading the regions when the
    /// membership changed (one host call per fan-out that leaves the node).
    fn split(
        &mut self,
        remote: Vec<Batch<usize>>,
        topic: &str,
    ) -> chorus_core::relay::Regional<usize> {
        let members = mail::cluster_nodes();
        if members != self.members || remote.iter().any(|b| !self.region_of.contains_key(&b.node)) {
            let listed = host::cluster_json();
            self.here = listed["region"].as_str().unwrap_or_default().to_string();
            self.region_of = listed["nodes"]
                .as_array()
                .map(|nodes| {
                    nodes
                        .iter()
                        .filter_map(|n| {
                            Some((n["id"].as_u64()?, n["region"].as_str()?.to_string()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            self.members = members;
        }
        let Regions {
            members,
            here,
            region_of,
            hubs,
        } = self;
        let region_of = |node: u64| {
            if members.contains(&node) {
                region_of.get(&node).map(String::as_str)
            } else {
                None
            }
        };
        regional(remote, here, region_of, hubs, fnv(topic))
    }
}

/// FNV-1a of a topic: spreads channels' hubs over a region's nodes.
fn fnv(topic: &str) -> u64 {
    topic.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Queues `bytes` on one outlet (a reply: never delayed).
pub fn send(outlet: Outlet, bytes: &[u8], route: Route<'_>) {
    deliver(vec![(bytes, vec![outlet])], route, false);
}
