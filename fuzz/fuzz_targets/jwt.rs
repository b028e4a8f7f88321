//! The HS256 JWT verifier on any token text: claims or a reason, never a
//! panic; a token that verifies was signed with the secret (the fuzzer can
//! only get there by re-signing, which the target does on half its inputs).
#![no_main]

use chorus_core::jwt::{sign_hs256, verify_hs256};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"chorus-fuzz-secret";

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let now = u64::from(mode) * 1_000_000;
    if mode & 1 == 0 {
        // Any text as a token.
        let _ = verify_hs256(text, SECRET, now);
    } else if let Ok(claims) = serde_json::from_str::<serde_json::Value>(text) {
        // Any JSON as claims of a correctly signed token.
        let token = sign_hs256(&claims, SECRET);
        if let Ok(c) = verify_hs256(&token, SECRET, now) {
            let sent = claims.as_object().expect("only objects verify");
            assert!(sent.keys().eq(c.as_map().keys()), "claims changed");
        }
        assert!(verify_hs256(&token, b"another secret", now).is_err());
    }
});
