//! The declarative half: what a supervision tree looks like, written the way
//! an OTP child spec list is written, in one place.
//!
//! Everything here is serializable on purpose. lunatic can only start a
//! process from a non-capturing `fn` pointer plus a serde argument, so a
//! supervisor (itself a process) must receive its whole spec as data. A child's
//! start function is therefore stored as two function-table indices (a
//! monomorphized runner and the user's `fn`) and its argument as bincode bytes,
//! which the supervisor replays, unchanged, on every restart. All processes of
//! one lunatic program share the same wasm module, so a function index taken
//! in one process is valid in every other.

use std::any::type_name;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::child::{run_child, Boot, Inbox};
use crate::handle::DynamicSupervisor;
use crate::supervisor::{supervisor_main, SupervisorConfig, SupervisorMsg, Template};

/// What a supervisor does when one of its children has to be restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Restart only the child that terminated.
    OneForOne,
    /// Stop every other child (reverse start order), then restart them all
    /// (start order). For children that cannot work without each other.
    OneForAll,
    /// Stop the children started after the terminated one (reverse order),
    /// then restart it and them (start order). For a child whose later
    /// siblings depend on it, e.g. a registry and the processes using it.
    RestForOne,
}

/// When a terminated child is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restart {
    /// Always restarted, whether it crashed or returned.
    Permanent,
    /// Restarted only after an abnormal exit (panic, trap, kill).
    Transient,
    /// Never restarted; forgotten by its supervisor once it is gone.
    Temporary,
}

impl Restart {
    /// Whether a child with this restart type comes back after `exit`.
    pub(crate) fn restarts_after(self, exit: Exit) -> bool {
        match self {
            Restart::Permanent => true,
            Restart::Transient => exit == Exit::Abnormal,
            Restart::Temporary => false,
        }
    }
}

/// How a supervisor stops a child (when shutting down, terminating it on
/// request, or restarting siblings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Shutdown {
    /// Kill the process without asking.
    BrutalKill,
    /// Ask the child to stop ([`Incoming::Shutdown`](crate::Incoming)); kill
    /// it if it has not returned within the duration.
    Timeout(Duration),
    /// Ask the child to stop and wait as long as it takes. The default for
    /// supervisor children, which need the time to stop their own subtree.
    Infinity,
}

/// How a child ended, as far as its supervisor can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Its start function returned.
    Normal,
    /// It panicked, trapped or was killed.
    Abnormal,
}

/// Whether a child is a plain process or a supervisor with a subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChildKind {
    /// A process running user code.
    Worker,
    /// A nested supervisor.
    Supervisor,
}

/// Restart backoff: how long a supervisor waits before restarting a child
/// that keeps crashing soon after it starts, so that a crash loop within
/// the intensity (a channel whose refill panics, say) costs a few restarts
/// a second instead of spinning the CPU.
///
/// A child that crashes after running at least `max` is restarted at once
/// (OTP's behaviour); each further crash sooner than that doubles the wait,
/// from `initial` up to `max`. The default (`initial` zero) never waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Waits of `initial`, 2×, 4×, … up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
        }
    }

    /// The wait before restarting a child after its `quick`-th crash in a
    /// row that came less than `max` after its start (0: it ran long enough).
    pub fn delay(&self, quick: u32) -> Duration {
        if quick == 0 || self.initial.is_zero() {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(quick - 1).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Whether a child that ran for `ran` counts as stable (its next crash
    /// restarts it at once).
    pub fn stable_after(&self, ran: Duration) -> bool {
        self.initial.is_zero() || ran >= self.max
    }
}

/// A supervisor: its restart strategy, restart intensity, and its children in
/// start order.
///
/// More than `intensity` restarts within any `period` makes the supervisor
/// stop all its children and exit abnormally, so that its own supervisor
/// decides what to do (escalation).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SupervisorSpec {
    pub strategy: Strategy,
    pub intensity: u32,
    pub period: Duration,
    /// Waits between restarts of a crash-looping child (none by default).
    #[serde(default)]
    pub backoff: Backoff,
    pub children: Vec<ChildSpec>,
}

impl SupervisorSpec {
    /// A supervisor with OTP's default intensity (1 restart in 5 s) and no
    /// children yet.
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            intensity: 1,
            period: Duration::from_secs(5),
            backoff: Backoff::default(),
            children: Vec::new(),
        }
    }

    pub fn intensity(mut self, intensity: u32) -> Self {
        self.intensity = intensity;
        self
    }

    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }
}

/// Shared by spawning and restarting: the function-table indices and the
/// encoded argument of one child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StartFn {
    /// `run_child::<A, M>`, which decodes `arg` and calls `func`.
    pub(crate) runner: usize,
    /// The user's `fn(A, Inbox<M>)`.
    pub(crate) func: usize,
    pub(crate) arg: Vec<u8>,
}

/// One child of a supervisor: how to start it, when to restart it, how to
/// stop it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildSpec {
    pub(crate) id: String,
    pub(crate) start: StartFn,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) kind: ChildKind,
    /// The child's message type, part of its registry key so that a lookup
    /// with the wrong type finds nothing instead of a process that cannot
    /// decode what it is sent.
    pub(crate) type_label: String,
    /// Full registry key the supervisor keeps pointing at the current
    /// incarnation of this child.
    pub(crate) registered: Option<String>,
}

