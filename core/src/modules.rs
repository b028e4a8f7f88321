//! Process modules (`src/modules/`): the verdict a module gives on a chat
//! message, and how a channel combines the answers of the enabled modules,
//! asked one after the other in `modules.enabled` order. Pure: the channel
//! does the asking and the waiting, this decides what the answers mean.

use serde_json::Value;

/// A module's answer about one chat message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Let the message through as the module saw it.
    Deliver,
    /// Go on with this payload instead (later modules see it).
    Replace(Value),
    /// Refuse the message: the publisher gets this reason, nobody else sees
    /// or stores anything.
    Reject(String),
}

/// How asking one module went.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// It answered in time.
    Verdict(Verdict),
    /// It did not answer within `modules.timeout_ms`, or was not running
    /// (crashed and not yet restarted).
    Unavailable,
}

/// What happens to the message once every module has been asked.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Deliver the original payload.
    Unchanged,
    /// Deliver (and store) this payload instead.
    Replaced(Value),
    /// Refuse it with this reason.
    Rejected(String),
}

/// The screening of one message, fed one module answer at a time.
#[derive(Debug, Clone)]
pub struct Screening {
    payload: Value,
    replaced: bool,
    fail_open: bool,
    rejected: Option<String>,
    verdicts: u64,
    timeouts: u64,
}

/// The end of a screening: the outcome plus what to count in
/// `chorus_module_verdicts_total` and `chorus_module_timeouts_total`.
#[derive(Debug, Clone, PartialEq)]
pub struct Screened {
    pub outcome: Outcome,
    /// Replace and Reject verdicts given.
    pub verdicts: u64,
    /// Modules that did not answer in time.
    pub timeouts: u64,
}

/// The reason a message is refused with when module `name` does not answer
/// and `modules.fail_open` is false.
pub fn unavailable_reason(name: &str) -> String {
    format!("module {name} unavailable")
}

impl Screening {
    /// Starts screening `payload`; `fail_open` is `modules.fail_open`.
    pub fn new(payload: Value, fail_open: bool) -> Screening {
        Screening {
            payload,
            replaced: false,
            fail_open,
            rejected: None,
            verdicts: 0,
            timeouts: 0,
        }
    }

    /// The payload the next module is asked about.
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// Whether the message is already refused (ask no further module).
    pub fn is_rejected(&self) -> bool {
        self.rejected.is_some()
    }

    /// Takes the answer of module `name`.
    pub fn take(&mut self, name: &str, answer: Answer) {
        if self.is_rejected() {
            return;
        }
        match answer {
            Answer::Verdict(Verdict::Deliver) => {}
            Answer::Verdict(Verdict::Replace(payload)) => {
                self.verdicts += 1;
                self.payload = payload;
                self.replaced = true;
            }
            Answer::Verdict(Verdict::Reject(reason)) => {
                self.verdicts += 1;
                self.rejected = Some(reason);
            }
            Answer::Unavailable => {
                self.timeouts += 1;
                if !self.fail_open {
                    self.rejected = Some(unavailable_reason(name));
                }
            }
        }
    }

    /// The result once every module was asked (or one rejected).
    pub fn finish(self) -> Screened {
        let outcome = match (self.rejected, self.replaced) {
            (Some(reason), _) => Outcome::Rejected(reason),
            (None, true) => Outcome::Replaced(self.payload),
            (None, false) => Outcome::Unchanged,
        };
        Screened {
            outcome,
            verdicts: self.verdicts,
            timeouts: self.timeouts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(fail_open: bool, answers: Vec<(&str, Answer)>) -> Screened {
        let mut s = Screening::new(json!({"text": "hi"}), fail_open);
        for (name, answer) in answers {
            if s.is_rejected() {
                break;
            }
            s.take(name, answer);
        }
        s.finish()
    }

    #[test]
    fn no_modules_or_all_deliver_is_unchanged() {
        let s = run(true, vec![]);
        assert_eq!(s.outcome, Outcome::Unchanged);
        let s = run(
            false,
            vec![
                ("a", Answer::Verdict(Verdict::Deliver)),
                ("b", Answer::Verdict(Verdict::Deliver)),
            ],
        );
        assert_eq!(
            s,
            Screened {
                outcome: Outcome::Unchanged,
                verdicts: 0,
                timeouts: 0
            }
        );
    }

    #[test]
    fn replacements_chain_and_the_next_module_sees_them() {
        let mut s = Screening::new(json!({"text": "a"}), true);
        s.take(
            "one",
            Answer::Verdict(Verdict::Replace(json!({"text": "b"}))),
        );
        assert_eq!(s.payload(), &json!({"text": "b"}));
        s.take("two", Answer::Verdict(Verdict::Deliver));
        s.take(
            "three",
            Answer::Verdict(Verdict::Replace(json!({"text": "c"}))),
        );
        let done = s.finish();
        assert_eq!(done.outcome, Outcome::Replaced(json!({"text": "c"})));
        assert_eq!(done.verdicts, 2);
    }

    #[test]
    fn a_reject_wins_and_stops_the_chain() {
        let mut s = Screening::new(json!({}), true);
        s.take("a", Answer::Verdict(Verdict::Replace(json!({"x": 1}))));
        s.take(
            "b",
            Answer::Verdict(Verdict::Reject("moderated: no".into())),
        );
        assert!(s.is_rejected());
        // Later answers change nothing.
        s.take("c", Answer::Verdict(Verdict::Replace(json!({"x": 2}))));
        s.take("d", Answer::Unavailable);
        let done = s.finish();
        assert_eq!(done.outcome, Outcome::Rejected("moderated: no".into()));
        assert_eq!((done.verdicts, done.timeouts), (2, 0));
    }

    #[test]
    fn unavailable_fails_open_or_closed() {
        let open = run(true, vec![("mod", Answer::Unavailable)]);
        assert_eq!(open.outcome, Outcome::Unchanged);
        assert_eq!((open.verdicts, open.timeouts), (0, 1));

        let closed = run(
            false,
            vec![
                ("moderation", Answer::Unavailable),
                ("never", Answer::Verdict(Verdict::Deliver)),
            ],
        );
        assert_eq!(
            closed.outcome,
            Outcome::Rejected("module moderation unavailable".into())
        );
        assert_eq!((closed.verdicts, closed.timeouts), (0, 1));

        // Failing open keeps earlier replacements.
        let kept = run(
            true,
            vec![
                ("a", Answer::Verdict(Verdict::Replace(json!({"m": 1})))),
                ("b", Answer::Unavailable),
            ],
        );
        assert_eq!(kept.outcome, Outcome::Replaced(json!({"m": 1})));
        assert_eq!((kept.verdicts, kept.timeouts), (1, 1));
    }
}
