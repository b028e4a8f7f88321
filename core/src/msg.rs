//! The messages a session exchanges with channels, directory shards, doors
//! and presence shards, as plain serde types: the guest's processes and the
//! host's native session processes encode them with bincode, so the bytes
//! cannot drift between the two sides.
//!
//! Process handles are (node, pid) pairs. [`ProcessRef`] encodes exactly as
//! the guest's `supervisors::ChildRef<M>` and [`ReplyTo`] as its
//! `supervisors::ReplyTo<R>`: the same fields in the same order (`node`,
//! `pid`, then `tag`), pinned byte for byte by this module's tests and
//! exercised by every Node test (native sessions talk to guest channels);
//! sending stays with whoever runs the process (the guest's `crate::msg`
//! helpers, the host's session).

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};

use crate::frame::Body;
use crate::lanes::Lane;
use crate::relay::Outlet;
use crate::session::{JoinParams, Refs};

/// The process id of every node's door, its main process (`src/door.rs`):
/// the first process a node starts.
pub const DOOR_PID: u64 = 1;

/// The process id of every cluster node's relay: a native process of the
/// host (`host-bridge/src/cluster.rs`) that queues on this node's sockets
/// the frames channels on other nodes send them, as [`RelayMsg`]s in a
/// supervised child's envelope ([`envelope`]). lunatic's process ids count
/// up from 1, so this one is never a guest's.
pub const RELAY_PID: u64 = u64::MAX - 1;

/// What a node's relay receives from channels on other nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum RelayMsg {
    /// Queue each part's frame on its sockets, parts in order.
    Frames {
        lane: Lane,
        topic: String,
        key: String,
        parts: Vec<Part>,
    },
    /// A hub's share of another region's fan-out: queue `onward`'s parts
    /// for this node here and forward every other node's as `Frames`.
    Region {
        lane: Lane,
        topic: String,
        key: String,
        frames: Vec<serde_bytes::ByteBuf>,
        onward: Vec<Onward>,
    },
}

/// One node's part of a [`RelayMsg::Region`]: its relay, and for each of
/// the message's frames (by index) the sockets that get it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Onward {
    pub node: u64,
    pub relay: u64,
    pub parts: Vec<(u32, Vec<u64>)>,
}

/// One frame and the sockets of the relay's node that get it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Part {
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
    pub sockets: Vec<u64>,
}

/// A supervised child's mail as the guest's `supervisors` crate encodes it:
/// bincode of its envelope's `Msg` variant (variant 0, a `u32`), then the
/// message. Doors, sessions and answers take plain bincode instead.
pub fn envelope<M: Serialize>(message: &M) -> Result<Vec<u8>, bincode::Error> {
    let mut bytes = 0u32.to_le_bytes().to_vec();
    bincode::serialize_into(&mut bytes, message)?;
    Ok(bytes)
}

/// A supervised process reading `M` (as `supervisors::ChildRef<M>`: the
/// same two numbers, the same encoding).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ProcessRef<M> {
    node: u64,
    pid: u64,
    #[serde(skip)]
    message: PhantomData<fn(M)>,
}

impl<M> ProcessRef<M> {
    /// The handle of process `pid` on `node`.
    pub fn at(node: u64, pid: u64) -> Self {
        ProcessRef {
            node,
            pid,
            message: PhantomData,
        }
    }

    /// The lunatic node id of the process.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// The lunatic process id.
    pub fn pid(&self) -> u64 {
        self.pid
    }
}

impl<M> Clone for ProcessRef<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for ProcessRef<M> {}

impl<M> PartialEq for ProcessRef<M> {
    fn eq(&self, other: &Self) -> bool {
        (self.node, self.pid) == (other.node, other.pid)
    }
}

impl<M> Eq for ProcessRef<M> {}

impl<M> std::fmt::Debug for ProcessRef<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRef")
            .field("node", &self.node)
            .field("pid", &self.pid)
            .finish()
    }
}

/// Where the answer of a request goes: the asking process and the tag it
/// waits on (as `supervisors::ReplyTo<R>`: the same encoding). The answer is
/// `R`, bincode-encoded, sent as a data message under `tag`.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ReplyTo<R> {
    node: u64,
    pid: u64,
    tag: i64,
    #[serde(skip)]
    answer: PhantomData<fn(R)>,
}

impl<R> ReplyTo<R> {
    /// Answers go to process `pid` on `node`, tagged `tag`.
    pub fn at(node: u64, pid: u64, tag: i64) -> Self {
        ReplyTo {
            node,
            pid,
            tag,
            answer: PhantomData,
        }
    }

