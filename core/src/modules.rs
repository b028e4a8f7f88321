//! Process modules (`src/modules/`, loaded at run time by
//! `host-bridge/src/modules.rs`): the messages of the module ABI, the verdict
//! a module gives on a chat message, and how a channel combines the answers
//! of the modules it asks, one after the other in pipeline order. Pure: the
//! host runs the module, the channel does the asking and the waiting, this
//! decides what the bytes and the answers mean.

use serde_json::{json, Value};

/// The module ABI version this node speaks (`chorus_abi_version` of a
/// module; the `chorus-module` crate's `ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;

/// Whether `name` (a module file's stem) is a usable module name: 1 to 64
/// of `a-z`, `0-9`, `_`, `-`. It names the module's process, its settings
/// file and its metrics, and appears in every error about it.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The `init` message of module `name` with its `settings` (JSON).
pub fn init_request(name: &str, settings: &Value) -> Vec<u8> {
    json!({"type": "init", "name": name, "abi": ABI_VERSION, "settings": settings})
        .to_string()
        .into_bytes()
}

/// The answer to `init`: `Ok` or the module's own reason.
pub fn parse_init_answer(bytes: &[u8]) -> Result<(), String> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("answered init with something that is not JSON ({e})"))?;
    if value.get("ok") == Some(&Value::Bool(true)) {
        return Ok(());
    }
    match value.get("error").and_then(Value::as_str) {
        Some(reason) => Err(format!("refused its settings: {reason}")),
        None => Err(format!(
            "answered init with {}, not {{\"ok\": true}} or {{\"error\": …}}",
            excerpt(bytes)
        )),
    }
}

/// A chat message as the module ABI carries it. `payload` is JSON text
/// (checked by the caller: it is spliced in as it is).
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    pub room: &'a str,
    pub topic: &'a str,
    pub event: &'a str,
    pub user: Option<&'a str>,
    pub payload: &'a str,
    pub at_ms: u64,
}

impl ChatRequest<'_> {
    /// The `chat` message bytes.
    pub fn encode(&self) -> Vec<u8> {
        let text = |s: &str| Value::String(s.to_string()).to_string();
        let user = self.user.map_or_else(|| "null".to_string(), text);
        format!(
            r#"{{"type":"chat","room":{},"topic":{},"event":{},"user":{},"at_ms":{},"payload":{}}}"#,
            text(self.room),
            text(self.topic),
            text(self.event),
            user,
            self.at_ms,
            self.payload
        )
        .into_bytes()
    }
}

/// The first 80 characters of an answer, for error messages.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut cut: String = text.chars().take(80).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// A module's answer to a `chat` message. `max_payload` bounds a replacement
/// (`limits.max_payload_bytes`). An `{"error": …}` answer means the module
/// has no opinion (for instance a message type it does not know); every
/// other answer that is not a verdict is garbage, described in the error.
pub fn parse_chat_answer(bytes: &[u8], max_payload: usize) -> Result<Verdict, String> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("answered {} which is not JSON ({e})", excerpt(bytes)))?;
    match value.get("verdict").and_then(Value::as_str) {
        Some("deliver") => Ok(Verdict::Deliver),
        Some("replace") => match value.get("payload") {
            Some(payload) => {
                let len = payload.to_string().len();
                if len > max_payload {
                    return Err(format!(
                        "replaced the payload with {len} bytes, over limits.max_payload_bytes ({max_payload})"
                    ));
                }
                Ok(Verdict::Replace(payload.clone()))
            }
            None => Err("answered verdict \"replace\" without a payload".into()),
        },
        Some("reject") => match value.get("reason").and_then(Value::as_str) {
            Some(reason) if !reason.is_empty() && reason.len() <= 1024 => {
                Ok(Verdict::Reject(reason.to_string()))
            }
            _ => Err(
                "answered verdict \"reject\" without a reason (a string of 1 to 1024 bytes)".into(),
            ),
        },
        Some(other) => Err(format!("answered an unknown verdict {other:?}")),
        None => match value.get("error").and_then(Value::as_str) {
            Some(reason) => Err(format!("answered with an error: {reason}")),
            None => Err(format!(
                "answered {} which is not a verdict",
                excerpt(bytes)
            )),
        },
    }
}

/// What comes of one message to a module's instance (the host's side of a
/// call, crossing to the guest as a status byte plus text).
#[derive(Debug, Clone, PartialEq)]
pub enum CallResult {
    /// The module's answer bytes.
    Answer(Vec<u8>),
    /// The module answered something unusable (out of its memory, too big).
    Garbage(String),
    /// The module trapped, ran out of fuel or exited: its instance is gone.
    Crashed(String),
    /// The module cannot be run now (failed to load, disabled, removed).
    Unavailable(String),
}

impl CallResult {
    /// Status byte + bytes, as the host parks them for the guest.
    pub fn encode(&self) -> Vec<u8> {
        let (status, body): (u8, &[u8]) = match self {
            CallResult::Answer(b) => (0, b),
            CallResult::Garbage(t) => (1, t.as_bytes()),
            CallResult::Crashed(t) => (2, t.as_bytes()),
            CallResult::Unavailable(t) => (3, t.as_bytes()),
        };
        let mut out = Vec::with_capacity(body.len() + 1);
        out.push(status);
        out.extend_from_slice(body);
        out
    }

