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
//! The door never blocks: one local send per request. (A node's loss is
//! seen by the sessions themselves, native processes of the host that
//! re-read the membership while they have a channel there:
//! `host-bridge/src/session.rs`.)

use chorus_core::placement::directory_name;
use supervisors::mail::{self, Mail};
use supervisors::ChildRef;

use crate::host;
use crate::msg::{DirMsg, DoorMsg, ShardMsg};

pub use chorus_core::msg::DOOR_PID;

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
