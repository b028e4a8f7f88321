//! Presence shards: users hashed onto a fixed set of processes that know who
//! is online anywhere on the node (Discord's presence servers, the "green
//! dot"). Channels report presence joins and leaves; the admin API and
//! sessions query a list of keys.

use std::collections::HashMap;
use std::time::Duration;

use chorus_core::ring::shard_of;
use supervisors::{ChildRef, Inbox, Incoming};

use crate::msg::ShardMsg;

/// How long a `presence_online` query waits for each shard.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

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
        if let Some(found) = shard.call(|reply| ShardMsg::Query { keys, reply }, QUERY_TIMEOUT) {
            online.extend(found);
        }
    }
    online.sort();
    online
}

/// A presence shard process.
pub fn shard(index: u32, inbox: Inbox<ShardMsg>) {
    let mut counts: HashMap<String, u32> = HashMap::new();
    loop {
        match inbox.receive() {
            Incoming::Shutdown => return,
            Incoming::Message(ShardMsg::Delta { key, delta }) => {
                let n = counts.entry(key.clone()).or_insert(0);
                *n = n.saturating_add_signed(delta);
                if *n == 0 {
                    counts.remove(&key);
                }
            }
            Incoming::Message(ShardMsg::Crash) => {
                panic!("fault injection: presence shard {index} crashes")
            }
            Incoming::Message(ShardMsg::Query { keys, reply }) => {
                let found: Vec<String> = keys
                    .into_iter()
                    .filter(|k| counts.contains_key(k))
                    .collect();
                reply.send(&found);
            }
        }
    }
}
