//! Supervision scenarios, run as a guest: `lunatic run scenarios.wasm` (or
//! `chorus exec scenarios.wasm`).
//!
//! Each scenario runs in its own process, linked to `main`, which traps link
//! failures: a scenario that panics or hangs is reported as FAILED and the
//! next one still runs. A scenario that fails exits abnormally on purpose, so
//! the supervisors it started (linked to it) stop their trees instead of
//! leaking into the next scenario. Output: one `ok <name>` / `FAILED <name>:
//! <reason>` line per scenario, then `<n> passed, <m> failed`; the exit status
//! is non-zero if anything failed.

use std::time::{Duration, Instant};

use lunatic::serializer::Bincode;
use lunatic::{host, sleep, Mailbox, MailboxError, MessageSignal, Process, Tag};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use supervisors::{
    call, Backoff, ChildRef, ChildSpec, DynamicSupervisor, DynamicSupervisorSpec, Inbox, Incoming,
    Restart, Shutdown, Strategy, SupervisorRef, SupervisorSpec,
};

type Scenario = fn() -> Result<(), String>;

const SCENARIOS: &[(&str, Scenario)] = &[
    (
        "one_for_one_restarts_crashed_child_with_fresh_state",
        one_for_one_restarts_crashed_child,
    ),
    (
        "permanent_child_restarted_after_normal_exit",
        permanent_restarted_after_normal_exit,
    ),
    (
        "transient_child_not_restarted_after_normal_exit",
        transient_not_restarted_after_normal_exit,
    ),
    (
        "transient_child_restarted_after_crash",
        transient_restarted_after_crash,
    ),
    ("temporary_child_never_restarted", temporary_never_restarted),
    (
        "one_for_all_restarts_every_sibling",
        one_for_all_restarts_every_sibling,
    ),
    (
        "rest_for_one_restarts_only_later_siblings",
        rest_for_one_restarts_later_siblings,
    ),
    (
        "restarts_within_intensity_are_tolerated",
        restarts_within_intensity_tolerated,
    ),
    (
        "intensity_exceeded_escalates_to_parent",
        intensity_exceeded_escalates,
    ),
    (
        "restarts_older_than_period_are_forgotten",
        restarts_older_than_period_forgotten,
    ),
    (
        "shutdown_timeout_lets_cooperative_child_stop",
        shutdown_timeout_cooperative_child,
    ),
    (
        "shutdown_timeout_kills_child_ignoring_stop",
        shutdown_timeout_kills_stubborn_child,
    ),
    (
        "brutal_kill_does_not_ask_the_child",
        brutal_kill_does_not_ask,
    ),
    (
        "children_stop_in_reverse_start_order",
        children_stop_in_reverse_order,
    ),
    (
        "dynamic_children_start_terminate_count",
        dynamic_start_terminate_count,
    ),
    (
        "dynamic_children_follow_their_own_restart_type",
        dynamic_restart_types,
    ),
    (
        "nested_supervisor_escalation_restarts_subtree",
        nested_escalation_restarts_subtree,
    ),
    (
        "tree_stops_when_its_parent_crashes",
        tree_stops_when_parent_crashes,
    ),
    (
        "tagged_answer_is_awaited_alone_and_a_late_one_is_an_ordinary_message",
        tagged_answers,
    ),
    (
        "crash_loop_is_restarted_with_doubling_backoff",
        crash_loop_backs_off,
    ),
    (
        "a_child_that_ran_long_enough_is_restarted_at_once",
        stable_child_restarts_at_once,
    ),
];

/// How long any scenario may take before it is reported as hung.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a scenario waits for an expected effect (a restart, a death).
const SETTLE: Duration = Duration::from_secs(3);