    /// The inverse of [`CallResult::encode`]; bytes the host never writes
    /// decode as `Unavailable`.
    pub fn decode(bytes: &[u8]) -> CallResult {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match bytes.split_first() {
            Some((0, rest)) => CallResult::Answer(rest.to_vec()),
            Some((1, rest)) => CallResult::Garbage(text(rest)),
            Some((2, rest)) => CallResult::Crashed(text(rest)),
            Some((3, rest)) => CallResult::Unavailable(text(rest)),
            _ => CallResult::Unavailable("no answer from the host".into()),
        }
    }
}

/// The order in which a chat lane asks modules: the names in
/// `modules.enabled` first (listed, so asked even when not loaded: then
/// `modules.fail_open` decides), then every other ready module by name.
pub fn pipeline(enabled: &[String], ready: &[String]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for name in enabled {
        if !order.contains(name) {
            order.push(name.clone());
        }
    }
    let mut rest: Vec<&String> = ready.iter().filter(|n| !order.contains(n)).collect();
    rest.sort();
    rest.dedup();
    order.extend(rest.into_iter().cloned());
    order
}

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

    #[test]
    fn module_names() {
        for ok in ["moderation", "slow_mode-2", "a"] {
            assert!(valid_name(ok), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in ["", "Moderation", "a.b", "a b", "../x", "é", long.as_str()] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn chat_requests_splice_the_payload_and_escape_the_rest() {
        let bytes = ChatRequest {
            room: "r\"1",
            topic: "realtime:room:r\"1:chat",
            event: "msg",
            user: Some("ana"),
            payload: r#"{"text":"hi"}"#,
            at_ms: 5,
        }
        .encode();
        let v: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(
            v,
            json!({"type": "chat", "room": "r\"1", "topic": "realtime:room:r\"1:chat",
                   "event": "msg", "user": "ana", "at_ms": 5, "payload": {"text": "hi"}})
        );
        let anonymous = ChatRequest {
            room: "r",
            topic: "t",
            event: "e",
            user: None,
            payload: "[]",
            at_ms: 0,
        };
        let v: Value = serde_json::from_slice(&anonymous.encode()).expect("valid JSON");
        assert_eq!(v["user"], Value::Null);
        let init: Value =
            serde_json::from_slice(&init_request("m", &json!({"k": 1}))).expect("JSON");
        assert_eq!(
            init,
            json!({"type": "init", "name": "m", "abi": 1, "settings": {"k": 1}})
        );
    }

    #[test]
    fn init_answers() {
        assert_eq!(parse_init_answer(br#"{"ok":true}"#), Ok(()));
        assert_eq!(
            parse_init_answer(br#"{"error":"words: bad"}"#),
            Err("refused its settings: words: bad".into())
        );
        assert!(parse_init_answer(b"\x00\x01").is_err_and(|e| e.contains("not JSON")));
        // The answer is quoted (Debug) in the error.
        assert!(parse_init_answer(br#"{"ok":1}"#).is_err_and(|e| e.contains(r#"{\"ok\":1}"#)));
    }

    #[test]
    fn chat_answers_and_garbage() {
        let parse = |s: &str| parse_chat_answer(s.as_bytes(), 32);
        assert_eq!(parse(r#"{"verdict":"deliver"}"#), Ok(Verdict::Deliver));
        assert_eq!(
            parse(r#"{"verdict":"replace","payload":{"t":"x"}}"#),
            Ok(Verdict::Replace(json!({"t": "x"})))
        );
        assert_eq!(
            parse(r#"{"verdict":"reject","reason":"no"}"#),
            Ok(Verdict::Reject("no".into()))
        );
        for (garbage, says) in [
            ("hello", "not JSON"),
            (r#"{"verdict":"maybe"}"#, "unknown verdict \"maybe\""),
            (r#"{"verdict":"replace"}"#, "without a payload"),
            (r#"{"verdict":"reject"}"#, "without a reason"),
            (r#"{"verdict":"reject","reason":""}"#, "without a reason"),
            (
                r#"{"verdict":"replace","payload":"0123456789012345678901234567890123"}"#,
                "limits.max_payload_bytes",
            ),
            (r#"[1,2]"#, "not a verdict"),
            (
                r#"{"error":"unsupported"}"#,
                "answered with an error: unsupported",
            ),
        ] {
            let err = parse(garbage).expect_err(garbage);
            assert!(err.contains(says), "{garbage}: {err}");
        }
        let long = format!("\"{}\"", "y".repeat(200));
        let err = parse(&format!("{long} trailing")).expect_err("not JSON");
        assert!(err.contains('…') && err.len() < 300, "{err}");
    }

    #[test]
    fn call_results_cross_as_a_status_byte() {
        for r in [
            CallResult::Answer(b"{}".to_vec()),
            CallResult::Garbage("g".into()),
            CallResult::Crashed("c".into()),
            CallResult::Unavailable("u".into()),
        ] {
            assert_eq!(CallResult::decode(&r.encode()), r);
        }
        assert!(matches!(
            CallResult::decode(&[]),
            CallResult::Unavailable(_)
        ));
        assert!(matches!(
            CallResult::decode(&[9, 1]),
            CallResult::Unavailable(_)
        ));
    }

    #[test]
    fn pipeline_order_is_enabled_first_then_by_name() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            pipeline(
                &s(&["slowmode", "gone"]),
                &s(&["zeta", "moderation", "slowmode"])
            ),
            s(&["slowmode", "gone", "moderation", "zeta"])
        );
        assert_eq!(pipeline(&[], &s(&["b", "a", "b"])), s(&["a", "b"]));
        assert_eq!(pipeline(&s(&["a", "a"]), &[]), s(&["a"]));
    }

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
