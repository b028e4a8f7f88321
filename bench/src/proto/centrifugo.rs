//! Centrifugo's client protocol v2, JSON flavour, over its WebSocket
//! endpoint (`/connection/websocket`), as its JavaScript SDK `centrifuge`
//! speaks it:
//!
//! * commands are JSON objects with an `id` and one method field
//!   (`{"id":1,"connect":{…}}`, `subscribe`, `publish`); several may share
//!   one WebSocket message, one per line;
//! * the server answers each command with a reply carrying the same `id`
//!   (and `error` when refused), and sends publications as
//!   `{"push":{"channel":…,"pub":{"data":…}}}`, again possibly several per
//!   message, one per line;
//! * keep-alive is the server's: it sends `{}` every `client.ping_interval`
//!   and the client answers `{}` (the SDK's "pong"); the client sends no
//!   pings of its own.
//!
//! Centrifugo has no "no local" option: a publisher subscribed to its
//! channel receives its own publications, and receivers skip them by the
//! sender id in the payload, as for MQTT.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Event, Out};
use crate::payload;

/// The connect command's id; every session sends it first.
const CONNECT_ID: u64 = 1;

#[derive(Debug)]
pub struct Client {
    next_id: u64,
    /// Ids of subscribe commands waiting for their reply.
    subscribing: Vec<u64>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

/// One line of a server message: a reply (with `id`), a push, or `{}`.
#[derive(Deserialize)]
struct ServerLine<'a> {
    #[serde(default)]
    id: u64,
    #[serde(default, borrow)]
    error: Option<ErrorBody<'a>>,
    #[serde(default, borrow)]
    push: Option<Push<'a>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(default)]
    code: u32,
    #[serde(default, borrow)]
    message: Option<&'a str>,
}

#[derive(Deserialize)]
struct Push<'a> {
    #[serde(default, rename = "pub", borrow)]
    publication: Option<Publication<'a>>,
    #[serde(default, borrow)]
    disconnect: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Publication<'a> {
    #[serde(borrow)]
    data: &'a RawValue,
}