fn main() {
    // SAFETY: main only receives scenario outcomes, tagged per scenario.
    let outcomes = unsafe { Mailbox::<Result<(), String>>::new() }.catch_link_failure();
    let (mut passed, mut failed) = (0, 0);
    for (index, (name, _)) in SCENARIOS.iter().enumerate() {
        let report = Probe::new();
        let scenario =
            Process::<(), Bincode>::spawn_link_tag((index, report), report.tag, run_scenario);
        let outcome = match outcomes.tag_receive_timeout(&[report.tag], SCENARIO_TIMEOUT) {
            Ok(MessageSignal::Message(outcome)) => outcome,
            Ok(MessageSignal::Signal(_)) => Err("scenario process crashed (see stderr)".into()),
            Err(MailboxError::TimedOut) => {
                scenario.kill();
                Err(format!("timed out after {SCENARIO_TIMEOUT:?}"))
            }
            Err(err) => Err(format!("undecodable outcome: {err}")),
        };
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("ok {name}");
            }
            Err(reason) => {
                failed += 1;
                println!("FAILED {name}: {reason}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

fn run_scenario((index, report): (usize, Probe), _: Mailbox<()>) {
    let (name, scenario) = SCENARIOS[index];
    let outcome = scenario();
    let failed = outcome.is_err();
    report.send(outcome);
    if failed {
        panic!("scenario {name} failed; exiting abnormally to stop its supervisors");
    }
}

// ---------------------------------------------------------------------------
// Test children

/// A reply address: a process and a tag it waits on.
#[derive(Clone, Copy, Serialize, Deserialize)]
struct Probe {
    node: u64,
    pid: u64,
    tag: Tag,
}

impl Probe {
    fn new() -> Self {
        Self {
            node: host::node_id(),
            pid: host::process_id(),
            tag: Tag::new(),
        }
    }

    fn send<T: Serialize + DeserializeOwned>(&self, value: T) {
        // SAFETY: the probe's owner receives `T` under this tag.
        let to: Process<T, Bincode> = unsafe { Process::new(self.node, self.pid) };
        to.tag_send(self.tag, value);
    }

    fn receive<T: Serialize + DeserializeOwned>(&self, timeout: Duration) -> Result<T, String> {
        // SAFETY: only `T` is sent under this probe's tag.
        unsafe { Mailbox::<T>::new() }
            .tag_receive_timeout(&[self.tag], timeout)
            .map_err(|err| format!("no message on probe: {err}"))
    }

    fn expect_nothing<T: Serialize + DeserializeOwned>(
        &self,
        wait: Duration,
    ) -> Result<(), String> {
        match self.receive::<T>(wait) {
            Ok(_) => Err("unexpected message on probe".into()),
            Err(_) => Ok(()),
        }
    }
}

#[derive(Serialize, Deserialize)]
enum Cmd {
    Bump,
    Get(Probe),
    Crash,
    Exit,
}

/// How a test worker reacts to its supervisor's stop request.
#[derive(Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
enum OnShutdown {
    Stop,
    Ignore,
}

#[derive(Serialize, Deserialize)]
struct Worker {
    label: String,
    on_shutdown: OnShutdown,
    /// Told `"stop <label>"` when the stop request arrives, and `"done
    /// <label>"` once a cooperative worker has cleaned up.
    events: Option<Probe>,
    /// Time a cooperative worker spends cleaning up before it returns.
    cleanup: Duration,
}

impl Worker {
    fn plain(label: &str) -> Self {
        Self {
            label: label.into(),
            on_shutdown: OnShutdown::Stop,
            events: None,
            cleanup: Duration::ZERO,
        }
    }

    fn reporting(label: &str, on_shutdown: OnShutdown, events: Probe) -> Self {
        Self {
            label: label.into(),
            on_shutdown,
            events: Some(events),
            cleanup: Duration::ZERO,
        }
    }
}

/// A counter whose state starts at 0 in every incarnation.
fn worker(config: Worker, inbox: Inbox<Cmd>) {
    let mut count = 0_u64;
    loop {
        match inbox.receive() {
            Incoming::Message(Cmd::Bump) => count += 1,
            Incoming::Message(Cmd::Get(reply)) => reply.send(count),
            Incoming::Message(Cmd::Crash) => panic!("{} crashes on request", config.label),
            Incoming::Message(Cmd::Exit) => return,
            Incoming::Shutdown => {
                if let Some(events) = config.events {
                    events.send(format!("stop {}", config.label));
                }
                if config.on_shutdown == OnShutdown::Stop {
                    sleep(config.cleanup);
                    if let Some(events) = config.events {
                        events.send(format!("done {}", config.label));
                    }
                    return;
                }
            }
        }
    }
}

/// Reports each start, then crashes at once: a crash loop.
fn crash_loop(starts: Probe, _: Inbox<Cmd>) {
    starts.send(());
    panic!("crash loop");
}

fn spec(label: &str) -> ChildSpec {
    ChildSpec::new(label, worker, Worker::plain(label)).register(label)
}

// ---------------------------------------------------------------------------
// Helpers

fn child(name: &str) -> Result<ChildRef<Cmd>, String> {
    ChildRef::<Cmd>::lookup(name).ok_or_else(|| format!("`{name}` is not registered"))
}

fn count_of(child: ChildRef<Cmd>) -> Result<u64, String> {
    let reply = Probe::new();
    child.send(Cmd::Get(reply));
    reply.receive(SETTLE)
}

/// Polls `condition` until it holds or `SETTLE` passes.
fn eventually(
    what: &str,
    mut condition: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if condition()? {
            return Ok(());
        }
        sleep(Duration::from_millis(5));
    }
    Err(format!("timed out waiting until {what}"))
}

/// Waits until the registered child `name` is a different process than `old`.
fn restarted(name: &str, old: ChildRef<Cmd>) -> Result<ChildRef<Cmd>, String> {
    eventually(&format!("`{name}` is restarted"), || {
        Ok(ChildRef::<Cmd>::lookup(name).is_some_and(|now| now != old && now.is_alive()))
    })?;
    child(name)
}

fn dead(what: &str, pid: u64) -> Result<(), String> {
    // SAFETY: only the id is used.
    let process: Process<(), Bincode> = unsafe { Process::new(host::node_id(), pid) };
    eventually(&format!("{what} (pid {pid}) is gone"), || {
        Ok(!process.is_alive())
    })
}

fn check(condition: bool, message: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(message())
    }
}

fn err(error: supervisors::Error) -> String {
    error.to_string()
}

fn start(name: &str, spec: SupervisorSpec) -> Result<SupervisorRef, String> {
    SupervisorRef::start_link(name, spec).map_err(err)
}

fn pid_of(sup: &SupervisorRef, id: &str) -> Result<Option<u64>, String> {
    let children = sup.which_children().map_err(err)?;
    children
        .into_iter()
        .find(|c| c.id == id)
        .map(|c| c.pid)
        .ok_or_else(|| format!("supervisor does not list `{id}`"))
}

// ---------------------------------------------------------------------------
// Scenarios

fn one_for_one_restarts_crashed_child() -> Result<(), String> {
    let sup = start(
        "s1",
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(3)
            .child(spec("s1.a"))
            .child(spec("s1.b")),
    )?;
    let (a, b) = (child("s1.a")?, child("s1.b")?);
    for _ in 0..3 {
        a.send(Cmd::Bump);
    }
    check(count_of(a)? == 3, || "a did not count to 3".into())?;
    a.send(Cmd::Crash);
    let new_a = restarted("s1.a", a)?;
    check(count_of(new_a)? == 0, || {
        "restarted a kept its old state".into()
    })?;
    check(child("s1.b")? == b && b.is_alive(), || {
        "sibling b was restarted".into()
    })?;
    check(sup.restarts().map_err(err)? == 1, || {
        "restart counter is not 1".into()
    })?;
    check(pid_of(&sup, "s1.a")? == Some(new_a.pid()), || {
        "which_children lags".into()
    })?;
    sup.shutdown().map_err(err)
}

fn permanent_restarted_after_normal_exit() -> Result<(), String> {
    let sup = start(
        "s2",
        SupervisorSpec::new(Strategy::OneForOne).child(spec("s2.a").restart(Restart::Permanent)),
    )?;
    let a = child("s2.a")?;
    a.send(Cmd::Exit);
    restarted("s2.a", a)?;
    sup.shutdown().map_err(err)
}

fn transient_not_restarted_after_normal_exit() -> Result<(), String> {
    let sup = start(
        "s3",
        SupervisorSpec::new(Strategy::OneForOne).child(spec("s3.a").restart(Restart::Transient)),
    )?;
    let a = child("s3.a")?;
    a.send(Cmd::Exit);
    dead("transient child", a.pid())?;
    sleep(Duration::from_millis(200));
    check(pid_of(&sup, "s3.a")?.is_none(), || {
        "transient child was restarted".into()
    })?;
    let counts = sup.count_children().map_err(err)?;
    check(counts.active == 0 && counts.specs == 1, || {
        format!("{counts:?}")
    })?;
    check(sup.restarts().map_err(err)? == 0, || {
        "restart counted".into()
    })?;
    sup.shutdown().map_err(err)
}

fn transient_restarted_after_crash() -> Result<(), String> {
    let sup = start(
        "s4",
        SupervisorSpec::new(Strategy::OneForOne).child(spec("s4.a").restart(Restart::Transient)),
    )?;
    let a = child("s4.a")?;
    a.send(Cmd::Crash);
    restarted("s4.a", a)?;
    sup.shutdown().map_err(err)
}

fn temporary_never_restarted() -> Result<(), String> {
    let sup = start(
        "s5",
        SupervisorSpec::new(Strategy::OneForOne)
            .child(spec("s5.crashes").restart(Restart::Temporary))
            .child(spec("s5.exits").restart(Restart::Temporary)),
    )?;
    let (crashes, exits) = (child("s5.crashes")?, child("s5.exits")?);
    crashes.send(Cmd::Crash);
    exits.send(Cmd::Exit);
    dead("crashed temporary child", crashes.pid())?;
    dead("exited temporary child", exits.pid())?;
    eventually("both temporary children are forgotten", || {
        Ok(sup.count_children().map_err(err)?.specs == 0)
    })?;
    sleep(Duration::from_millis(200));
    check(ChildRef::<Cmd>::lookup("s5.crashes").is_none(), || {
        "temporary child is still registered".into()
    })?;
    check(sup.restarts().map_err(err)? == 0, || {
        "temporary child restarted".into()
    })?;
    sup.shutdown().map_err(err)
}

fn one_for_all_restarts_every_sibling() -> Result<(), String> {
    let sup = start(
        "s6",
        SupervisorSpec::new(Strategy::OneForAll)
            .intensity(3)
            .child(spec("s6.a"))
            .child(spec("s6.b"))
            .child(spec("s6.c")),
    )?;
    let before = [child("s6.a")?, child("s6.b")?, child("s6.c")?];
    before[0].send(Cmd::Bump);
    before[1].send(Cmd::Crash);
    for (name, old) in ["s6.a", "s6.b", "s6.c"].iter().zip(before) {
        let new = restarted(name, old)?;
        dead(name, old.pid())?;
        check(count_of(new)? == 0, || format!("{name} kept its state"))?;
    }
    check(sup.restarts().map_err(err)? == 3, || {
        "expected 3 restarts".into()
    })?;
    sup.shutdown().map_err(err)
}

fn rest_for_one_restarts_later_siblings() -> Result<(), String> {
    let sup = start(
        "s7",
        SupervisorSpec::new(Strategy::RestForOne)
            .intensity(3)
            .child(spec("s7.a"))
            .child(spec("s7.b"))
            .child(spec("s7.c")),
    )?;
    let (a, b, c) = (child("s7.a")?, child("s7.b")?, child("s7.c")?);
    b.send(Cmd::Crash);
    restarted("s7.b", b)?;
    restarted("s7.c", c)?;
    dead("old c", c.pid())?;
    check(child("s7.a")? == a && a.is_alive(), || {
        "earlier sibling a was restarted".into()
    })?;
    check(sup.restarts().map_err(err)? == 2, || {
        "expected 2 restarts".into()
    })?;
    sup.shutdown().map_err(err)
}

fn restarts_within_intensity_tolerated() -> Result<(), String> {
    let sup = start(
        "s8",
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(2)
            .period(Duration::from_secs(10))
            .child(spec("s8.a")),
    )?;
    for _ in 0..2 {
        let a = child("s8.a")?;
        a.send(Cmd::Crash);
        restarted("s8.a", a)?;
    }
    sleep(Duration::from_millis(100));
    check(sup.is_alive(), || {
        "supervisor died within its intensity".into()
    })?;
    check(sup.restarts().map_err(err)? == 2, || {
        "expected 2 restarts".into()
    })?;
    sup.shutdown().map_err(err)
}

fn intensity_exceeded_escalates() -> Result<(), String> {
    // This scenario is the supervisor's parent: it traps link failures to
    // observe the escalation instead of dying with it.
    // SAFETY: nothing else is received untagged here.
    let links = unsafe { Mailbox::<()>::new() }.catch_link_failure();
    let link = Tag::new();
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(2)
        .period(Duration::from_secs(10))
        .child(spec("s9.a"))
        .child(spec("s9.b"));
    let sup = SupervisorRef::start_link_with_tag("s9", spec, link).map_err(err)?;
    let b = child("s9.b")?;
    for _ in 0..2 {
        let a = child("s9.a")?;
        a.send(Cmd::Crash);
        restarted("s9.a", a)?;
    }
    check(sup.is_alive(), || "escalated too early".into())?;
    child("s9.a")?.send(Cmd::Crash);
    match links.tag_receive_timeout(&[link], SETTLE) {
        Ok(MessageSignal::Signal(_)) => {}
        Ok(MessageSignal::Message(())) => return Err("got a message, not a link death".into()),
        Err(error) => return Err(format!("parent saw no link death: {error}")),
    }
    dead("escalated supervisor", sup.pid())?;
    dead("sibling of the crash loop", b.pid())
}

fn restarts_older_than_period_forgotten() -> Result<(), String> {
    let sup = start(
        "s10",
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(1)
            .period(Duration::from_millis(300))
            .child(spec("s10.a")),
    )?;
    let a = child("s10.a")?;
    a.send(Cmd::Crash);
    let a = restarted("s10.a", a)?;
    sleep(Duration::from_millis(450));
    a.send(Cmd::Crash);
    restarted("s10.a", a)?;
    sleep(Duration::from_millis(100));
    check(sup.is_alive(), || {
        "a restart outside the period escalated".into()
    })?;
    sup.shutdown().map_err(err)
}

fn shutdown_timeout_cooperative_child() -> Result<(), String> {
    let events = Probe::new();
    let cleanup = Duration::from_millis(100);
    let cooperative = Worker {
        cleanup,
        ..Worker::reporting("a", OnShutdown::Stop, events)
    };
    let sup = start(
        "s11",
        SupervisorSpec::new(Strategy::OneForOne).child(
            ChildSpec::new("s11.a", worker, cooperative)
                .shutdown(Shutdown::Timeout(Duration::from_secs(2))),
        ),
    )?;
    let pid = pid_of(&sup, "s11.a")?.ok_or("child not running")?;
    let begun = Instant::now();
    sup.terminate_child("s11.a").map_err(err)?;
    let took = begun.elapsed();
    check(events.receive::<String>(SETTLE)? == "stop a", || {
        "child was not asked to stop".into()
    })?;
    check(events.receive::<String>(SETTLE)? == "done a", || {
        "child was not allowed to finish its cleanup".into()
    })?;
    check(took >= cleanup && took < Duration::from_secs(1), || {
        format!("cooperative stop took {took:?}")
    })?;
    dead("terminated child", pid)?;
    check(sup.count_children().map_err(err)?.specs == 0, || {
        "child still listed".into()
    })?;
    sup.shutdown().map_err(err)
}

fn shutdown_timeout_kills_stubborn_child() -> Result<(), String> {
    let events = Probe::new();
    let timeout = Duration::from_millis(300);
    let sup = start(
        "s12",
        SupervisorSpec::new(Strategy::OneForOne).child(
            ChildSpec::new(
                "s12.a",
                worker,
                Worker::reporting("a", OnShutdown::Ignore, events),
            )
            .shutdown(Shutdown::Timeout(timeout)),
        ),
    )?;
    let pid = pid_of(&sup, "s12.a")?.ok_or("child not running")?;
    let begun = Instant::now();
    sup.terminate_child("s12.a").map_err(err)?;
    let took = begun.elapsed();
    check(events.receive::<String>(SETTLE)? == "stop a", || {
        "child was not asked to stop".into()
    })?;
    check(took >= timeout, || {
        format!("killed after {took:?}, before the {timeout:?} timeout")
    })?;
    check(took < timeout * 5, || {
        format!("kill came only after {took:?}")
    })?;
    dead("stubborn child", pid)?;
    sup.shutdown().map_err(err)
}

fn brutal_kill_does_not_ask() -> Result<(), String> {
    let events = Probe::new();
    let sup = start(
        "s13",
        SupervisorSpec::new(Strategy::OneForOne).child(
            ChildSpec::new(
                "s13.a",
                worker,
                Worker::reporting("a", OnShutdown::Stop, events),
            )
            .shutdown(Shutdown::BrutalKill),
        ),
    )?;
    let pid = pid_of(&sup, "s13.a")?.ok_or("child not running")?;
    sup.terminate_child("s13.a").map_err(err)?;
    dead("killed child", pid)?;
    events.expect_nothing::<String>(Duration::from_millis(200))?;
    sup.shutdown().map_err(err)
}

fn children_stop_in_reverse_order() -> Result<(), String> {
    let events = Probe::new();
    let child = |label: &str| {
        ChildSpec::new(
            label,
            worker,
            Worker::reporting(label, OnShutdown::Stop, events),
        )
    };
    let sup = start(
        "s14",
        SupervisorSpec::new(Strategy::OneForOne)
            .child(child("a"))
            .child(child("b"))
            .child(child("c")),
    )?;
    sup.shutdown().map_err(err)?;
    // Each child is done before the next one is asked.
    let order: Vec<String> = (0..6)
        .map(|_| events.receive::<String>(SETTLE))
        .collect::<Result<_, _>>()?;
    let expected = ["stop c", "done c", "stop b", "done b", "stop a", "done a"];
    check(order == expected, || format!("stop order {order:?}"))?;
    dead("stopped supervisor", sup.pid())
}

fn dynamic_start_terminate_count() -> Result<(), String> {
    let sessions =
        DynamicSupervisor::start_link("s15", DynamicSupervisorSpec::new(worker)).map_err(err)?;
    let found = DynamicSupervisor::<Worker, Cmd>::lookup("s15").ok_or("s15 not registered")?;
    check(found.supervisor() == sessions.supervisor(), || {
        "lookup found another".into()
    })?;
    let children: Vec<ChildRef<Cmd>> = ["x", "y", "z"]
        .iter()
        .map(|label| sessions.start_child(Worker::plain(label)).map_err(err))
        .collect::<Result<_, _>>()?;
    check(sessions.count().map_err(err)? == 3, || {
        "count is not 3".into()
    })?;
    children[0].send(Cmd::Bump);
    check(count_of(children[0])? == 1, || {
        "dynamic child does not work".into()
    })?;
    sessions.terminate_child(&children[1]).map_err(err)?;
    dead("terminated dynamic child", children[1].pid())?;
    check(sessions.count().map_err(err)? == 2, || {
        "count is not 2".into()
    })?;
    check(
        sessions.terminate_child(&children[1])
            == Err(supervisors::Error::UnknownChild(format!(
                "pid {}",
                children[1].pid()
            ))),
        || "terminating twice did not report an unknown child".into(),
    )?;
    sessions.supervisor().shutdown().map_err(err)?;
    dead("dynamic child", children[0].pid())?;
    dead("dynamic child", children[2].pid())
}

fn dynamic_restart_types() -> Result<(), String> {
    let sessions = DynamicSupervisor::start_link(
        "s16",
        DynamicSupervisorSpec::new(worker)
            .restart(Restart::Permanent)
            .intensity(5),
    )
    .map_err(err)?;
    let sup = sessions.supervisor();
    let permanent = sessions.start_child(Worker::plain("p")).map_err(err)?;
    let temporary = sessions
        .start_child_with(Worker::plain("t"), Restart::Temporary)
        .map_err(err)?;
    let transient = sessions
        .start_child_with(Worker::plain("tr"), Restart::Transient)
        .map_err(err)?;
    check(sessions.count().map_err(err)? == 3, || {
        "count is not 3".into()
    })?;

    permanent.send(Cmd::Crash);
    eventually("the permanent child is restarted", || {
        let children = sup.which_children().map_err(err)?;
        Ok(children.iter().any(|c| {
            c.restart == Restart::Permanent && c.pid.is_some_and(|pid| pid != permanent.pid())
        }))
    })?;
    temporary.send(Cmd::Crash);
    transient.send(Cmd::Exit);
    dead("temporary child", temporary.pid())?;
    dead("transient child", transient.pid())?;
    eventually("only the permanent child is left", || {
        Ok(sessions.count().map_err(err)? == 1 && sup.count_children().map_err(err)?.specs == 1)
    })?;
    check(sup.restarts().map_err(err)? == 1, || {
        "expected exactly 1 restart".into()
    })?;
    sup.shutdown().map_err(err)
}

fn nested_escalation_restarts_subtree() -> Result<(), String> {
    let inner = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(0)
        .child(spec("s17.w"));
    let root = start(
        "s17",
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(2)
            .child(ChildSpec::supervisor("inner", inner).register("s17.inner"))
            .child(spec("s17.s")),
    )?;
    let inner = SupervisorRef::lookup("s17.inner").ok_or("inner not registered")?;
    let (w, s) = (child("s17.w")?, child("s17.s")?);
    w.send(Cmd::Crash);
    eventually("the inner supervisor is restarted", || {
        Ok(SupervisorRef::lookup("s17.inner").is_some_and(|now| now != inner && now.is_alive()))
    })?;
    dead("escalated inner supervisor", inner.pid())?;
    let new_w = restarted("s17.w", w)?;
    check(child("s17.s")? == s && s.is_alive(), || {
        "outer sibling was restarted".into()
    })?;
    check(root.restarts().map_err(err)? == 1, || {
        "outer did not count 1 restart".into()
    })?;
    check(root.tree_restarts().map_err(err)? == 1, || {
        "tree restarts is not 1".into()
    })?;
    let counts = root.count_children().map_err(err)?;
    check(counts.supervisors == 1 && counts.workers == 1, || {
        format!("{counts:?}")
    })?;
    root.shutdown().map_err(err)?;
    dead("inner worker after shutdown", new_w.pid())
}

fn tree_stops_when_parent_crashes() -> Result<(), String> {
    let report = Probe::new();
    Process::<(), Bincode>::spawn(report, doomed_parent);
    let (sup, child): (u64, u64) = report.receive(SETTLE)?;
    dead("supervisor of a crashed parent", sup)?;
    dead("child of a crashed parent's supervisor", child)
}

/// Starts a tree, reports its pids, then crashes.
fn doomed_parent(report: Probe, _: Mailbox<()>) {
    let sup = SupervisorRef::start_link(
        "s18",
        SupervisorSpec::new(Strategy::OneForOne).child(spec("s18.a")),
    )
    .expect("tree starts");
    let child = ChildRef::<Cmd>::lookup("s18.a").expect("child registered");
    report.send((sup.pid(), child.pid()));
    panic!("the parent of s18 crashes on purpose");
}

/// Messages of the [`asker`] child.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum AskMsg {
    Note(String),
}

