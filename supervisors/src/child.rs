//! The child's side: how a supervised process boots, receives its messages,
//! is asked to stop, and tells its supervisor that it ended normally.
//!
//! # Normal exit vs crash
//!
//! lunatic 0.13 (`lunatic-process` `new()`) notifies links with
//! `LinkDied(tag, reason)`, but a process that traps link deaths
//! (`catch_link_failure`) only ever receives a message for
//! `DeathReason::Failure` (panic, trap, kill); a `DeathReason::Normal` death is
//! dropped silently. Monitors are no help: `ProcessDied` carries no reason, and
//! a `monitor` call racing with the child's exit is lost without a
//! notification. So a supervisor cannot see a normal exit through the runtime.
//!
//! Decision: every child is spawned linked (with a per-incarnation tag) and
//! runs inside [`run_child`], which calls the user's start function and, when
//! it *returns*, sends the supervisor `Exited` tagged with the same link tag.
//! A crash produces the runtime's `LinkDied` with that tag instead. The
//! supervisor thus sees exactly one of the two per incarnation, in order,
//! through one mailbox, and never has to guess. The cost: a child must return
//! from its start function to end normally (calling `std::process::exit` from
//! a child is not a supervised normal exit).

use std::marker::PhantomData;
use std::time::Duration;

use lunatic::serializer::Bincode;
use lunatic::{host, Mailbox, Process, Tag};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::mail::{self, Mail};
use crate::spec::{registry_key, ChildKind};
use crate::supervisor::SupervisorMsg;

/// What travels in a supervised process' mailbox: user messages, plus the
/// supervisor's request to stop. Bincode writes the variant index first and
/// `Shutdown` has no payload, so `Envelope::<()>::Shutdown` decodes as the
/// shutdown request of every `Envelope<M>`: a supervisor can ask any child to
/// stop without knowing its message type.
#[derive(Serialize, Deserialize)]
pub(crate) enum Envelope<M> {
    Msg(M),
    Shutdown,
}

/// A message received by a supervised process.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<M> {
    Message(M),
    /// The supervisor asks the child to stop: it should clean up and return
    /// from its start function. Under [`Shutdown::Timeout`](crate::Shutdown)
    /// it is killed if it has not returned in time.
    Shutdown,
}

/// The mailbox of a supervised process, handed to its start function.
pub struct Inbox<M> {
    id: String,
    parent: Parent,
    /// Deadlines of `receive_timeout` (see [`mail::Alarm`]).
    alarm: std::cell::RefCell<mail::Alarm>,
    message: PhantomData<M>,
}

impl<M> Inbox<M>
where
    M: Serialize + DeserializeOwned,
{
    /// Waits for the next message.
    ///
    /// # Panics
    ///
    /// If a message cannot be decoded as `M`, like lunatic's own `Mailbox`
    /// (a process only receives what is sent through its typed handle).
    pub fn receive(&self) -> Incoming<M> {
        match self.next(None) {
            Some(incoming) => incoming,
            None => unreachable!("a receive without timeout returned nothing"),
        }
    }

    /// Waits at most `timeout` for the next message.
    ///
    /// A tagged message found here is the answer to a request this process
    /// stopped waiting for ([`ReplyTo`]): it is dropped, never decoded as
    /// an `M`.
    pub fn receive_timeout(&self, timeout: Duration) -> Option<Incoming<M>> {
        self.next(Some(timeout))
    }

    /// Waits until `deadline` at most for the next message; `now` is the
    /// caller's reading of the clock, taken just before (a loop that reads
    /// it anyway saves one read per message).
    pub fn receive_until(
        &self,
        deadline: std::time::Instant,
        now: std::time::Instant,
    ) -> Option<Incoming<M>> {
        self.next_since(Some(deadline), Some(now))
    }

    fn next(&self, timeout: Option<Duration>) -> Option<Incoming<M>> {
        match timeout {
            Some(t) => {
                let now = std::time::Instant::now();
                self.next_since(Some(now + t), Some(now))
            }
            None => self.next_since(None, None),
        }
    }

    fn next_since(
        &self,
        deadline: Option<std::time::Instant>,
        mut now: Option<std::time::Instant>,
    ) -> Option<Incoming<M>> {
        loop {
            let mail = self
                .alarm
                .borrow_mut()
                .receive_since(&[], deadline, now.take());
            match mail {
                Mail::Data {
                    tag: mail::UNTAGGED,
                    bytes,
                } => match mail::decode::<Envelope<M>>(&bytes) {
                    Ok(envelope) => return Some(Self::incoming(envelope)),
                    Err(err) => {
                        panic!("child `{}` received an undecodable message: {err}", self.id)
                    }
                },
                Mail::TimedOut => return None,
                // A late answer, or a signal this child does not trap.
                Mail::Data { .. } | Mail::LinkDied { .. } | Mail::ProcessDied { .. } => {}
            }
        }
    }

    /// A handle to this very process, to give to others.
    pub fn this(&self) -> ChildRef<M> {
        ChildRef::from_ids(host::node_id(), host::process_id())
    }

    /// The id of this child in its supervisor's spec.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn incoming(envelope: Envelope<M>) -> Incoming<M> {
        match envelope {
            Envelope::Msg(message) => Incoming::Message(message),
            Envelope::Shutdown => Incoming::Shutdown,
        }
    }
}

