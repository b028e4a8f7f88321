//! Protocol adapters, sans IO: each turns "say hello / join a room / publish"
//! into WebSocket messages and turns received WebSocket messages into
//! [`Event`]s. The connection loop in `worker.rs` moves the bytes.

pub mod centrifugo;
pub mod mqtt;
pub mod nats;
pub mod phoenix;

use std::fmt;
use std::str::FromStr;

use chorus_core::ws::Opcode;
use serde::{Deserialize, Serialize};

use crate::payload::Stamp;

/// A system under test, named as in results and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Chorus,
    Nats,
    Centrifugo,
    Rabbitmq,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Chorus => "chorus",
            System::Nats => "nats",
            System::Centrifugo => "centrifugo",
            System::Rabbitmq => "rabbitmq",
        }
    }

    /// How the table heads the column.
    pub fn label(self) -> &'static str {
        match self {
            System::Chorus => "Chorus",
            System::Nats => "NATS",
            System::Centrifugo => "Centrifugo",
            System::Rabbitmq => "RabbitMQ Web-MQTT",
        }
    }

    /// Request path of the WebSocket endpoint.
    pub fn ws_path(self) -> &'static str {
        match self {
            System::Chorus => "/realtime/v1/websocket?apikey=bench&vsn=2.0.0",
            System::Nats => "/",
            System::Centrifugo => "/connection/websocket",
            System::Rabbitmq => "/ws",
        }
    }

    /// `Sec-WebSocket-Protocol` to ask for, if the server requires one.
    pub fn subprotocol(self) -> Option<&'static str> {
        match self {
            System::Rabbitmq => Some("mqtt"),
            _ => None,
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for System {
    type Err = String;
    fn from_str(s: &str) -> Result<System, String> {
        match s {
            "chorus" => Ok(System::Chorus),
            "nats" => Ok(System::Nats),
            "centrifugo" => Ok(System::Centrifugo),
            "rabbitmq" | "mqtt" => Ok(System::Rabbitmq),
            other => Err(format!(
                "unknown system {other:?} (chorus, nats, centrifugo, rabbitmq)"
            )),
        }
    }
}

/// One WebSocket data message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Out {
    pub opcode: Opcode,
    pub data: Vec<u8>,
}

impl Out {
    pub fn text(s: impl Into<String>) -> Out {
        Out {
            opcode: Opcode::Text,
            data: s.into().into_bytes(),
        }
    }

    pub fn binary(data: Vec<u8>) -> Out {
        Out {
            opcode: Opcode::Binary,
            data,
        }
    }
}

/// What a received WebSocket message meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The protocol-level session is open (CONNACK, NATS PONG to CONNECT).
    Connected,
    /// The room subscription is confirmed (join ok, SUBACK, PONG after SUB).
    Subscribed,
    /// A room message; `None` when its payload carried no stamp.
    Message(Option<Stamp>),
    /// A presence frame (Phoenix `presence_state` / `presence_diff`).
    Presence,
    /// Something to send back right away (NATS PONG to a server PING).
    Reply(Out),
    /// The server refused something; the session is failed.
    Error(String),
}

/// One client session of some system.
#[derive(Debug)]
pub enum Adapter {
    Phoenix(phoenix::Client),
    Nats(nats::Client),
    Centrifugo(centrifugo::Client),
    Mqtt(mqtt::Client),
}

impl Adapter {
    /// A session of `system`; `presence` (Chorus only) joins with presence
    /// on under the key `u<client_id>`.
    pub fn new(system: System, client_id: u64, presence: bool) -> Adapter {
        match system {
            System::Chorus if presence => {
                Adapter::Phoenix(phoenix::Client::with_presence(format!("u{client_id}")))
            }
            System::Chorus => Adapter::Phoenix(phoenix::Client::new()),
            System::Nats => Adapter::Nats(nats::Client::new()),
            System::Centrifugo => Adapter::Centrifugo(centrifugo::Client::new()),
            System::Rabbitmq => Adapter::Mqtt(mqtt::Client::new(client_id)),
        }
    }

    /// Messages to send once the WebSocket is open.
    pub fn hello(&mut self) -> Vec<Out> {
        match self {
            Adapter::Phoenix(_) => Vec::new(),
            Adapter::Nats(c) => c.hello(),
            Adapter::Centrifugo(c) => c.hello(),
            Adapter::Mqtt(c) => c.hello(),
        }
    }

    /// True when the session is usable right after the WebSocket opens,
    /// without waiting for a [`Event::Connected`].
    pub fn connected_on_open(&self) -> bool {
        matches!(self, Adapter::Phoenix(_))
    }

    pub fn subscribe(&mut self, room: &str) -> Vec<Out> {
        match self {
            Adapter::Phoenix(c) => vec![c.join(room)],
            Adapter::Nats(c) => c.subscribe(room),
            Adapter::Centrifugo(c) => vec![c.subscribe(room)],
            Adapter::Mqtt(c) => vec![c.subscribe(room)],
        }
    }

    /// The join again after the server refused it saying to retry (Chorus:
    /// a cluster's home node that did not answer in time), as realtime-js
    /// rejoins; `None` for protocols without such a refusal.
    pub fn rejoin(&mut self, room: &str) -> Option<Out> {
        match self {
            Adapter::Phoenix(c) => Some(c.rejoin(room)),
            _ => None,
        }
    }

    pub fn publish(&mut self, room: &str, payload: &[u8]) -> Out {
        match self {
            Adapter::Phoenix(c) => c.publish(room, payload),
            Adapter::Nats(c) => c.publish(room, payload),
            Adapter::Centrifugo(c) => c.publish(room, payload),
            Adapter::Mqtt(c) => c.publish(room, payload),
        }
    }

    /// A presence update with `meta` (`None` when the session has no
    /// presence).
    pub fn track(&mut self, room: &str, meta: serde_json::Value) -> Option<Out> {
        match self {
            Adapter::Phoenix(c) if c.presence_on() => Some(c.track(room, meta)),
            _ => None,
        }
    }

    /// The keep-alive message, sent every [`Adapter::heartbeat_every_s`];
    /// `None` where the server drives keep-alive (Centrifugo pings, the
    /// client answers).
    pub fn heartbeat(&mut self) -> Option<Out> {
        match self {
            Adapter::Phoenix(c) => Some(c.heartbeat()),
            Adapter::Nats(c) => Some(c.heartbeat()),
            Adapter::Centrifugo(_) => None,
            Adapter::Mqtt(_) => Some(Out::binary(mqtt::PINGREQ.to_vec())),
        }
    }

    pub fn heartbeat_every_s(&self) -> u64 {
        match self {
            // realtime-js' interval.
            Adapter::Phoenix(_) => 25,
            // NATS pings every 2 min by default; answering is what matters.
            Adapter::Nats(_) => 60,
            // Unused: the server pings every 25 s (`client.ping_interval`).
            Adapter::Centrifugo(_) => 25,
            // Half the MQTT keep-alive we announce.
            Adapter::Mqtt(_) => mqtt::KEEPALIVE_S as u64 / 2,
        }
    }

    /// Feeds one received data message.
    pub fn on_message(&mut self, binary: bool, data: &[u8], out: &mut Vec<Event>) {
        match self {
            Adapter::Phoenix(c) => c.on_message(binary, data, out),
            Adapter::Nats(c) => c.on_bytes(data, out),
            Adapter::Centrifugo(c) => c.on_message(data, out),
            Adapter::Mqtt(c) => c.on_bytes(data, out),
        }
    }
}
