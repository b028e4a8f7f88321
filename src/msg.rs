//! Every message the guest's processes send each other, in one place, so
//! that process modules depend on this module and never on each other.
//!
//! The messages a session exchanges (with channels, directories, doors and
//! presence shards) are pure types in `chorus_core::msg`, shared with the
//! host's native session processes; this module adds what needs lunatic:
//! sending them and answering requests. Payloads travel as the bytes the
//! client sent ([`Body`]: JSON text checked once at the session, or binary),
//! encoded with bincode in one buffer ([`supervisors::mail`]).

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use supervisors::{mail, ChildRef};

pub use chorus_core::frame::Body;
pub use chorus_core::msg::{
    ChannelMsg, ChannelRef, DirMsg, DoorMsg, JoinReq, Located, ProcessRef, Publish, ReplyTo,
    RoomMsg, SessionMsg, SessionRef, ShardMsg,
};
pub use chorus_core::relay::Outlet;

/// A [`ProcessRef`] for a supervised child's handle.
pub fn process_ref<M>(child: ChildRef<M>) -> ProcessRef<M> {
    ProcessRef::at(child.node(), child.pid())
}

/// The core form of a request's answer address made by
/// [`supervisors::call`] (the same three numbers, the same encoding).
pub fn reply_to<R>(reply: supervisors::ReplyTo<R>) -> ReplyTo<R> {
    let (node, pid, tag) = reply.parts();
    ReplyTo::at(node, pid, tag)
}

/// Sending to a supervised process named by a core [`ProcessRef`].
pub trait Mailer<M> {
    /// The supervisors' handle of the same process.
    fn child(&self) -> ChildRef<M>;

    /// Sends `message` (dropped silently if the process is gone).
    fn send(&self, message: M)
    where
        M: Serialize + DeserializeOwned,
    {
        self.child().send(message);
    }

    /// Sends `make(reply)` and waits at most `timeout` for the answer.
    fn call<R: DeserializeOwned>(
        &self,
        make: impl FnOnce(ReplyTo<R>) -> M,
        timeout: Duration,
    ) -> Option<R>
    where
        M: Serialize + DeserializeOwned,
    {
        self.child().call(|reply| make(reply_to(reply)), timeout)
    }

    /// Whether the (local) process still runs.
    fn is_alive(&self) -> bool {
        self.child().is_alive()
    }
}

impl<M> Mailer<M> for ProcessRef<M> {
    fn child(&self) -> ChildRef<M> {
        ChildRef::at(self.node(), self.pid())
    }
}

/// Answering a request whose address is a core [`ReplyTo`].
pub trait Answer<R> {
    /// Sends the answer; an asker that stopped waiting drops it.
    fn send(self, answer: &R);
}

impl<R: Serialize> Answer<R> for ReplyTo<R> {
    fn send(self, answer: &R) {
        mail::send(self.node(), self.pid(), self.tag(), answer);
    }
}

/// Mail to a session process (plain, envelope-less).
pub trait ToSession {
    fn send(&self, msg: &SessionMsg);

    /// Whether the session may still run: it exists here, or its node is
    /// still one of `members` ([`mail::cluster_nodes`]).
    fn is_alive(&self, members: &[u64]) -> bool;
}

impl ToSession for SessionRef {
    fn send(&self, msg: &SessionMsg) {
        mail::send(self.node(), self.pid(), mail::UNTAGGED, msg);
    }

    fn is_alive(&self, members: &[u64]) -> bool {
        mail::maybe_alive(self.node(), self.pid(), members)
    }
}

/// Telling a waiting admin request how a publish ended.
pub trait PublishOutcome {
    fn answer(&self, outcome: Result<String, String>);
}

impl PublishOutcome for Publish {
    fn answer(&self, outcome: Result<String, String>) {
        if let Some(reply) = &self.reply {
            reply.clone().send(&outcome);
        }
    }
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
        reply: supervisors::ReplyTo<ModuleReply>,
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