impl<M> Inbox<M> {
    /// Tells the parent that this child is up. Workers are acknowledged by
    /// [`run_child`] before their code runs; a supervisor only after its own
    /// children have started, so that siblings start strictly in order with
    /// whole subtrees ready, as in OTP.
    pub(crate) fn ack_started(&self) {
        self.parent.notify(SupervisorMsg::Started);
    }
}

/// Where a child reports to: its supervisor (or the process that started a
/// root supervisor), and the link tag identifying this incarnation.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(crate) struct Parent {
    pub(crate) node: u64,
    pub(crate) pid: u64,
    pub(crate) tag: Tag,
    /// False for a root supervisor: its starter is not a supervisor and would
    /// only find an undecodable `Exited` in its mailbox.
    pub(crate) is_supervisor: bool,
}

impl Parent {
    pub(crate) fn notify(&self, message: SupervisorMsg) {
        // SAFETY: a parent that spawned a child through this crate reads
        // `Envelope<SupervisorMsg>` with this tag.
        let parent: Process<Envelope<SupervisorMsg>, Bincode> =
            unsafe { Process::new(self.node, self.pid) };
        parent.tag_send(self.tag, Envelope::Msg(message));
    }
}

/// Everything a child process needs to start, sent as its spawn argument.
#[derive(Serialize, Deserialize)]
pub(crate) struct Boot {
    pub(crate) id: String,
    pub(crate) kind: ChildKind,
    pub(crate) runner: usize,
    pub(crate) func: usize,
    pub(crate) arg: Vec<u8>,
    pub(crate) parent: Parent,
}

/// The one entry point lunatic spawns for every child; it jumps to the
/// child's monomorphized runner.
pub(crate) fn child_entry(boot: Boot, _: Mailbox<()>) {
    // SAFETY: `runner` was taken from `run_child::<A, M> as fn(Boot)` in this
    // same wasm module (see `spec::StartFn`).
    let runner = unsafe { std::mem::transmute::<usize, fn(Boot)>(boot.runner) };
    runner(boot);
}

/// Decodes the argument, runs the start function, and reports a normal
/// return to the supervisor (see the module docs).
pub(crate) fn run_child<A, M>(boot: Boot)
where
    A: DeserializeOwned,
{
    let arg: A = bincode::deserialize(&boot.arg)
        .unwrap_or_else(|err| panic!("child `{}`: cannot decode its argument: {err}", boot.id));
    // SAFETY: `func` was taken from a `fn(A, Inbox<M>)` in `ChildSpec::new`
    // (or `DynamicSupervisorSpec::into_config`) with these very `A` and `M`.
    let start = unsafe { std::mem::transmute::<usize, fn(A, Inbox<M>)>(boot.func) };
    let parent = boot.parent;
    let inbox = Inbox {
        id: boot.id,
        parent,
        alarm: Default::default(),
        message: PhantomData,
    };
    if boot.kind == ChildKind::Worker {
        inbox.ack_started();
    }
    start(arg, inbox);
    if parent.is_supervisor {
        parent.notify(SupervisorMsg::Exited { tag: parent.tag });
    }
}

