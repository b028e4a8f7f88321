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
//!
//! A shard its supervisor restarts takes back what its own node's channels
//! hold: they re-report, through their directories, the keys that hash to
//! it as absolute counts ([`shard`], `core::online::Rebuild`). It rebuilds
//! the same way when a channel of its node crashed ([`channel_crashed`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chorus_core::online::{report_parts, Budget, Online, Peers, Rebuild, REPORT_PART_BYTES};
use chorus_core::placement::{directory_name, DIRECTORIES};
use chorus_core::presence::Presence;
use chorus_core::ring::shard_of;
use supervisors::{mail, ChildRef, Inbox, Incoming};

use crate::host::{self, Level};
use crate::msg::{process_ref, reply_to, Answer, DirMsg, DoorMsg, Mailer, ProcessRef, ShardMsg};

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

/// Reports a presence join (`+1`) or leave (`-1`) of `key` (from a
/// channel process).
pub fn report(key: &str, delta: i32, shards: u32) {
    if let Some(shard) = shard_for(key, shards) {
        shard.send(ShardMsg::Delta {
            node: mail::node_id(),
            channel: lunatic::host::process_id(),
            key: key.to_string(),
            delta,
        });
    }
}

/// Tells every presence shard of this node that a channel of this node
/// crashed (from its directory, which saw it restarted): each rebuilds the
/// node's counts from the live channels.
pub fn channel_crashed(shards: u32) {
    for i in 0..shards {
        if let Some(shard) = ChildRef::<ShardMsg>::lookup(&shard_name(i)) {
            shard.send(ShardMsg::ChannelCrashed);
        }
    }
}

