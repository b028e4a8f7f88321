//! The node's door: how a process on another node of the cluster reaches
//! this node's directory shards.
//!
//! lunatic's registry is per node, so a session on node A cannot look up
//! `chorus-dir-N` on node B. Every node's main process (the guest's
//! `_start`, the first process of the node: pid [`DOOR_PID`] on every node)
//! serves as its door once the supervision tree is up: a session whose
//! topic's home is node B sends [`DoorMsg::Locate`] to (B, [`DOOR_PID`]);
//! the door hands it to B's directory shard, which answers the session
//! directly (the request carries the session's (node, pid) reply address).
//! The door never blocks: one local send per request.
//!
//! A node's loss is seen through a local stand-in: lunatic monitors only
//! processes of the same node, so for each other node that hosts a channel
//! one of this node's sessions joined, a small process here (a *watch*,
//! [`watch`]) checks every [`WATCH_EVERY`] that the node is still a cluster
//! member (`channel::members_now`) and ends when it is not. Sessions
//! monitor the watch: its end makes them check their channels, and every
//! topic whose channel lived on the lost node gets `phx_error`, which
//! realtime-js answers by rejoining, at the topic's new home.

use std::time::Duration;

use chorus_core::placement::directory_name;
use lunatic::serializer::Bincode;
use lunatic::{Mailbox, Process};
use supervisors::mail::{self, Mail};
use supervisors::ChildRef;

use crate::host;
use crate::msg::{DirMsg, DoorMsg, ShardMsg};

/// The pid of every node's main process, hence of its door.
pub const DOOR_PID: u64 = 1;

/// How often a watch checks that its node is still a member.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// The local process that ends when cluster node `node` leaves the
/// membership, started on first use (registered as `chorus-watch-<node>`);
/// `None` for this node or a node that is not a member now.
pub fn watch(node: u64) -> Option<u64> {
    if node == mail::node_id() {
        return None;
    }
    let key = watch_name(node);
    let (mut at, mut pid) = (0, 0);
    // SAFETY: plain host call with a valid buffer and out-pointers.
    let found =
        unsafe { lunatic::host::api::registry::get(key.as_ptr(), key.len(), &mut at, &mut pid) };
    if found == 0 && mail::maybe_alive(at, pid, &[]) {
        return Some(pid);
    }
    if !crate::channel::members_now().contains(&node) {
        return None;
    }
    // Two sessions may start one at once: both watches end with the node,
    // the registry names the last.
    let pid = Process::<(), Bincode>::spawn(node, watcher).id();
    // SAFETY: plain host call with a valid buffer.
    unsafe { lunatic::host::api::registry::put(key.as_ptr(), key.len(), mail::node_id(), pid) };
    Some(pid)
}

fn watch_name(node: u64) -> String {
    format!("chorus-watch-{node}")
}

/// A watch's life: until `node` is no longer a member.
fn watcher(node: u64, _: Mailbox<(), Bincode>) {
    while crate::channel::members_now().contains(&node) {
        // Nothing is ever sent to a watch: this is a sleep.
        let _ = mail::receive(&[], Some(WATCH_EVERY));
    }
    host::log(
        host::Level::Warn,
        &format!("cluster node {node} left: sessions of its channels are told to rejoin"),
    );
    let key = watch_name(node);
    let (mut at, mut pid) = (0, 0);
    // SAFETY: plain host calls with valid buffers and out-pointers.
    unsafe {
        if lunatic::host::api::registry::get(key.as_ptr(), key.len(), &mut at, &mut pid) == 0
            && pid == lunatic::host::process_id()
        {
            lunatic::host::api::registry::remove(key.as_ptr(), key.len());
        }
    }
}

/// Serves the door forever (the main process, after the tree started).
pub fn serve() -> ! {
    let pid = lunatic::host::process_id();
    if pid != DOOR_PID {
        // A cluster's sessions would ask a process that is not the door:
        // their remote joins would time out with a clear error.
        host::log(
            host::Level::Error,
            &format!("the main process is pid {pid}, not {DOOR_PID}: other nodes cannot reach this node's channels"),
        );
    }
    loop {
        let Mail::Data {
            tag: mail::UNTAGGED,
            bytes,
        } = mail::receive(&[], None)
        else {
            continue;
        };
        match mail::decode::<DoorMsg>(&bytes) {
            Ok(DoorMsg::Locate {
                directory,
                topic,
                spawn,
                reply,
            }) => to_directory(
                directory,
                DirMsg::Locate {
                    topic,
                    spawn,
                    reply,
                },
            ),
            Ok(DoorMsg::Forwarded {
                directory,
                topic,
                spawn,
                reply,
                hops,
            }) => to_directory(
                directory,
                DirMsg::Forwarded {
                    topic,
                    spawn,
                    reply,
                    hops,
                },
            ),
            Ok(DoorMsg::Presence { shard, msg }) => {
                match ChildRef::<ShardMsg>::lookup(&crate::presence::shard_name(shard)) {
                    Some(s) => s.send(msg),
                    // Restarting: it gets a copy again once it looks at
                    // the membership (see `crate::presence`).
                    None => host::log(
                        host::Level::Warn,
                        &format!("door: presence shard {shard} is not running"),
                    ),
                }
            }
            Err(e) => host::log(
                host::Level::Warn,
                &format!("door: an undecodable message was dropped: {e}"),
            ),
        }
    }
}

/// Hands a request to this node's directory shard `directory`.
fn to_directory(directory: u32, msg: DirMsg) {
    match ChildRef::<DirMsg>::lookup(&directory_name(directory)) {
        Some(dir) => dir.send(msg),
        // Restarting: the asker times out and its client retries.
        None => host::log(
            host::Level::Warn,
            &format!("door: directory {directory} is not running"),
        ),
    }
}
