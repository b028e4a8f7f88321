//! MQTT 3.1.1 over WebSocket (subprotocol `mqtt`), QoS 0 only: what a
//! realtime app would use against RabbitMQ's Web-MQTT plugin. MQTT packets
//! may be split across or packed into WebSocket messages, so the parser is
//! a byte stream.

use super::{Event, Out};
use crate::payload;

/// Keep-alive announced in CONNECT; we ping at half of it.
pub const KEEPALIVE_S: u16 = 60;
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

/// Largest packet we accept (RabbitMQ's default limit is 256 MB; our
/// messages are ~100 bytes, so anything near this is a broken stream).
const MAX_PACKET: usize = 1 << 20;

const CONNECT: u8 = 0x10;
const CONNACK: u8 = 0x20;
const PUBLISH: u8 = 0x30;
const SUBSCRIBE: u8 = 0x82;
const SUBACK: u8 = 0x90;
const PINGRESP: u8 = 0xD0;

#[derive(Debug)]
pub struct Client {
    client_id: String,
    buf: Vec<u8>,
    next_packet_id: u16,
    broken: bool,
}

impl Client {
    pub fn new(client_id: u64) -> Client {
        Client {
            client_id: format!("bench-{client_id}"),
            buf: Vec::new(),
            next_packet_id: 1,
            broken: false,
        }
    }

    /// CONNECT with a clean session and the broker's default guest login
    /// (allowed from loopback).
    pub fn hello(&mut self) -> Vec<Out> {
        let mut body = Vec::new();
        put_str(&mut body, "MQTT");
        body.push(4); // protocol level 3.1.1
        body.push(0x80 | 0x40 | 0x02); // username, password, clean session
        body.extend_from_slice(&KEEPALIVE_S.to_be_bytes());
        put_str(&mut body, &self.client_id);
        put_str(&mut body, "guest");
        put_str(&mut body, "guest");
        vec![Out::binary(packet(CONNECT, &body))]
    }

    pub fn subscribe(&mut self, topic: &str) -> Out {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        let mut body = Vec::new();
        body.extend_from_slice(&id.to_be_bytes());
        put_str(&mut body, topic);
        body.push(0); // QoS 0
        Out::binary(packet(SUBSCRIBE, &body))
    }

    /// PUBLISH at QoS 0, not retained.
    pub fn publish(&mut self, topic: &str, payload: &[u8]) -> Out {
        let mut body = Vec::with_capacity(2 + topic.len() + payload.len());
        put_str(&mut body, topic);
        body.extend_from_slice(payload);
        Out::binary(packet(PUBLISH, &body))
    }

    pub fn on_bytes(&mut self, data: &[u8], out: &mut Vec<Event>) {
        if self.broken {
            return;
        }
        self.buf.extend_from_slice(data);
        let mut pos = 0;
        loop {
            match split_packet(&self.buf[pos..]) {
                Ok(Some((first, body, used))) => {
                    if let Err(why) = handle(first, body, out) {
                        self.broken = true;
                        self.buf.clear();
                        out.push(Event::Error(why));
                        return;
                    }
                    pos += used;
                }
                Ok(None) => break,
                Err(why) => {
                    self.broken = true;
                    self.buf.clear();
                    out.push(Event::Error(why));
                    return;
                }
            }
        }
        self.buf.drain(..pos);
    }
}

fn handle(first: u8, body: &[u8], out: &mut Vec<Event>) -> Result<(), String> {
    match first & 0xF0 {
        CONNACK => match body {
            [_, 0] => out.push(Event::Connected),
            [_, rc] => return Err(format!("MQTT CONNACK refused, return code {rc}")),
            _ => return Err("MQTT CONNACK of the wrong length".into()),
        },
        SUBACK => match body {
            [_, _, rc] if *rc <= 2 => out.push(Event::Subscribed),
            [_, _, rc] => return Err(format!("MQTT SUBACK refused, return code {rc:#x}")),
            _ => return Err("MQTT SUBACK of the wrong length".into()),
        },
        PUBLISH => {
            let qos = (first >> 1) & 3;
            let (topic_len, rest) = match body {
                [hi, lo, rest @ ..] => (usize::from(u16::from_be_bytes([*hi, *lo])), rest),
                _ => return Err("MQTT PUBLISH without a topic".into()),
            };
            let skip = topic_len + if qos > 0 { 2 } else { 0 };
            let payload = rest
                .get(skip..)
                .ok_or_else(|| "MQTT PUBLISH shorter than its topic".to_string())?;
            out.push(Event::Message(payload::parse(payload)));
        }
        PINGRESP => {}
        _ => return Err(format!("MQTT unexpected packet type {first:#04x}")),
    }
    Ok(())
}

