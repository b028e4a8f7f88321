//! The word filter of the `moderation` module: blocked words in chat
//! messages. Pure: `lib.rs` hands a message's JSON payload in and gets a
//! decision back.
//!
//! Matching is on whole words, case-insensitive (Unicode lowercase), inside
//! every string value of the payload, nested objects and arrays included
//! (object keys are not text a user reads, and are left alone). A word is a
//! maximal run of letters, digits, `_` and combining marks, so `badword`
//! matches in `"BadWord!"` but not in `"badwords"` or `"xbadword"`.

use std::collections::HashSet;

use serde_json::Value;

/// The reason a rejected message is refused with.
pub const REJECT_REASON: &str = "moderated: contains a blocked word";

/// What the module does with a message that contains a blocked word
/// (setting `action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Replace each character of every blocked word with `*`.
    Mask,
    /// Refuse the message with [`REJECT_REASON`].
    Reject,
}

impl Action {
    /// `mask` or `reject`.
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "mask" => Some(Action::Mask),
            "reject" => Some(Action::Reject),
            _ => None,
        }
    }
}

/// The outcome of checking one payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// No blocked word: deliver the payload as it is.
    Clean,
    /// Action `mask`: the payload with every blocked word masked.
    Masked(Value),
    /// Action `reject`: refuse the message with [`REJECT_REASON`].
    Rejected,
}

/// A configured word filter.
#[derive(Debug, Clone)]
pub struct Moderation {
    /// Lowercased blocked words.
    words: HashSet<String>,
    action: Action,
}

/// Whether `c` belongs to a word: letters, digits, `_`, and the combining
/// marks that decorate a letter in decomposed text (`e` + U+0301).
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric()
        || c == '_'
        || matches!(c,
            '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE20}'..='\u{FE2F}')
}

/// Whether `text` is one word as the filter sees words (what an entry of
/// the `words` setting must be to ever match).
pub fn is_word(text: &str) -> bool {
    !text.is_empty() && text.chars().all(is_word_char)
}

impl Moderation {
    /// A filter for `words` (matched case-insensitively; empty entries are
    /// ignored) applying `action`.
    pub fn new<S: AsRef<str>>(words: &[S], action: Action) -> Moderation {
        Moderation {
            words: words
                .iter()
                .map(|w| w.as_ref().trim().to_lowercase())
                .filter(|w| !w.is_empty())
                .collect(),
            action,
        }
    }

    /// Checks every string value in `payload`.
    pub fn check(&self, payload: &Value) -> Decision {
        match self.action {
            Action::Reject if self.contains(payload) => Decision::Rejected,
            Action::Reject => Decision::Clean,
            Action::Mask => self.mask(payload).map_or(Decision::Clean, Decision::Masked),
        }
    }

