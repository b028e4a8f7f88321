//! Handles to running supervisors: start a tree, start and stop children at
//! run time, read counts and the restart counter.
//!
//! Every operation is a call: a request tagged with a fresh tag of the calling
//! process, answered with that tag, so it can be used from any process
//! whatever its own mailbox type (the reply never mixes with its messages).

use std::any::type_name;
use std::marker::PhantomData;
use std::time::Duration;

use lunatic::serializer::Bincode;
use lunatic::{host, Mailbox, MessageSignal, Process, Signal, Tag};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::child::{call, lookup_key, register_key, ChildRef, Envelope};
use crate::spec::{
    encode_arg, registry_key, ChildKind, ChildSpec, DynamicSupervisorSpec, Restart, SupervisorSpec,
};
use crate::supervisor::{spawn_linked, Reply, Request, SupervisorConfig, SupervisorMsg, Target};

/// How long a call waits for the supervisor by default. Generous because a
/// call may include stopping a child with a shutdown timeout of its own.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a supervisor operation failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Error {
    /// The supervisor process is not running.
    NotRunning,
    /// No reply within the handle's call timeout.
    Timeout(Duration),
    /// No child with this id (or pid).
    UnknownChild(String),
    /// A child with this id is already declared.
    DuplicateChild(String),
    /// `start_child` with an argument on a supervisor that is not dynamic.
    NotDynamic,
    /// The child (or the supervisor being started) died before it was up.
    StartFailed(String),
    /// The supervisor answered something that does not fit the request.
    BadReply,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotRunning => write!(f, "supervisor is not running"),
            Error::Timeout(timeout) => write!(f, "supervisor did not answer within {timeout:?}"),
            Error::UnknownChild(id) => write!(f, "no child `{id}`"),
            Error::DuplicateChild(id) => write!(f, "a child `{id}` already exists"),
            Error::NotDynamic => write!(f, "supervisor has no child template (not dynamic)"),
            Error::StartFailed(id) => write!(f, "`{id}` died before it was up"),
            Error::BadReply => write!(f, "unexpected reply from supervisor"),
        }
    }
}

impl std::error::Error for Error {}

/// OTP's `count_children`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Children the supervisor knows, running or not.
    pub specs: usize,
    /// Children with a running process.
    pub active: usize,
    pub supervisors: usize,
    pub workers: usize,
}

/// OTP's `which_children`, one entry per known child in start order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildInfo {
    pub id: String,
    /// `None` for a child that ended and was not restarted (transient after a
    /// normal exit).
    pub pid: Option<u64>,
    pub kind: ChildKind,
    pub restart: Restart,
}

/// A handle to a supervisor process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorRef {
    node: u64,
    pid: u64,
    call_timeout: Duration,
}

impl SupervisorRef {
    /// Starts the tree `spec` as a root supervisor named `name`, linked to
    /// the calling process, and returns once every child is up.
    ///
    /// The root is registered under `name` ([`SupervisorRef::lookup`]). If the
    /// root fails (escalation), the caller dies with it unless it traps link
    /// failures; use [`SupervisorRef::start_link_with_tag`] to recognise the
    /// notice. A caller that ends *normally* does not stop the tree (lunatic
    /// does not tell linked processes about normal exits): call
    /// [`SupervisorRef::shutdown`].
    pub fn start_link(name: &str, spec: SupervisorSpec) -> Result<Self, Error> {
        Self::start_link_with_tag(name, spec, Tag::new())
    }

    /// [`SupervisorRef::start_link`] with the caller's side of the link
    /// tagged `tag`: a caller that traps link failures receives
    /// `LinkDied(tag)` when the root fails.
    pub fn start_link_with_tag(name: &str, spec: SupervisorSpec, tag: Tag) -> Result<Self, Error> {
        start_root(
            name,
            SupervisorConfig::fixed(spec),
            type_name::<SupervisorMsg>(),
            tag,
        )
    }

