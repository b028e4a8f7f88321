//! Channel servers: one process per active topic, owning its subscribers,
//! its presence and its recent history, so every subscriber sees one total
//! order. Channels are found through a consistent-hash ring of directory
//! shards: the ring (in `core`) maps a topic to its directory, found in the
//! lunatic registry; the directory spawns the channel under the `channels`
//! dynamic supervisor the first time it is asked for it, and forgets it when
//! the channel goes idle.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use chorus_core::config::{Config, PresenceConfig, RoomsConfig};
use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::lanes::{self, Lane};
use chorus_core::metrics::Metric;
use chorus_core::phoenix::{self, Frame, Outbound, Payload, UserBroadcast, Vsn};
use chorus_core::presence::{Diff, Presence};
use chorus_core::ring::HashRing;
use chorus_core::ws;
use lunatic::{host as lhost, Mailbox, Process, Tag};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use supervisors::{ChildRef, DynamicSupervisor, Inbox, Incoming};

use crate::gateway::session::SessionMsg;
use crate::host;

mod peak;

/// Registered name of the channels' dynamic supervisor.
pub const CHANNELS: &str = "channels";
/// Directory shards on one node; each owns the topics the ring gives it.
pub const DIRECTORIES: u32 = 4;
/// Virtual nodes per directory on the ring.
const VNODES: u32 = 64;
/// How long a caller waits for a directory to answer.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most metas under one presence key (Supabase's limit).
const MAX_METAS_PER_KEY: usize = 10;

/// A JSON value in transit between processes: bincode cannot carry
/// `serde_json::Value` (it needs `deserialize_any`), so JSON travels as text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Body {
    Json(String),
    Binary(Vec<u8>),
}

impl Body {
    pub fn from_payload(p: &Payload) -> Body {
        match p {
            Payload::Json(v) => Body::Json(v.to_string()),
            Payload::Binary(b) => Body::Binary(b.clone()),
        }
    }

    fn to_payload(&self) -> Payload {
        match self {
            Body::Json(s) => Payload::Json(serde_json::from_str(s).unwrap_or(Value::Null)),
            Body::Binary(b) => Payload::Binary(b.clone()),
        }
    }
}

/// A subscriber's view of a join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinReq {
    pub session: ChildRef<SessionMsg>,
    /// The session's outlet: where everything for this client is written.
    pub outlet: u64,
    pub join_ref: String,
    pub msg_ref: Option<String>,
    pub v2: bool,
    pub broadcast_self: bool,
    pub presence_key: String,
    pub presence_enabled: bool,
    /// `config.broadcast.replay`: `(since_ms, limit)` of stored messages to
    /// send after the join reply.
    #[serde(default)]
    pub replay: Option<(u64, u32)>,
    /// `config.chorus.batch`: in peak mode, receive broadcasts as one
    /// `batch` frame per period.
    #[serde(default)]
    pub batch: bool,
    /// Presence keys of the client's friends (JWT claim `friends`, then
    /// `config.presence.friends`): its relevant set in a large room.
    #[serde(default)]
    pub friends: Vec<String>,
}

/// A broadcast entering the channel, from a session or the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Publish {
    /// The publishing session, excluded from delivery unless it joined with
    /// `self: true`; `None` for the admin API.
    pub from: Option<u64>,
    pub event: String,
    pub payload: Body,
    /// `(join_ref, ref)` to acknowledge, when the join asked for `ack`.
    pub ack: Option<(String, Option<String>)>,
    /// `(node, pid, tag)` of an admin request waiting for the outcome of a
    /// chat-lane publish: the stored id, or the refusal's reason
    /// (`Result<String, String>`), so a REST post is answered after the write.
    #[serde(default)]
    pub reply: Option<(u64, u64, Tag)>,
}

impl Publish {
    /// Tells a waiting admin request how the publish ended.
    fn answer(&self, outcome: Result<String, String>) {
        if let Some((node, pid, tag)) = self.reply {
            // SAFETY: the admin API waits for exactly this type under `tag`.
            let to: Process<Result<String, String>> = unsafe { Process::new(node, pid) };
            to.tag_send(tag, outcome);
        }
    }
}