impl ChildSpec {
    /// A worker running `start(arg, inbox)`: permanent, stopped with a 5 s
    /// timeout (OTP's defaults).
    ///
    /// # Panics
    ///
    /// If `arg` cannot be serialized with bincode (a programming error in the
    /// tree declaration, caught when the tree is built).
    pub fn new<A, M>(id: impl Into<String>, start: fn(A, Inbox<M>), arg: A) -> Self
    where
        A: Serialize + DeserializeOwned,
        M: Serialize + DeserializeOwned,
    {
        let id = id.into();
        let arg = encode_arg(&id, &arg);
        Self {
            start: StartFn {
                runner: run_child::<A, M> as fn(Boot) as usize,
                func: start as usize,
                arg,
            },
            id,
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            kind: ChildKind::Worker,
            type_label: type_name::<M>().to_owned(),
            registered: None,
        }
    }

    /// A nested supervisor, itself a child: permanent, given all the time it
    /// needs to stop its subtree.
    pub fn supervisor(id: impl Into<String>, spec: SupervisorSpec) -> Self {
        Self::supervisor_with(
            id,
            SupervisorConfig::fixed(spec),
            type_name::<SupervisorMsg>(),
        )
    }

    /// A nested dynamic supervisor (children started at run time, see
    /// [`DynamicSupervisor`]).
    pub fn dynamic_supervisor<A, M>(
        id: impl Into<String>,
        spec: DynamicSupervisorSpec<A, M>,
    ) -> Self
    where
        A: Serialize + DeserializeOwned,
        M: Serialize + DeserializeOwned,
    {
        Self::supervisor_with(
            id,
            spec.into_config(),
            type_name::<DynamicSupervisor<A, M>>(),
        )
    }

    pub(crate) fn supervisor_with(
        id: impl Into<String>,
        config: SupervisorConfig,
        type_label: &str,
    ) -> Self {
        let mut spec = Self::new(id, supervisor_main, config);
        spec.kind = ChildKind::Supervisor;
        spec.shutdown = Shutdown::Infinity;
        spec.type_label = type_label.to_owned();
        spec
    }

    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Keep the lunatic registry entry `name` pointing at this child across
    /// restarts, so other processes find it with `ChildRef::lookup`,
    /// `SupervisorRef::lookup` or `DynamicSupervisor::lookup`.
    pub fn register(mut self, name: &str) -> Self {
        self.registered = Some(registry_key(&self.type_label, name));
        self
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A dynamic supervisor ("simple one for one"): every child runs the same
/// start function with the argument given to
/// [`DynamicSupervisor::start_child`]; each child has its own restart type
/// (the spec's default, or the one passed to `start_child_with`). Children
/// that will not be restarted are forgotten when they end.
pub struct DynamicSupervisorSpec<A, M> {
    pub intensity: u32,
    pub period: Duration,
    pub backoff: Backoff,
    pub restart: Restart,
    pub shutdown: Shutdown,
    start: fn(A, Inbox<M>),
}

impl<A, M> DynamicSupervisorSpec<A, M>
where
    A: Serialize + DeserializeOwned,
    M: Serialize + DeserializeOwned,
{
    /// Children default to temporary with a 5 s shutdown timeout; the
    /// supervisor to OTP's intensity of 1 restart in 5 s.
    pub fn new(start: fn(A, Inbox<M>)) -> Self {
        Self {
            intensity: 1,
            period: Duration::from_secs(5),
            backoff: Backoff::default(),
            restart: Restart::Temporary,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            start,
        }
    }

    pub fn intensity(mut self, intensity: u32) -> Self {
        self.intensity = intensity;
        self
    }

    pub fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    pub(crate) fn into_config(self) -> SupervisorConfig {
        SupervisorConfig {
            spec: SupervisorSpec::new(Strategy::OneForOne)
                .intensity(self.intensity)
                .period(self.period)
                .backoff(self.backoff),
            template: Some(Template {
                runner: run_child::<A, M> as fn(Boot) as usize,
                func: self.start as usize,
                restart: self.restart,
                shutdown: self.shutdown,
                type_label: type_name::<M>().to_owned(),
            }),
        }
    }
}

// Manual impls: a derive would demand `A: Clone` / `M: Debug`, which a
// function pointer does not need.
impl<A, M> Clone for DynamicSupervisorSpec<A, M> {
    fn clone(&self) -> Self {
        Self {
            intensity: self.intensity,
            period: self.period,
            backoff: self.backoff,
            restart: self.restart,
            shutdown: self.shutdown,
            start: self.start,
        }
    }
}

impl<A, M> std::fmt::Debug for DynamicSupervisorSpec<A, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicSupervisorSpec")
            .field("intensity", &self.intensity)
            .field("period", &self.period)
            .field("backoff", &self.backoff)
            .field("restart", &self.restart)
            .field("shutdown", &self.shutdown)
            .field("child", &PhantomData::<(A, M)>)
            .finish()
    }
}

pub(crate) fn encode_arg<A: Serialize>(id: &str, arg: &A) -> Vec<u8> {
    bincode::serialize(arg)
        .unwrap_or_else(|err| panic!("argument of child `{id}` cannot be serialized: {err}"))
}

/// The lunatic registry key of a supervised process named `name` whose
/// messages are of type `type_label`.
pub(crate) fn registry_key(type_label: &str, name: &str) -> String {
    format!("supervisors/{type_label}/{name}")
}