    /// Byte ranges of the blocked words in `text`.
    fn blocked_spans(&self, text: &str) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        if self.words.is_empty() {
            return spans;
        }
        let mut start = None;
        for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
            match (start, is_word_char(c) && i < text.len()) {
                (None, true) => start = Some(i),
                (Some(s), false) => {
                    if self.words.contains(&text[s..i].to_lowercase()) {
                        spans.push((s, i));
                    }
                    start = None;
                }
                _ => {}
            }
        }
        spans
    }

    fn contains(&self, value: &Value) -> bool {
        match value {
            Value::String(s) => !self.blocked_spans(s).is_empty(),
            Value::Array(items) => items.iter().any(|v| self.contains(v)),
            Value::Object(map) => map.values().any(|v| self.contains(v)),
            _ => false,
        }
    }

    /// `value` with its blocked words masked, or `None` when it has none.
    fn mask(&self, value: &Value) -> Option<Value> {
        match value {
            Value::String(s) => {
                let spans = self.blocked_spans(s);
                if spans.is_empty() {
                    return None;
                }
                let mut out = String::with_capacity(s.len());
                let mut at = 0;
                for (start, end) in spans {
                    out.push_str(&s[at..start]);
                    out.extend(std::iter::repeat_n('*', s[start..end].chars().count()));
                    at = end;
                }
                out.push_str(&s[at..]);
                Some(Value::String(out))
            }
            Value::Array(items) => {
                let masked: Vec<Option<Value>> = items.iter().map(|v| self.mask(v)).collect();
                masked.iter().any(Option::is_some).then(|| {
                    Value::Array(
                        masked
                            .into_iter()
                            .zip(items)
                            .map(|(m, v)| m.unwrap_or_else(|| v.clone()))
                            .collect(),
                    )
                })
            }
            Value::Object(map) => {
                let masked: Vec<Option<Value>> = map.values().map(|v| self.mask(v)).collect();
                masked.iter().any(Option::is_some).then(|| {
                    Value::Object(
                        masked
                            .into_iter()
                            .zip(map)
                            .map(|(m, (k, v))| (k.clone(), m.unwrap_or_else(|| v.clone())))
                            .collect(),
                    )
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn masking(words: &[&str]) -> Moderation {
        Moderation::new(words, Action::Mask)
    }

    #[test]
    fn actions_parse() {
        assert_eq!(Action::parse("mask"), Some(Action::Mask));
        assert_eq!(Action::parse("reject"), Some(Action::Reject));
        assert_eq!(Action::parse("Mask"), None);
        assert_eq!(Action::parse(""), None);
    }

    #[test]
    fn masks_whole_words_case_insensitively() {
        let m = masking(&["badword"]);
        assert_eq!(
            m.check(&json!({"text": "what a BadWord! badword, BADWORD."})),
            Decision::Masked(json!({"text": "what a *******! *******, *******."}))
        );
    }

    #[test]
    fn respects_word_boundaries() {
        let m = masking(&["bad"]);
        for text in ["badly", "xbad", "bad_", "_bad", "bad1", "abadb", "bádly"] {
            assert_eq!(m.check(&json!({ "text": text })), Decision::Clean, "{text}");
        }
        for (text, masked) in [
            ("bad", "***"),
            ("bad-ish", "***-ish"),
            ("(bad)", "(***)"),
            ("so bad.", "so ***."),
            ("bad bad", "*** ***"),
            ("bad\nbad", "***\n***"),
            ("🔥bad🔥", "🔥***🔥"),
        ] {
            assert_eq!(
                m.check(&json!({ "text": text })),
                Decision::Masked(json!({ "text": masked })),
                "{text}"
            );
        }
    }

    #[test]
    fn unicode_words_and_case() {
        let m = masking(&["Ärger", "плохо", "日本"]);
        assert_eq!(
            m.check(&json!({"text": "kein ÄRGER, ärger; ПЛОХО! 日本"})),
            Decision::Masked(json!({"text": "kein *****, *****; *****! **"}))
        );
        // Inside a longer word of the same script it is not a whole word.
        assert_eq!(
            m.check(&json!({"text": "Ärgernis плохой"})),
            Decision::Clean
        );
        // A combining accent belongs to its word: "cafe" is not "café".
        let m = masking(&["cafe"]);
        assert_eq!(m.check(&json!({"text": "cafe\u{301}"})), Decision::Clean);
        assert_eq!(
            m.check(&json!({"text": "CAFE au lait"})),
            Decision::Masked(json!({"text": "**** au lait"}))
        );
    }

    #[test]
    fn walks_nested_objects_and_arrays_but_not_keys() {
        let m = masking(&["badword"]);
        let payload = json!({
            "badword": 1,
            "user": {"name": "eve", "bio": ["fine", "a badword here", 3, null, true]},
            "text": "clean",
            "n": 7
        });
        assert_eq!(
            m.check(&payload),
            Decision::Masked(json!({
                "badword": 1,
                "user": {"name": "eve", "bio": ["fine", "a ******* here", 3, null, true]},
                "text": "clean",
                "n": 7
            }))
        );
        assert_eq!(
            m.check(&json!(["x", ["y", {"z": "BadWord"}]])),
            Decision::Masked(json!(["x", ["y", {"z": "*******"}]]))
        );
        assert_eq!(
            m.check(&json!("badword")),
            Decision::Masked(json!("*******"))
        );
    }

    #[test]
    fn no_match_is_unchanged() {
        let m = masking(&["badword"]);
        for payload in [
            json!({"text": "hello there"}),
            json!({}),
            json!([]),
            json!(null),
            json!(42),
            json!({"badword": "keys are not checked"}),
        ] {
            assert_eq!(m.check(&payload), Decision::Clean, "{payload}");
        }
        // No words configured: everything is clean.
        assert_eq!(
            masking(&[]).check(&json!({"text": "badword"})),
            Decision::Clean
        );
        assert_eq!(
            masking(&["", "  "]).check(&json!({"text": "a  b"})),
            Decision::Clean
        );
    }

    #[test]
    fn reject_refuses_any_match_anywhere() {
        let m = Moderation::new(&["badword"], Action::Reject);
        assert_eq!(
            m.check(&json!({"a": [{"b": "x BADWORD y"}]})),
            Decision::Rejected
        );
        assert_eq!(m.check(&json!({"a": "badwords"})), Decision::Clean);
        assert!(REJECT_REASON.starts_with("moderated: "));
    }

    #[test]
    fn configured_words_are_trimmed_and_case_folded() {
        let m = masking(&["  BadWord "]);
        assert_eq!(
            m.check(&json!({"text": "badword"})),
            Decision::Masked(json!({"text": "*******"}))
        );
    }

    #[test]
    fn what_counts_as_a_word() {
        assert!(is_word("badword"));
        assert!(is_word("Ärger_2"));
        assert!(is_word("cafe\u{301}"));
        assert!(!is_word(""));
        assert!(!is_word("bad word"));
        assert!(!is_word("f*ck"));
    }
}
