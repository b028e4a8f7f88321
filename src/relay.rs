//! The node's relay, and the one way channel frames reach a socket.
//!
//! Only the node that accepted a socket can queue frames on it, so every
//! subscriber is addressed by a [`core::relay::Outlet`](Outlet): its node,
//! that node's relay process and the socket id. [`fanout`] and [`send`]
//! queue frames on this node's sockets with host calls, as before, and send
//! each other node that has subscribers ONE [`RelayMsg`] with the frame
//! bytes per serializer and that node's socket ids (`core::relay::plan`);
//! the relay process there makes the host calls. On a node alone every
//! outlet is local and no relay message is ever sent.

use chorus_core::lanes::Lane;
use chorus_core::relay::{plan, Outlet};
use serde::{Deserialize, Serialize};
use supervisors::{mail, ChildRef, Inbox, Incoming};

use crate::host::{self, Route};

/// Registered name of the node's relay process.
pub const RELAY: &str = "chorus-relay";

/// What a relay receives from channels on other nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum RelayMsg {
    /// Queue each part's frame on its sockets, parts in order.
    Frames {
        lane: Lane,
        topic: String,
        key: String,
        parts: Vec<Part>,
    },
}

/// One frame and the sockets of the relay's node that get it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Part {
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    pub sockets: Vec<u64>,
}

/// Queues each group's frame on its outlets: one host call per group for
/// this node's sockets, one relay message per other node.
pub fn fanout<B: AsRef<[u8]>>(groups: Vec<(B, Vec<Outlet>)>, route: Route<'_>) {
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
                [one] => {
                    host::outlet_send(*one, bytes, route);
                }
                many => {
                    host::fanout(many, bytes, route);
                }
            }
        }
    }
    for batch in p.remote {
        let parts = batch
            .parts
            .into_iter()
            .filter_map(|(i, sockets)| {
                frames.get(i).map(|bytes| Part {
                    bytes: bytes.as_ref().to_vec(),
                    sockets,
                })
            })
            .collect();
        ChildRef::<RelayMsg>::at(batch.node, batch.relay).send(RelayMsg::Frames {
            lane: route.lane,
            topic: route.topic.to_string(),
            key: route.key.to_string(),
            parts,
        });
    }
}

/// Queues `bytes` on one outlet.
pub fn send(outlet: Outlet, bytes: &[u8], route: Route<'_>) {
    fanout(vec![(bytes, vec![outlet])], route);
}

/// The relay process: queues what channels on other nodes send to this
/// node's sockets.
pub fn relay(_: (), inbox: Inbox<RelayMsg>) {
    loop {
        match inbox.receive() {
            Incoming::Shutdown => return,
            Incoming::Message(RelayMsg::Frames {
                lane,
                topic,
                key,
                parts,
            }) => {
                let route = Route {
                    lane,
                    topic: &topic,
                    key: &key,
                };
                for part in parts {
                    host::fanout(&part.sockets, &part.bytes, route);
                }
            }
        }
    }
}