/// Everything a channel process receives.
#[derive(Debug, Serialize, Deserialize)]
pub enum ChannelMsg {
    Join(JoinReq),
    Leave {
        session: u64,
    },
    Publish(Publish),
    /// Track (`meta: Some`) or untrack (`None`) the session's presence,
    /// answered with an ok reply carrying `refs`.
    Presence {
        session: u64,
        meta: Option<String>,
        refs: (String, Option<String>),
    },
    /// From the directory: the idle channel may stop now.
    Stop,
    /// Audio sync on a room's audio lane (see `crate::room`).
    Room(crate::room::RoomMsg),
    /// A process module's verdict (see `crate::modules`); one arriving here
    /// came after the channel stopped waiting, and is ignored.
    ModuleAnswer(crate::modules::Reply),
    /// Test-only fault switch (`node.fault_injection`): the channel panics,
    /// as a bug would make it.
    Crash,
    /// `presence_subscribe` (selective presence, see `crate::viewers`),
    /// answered by the channel, which knows the set.
    PresenceSubscribe {
        session: u64,
        add: Vec<String>,
        remove: Vec<String>,
        refs: (String, Option<String>),
    },
}

/// Arguments of a channel process (plain data, kept for restarts).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelArgs {
    pub topic: String,
    pub directory: String,
    pub idle_ms: u64,
    pub history: u32,
    /// `limits.channel_history_bytes`: payload bytes of that history.
    #[serde(default)]
    pub history_bytes: u32,
    /// `limits.presence_bytes`: presence keys and metas this channel holds.
    #[serde(default)]
    pub presence_bytes: u32,
    pub sweep_ms: u64,
    pub presence_shards: u32,
    /// Peak mode settings.
    pub rooms: RoomsConfig,
    /// The process modules a chat lane asks about each message.
    pub modules: crate::modules::Hooks,
    /// Selective presence and large rooms (`[presence]`).
    pub presence: PresenceConfig,
}

/// Messages to a directory shard.
#[derive(Debug, Serialize, Deserialize)]
pub enum DirMsg {
    /// Find (spawning if needed) the channel of `topic`; the answer goes to
    /// process `(node, pid)` tagged `tag`. With `spawn: false` a missing
    /// channel is answered with `None` (the admin API does not start
    /// channels nobody listens to).
    Locate {
        topic: String,
        spawn: bool,
        reply: (u64, u64),
        tag: Tag,
    },
    /// A channel has had no subscriber for its idle period.
    Idle { topic: String, pid: u64 },
    /// A channel process started (first start or a supervisor's restart):
    /// the directory adopts it as the topic's channel unless another live
    /// one already serves the topic, which makes this one stop. So the
    /// directory always knows the live channel and no orphan stays behind.
    Live {
        topic: String,
        channel: ChildRef<ChannelMsg>,
    },
}

/// The name of directory shard `i` on this node.
pub fn directory_name(i: u32) -> String {
    format!("chorus-dir-{i}")
}

fn ring() -> HashRing<String> {
    let mut ring = HashRing::new(VNODES);
    for i in 0..DIRECTORIES {
        ring.add(directory_name(i));
    }
    ring
}

/// The channel of `topic`, if it runs or (with `spawn`) once started.
pub fn locate(topic: &str, spawn: bool) -> Option<ChildRef<ChannelMsg>> {
    let ring = ring();
    let dir_name = ring.owner(topic)?.clone();
    let dir = ChildRef::<DirMsg>::lookup(&dir_name)?;
    let tag = Tag::new();
    dir.send(DirMsg::Locate {
        topic: topic.to_string(),
        spawn,
        reply: (lhost::node_id(), lhost::process_id()),
        tag,
    });
    // SAFETY: the directory answers with exactly this type under `tag`, and a
    // tagged receive only takes the message carrying that tag.
    let mailbox: Mailbox<Option<ChildRef<ChannelMsg>>> = unsafe { Mailbox::new() };
    mailbox
        .tag_receive_timeout(&[tag], LOCATE_TIMEOUT)
        .ok()
        .flatten()
}

