//! The supervisor process: starts its children in order, watches them through
//! one mailbox, restarts them by strategy and restart type, stops them in
//! reverse order, and escalates when restarts come too fast.
//!
//! A supervisor traps link failures (`catch_link_failure`), so a crashed child
//! arrives as a `LinkDied` message carrying the child's link tag, and a child
//! that returned arrives as `Exited` with the same tag (see `child.rs` for why).
//! Every incarnation of a child gets a fresh tag, so a late notice about an old
//! incarnation can never be mistaken for the current one. `LinkDied` with no
//! tag (`Tag::none()`) comes from our own parent (a parent's side of a link has
//! no tag), and means the supervisor must stop its subtree and go.
//!
//! Everything is one sequential loop: while the supervisor stops or starts a
//! child it waits only for that child's tag, and everything else queues in the
//! mailbox for the main loop.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use lunatic::serializer::Bincode;
use lunatic::{host, LinkDiedSignal, Mailbox, MailboxError, MessageSignal, Process, Tag};
use serde::{Deserialize, Serialize};

use crate::child::{
    child_entry, register_key, request_shutdown, unregister_key, Boot, Envelope, Inbox, Parent,
    ReplyTo,
};
use crate::handle::{ChildInfo, Counts, Error};
use crate::intensity::RestartWindow;
use crate::spec::{
    Backoff, ChildKind, ChildSpec, Exit, Restart, Shutdown, StartFn, Strategy, SupervisorSpec,
};

/// What a supervisor is spawned with.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SupervisorConfig {
    pub(crate) spec: SupervisorSpec,
    /// The child template of a dynamic supervisor.
    pub(crate) template: Option<Template>,
}

impl SupervisorConfig {
    pub(crate) fn fixed(spec: SupervisorSpec) -> Self {
        Self {
            spec,
            template: None,
        }
    }
}

/// A dynamic supervisor's child spec minus the argument.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Template {
    pub(crate) runner: usize,
    pub(crate) func: usize,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) type_label: String,
}