/// A typed handle to a supervised process (it may have been restarted since:
/// use a registered name to follow restarts).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ChildRef<M> {
    node: u64,
    pid: u64,
    #[serde(skip)]
    message: PhantomData<fn(M)>,
}

impl<M> ChildRef<M> {
    pub(crate) fn from_ids(node: u64, pid: u64) -> Self {
        Self {
            node,
            pid,
            message: PhantomData,
        }
    }

    /// The handle of process `pid` on `node`, for a process of a well-known
    /// kind whose id was passed along (its mail must be `Envelope<M>`: a
    /// supervised child reading `M`).
    pub fn at(node: u64, pid: u64) -> Self {
        Self::from_ids(node, pid)
    }

    /// The lunatic process id.
    pub fn pid(&self) -> u64 {
        self.pid
    }

    /// The lunatic node id of the process.
    pub fn node(&self) -> u64 {
        self.node
    }

    /// Whether the process is still running (local processes only).
    pub fn is_alive(&self) -> bool {
        self.process().is_alive()
    }

    /// Kills the process: to its supervisor this is a crash.
    pub fn kill(&self) {
        self.process().kill();
    }

    fn process(&self) -> Process<Envelope<M>, Bincode> {
        // SAFETY: supervised processes read `Envelope<M>` (see `Inbox`).
        unsafe { Process::new(self.node, self.pid) }
    }
}

impl<M> ChildRef<M>
where
    M: Serialize + DeserializeOwned,
{
    /// Sends `message`; like every lunatic send, it is dropped silently if
    /// the process is gone.
    pub fn send(&self, message: M) {
        mail::send(
            self.node,
            self.pid,
            mail::UNTAGGED,
            &Envelope::<&M>::Msg(&message),
        );
    }

    /// Sends the request `make(reply_to)` and waits at most `timeout` for
    /// its answer (OTP's `gen_server:call`). The callee answers with
    /// [`ReplyTo::send`]; an answer that comes after the timeout is dropped
    /// by the caller's receive loop ([`Inbox::receive`]), never decoded as
    /// one of its messages.
    pub fn call<R>(&self, make: impl FnOnce(ReplyTo<R>) -> M, timeout: Duration) -> Option<R>
    where
        R: DeserializeOwned,
    {
        call(|reply| self.send(make(reply)), timeout)
    }

    /// The current incarnation of the child registered as `name` (see
    /// [`ChildSpec::register`](crate::ChildSpec::register)).
    pub fn lookup(name: &str) -> Option<Self> {
        lookup_key(&registry_key(std::any::type_name::<M>(), name))
            .map(|(node, pid)| Self::from_ids(node, pid))
    }
}

impl<M> Clone for ChildRef<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for ChildRef<M> {}

impl<M> PartialEq for ChildRef<M> {
    fn eq(&self, other: &Self) -> bool {
        (self.node, self.pid) == (other.node, other.pid)
    }
}

impl<M> Eq for ChildRef<M> {}

impl<M> std::fmt::Debug for ChildRef<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildRef")
            .field("node", &self.node)
            .field("pid", &self.pid)
            .finish()
    }
}

/// The asking side of a request/answer: where the answer goes (the asking
/// process) and the tag it waits on. Put it in the request; the callee
/// answers once with [`ReplyTo::send`].
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ReplyTo<R> {
    node: u64,
    pid: u64,
    tag: i64,
    #[serde(skip)]
    answer: PhantomData<fn(R)>,
}