/// A directory shard process.
pub fn directory(args: (String, Config), inbox: Inbox<DirMsg>) {
    let (name, config) = args;
    let mut channels: HashMap<String, ChildRef<ChannelMsg>> = HashMap::new();
    let sweep_ms = (config.limits.heartbeat_timeout_ms / 2).max(500);
    loop {
        match inbox.receive() {
            Incoming::Shutdown => return,
            Incoming::Message(DirMsg::Locate {
                topic,
                spawn,
                reply,
                tag,
            }) => {
                let found = match channels.get(&topic) {
                    Some(c) if c.is_alive() => Some(*c),
                    _ if spawn => {
                        let args = ChannelArgs {
                            topic: topic.clone(),
                            directory: name.clone(),
                            idle_ms: config.limits.channel_idle_ms,
                            history: config.limits.channel_history,
                            history_bytes: config.limits.channel_history_bytes,
                            presence_bytes: config.limits.presence_bytes,
                            sweep_ms,
                            presence_shards: config.presence.shards,
                            rooms: config.rooms.clone(),
                            modules: crate::modules::Hooks::for_topic(&config, &topic),
                            presence: config.presence.clone(),
                        };
                        match DynamicSupervisor::<ChannelArgs, ChannelMsg>::lookup(CHANNELS)
                            .map(|sup| sup.start_child(args))
                        {
                            Some(Ok(child)) => {
                                channels.insert(topic, child);
                                Some(child)
                            }
                            _ => {
                                host::log(host::Level::Error, "cannot start a channel process");
                                None
                            }
                        }
                    }
                    _ => None,
                };
                // SAFETY: `locate` waits for exactly this type under `tag`.
                let to: Process<Option<ChildRef<ChannelMsg>>> =
                    unsafe { Process::new(reply.0, reply.1) };
                to.tag_send(tag, found);
            }
            Incoming::Message(DirMsg::Idle { topic, pid }) => {
                if let Some(c) = channels.get(&topic) {
                    if c.pid() == pid {
                        c.send(ChannelMsg::Stop);
                        channels.remove(&topic);
                    }
                }
            }
            Incoming::Message(DirMsg::Live { topic, channel }) => match channels.get(&topic) {
                Some(c) if *c == channel => {}
                Some(c) if c.is_alive() => {
                    // A restarted incarnation came up after a fresh channel
                    // took over the topic: it has no subscriber and goes.
                    channel.send(ChannelMsg::Stop);
                }
                _ => {
                    channels.insert(topic, channel);
                }
            },
        }
    }
}

struct Subscriber {
    session: ChildRef<SessionMsg>,
    outlet: u64,
    /// The join's ref, carried by pushes to this subscriber (`system`).
    join_ref: String,
    v2: bool,
    broadcast_self: bool,
    presence_key: String,
    /// Joined with `config.chorus.batch: true`.
    batch: bool,
}

struct Channel {
    topic: String,
    /// Chat lanes of rooms are persisted through the data service.
    persist: bool,
    presence_shards: u32,
    subs: HashMap<u64, Subscriber>,
    presence: Presence,
    history: VecDeque<Kept>,
    history_len: usize,
    /// Payload bytes in `history`, kept within `history_budget` (bytes, not
    /// only a count, so that big messages cannot outgrow the process).
    history_bytes: usize,
    history_budget: usize,
    /// The room state, on a room's audio lane.
    room: Option<crate::room::AudioLane>,
    /// Peak mode: rate, transitions and held deliveries (`channel/peak.rs`).
    peak: peak::PeakState,
    /// The process modules asked before a message is stored and delivered.
    modules: crate::modules::Screen,
    /// How each subscriber sees presence (selective presence, large rooms).
    viewers: crate::viewers::Viewers,
}

/// A message in a channel's in-memory recent history.
struct Kept {
    /// The stored message's id (chat lanes), as a decimal string.
    id: Option<String>,
    inserted_at: u64,
    event: String,
    body: Body,
}