/// The supervisor's mailbox protocol (inside `Envelope`).
#[derive(Serialize, Deserialize)]
pub(crate) enum SupervisorMsg {
    /// From a child, tagged with its link tag: it is up.
    Started,
    /// From a child, tagged with its link tag: its start function returned.
    Exited { tag: Tag },
    /// A request from a handle; the reply goes to `from`.
    Call {
        from: ReplyTo<Reply>,
        request: Request,
    },
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Request {
    StartChild(ChildSpec),
    StartDynamic {
        arg: Vec<u8>,
        restart: Option<Restart>,
    },
    TerminateChild(Target),
    CountChildren,
    WhichChildren,
    Restarts,
    Stop,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Target {
    Id(String),
    Pid(u64),
}

#[derive(Serialize, Deserialize)]
pub(crate) enum Reply {
    Started { node: u64, pid: u64 },
    Done,
    Counts(Counts),
    Children(Vec<ChildInfo>),
    Restarts(u64),
    Failed(Error),
}

/// Spawns a child linked to the calling process under `tag`; the child will
/// acknowledge with `Started` tagged `tag`, or die.
///
/// lunatic 0.14 exposes only a panicking spawn (its fallible `IntoProcess` is
/// private), so a host that cannot create a process at all (e.g. out of
/// memory) fails the supervisor, which its parent then sees as a crash.
pub(crate) fn spawn_linked(spec: &ChildSpec, tag: Tag, parent_is_supervisor: bool) -> u64 {
    let StartFn { runner, func, arg } = spec.start.clone();
    let boot = Boot {
        id: spec.id.clone(),
        kind: spec.kind,
        runner,
        func,
        arg,
        parent: Parent {
            node: host::node_id(),
            pid: host::process_id(),
            tag,
            is_supervisor: parent_is_supervisor,
        },
    };
    Process::<(), Bincode>::spawn_link_tag(boot, tag, child_entry).id()
}

pub(crate) fn supervisor_main(config: SupervisorConfig, inbox: Inbox<SupervisorMsg>) {
    // Must come before the first child is spawned: until this signal is
    // processed a crashing child would take the supervisor down with it.
    // SAFETY: supervisors are sent `Envelope<SupervisorMsg>` only.
    let mailbox = unsafe { Mailbox::<Envelope<SupervisorMsg>>::new() }.catch_link_failure();
    let mut supervisor = Supervisor::new(inbox.id().to_owned(), config, mailbox);
    supervisor.start_initial_children();
    inbox.ack_started();
    supervisor.run();
}

#[derive(Clone, Copy)]
struct Running {
    pid: u64,
    tag: Tag,
}

struct Child {
    spec: ChildSpec,
    /// Started through the template: forgotten, not kept, once it ends for
    /// good.
    dynamic: bool,
    running: Option<Running>,
    /// When the current (or last) incarnation started.
    started: Option<Instant>,
    /// Crashes in a row that came soon after a start (see [`Backoff`]).
    quick_crashes: u32,
}

impl Child {
    /// Whether the supervisor drops this child once it is not running.
    fn forgotten_when_stopped(&self) -> bool {
        self.dynamic || self.spec.restart == Restart::Temporary
    }
}

/// The children, keyed so that a dynamic supervisor with 100 k sessions
/// handles each exit, start and terminate in O(log n), not by scanning.
/// A child keeps its key across restarts and keys grow with every added
/// child, so key order is start order, which every strategy relies on.
#[derive(Default)]
struct Children {
    by_key: BTreeMap<u64, Child>,
    /// Running incarnations by link tag (what exit notices carry).
    by_tag: HashMap<Tag, u64>,
    by_pid: HashMap<u64, u64>,
    next_key: u64,
}

impl Children {
    fn add(&mut self, spec: ChildSpec, dynamic: bool) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        let child = Child {
            spec,
            dynamic,
            running: None,
            started: None,
            quick_crashes: 0,
        };
        self.by_key.insert(key, child);
        key
    }

    fn get(&self, key: u64) -> &Child {
        self.by_key
            .get(&key)
            .expect("child keys are only used while the child is listed")
    }

    fn get_mut(&mut self, key: u64) -> &mut Child {
        self.by_key
            .get_mut(&key)
            .expect("child keys are only used while the child is listed")
    }

    fn contains(&self, key: u64) -> bool {
        self.by_key.contains_key(&key)
    }

    fn set_running(&mut self, key: u64, running: Option<Running>) -> Option<Running> {
        let child = self
            .by_key
            .get_mut(&key)
            .expect("child keys are only used while the child is listed");
        let previous = std::mem::replace(&mut child.running, running);
        if let Some(old) = previous {
            self.by_tag.remove(&old.tag);
            self.by_pid.remove(&old.pid);
        }
        if let Some(new) = running {
            self.by_tag.insert(new.tag, key);
            self.by_pid.insert(new.pid, key);
        }
        previous
    }

    /// Forgets the child (it must not be running) and its registry entry.
    fn remove(&mut self, key: u64) {
        if let Some(child) = self.by_key.remove(&key) {
            debug_assert!(child.running.is_none(), "removing a running child");
            if let Some(name) = &child.spec.registered {
                unregister_key(name);
            }
        }
    }

    fn keys(&self) -> impl DoubleEndedIterator<Item = u64> + '_ {
        self.by_key.keys().copied()
    }
}

struct Supervisor {
    name: String,
    strategy: Strategy,
    template: Option<Template>,
    initial: Vec<ChildSpec>,
    children: Children,
    window: RestartWindow,
    backoff: Backoff,
    /// Children waiting out their backoff: key → when to restart.
    delayed: BTreeMap<u64, Instant>,
    /// Child processes restarted so far (a one_for_all restart of three
    /// children counts three; intensity counts it once, as OTP does).
    restarts: u64,
    mailbox: Mailbox<Envelope<SupervisorMsg>, Bincode, LinkDiedSignal>,
}

impl Supervisor {
    fn new(
        name: String,
        config: SupervisorConfig,
        mailbox: Mailbox<Envelope<SupervisorMsg>, Bincode, LinkDiedSignal>,
    ) -> Self {
        let SupervisorConfig { spec, template } = config;
        Self {
            name,
            strategy: spec.strategy,
            template,
            initial: spec.children,
            children: Children::default(),
            window: RestartWindow::new(spec.intensity, spec.period),
            backoff: spec.backoff,
            delayed: BTreeMap::new(),
            restarts: 0,
            mailbox,
        }
    }