    /// The asking process' node.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// The asking process.
    pub fn pid(&self) -> u64 {
        self.pid
    }

    /// The tag the asker waits on.
    pub fn tag(&self) -> i64 {
        self.tag
    }
}

// Not derived: that would ask `R: Clone`. A copy answers the same asker
// under the same tag; the asker takes the first answer and drops the rest.
impl<R> Clone for ReplyTo<R> {
    fn clone(&self) -> Self {
        ReplyTo::at(self.node, self.pid, self.tag)
    }
}

impl<R> std::fmt::Debug for ReplyTo<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyTo")
            .field("node", &self.node)
            .field("pid", &self.pid)
            .field("tag", &self.tag)
            .finish()
    }
}

/// A session process, one per WebSocket. It receives plain (envelope-less)
/// mail: [`SessionMsg`]. A channel keys its subscribers by this (node, pid)
/// pair: pids alone repeat across the nodes of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRef {
    node: u64,
    pid: u64,
}

impl SessionRef {
    /// Session `pid` on `node`.
    pub fn at(node: u64, pid: u64) -> SessionRef {
        SessionRef { node, pid }
    }

    /// The session's node.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// The session's process id on its node.
    pub fn pid(&self) -> u64 {
        self.pid
    }
}

/// What a session receives from other processes (client messages come from
/// the host's inlet).
#[derive(Debug, Serialize, Deserialize)]
pub enum SessionMsg {
    /// A join raced with its channel stopping: join again.
    Rejoin { topic: String },
    /// The topic's home moved to a node that joined the cluster: its
    /// channel `channel` stopped; the client gets `phx_error` and rejoins
    /// at the new home.
    Moved { topic: String, channel: ChannelRef },
}

/// A subscriber's join, as its channel needs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinReq {
    pub session: SessionRef,
    /// The session's socket on its node: where everything for this client
    /// is written (through that node's relay when the channel runs
    /// elsewhere).
    pub outlet: Outlet,
    pub params: JoinParams,
}

/// A broadcast entering a channel, from a session or the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    /// The publishing session, excluded from delivery unless it joined with
    /// `self: true`; `None` for the admin API.
    pub from: Option<SessionRef>,
    pub event: String,
    pub payload: Body,
    /// `(join_ref, ref)` to acknowledge, when the join asked for `ack`.
    pub ack: Option<Refs>,
    /// An admin request waiting for the outcome of a chat-lane publish: the
    /// stored id, or the refusal's reason, so a REST post is answered after
    /// the write.
    pub reply: Option<ReplyTo<Result<String, String>>>,
    /// An admin-API (REST) publisher's identity: its token's `sub`. On a
    /// chat lane its `msg_id` is deduplicated as a session user's is, so a
    /// REST post retried after a timeout is stored and delivered once.
    /// `None` for sessions (the channel knows their presence key) and for
    /// requests without a token.
    #[serde(default)]
    pub by: Option<String>,
}

/// Everything a channel process receives.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChannelMsg {
    Join(JoinReq),
    Leave {
        session: SessionRef,
    },
    Publish(Publish),
    /// Track (`meta: Some(JSON text)`) or untrack (`None`) the session's
    /// presence, answered with an ok reply carrying `refs`.
    Presence {
        session: SessionRef,
        meta: Option<String>,
        refs: Refs,
    },
    /// From the directory: the idle channel may stop now.
    Stop,
    /// From the directory: the topic's home is now a node that joined the
    /// cluster, or this node is draining; tell every subscriber
    /// ([`SessionMsg::Moved`]) and stop.
    HandOver,
    /// Test-only fault switch (`node.fault_injection`): the channel panics,
    /// as a bug would make it.
    Crash,
    /// Audio sync on a room's audio lane.
    Room(RoomMsg),
    /// `presence_subscribe` (selective presence), answered by the channel,
    /// which knows the set.
    PresenceSubscribe {
        session: SessionRef,
        add: Vec<String>,
        remove: Vec<String>,
        refs: Refs,
    },
    /// From its directory, for presence shard `shard` (of `shards`) that
    /// restarted: re-report the keys that hash there as absolute counts
    /// ([`ShardMsg::Counts`], in parts) to `to`, that shard's process (not
    /// its name: an incarnation that crashes while it rebuilds must not
    /// have its re-reports counted by the next one, which asks again).
    PresenceReport {
        shard: u32,
        shards: u32,
        to: ProcessRef<ShardMsg>,
    },
}

/// A channel process, as the directory hands it out.
pub type ChannelRef = ProcessRef<ChannelMsg>;

