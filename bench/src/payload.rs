//! The message every system carries: a ~100-byte JSON object whose first
//! field is the publish time, so a receiver on the same machine can measure
//! publish-to-receive latency without clock sync, and whose second field is
//! the sender, so receivers can skip their own messages (MQTT 3.1.1 has no
//! "no local" and echoes them; Chorus with `self:false` and NATS with
//! `echo:false` do not).

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch; shared by every loader process.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `{"t":<ns>,"c":<client>,"s":<seq>,"p":"xxx…"}` padded to `size` bytes
/// (or longer when the numbers alone exceed it).
pub fn make(sent_ns: u64, client: u64, seq: u64, size: usize) -> Vec<u8> {
    let head = format!("{{\"t\":{sent_ns},\"c\":{client},\"s\":{seq},\"p\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut out = Vec::with_capacity(head.len() + pad + 2);
    out.extend_from_slice(head.as_bytes());
    out.resize(head.len() + pad, b'x');
    out.extend_from_slice(b"\"}");
    out
}

/// What a receiver needs from a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sent_ns: u64,
    pub client: u64,
}

/// Reads the `t` and `c` fields written by [`make`] without a JSON parser
/// (the receive path runs hundreds of thousands of times a second).
/// `None` for anything else.
pub fn parse(bytes: &[u8]) -> Option<Stamp> {
    let rest = bytes.strip_prefix(b"{\"t\":")?;
    let (sent_ns, rest) = number(rest)?;
    let rest = rest.strip_prefix(b",\"c\":")?;
    let (client, _) = number(rest)?;
    Some(Stamp { sent_ns, client })
}

/// Reads the `t` and `c` fields of a payload written by [`make`] wherever
/// they are in `bytes` (a server may reorder the object's keys, or wrap it
/// in its own envelope), without a JSON parser: the receive path must cost
/// the loader as little for every system as NATS' plain bytes do, or the
/// loader's CPU (shared with the server) would tilt the comparison.
pub fn scan(bytes: &[u8]) -> Option<Stamp> {
    Some(Stamp {
        sent_ns: field(bytes, b"\"t\":")?,
        client: field(bytes, b"\"c\":")?,
    })
}

fn field(bytes: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(bytes, key)?;
    number(&bytes[at + key.len()..]).map(|(v, _)| v)
}

/// The first position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let (num, rest) = bytes.split_at(digits);
    let mut v: u64 = 0;
    for d in num {
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some((v, rest))
}

/// The same stamp read from an already parsed JSON payload (Phoenix).
pub fn parse_json(value: &serde_json::Value) -> Option<Stamp> {
    Some(Stamp {
        sent_ns: value.get("t")?.as_u64()?,
        client: value.get("c")?.as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_requested_size_and_round_trips() {
        let p = make(1_700_000_000_000_000_000, 42, 7, 100);
        assert_eq!(p.len(), 100);
        assert_eq!(
            parse(&p),
            Some(Stamp {
                sent_ns: 1_700_000_000_000_000_000,
                client: 42
            })
        );
        let v: serde_json::Value = serde_json::from_slice(&p).expect("valid JSON");
        assert_eq!(parse_json(&v), parse(&p));
    }

    #[test]
    fn scan_finds_the_stamp_in_reordered_or_wrapped_payloads() {
        let want = Some(Stamp {
            sent_ns: 17,
            client: 4,
        });
        assert_eq!(scan(br#"{"c":4,"p":"xx","s":0,"t":17}"#), want);
        assert_eq!(
            scan(br#"{"push":{"channel":"r0","pub":{"data":{"t":17,"c":4,"s":1,"p":"x"},"info":{"client":"9"}}}}"#),
            want
        );
        assert_eq!(scan(br#"{"t":17}"#), None);
        assert_eq!(scan(br#"{"client":4,"t":17}"#), None);
    }

    #[test]
    fn garbage_is_not_a_stamp() {
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"{\"t\":}"), None);
        assert_eq!(parse(b"{\"t\":99999999999999999999,\"c\":1}"), None);
        assert_eq!(parse(b"hello"), None);
    }
}
