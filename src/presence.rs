//! Presence shards: users hashed onto a fixed set of processes that know who
//! is online anywhere in the cluster (Discord's presence servers, the
//! "green dot"). Channels report presence joins and leaves to their node's
//! shard, counted per reporting node (`core::online`); the admin API and
//! sessions ask their own node's shards.
//!
//! In a cluster each shard also sends what its own node's channels report
//! to the same shard on every other node (through that node's door,
//! `DoorMsg::Presence`), and a full copy to a node it sees join
//! (`ShardMsg::Copy`, in parts), so every node's shards answer for the
//! whole cluster. Every second a shard looks at the membership
//! (`core::online::Peers`): what a node that left reported is dropped at
//! once. What a shard holds from other nodes is bounded by
//! `presence.remote_bytes` (`core::online::Budget`): a key past it is
//! refused, with a logged reason.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chorus_core::online::{Budget, Online, Peers};
use chorus_core::ring::shard_of;
use supervisors::{mail, ChildRef, Inbox, Incoming};

use crate::host::{self, Level};
use crate::msg::{reply_to, Answer, DoorMsg, ShardMsg};

/// How long a `presence_online` query waits for each shard.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a shard in a cluster looks at the membership: drops what nodes
/// that left reported, sends copies to nodes that joined (one host call for
/// the membership; well within a heartbeat timeout).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Registered name of shard `i`.
pub fn shard_name(i: u32) -> String {
    format!("chorus-presence-{i}")
}

fn shard_for(key: &str, shards: u32) -> Option<ChildRef<ShardMsg>> {
    let i = shard_of(key, shards as usize) as u32;
    ChildRef::lookup(&shard_name(i))
}

/// Reports a presence join (`+1`) or leave (`-1`) of `key`.
pub fn report(key: &str, delta: i32, shards: u32) {
    if let Some(shard) = shard_for(key, shards) {
        shard.send(ShardMsg::Delta {
            node: mail::node_id(),
            key: key.to_string(),
            delta,
        });
    }
}

/// The subset of `keys` online anywhere (on this node's shards, which in a
/// cluster hold every node's reports).
pub fn online(keys: &[String], shards: u32) -> Vec<String> {
    let mut by_shard: HashMap<u32, Vec<String>> = HashMap::new();
    for k in keys {
        by_shard
            .entry(shard_of(k, shards as usize) as u32)
            .or_default()
            .push(k.clone());
    }
    let mut online = Vec::new();
    for (i, keys) in by_shard {
        let Some(shard) = ChildRef::<ShardMsg>::lookup(&shard_name(i)) else {
            continue;
        };
        if let Some(found) = shard.call(
            |reply| ShardMsg::Query {
                keys,
                reply: reply_to(reply),
            },
            QUERY_TIMEOUT,
        ) {
            online.extend(found);
        }
    }
    online.sort();
    online
}

/// Most keys in one [`ShardMsg::Copy`] part.
const COPY_PART: usize = 1_000;

