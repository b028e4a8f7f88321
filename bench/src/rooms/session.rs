//! A realtime-js-like Phoenix session (vsn 2.0.0) on several topics at once,
//! sans IO, for the room scenarios: join a lane with a presence key, track,
//! leave, `presence_subscribe`, broadcasts; and what the server's frames
//! mean for the scenarios. Built on Chorus' own codec
//! (`chorus_core::phoenix::client`), like the peer-comparison adapter.

use std::collections::HashMap;

use chorus_core::phoenix::client::decode_server;
use chorus_core::phoenix::{FrameRef, Inbound, Message, Outbound, Payload, UserBroadcast, Vsn};
use serde_json::{json, Value};

use crate::proto::phoenix::encode;
use crate::proto::Out;

/// What a push was, so its reply can be told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Join,
    Track,
    Leave,
    Subscribe,
    Broadcast,
    Heartbeat,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Join => "phx_join",
            Op::Track => "presence track",
            Op::Leave => "phx_leave",
            Op::Subscribe => "presence_subscribe",
            Op::Broadcast => "broadcast",
            Op::Heartbeat => "heartbeat",
        }
    }
}

/// What one server frame meant.
#[derive(Debug, Clone, PartialEq)]
pub enum RoomEvent {
    /// An ok reply to a push of ours.
    Ok {
        op: Op,
        topic: String,
        response: Value,
    },
    /// An error reply to a push of ours, with the server's reason.
    Refused {
        op: Op,
        topic: String,
        reason: String,
    },
    /// A `presence_diff`: the joined keys with the `t` stamps of their
    /// metas, and how many keys left.
    PresenceDiff {
        topic: String,
        joins: Vec<(String, Vec<u64>)>,
        leaves: usize,
    },
    /// A user broadcast (kind 4); `retained` when its meta says so (the
    /// audio lane's state sent right after a join).
    Broadcast {
        topic: String,
        event: String,
        payload: Value,
        retained: bool,
    },
    /// A `system` push (peak mode on/off, errors).
    System(Value),
    /// `phx_error` or `phx_close` on a topic.
    Closed { topic: String, event: String },
    /// Anything else (`presence_state`, `presence_count`, replies to pushes
    /// we no longer track).
    Other,
    /// A frame the codec could not read.
    Garbage(String),
}

/// One socket's client state.
#[derive(Debug, Default)]
pub struct Session {
    next_ref: u64,
    /// topic → the join_ref of its current join.
    joins: HashMap<String, String>,
    /// msg_ref → what it was for; replies remove them.
    pending: HashMap<String, (Op, String)>,
}