    /// Starts the declared children in order; if one cannot start, stops the
    /// ones already running and fails, so that the parent sees the start
    /// failure (OTP's supervisor init fails the same way).
    fn start_initial_children(&mut self) {
        for spec in std::mem::take(&mut self.initial) {
            let id = spec.id.clone();
            let key = self.children.add(spec, false);
            if self.start(key).is_err() {
                self.terminate_all();
                panic!("supervisor `{}`: child `{id}` failed to start", self.name);
            }
        }
    }

    fn run(mut self) {
        loop {
            self.restart_due();
            let received = match self.delayed.values().min() {
                Some(due) => {
                    let wait = due.saturating_duration_since(Instant::now());
                    match self.mailbox.receive_timeout(wait) {
                        Err(MailboxError::TimedOut) => continue,
                        other => other,
                    }
                }
                None => self.mailbox.try_receive(),
            };
            match received {
                Ok(MessageSignal::Signal(LinkDiedSignal(tag))) => {
                    if let Some(&key) = self.children.by_tag.get(&tag) {
                        self.child_exited(key, Exit::Abnormal);
                    } else if tag == Tag::none() {
                        eprintln!("supervisor `{}`: parent died; stopping children", self.name);
                        self.terminate_all();
                        return;
                    }
                    // Otherwise: a late crash notice of an incarnation that
                    // already reported `Exited` and was then killed; handled.
                }
                Ok(MessageSignal::Message(Envelope::Shutdown)) => {
                    self.terminate_all();
                    return;
                }
                Ok(MessageSignal::Message(Envelope::Msg(SupervisorMsg::Exited { tag }))) => {
                    if let Some(&key) = self.children.by_tag.get(&tag) {
                        self.child_exited(key, Exit::Normal);
                    }
                }
                Ok(MessageSignal::Message(Envelope::Msg(SupervisorMsg::Call {
                    from,
                    request,
                }))) => {
                    let stop = matches!(request, Request::Stop);
                    let reply = self.handle(request);
                    from.send(&reply);
                    if stop {
                        return;
                    }
                }
                // Acks are consumed by `start`; one here is a leftover of a
                // child that was already handled.
                Ok(MessageSignal::Message(Envelope::Msg(SupervisorMsg::Started))) => {}
                Err(err) => eprintln!("supervisor `{}`: dropped a message: {err}", self.name),
            }
        }
    }

    fn handle(&mut self, request: Request) -> Reply {
        match request {
            Request::StartChild(spec) => {
                let duplicate = self
                    .children
                    .by_key
                    .values()
                    .any(|c| !c.dynamic && c.spec.id == spec.id);
                if duplicate {
                    return Reply::Failed(Error::DuplicateChild(spec.id));
                }
                self.start_requested(spec, false)
            }
            Request::StartDynamic { arg, restart } => {
                let Some(template) = self.template.clone() else {
                    return Reply::Failed(Error::NotDynamic);
                };
                let spec = ChildSpec {
                    id: format!("{}#{}", self.name, self.children.next_key),
                    start: StartFn {
                        runner: template.runner,
                        func: template.func,
                        arg,
                    },
                    restart: restart.unwrap_or(template.restart),
                    shutdown: template.shutdown,
                    kind: ChildKind::Worker,
                    type_label: template.type_label,
                    registered: None,
                };
                self.start_requested(spec, true)
            }
            Request::TerminateChild(target) => {
                let key = match &target {
                    Target::Id(id) => self
                        .children
                        .by_key
                        .iter()
                        .find(|(_, c)| &c.spec.id == id)
                        .map(|(&key, _)| key),
                    Target::Pid(pid) => self.children.by_pid.get(pid).copied(),
                };
                let Some(key) = key else {
                    let what = match target {
                        Target::Id(id) => id,
                        Target::Pid(pid) => format!("pid {pid}"),
                    };
                    return Reply::Failed(Error::UnknownChild(what));
                };
                self.delayed.remove(&key);
                self.terminate(key);
                self.children.remove(key);
                Reply::Done
            }
            Request::CountChildren => {
                let specs = self.children.by_key.len();
                let supervisors = self
                    .children
                    .by_key
                    .values()
                    .filter(|c| c.spec.kind == ChildKind::Supervisor)
                    .count();
                Reply::Counts(Counts {
                    specs,
                    active: self.children.by_tag.len(),
                    supervisors,
                    workers: specs - supervisors,
                })
            }
            Request::WhichChildren => Reply::Children(
                self.children
                    .by_key
                    .values()
                    .map(|c| ChildInfo {
                        id: c.spec.id.clone(),
                        pid: c.running.map(|r| r.pid),
                        kind: c.spec.kind,
                        restart: c.spec.restart,
                    })
                    .collect(),
            ),
            Request::Restarts => Reply::Restarts(self.restarts),
            Request::Stop => {
                self.terminate_all();
                Reply::Done
            }
        }
    }