/// A presence shard process.
pub fn shard(index: u32, inbox: Inbox<ShardMsg>) {
    let mut online = Online::new();
    let here = mail::node_id();
    let cluster = here != 0;
    let mut peers = Peers::new(here);
    let mut started = true;
    let mut looked: Option<Instant> = None;
    let budget = Budget {
        here,
        bytes: crate::config().map_or(4 * 1024 * 1024, |c| c.presence.remote_bytes as usize),
    };
    let mut refusing = Refusing::default();
    loop {
        if cluster && looked.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            looked = Some(Instant::now());
            let joined = peers.look(&crate::channel::members_now(), &mut online);
            if !joined.is_empty() {
                send_copy(index, &online, &joined, started);
            }
            started = false;
        }
        let incoming = if cluster {
            match inbox.receive_timeout(SWEEP_EVERY) {
                Some(incoming) => incoming,
                None => continue,
            }
        } else {
            inbox.receive()
        };
        match incoming {
            Incoming::Shutdown => return,
            Incoming::Message(ShardMsg::Delta { node, key, delta }) => {
                let held = online.delta_within(node, &key, delta, budget);
                let refused = usize::from(!held);
                refusing.note(index, node, refused, online.bytes_from_others(here), budget);
                // This node's channels' reports go to every other node.
                if node == here {
                    for peer in peers.members() {
                        let msg = ShardMsg::Delta {
                            node,
                            key: key.clone(),
                            delta,
                        };
                        to_peer(*peer, index, msg);
                    }
                }
            }
            Incoming::Message(ShardMsg::Copy {
                node,
                counts,
                replace,
                answer,
            }) => {
                if node != here {
                    let refused = online.set_node(node, &counts, replace, budget);
                    refusing.note(index, node, refused, online.bytes_from_others(here), budget);
                    if answer {
                        send_copy(index, &online, &[node], false);
                    }
                }
            }
            Incoming::Message(ShardMsg::Crash) => {
                panic!("fault injection: presence shard {index} crashes")
            }
            Incoming::Message(ShardMsg::Query { keys, reply }) => {
                let found: Vec<String> = keys.into_iter().filter(|k| online.is_online(k)).collect();
                reply.send(&found);
            }
        }
    }
}

/// Whether a shard refuses other nodes' keys (`presence.remote_bytes`):
/// logged when it starts, and when what it holds from other nodes is back
/// under nine tenths of the budget.
#[derive(Default)]
struct Refusing {
    refused: u64,
}

impl Refusing {
    fn note(&mut self, index: u32, node: u64, refused: usize, held: usize, budget: Budget) {
        if refused > 0 {
            if self.refused == 0 {
                host::log(
                    Level::Warn,
                    &format!(
                        "presence shard {index}: keys reported by node {node} are refused: this \
                         shard holds {held} bytes of other nodes' reports, presence.remote_bytes \
                         = {}; their users show offline here until some leave (raise \
                         presence.remote_bytes or presence.shards)",
                        budget.bytes
                    ),
                );
            }
            self.refused += refused as u64;
        } else if self.refused > 0 && held <= budget.bytes / 10 * 9 {
            host::log(
                Level::Info,
                &format!(
                    "presence shard {index}: other nodes' keys are held again after {} were \
                     refused (presence.remote_bytes)",
                    self.refused
                ),
            );
            self.refused = 0;
        }
    }
}

/// Sends what this node's channels report to shard `index` on each of
/// `nodes`, in parts of [`COPY_PART`] keys (one empty part when there is
/// nothing but an answer is asked for: it still replaces what the receiver
/// held). Nothing at all when there is nothing to tell: a member that is not
/// a Chorus node (a plain guest run with `chorus exec` in the cluster) must
/// not get mail at its main process unasked.
fn send_copy(index: u32, online: &Online, nodes: &[u64], answer: bool) {
    let here = mail::node_id();
    let mine = online.reported_by(here);
    if mine.is_empty() && !answer {
        return;
    }
    for node in nodes {
        let mut parts = mine.chunks(COPY_PART).peekable();
        if parts.peek().is_none() {
            to_peer(
                *node,
                index,
                ShardMsg::Copy {
                    node: here,
                    counts: Vec::new(),
                    replace: true,
                    answer,
                },
            );
        }
        for (i, part) in parts.enumerate() {
            to_peer(
                *node,
                index,
                ShardMsg::Copy {
                    node: here,
                    counts: part.to_vec(),
                    replace: i == 0,
                    answer: answer && i == 0,
                },
            );
        }
    }
}

/// Sends `msg` to shard `index` on cluster node `node`, through its door.
fn to_peer(node: u64, index: u32, msg: ShardMsg) {
    mail::send(
        node,
        crate::door::DOOR_PID,
        mail::UNTAGGED,
        &DoorMsg::Presence { shard: index, msg },
    );
}