/// A channel (process id `channel`) re-reports to `to`, restarted shard
/// `index` (of `shards`), the keys of `presence` that hash there, as
/// absolute counts in parts of at most [`REPORT_PART_BYTES`].
pub fn re_report(
    to: ProcessRef<ShardMsg>,
    index: u32,
    shards: u32,
    channel: u64,
    presence: &Presence,
) {
    let parts = report_parts(
        presence.counts(),
        index as usize,
        shards as usize,
        REPORT_PART_BYTES,
    );
    for counts in parts {
        to.send(ShardMsg::Counts { channel, counts });
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

/// How long a restarted shard waits for its node's channels to re-report
/// before it counts what it has (a channel that died meanwhile never
/// answers).
const REBUILD_TIMEOUT: Duration = Duration::from_secs(10);

/// A presence shard process.
///
/// A shard that restarts (its node's channel directories are already
/// running: on the node's first start the shards start before them) starts
/// empty and takes back what its node's channels hold: it asks each
/// directory, which asks its channels to re-report the keys that hash to
/// this shard as absolute counts (`core::online::Rebuild` sorts out the
/// deltas that race the re-report). A [`ShardMsg::ChannelCrashed`] starts
/// the same rebuild (one more after the running one, if any: crashes in a
/// burst coalesce). The counts are built aside and swapped in for the
/// node's share when the rebuild ends; queries are answered meanwhile from
/// the live counts (after a restart, the deltas seen so far). In a cluster,
/// once the rebuild ends, it sends the other nodes a copy of its node's
/// reports again (replacing what they held for this node).
pub fn shard(index: u32, inbox: Inbox<ShardMsg>) {
    let mut online = Online::new();
    let here = mail::node_id();
    let cluster = here != 0;
    let mut peers = Peers::new(here);
    let mut started = true;
    let mut looked: Option<Instant> = None;
    let config = crate::config();
    let budget = Budget {
        here,
        bytes: config
            .as_ref()
            .map_or(4 * 1024 * 1024, |c| c.presence.remote_bytes as usize),
    };
    let shards = config.as_ref().map_or(16, |c| c.presence.shards);
    let mut refusing = Refusing::default();
    let me = process_ref(inbox.this());
    let mut rebuild = start_rebuild(index, shards, here, me, "restarted");
    let mut rebuild_until = Instant::now() + REBUILD_TIMEOUT;
    // A channel crashed while a rebuild ran (it may have re-reported
    // already): one more rebuild once this one ends.
    let mut again = false;
    loop {
        if cluster && looked.is_none_or(|at| at.elapsed() >= SWEEP_EVERY) {
            looked = Some(Instant::now());
            let joined = peers.look(&crate::channel::members_now(), &mut online);
            if !joined.is_empty() {
                send_copy(index, &online, &joined, started);
            }
            started = false;
        }
        if rebuild
            .as_ref()
            .is_some_and(|r| r.is_done() || Instant::now() >= rebuild_until)
        {
            if let Some(r) = rebuild.take() {
                end_rebuild(index, r, &mut online, peers.members());
            }
            if std::mem::take(&mut again) {
                rebuild = start_rebuild(index, shards, here, me, "saw a channel crash");
                rebuild_until = Instant::now() + REBUILD_TIMEOUT;
            }
        }
        let wait = if rebuild.is_some() {
            Some(rebuild_until.saturating_duration_since(Instant::now()))
        } else {
            None
        };
        let wait = match (cluster, wait) {
            (true, Some(w)) => Some(w.min(SWEEP_EVERY)),
            (true, None) => Some(SWEEP_EVERY),
            (false, w) => w,
        };
        let incoming = match wait {
            Some(wait) => match inbox.receive_timeout(wait) {
                Some(incoming) => incoming,
                None => continue,
            },
            None => inbox.receive(),
        };
        match incoming {
            Incoming::Shutdown => return,
            Incoming::Message(ShardMsg::Delta {
                node,
                channel,
                key,
                delta,
            }) => {
                // Counted live as usual; a rebuild also sorts it into the
                // counts it builds aside.
                if let Some(r) = rebuild.as_mut() {
                    r.delta(node, channel, &key, delta);
                }
                let held = online.delta_within(node, &key, delta, budget);
                let refused = usize::from(!held);
                refusing.note(index, node, refused, online.bytes_from_others(here), budget);
                // This node's channels' reports go to every other node.
                if node == here {
                    for peer in peers.members() {
                        let msg = ShardMsg::Delta {
                            node,
                            channel,
                            key: key.clone(),
                            delta,
                        };
                        to_peer(*peer, index, msg);
                    }
                }
            }
            Incoming::Message(ShardMsg::Listed {
                directory,
                channels,
            }) => {
                if let Some(r) = rebuild.as_mut() {
                    r.listed(directory, &channels);
                }
            }
            Incoming::Message(ShardMsg::Counts { channel, counts }) => {
                // After the rebuild ended (past its deadline) a late
                // re-report is dropped: that channel's deltas counted.
                if let Some(r) = rebuild.as_mut() {
                    r.counts(channel, &counts);
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
            Incoming::Message(ShardMsg::ChannelCrashed) => {
                // At most one rebuild runs; crashes meanwhile coalesce
                // into one more.
                if rebuild.is_some() {
                    again = true;
                } else {
                    rebuild = start_rebuild(index, shards, here, me, "saw a channel crash");
                    rebuild_until = Instant::now() + REBUILD_TIMEOUT;
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

/// On a restart or after a channel crash (`why`, for the log; the node's
/// directories run already), asks each directory to have its channels
/// re-report to shard `index`; `None` on the node's first start.
fn start_rebuild(
    index: u32,
    shards: u32,
    here: u64,
    me: ProcessRef<ShardMsg>,
    why: &str,
) -> Option<Rebuild> {
    let directories: Vec<(u32, ChildRef<DirMsg>)> = (0..DIRECTORIES)
        .filter_map(|i| ChildRef::<DirMsg>::lookup(&directory_name(i)).map(|d| (i, d)))
        .collect();
    if directories.is_empty() {
        return None;
    }
    host::log(
        Level::Info,
        &format!("presence shard {index} {why}: its node's channels re-report what they hold"),
    );
    let rebuild = Rebuild::new(here, directories.iter().map(|(i, _)| *i));
    for (directory, dir) in directories {
        dir.send(DirMsg::PresenceRebuild {
            directory,
            shard: index,
            shards,
            to: me,
        });
    }
    Some(rebuild)
}

/// Ends a rebuild: counts what is still held, logs what never answered,
/// and in a cluster sends the other nodes this node's reports again.
fn end_rebuild(index: u32, rebuild: Rebuild, online: &mut Online, peers: &[u64]) {
    let (silent, directories) = rebuild.finish(online);
    let here = mail::node_id();
    let keys = online.reported_by(here).len();
    if silent > 0 || directories > 0 {
        host::log(
            Level::Warn,
            &format!(
                "presence shard {index}: rebuilt {keys} keys; {silent} channels and {directories}                  directories did not answer within {} s (their users show online again once                  they track again)",
                REBUILD_TIMEOUT.as_secs()
            ),
        );
    } else {
        host::log(
            Level::Info,
            &format!("presence shard {index}: rebuilt {keys} keys from its node's channels"),
        );
    }
    if !peers.is_empty() {
        send_copy(index, online, peers, false);
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
