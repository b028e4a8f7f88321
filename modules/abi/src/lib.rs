//! Write a Chorus process module in Rust.
//!
//! A process module is a WebAssembly file (`<name>.wasm`) dropped in the
//! node's `modules.dir`. The node loads it at start and on
//! `POST /realtime/v1/api/modules/reload` (or `SIGHUP`), runs it in a
//! supervised process of its own, and asks it about every message published
//! on a room's chat lane (`room:<id>:chat`) before the message is stored and
//! delivered. The module answers with a [`Verdict`]: deliver, replace the
//! payload, or reject the message with a reason the publisher reads.
//!
//! ```no_run
//! use chorus_module::{export_module, Chat, Module, Verdict};
//! use serde_json::Value;
//!
//! struct Shout;
//!
//! impl Module for Shout {
//!     fn init(_settings: &Value) -> Result<Self, String> {
//!         Ok(Shout)
//!     }
//!     fn on_chat(&mut self, chat: &Chat<'_>) -> Verdict {
//!         match chat.payload.get("text").and_then(Value::as_str) {
//!             Some(text) => Verdict::Replace(serde_json::json!({ "text": text.to_uppercase() })),
//!             None => Verdict::Deliver,
//!         }
//!     }
//! }
//!
//! export_module!(Shout);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip1` (`cargo build --release
//! --target wasm32-wasip1`) and copy `target/wasm32-wasip1/release/<name>.wasm`
//! into `modules.dir`.
//!
//! # The ABI, version 1 (for any language)
//!
//! This crate is one way to speak it; a module in any language that compiles
//! to WebAssembly speaks it with three exports:
//!
//! | export | signature | what |
//! |---|---|---|
//! | `chorus_abi_version` | `() -> i32` | returns `1` |
//! | `chorus_alloc` | `(len: i32) -> i32` | a buffer of `len` bytes for the next message; the node writes the message there |
//! | `chorus_handle` | `(ptr: i32, len: i32) -> i64` | handles the message (UTF-8 JSON) at `ptr`; returns the answer's `(ptr << 32) \| len`, a UTF-8 JSON text that stays readable until the next call |
//!
//! A WASI reactor's `_initialize` export, when present, is called once after
//! instantiation. Imports a module may use: WASI preview 1
//! (`wasi_snapshot_preview1`) with no files, no environment and no sleeping
//! (clocks and random work; stdout is discarded, the end of stderr is quoted
//! in the node's error when the module traps), and `chorus_module.log(level:
//! i32, ptr: i32, len: i32)` (1 error … 4 debug) for the node's log. Any other
//! import refuses the module at load.
//!
//! Messages in (the `type` field tells which):
//!
//! * `{"type": "init", "name": "<module name>", "abi": 1, "settings": {…}}`:
//!   once per instance, before anything else; `settings` is the module's
//!   `<name>.toml` from `modules.dir` as JSON (`{}` without one). Answer
//!   `{"ok": true}` or `{"error": "<why>"}` (the module is then refused,
//!   named in the error).
//! * `{"type": "chat", "room": "<id>", "topic": "realtime:room:<id>:chat",
//!   "event": "<event>", "user": "<user id>" | null, "payload": {…},
//!   "at_ms": <server time, Unix ms>}`. Answer one of
//!   `{"verdict": "deliver"}`, `{"verdict": "replace", "payload": {…}}`,
//!   `{"verdict": "reject", "reason": "<text for the publisher>"}`.
//!
//! Later versions of ABI 1 may add message types; answer an unknown `type`
//! with `{"error": "…"}` (this crate does), which the node treats as "no
//! opinion". A change that breaks this contract gets a new ABI version; the
//! node refuses a module whose `chorus_abi_version` it does not speak.
//!
//! # What the node enforces
//!
//! Each message gets at most `modules.fuel_per_message` WebAssembly
//! instructions (a module that loops is stopped and counted as a crash), the
//! module's memory is capped at `modules.memory_mib`, and the channel waits
//! at most `modules.timeout_ms` for the verdict (then `modules.fail_open`
//! decides). A module that traps crashes its process, which its supervisor
//! restarts with a fresh instance; past `modules.crash_limit` crashes in 10 s
//! it is disabled until the next reload. An answer that is not one of the
//! above is an error naming the module, and the message is handled as if the
//! module had not answered.

use std::cell::RefCell;

use serde_json::{json, Value};

/// The ABI version this crate speaks.
pub const ABI_VERSION: u32 = 1;