/// Calls itself with `supervisors::call` and checks, from inside a
/// supervised process, that the answer is taken past a queued message, that
/// a call nobody answers times out, and that an answer sent after the wait
/// ended is dropped by the inbox (never decoded as one of its messages)
/// while the messages around it arrive in order.
fn asker(report: Probe, inbox: Inbox<AskMsg>) {
    let me = inbox.this();
    let outcome = (|| {
        me.send(AskMsg::Note("queued first".into()));
        let got = call::<u64>(|reply| reply.send(&7), SETTLE);
        check(got == Some(7), || format!("answer: got {got:?}"))?;
        let mut pending = None;
        let got = call::<u64>(|reply| pending = Some(reply), Duration::from_millis(20));
        check(got.is_none(), || {
            format!("nothing was answered, got {got:?}")
        })?;
        if let Some(late) = pending {
            late.send(&8);
        }
        me.send(AskMsg::Note("after the late answer".into()));
        for expected in [
            AskMsg::Note("queued first".into()),
            AskMsg::Note("after the late answer".into()),
        ] {
            match inbox.receive_timeout(SETTLE) {
                Some(Incoming::Message(m)) if m == expected => {}
                other => return Err(format!("inbox: expected {expected:?}, got {other:?}")),
            }
        }
        match inbox.receive_timeout(Duration::from_millis(50)) {
            None => Ok(()),
            other => Err(format!("inbox: expected nothing more, got {other:?}")),
        }
    })();
    report.send(outcome);
    while inbox.receive() != Incoming::Shutdown {}
}

