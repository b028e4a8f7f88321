//! Process modules: room behaviours loaded at run time from `modules.dir`
//! (docs/MODULES.md), each run by a supervised process of its own.
//!
//! The host (`host-bridge/src/modules.rs`) compiles every `<name>.wasm`,
//! checks it, and keeps one instance of the module per module process. Here
//! live the processes around it:
//!
//! * under the `modules` supervisor (one_for_one), one permanent process per
//!   ready module, registered as [`process_name`]: the shell [`run`], which
//!   answers the channels' questions one at a time by handing each to the
//!   module's instance ([`host::module_call`]). A module that traps crashes
//!   its process; the supervisor restarts it with a fresh instance.
//! * the [`manager`] (first child of `modules`), which starts and stops those
//!   processes when the host's module generation changes (a reload through
//!   the admin API or `SIGHUP`, a module disabled after too many crashes).
//!
//! A room's chat-lane channel asks the modules of the host's pipeline
//! (`modules.enabled` first, then the others by name), in order, about each
//! message before storing and delivering it ([`Screen::screen`]), and waits
//! at most `modules.timeout_ms` for each answer. What the answers mean
//! (replace, reject, fail open or closed) is `chorus_core::modules`.

use std::collections::BTreeSet;
use std::time::Duration;

use chorus_core::config::Config;
use chorus_core::metrics::Metric;
use chorus_core::modules::{Answer, CallResult, ChatRequest, Outcome, Screening, Verdict};
use chorus_core::room::{self, Lane};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use supervisors::{
    ChildRef, ChildSpec, Incoming, Restart, Strategy, SupervisorRef, SupervisorSpec,
};

use crate::host;
use crate::msg::{Body, ModuleMsg, ModuleReply};

/// Registered name of the `modules` supervisor.
pub const SUPERVISOR: &str = "chorus-modules";

/// Registered name of the process of module `name`.
pub fn process_name(name: &str) -> String {
    format!("chorus-module-{name}")
}

/// The supervisor's child id of module `name`'s process.
fn child_id(name: &str) -> String {
    format!("module-{name}")
}

fn module_spec(name: &str, config: &Config) -> ChildSpec {
    ChildSpec::new(child_id(name), run, (name.to_string(), config.clone()))
        .restart(Restart::Permanent)
        .register(&process_name(name))
}

/// The `modules` supervisor: the manager, then one permanent process per
/// module ready at start (so chat lanes find them as soon as the tree is up).
pub fn supervisor(config: &Config) -> SupervisorSpec {
    let ready = host::modules_report().ready;
    ready.iter().fold(
        SupervisorSpec::new(Strategy::OneForOne)
            // A module that keeps crashing is disabled by the host after
            // `modules.crash_limit` crashes, long before this intensity.
            .intensity(1000)
            .period(Duration::from_secs(10))
            .child(ChildSpec::new("module-manager", manager, config.clone())),
        |sup, name| sup.child(module_spec(name, config)),
    )
}

/// Starts the processes of ready modules that have none and stops those of
/// modules that are no longer ready. Called by the [`manager`] and by the
/// admin API's reload, so the reload answers once the processes run.
pub fn reconcile(config: &Config) -> Result<(), String> {
    let report = host::modules_report();
    let sup = SupervisorRef::lookup(SUPERVISOR).ok_or("the modules supervisor is not running")?;
    let children = sup.which_children().map_err(|e| e.to_string())?;
    let running: BTreeSet<String> = children
        .iter()
        .filter_map(|c| c.id.strip_prefix("module-").map(str::to_string))
        .filter(|name| name != "manager")
        .collect();
    let wanted: BTreeSet<String> = report.ready.into_iter().collect();
    for name in running.difference(&wanted) {
        // Gone from the directory, failed to reload or disabled.
        let _ = sup.terminate_child(&child_id(name));
        host::log(
            host::Level::Info,
            &format!("module {name}: process stopped"),
        );
    }
    for name in wanted.difference(&running) {
        match sup.start_child(module_spec(name, config)) {
            Ok(_) => host::log(
                host::Level::Info,
                &format!("module {name}: process started"),
            ),
            // Started meanwhile by the other caller of `reconcile`.
            Err(supervisors::Error::DuplicateChild(_)) => {}
            Err(e) => {
                host::log(
                    host::Level::Error,
                    &format!("module {name}: cannot start its process: {e}"),
                );
            }
        }
    }
    Ok(())
}

