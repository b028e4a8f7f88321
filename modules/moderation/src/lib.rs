//! `moderation`: blocked words in chat messages are masked with `*`, or the
//! message is refused. A process module built separately from the node
//! (`moderation.wasm`), speaking the module ABI through `chorus-module`.
//!
//! Settings (`moderation.toml` beside `moderation.wasm` in `modules.dir`):
//!
//! | key | default | |
//! |---|---|---|
//! | `words` | `[]` | blocked words, each one word (letters, digits, `_`), matched whole and case-insensitively |
//! | `action` | `"mask"` | `mask`: each character of a blocked word becomes `*`; `reject`: the message is refused with `moderated: contains a blocked word` |

pub mod filter;

use chorus_module::{export_module, log, Chat, Level, Module, Verdict};
use serde_json::Value;

use filter::{Action, Decision};

/// The module: the word filter built from its settings.
pub struct Moderation(filter::Moderation);

/// Reads the settings; every mistake names the setting.
fn settings(settings: &Value) -> Result<(Vec<String>, Action), String> {
    let Some(map) = settings.as_object() else {
        return Err("settings must be a table".into());
    };
    if let Some(key) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "words" | "action"))
    {
        return Err(format!("unknown setting {key:?} (known: words, action)"));
    }
    let words: Vec<String> = match map.get("words") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|w| {
                w.as_str()
                    .map(str::to_string)
                    .ok_or("words: every entry must be a string")
            })
            .collect::<Result<_, _>>()?,
        // A comma-separated string, as an environment variable would give.
        Some(Value::String(list)) => list.split(',').map(str::to_string).collect(),
        Some(_) => return Err("words: expected a list of strings".into()),
    };
    if let Some(bad) = words.iter().find(|w| !filter::is_word(w.trim())) {
        return Err(format!(
            "words: {bad:?} is not one word (letters, digits, _), so it could never match"
        ));
    }
    let action = match map.get("action") {
        None => Action::Mask,
        Some(v) => v
            .as_str()
            .and_then(Action::parse)
            .ok_or_else(|| format!("action: expected \"mask\" or \"reject\", got {v}"))?,
    };
    Ok((words, action))
}

impl Module for Moderation {
    fn init(value: &Value) -> Result<Self, String> {
        let (words, action) = settings(value)?;
        Ok(Moderation(filter::Moderation::new(&words, action)))
    }

    fn on_chat(&mut self, chat: &Chat<'_>) -> Verdict {
        let verdict = match self.0.check(chat.payload) {
            Decision::Clean => return Verdict::Deliver,
            Decision::Masked(payload) => Verdict::Replace(payload),
            Decision::Rejected => Verdict::Reject(filter::REJECT_REASON.to_string()),
        };
        let what = if matches!(verdict, Verdict::Reject(_)) {
            "rejected"
        } else {
            "masked"
        };
        log(
            Level::Debug,
            &format!("{what} a {:?} message in room {}", chat.event, chat.room),
        );
        verdict
    }
}

export_module!(Moderation);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::cell::RefCell;

    fn run(settings: Value, payload: Value) -> Value {
        let state = RefCell::new(None);
        let init = json!({"type": "init", "name": "moderation", "abi": 1, "settings": settings});
        let ok: Value = serde_json::from_slice(&chorus_module::handle::<Moderation>(
            &state,
            init.to_string().as_bytes(),
        ))
        .expect("JSON");
        if ok != json!({"ok": true}) {
            return ok;
        }
        let chat = json!({"type": "chat", "room": "r", "topic": "realtime:room:r:chat",
                          "event": "msg", "user": "u", "payload": payload, "at_ms": 1});
        serde_json::from_slice(&chorus_module::handle::<Moderation>(
            &state,
            chat.to_string().as_bytes(),
        ))
        .expect("JSON")
    }

    #[test]
    fn masks_by_default_and_rejects_when_asked() {
        assert_eq!(
            run(json!({"words": ["BadWord"]}), json!({"text": "a badword!"})),
            json!({"verdict": "replace", "payload": {"text": "a *******!"}})
        );
        assert_eq!(
            run(
                json!({"words": "x, badword", "action": "reject"}),
                json!({"t": ["BADWORD"]})
            ),
            json!({"verdict": "reject", "reason": filter::REJECT_REASON})
        );
        assert_eq!(
            run(json!({}), json!({"text": "badword"})),
            json!({"verdict": "deliver"})
        );
    }

    #[test]
    fn bad_settings_are_refused_naming_the_setting() {
        let error = |settings: Value| {
            run(settings, json!({}))["error"]
                .as_str()
                .map(str::to_string)
        };
        assert!(error(json!({"words": ["two words"]})).is_some_and(|e| e.contains("\"two words\"")));
        assert!(error(json!({"action": "shout"})).is_some_and(|e| e.starts_with("action:")));
        assert!(error(json!({"word": []})).is_some_and(|e| e.contains("\"word\"")));
        assert!(error(json!({"words": [1]})).is_some_and(|e| e.starts_with("words:")));
        assert!(error(json!([])).is_some_and(|e| e.contains("table")));
    }
}