impl Kept {
    /// What it counts against `limits.channel_history_bytes`.
    fn size(&self) -> usize {
        let body = match &self.body {
            Body::Json(text) => text.len(),
            Body::Binary(bytes) => bytes.len(),
        };
        body + self.event.len()
    }
}

/// A channel process.
pub fn channel(args: ChannelArgs, inbox: Inbox<ChannelMsg>) {
    host::metric(Metric::ChannelsActive, 1);
    host::log(
        host::Level::Debug,
        &format!("channel {} started", args.topic),
    );
    let mut ch = Channel {
        persist: is_chat_lane(&args.topic),
        presence_shards: args.presence_shards,
        topic: args.topic.clone(),
        subs: HashMap::new(),
        presence: Presence::with_budget(MAX_METAS_PER_KEY, args.presence_bytes as usize),
        history: VecDeque::new(),
        history_len: args.history as usize,
        history_bytes: 0,
        history_budget: args.history_bytes as usize,
        room: crate::room::AudioLane::for_topic(&args.topic),
        peak: peak::PeakState::new(&args.rooms, &args.topic),
        modules: args.modules.clone().bind(inbox.this()),
        viewers: crate::viewers::Viewers::new(&args.topic, &args.presence),
    };
    ch.refill();
    if let Some(dir) = ChildRef::<DirMsg>::lookup(&args.directory) {
        dir.send(DirMsg::Live {
            topic: args.topic.clone(),
            channel: inbox.this(),
        });
    }
    let idle = Duration::from_millis(args.idle_ms);
    let sweep = Duration::from_millis(args.sweep_ms);
    let mut idle_since = Some(Instant::now());
    let mut asked_to_stop = false;
    // Sweeps run on a clock, not only when the mailbox is quiet: a channel
    // that receives a message more often than every sweep period must still
    // drop its crashed subscribers (and their presences).
    let mut last_sweep = Instant::now();
    loop {
        let wait = sweep.saturating_sub(last_sweep.elapsed());
        let wait = ch.peak.wait().map_or(wait, |w| w.min(wait));
        match inbox.receive_timeout(wait.min(ch.viewers.wait())) {
            Some(Incoming::Shutdown) => break,
            Some(Incoming::Message(ChannelMsg::Stop)) => {
                if ch.subs.is_empty() {
                    ch.drain_for_restart(&inbox);
                    break;
                }
                asked_to_stop = false;
            }
            Some(Incoming::Message(msg)) => ch.handle(msg),
            None => {}
        }
        ch.peak_tick();
        ch.viewers.tick(&ch.topic);
        if last_sweep.elapsed() >= sweep {
            ch.sweep_dead();
            last_sweep = Instant::now();
        }
        if ch.subs.is_empty() {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= idle && !asked_to_stop {
                if let Some(dir) = ChildRef::<DirMsg>::lookup(&args.directory) {
                    dir.send(DirMsg::Idle {
                        topic: args.topic.clone(),
                        pid: lhost::process_id(),
                    });
                    asked_to_stop = true;
                }
            }
        } else {
            idle_since = None;
        }
    }
    ch.peak_end();
    host::metric(Metric::ChannelsActive, -1);
}

impl Channel {
    fn handle(&mut self, msg: ChannelMsg) {
        match msg {
            ChannelMsg::Join(j) => self.join(j),
            ChannelMsg::Leave { session } => self.remove(session),
            ChannelMsg::Publish(p) => self.publish(p),
            ChannelMsg::Presence {
                session,
                meta,
                refs,
            } => self.presence(session, meta, refs),
            ChannelMsg::Stop | ChannelMsg::ModuleAnswer(_) => {}
            ChannelMsg::Crash => panic!("fault injection: channel {} crashes", self.topic),
            ChannelMsg::Room(m) => match self.room.as_mut().map(|r| r.handle(m)) {
                Some(crate::room::Action::Publish(p)) => self.publish(p),
                Some(crate::room::Action::Error { from, refs, reason }) => {
                    if let Some(sub) = self.subs.get(&from) {
                        let err = Outbound::reply(
                            Some(refs.0),
                            refs.1,
                            &self.topic,
                            "error",
                            json!({ "reason": reason }),
                        );
                        send_outbound(sub.outlet, sub.v2, &err);
                    }
                }
                _ => {}
            },
            ChannelMsg::PresenceSubscribe {
                session,
                add,
                remove,
                refs,
            } => self
                .viewers
                .subscribe(session, &add, &remove, refs, &self.presence, &self.topic),
        }
    }