    fn start_requested(&mut self, spec: ChildSpec, dynamic: bool) -> Reply {
        let id = spec.id.clone();
        let key = self.children.add(spec, dynamic);
        match self.start(key) {
            Ok(running) => Reply::Started {
                node: host::node_id(),
                pid: running.pid,
            },
            Err(()) => {
                self.children.remove(key);
                Reply::Failed(Error::StartFailed(id))
            }
        }
    }

    /// Spawns one incarnation of the child and waits until it is up.
    fn start(&mut self, key: u64) -> Result<Running, ()> {
        let spec = &self.children.get(key).spec;
        let tag = Tag::new();
        let pid = spawn_linked(spec, tag, true);
        loop {
            match self.mailbox.try_tag_receive(&[tag]) {
                Ok(MessageSignal::Message(Envelope::Msg(SupervisorMsg::Started))) => break,
                Ok(MessageSignal::Signal(_)) => {
                    eprintln!(
                        "supervisor `{}`: child `{}` (pid {pid}) died while starting",
                        self.name, spec.id
                    );
                    return Err(());
                }
                Ok(MessageSignal::Message(_)) | Err(_) => {}
            }
        }
        if let Some(name) = &spec.registered {
            register_key(name, host::node_id(), pid);
        }
        let running = Running { pid, tag };
        self.children.set_running(key, Some(running));
        self.children.get_mut(key).started = Some(Instant::now());
        Ok(running)
    }

    /// Stops a running child by its shutdown spec and waits until it is gone.
    fn terminate(&mut self, key: u64) {
        let Some(Running { pid, tag }) = self.children.set_running(key, None) else {
            return;
        };
        let spec = &self.children.get(key).spec;
        let (id, shutdown) = (spec.id.clone(), spec.shutdown);
        let node = host::node_id();
        match shutdown {
            Shutdown::BrutalKill => {
                kill(node, pid);
                self.await_exit(tag, None);
            }
            Shutdown::Timeout(timeout) => {
                request_shutdown(node, pid);
                if !self.await_exit(tag, Some(timeout)) {
                    eprintln!(
                        "supervisor `{}`: child `{id}` (pid {pid}) did not stop within {timeout:?}; killing it",
                        self.name
                    );
                    kill(node, pid);
                    self.await_exit(tag, None);
                }
            }
            Shutdown::Infinity => {
                request_shutdown(node, pid);
                self.await_exit(tag, None);
            }
        }
    }

    /// Waits for the end of the incarnation linked under `tag`: its `Exited`
    /// or its `LinkDied`. False if `timeout` passed first.
    fn await_exit(&self, tag: Tag, timeout: Option<Duration>) -> bool {
        loop {
            let received = match timeout {
                Some(timeout) => self.mailbox.tag_receive_timeout(&[tag], timeout),
                None => self.mailbox.try_tag_receive(&[tag]),
            };
            match received {
                Ok(MessageSignal::Signal(_))
                | Ok(MessageSignal::Message(Envelope::Msg(SupervisorMsg::Exited { .. }))) => {
                    return true
                }
                Err(MailboxError::TimedOut) => return false,
                Ok(MessageSignal::Message(_)) | Err(_) => {}
            }
        }
    }

    /// Stops every child in reverse start order; the supervisor is about to
    /// exit, so their registry entries go too.
    fn terminate_all(&mut self) {
        self.delayed.clear();
        let keys: Vec<u64> = self.children.keys().rev().collect();
        for key in keys {
            self.terminate(key);
            if let Some(name) = &self.children.get(key).spec.registered {
                unregister_key(name);
            }
        }
    }