/// The process that keeps module processes in line with the host's modules
/// (checks the generation once a second: a scalar host call).
pub fn manager(config: Config, inbox: supervisors::Inbox<()>) {
    let mut seen = 0;
    loop {
        let generation = host::modules_generation();
        if generation != seen {
            match reconcile(&config) {
                Ok(()) => seen = generation,
                Err(e) => host::log(host::Level::Warn, &format!("modules: {e}")),
            }
        }
        if let Some(Incoming::Shutdown) = inbox.receive_timeout(Duration::from_secs(1)) {
            return;
        }
    }
}

impl ModuleReply {
    fn from_verdict(verdict: Verdict) -> ModuleReply {
        match verdict {
            Verdict::Deliver => ModuleReply::Deliver,
            Verdict::Replace(v) => ModuleReply::Replace(v.to_string()),
            Verdict::Reject(reason) => ModuleReply::Reject(reason),
        }
    }

    fn into_answer(self) -> Answer {
        match self {
            ModuleReply::Deliver => Answer::Verdict(Verdict::Deliver),
            ModuleReply::Replace(text) => serde_json::from_str(&text)
                .map_or(Answer::Unavailable, |v| {
                    Answer::Verdict(Verdict::Replace(v))
                }),
            ModuleReply::Reject(reason) => Answer::Verdict(Verdict::Reject(reason)),
            ModuleReply::Unavailable => Answer::Unavailable,
        }
    }
}

/// The test-only event that crashes every module process asked about it
/// (with `node.fault_injection`), to see the supervisor restart it.
pub const CRASH_EVENT: &str = "chorus_crash_module";
/// The test-only event that makes every module process asked about it answer
/// 100 ms after `modules.timeout_ms` (with `node.fault_injection`), to see a
/// channel give up waiting and ignore the late answer.
pub const SLOW_EVENT: &str = "chorus_slow_module";

/// The process of module `name`: hands each question to the module's
/// instance in the host and sends the verdict back.
pub fn run(args: (String, Config), inbox: supervisors::Inbox<ModuleMsg>) {
    let (name, config) = args;
    let max_payload = config.limits.max_payload_bytes as usize;
    loop {
        let Incoming::Message(ModuleMsg::Chat {
            topic,
            event,
            user,
            payload,
            at_ms,
            deadline_ms,
            reply,
        }) = inbox.receive()
        else {
            return;
        };
        if now_ms() > deadline_ms {
            // The channel stopped waiting: its fail_open already applied.
            continue;
        }
        if config.node.fault_injection {
            match event.as_str() {
                CRASH_EVENT => panic!("fault injection: module {name} crash requested by a client"),
                SLOW_EVENT => lunatic::sleep(Duration::from_millis(
                    config.modules.timeout_ms.saturating_add(100),
                )),
                _ => {}
            }
        }
        let request = ChatRequest {
            room: room::parse_lane(&topic).map_or("", |(id, _)| id),
            topic: &topic,
            event: &event,
            user: user.as_deref(),
            payload: &payload,
            at_ms,
        };
        let answer = match host::module_call(&name, &request.encode()) {
            CallResult::Answer(bytes) => {
                match chorus_core::modules::parse_chat_answer(&bytes, max_payload) {
                    Ok(verdict) => ModuleReply::from_verdict(verdict),
                    Err(why) => garbage(&name, &why),
                }
            }
            CallResult::Garbage(why) => garbage(&name, &why),
            CallResult::Unavailable(why) => {
                host::log(host::Level::Debug, &why);
                ModuleReply::Unavailable
            }
            CallResult::Crashed(why) => {
                host::metric(Metric::ModuleCrashes, 1);
                reply.send(&ModuleReply::Unavailable);
                // A crash of the module is a crash of its process: the
                // supervisor restarts it, the host made a fresh instance.
                panic!("module {name} crashed: {why}");
            }
        };
        reply.send(&answer);
    }
}

/// The wall clock in Unix ms (module messages' `at_ms` and deadlines).
fn now_ms() -> u64 {
    crate::channel::now_ms()
}

