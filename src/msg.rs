//! Every message the guest's processes send each other, in one place, so
//! that process modules depend on this module and never on each other.
//!
//! Payloads travel as the bytes the client sent ([`Body`]: JSON text
//! checked once at the session, or binary), encoded with bincode in one
//! buffer ([`supervisors::mail`]).

use serde::{Deserialize, Serialize};
use supervisors::{mail, ChildRef, ReplyTo};

pub use chorus_core::frame::Body;
pub use chorus_core::relay::Outlet;
pub use chorus_core::session::{JoinParams, Refs};

/// A session process. Sessions are spawned by the host, one per WebSocket,
/// and receive plain (envelope-less) mail: [`SessionMsg`]. A channel keys
/// its subscribers by this (node, pid) pair: pids alone repeat across the
/// nodes of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionRef {
    node: u64,
    pid: u64,
}

impl SessionRef {
    /// The calling process.
    pub fn this() -> SessionRef {
        SessionRef {
            node: mail::node_id(),
            pid: lunatic::host::process_id(),
        }
    }

    pub fn send(&self, msg: &SessionMsg) {
        mail::send(self.node, self.pid, mail::UNTAGGED, msg);
    }

    /// Whether the session may still run: it exists here, or its node is
    /// still one of `members` ([`mail::cluster_nodes`]).
    pub fn is_alive(&self, members: &[u64]) -> bool {
        mail::maybe_alive(self.node, self.pid, members)
    }
}

/// What a session receives from other processes (client messages come from
/// the host's inlet, see `gateway::session`).
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
}

impl Publish {
    /// Tells a waiting admin request how the publish ended.
    pub fn answer(&self, outcome: Result<String, String>) {
        if let Some(reply) = &self.reply {
            reply.clone().send(&outcome);
        }
    }
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
    /// Audio sync on a room's audio lane (see `crate::room`).
    Room(RoomMsg),
    /// `presence_subscribe` (selective presence, see `crate::viewers`),
    /// answered by the channel, which knows the set.
    PresenceSubscribe {
        session: SessionRef,
        add: Vec<String>,
        remove: Vec<String>,
        refs: Refs,
    },
}

/// A channel process, as the directory hands it out.
pub type ChannelRef = ChildRef<ChannelMsg>;

/// Messages to a directory shard.
#[derive(Debug, Serialize, Deserialize)]
pub enum DirMsg {
    /// Find (spawning if needed) the channel of `topic`. With `spawn: false`
    /// a missing channel is answered with `None` (the admin API does not
    /// start channels nobody listens to).
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
}

/// What a node's door (its main process, `crate::door`) receives from
/// other nodes of the cluster: lunatic's registry is per node, so a session
/// on another node cannot look up this node's directories itself.
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
    /// another node (the green dot across the cluster, `crate::presence`).
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// `node`.
    Delta { node: u64, key: String, delta: i32 },
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
}

/// Messages to a process module.
#[derive(Debug, Serialize, Deserialize)]
pub enum ModuleMsg {
    /// What to do with a chat message (payload as JSON text), unless
    /// `deadline_ms` (the asker's clock) passed before the module got to it.
    Chat {
        topic: String,
        event: String,
        /// The publisher's user id, `None` for the admin API.
        user: Option<String>,
        payload: String,
        at_ms: u64,
        deadline_ms: u64,
        reply: ReplyTo<ModuleReply>,
    },
}

/// A module's verdict on its way back to a channel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ModuleReply {
    Deliver,
    /// The new payload, as JSON text.
    Replace(String),
    Reject(String),
    /// The module could not give a verdict (crashed, garbage, disabled).
    Unavailable,
}