/// Messages to a directory shard.
#[derive(Debug, Serialize, Deserialize)]
pub enum DirMsg {
    /// Find (spawning if needed) the channel of `topic`. With `spawn: false`
    /// a missing channel is answered with [`Located::Absent`] (the admin API
    /// does not start channels nobody listens to).
    Locate {
        topic: String,
        spawn: bool,
        reply: ReplyTo<Located>,
    },
    /// A channel has had no subscriber for its idle period.
    Idle { topic: String, pid: u64 },
    /// A [`DirMsg::Locate`] another node's directory passed on because the
    /// topic's home, as that node sees the cluster, is here (it is draining,
    /// or the topic moved to a node that joined). `hops` counts the passes:
    /// a directory passes a request on at most [`MAX_LOCATE_HOPS`] times
    /// in all, so nodes that disagree for a moment cannot bounce it.
    Forwarded {
        topic: String,
        spawn: bool,
        reply: ReplyTo<Located>,
        hops: u8,
    },
    /// A channel process started (first start or a supervisor's restart):
    /// the directory adopts it as the topic's channel unless another live
    /// one already serves the topic, which makes this one stop. So the
    /// directory always knows the live channel and no orphan stays behind.
    Live { topic: String, channel: ChannelRef },
    /// From presence shard `shard` (of `shards`), restarted, to directory
    /// shard `directory`: ask every live channel to re-report to `to`, the
    /// shard's process ([`ChannelMsg::PresenceReport`]), and name them to
    /// it ([`ShardMsg::Listed`]).
    PresenceRebuild {
        directory: u32,
        shard: u32,
        shards: u32,
        to: ProcessRef<ShardMsg>,
    },
}

/// What a node's door (its main process, pid 1) receives from other nodes
/// of the cluster: lunatic's registry is per node, so a session on another
/// node cannot look up this node's directories itself.
#[derive(Debug, Serialize, Deserialize)]
pub enum DoorMsg {
    /// A [`DirMsg::Locate`] for one of this node's directory shards; the
    /// shard answers the asker directly.
    Locate {
        directory: u32,
        topic: String,
        spawn: bool,
        reply: ReplyTo<Located>,
    },
    /// For this node's presence shard `shard`, from the same shard on
    /// another node (the green dot across the cluster, `src/presence.rs`).
    Presence { shard: u32, msg: ShardMsg },
    /// A [`DirMsg::Forwarded`] for one of this node's directory shards.
    Forwarded {
        directory: u32,
        topic: String,
        spawn: bool,
        reply: ReplyTo<Located>,
        hops: u8,
    },
}

/// How many times a channel look-up may be passed from one node's directory
/// to another's ([`DirMsg::Forwarded`]).
pub const MAX_LOCATE_HOPS: u8 = 2;

/// A directory's answer to [`DirMsg::Locate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Located {
    /// The topic's running channel.
    Found(ChannelRef),
    /// A channel started for this request.
    Started(ChannelRef),
    /// None runs, and none was to be started (or it could not start).
    Absent,
    /// None runs and the node runs its most channels
    /// (`limits.max_channels`): the reason for the client.
    Full(String),
    /// The topic's home is another node of the cluster, which did not
    /// answer in time: the reason for the client.
    Unreachable(String),
}

impl Located {
    /// The channel, found or started.
    pub fn channel(&self) -> Option<ChannelRef> {
        match self {
            Located::Found(c) | Located::Started(c) => Some(*c),
            Located::Absent | Located::Full(_) | Located::Unreachable(_) => None,
        }
    }
}

/// Room messages to an audio-lane channel.
#[derive(Debug, Serialize, Deserialize)]
pub enum RoomMsg {
    /// A validated `playback` broadcast from session `from`, whose user id
    /// is `user`; `by_claim` when its token claims the room.
    Playback {
        from: SessionRef,
        user: String,
        by_claim: bool,
        /// JSON text, checked by the session.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
        refs: Refs,
        ack: bool,
    },
    /// A checked admin patch of the room state (JSON text), merged and (with
    /// `persist`) written back; the new state (JSON text) or an error is the
    /// answer.
    Patch {
        patch: String,
        persist: bool,
        reply: Option<ReplyTo<Result<String, String>>>,
        /// `limits.room_state_bytes`: a patch that would take the state
        /// (JSON text) past it is refused and changes nothing.
        max_bytes: Option<u32>,
    },
}