    fn child_exited(&mut self, key: u64, exit: Exit) {
        let pid = self.children.set_running(key, None).map_or(0, |r| r.pid);
        let child = self.children.get(key);
        let how = match exit {
            Exit::Normal => "exited normally",
            Exit::Abnormal => "crashed",
        };
        if !child.spec.restart.restarts_after(exit) {
            // A normal end that needs no restart is routine (every closed
            // session): only crashes are worth a log line.
            if exit == Exit::Abnormal {
                eprintln!(
                    "supervisor `{}`: child `{}` (pid {pid}) {how}; not restarted ({:?})",
                    self.name, child.spec.id, child.spec.restart
                );
            }
            if child.forgotten_when_stopped() {
                self.children.remove(key);
            } else if let Some(name) = &child.spec.registered {
                unregister_key(name);
            }
            return;
        }
        let ran = child.started.map_or(Duration::ZERO, |s| s.elapsed());
        let quick = if self.backoff.stable_after(ran) {
            0
        } else {
            child.quick_crashes.saturating_add(1)
        };
        let wait = self.backoff.delay(quick);
        eprintln!(
            "supervisor `{}`: child `{}` (pid {pid}) {how} after {ran:?}; restarting ({:?}) in {wait:?}",
            self.name, child.spec.id, self.strategy
        );
        self.children.get_mut(key).quick_crashes = quick;
        if wait.is_zero() {
            self.restart(key);
        } else {
            self.delayed.insert(key, Instant::now() + wait);
        }
    }

    /// Restarts the children whose backoff has run out.
    fn restart_due(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self
            .delayed
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in due {
            self.delayed.remove(&key);
            if self.children.contains(key) && self.children.get(key).running.is_none() {
                self.restart(key);
            }
        }
    }

    /// Restarts `failed` and, by strategy, its siblings; a child that dies
    /// again while being started counts as a new failure.
    fn restart(&mut self, failed: u64) {
        let mut pending = VecDeque::from([failed]);
        while let Some(key) = pending.pop_front() {
            if !self.children.contains(key) {
                continue;
            }
            if !self.window.allow(Instant::now()) {
                self.escalate();
            }
            let group = self.restart_group(key);
            let mut stopped = Vec::new();
            for &sibling in group.iter().rev().filter(|&&k| k != key) {
                if self.children.get(sibling).running.is_some() {
                    self.terminate(sibling);
                    stopped.push(sibling);
                }
            }
            for &member in &group {
                let again = member == key
                    || (stopped.contains(&member)
                        && self.children.get(member).spec.restart != Restart::Temporary);
                if !again {
                    continue;
                }
                match self.start(member) {
                    Ok(running) => {
                        self.restarts += 1;
                        eprintln!(
                            "supervisor `{}`: restarted child `{}` as pid {} ({} restarts so far)",
                            self.name,
                            self.children.get(member).spec.id,
                            running.pid,
                            self.restarts
                        );
                    }
                    Err(()) => pending.push_back(member),
                }
            }
            // Temporary siblings stopped for the group restart are gone for
            // good; what waits for another restart attempt stays.
            for &member in &stopped {
                let child = self.children.get(member);
                if child.running.is_none()
                    && child.forgotten_when_stopped()
                    && !pending.contains(&member)
                {
                    self.children.remove(member);
                }
            }
        }
    }

    /// The children restarted together with `key`, in start order.
    fn restart_group(&self, key: u64) -> Vec<u64> {
        match self.strategy {
            Strategy::OneForOne => vec![key],
            Strategy::OneForAll => self.children.keys().collect(),
            Strategy::RestForOne => self.children.by_key.range(key..).map(|(&k, _)| k).collect(),
        }
    }

    /// More restarts than the intensity allows: stop everything and fail, so
    /// that our own supervisor decides (it sees a crash).
    fn escalate(&mut self) -> ! {
        eprintln!(
            "supervisor `{}`: restart intensity exceeded ({}); stopping all children and exiting",
            self.name,
            self.window.describe()
        );
        self.terminate_all();
        panic!("supervisor `{}`: restart intensity exceeded", self.name);
    }
}

fn kill(node: u64, pid: u64) {
    // SAFETY: only the id is used; `kill` works on any message type.
    let process: Process<(), Bincode> = unsafe { Process::new(node, pid) };
    process.kill();
}