/// realtime-js' wire topic for a room lane.
pub fn topic(name: &str) -> String {
    format!("realtime:{name}")
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    fn take_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn push(&mut self, op: Op, topic: &str, event: &str, payload: Value) -> Out {
        let msg_ref = self.take_ref();
        let join_ref = if op == Op::Heartbeat {
            None
        } else {
            self.joins.get(topic).cloned()
        };
        // Broadcasts with `ack: false` get no reply unless refused; keeping
        // them would grow the map, so only refusals are matched (by topic).
        if op != Op::Broadcast {
            self.pending
                .insert(msg_ref.clone(), (op, topic.to_string()));
        }
        encode(&Inbound::Push(Message {
            join_ref,
            msg_ref: Some(msg_ref),
            topic: topic.to_string(),
            event: event.to_string(),
            payload: Payload::Json(payload),
        }))
    }

    /// `phx_join` as realtime-js sends it, with `config.presence.key` =
    /// `key` (empty: none) and presence events on when `presence`.
    pub fn join(&mut self, topic: &str, key: &str, presence: bool) -> Out {
        let join_ref = {
            self.next_ref += 1;
            self.next_ref.to_string()
        };
        self.joins.insert(topic.to_string(), join_ref.clone());
        self.pending
            .insert(join_ref.clone(), (Op::Join, topic.to_string()));
        let payload = json!({
            "config": {
                "broadcast": {"ack": false, "self": false},
                "presence": {"key": key, "enabled": presence},
                "postgres_changes": [],
                "private": false
            }
        });
        encode(&Inbound::Push(Message {
            join_ref: Some(join_ref.clone()),
            msg_ref: Some(join_ref),
            topic: topic.to_string(),
            event: "phx_join".into(),
            payload: Payload::Json(payload),
        }))
    }

    /// realtime-js' `channel.track(meta)`.
    pub fn track(&mut self, topic: &str, meta: Value) -> Out {
        let payload = json!({"type": "presence", "event": "track", "payload": meta});
        self.push(Op::Track, topic, "presence", payload)
    }

    /// `channel.unsubscribe()`: `phx_leave`.
    pub fn leave(&mut self, topic: &str) -> Out {
        self.push(Op::Leave, topic, "phx_leave", json!({}))
    }

    /// The selective-presence extension (docs/ROOMS.md).
    pub fn presence_subscribe(&mut self, topic: &str, add: &[String]) -> Out {
        self.push(
            Op::Subscribe,
            topic,
            "presence_subscribe",
            json!({ "add": add }),
        )
    }

    /// A broadcast push (kind 3, JSON payload), as `channel.send` does.
    pub fn broadcast(&mut self, topic: &str, event: &str, payload: Value) -> Out {
        let msg_ref = self.take_ref();
        encode(&Inbound::Broadcast {
            join_ref: self.joins.get(topic).cloned(),
            msg_ref: Some(msg_ref),
            broadcast: UserBroadcast {
                topic: topic.to_string(),
                event: event.to_string(),
                meta: None,
                payload: Payload::Json(payload),
            },
        })
    }

    /// `[null, "<ref>", "phoenix", "heartbeat", {}]`.
    pub fn heartbeat(&mut self) -> Out {
        self.push(Op::Heartbeat, "phoenix", "heartbeat", json!({}))
    }

    /// Reads one server frame.
    pub fn on_message(&mut self, binary: bool, data: &[u8]) -> RoomEvent {
        let frame = if binary {
            FrameRef::Binary(data)
        } else {
            match std::str::from_utf8(data) {
                Ok(text) => FrameRef::Text(text),
                Err(_) => return RoomEvent::Garbage("text frame is not UTF-8".into()),
            }
        };
        match decode_server(Vsn::V2, frame) {
            Ok(Outbound::UserBroadcast(b)) => {
                let retained = b
                    .meta
                    .as_ref()
                    .and_then(|m| m.get("retained"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let payload = match b.payload {
                    Payload::Json(v) => v,
                    Payload::Binary(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                RoomEvent::Broadcast {
                    topic: b.topic,
                    event: b.event,
                    payload,
                    retained,
                }
            }
            Ok(Outbound::Reply {
                msg_ref,
                status,
                response,
                topic,
                ..
            }) => {
                let response = match response {
                    Payload::Json(v) => v,
                    Payload::Binary(_) => Value::Null,
                };
                let known = msg_ref.as_ref().and_then(|r| self.pending.remove(r));
                // Refused broadcasts are not kept in `pending`.
                let (op, topic) = known.unwrap_or((Op::Broadcast, topic));
                if status == "ok" {
                    if op == Op::Broadcast {
                        return RoomEvent::Other;
                    }
                    RoomEvent::Ok {
                        op,
                        topic,
                        response,
                    }
                } else {
                    let reason = response
                        .get("reason")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{status} {response}"));
                    RoomEvent::Refused { op, topic, reason }
                }
            }
            Ok(Outbound::Message(m)) => match m.event.as_str() {
                "presence_diff" => {
                    let Payload::Json(v) = &m.payload else {
                        return RoomEvent::Garbage("binary presence_diff".into());
                    };
                    RoomEvent::PresenceDiff {
                        topic: m.topic,
                        joins: diff_joins(v),
                        leaves: v
                            .get("leaves")
                            .and_then(Value::as_object)
                            .map_or(0, |o| o.len()),
                    }
                }
                "system" => match m.payload {
                    Payload::Json(v) => RoomEvent::System(v),
                    Payload::Binary(_) => RoomEvent::Other,
                },
                "phx_error" | "phx_close" => {
                    // A close answering our own leave is expected.
                    if m.event == "phx_close"
                        && m.join_ref.is_some()
                        && self.joins.get(&m.topic) != m.join_ref.as_ref()
                    {
                        return RoomEvent::Other;
                    }
                    RoomEvent::Closed {
                        topic: m.topic,
                        event: m.event,
                    }
                }
                // A plain Phoenix broadcast carrying a user event (how some
                // server pushes such as `reaction_counts` may travel).
                "broadcast" => match m.payload {
                    Payload::Json(v) => RoomEvent::Broadcast {
                        topic: m.topic,
                        event: v
                            .get("event")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_string(),
                        payload: v.get("payload").cloned().unwrap_or(Value::Null),
                        retained: false,
                    },
                    Payload::Binary(_) => RoomEvent::Other,
                },
                _ => RoomEvent::Other,
            },
            Err(e) => RoomEvent::Garbage(format!("undecodable server frame: {e}")),
        }
    }

    /// Forgets a topic after its `phx_leave` (the next join gets a new ref).
    pub fn forget(&mut self, topic: &str) {
        self.joins.remove(topic);
    }
}

/// `{"joins": {"k": {"metas": [{"t": ns, …}]}}}` → `[("k", [ns])]`.
fn diff_joins(v: &Value) -> Vec<(String, Vec<u64>)> {
    let Some(joins) = v.get("joins").and_then(Value::as_object) else {
        return Vec::new();
    };
    joins
        .iter()
        .map(|(k, entry)| {
            let stamps = entry
                .get("metas")
                .and_then(Value::as_array)
                .map(|metas| {
                    metas
                        .iter()
                        .filter_map(|m| m.get("t").and_then(Value::as_u64))
                        .collect()
                })
                .unwrap_or_default();
            (k.clone(), stamps)
        })
        .collect()
}

/// A cheap look at a text frame: is it a `presence_diff` push? Lets the
/// join phase skip parsing the O(n²) diffs of a join storm.
pub fn looks_like_presence_diff(data: &[u8]) -> bool {
    let head = &data[..data.len().min(160)];
    head.windows(17).any(|w| w == b",\"presence_diff\",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus_core::phoenix::{encode as server_encode, Frame};

    fn server_text(msg: &Outbound) -> Vec<u8> {
        match server_encode(Vsn::V2, msg).expect("encodes") {
            Frame::Text(t) => t.into_bytes(),
            Frame::Binary(b) => b,
        }
    }

    #[test]
    fn join_track_and_their_replies() {
        let mut s = Session::new();
        let t = topic("room:b:chat");
        let join = s.join(&t, "u7", true);
        let v: Value = serde_json::from_slice(&join.data).expect("JSON");
        assert_eq!(v[0], "1");
        assert_eq!(v[4]["config"]["presence"]["key"], "u7");
        let track = s.track(&t, json!({"t": 5}));
        let v: Value = serde_json::from_slice(&track.data).expect("JSON");
        assert_eq!(v[0], "1", "track carries the join's ref");
        assert_eq!(v[3], "presence");
        assert_eq!(v[4]["payload"]["t"], 5);
        let ok = server_text(&Outbound::reply(
            Some("1".into()),
            Some("2".into()),
            &t,
            "ok",
            json!({}),
        ));
        assert!(matches!(
            s.on_message(false, &ok),
            RoomEvent::Ok { op: Op::Track, .. }
        ));
        let refused = server_text(&Outbound::reply(
            Some("1".into()),
            Some("1".into()),
            &t,
            "error",
            json!({"reason": "nope"}),
        ));
        assert_eq!(
            s.on_message(false, &refused),
            RoomEvent::Refused {
                op: Op::Join,
                topic: t.clone(),
                reason: "nope".into()
            }
        );
    }

    #[test]
    fn diffs_give_joined_keys_with_stamps() {
        let mut s = Session::new();
        let t = topic("room:b:chat");
        let _ = s.join(&t, "u1", true);
        let diff = server_text(&Outbound::push(
            Some("1".into()),
            &t,
            "presence_diff",
            json!({"joins": {"u2": {"metas": [{"phx_ref": "x", "t": 42}]}},
                   "leaves": {"u3": {"metas": [{"phx_ref": "y"}]}}}),
        ));
        assert!(looks_like_presence_diff(&diff));
        assert_eq!(
            s.on_message(false, &diff),
            RoomEvent::PresenceDiff {
                topic: t,
                joins: vec![("u2".into(), vec![42])],
                leaves: 1
            }
        );
        assert!(!looks_like_presence_diff(
            b"[\"1\",null,\"x\",\"presence_state\",{}]"
        ));
    }

    #[test]
    fn broadcasts_and_refused_broadcasts() {
        let mut s = Session::new();
        let t = topic("room:b:reactions");
        let _ = s.join(&t, "", false);
        let out = s.broadcast(&t, "reaction", json!({"emoji": "🔥"}));
        assert_eq!(out.data[0], 3, "kind-3 broadcast push");
        let bcast = server_text(&Outbound::user_broadcast(
            &t,
            "reaction_counts",
            json!({"counts": {"🔥": 3}}),
        ));
        assert!(matches!(
            s.on_message(true, &bcast),
            RoomEvent::Broadcast { ref event, retained: false, .. } if event == "reaction_counts"
        ));
        let limited = server_text(&Outbound::reply(
            Some("1".into()),
            Some("2".into()),
            &t,
            "error",
            json!({"reason": "rate_limited: at most 100 messages per second"}),
        ));
        assert!(matches!(
            s.on_message(false, &limited),
            RoomEvent::Refused { op: Op::Broadcast, ref reason, .. } if reason.starts_with("rate_limited")
        ));
        assert!(matches!(
            s.on_message(true, &[4, 200]),
            RoomEvent::Garbage(_)
        ));
    }
}
