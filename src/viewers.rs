//! The channel side of selective presence (`chorus_core::selective`, spec in
//! `docs/ROOMS.md`): a channel's viewers and their modes, the room host read
//! through the data service, recent chatters, and delivery. Every push is
//! encoded once per serializer and queued on all its viewers' outlets in one
//! host call, so a diff every plain viewer sees costs two encodings however
//! many viewers there are.

use std::time::{Duration, Instant};

use chorus_core::config::PresenceConfig;
use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::metrics::Metric;
use chorus_core::phoenix::{Outbound, Vsn};
use chorus_core::presence::{Diff, Presence};
use chorus_core::room::parse_lane;
use chorus_core::selective::{Limits, Member, Mode, Push, Selective, ViewerId};
use serde_json::{json, Value};

use crate::channel::encode_ws;
use crate::host;
use crate::msg::Outlet;

/// The room host is read again (from the data service's cache) at most
/// this often, and only while the room is, or is about to become, large.
const HOST_REFRESH: Duration = Duration::from_secs(1);

/// Where a viewer's frames go: its outlet, and whether it speaks 2.0.0.
#[derive(Debug, Clone, Copy)]
pub struct Addr {
    pub outlet: Outlet,
    pub v2: bool,
}

/// The selective-presence state of one channel process.
pub struct Viewers {
    sel: Selective<Addr>,
    /// The room id of a room lane (`room:<id>:<lane>`): its state names the host.
    room: Option<String>,
    host_read: Option<Instant>,
    /// Viewers in selective mode, counted in `chorus_presence_subscriptions`.
    subscribed: i64,
}

fn now_ms() -> u64 {
    crate::channel::now_ms()
}

impl Viewers {
    /// No viewers yet, for the channel of `topic`.
    pub fn new(topic: &str, config: &PresenceConfig) -> Viewers {
        Viewers {
            sel: Selective::new(Limits::from_config(config)),
            room: parse_lane(topic).map(|(id, _)| id.to_string()),
            host_read: None,
            subscribed: 0,
        }
    }

    /// Reads the room's `host` when a relevant set may need it.
    fn refresh_host(&mut self, presence: &Presence) {
        let Some(room) = &self.room else {
            return;
        };
        let needed =
            self.sel.is_large() || presence.key_count() > self.sel.limits().large_room_threshold;
        if !needed || self.host_read.is_some_and(|t| t.elapsed() < HOST_REFRESH) {
            return;
        }
        self.host_read = Some(Instant::now());
        match host::data(&DataRequest::GetRoomState { room: room.clone() }) {
            DataResponse::RoomState { state } => {
                let host = state
                    .as_ref()
                    .and_then(|s| s.get("host"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.sel.set_host(host);
            }
            other => host::log(
                host::Level::Warn,
                &format!("room {room}: cannot read the host for presence: {other:?}"),
            ),
        }
    }

    /// A subscriber joined: sends what it sees of presence after its join
    /// reply (the full `presence_state` in a small room, its relevant set and
    /// `presence_count` in a large one).
    pub fn join(
        &mut self,
        id: ViewerId,
        addr: Addr,
        join_ref: &str,
        member: Member,
        presence: &Presence,
        topic: &str,
    ) {
        self.leave(id);
        self.refresh_host(presence);
        let pushes = self.sel.join(id, addr, member, presence, now_ms());
        for p in pushes {
            deliver(topic, Some(join_ref), p);
        }
    }

    /// A subscriber left (or died).
    pub fn leave(&mut self, id: ViewerId) {
        if let Some(Mode::Subscribed(_)) = self.sel.leave(id) {
            self.subscribed -= 1;
            host::metric(Metric::PresenceSubscriptions, -1);
        }
    }

    /// The member `key` published on the channel.
    pub fn chatted(&mut self, key: &str) {
        self.sel.chatted(key, now_ms());
    }

    /// `presence_subscribe` from viewer `id`: answered `{keys: n}` (or the
    /// cap error), then its `presence_state` or `presence_diff`.
    pub fn subscribe(
        &mut self,
        id: ViewerId,
        add: &[String],
        remove: &[String],
        refs: (String, Option<String>),
        presence: &Presence,
        topic: &str,
    ) {
        let Some(addr) = self.sel.addr(id) else {
            return;
        };
        let (join_ref, msg_ref) = refs;
        match self.sel.subscribe(id, add, remove, presence) {
            Ok(done) => {
                let reply = Outbound::reply(
                    Some(join_ref.clone()),
                    msg_ref,
                    topic,
                    "ok",
                    json!({ "keys": done.keys }),
                );
                send_one(addr, &reply);
                if done.first {
                    self.subscribed += 1;
                    host::metric(Metric::PresenceSubscriptions, 1);
                }
                for p in done.pushes {
                    deliver(topic, Some(&join_ref), p);
                }
            }
            Err(e) => {
                let reply = Outbound::reply(
                    Some(join_ref),
                    msg_ref,
                    topic,
                    "error",
                    json!({ "reason": e.to_string() }),
                );
                send_one(addr, &reply);
            }
        }
    }

    /// Sends each viewer its part of a channel diff (already applied to
    /// `presence`), and what crossing the large-room threshold sends.
    pub fn fan_out(&mut self, diff: &Diff, presence: &Presence, topic: &str) {
        self.refresh_host(presence);
        self.sel
            .fan_out(diff, presence, now_ms(), &mut |p| deliver(topic, None, p));
    }

    /// Sends a throttled `presence_count` once it is due.
    pub fn tick(&mut self, topic: &str) {
        if !self.sel.is_large() {
            return;
        }
        if let Some(p) = self.sel.tick(now_ms()) {
            deliver(topic, None, p);
        }
    }

    /// How long the channel may wait before [`Viewers::tick`] has work.
    pub fn wait(&self) -> Duration {
        if !self.sel.is_large() {
            return Duration::MAX;
        }
        self.sel
            .wait_ms(now_ms())
            .map_or(Duration::MAX, Duration::from_millis)
    }
}

impl Drop for Viewers {
    fn drop(&mut self) {
        if self.subscribed != 0 {
            host::metric(Metric::PresenceSubscriptions, -self.subscribed);
        }
    }
}

/// Encodes `push` once per serializer its viewers use and queues it on all
/// of them. Pushes answering one viewer's join or subscription carry its
/// `join_ref`; shared ones carry none (like Phoenix broadcasts).
fn deliver(topic: &str, join_ref: Option<&str>, push: Push<Addr>) {
    let msg = Outbound::push(
        join_ref.map(str::to_string),
        topic,
        push.event,
        push.payload,
    );
    let (v2, v1): (Vec<Addr>, Vec<Addr>) = push.to.into_iter().partition(|a| a.v2);
    for (vsn, addrs) in [(Vsn::V1, v1), (Vsn::V2, v2)] {
        if addrs.is_empty() {
            continue;
        }
        if let Some(bytes) = encode_ws(vsn, &msg) {
            let outlets: Vec<Outlet> = addrs.iter().map(|a| a.outlet).collect();
            crate::relay::fanout(vec![(bytes.as_slice(), outlets)], host::Route::CONTROL);
        }
    }
}

fn send_one(addr: Addr, msg: &Outbound) {
    let vsn = if addr.v2 { Vsn::V2 } else { Vsn::V1 };
    if let Some(bytes) = encode_ws(vsn, msg) {
        crate::relay::send(addr.outlet, &bytes, host::Route::CONTROL);
    }
}
