//! NATS client protocol over WebSocket (the server's `websocket {}`
//! listener). The WebSocket is only a pipe: NATS protocol lines may be split
//! across or packed into WebSocket messages, so the parser is a byte stream.
//!
//! Confirmations use NATS' own idiom: a `PING` after `CONNECT` (or `SUB`) is
//! answered with a `PONG` only once the server has processed what came
//! before it.

use std::collections::VecDeque;

use super::{Event, Out};
use crate::payload;

/// Longest control line we accept before calling the stream broken.
const MAX_LINE: usize = 4096;
/// Largest message payload we accept (the server default is 1 MB).
const MAX_PAYLOAD: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PingFor {
    Connect,
    Subscribe,
    Heartbeat,
}

#[derive(Debug)]
pub struct Client {
    buf: Vec<u8>,
    pings: VecDeque<PingFor>,
    next_sid: u64,
    broken: bool,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client {
            buf: Vec::new(),
            pings: VecDeque::new(),
            next_sid: 1,
            broken: false,
        }
    }

    /// `CONNECT` without echo (a publisher does not get its own messages,
    /// like Chorus' `self: false`), then a `PING` to confirm it.
    pub fn hello(&mut self) -> Vec<Out> {
        self.pings.push_back(PingFor::Connect);
        vec![Out::binary(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"protocol\":1,\
\"name\":\"chorus-bench\",\"lang\":\"rust\",\"version\":\"0.1.0\"}\r\nPING\r\n"
                .to_vec(),
        )]
    }

    pub fn subscribe(&mut self, subject: &str) -> Vec<Out> {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.pings.push_back(PingFor::Subscribe);
        vec![Out::binary(
            format!("SUB {subject} {sid}\r\nPING\r\n").into_bytes(),
        )]
    }

    pub fn publish(&mut self, subject: &str, payload: &[u8]) -> Out {
        let mut data = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        data.extend_from_slice(payload);
        data.extend_from_slice(b"\r\n");
        Out::binary(data)
    }

    pub fn heartbeat(&mut self) -> Out {
        self.pings.push_back(PingFor::Heartbeat);
        Out::binary(b"PING\r\n".to_vec())
    }

    /// Feeds bytes from one WebSocket message.
    pub fn on_bytes(&mut self, data: &[u8], out: &mut Vec<Event>) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            match self.step(pos, out) {
                Ok(Some(consumed)) => pos += consumed,
                Ok(None) => break,
                Err(why) => return self.fail(why, out),
            }
        }
        self.buf.drain(..pos);
        if self.buf.len() > MAX_LINE + MAX_PAYLOAD + 2 {
            self.fail("NATS stream: unterminated message".into(), out);
        }
    }

    fn fail(&mut self, why: String, out: &mut Vec<Event>) {
        self.broken = true;
        self.buf.clear();
        out.push(Event::Error(why));
    }

    /// Parses one protocol item at `buf[pos..]`: how many bytes it took,
    /// `None` when incomplete, an error when the stream is broken.
    fn step(&mut self, pos: usize, out: &mut Vec<Event>) -> Result<Option<usize>, String> {
        let rest = &self.buf[pos..];
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            if rest.len() > MAX_LINE {
                return Err("NATS stream: control line too long".into());
            }
            return Ok(None);
        };
        let line = &rest[..eol];
        let verb_end = line
            .iter()
            .position(|b| *b == b' ' || *b == b'\t')
            .unwrap_or(line.len());
        let verb = line[..verb_end].to_ascii_uppercase();
        match verb.as_slice() {
            b"MSG" => {
                let args: Vec<&[u8]> = line[verb_end..]
                    .split(|b| *b == b' ' || *b == b'\t')
                    .filter(|a| !a.is_empty())
                    .collect();
                // MSG <subject> <sid> [reply-to] <#bytes>
                let len = match args.as_slice() {
                    [_, _, n] | [_, _, _, n] => parse_len(n),
                    _ => None,
                };
                let Some(len) = len.filter(|l| *l <= MAX_PAYLOAD) else {
                    return Err(format!(
                        "NATS stream: bad MSG line {:?}",
                        String::from_utf8_lossy(line)
                    ));
                };
                let body_start = eol + 2;
                if rest.len() < body_start + len + 2 {
                    return Ok(None);
                }
                let body = &rest[body_start..body_start + len];
                out.push(Event::Message(payload::parse(body)));
                Ok(Some(body_start + len + 2))
            }
            b"PING" => {
                out.push(Event::Reply(Out::binary(b"PONG\r\n".to_vec())));
                Ok(Some(eol + 2))
            }
            b"PONG" => {
                match self.pings.pop_front() {
                    Some(PingFor::Connect) => out.push(Event::Connected),
                    Some(PingFor::Subscribe) => out.push(Event::Subscribed),
                    Some(PingFor::Heartbeat) | None => {}
                }
                Ok(Some(eol + 2))
            }
            b"INFO" | b"+OK" => Ok(Some(eol + 2)),
            b"-ERR" => Err(format!("NATS server: {}", String::from_utf8_lossy(line))),
            _ => Err(format!(
                "NATS stream: unknown line {:?}",
                String::from_utf8_lossy(line)
            )),
        }
    }
}