/// A chat message, as a module sees it.
#[derive(Debug, Clone, Copy)]
pub struct Chat<'a> {
    /// The room's id (`<id>` of `room:<id>:chat`).
    pub room: &'a str,
    /// The full topic (`realtime:room:<id>:chat`).
    pub topic: &'a str,
    /// The broadcast event the client chose.
    pub event: &'a str,
    /// The publisher's user id as the node knows it, `None` for messages
    /// posted through the REST API.
    pub user: Option<&'a str>,
    /// The JSON payload, as left by the modules asked before this one.
    pub payload: &'a Value,
    /// The node's clock when the message arrived (Unix ms).
    pub at_ms: u64,
}

/// A module's answer about one chat message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Let it through.
    Deliver,
    /// Go on with this payload instead (later modules, the store and every
    /// subscriber get it).
    Replace(Value),
    /// Refuse it; the publisher gets this reason, nobody else sees it.
    Reject(String),
}

/// A room behaviour. One value lives in the module's instance for as long as
/// the instance runs (a crash or a reload builds a new one), so it may keep
/// state.
pub trait Module: Sized {
    /// Builds the module from its settings (`<name>.toml` as JSON, `{}`
    /// without one). An `Err` refuses the module, with this reason.
    fn init(settings: &Value) -> Result<Self, String>;

    /// Called for every message published on a room's chat lane.
    fn on_chat(&mut self, chat: &Chat<'_>) -> Verdict;
}

/// Log levels of [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

#[cfg(target_arch = "wasm32")]
mod ffi {
    #[link(wasm_import_module = "chorus_module")]
    extern "C" {
        pub fn log(level: u32, ptr: *const u8, len: u32);
    }
}

/// A line in the node's log, attributed to this module.
pub fn log(level: Level, text: &str) {
    #[cfg(target_arch = "wasm32")]
    // SAFETY: pointer and length describe `text`.
    unsafe {
        ffi::log(level as u32, text.as_ptr(), text.len() as u32)
    }
    #[cfg(not(target_arch = "wasm32"))]
    eprintln!("[{level:?}] {text}");
}

/// Answers one message for module type `M` whose instance lives in `state`:
/// the whole protocol above, minus the memory plumbing that
/// [`export_module!`] adds. Public for that macro and for native tests of a
/// module (feed it the JSON the node would send).
pub fn handle<M: Module>(state: &RefCell<Option<M>>, input: &[u8]) -> Vec<u8> {
    let answer = match serde_json::from_slice::<Value>(input) {
        Err(e) => json!({ "error": format!("message is not JSON: {e}") }),
        Ok(message) => match message.get("type").and_then(Value::as_str) {
            Some("init") => {
                let settings = message.get("settings").cloned().unwrap_or(json!({}));
                match M::init(&settings) {
                    Ok(module) => {
                        *state.borrow_mut() = Some(module);
                        json!({ "ok": true })
                    }
                    Err(reason) => json!({ "error": reason }),
                }
            }
            Some("chat") => chat(state, &message),
            Some(other) => json!({ "error": format!("unsupported message type {other:?}") }),
            None => json!({ "error": "message without a type" }),
        },
    };
    answer.to_string().into_bytes()
}

fn chat<M: Module>(state: &RefCell<Option<M>>, message: &Value) -> Value {
    let text = |key: &str| message.get(key).and_then(Value::as_str).unwrap_or("");
    let null = Value::Null;
    let chat = Chat {
        room: text("room"),
        topic: text("topic"),
        event: text("event"),
        user: message.get("user").and_then(Value::as_str),
        payload: message.get("payload").unwrap_or(&null),
        at_ms: message.get("at_ms").and_then(Value::as_u64).unwrap_or(0),
    };
    let mut state = state.borrow_mut();
    let Some(module) = state.as_mut() else {
        return json!({ "error": "chat before init" });
    };
    match module.on_chat(&chat) {
        Verdict::Deliver => json!({ "verdict": "deliver" }),
        Verdict::Replace(payload) => json!({ "verdict": "replace", "payload": payload }),
        Verdict::Reject(reason) => json!({ "verdict": "reject", "reason": reason }),
    }
}

/// The buffers between the node and the module: the next message goes in
/// `input`, the last answer stays in `output` until the next call.
#[doc(hidden)]
pub struct Buffers {
    pub input: RefCell<Vec<u8>>,
    pub output: RefCell<Vec<u8>>,
}

impl Buffers {
    pub const fn new() -> Self {
        Buffers {
            input: RefCell::new(Vec::new()),
            output: RefCell::new(Vec::new()),
        }
    }

    /// `chorus_alloc`: a zeroed input buffer of `len` bytes.
    pub fn alloc(&self, len: u32) -> *mut u8 {
        let mut input = self.input.borrow_mut();
        input.clear();
        input.resize(len as usize, 0);
        input.as_mut_ptr()
    }