/// Messages to a presence shard.
#[derive(Debug, Serialize, Deserialize)]
pub enum ShardMsg {
    /// `key` gained (`+1`) or lost (`-1`) a presence in a channel on
    /// `node`; `channel` is that channel's process id (a restarted shard
    /// sorts the deltas that race its rebuild out by channel,
    /// `chorus_core::online::Rebuild`).
    Delta {
        node: u64,
        channel: u64,
        key: String,
        delta: i32,
    },
    /// Which of `keys` are online.
    Query {
        keys: Vec<String>,
        reply: ReplyTo<Vec<String>>,
    },
    /// Test-only fault switch (`node.fault_injection`): the shard panics,
    /// to see its supervisor restart it.
    Crash,
    /// In a cluster, from the same shard on node `node`: everything that
    /// node's channels report (sent in parts when this node joins or is
    /// first seen): with `replace` it replaces what `node` reported, else
    /// it adds to it. With `answer` (a shard that just started) the
    /// receiver sends its own copy back.
    Copy {
        node: u64,
        counts: Vec<(String, u32)>,
        replace: bool,
        answer: bool,
    },
    /// To a restarted shard, from directory `directory` of its node: the
    /// channels it asked to re-report (their process ids).
    Listed { directory: u32, channels: Vec<u64> },
    /// To a restarted shard, from a channel of its node (process id
    /// `channel`): a part of its re-report, the keys that hash to the shard
    /// with how many presences it holds of each.
    Counts {
        channel: u64,
        counts: Vec<(String, u32)>,
    },
    /// From a directory of the shard's node that saw one of its channels
    /// restarted after a crash: the crashed channel never reported the
    /// leaves of the presences it held, so the shard rebuilds its node's
    /// counts from the live channels (`chorus_core::online::Rebuild`).
    ChannelCrashed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_compare_by_node_and_pid() {
        let a: ChannelRef = ProcessRef::at(1, 7);
        assert_eq!(a, ProcessRef::at(1, 7));
        assert_ne!(a, ProcessRef::at(2, 7));
        assert_eq!((a.node(), a.pid()), (1, 7));
        let r: ReplyTo<Located> = ReplyTo::at(3, 4, -5);
        let c = r.clone();
        assert_eq!((c.node(), c.pid(), c.tag()), (3, 4, -5));
        assert_eq!(Located::Found(a).channel(), Some(a));
        assert_eq!(Located::Full("x".into()).channel(), None);
    }

    /// `supervisors::ChildRef<M>` is `{ node: u64, pid: u64 }` and
    /// `supervisors::ReplyTo<R>` `{ node: u64, pid: u64, tag: i64 }` (the
    /// marker fields skipped): bincode writes them as little-endian fixed
    /// ints in that order, and so must these.
    #[test]
    fn handles_encode_as_the_guests_child_ref_and_reply_to() {
        let child: ChannelRef = ProcessRef::at(0x0102, 0x0a0b);
        let mut want = 0x0102u64.to_le_bytes().to_vec();
        want.extend(0x0a0bu64.to_le_bytes());
        assert_eq!(bincode::serialize(&child).unwrap(), want);
        let reply: ReplyTo<Located> = ReplyTo::at(3, 4, -5);
        let mut want = 3u64.to_le_bytes().to_vec();
        want.extend(4u64.to_le_bytes());
        want.extend((-5i64).to_le_bytes());
        assert_eq!(bincode::serialize(&reply).unwrap(), want);
        let back: ReplyTo<Located> = bincode::deserialize(&want).unwrap();
        assert_eq!((back.node(), back.pid(), back.tag()), (3, 4, -5));
    }

    /// The guest's `supervisors::child::Envelope<M>` is `enum { Msg(M),
    /// Shutdown }`: its `Msg` variant encodes as index 0 then `M`, and
    /// `Shutdown` as index 1 (so a message can never read as a shutdown).
    #[test]
    fn envelope_is_variant_zero_then_the_message() {
        #[derive(Serialize)]
        enum Envelope<'a> {
            Msg(&'a ChannelMsg),
            #[allow(dead_code)]
            Shutdown,
        }
        let msg = ChannelMsg::Leave {
            session: SessionRef::at(2, 9),
        };
        let ours = envelope(&msg).unwrap();
        assert_eq!(ours, bincode::serialize(&Envelope::Msg(&msg)).unwrap());
        assert_eq!(&ours[..4], &[0, 0, 0, 0]);
        assert_eq!(
            bincode::serialize(&Envelope::Shutdown).unwrap(),
            vec![1, 0, 0, 0]
        );
        let back: ChannelMsg = bincode::deserialize(&ours[4..]).unwrap();
        assert!(matches!(back, ChannelMsg::Leave { session } if session == SessionRef::at(2, 9)));
    }
}