    /// The supervisor registered as `name`: a root, or a child declared with
    /// [`ChildSpec::register`].
    pub fn lookup(name: &str) -> Option<Self> {
        lookup_key(&registry_key(type_name::<SupervisorMsg>(), name))
            .map(|(node, pid)| Self::from_ids(node, pid))
    }

    fn from_ids(node: u64, pid: u64) -> Self {
        Self {
            node,
            pid,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    pub fn pid(&self) -> u64 {
        self.pid
    }

    pub fn is_alive(&self) -> bool {
        self.process().is_alive()
    }

    /// Adds and starts a child (OTP `start_child` on a static supervisor);
    /// returns its pid.
    pub fn start_child(&self, spec: ChildSpec) -> Result<u64, Error> {
        match self.call(Request::StartChild(spec))? {
            Reply::Started { pid, .. } => Ok(pid),
            other => Err(failure(other)),
        }
    }

    /// Stops the child `id` by its shutdown spec and forgets it (OTP's
    /// `terminate_child` followed by `delete_child`).
    pub fn terminate_child(&self, id: &str) -> Result<(), Error> {
        self.done(Request::TerminateChild(Target::Id(id.to_owned())))
    }

    pub fn count_children(&self) -> Result<Counts, Error> {
        match self.call(Request::CountChildren)? {
            Reply::Counts(counts) => Ok(counts),
            other => Err(failure(other)),
        }
    }

    pub fn which_children(&self) -> Result<Vec<ChildInfo>, Error> {
        match self.call(Request::WhichChildren)? {
            Reply::Children(children) => Ok(children),
            other => Err(failure(other)),
        }
    }

    /// Child processes this supervisor has restarted since it started.
    pub fn restarts(&self) -> Result<u64, Error> {
        match self.call(Request::Restarts)? {
            Reply::Restarts(restarts) => Ok(restarts),
            other => Err(failure(other)),
        }
    }

    /// Restarts in the whole subtree: this supervisor's plus those of every
    /// running nested supervisor (the figure `/metrics` exports). Walked from
    /// the caller so that no supervisor ever blocks on another.
    pub fn tree_restarts(&self) -> Result<u64, Error> {
        let mut total = self.restarts()?;
        for child in self.which_children()? {
            if let (ChildKind::Supervisor, Some(pid)) = (child.kind, child.pid) {
                let nested = Self::from_ids(self.node, pid).with_call_timeout(self.call_timeout);
                total += nested.tree_restarts()?;
            }
        }
        Ok(total)
    }

    /// Stops every child in reverse start order, then the supervisor itself
    /// (normally: its parent, if any, treats it as a normal exit).
    pub fn shutdown(&self) -> Result<(), Error> {
        self.done(Request::Stop)
    }

    fn done(&self, request: Request) -> Result<(), Error> {
        match self.call(request)? {
            Reply::Done => Ok(()),
            other => Err(failure(other)),
        }
    }

    fn call(&self, request: Request) -> Result<Reply, Error> {
        if !self.is_alive() {
            return Err(Error::NotRunning);
        }
        let process = self.process();
        let answer = call(
            |from| process.send(Envelope::Msg(SupervisorMsg::Call { from, request })),
            self.call_timeout,
        );
        match answer {
            Some(reply) => Ok(reply),
            None if !self.is_alive() => Err(Error::NotRunning),
            None => Err(Error::Timeout(self.call_timeout)),
        }
    }

    fn process(&self) -> Process<Envelope<SupervisorMsg>, Bincode> {
        // SAFETY: supervisors read `Envelope<SupervisorMsg>`.
        unsafe { Process::new(self.node, self.pid) }
    }
}

/// A handle to a dynamic supervisor whose children run `fn(A, Inbox<M>)`.
pub struct DynamicSupervisor<A, M> {
    supervisor: SupervisorRef,
    types: PhantomData<fn(A) -> M>,
}

impl<A, M> DynamicSupervisor<A, M>
where
    A: Serialize + DeserializeOwned,
    M: Serialize + DeserializeOwned,
{
    /// Starts a root dynamic supervisor named `name`, linked to the caller
    /// (same rules as [`SupervisorRef::start_link`]).
    pub fn start_link(name: &str, spec: DynamicSupervisorSpec<A, M>) -> Result<Self, Error> {
        start_root(
            name,
            spec.into_config(),
            type_name::<DynamicSupervisor<A, M>>(),
            Tag::new(),
        )
        .map(Self::from_supervisor)
    }

    /// The dynamic supervisor registered as `name` with these child types (a
    /// root, or a child declared with [`ChildSpec::register`]).
    pub fn lookup(name: &str) -> Option<Self> {
        lookup_key(&registry_key(type_name::<DynamicSupervisor<A, M>>(), name))
            .map(|(node, pid)| Self::from_supervisor(SupervisorRef::from_ids(node, pid)))
    }

    fn from_supervisor(supervisor: SupervisorRef) -> Self {
        Self {
            supervisor,
            types: PhantomData,
        }
    }

    /// Starts a child with the spec's default restart type.
    ///
    /// `arg` is kept as bytes for restarts, so it must be plain data: a
    /// lunatic resource (e.g. a `TcpStream`) must be sent to the child as a
    /// message after it started.
    pub fn start_child(&self, arg: A) -> Result<ChildRef<M>, Error> {
        self.start(arg, None)
    }

    /// Starts a child with its own restart type.
    pub fn start_child_with(&self, arg: A, restart: Restart) -> Result<ChildRef<M>, Error> {
        self.start(arg, Some(restart))
    }

    fn start(&self, arg: A, restart: Option<Restart>) -> Result<ChildRef<M>, Error> {
        let arg = encode_arg("dynamic child", &arg);
        match self
            .supervisor
            .call(Request::StartDynamic { arg, restart })?
        {
            Reply::Started { node, pid } => Ok(ChildRef::from_ids(node, pid)),
            other => Err(failure(other)),
        }
    }

    /// Stops the child (by the spec's shutdown) and forgets it. `child` must
    /// be its current incarnation.
    pub fn terminate_child(&self, child: &ChildRef<M>) -> Result<(), Error> {
        self.supervisor
            .done(Request::TerminateChild(Target::Pid(child.pid())))
    }

    /// Children currently running.
    pub fn count(&self) -> Result<usize, Error> {
        self.supervisor.count_children().map(|counts| counts.active)
    }

    /// The untyped handle: `which_children`, `restarts`, `shutdown`.
    pub fn supervisor(&self) -> SupervisorRef {
        self.supervisor
    }
}

impl<A, M> Clone for DynamicSupervisor<A, M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<A, M> Copy for DynamicSupervisor<A, M> {}

impl<A, M> std::fmt::Debug for DynamicSupervisor<A, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("DynamicSupervisor")
            .field(&self.supervisor)
            .finish()
    }
}