    fn join(&mut self, j: JoinReq) {
        self.peak_before_join();
        let pid = j.session.pid();
        // A second join of the same session replaces the first.
        if self.subs.contains_key(&pid) {
            self.remove(pid);
        }
        let reply = Outbound::reply(
            Some(j.join_ref.clone()),
            j.msg_ref.clone(),
            &self.topic,
            "ok",
            json!({"postgres_changes": []}),
        );
        send_outbound(j.outlet, j.v2, &reply);
        let member = chorus_core::selective::Member {
            key: j.presence_key.clone(),
            friends: j.friends,
            presence_enabled: j.presence_enabled,
        };
        let addr = crate::viewers::Addr {
            outlet: j.outlet,
            v2: j.v2,
        };
        self.viewers
            .join(pid, addr, &j.join_ref, member, &self.presence, &self.topic);
        if let Some((since_ms, limit)) = j.replay {
            self.replay(j.outlet, j.v2, since_ms, limit);
        }
        if let Some(retained) = self
            .room
            .as_ref()
            .and_then(|r| r.retained(&self.topic, j.v2))
        {
            send_outbound(j.outlet, j.v2, &retained);
        }
        self.subs.insert(
            pid,
            Subscriber {
                session: j.session,
                outlet: j.outlet,
                join_ref: j.join_ref,
                v2: j.v2,
                broadcast_self: j.broadcast_self,
                presence_key: j.presence_key,
                batch: j.batch,
            },
        );
    }

    fn remove(&mut self, session: u64) {
        if self.subs.remove(&session).is_some() {
            self.viewers.leave(session);
            let diff = self.presence.untrack(session);
            self.diff_out(diff);
        }
    }

