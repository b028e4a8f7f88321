//! Test fixture for the node's handling of bad process modules
//! (`tests/node/rooms-modules.test.mjs`): a module that misbehaves in the
//! way its `mode` setting names. Not shipped; built by `scripts/test.sh`.
//!
//! | `mode` | what it does |
//! |---|---|
//! | `panic_on_init` | panics in `init` (a trap while loading) |
//! | `loop_on_chat` | loops forever on a chat message whose `text` is `"loop"` |
//! | `trap_on_chat` | panics on a chat message whose `text` is `"trap"` |
//! | `garbage_on_chat` | answers a chat message whose `text` is `"garbage"` with bytes that are not JSON |
//!
//! Every other chat message is delivered with `"faulty": true` added, so a
//! test sees the module act.

use chorus_module::{Buffers, Chat, Module, Verdict};
use serde_json::Value;

/// The misbehaviour chosen by the settings.
pub struct Faulty {
    mode: String,
}

impl Module for Faulty {
    fn init(settings: &Value) -> Result<Self, String> {
        let mode = settings
            .get("mode")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if mode == "panic_on_init" {
            panic!("faulty: panicking in init as asked");
        }
        Ok(Faulty { mode })
    }

    fn on_chat(&mut self, chat: &Chat<'_>) -> Verdict {
        let text = chat
            .payload
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("");
        match (self.mode.as_str(), text) {
            ("loop_on_chat", "loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            ("trap_on_chat", "trap") => panic!("faulty: trapping on a chat message as asked"),
            _ => {
                let mut payload = chat.payload.clone();
                if let Some(map) = payload.as_object_mut() {
                    map.insert("faulty".into(), Value::Bool(true));
                }
                Verdict::Replace(payload)
            }
        }
    }
}

// The ABI by hand (not `export_module!`), to be able to answer garbage.
thread_local! {
    static STATE: std::cell::RefCell<Option<Faulty>> = const { std::cell::RefCell::new(None) };
    static BUFFERS: Buffers = const { Buffers::new() };
    static GARBAGE: Vec<u8> = b"\x00\x01 this is not JSON".to_vec();
}

#[no_mangle]
pub extern "C" fn chorus_abi_version() -> u32 {
    chorus_module::ABI_VERSION
}

#[no_mangle]
pub extern "C" fn chorus_alloc(len: u32) -> *mut u8 {
    BUFFERS.with(|b| b.alloc(len))
}

#[no_mangle]
pub extern "C" fn chorus_handle(_ptr: *const u8, len: u32) -> u64 {
    let wants_garbage = BUFFERS.with(|b| {
        let input = b.input.borrow();
        let message: Value = serde_json::from_slice(&input[..(len as usize).min(input.len())])
            .unwrap_or(Value::Null);
        message["payload"]["text"] == "garbage"
            && STATE.with(|s| {
                s.borrow()
                    .as_ref()
                    .is_some_and(|f| f.mode == "garbage_on_chat")
            })
    });
    if wants_garbage {
        return GARBAGE.with(|g| ((g.as_ptr() as u64) << 32) | g.len() as u64);
    }
    STATE.with(|state| BUFFERS.with(|b| b.handle::<Faulty>(state, len)))
}
