//! The `moderation` module: blocked words in chat messages are masked with
//! `*` or the message is refused (`modules.moderation_words`,
//! `modules.moderation_action`). The matching is
//! `chorus_core::moderation`; this is the shell around it.

use chorus_core::config::Config;
use chorus_core::moderation::{self, Action, Decision};
use chorus_core::modules::Verdict;

use super::{ChatMessage, Module};
use crate::host;

/// The module's state: the word filter built from the config.
struct Moderation(moderation::Moderation);

/// Builds the module (registered as `moderation` in `super::REGISTRY`).
pub fn new(config: &Config) -> Box<dyn Module> {
    // The config check allows only `mask` and `reject`.
    let action = Action::parse(&config.modules.moderation_action).unwrap_or(Action::Mask);
    Box::new(Moderation(moderation::Moderation::new(
        &config.modules.moderation_words,
        action,
    )))
}

impl Module for Moderation {
    fn on_chat(&mut self, message: &ChatMessage<'_>) -> Verdict {
        let verdict = match self.0.check(message.payload) {
            Decision::Clean => return Verdict::Deliver,
            Decision::Masked(payload) => Verdict::Replace(payload),
            Decision::Rejected => Verdict::Reject(moderation::REJECT_REASON.to_string()),
        };
        let what = match verdict {
            Verdict::Reject(_) => "rejected",
            _ => "masked",
        };
        host::log(
            host::Level::Debug,
            &format!(
                "moderation: {what} a {:?} message in room {}",
                message.event, message.room
            ),
        );
        verdict
    }
}