/// One complete packet at the start of `buf`: (first byte, body, bytes used).
/// A complete packet: its first byte, its body, and the bytes it used.
type Packet<'a> = (u8, &'a [u8], usize);

fn split_packet(buf: &[u8]) -> Result<Option<Packet<'_>>, String> {
    let Some((&first, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let mut len: usize = 0;
    for i in 0..4 {
        let Some(&b) = rest.get(i) else {
            return Ok(None);
        };
        len |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            if len > MAX_PACKET {
                return Err(format!("MQTT packet of {len} bytes is over our limit"));
            }
            let start = 1 + i + 1;
            return Ok(buf
                .get(start..start + len)
                .map(|body| (first, body, start + len)));
        }
    }
    Err("MQTT remaining length longer than 4 bytes".into())
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

/// Fixed header (type byte + variable-length remaining length) + body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(first);
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
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
    fn connect_packet_is_mqtt_3_1_1_with_clean_session_and_login() {
        let mut c = Client::new(7);
        let hello = c.hello();
        let d = &hello[0].data;
        assert_eq!(d[0], 0x10);
        assert_eq!(usize::from(d[1]), d.len() - 2);
        assert_eq!(&d[2..10], b"\x00\x04MQTT\x04\xC2");
        assert_eq!(&d[10..12], &60u16.to_be_bytes());
        assert_eq!(&d[12..14], &[0, 7]);
        assert_eq!(&d[14..21], b"bench-7");
    }

    #[test]
    fn subscribe_and_publish_layouts() {
        let mut c = Client::new(1);
        assert_eq!(c.subscribe("r0").data, b"\x82\x07\x00\x01\x00\x02r0\x00");
        assert_eq!(c.subscribe("r0").data[3], 2, "packet ids increase");
        assert_eq!(c.publish("r0", b"hi").data, b"\x30\x06\x00\x02r0hi");
    }

    #[test]
    fn remaining_length_uses_continuation_bytes() {
        let big = vec![b'x'; 300];
        let p = Client::new(1).publish("t", &big);
        // 2 + 1 + 300 = 303 = 0b10_0101111 -> 0xAF 0x02
        assert_eq!(&p.data[..3], &[0x30, 0xAF, 0x02]);
        let mut c = Client::new(1);
        let ev = feed(&mut c, &[&p.data[..2], &p.data[2..]]);
        assert_eq!(ev, vec![Event::Message(None)]);
    }

    #[test]
    fn acks_and_split_publishes_decode() {
        let mut c = Client::new(1);
        let body = payload::make(55, 3, 0, 100);
        let publish = Client::new(2).publish("r0", &body).data;
        let mut wire = vec![0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x00];
        wire.extend_from_slice(&publish);
        wire.extend_from_slice(&[0xD0, 0x00]);
        let (a, b) = wire.split_at(20);
        let ev = feed(&mut c, &[a, b]);
        assert_eq!(
            ev,
            vec![
                Event::Connected,
                Event::Subscribed,
                Event::Message(Some(Stamp {
                    sent_ns: 55,
                    client: 3
                })),
            ]
        );
    }

    #[test]
    fn refusals_and_garbage_fail_the_session() {
        let ev = feed(&mut Client::new(1), &[&[0x20, 0x02, 0x00, 0x05]]);
        assert!(matches!(&ev[..], [Event::Error(e)] if e.contains("return code 5")));
        let ev = feed(&mut Client::new(1), &[&[0x90, 0x03, 0x00, 0x01, 0x80]]);
        assert!(matches!(&ev[..], [Event::Error(e)] if e.contains("SUBACK refused")));
        let ev = feed(
            &mut Client::new(1),
            &[&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]],
        );
        assert!(matches!(&ev[..], [Event::Error(_)]));
        let ev = feed(&mut Client::new(1), &[&[0x30, 0x03, 0x00, 0x09, b'a']]);
        assert!(matches!(&ev[..], [Event::Error(_)]));
    }
}
