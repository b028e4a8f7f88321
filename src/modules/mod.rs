//! Process modules: room behaviours added as supervised processes.
//!
//! A module is a type implementing [`Module`], registered by name in
//! [`REGISTRY`] (and in `chorus_core::config::KNOWN_MODULES`, which the
//! config check uses). Each name in `modules.enabled` runs as one process
//! under the `modules` supervisor (one_for_one, permanent: a crashed module
//! is restarted), registered as [`process_name`]. The process is the generic
//! shell [`run`]: it builds the module from the node config and answers the
//! channels' questions one at a time.
//!
//! A room's chat-lane channel asks every enabled module, in
//! `modules.enabled` order, about each message before storing and
//! delivering it ([`Screen::screen`]), and waits at most
//! `modules.timeout_ms` for each answer. What the answers mean (replace,
//! reject, fail open or closed) is `chorus_core::modules`.
//!
//! The shipped module is [`moderation`].

use std::time::Duration;

use chorus_core::config::Config;
use chorus_core::metrics::Metric;
use chorus_core::modules::{Answer, Outcome, Screening, Verdict};
use chorus_core::room::{self, Lane};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use supervisors::{ChildRef, ChildSpec, Incoming, Restart, Strategy, SupervisorSpec};

use crate::host;
use crate::msg::{Body, ModuleMsg, ModuleReply};

pub mod moderation;

/// A chat message as a module sees it.
#[derive(Debug)]
pub struct ChatMessage<'a> {
    /// The room's id (`<id>` of `room:<id>:chat`).
    pub room: &'a str,
    /// The broadcast event the client chose.
    pub event: &'a str,
    /// The JSON payload, as left by the modules before this one.
    pub payload: &'a Value,
}

/// A room behaviour. One value lives in its module process for as long as
/// the process runs (a restart builds a new one), so it may keep state.
pub trait Module {
    /// Called for every message published on a room's chat lane, before it
    /// is stored or delivered: `Deliver`, `Replace(payload)` or
    /// `Reject(reason)` (the publisher gets `{"reason": reason}`).
    fn on_chat(&mut self, message: &ChatMessage<'_>) -> Verdict;
}

/// Builds a module from the node config.
pub type Constructor = fn(&Config) -> Box<dyn Module>;

/// Every module this build ships, by the name `modules.enabled` uses.
pub const REGISTRY: &[(&str, Constructor)] = &[("moderation", moderation::new)];

/// Registered name of the process of module `name`.
pub fn process_name(name: &str) -> String {
    format!("chorus-module-{name}")
}

fn constructor(name: &str) -> Option<Constructor> {
    REGISTRY.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

/// Checks that every enabled module is built into this guest (the config
/// check only knows `KNOWN_MODULES`).
pub fn check(config: &Config) -> Result<(), String> {
    match config
        .modules
        .enabled
        .iter()
        .find(|name| constructor(name).is_none())
    {
        Some(name) => Err(format!(
            "modules.enabled: module {name:?} is not built into this guest"
        )),
        None => Ok(()),
    }
}

/// The `modules` supervisor: one permanent process per enabled module.
pub fn supervisor(config: &Config) -> SupervisorSpec {
    config.modules.enabled.iter().fold(
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(100)
            .period(Duration::from_secs(10)),
        |sup, name| {
            sup.child(
                ChildSpec::new(
                    format!("module-{name}"),
                    run,
                    (name.clone(), config.clone()),
                )
                .restart(Restart::Permanent)
                .register(&process_name(name)),
            )
        },
    )
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

/// The process shell of every module: builds module `name` and answers.
pub fn run(args: (String, Config), inbox: supervisors::Inbox<ModuleMsg>) {
    let (name, config) = args;
    let Some(new) = constructor(&name) else {
        // `check` refuses this before the tree starts.
        host::log(host::Level::Error, &format!("no module named {name:?}"));
        return;
    };
    let mut module = new(&config);
    host::log(host::Level::Info, &format!("module {name} started"));
    loop {
        match inbox.receive() {
            Incoming::Shutdown => return,
            Incoming::Message(ModuleMsg::Chat {
                topic,
                event,
                payload,
                reply,
            }) => {
                if config.node.fault_injection {
                    match event.as_str() {
                        CRASH_EVENT => {
                            panic!("fault injection: module {name} crash requested by a client")
                        }
                        SLOW_EVENT => lunatic::sleep(Duration::from_millis(
                            config.modules.timeout_ms.saturating_add(100),
                        )),
                        _ => {}
                    }
                }
                let verdict = match serde_json::from_str::<Value>(&payload) {
                    Ok(payload) => module.on_chat(&ChatMessage {
                        room: room::parse_lane(&topic).map_or("", |(id, _)| id),
                        event: &event,
                        payload: &payload,
                    }),
                    Err(_) => Verdict::Deliver,
                };
                reply.send(&ModuleReply::from_verdict(verdict));
            }
        }
    }
}

/// What a channel needs to ask modules: the part of `[modules]` it uses,
/// empty on every topic that is not a room's chat lane.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hooks {
    enabled: Vec<String>,
    timeout_ms: u64,
    fail_open: bool,
}

impl Hooks {
    /// The hooks of the channel of `topic`.
    pub fn for_topic(config: &Config, topic: &str) -> Hooks {
        match room::parse_lane(topic) {
            Some((_, Lane::Chat)) => Hooks {
                enabled: config.modules.enabled.clone(),
                timeout_ms: config.modules.timeout_ms,
                fail_open: config.modules.fail_open,
            },
            _ => Hooks::default(),
        }
    }

    /// A channel's side of these hooks.
    pub fn screen(self) -> Screen {
        Screen { hooks: self }
    }
}

/// A channel's side of its modules.
#[derive(Debug)]
pub struct Screen {
    hooks: Hooks,
}

impl Screen {
    /// Asks every enabled module about a message, in order, and applies the
    /// verdicts: `Ok` with `payload` possibly replaced, or `Err(reason)` when
    /// the message is refused. Binary payloads are not screened (a chat lane
    /// refuses them when storing).
    pub fn screen(&self, topic: &str, event: &str, payload: &mut Body) -> Result<(), String> {
        if self.hooks.enabled.is_empty() {
            return Ok(());
        }
        let Body::Json(text) = payload else {
            return Ok(());
        };
        let Ok(value) = serde_json::from_slice::<Value>(text) else {
            return Ok(());
        };
        let mut screening = Screening::new(value, self.hooks.fail_open);
        for name in &self.hooks.enabled {
            if screening.is_rejected() {
                break;
            }
            let answer = self.ask(name, topic, event, screening.payload());
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
    /// (crashed, not yet restarted) is unavailable at once; one that does
    /// not answer in time is unavailable after `timeout_ms`, and its late
    /// answer is dropped by the channel's inbox.
    fn ask(&self, name: &str, topic: &str, event: &str, payload: &Value) -> Answer {
        let module = match ChildRef::<ModuleMsg>::lookup(&process_name(name)) {
            Some(m) if m.is_alive() => m,
            _ => return Answer::Unavailable,
        };
        let answer = module.call(
            |reply| ModuleMsg::Chat {
                topic: topic.to_string(),
                event: event.to_string(),
                payload: payload.to_string(),
                reply,
            },
            Duration::from_millis(self.hooks.timeout_ms),
        );
        answer.map_or(Answer::Unavailable, ModuleReply::into_answer)
    }
}
