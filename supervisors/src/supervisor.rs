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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use lunatic::serializer::Bincode;
use lunatic::{host, LinkDiedSignal, Mailbox, MailboxError, MessageSignal, Process, Tag};
use serde::{Deserialize, Serialize};

use crate::child::{
    child_entry, register_key, request_shutdown, unregister_key, Boot, Envelope, Inbox, Parent,
};
use crate::handle::{ChildInfo, Counts, Error};
use crate::intensity::RestartWindow;
use crate::spec::{
    ChildKind, ChildSpec, Exit, Restart, Shutdown, StartFn, Strategy, SupervisorSpec,
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
    Call { from: Caller, request: Request },
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Caller {
    pub(crate) node: u64,
    pub(crate) pid: u64,
    pub(crate) tag: Tag,
}

impl Caller {
    fn reply(&self, reply: Reply) {
        // SAFETY: the caller waits for `Reply` with this tag (handle::call).
        let caller: Process<Reply, Bincode> = unsafe { Process::new(self.node, self.pid) };
        caller.tag_send(self.tag, reply);
    }
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
    /// Stable identity across restarts (pids and tags change).
    key: u64,
    spec: ChildSpec,
    /// Started through the template: forgotten, not kept, once it ends for
    /// good.
    dynamic: bool,
    running: Option<Running>,
}

impl Child {
    /// Whether the supervisor drops this child once it is not running.
    fn forgotten_when_stopped(&self) -> bool {
        self.dynamic || self.spec.restart == Restart::Temporary
    }
}

struct Supervisor {
    name: String,
    strategy: Strategy,
    template: Option<Template>,
    initial: Vec<ChildSpec>,
    children: Vec<Child>,
    next_key: u64,
    window: RestartWindow,
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
            children: Vec::new(),
            next_key: 0,
            window: RestartWindow::new(spec.intensity, spec.period),
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
            let key = self.add(spec, false);
            if self.start(key).is_err() {
                self.terminate_all();
                panic!("supervisor `{}`: child `{id}` failed to start", self.name);
            }
        }
    }

    fn run(mut self) {
        loop {
            match self.mailbox.try_receive() {
                Ok(MessageSignal::Signal(LinkDiedSignal(tag))) => {
                    if let Some(key) = self.key_of_tag(tag) {
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
                    if let Some(key) = self.key_of_tag(tag) {
                        self.child_exited(key, Exit::Normal);
                    }
                }
                Ok(MessageSignal::Message(Envelope::Msg(SupervisorMsg::Call {
                    from,
                    request,
                }))) => {
                    let stop = matches!(request, Request::Stop);
                    let reply = self.handle(request);
                    from.reply(reply);
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
                if self
                    .children
                    .iter()
                    .any(|c| !c.dynamic && c.spec.id == spec.id)
                {
                    return Reply::Failed(Error::DuplicateChild(spec.id));
                }
                self.start_requested(spec, false)
            }
            Request::StartDynamic { arg, restart } => {
                let Some(template) = self.template.clone() else {
                    return Reply::Failed(Error::NotDynamic);
                };
                let spec = ChildSpec {
                    id: format!("{}#{}", self.name, self.next_key),
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
                let index = match &target {
                    Target::Id(id) => self.children.iter().position(|c| &c.spec.id == id),
                    Target::Pid(pid) => self
                        .children
                        .iter()
                        .position(|c| c.running.map(|r| r.pid) == Some(*pid)),
                };
                let Some(index) = index else {
                    let what = match target {
                        Target::Id(id) => id,
                        Target::Pid(pid) => format!("pid {pid}"),
                    };
                    return Reply::Failed(Error::UnknownChild(what));
                };
                self.terminate(index);
                self.remove(index);
                Reply::Done
            }
            Request::CountChildren => {
                let supervisors = self
                    .children
                    .iter()
                    .filter(|c| c.spec.kind == ChildKind::Supervisor)
                    .count();
                Reply::Counts(Counts {
                    specs: self.children.len(),
                    active: self.children.iter().filter(|c| c.running.is_some()).count(),
                    supervisors,
                    workers: self.children.len() - supervisors,
                })
            }
            Request::WhichChildren => Reply::Children(
                self.children
                    .iter()
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
        let key = self.add(spec, dynamic);
        match self.start(key) {
            Ok(running) => Reply::Started {
                node: host::node_id(),
                pid: running.pid,
            },
            Err(()) => {
                let index = self.index_of(key);
                self.remove(index);
                Reply::Failed(Error::StartFailed(id))
            }
        }
    }

    fn add(&mut self, spec: ChildSpec, dynamic: bool) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.children.push(Child {
            key,
            spec,
            dynamic,
            running: None,
        });
        key
    }

    fn index_of(&self, key: u64) -> usize {
        self.children
            .iter()
            .position(|c| c.key == key)
            .expect("child keys are only used while the child is listed")
    }

    fn key_of_tag(&self, tag: Tag) -> Option<u64> {
        self.children
            .iter()
            .find(|c| c.running.map(|r| r.tag) == Some(tag))
            .map(|c| c.key)
    }

    /// Spawns one incarnation of the child and waits until it is up.
    fn start(&mut self, key: u64) -> Result<Running, ()> {
        let index = self.index_of(key);
        let spec = &self.children[index].spec;
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
        self.children[index].running = Some(running);
        Ok(running)
    }

    /// Stops a running child by its shutdown spec and waits until it is gone.
    fn terminate(&mut self, index: usize) {
        let child = &mut self.children[index];
        let Some(Running { pid, tag }) = child.running.take() else {
            return;
        };
        let (id, shutdown) = (child.spec.id.clone(), child.spec.shutdown);
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

    fn terminate_all(&mut self) {
        for index in (0..self.children.len()).rev() {
            self.terminate(index);
            if let Some(name) = &self.children[index].spec.registered {
                unregister_key(name);
            }
        }
    }

    fn remove(&mut self, index: usize) {
        let child = self.children.remove(index);
        if let Some(name) = &child.spec.registered {
            unregister_key(name);
        }
    }

    fn child_exited(&mut self, key: u64, exit: Exit) {
        let index = self.index_of(key);
        let child = &mut self.children[index];
        let pid = child.running.take().map_or(0, |r| r.pid);
        let how = match exit {
            Exit::Normal => "exited normally",
            Exit::Abnormal => "crashed",
        };
        if !child.spec.restart.restarts_after(exit) {
            eprintln!(
                "supervisor `{}`: child `{}` (pid {pid}) {how}; not restarted ({:?})",
                self.name, child.spec.id, child.spec.restart
            );
            if child.forgotten_when_stopped() {
                self.remove(index);
            } else if let Some(name) = &child.spec.registered {
                unregister_key(name);
            }
            return;
        }
        eprintln!(
            "supervisor `{}`: child `{}` (pid {pid}) {how}; restarting ({:?})",
            self.name, child.spec.id, self.strategy
        );
        self.restart(key);
    }

    /// Restarts `failed` and, by strategy, its siblings; a child that dies
    /// again while being started counts as a new failure.
    fn restart(&mut self, failed: u64) {
        let mut pending = VecDeque::from([failed]);
        while let Some(key) = pending.pop_front() {
            if !self.children.iter().any(|c| c.key == key) {
                continue;
            }
            if !self.window.allow(Instant::now()) {
                self.escalate();
            }
            let group = self.restart_group(key);
            let mut stopped = Vec::new();
            for &sibling in group.iter().rev().filter(|&&k| k != key) {
                let index = self.index_of(sibling);
                if self.children[index].running.is_some() {
                    self.terminate(index);
                    stopped.push(sibling);
                }
            }
            for &member in &group {
                let index = self.index_of(member);
                let again = member == key
                    || (stopped.contains(&member)
                        && self.children[index].spec.restart != Restart::Temporary);
                if !again {
                    continue;
                }
                match self.start(member) {
                    Ok(running) => {
                        self.restarts += 1;
                        eprintln!(
                            "supervisor `{}`: restarted child `{}` as pid {} ({} restarts so far)",
                            self.name, self.children[index].spec.id, running.pid, self.restarts
                        );
                    }
                    Err(()) => pending.push_back(member),
                }
            }
            // Temporary siblings stopped for the group restart are gone for
            // good; keep what is still waiting for a restart.
            let mut index = 0;
            while index < self.children.len() {
                let child = &self.children[index];
                if child.running.is_none()
                    && child.forgotten_when_stopped()
                    && !pending.contains(&child.key)
                    && group.contains(&child.key)
                {
                    self.remove(index);
                } else {
                    index += 1;
                }
            }
        }
    }

    /// The children restarted together with `key`, in start order.
    fn restart_group(&self, key: u64) -> Vec<u64> {
        let keys = self.children.iter().map(|c| c.key);
        match self.strategy {
            Strategy::OneForOne => vec![key],
            Strategy::OneForAll => keys.collect(),
            Strategy::RestForOne => keys.skip(self.index_of(key)).collect(),
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
