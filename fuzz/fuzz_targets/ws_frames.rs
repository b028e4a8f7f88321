//! The RFC 6455 frame decoder on any byte stream, split at an arbitrary
//! point, with and without `permessage-deflate` (the split byte's low bit):
//! events or a protocol error with a close code, never a panic, and never a
//! message over the limit, inflated or not.
#![no_main]

use chorus_core::ws::{FrameDecoder, WsEvent};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let cut = (split as usize * stream.len()) / 256;
    let mut decoder = FrameDecoder::new(MAX).with_deflate(split & 1 == 1);
    for part in [&stream[..cut], &stream[cut..]] {
        decoder.push(part);
        loop {
            match decoder.next() {
                Ok(Some(WsEvent::Text(t))) => assert!(t.len() <= MAX),
                Ok(Some(WsEvent::Binary(b))) => assert!(b.len() <= MAX),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    let code = e.close_code();
                    assert!((1000..5000).contains(&code), "close code {code}");
                    return;
                }
            }
        }
    }
});