// Not derived: that would ask `R: Clone`. A copy answers the same asker
// under the same tag; the asker takes the first answer and drops the rest.
impl<R> Clone for ReplyTo<R> {
    fn clone(&self) -> Self {
        ReplyTo {
            node: self.node,
            pid: self.pid,
            tag: self.tag,
            answer: PhantomData,
        }
    }
}

impl<R> std::fmt::Debug for ReplyTo<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyTo")
            .field("pid", &self.pid)
            .field("tag", &self.tag)
            .finish()
    }
}

impl<R> ReplyTo<R> {
    /// Where the answer goes: the asking process' node, its pid, and the
    /// tag it waits on (to carry the address in a message type of another
    /// crate with the same encoding).
    pub fn parts(&self) -> (u64, u64, i64) {
        (self.node, self.pid, self.tag)
    }
}

impl<R: Serialize> ReplyTo<R> {
    /// Answers the request. If the asker has stopped waiting, the answer is
    /// dropped by its receive loop.
    pub fn send(self, answer: &R) {
        mail::send(self.node, self.pid, self.tag, answer);
    }
}

/// Sends a request with `send_request` (which puts the given [`ReplyTo`] in
/// it) and waits at most `timeout` for the answer, leaving every other
/// message queued. Works from any process, supervised or not: the answer
/// never mixes with the caller's own messages.
pub fn call<R>(send_request: impl FnOnce(ReplyTo<R>), timeout: Duration) -> Option<R>
where
    R: DeserializeOwned,
{
    let tag = ask(send_request);
    match mail::receive(&[tag], Some(timeout)) {
        Mail::Data { bytes, .. } => mail::decode(&bytes).ok(),
        _ => None,
    }
}

/// Sends a request with `send_request`, giving it a [`ReplyTo`] this very
/// process, under a fresh tag; returns the tag the answer will carry.
fn ask<R>(send_request: impl FnOnce(ReplyTo<R>)) -> i64 {
    let tag = Tag::new().id();
    send_request(ReplyTo {
        node: mail::node_id(),
        pid: host::process_id(),
        tag,
        answer: PhantomData,
    });
    tag
}

/// Like [`call`], but stops waiting early once `worth_waiting` (asked every
/// `every` while no answer came) says the answer can no longer come, e.g.
/// because the callee's node left the cluster.
pub fn call_while<R>(
    send_request: impl FnOnce(ReplyTo<R>),
    timeout: Duration,
    every: Duration,
    mut worth_waiting: impl FnMut() -> bool,
) -> Option<R>
where
    R: DeserializeOwned,
{
    let tag = ask(send_request);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match mail::receive(&[tag], Some(left.min(every))) {
            Mail::Data { bytes, .. } => return mail::decode(&bytes).ok(),
            Mail::TimedOut if left > every && worth_waiting() => {}
            _ => return None,
        }
    }
}

/// Asks a process to stop, whatever its message type (see [`Envelope`]).
pub(crate) fn request_shutdown(node: u64, pid: u64) {
    // SAFETY: every supervised process reads `Envelope<_>`, and the
    // `Shutdown` variant encodes identically for all of them.
    let process: Process<Envelope<()>, Bincode> = unsafe { Process::new(node, pid) };
    process.send(Envelope::Shutdown);
}

pub(crate) fn register_key(key: &str, node: u64, pid: u64) {
    // SAFETY: plain host call with a valid buffer.
    unsafe { host::api::registry::put(key.as_ptr(), key.len(), node, pid) };
}

pub(crate) fn unregister_key(key: &str) {
    // SAFETY: plain host call with a valid buffer.
    unsafe { host::api::registry::remove(key.as_ptr(), key.len()) };
}

pub(crate) fn lookup_key(key: &str) -> Option<(u64, u64)> {
    let (mut node, mut pid) = (0, 0);
    // SAFETY: plain host call with a valid buffer and out-pointers.
    let found = unsafe { host::api::registry::get(key.as_ptr(), key.len(), &mut node, &mut pid) };
    (found == 0).then_some((node, pid))
}