fn failure(reply: Reply) -> Error {
    match reply {
        Reply::Failed(error) => error,
        _ => Error::BadReply,
    }
}

/// Spawns a root supervisor linked to the caller, waits until its subtree is
/// up, and registers it.
fn start_root(
    name: &str,
    config: SupervisorConfig,
    type_label: &str,
    tag: Tag,
) -> Result<SupervisorRef, Error> {
    let spec = ChildSpec::supervisor_with(name, config, type_label);
    let pid = spawn_linked(&spec, tag, false);
    // `Signal`-typed view: if the caller traps link failures, a root dying
    // during start arrives here as a signal instead of a panic.
    // SAFETY: the root acknowledges with `Envelope<SupervisorMsg>` under `tag`.
    let acks = unsafe { Mailbox::<Envelope<SupervisorMsg>, Bincode, Signal>::new() };
    loop {
        match acks.try_tag_receive(&[tag]) {
            Ok(MessageSignal::Message(Envelope::Msg(SupervisorMsg::Started))) => break,
            Ok(MessageSignal::Signal(_)) => return Err(Error::StartFailed(name.to_owned())),
            Ok(MessageSignal::Message(_)) | Err(_) => {}
        }
    }
    let node = host::node_id();
    register_key(&registry_key(type_label, name), node, pid);
    Ok(SupervisorRef::from_ids(node, pid))
}