    /// `chorus_handle`: the message is the first `len` bytes of the input
    /// buffer (the node wrote it where `alloc` said).
    pub fn handle<M: Module>(&self, state: &RefCell<Option<M>>, len: u32) -> u64 {
        let answer = {
            let input = self.input.borrow();
            let len = (len as usize).min(input.len());
            handle(state, &input[..len])
        };
        let mut output = self.output.borrow_mut();
        *output = answer;
        ((output.as_ptr() as u64) << 32) | output.len() as u64
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::new()
    }
}

/// Exports the ABI for module type `$module` (one per crate).
#[macro_export]
macro_rules! export_module {
    ($module:ty) => {
        thread_local! {
            static CHORUS_MODULE_STATE: ::std::cell::RefCell<Option<$module>> =
                const { ::std::cell::RefCell::new(None) };
            static CHORUS_MODULE_BUFFERS: $crate::Buffers = const { $crate::Buffers::new() };
        }

        #[no_mangle]
        pub extern "C" fn chorus_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        #[no_mangle]
        pub extern "C" fn chorus_alloc(len: u32) -> *mut u8 {
            CHORUS_MODULE_BUFFERS.with(|b| b.alloc(len))
        }

        #[no_mangle]
        pub extern "C" fn chorus_handle(_ptr: *const u8, len: u32) -> u64 {
            CHORUS_MODULE_STATE
                .with(|state| CHORUS_MODULE_BUFFERS.with(|b| b.handle::<$module>(state, len)))
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo {
        prefix: String,
    }

    impl Module for Echo {
        fn init(settings: &Value) -> Result<Self, String> {
            match settings.get("prefix") {
                None => Ok(Echo {
                    prefix: String::new(),
                }),
                Some(Value::String(p)) => Ok(Echo { prefix: p.clone() }),
                Some(_) => Err("prefix must be a string".into()),
            }
        }

        fn on_chat(&mut self, chat: &Chat<'_>) -> Verdict {
            match chat.event {
                "no" => Verdict::Reject(format!("{} says no to {:?}", chat.room, chat.user)),
                "same" => Verdict::Deliver,
                _ => Verdict::Replace(json!({
                    "text": format!("{}{}", self.prefix, chat.payload["text"].as_str().unwrap_or("")),
                    "at": chat.at_ms,
                })),
            }
        }
    }

    fn call(state: &RefCell<Option<Echo>>, message: Value) -> Value {
        let out = handle(state, message.to_string().as_bytes());
        serde_json::from_slice(&out).expect("answers are JSON")
    }

    fn chat(event: &str) -> Value {
        json!({"type": "chat", "room": "r1", "topic": "realtime:room:r1:chat", "event": event,
               "user": "ana", "payload": {"text": "hi"}, "at_ms": 7})
    }

    #[test]
    fn init_then_chat_gives_each_verdict() {
        let state = RefCell::new(None);
        assert_eq!(
            call(&state, chat("x")),
            json!({"error": "chat before init"})
        );
        let init = json!({"type": "init", "name": "echo", "abi": 1, "settings": {"prefix": "> "}});
        assert_eq!(call(&state, init), json!({"ok": true}));
        assert_eq!(
            call(&state, chat("x")),
            json!({"verdict": "replace", "payload": {"text": "> hi", "at": 7}})
        );
        assert_eq!(call(&state, chat("same")), json!({"verdict": "deliver"}));
        assert_eq!(
            call(&state, chat("no")),
            json!({"verdict": "reject", "reason": "r1 says no to Some(\"ana\")"})
        );
    }

    #[test]
    fn bad_settings_and_bad_messages_are_errors() {
        let state = RefCell::new(None);
        let init = json!({"type": "init", "settings": {"prefix": 3}});
        assert_eq!(
            call(&state, init),
            json!({"error": "prefix must be a string"})
        );
        assert!(state.borrow().is_none());
        assert_eq!(
            call(&state, json!({"type": "tick"})),
            json!({"error": "unsupported message type \"tick\""})
        );
        assert_eq!(
            call(&state, json!({})),
            json!({"error": "message without a type"})
        );
        let out: Value = serde_json::from_slice(&handle(&state, b"{nope")).expect("JSON");
        assert!(out["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("message is not JSON")));
    }

    #[test]
    fn buffers_hand_the_answer_back_as_pointer_and_length() {
        let buffers = Buffers::new();
        let state: RefCell<Option<Echo>> = RefCell::new(None);
        let message = json!({"type": "init", "settings": {}}).to_string();
        let ptr = buffers.alloc(message.len() as u32);
        // SAFETY: `alloc` returned a buffer of exactly this length.
        unsafe { std::ptr::copy_nonoverlapping(message.as_ptr(), ptr, message.len()) };
        let packed = buffers.handle(&state, message.len() as u32);
        let len = (packed & 0xffff_ffff) as usize;
        let out = buffers.output.borrow();
        assert_eq!(len, out.len());
        assert_eq!(&out[..], br#"{"ok":true}"#);
    }
}
