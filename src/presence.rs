//! Presence shards: users hashed onto a fixed set of processes that know who
//! is online anywhere on the node (Discord's presence servers, the "green
//! dot"). Channels report presence joins and leaves, counted per reporting
//! node (`core::online`) so that a node's loss takes its channels'
//! presences with it at the next sweep; the admin API and sessions query a
//! list of keys.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chorus_core::online::Online;
use chorus_core::ring::shard_of;
use supervisors::{mail, ChildRef, Inbox, Incoming};

use crate::msg::{reply_to, Answer, ShardMsg};

/// How long a `presence_online` query waits for each shard.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a shard drops what nodes that left the cluster reported
/// (one host call for the membership; well within a heartbeat timeout).
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

/// Crashes the shard owning `key` (fault injection, see
/// `chorus_core::command::CRASH_PRESENCE_EVENT`).
pub fn crash(key: &str, shards: u32) {
    if let Some(shard) = shard_for(key, shards) {
        shard.send(ShardMsg::Crash);
    }
}

/// The subset of `keys` online anywhere on the node.
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

/// A presence shard process.
pub fn shard(index: u32, inbox: Inbox<ShardMsg>) {
    let mut online = Online::new();
    let here = mail::node_id();
    let mut swept = Instant::now();
    loop {
        // Only what other nodes reported can be lost with a node: alone,
        // the shard just waits for mail.
        let remote = online.reporters().any(|n| n != here);
        if remote && swept.elapsed() >= SWEEP_EVERY {
            swept = Instant::now();
            let members = mail::cluster_nodes();
            online.retain_nodes(|n| n == here || members.contains(&n));
        }
        let incoming = if remote {
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
                online.delta(node, &key, delta);
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