impl Client {
    pub fn new() -> Client {
        Client {
            next_id: CONNECT_ID,
            subscribing: Vec::new(),
        }
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The connect command (anonymous: no token; the bench's server allows
    /// anonymous connections).
    pub fn hello(&mut self) -> Vec<Out> {
        let id = self.take_id();
        debug_assert_eq!(id, CONNECT_ID);
        vec![Out::text(format!(
            "{{\"id\":{id},\"connect\":{{\"name\":\"chorus-bench\"}}}}"
        ))]
    }

    pub fn subscribe(&mut self, channel: &str) -> Out {
        let id = self.take_id();
        self.subscribing.push(id);
        Out::text(format!(
            "{{\"id\":{id},\"subscribe\":{{\"channel\":{}}}}}",
            quote(channel)
        ))
    }

    /// A publish command; `payload` is a JSON value (our payloads are
    /// JSON objects) spliced in as the publication's data.
    pub fn publish(&mut self, channel: &str, payload: &[u8]) -> Out {
        let id = self.take_id();
        let mut data = format!(
            "{{\"id\":{id},\"publish\":{{\"channel\":{},\"data\":",
            quote(channel)
        )
        .into_bytes();
        data.extend_from_slice(payload);
        data.extend_from_slice(b"}}");
        Out {
            opcode: chorus_core::ws::Opcode::Text,
            data,
        }
    }

    /// Feeds one WebSocket message (one or more lines).
    pub fn on_message(&mut self, data: &[u8], out: &mut Vec<Event>) {
        for line in data.split(|b| *b == b'\n') {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            self.on_line(line, out);
        }
    }

    fn on_line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if line == b"{}" {
            // The server's ping: answer with the pong.
            out.push(Event::Reply(Out::text("{}")));
            return;
        }
        // The hot path: a publication whose data carries a stamp is read
        // without decoding the line's JSON (as NATS' bytes are); anything
        // else is decoded in full.
        if line.starts_with(b"{\"push\":") {
            if let Some(at) = payload::find(line, b"\"pub\":{\"data\":") {
                if let Some(stamp) = payload::scan(&line[at..]) {
                    out.push(Event::Message(Some(stamp)));
                    return;
                }
            }
        }
        let msg: ServerLine = match serde_json::from_slice(line) {
            Ok(m) => m,
            Err(e) => {
                out.push(Event::Error(format!(
                    "Centrifugo: undecodable server message ({e}): {}",
                    String::from_utf8_lossy(&line[..line.len().min(120)])
                )));
                return;
            }
        };
        if let Some(push) = msg.push {
            if let Some(p) = push.publication {
                let raw = p.data.get().as_bytes();
                let stamp = payload::parse(raw).or_else(|| {
                    serde_json::from_slice(raw)
                        .ok()
                        .and_then(|v| payload::parse_json(&v))
                });
                out.push(Event::Message(stamp));
            } else if let Some(d) = push.disconnect {
                out.push(Event::Error(format!("Centrifugo disconnect: {}", d.get())));
            }
            return;
        }
        if let Some(err) = msg.error {
            out.push(Event::Error(format!(
                "Centrifugo refused command {}: {} {}",
                msg.id,
                err.code,
                err.message.unwrap_or_default()
            )));
            return;
        }
        if msg.id == CONNECT_ID {
            out.push(Event::Connected);
        } else if let Some(i) = self.subscribing.iter().position(|id| *id == msg.id) {
            self.subscribing.swap_remove(i);
            out.push(Event::Subscribed);
        }
        // Publish replies: nothing to do.
    }
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Stamp;

    #[test]
    fn connect_then_subscribe_are_confirmed_by_their_replies() {
        let mut c = Client::new();
        assert_eq!(
            c.hello()[0].data,
            br#"{"id":1,"connect":{"name":"chorus-bench"}}"#
        );
        assert_eq!(
            c.subscribe("r0").data,
            br#"{"id":2,"subscribe":{"channel":"r0"}}"#
        );
        let mut ev = Vec::new();
        c.on_message(
            br#"{"id":1,"connect":{"client":"abc","version":"6.9.1","ping":25,"pong":true}}"#,
            &mut ev,
        );
        c.on_message(br#"{"id":2,"subscribe":{}}"#, &mut ev);
        assert_eq!(ev, vec![Event::Connected, Event::Subscribed]);
    }

    #[test]
    fn publish_splices_the_payload_as_data() {
        let mut c = Client::new();
        let _ = c.hello();
        let body = payload::make(5, 6, 7, 100);
        let out = c.publish("r1", &body);
        let v: serde_json::Value = serde_json::from_slice(&out.data).expect("JSON");
        assert_eq!(v["id"], 2);
        assert_eq!(v["publish"]["channel"], "r1");
        assert_eq!(
            payload::parse_json(&v["publish"]["data"]),
            payload::parse(&body)
        );
    }

    #[test]
    fn batched_pushes_pings_and_publish_replies_decode_line_by_line() {
        let mut c = Client::new();
        let p1 = String::from_utf8(payload::make(11, 3, 0, 80)).expect("utf8");
        let msg = format!(
            "{{\"push\":{{\"channel\":\"r0\",\"pub\":{{\"data\":{p1},\"info\":{{\"client\":\"x\"}}}}}}}}\n{{}}\n{{\"id\":9,\"publish\":{{}}}}\n{{\"push\":{{\"channel\":\"r0\",\"pub\":{{\"data\":{{\"other\":1}}}}}}}}"
        );
        let mut ev = Vec::new();
        c.on_message(msg.as_bytes(), &mut ev);
        assert_eq!(
            ev,
            vec![
                Event::Message(Some(Stamp {
                    sent_ns: 11,
                    client: 3
                })),
                Event::Reply(Out::text("{}")),
                Event::Message(None),
            ]
        );
    }

    #[test]
    fn refusals_disconnects_and_garbage_fail_the_session() {
        let mut c = Client::new();
        let mut ev = Vec::new();
        c.on_message(
            br#"{"id":2,"error":{"code":103,"message":"permission denied"}}"#,
            &mut ev,
        );
        c.on_message(
            br#"{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}"#,
            &mut ev,
        );
        c.on_message(b"not json", &mut ev);
        assert_eq!(ev.len(), 3);
        assert!(matches!(&ev[0], Event::Error(e) if e.contains("permission denied")));
        assert!(ev.iter().all(|e| matches!(e, Event::Error(_))));
    }
}