fn garbage(name: &str, why: &str) -> ModuleReply {
    host::metric(Metric::ModuleErrors, 1);
    host::log(host::Level::Error, &format!("module {name} {why}"));
    ModuleReply::Unavailable
}

/// What a channel needs to ask modules: the part of `[modules]` it uses;
/// inactive on every topic that is not a room's chat lane.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hooks {
    active: bool,
    timeout_ms: u64,
    fail_open: bool,
}

impl Hooks {
    /// The hooks of the channel of `topic`.
    pub fn for_topic(config: &Config, topic: &str) -> Hooks {
        match room::parse_lane(topic) {
            Some((_, Lane::Chat)) => Hooks {
                active: true,
                timeout_ms: config.modules.timeout_ms,
                fail_open: config.modules.fail_open,
            },
            _ => Hooks::default(),
        }
    }

    /// A channel's side of these hooks.
    pub fn screen(self) -> Screen {
        Screen {
            hooks: self,
            generation: 0,
            pipeline: Vec::new(),
        }
    }
}

/// A channel's side of its modules.
#[derive(Debug)]
pub struct Screen {
    hooks: Hooks,
    /// The host's module generation `pipeline` was read at.
    generation: u64,
    pipeline: Vec<String>,
}

impl Screen {
    /// The modules to ask, re-read from the host when they changed.
    fn refresh(&mut self) {
        let generation = host::modules_generation();
        if generation != self.generation {
            self.pipeline = host::modules_report().pipeline;
            self.generation = generation;
        }
    }

    /// Asks every module of the pipeline about a message, in order, and
    /// applies the verdicts: `Ok` with `payload` possibly replaced, or
    /// `Err(reason)` when the message is refused. Binary payloads are not
    /// screened (a chat lane refuses them when storing).
    pub fn screen(
        &mut self,
        topic: &str,
        event: &str,
        user: Option<&str>,
        payload: &mut Body,
    ) -> Result<(), String> {
        if !self.hooks.active {
            return Ok(());
        }
        self.refresh();
        if self.pipeline.is_empty() {
            return Ok(());
        }
        let Body::Json(text) = payload else {
            return Ok(());
        };
        let Ok(value) = serde_json::from_slice::<Value>(text) else {
            return Ok(());
        };
        let mut screening = Screening::new(value, self.hooks.fail_open);
        let at_ms = now_ms();
        for name in &self.pipeline {
            if screening.is_rejected() {
                break;
            }
            let answer = self.ask(name, topic, event, user, screening.payload(), at_ms);
            screening.take(name, answer);
        }
        let screened = screening.finish();
        if screened.verdicts > 0 {
            host::metric(Metric::ModuleVerdicts, screened.verdicts as i64);
        }
        if screened.timeouts > 0 {
            host::metric(Metric::ModuleTimeouts, screened.timeouts as i64);
        }
        match screened.outcome {
            Outcome::Unchanged => Ok(()),
            Outcome::Replaced(v) => {
                *payload = Body::Json(v.to_string().into_bytes());
                Ok(())
            }
            Outcome::Rejected(reason) => Err(reason),
        }
    }

    /// One request/answer with module `name`. A module that is not running
    /// (not loaded, crashed and not yet restarted) is unavailable at once;
    /// one that does not answer in time is unavailable after `timeout_ms`,
    /// and its late answer is dropped by the channel's inbox.
    fn ask(
        &self,
        name: &str,
        topic: &str,
        event: &str,
        user: Option<&str>,
        payload: &Value,
        at_ms: u64,
    ) -> Answer {
        let module = match ChildRef::<ModuleMsg>::lookup(&process_name(name)) {
            Some(m) if m.is_alive() => m,
            _ => return Answer::Unavailable,
        };
        let answer = module.call(
            |reply| ModuleMsg::Chat {
                topic: topic.to_string(),
                event: event.to_string(),
                user: user.map(str::to_string),
                payload: payload.to_string(),
                at_ms,
                deadline_ms: at_ms.saturating_add(self.hooks.timeout_ms),
                reply,
            },
            Duration::from_millis(self.hooks.timeout_ms),
        );
        answer.map_or(Answer::Unavailable, ModuleReply::into_answer)
    }
}