fn parse_len(digits: &[u8]) -> Option<usize> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Stamp;

    fn feed(c: &mut Client, chunks: &[&[u8]]) -> Vec<Event> {
        let mut out = Vec::new();
        for chunk in chunks {
            c.on_bytes(chunk, &mut out);
        }
        out
    }

    #[test]
    fn connect_and_subscribe_are_confirmed_by_pongs_in_order() {
        let mut c = Client::new();
        let hello = c.hello();
        assert!(hello[0].data.starts_with(b"CONNECT {"));
        assert!(hello[0].data.ends_with(b"}\r\nPING\r\n"));
        let sub = c.subscribe("room");
        assert_eq!(sub[0].data, b"SUB room 1\r\nPING\r\n");
        let ev = feed(
            &mut c,
            &[b"INFO {\"server_id\":\"x\"}\r\n", b"PONG\r\nPO", b"NG\r\n"],
        );
        assert_eq!(ev, vec![Event::Connected, Event::Subscribed]);
    }

    #[test]
    fn publish_frames_the_payload_with_its_length() {
        let mut c = Client::new();
        assert_eq!(c.publish("r", b"hello").data, b"PUB r 5\r\nhello\r\n");
    }

    #[test]
    fn messages_split_across_websocket_frames_are_reassembled() {
        let mut c = Client::new();
        let p = payload::make(123, 9, 1, 60);
        let mut wire = format!("MSG room 1 {}\r\n", p.len()).into_bytes();
        wire.extend_from_slice(&p);
        wire.extend_from_slice(b"\r\nMSG room 1 reply.x 2\r\nhi\r\nPING\r\n");
        let (a, b) = wire.split_at(17);
        let ev = feed(&mut c, &[a, b]);
        assert_eq!(
            ev,
            vec![
                Event::Message(Some(Stamp {
                    sent_ns: 123,
                    client: 9
                })),
                Event::Message(None),
                Event::Reply(Out::binary(b"PONG\r\n".to_vec())),
            ]
        );
    }

    #[test]
    fn server_errors_and_garbage_fail_the_session() {
        let mut c = Client::new();
        let ev = feed(&mut c, &[b"-ERR 'Authorization Violation'\r\n"]);
        assert!(matches!(&ev[..], [Event::Error(e)] if e.contains("Authorization")));
        let mut c = Client::new();
        let ev = feed(&mut c, &[b"MSG room 1 notanumber\r\n"]);
        assert!(matches!(&ev[..], [Event::Error(_)]));
        let mut c = Client::new();
        let ev = feed(&mut c, &[b"WHAT\r\n"]);
        assert!(matches!(&ev[..], [Event::Error(_)]));
    }
}
