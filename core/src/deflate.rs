//! WebSocket `permessage-deflate` (RFC 7692), sans-IO.
//!
//! What Chorus agrees to, whatever the client offers:
//! `permessage-deflate; server_no_context_takeover; client_no_context_takeover`.
//! Every message is compressed and decompressed on its own, with no window
//! carried from one message to the next, so
//!
//! * a socket holds **no** compression state: memory per session does not
//!   grow (a context-takeover window would cost 32 KiB or more per socket);
//! * one fan-out frame is compressed **once** and the same bytes go to every
//!   socket that agreed to the extension ([`deflate_frame`]).
//!
//! Messages shorter than a threshold (`limits.deflate_min_bytes`) are sent
//! as they are: a deflate stream costs a few bytes of its own and small
//! JSON gains little. A compressed message is inflated with the same byte
//! limit as any message (`limits.max_frame_bytes`): a small frame that
//! would inflate beyond it is refused with 1009, like an oversized frame.
//!
//! Offers Chorus cannot honour (a `server_max_window_bits` below 15: our
//! compressor always uses the full window; unknown or repeated parameters)
//! are declined and the next offer is considered; with none left the
//! connection goes on without compression.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::ws::WsError;

/// The `Sec-WebSocket-Extensions` value of the `101` response.
pub const AGREED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The tail every sync-flushed deflate message ends with; RFC 7692 §7.2.1
/// removes it on the wire and the receiver puts it back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether the client's `Sec-WebSocket-Extensions` values (every header
/// line, in order) hold a `permessage-deflate` offer Chorus can accept.
pub fn accepts<'a>(offers: impl IntoIterator<Item = &'a str>) -> bool {
    offers
        .into_iter()
        .flat_map(|line| line.split(','))
        .any(acceptable)
}

/// One offer: `permessage-deflate` with parameters we can honour.
fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen: Vec<String> = Vec::new();
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (param, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return false;
        }
        let ok = match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            // The client may limit our window: only the full one is ours.
            ("server_max_window_bits", Some(v)) => v == "15",
            // The client lets us limit its window; we do not need to.
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(v)) => {
                v.parse::<u8>().is_ok_and(|bits| (8..=15).contains(&bits))
            }
            _ => false,
        };
        if !ok {
            return false;
        }
        seen.push(name);
    }
    true
}

thread_local! {
    /// One compressor per thread, reset for every message (no context
    /// takeover): allocating one costs far more than compressing a chat
    /// message.
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    /// The same for inflating: a fresh state per message costs a 40 KiB
    /// allocation and its zeroing.
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// The compressed version of a server frame, or `None` when it is not a
/// single unfragmented text or binary frame of at least `min_payload`
/// payload bytes, or when compressing would not make it smaller. The
/// result is a complete frame with RSV1 set (RFC 7692 §6), for any socket
/// that agreed to the extension.
pub fn deflate_frame(frame: &[u8], min_payload: usize) -> Option<Vec<u8>> {
    let (b0, payload) = server_frame(frame)?;
    if payload.len() < min_payload {
        return None;
    }
    let compressed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        compress(&mut c, payload)
    })?;
    let mut out = Vec::with_capacity(compressed.len() + 10);
    out.push(b0 | 0x40);
    push_len(&mut out, compressed.len());
    out.extend_from_slice(&compressed);
    (out.len() < frame.len()).then_some(out)
}

