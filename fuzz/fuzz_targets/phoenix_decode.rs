//! The Phoenix decoders (1.0.0 objects, 2.0.0 arrays and binary kinds 0/3)
//! on any bytes a client may send: an error, never a panic. Whatever
//! decodes must encode again and decode to the same message.
#![no_main]

use chorus_core::phoenix::{self, client, FrameRef, Vsn};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let vsn = if selector & 1 == 0 { Vsn::V1 } else { Vsn::V2 };
    let frame = if selector & 2 == 0 {
        match std::str::from_utf8(bytes) {
            Ok(text) => FrameRef::Text(text),
            Err(_) => return,
        }
    } else {
        FrameRef::Binary(bytes)
    };
    if let Ok(msg) = phoenix::decode(vsn, frame) {
        // Every accessor works on what decoded.
        let _ = (msg.topic(), msg.event(), msg.join_ref(), msg.msg_ref());
        if let Ok(again) = client::encode_push(vsn, &msg) {
            let round =
                phoenix::decode(vsn, FrameRef::from(&again)).expect("a re-encoded message decodes");
            assert_eq!(round.topic(), msg.topic());
            assert_eq!(round.event(), msg.event());
        }
    }
    // The server-side decoder of the client kit reads the same bytes too.
    let _ = client::decode_server(vsn, frame);
});