fn tagged_answers() -> Result<(), String> {
    let report = Probe::new();
    let sup = start(
        "s_tag",
        SupervisorSpec::new(Strategy::OneForOne)
            .child(ChildSpec::new("asker", asker, report).restart(Restart::Temporary)),
    )?;
    report.receive::<Result<(), String>>(SETTLE)??;
    sup.shutdown().map_err(err)
}

// ---------------------------------------------------------------------------
// Restart backoff

fn crash_loop_backs_off() -> Result<(), String> {
    let starts = Probe::new();
    let sup = start(
        "s20",
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(1000)
            .period(Duration::from_secs(10))
            .backoff(Backoff::new(
                Duration::from_millis(100),
                Duration::from_millis(400),
            ))
            .child(ChildSpec::new("s20.loop", crash_loop, starts)),
    )?;
    let mut at = Vec::new();
    for _ in 0..6 {
        starts.receive::<()>(SETTLE)?;
        at.push(Instant::now());
        // The supervisor answers calls while a child waits out its backoff.
        sup.which_children().map_err(err)?;
    }
    let gaps: Vec<u128> = at.windows(2).map(|w| (w[1] - w[0]).as_millis()).collect();
    let want = [100, 200, 400, 400, 400];
    for (gap, want) in gaps.iter().zip(want) {
        check(*gap >= want * 9 / 10 && *gap < want + 600, || {
            format!("gaps between restarts {gaps:?} ms, expected about {want:?}")
        })?;
    }
    // Without backoff the same loop would restart thousands of times in
    // these 1.5 s; with it, a handful.
    let restarts = sup.restarts().map_err(err)?;
    check(restarts <= 7, || format!("{restarts} restarts"))?;
    sup.shutdown().map_err(err)
}

fn stable_child_restarts_at_once() -> Result<(), String> {
    let sup = start(
        "s21",
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(10)
            .period(Duration::from_secs(10))
            .backoff(Backoff::new(
                Duration::from_millis(500),
                Duration::from_millis(300),
            ))
            .child(spec("s21.a")),
    )?;
    let a = child("s21.a")?;
    sleep(Duration::from_millis(700));
    let crashed = Instant::now();
    a.send(Cmd::Crash);
    restarted("s21.a", a)?;
    let took = crashed.elapsed();
    check(took < Duration::from_millis(400), || {
        format!("a child that ran 700 ms was restarted after {took:?}, not at once")
    })?;
    sup.shutdown().map_err(err)
}