    /// Drops subscribers whose session died without leaving (a crash):
    /// their presences leave within half a heartbeat timeout.
    fn sweep_dead(&mut self) {
        let dead: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| !s.session.is_alive())
            .map(|(pid, _)| *pid)
            .collect();
        for pid in dead {
            self.remove(pid);
        }
    }

    fn publish(&mut self, mut p: Publish) {
        let user = p
            .from
            .and_then(|from| self.subs.get(&from))
            .map(|s| s.presence_key.clone());
        if let Err(reason) =
            self.modules
                .screen(&self.topic, &p.event, user.as_deref(), &mut p.payload)
        {
            self.refuse(&p, &reason);
            return;
        }
        let mut stored = None;
        if self.persist {
            match self.store(&p) {
                Ok(id) => {
                    p.answer(Ok(id.0.clone()));
                    stored = Some(id);
                }
                Err(reason) => {
                    self.refuse(&p, &reason);
                    return;
                }
            }
        } else {
            p.answer(Ok(String::new()));
        }
        if let Some(sub) = p.from.and_then(|from| self.subs.get(&from)) {
            self.viewers.chatted(&sub.presence_key);
        }
        let payload = p.payload.to_payload();
        // In peak mode the broadcast is held and delivered with its period.
        if let Some(payload) = self.peak_hold(&p, payload) {
            let (lane, key) = broadcast_lane(&self.topic, &p.event, &payload);
            let route = host::Route {
                lane,
                topic: &self.topic,
                key: &key,
            };
            let frames = broadcast_frames(&self.topic, &p.event, payload);
            self.fan_out(&frames, route, |pid, sub| {
                Some(pid) == p.from && !sub.broadcast_self
            });
        }
        if let (Some(from), Some((join_ref, msg_ref))) = (p.from, p.ack) {
            if let Some(sub) = self.subs.get(&from) {
                let ok = Outbound::reply(Some(join_ref), msg_ref, &self.topic, "ok", json!({}));
                send_outbound(sub.outlet, sub.v2, &ok);
            }
        }
        let (id, inserted_at) = match stored {
            Some((id, at)) => (Some(id), at),
            None => (None, now_ms()),
        };
        self.keep(Kept {
            id,
            inserted_at,
            event: p.event,
            body: p.payload,
        });
    }

    /// Appends to the in-memory history within its count and byte budgets,
    /// dropping the oldest entries; a message bigger than the whole byte
    /// budget is not kept (logged and counted), never a reason to crash.
    fn keep(&mut self, kept: Kept) {
        if self.history_len == 0 {
            return;
        }
        let size = kept.size();
        if size > self.history_budget {
            host::metric(Metric::HistorySkipped, 1);
            host::log(
                host::Level::Warn,
                &format!(
                    "channel {}: a {size}-byte message is not kept in memory (limits.channel_history_bytes {})",
                    self.topic, self.history_budget
                ),
            );
            return;
        }
        while self.history.len() >= self.history_len
            || self.history_bytes + size > self.history_budget
        {
            match self.history.pop_front() {
                Some(old) => self.history_bytes -= old.size(),
                None => break,
            }
        }
        self.history_bytes += size;
        self.history.push_back(kept);
    }

    /// Queues a broadcast's frames on every subscriber `skip` does not name:
    /// one host call per serializer, the host queues the same bytes on the
    /// `route`'s lane of every subscriber's outlet (see
    /// host-bridge/src/outlet.rs).
    fn fan_out(
        &self,
        frames: &Frames,
        route: host::Route<'_>,
        skip: impl Fn(u64, &Subscriber) -> bool,
    ) {
        let (mut to_v1, mut to_v2) = (Vec::new(), Vec::new());
        for (pid, sub) in &self.subs {
            if skip(*pid, sub) {
                continue;
            }
            if sub.v2 {
                to_v2.push(sub.outlet);
            } else {
                to_v1.push(sub.outlet);
            }
        }
        for (outlets, bytes) in [(&to_v1, &frames.0), (&to_v2, &frames.1)] {
            if let Some(bytes) = bytes {
                host::fanout(outlets, bytes, route);
            }
        }
    }

    /// Answers a refused publish with an error reply carrying `reason`, when
    /// its publisher asked for an acknowledgement.
    fn refuse(&self, p: &Publish, reason: &str) {
        p.answer(Err(reason.to_string()));
        if let (Some(from), Some((join_ref, msg_ref))) = (p.from, &p.ack) {
            if let Some(sub) = self.subs.get(&from) {
                let err = Outbound::reply(
                    Some(join_ref.clone()),
                    msg_ref.clone(),
                    &self.topic,
                    "error",
                    json!({ "reason": reason }),
                );
                send_outbound(sub.outlet, sub.v2, &err);
            }
        }
    }

    /// Refills the in-memory recent history of a chat lane from storage, so
    /// a channel restarted after a crash (or an idle stop) has it back.
    fn refill(&mut self) {
        if !self.persist || self.history_len == 0 {
            return;
        }
        let limit = u32::try_from(self.history_len).unwrap_or(u32::MAX);
        match host::data(&DataRequest::History {
            topic: self.topic.clone(),
            before: None,
            after: None,
            limit,
        }) {
            DataResponse::Messages { messages } => {
                host::metric(Metric::HistoryRefilled, messages.len() as i64);
                // The answer is newest first (and cut at
                // limits.history_page_bytes by the data service); history
                // is oldest first, within its own budgets.
                for m in messages.into_iter().rev() {
                    self.keep(Kept {
                        id: Some(m.id),
                        inserted_at: m.inserted_at,
                        event: m.event,
                        body: Body::Json(m.payload.to_string()),
                    });
                }
            }
            other => host::log(
                host::Level::Warn,
                &format!(
                    "channel {}: cannot refill history from storage: {other:?}",
                    self.topic
                ),
            ),
        }
    }

    /// Supabase's `broadcast.replay`: the stored messages since `since_ms`
    /// (the newest `limit` of them), oldest first, as broadcasts with
    /// `meta: {id, replayed: true}`. When storage cannot answer, the
    /// in-memory recent history is replayed instead.
    fn replay(&self, outlet: u64, v2: bool, since_ms: u64, limit: u32) {
        let from_storage = if self.persist {
            match host::data(&chorus_core::data::replay_request(
                &self.topic,
                since_ms,
                limit,
            )) {
                DataResponse::Messages { messages } => Some(
                    messages
                        .into_iter()
                        .rev()
                        .map(|m| (Some(m.id), m.event, Payload::Json(m.payload)))
                        .collect::<Vec<_>>(),
                ),
                other => {
                    host::log(
                        host::Level::Warn,
                        &format!(
                            "channel {}: replay from memory, storage answered {other:?}",
                            self.topic
                        ),
                    );
                    None
                }
            }
        } else {
            None
        };
        let items = from_storage.unwrap_or_else(|| {
            let recent: Vec<_> = self
                .history
                .iter()
                .filter(|k| k.inserted_at >= since_ms)
                .collect();
            let skip = recent.len().saturating_sub(limit as usize);
            recent
                .into_iter()
                .skip(skip)
                .map(|k| (k.id.clone(), k.event.clone(), k.body.to_payload()))
                .collect()
        });
        host::metric(Metric::Replayed, items.len() as i64);
        for (id, event, payload) in items {
            let mut meta = serde_json::Map::new();
            if let Some(id) = id {
                meta.insert("id".into(), Value::String(id));
            }
            meta.insert("replayed".into(), Value::Bool(true));
            let msg = match (&payload, v2) {
                // JSON under 2.0.0 goes as the text array (see `publish`).
                (Payload::Json(v), true) => Outbound::push(
                    None,
                    &self.topic,
                    phoenix::event::BROADCAST,
                    json!({"type": "broadcast", "event": event, "payload": v, "meta": meta}),
                ),
                _ => Outbound::UserBroadcast(UserBroadcast {
                    topic: self.topic.clone(),
                    event,
                    meta: Some(meta),
                    payload,
                }),
            };
            send_outbound(outlet, v2, &msg);
        }
    }

    /// Persists a chat message; it is fanned out (and acknowledged) only
    /// once the backend has committed it.
    fn store(&self, p: &Publish) -> Result<(String, u64), String> {
        let payload = match &p.payload {
            Body::Json(text) => serde_json::from_str(text).unwrap_or(Value::Null),
            Body::Binary(_) => return Err("chat messages must be JSON".into()),
        };
        match host::data(&DataRequest::Append {
            topic: self.topic.clone(),
            event: p.event.clone(),
            payload,
        }) {
            DataResponse::Appended { id, inserted_at } => Ok((id, inserted_at)),
            DataResponse::Error { reason } => Err(reason),
            other => Err(format!("unexpected store answer {other:?}")),
        }
    }

    fn presence(&mut self, session: u64, meta: Option<String>, refs: (String, Option<String>)) {
        let Some(sub) = self.subs.get(&session) else {
            return;
        };
        let (outlet, v2) = (sub.outlet, sub.v2);
        let result = match meta {
            Some(meta) => {
                let meta: Value = serde_json::from_str(&meta).unwrap_or(Value::Null);
                let key = sub.presence_key.clone();
                self.presence
                    .track(session, &key, meta)
                    .map_err(|e| e.to_string())
            }
            None => Ok(self.presence.untrack(session)),
        };
        let reply = match &result {
            Ok(_) => Outbound::reply(Some(refs.0), refs.1, &self.topic, "ok", json!({})),
            Err(reason) => Outbound::reply(
                Some(refs.0),
                refs.1,
                &self.topic,
                "error",
                json!({ "reason": reason }),
            ),
        };
        send_outbound(outlet, v2, &reply);
        if let Ok(diff) = result {
            self.diff_out(diff);
        }
    }

    fn fan_out_diff(&mut self, diff: Diff) {
        if diff.is_empty() {
            return;
        }
        for (key, metas) in &diff.joins {
            crate::presence::report(key, metas.len() as i32, self.presence_shards);
        }
        for (key, metas) in &diff.leaves {
            crate::presence::report(key, -(metas.len() as i32), self.presence_shards);
        }
        // Each viewer gets the part it sees, one encoding per distinct frame.
        self.viewers.fan_out(&diff, &self.presence, &self.topic);
    }

    /// Joins that raced with the stop are sent back to be retried against
    /// the channel's next incarnation.
    fn drain_for_restart(&mut self, inbox: &Inbox<ChannelMsg>) {
        while let Some(Incoming::Message(msg)) = inbox.receive_timeout(Duration::ZERO) {
            if let ChannelMsg::Join(j) = msg {
                j.session.send(SessionMsg::Rejoin {
                    topic: self.topic.clone(),
                });
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `realtime:room:<id>:chat` (or `room:<id>:chat`): a room's chat lane.
pub fn is_chat_lane(topic: &str) -> bool {
    let t = topic.strip_prefix("realtime:").unwrap_or(topic);
    t.starts_with("room:") && t.ends_with(":chat") && t.len() > "room::chat".len()
}

/// A broadcast's WebSocket frames for the 1.0.0 and 2.0.0 serializers.
type Frames = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Encodes a broadcast once per serializer.
fn broadcast_frames(topic: &str, event: &str, payload: Payload) -> Frames {
    // Under 2.0.0 a JSON broadcast goes out as the text array
    // `[null, null, topic, "broadcast", {type, event, payload}]`: both
    // realtime-js and phoenix.js decode it (to the same message a kind-4
    // frame gives realtime-js), while phoenix.js cannot decode kind 4 and
    // throws. Only binary payloads need kind 4.
    let v2_text = match &payload {
        Payload::Json(v) => Some(Outbound::push(
            None,
            topic,
            phoenix::event::BROADCAST,
            json!({"type": "broadcast", "event": event, "payload": v}),
        )),
        Payload::Binary(_) => None,
    };
    let broadcast = Outbound::UserBroadcast(UserBroadcast {
        topic: topic.to_string(),
        event: event.to_string(),
        meta: None,
        payload,
    });
    let v1 = encode_ws(Vsn::V1, &broadcast);
    let v2 = encode_ws(Vsn::V2, v2_text.as_ref().unwrap_or(&broadcast));
    (v1, v2)
}

/// Encodes a message as the WebSocket frame bytes for one serializer.
pub fn encode_ws(vsn: Vsn, msg: &Outbound) -> Option<Vec<u8>> {
    let frame = phoenix::encode(vsn, msg).ok()?;
    let mut out = Vec::new();
    match &frame {
        Frame::Text(t) => ws::encode_text(&mut out, t),
        Frame::Binary(b) => ws::encode_binary(&mut out, b),
    }
    Some(out)
}

/// Sends to one subscriber on its outlet's control lane.
fn send_outbound(outlet: u64, v2: bool, msg: &Outbound) {
    let vsn = if v2 { Vsn::V2 } else { Vsn::V1 };
    if let Some(bytes) = encode_ws(vsn, msg) {
        host::outlet_send(outlet, &bytes, host::Route::CONTROL);
    }
}

/// The outlet lane of a broadcast on `topic` and, on a reactions lane, the
/// key it counts as when aggregated (docs/ROOMS.md, "Rooms and lanes").
fn broadcast_lane(topic: &str, event: &str, payload: &Payload) -> (Lane, String) {
    let lane = Lane::of_broadcast(topic);
    let key = match payload {
        _ if lane != Lane::Reactions => String::new(),
        Payload::Json(v) => lanes::reaction_key(event, v),
        Payload::Binary(_) => lanes::reaction_key(event, &Value::Null),
    };
    (lane, key)
}