/// The first byte and the payload of a complete, final, unmasked text or
/// binary frame with no RSV bit set and nothing after it.
fn server_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let (&b0, &b1) = (frame.first()?, frame.get(1)?);
    // FIN set, RSV clear, opcode text (1) or binary (2); not masked.
    if b0 != 0x81 && b0 != 0x82 || b1 & 0x80 != 0 {
        return None;
    }
    let (len, at) = match b1 & 0x7F {
        126 => (
            usize::from(u16::from_be_bytes(frame.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(frame.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = frame.get(at..)?;
    (payload.len() == len).then_some((b0, payload))
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Raw deflate of `data`, sync-flushed, without the trailing `TAIL`.
fn compress(c: &mut Compress, data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    loop {
        let consumed = usize::try_from(c.total_in()).ok()?;
        let input = data.get(consumed..)?;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(256));
        }
        c.compress_vec(input, &mut out, FlushCompress::Sync).ok()?;
        let done = usize::try_from(c.total_in()).ok()? == data.len();
        // A sync flush is complete once the input is used and the output
        // buffer was not filled to the brim.
        if done && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(out)
}

/// Inflates one compressed message (its payload as received, without the
/// RFC's removed tail) into at most `limit` bytes.
pub fn inflate(data: &[u8], limit: usize) -> Result<Vec<u8>, WsError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        inflate_with(&mut d, data, limit)
    })
}

fn inflate_with(d: &mut Decompress, data: &[u8], limit: usize) -> Result<Vec<u8>, WsError> {
    let mut input = Vec::with_capacity(data.len() + TAIL.len());
    input.extend_from_slice(data);
    input.extend_from_slice(&TAIL);
    let cap = limit.saturating_add(1);
    let mut out: Vec<u8> = Vec::with_capacity(data.len().saturating_mul(4).max(64).min(cap));
    loop {
        if out.len() == out.capacity() {
            // Grown by doubling, never past one byte over the limit: that
            // byte is what tells a message over the limit.
            let room = cap.saturating_sub(out.len());
            if room == 0 {
                return Err(WsError::TooLarge { limit });
            }
            out.reserve_exact(out.len().max(256).min(room));
        }
        let used = usize::try_from(d.total_in()).map_err(|_| WsError::Inflate)?;
        let rest = input.get(used..).unwrap_or_default();
        let before = (d.total_in(), d.total_out());
        let status = d
            .decompress_vec(rest, &mut out, FlushDecompress::Sync)
            .map_err(|_| WsError::Inflate)?;
        if out.len() > limit {
            return Err(WsError::TooLarge { limit });
        }
        if status == Status::StreamEnd {
            break;
        }
        let all_in = usize::try_from(d.total_in()).ok() == Some(input.len());
        let stuck = (d.total_in(), d.total_out()) == before;
        if out.len() < out.capacity() && (all_in || stuck) {
            // Everything consumed and flushed, or a stream that cannot go
            // on (cut short): what came out is the message.
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{encode_text, FrameDecoder, WsEvent};

    #[test]
    fn accepts_what_browsers_and_ws_offer() {
        assert!(accepts(["permessage-deflate; client_max_window_bits"]));
        assert!(accepts([
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
        ]));
        assert!(accepts(["x-webkit-deflate-frame", "permessage-deflate"]));
        assert!(accepts([
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
    }

    #[test]
    fn declines_what_it_cannot_honour() {
        assert!(!accepts([]));
        assert!(!accepts(["x-webkit-deflate-frame"]));
        assert!(!accepts(["permessage-deflate; server_max_window_bits=10"]));
        assert!(!accepts(["permessage-deflate; server_max_window_bits"]));
        assert!(!accepts(["permessage-deflate; client_max_window_bits=7"]));
        assert!(!accepts(["permessage-deflate; mystery"]));
        assert!(!accepts([
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover"
        ]));
    }

    fn text_frame(s: &str) -> Vec<u8> {
        let mut f = Vec::new();
        encode_text(&mut f, s);
        f
    }

    #[test]
    fn a_compressed_frame_reads_back_as_the_same_text() {
        let text = format!(
            "[null,null,\"realtime:room\",\"broadcast\",{}]",
            "{\"k\":1},".repeat(200)
        );
        let frame = text_frame(&text);
        let small = deflate_frame(&frame, 64).expect("compressible");
        assert!(
            small.len() * 4 < frame.len(),
            "{} vs {}",
            small.len(),
            frame.len()
        );
        assert_eq!(small[0], 0xC1, "FIN, RSV1, text");
        let mut d = FrameDecoder::for_client(1 << 20).with_deflate(true);
        d.push(&small);
        assert_eq!(d.next().unwrap(), Some(WsEvent::Text(text.clone())));
        // The compressor is reset per message: the same frame compresses to
        // the same bytes (no window carried over).
        assert_eq!(deflate_frame(&frame, 64).unwrap(), small);
    }

    #[test]
    fn small_control_or_incompressible_frames_stay_as_they_are() {
        assert_eq!(deflate_frame(&text_frame("{\"a\":1}"), 64), None);
        let mut ping = Vec::new();
        crate::ws::encode_ping(&mut ping, &[b'a'; 100]);
        assert_eq!(deflate_frame(&ping, 0), None);
        let noise: String = (0..400u32)
            .map(|i| char::from(b'!' + ((i.wrapping_mul(2_654_435_761) >> 13) % 90) as u8))
            .collect();
        let frame = text_frame(&noise);
        if let Some(f) = deflate_frame(&frame, 0) {
            assert!(f.len() < frame.len());
        }
        // Two frames in one buffer are not one frame.
        let mut two = text_frame(&"x".repeat(300));
        two.extend_from_slice(&text_frame("y"));
        assert_eq!(deflate_frame(&two, 0), None);
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let text = "0".repeat(100_000);
        let frame = deflate_frame(&text_frame(&text), 0).unwrap();
        let payload = &frame[4..];
        assert_eq!(inflate(payload, 100_000).unwrap().len(), 100_000);
        assert_eq!(
            inflate(payload, 99_999).unwrap_err(),
            WsError::TooLarge { limit: 99_999 }
        );
    }

    /// A masked client frame, with RSV1 set when `rsv1`.
    fn client_frame(op: crate::ws::Opcode, fin: bool, rsv1: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        if fin {
            crate::ws::encode_client_frame(&mut f, op, payload, [1, 2, 3, 4]);
        } else {
            crate::ws::encode_client_fragment(&mut f, false, op, payload, [1, 2, 3, 4]);
        }
        if rsv1 {
            f[0] |= 0x40;
        }
        f
    }

    fn compressed(text: &str) -> Vec<u8> {
        let frame = deflate_frame(&text_frame(text), 0).unwrap();
        server_frame_payload(&frame)
    }

    fn server_frame_payload(frame: &[u8]) -> Vec<u8> {
        let at = match frame[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        frame[at..].to_vec()
    }

    #[test]
    fn the_server_decoder_inflates_whole_and_fragmented_messages() {
        use crate::ws::Opcode;
        let text = "{\"event\":\"broadcast\"} ".repeat(50);
        let data = compressed(&text);
        let mut d = FrameDecoder::new(1 << 20).with_deflate(true);
        d.push(&client_frame(Opcode::Text, true, true, &data));
        assert_eq!(d.next().unwrap(), Some(WsEvent::Text(text.clone())));
        // Fragmented: RSV1 on the first frame only.
        let (a, b) = data.split_at(data.len() / 2);
        d.push(&client_frame(Opcode::Text, false, true, a));
        d.push(&client_frame(Opcode::Continuation, true, false, b));
        assert_eq!(d.next().unwrap(), Some(WsEvent::Text(text.clone())));
        // Uncompressed messages still pass on a deflate connection.
        d.push(&client_frame(Opcode::Text, true, false, b"plain"));
        assert_eq!(d.next().unwrap(), Some(WsEvent::Text("plain".into())));
    }

    #[test]
    fn rsv1_is_refused_where_it_has_no_meaning() {
        use crate::ws::Opcode;
        let data = compressed(&"x".repeat(300));
        let mut d = FrameDecoder::new(1 << 20);
        d.push(&client_frame(Opcode::Text, true, true, &data));
        assert_eq!(d.next().unwrap_err().close_code(), 1002, "not agreed");
        let mut d = FrameDecoder::new(1 << 20).with_deflate(true);
        d.push(&client_frame(Opcode::Ping, true, true, b""));
        assert_eq!(d.next().unwrap_err().close_code(), 1002, "control frame");
        let mut d = FrameDecoder::new(1 << 20).with_deflate(true);
        d.push(&client_frame(Opcode::Text, false, true, &data));
        d.push(&client_frame(Opcode::Continuation, true, true, b""));
        assert_eq!(d.next().unwrap_err().close_code(), 1002, "continuation");
    }

    #[test]
    fn a_small_frame_that_inflates_past_the_limit_is_1009() {
        use crate::ws::Opcode;
        let bomb = compressed(&"0".repeat(2_000_000));
        assert!(bomb.len() < 10_000, "{}", bomb.len());
        let mut d = FrameDecoder::new(1_000_000).with_deflate(true);
        d.push(&client_frame(Opcode::Text, true, true, &bomb));
        assert_eq!(
            d.next().unwrap_err(),
            WsError::TooLarge { limit: 1_000_000 }
        );
        let mut d = FrameDecoder::new(1_000_000).with_deflate(true);
        d.push(&client_frame(Opcode::Text, true, true, &[0xff; 40]));
        assert_eq!(d.next().unwrap_err().close_code(), 1007);
    }

    #[test]
    fn garbage_is_an_inflate_error() {
        assert_eq!(inflate(&[0xff; 32], 1000).unwrap_err(), WsError::Inflate);
    }

    #[test]
    fn an_empty_message_inflates_to_nothing() {
        // An empty stored block once the removed tail is put back.
        assert_eq!(inflate(&[0x00], 10).unwrap(), Vec::<u8>::new());
        let empty = COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            c.reset();
            compress(&mut c, b"")
        });
        assert_eq!(inflate(&empty.unwrap(), 10).unwrap(), Vec::<u8>::new());
    }
}
