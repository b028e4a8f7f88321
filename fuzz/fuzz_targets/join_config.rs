//! Join parsing on any JSON a client may send as a `phx_join` payload, the
//! key lists (`friends`, `presence_subscribe`) and topic checks: a config or
//! a reason, never a panic.
#![no_main]

use chorus_core::join;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(topic) = std::str::from_utf8(data) {
        let _ = join::validate_topic(topic);
    }
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(config) = join::parse_join(&value) {
        if let Some(replay) = config.replay {
            assert!(replay.limit >= 1);
        }
        assert!(config.friends.len() <= join::MAX_FRIENDS);
    }
    let _ = join::parse_keys(&value, "keys", 500);
});
