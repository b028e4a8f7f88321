//! Channel servers: one process per active topic, owning its subscribers,
//! its presence and its recent history, so every subscriber sees one total
//! order. Channels are found by placement (`core::placement`): a ring of
//! nodes gives the topic's home node (without a cluster it has one member,
//! this node) and a ring of the node's directory shards the shard, found in
//! the node's lunatic registry; the directory spawns the channel under the
//! `channels` dynamic supervisor the first time it is asked for it, and
//! forgets it when the channel goes idle.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chorus_core::caps;
use chorus_core::config::{Config, PresenceConfig, RoomsConfig};
use chorus_core::data::{DataRequest, DataResponse};
use chorus_core::dedupe::{self, Window};
use chorus_core::frame::{self, BodyRef};
use chorus_core::lanes::{self, Lane};
use chorus_core::linger::{self, Linger, Step as LingerStep};
use chorus_core::metrics::{Histogram, Metric};
use chorus_core::phoenix::{Frame, Outbound, Vsn};
use chorus_core::placement::Placement;
use chorus_core::presence::{Diff, Presence};
use chorus_core::ws;
use lunatic::host as lhost;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use supervisors::{mail, ChildRef, DynamicSupervisor, Inbox, Incoming};

use crate::host;
use crate::msg::{
    process_ref, reply_to, Answer, Body, ChannelMsg, ChannelRef, DirMsg, DoorMsg, JoinReq, Located,
    Mailer, Outlet, Publish, PublishOutcome, ReplyTo, SessionMsg, SessionRef, ShardMsg, ToSession,
};

mod peak;

/// Registered name of the channels' dynamic supervisor.
pub const CHANNELS: &str = "channels";
pub use chorus_core::placement::{directory_name, DIRECTORIES};
/// How long a caller waits for a directory to answer.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a look-up waiting for another node checks that the node is
/// still a member.
const MEMBERS_RECHECK: Duration = Duration::from_millis(250);
/// How long a process keeps the cluster membership it read for placement.
const MEMBERS_TTL: Duration = Duration::from_secs(1);
/// How often a full directory shard may drop channels that died from its
/// map (each check is a host call per channel).
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// Most metas under one presence key (Supabase's limit).
const MAX_METAS_PER_KEY: usize = 10;

/// Arguments of a channel process (plain data, kept for restarts).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelArgs {
    pub topic: String,
    pub directory: String,
    /// `limits.channel_idle_ms` and `limits.channel_empty_ms`: how long it
    /// lives on once nobody is subscribed (`chorus_core::linger`).
    pub idle_ms: u64,
    #[serde(default)]
    pub empty_ms: u64,
    pub history: u32,
    /// `limits.channel_history_bytes`: payload bytes of that history.
    #[serde(default)]
    pub history_bytes: u32,
    /// `limits.presence_bytes`: presence keys and metas this channel holds.
    #[serde(default)]
    pub presence_bytes: u32,
    /// `limits.dedupe_window_ms` and `limits.dedupe_bytes`: client message
    /// ids a chat lane remembers.
    #[serde(default)]
    pub dedupe_window_ms: u64,
    #[serde(default)]
    pub dedupe_bytes: u32,
    pub sweep_ms: u64,
    pub presence_shards: u32,
    /// Peak mode settings.
    pub rooms: RoomsConfig,
    /// The process modules a chat lane asks about each message.
    pub modules: crate::modules::Hooks,
    /// Selective presence and large rooms (`[presence]`).
    pub presence: PresenceConfig,
}

/// A process' cluster placement: when its members were read, the members,
/// and the placement over them.
type Cached = (Instant, Vec<u64>, Placement<String>);

/// Where topics live. Without a cluster the node ring has one member, this
/// node (its lunatic node id 0), computed once per process: every topic's
/// home is here and only the directory shard varies. In a cluster the ring's
/// members are the cluster's nodes ([`members`]), read again at most every
/// [`MEMBERS_TTL`].
fn with_placement<R>(f: impl FnOnce(&Placement<String>) -> R) -> R {
    static SINGLE: OnceLock<Placement<String>> = OnceLock::new();
    if mail::node_id() == 0 {
        return f(SINGLE.get_or_init(|| Placement::new(["0".to_string()])));
    }
    CLUSTER.with(|cell| {
        let mut cached = cell.borrow_mut();
        let stale = cached
            .as_ref()
            .is_none_or(|(at, ..)| at.elapsed() >= MEMBERS_TTL);
        if stale {
            refresh(&mut cached);
        }
        match cached.as_ref() {
            Some((_, _, placement)) => f(placement),
            None => f(&Placement::new([mail::node_id().to_string()])),
        }
    })
}

thread_local! {
    /// This process' cached cluster placement ([`with_placement`]).
    static CLUSTER: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

/// Reads the membership again into `cached`, keeping the ring when the
/// members did not change.
fn refresh(cached: &mut Option<Cached>) {
    let nodes = members();
    let keep = cached.take().filter(|(_, old, _)| *old == nodes);
    *cached = Some(match keep {
        Some((_, old, placement)) => (Instant::now(), old, placement),
        None => {
            let placement = Placement::new(nodes.iter().map(u64::to_string));
            (Instant::now(), nodes, placement)
        }
    });
}

/// The cluster's members as of now (not cached): a node that left is gone
/// from this process' placement at once, so a client told that its
/// channel's node left rejoins at the topic's new home. Off-cluster: this
/// node alone.
pub fn members_now() -> Vec<u64> {
    if mail::node_id() == 0 {
        return vec![0];
    }
    CLUSTER.with(|cell| {
        let mut cached = cell.borrow_mut();
        refresh(&mut cached);
        cached
            .as_ref()
            .map(|(_, nodes, _)| nodes.clone())
            .unwrap_or_else(|| vec![mail::node_id()])
    })
}

/// The cluster's nodes a topic may live on: those the control server lists
/// (`host::cluster_json`) that lunatic's client also knows (a send to a
/// node id lunatic does not list spins), and this node unless it is
/// draining; sorted.
/// Every node computes the same ring from the same membership.
fn members() -> Vec<u64> {
    let here = mail::node_id();
    let known = mail::cluster_nodes();
    let listed = host::cluster_json();
    let mut nodes: Vec<u64> = listed["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["id"].as_u64())
                .filter(|id| known.contains(id))
                .collect()
        })
        .unwrap_or_default();
    // A draining node has left the cluster (host-bridge/src/drain.rs): its
    // topics' homes are the other nodes, for its own processes too.
    if host::draining() {
        nodes.retain(|n| *n != here);
    } else {
        nodes.push(here);
    }
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// The channel of `topic`, if it runs or (with `spawn`) once started.
pub fn locate(topic: &str, spawn: bool) -> Option<ChannelRef> {
    find(topic, spawn).channel()
}

/// What `topic`'s directory answers: its running channel, one started for
/// this call (only with `spawn`), none, or none because the node is full.
/// The directory is on the topic's home node: here, through the registry;
/// on another node of the cluster, through that node's door
/// (`crate::door`), which hands the request to its directory shard; that
/// shard answers this process directly. A home node that does not answer
/// within [`LOCATE_TIMEOUT`] is [`Located::Unreachable`].
pub fn find(topic: &str, spawn: bool) -> Located {
    let Some((node, directory)) = with_placement(|p| {
        p.home(topic)
            .and_then(|home| Some((home.node.parse::<u64>().ok()?, home.directory)))
    }) else {
        return Located::Absent;
    };
    if node != mail::node_id() {
        host::metric(Metric::RemoteLocates, 1);
        // A home node that leaves the cluster while we wait (killed, its
        // loss now seen) will not answer: ask the topic's new home instead.
        let mut left = false;
        let answer = supervisors::call_while(
            |reply| {
                mail::send(
                    node,
                    crate::door::DOOR_PID,
                    mail::UNTAGGED,
                    &DoorMsg::Locate {
                        directory,
                        topic: topic.to_string(),
                        spawn,
                        reply: reply_to(reply),
                    },
                )
            },
            LOCATE_TIMEOUT,
            MEMBERS_RECHECK,
            || {
                left = !members_now().contains(&node);
                !left
            },
        );
        return match answer {
            Some(located) => located,
            // The ring has one node fewer each time: this ends.
            None if left => find(topic, spawn),
            None => Located::Unreachable(format!(
                "unavailable: the home node of this topic (cluster node {node}) did not answer within {} s, retry",
                LOCATE_TIMEOUT.as_secs()
            )),
        };
    }
    let Some(dir) = ChildRef::<DirMsg>::lookup(&directory_name(directory)) else {
        return Located::Absent;
    };
    dir.call(
        |reply| DirMsg::Locate {
            topic: topic.to_string(),
            spawn,
            reply: reply_to(reply),
        },
        LOCATE_TIMEOUT,
    )
    .unwrap_or(Located::Absent)
}

/// A directory shard process.
///
/// In a cluster it also moves topics away: every [`HANDOVER_EVERY`] it hands
/// over the channels whose topic's home is a node that joined lately, and
/// once the node drains (`host::draining`, seen within [`DRAIN_CHECK_EVERY`])
/// all of them. A look-up for a topic whose home, as this shard sees the
/// cluster, is such a node is passed on to that node's door
/// ([`DoorMsg::Forwarded`]) instead of being served here: a node that sees a
/// new member (or the drain) later than this one asks the old home, and the
/// topic must not start there again only to be handed over once more.
pub fn directory(args: (String, Config), inbox: Inbox<DirMsg>) {
    let (name, config) = args;
    let mut shard = Shard {
        sweep_ms: (config.limits.heartbeat_timeout_ms / 2).max(500),
        name,
        config,
        channels: HashMap::new(),
        started: Instant::now(),
        pruned: None,
    };
    let cluster = mail::node_id() != 0;
    let mut moves = Moves {
        known: if cluster { members_now() } else { Vec::new() },
        joined: Vec::new(),
        checked: Instant::now(),
        draining: false,
    };
    loop {
        let incoming = if cluster {
            if moves.draining || host::draining() {
                moves.drain(&shard.name, &mut shard.channels);
            } else if moves.checked.elapsed() >= HANDOVER_EVERY {
                moves.check(&shard.name, &mut shard.channels);
            }
            match inbox.receive_timeout(DRAIN_CHECK_EVERY) {
                Some(incoming) => incoming,
                None => continue,
            }
        } else {
            inbox.receive()
        };
        match incoming {
            Incoming::Shutdown => return,
            Incoming::Message(DirMsg::Locate {
                topic,
                spawn,
                reply,
            }) => shard.locate(&moves, topic, spawn, reply, 0),
            Incoming::Message(DirMsg::Forwarded {
                topic,
                spawn,
                reply,
                hops,
            }) => shard.locate(&moves, topic, spawn, reply, hops),
            Incoming::Message(DirMsg::Idle { topic, pid }) => {
                let now_ms = shard.now_ms();
                if let Some(held) = shard.channels.get(&topic) {
                    if held.channel.pid() == pid && linger::may_stop(held.handed_out_ms, now_ms) {
                        held.channel.send(ChannelMsg::Stop);
                        shard.channels.remove(&topic);
                    }
                }
            }
            Incoming::Message(DirMsg::PresenceRebuild {
                directory,
                shard: presence_shard,
                shards,
                to,
            }) => {
                let mut asked = Vec::new();
                for Held { channel, .. } in shard.channels.values().filter(|h| h.channel.is_alive())
                {
                    channel.send(ChannelMsg::PresenceReport {
                        shard: presence_shard,
                        shards,
                        to,
                    });
                    asked.push(channel.pid());
                }
                to.send(ShardMsg::Listed {
                    directory,
                    channels: asked,
                });
            }
            Incoming::Message(DirMsg::Live { topic, channel }) => {
                let held = shard.channels.get(&topic).map(|h| h.channel);
                let fresh = held == Some(channel);
                match held {
                    Some(c) if c == channel => {}
                    Some(c) if c.is_alive() => {
                        // A restarted incarnation came up after a fresh
                        // channel took over the topic: it has no subscriber
                        // and goes.
                        channel.send(ChannelMsg::Stop);
                    }
                    _ => {
                        shard.channels.insert(topic, Held::new(channel));
                    }
                }
                if !fresh {
                    // Not the incarnation this directory started: its
                    // supervisor restarted the topic's channel after a
                    // crash, and the presences it held were never reported
                    // as left.
                    crate::presence::channel_crashed(shard.config.presence.shards);
                }
            }
        }
    }
}

/// A directory shard's channels and settings.
/// A channel a directory shard runs, and when a look-up last handed it out
/// (ms of the shard's clock): such a channel is not stopped for
/// [`linger::HANDED_OUT_GRACE_MS`] after.
struct Held {
    channel: ChannelRef,
    handed_out_ms: Option<u64>,
}

impl Held {
    /// A channel no look-up handed out yet (a restarted incarnation).
    fn new(channel: ChannelRef) -> Held {
        Held {
            channel,
            handed_out_ms: None,
        }
    }
}

struct Shard {
    name: String,
    config: Config,
    sweep_ms: u64,
    channels: HashMap<String, Held>,
    /// The clock of [`Held::handed_out_ms`].
    started: Instant,
    /// When channels that died were last dropped from `channels` (done only
    /// when the shard is at its share of limits.max_channels, at most once
    /// a second).
    pruned: Option<Instant>,
}

impl Shard {
    /// Answers a look-up (passed on `hops` times already): passes it on to
    /// the topic's home when that is another node ([`Moves::pass_to`]),
    /// else serves it here.
    fn locate(
        &mut self,
        moves: &Moves,
        topic: String,
        spawn: bool,
        reply: ReplyTo<Located>,
        hops: u8,
    ) {
        if let Some((node, directory)) = moves.pass_to(&topic) {
            if hops < chorus_core::msg::MAX_LOCATE_HOPS {
                host::metric(Metric::LocatesForwarded, 1);
                mail::send(
                    node,
                    crate::door::DOOR_PID,
                    mail::UNTAGGED,
                    &DoorMsg::Forwarded {
                        directory,
                        topic,
                        spawn,
                        reply,
                        hops: hops + 1,
                    },
                );
                return;
            }
            if moves.draining {
                reply.send(&Located::Unreachable(
                    "unavailable: this topic's node is draining and its new home is not settled yet, retry"
                        .to_string(),
                ));
                return;
            }
        }
        let found = self.serve(topic, spawn);
        reply.send(&found);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The topic's channel here: running, started now (with `spawn`), none,
    /// or none because this shard is full. A channel handed out is noted as
    /// such ([`Held::handed_out_ms`]).
    fn serve(&mut self, topic: String, spawn: bool) -> Located {
        let now_ms = self.now_ms();
        let limits = &self.config.limits;
        if spawn
            && !self.channels.contains_key(&topic)
            && caps::may_start(self.channels.len(), limits.max_channels, DIRECTORIES).is_err()
            && self.pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY)
        {
            self.channels.retain(|_, h| h.channel.is_alive());
            self.pruned = Some(Instant::now());
        }
        match self.channels.get_mut(&topic) {
            Some(held) if held.channel.is_alive() => {
                held.handed_out_ms = Some(now_ms);
                Located::Found(held.channel)
            }
            _ if spawn => {
                let running = self.channels.len() - usize::from(self.channels.contains_key(&topic));
                if let Err(reason) = caps::may_start(running, limits.max_channels, DIRECTORIES) {
                    return Located::Full(reason);
                }
                let config = &self.config;
                let args = ChannelArgs {
                    topic: topic.clone(),
                    directory: self.name.clone(),
                    idle_ms: config.limits.channel_idle_ms,
                    empty_ms: config.limits.channel_empty_ms,
                    history: config.limits.channel_history,
                    history_bytes: config.limits.channel_history_bytes,
                    presence_bytes: config.limits.presence_bytes,
                    dedupe_window_ms: config.limits.dedupe_window_ms,
                    dedupe_bytes: config.limits.dedupe_bytes,
                    sweep_ms: self.sweep_ms,
                    presence_shards: config.presence.shards,
                    rooms: config.rooms.clone(),
                    modules: crate::modules::Hooks::for_topic(config, &topic),
                    presence: config.presence.clone(),
                };
                match DynamicSupervisor::<ChannelArgs, ChannelMsg>::lookup(CHANNELS)
                    .map(|sup| sup.start_child(args))
                {
                    Some(Ok(child)) => {
                        let child = process_ref(child);
                        let mut held = Held::new(child);
                        held.handed_out_ms = Some(now_ms);
                        self.channels.insert(topic, held);
                        Located::Started(child)
                    }
                    _ => {
                        host::log(host::Level::Error, "cannot start a channel process");
                        Located::Absent
                    }
                }
            }
            _ => Located::Absent,
        }
    }
}

/// How often a directory in a cluster looks for channels to hand over.
const HANDOVER_EVERY: Duration = Duration::from_secs(1);
/// How often a directory in a cluster asks the host whether the node is
/// draining (a scalar host call).
const DRAIN_CHECK_EVERY: Duration = Duration::from_millis(250);
/// How long after a node joined its topics are still handed to it: other
/// nodes see a new member up to a poll plus lunatic's 5 s refresh later, and
/// may start a moved topic's channel here meanwhile.
const HANDOVER_WINDOW: Duration = Duration::from_secs(10);

/// A directory's view of membership changes (cluster only): the members it
/// knew, the nodes that joined lately, and whether this node drains.
struct Moves {
    known: Vec<u64>,
    joined: Vec<(u64, Instant)>,
    checked: Instant,
    draining: bool,
}

impl Moves {
    /// This node drains: every channel is handed over (the topics' homes are
    /// the other nodes now), and any channel that starts again meanwhile
    /// (a supervisor's restart) at the next wake.
    fn drain(&mut self, directory: &str, channels: &mut HashMap<String, Held>) {
        if !self.draining {
            self.draining = true;
            // This process' placement without this node, from now on.
            self.known = members_now();
        }
        if channels.is_empty() {
            return;
        }
        let count = channels.len();
        for (_, Held { channel, .. }) in channels.drain() {
            channel.send(ChannelMsg::HandOver);
            host::metric(Metric::HandedOver, 1);
        }
        host::log(
            host::Level::Info,
            &format!(
                "draining: handed over the {count} channels of {directory} to the other nodes ({:?})",
                self.known
            ),
        );
    }

    /// Where a look-up for `topic` is passed on to, if anywhere: the
    /// topic's home (node, directory shard) when it is another node and
    /// this node drains or that node joined lately. The home is placed on
    /// the membership as of now, not as cached for [`MEMBERS_TTL`]: a look-up
    /// passed on to a node that has just left (a drained node exits a second
    /// after it left) is lost, and its asker waits [`LOCATE_TIMEOUT`] for
    /// nothing.
    fn pass_to(&self, topic: &str) -> Option<(u64, u32)> {
        if !self.draining && self.joined.is_empty() {
            return None;
        }
        let here = mail::node_id();
        // Reads the membership again (and with it the placement below).
        members_now();
        with_placement(|p| {
            p.home(topic)
                .and_then(|home| Some((home.node.parse::<u64>().ok()?, home.directory)))
        })
        .filter(|(node, _)| {
            *node != here && (self.draining || self.joined.iter().any(|(n, _)| n == node))
        })
    }

    /// Hands over the channels whose topic's home is now a node that joined
    /// within [`HANDOVER_WINDOW`] (only those: when a node leaves, the topics
    /// of the others keep their home, and its own come here by failover).
    fn check(&mut self, directory: &str, channels: &mut HashMap<String, Held>) {
        self.checked = Instant::now();
        let now = members_now();
        for node in &now {
            if !self.known.contains(node) {
                self.joined.push((*node, Instant::now()));
            }
        }
        self.known = now;
        let known = &self.known;
        self.joined
            .retain(|(node, at)| at.elapsed() < HANDOVER_WINDOW && known.contains(node));
        if self.joined.is_empty() || channels.is_empty() {
            return;
        }
        let joined: Vec<u64> = self.joined.iter().map(|(node, _)| *node).collect();
        let moving: Vec<String> = with_placement(|p| {
            channels
                .keys()
                .filter(|topic| {
                    p.home(topic)
                        .and_then(|home| home.node.parse::<u64>().ok())
                        .is_some_and(|node| joined.contains(&node))
                })
                .cloned()
                .collect()
        });
        for topic in &moving {
            if let Some(Held { channel, .. }) = channels.remove(topic) {
                channel.send(ChannelMsg::HandOver);
                host::metric(Metric::HandedOver, 1);
            }
        }
        if !moving.is_empty() {
            host::log(
                host::Level::Info,
                &format!(
                    "handover: {} of {} channels of {directory} moved to nodes that joined ({joined:?})",
                    moving.len(),
                    moving.len() + channels.len()
                ),
            );
        }
    }
}

struct Subscriber {
    session: SessionRef,
    /// The session's socket, on its node: where its frames are queued.
    outlet: Outlet,
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
    /// Subscribers by their channel-local id (what presence, viewers and
    /// peak mode key by); `ids` maps each subscribing session, a (node,
    /// pid) pair, to its id: pids alone repeat across a cluster's nodes.
    subs: HashMap<u64, Subscriber>,
    ids: HashMap<SessionRef, u64>,
    next_id: u64,
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
    /// The client message ids (`msg_id`) this chat lane stored lately.
    dedupe: Window,
    /// The clock as read at the top of the receive loop, for the message
    /// being handled (one read per message, see [`channel`]).
    now: Instant,
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
        ids: HashMap::new(),
        next_id: 0,
        presence: Presence::with_budget(MAX_METAS_PER_KEY, args.presence_bytes as usize),
        history: VecDeque::new(),
        history_len: args.history as usize,
        history_bytes: 0,
        history_budget: args.history_bytes as usize,
        room: crate::room::AudioLane::for_topic(&args.topic),
        peak: peak::PeakState::new(&args.rooms, &args.topic),
        modules: args.modules.clone().screen(),
        viewers: crate::viewers::Viewers::new(&args.topic, &args.presence),
        dedupe: Window::new(args.dedupe_window_ms, args.dedupe_bytes),
        now: Instant::now(),
    };
    ch.refill();
    if let Some(dir) = ChildRef::<DirMsg>::lookup(&args.directory) {
        dir.send(DirMsg::Live {
            topic: args.topic.clone(),
            channel: process_ref(inbox.this()),
        });
    }
    let started = Instant::now();
    let mut linger = Linger::new(args.empty_ms, args.idle_ms);
    let sweep = Duration::from_millis(args.sweep_ms);
    // When this channel last asked its directory to stop it.
    let mut asked_to_stop: Option<Instant> = None;
    let ask_again = Duration::from_millis(linger::ASK_AGAIN_MS);
    // Sweeps run on a clock, not only when the mailbox is quiet: a channel
    // that receives a message more often than every sweep period must still
    // drop its crashed subscribers (and their presences).
    let mut last_sweep = Instant::now();
    loop {
        // The clock is read once per message (a WASI call): the timers due
        // after the last message run here, with this reading, and it is the
        // start of the wait and of the next message's handling.
        let now = Instant::now();
        ch.now = now;
        ch.peak_tick();
        ch.viewers.tick(&ch.topic);
        if now.saturating_duration_since(last_sweep) >= sweep {
            ch.sweep_dead();
            last_sweep = now;
        }
        // Nobody subscribed: the directory is asked to stop it once the
        // linger is over, and the wait below ends by then.
        let mut wait = sweep.saturating_sub(now.saturating_duration_since(last_sweep));
        let now_ms = now.saturating_duration_since(started).as_millis() as u64;
        match linger.step(now_ms, !ch.subs.is_empty(), !ch.dedupe.is_empty()) {
            LingerStep::Serving => {}
            LingerStep::Wait(ms) => wait = wait.min(Duration::from_millis(ms)),
            // Asked again while the directory declines (it handed this
            // channel out lately: a join may be on its way).
            LingerStep::Stop
                if asked_to_stop
                    .is_none_or(|at| now.saturating_duration_since(at) >= ask_again) =>
            {
                if let Some(dir) = ChildRef::<DirMsg>::lookup(&args.directory) {
                    dir.send(DirMsg::Idle {
                        topic: args.topic.clone(),
                        pid: lhost::process_id(),
                    });
                    asked_to_stop = Some(now);
                }
                wait = wait.min(ask_again);
            }
            LingerStep::Stop => {
                let asked =
                    asked_to_stop.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
                wait = wait.min(ask_again.saturating_sub(asked));
            }
        }
        let wait = ch.peak.wait(now).map_or(wait, |w| w.min(wait));
        match inbox.receive_until(now + wait.min(ch.viewers.wait()), now) {
            Some(Incoming::Shutdown) => break,
            Some(Incoming::Message(ChannelMsg::Stop)) => {
                if ch.subs.is_empty() {
                    ch.drain_for_restart(
                        &inbox,
                        "unavailable: this topic's channel stopped, retry",
                    );
                    break;
                }
                asked_to_stop = None;
            }
            Some(Incoming::Message(ChannelMsg::HandOver)) => {
                // Pushes queued behind the handover are refused while the
                // subscribers are still known, so their clients get the
                // reason instead of a push timeout.
                ch.drain_for_restart(
                    &inbox,
                    "unavailable: this topic moved to another node, retry",
                );
                ch.hand_over(process_ref(inbox.this()));
                break;
            }
            Some(Incoming::Message(msg)) => ch.handle(msg),
            None => {}
        }
    }
    ch.peak_end();
    host::metric(Metric::ChannelsActive, -1);
}

impl Channel {
    fn handle(&mut self, msg: ChannelMsg) {
        match msg {
            ChannelMsg::Join(j) => self.join(j),
            ChannelMsg::Leave { session } => {
                if let Some(id) = self.id(session) {
                    self.remove(id);
                }
            }
            ChannelMsg::Publish(p) => self.publish(p),
            ChannelMsg::Presence {
                session,
                meta,
                refs,
            } => {
                if let Some(id) = self.id(session) {
                    self.presence(id, meta, refs);
                }
            }
            ChannelMsg::PresenceReport { shard, shards, to } => {
                crate::presence::re_report(to, shard, shards, lhost::process_id(), &self.presence);
            }
            ChannelMsg::Stop | ChannelMsg::HandOver => {}
            ChannelMsg::Crash => panic!("fault injection: channel {} crashes", self.topic),
            ChannelMsg::Room(m) => match self.room.as_mut().map(|r| r.handle(m)) {
                Some(crate::room::Action::Publish(p)) => self.publish(p),
                Some(crate::room::Action::Error { from, refs, reason }) => {
                    if let Some(sub) = self.id(from).and_then(|id| self.subs.get(&id)) {
                        let err = frame::error_reply(
                            sub.vsn(),
                            Some(&refs.0),
                            refs.1.as_deref(),
                            &self.topic,
                            &reason,
                        );
                        send_control(sub.outlet, &err);
                    }
                }
                _ => {}
            },
            ChannelMsg::PresenceSubscribe {
                session,
                add,
                remove,
                refs,
            } => {
                if let Some(id) = self.id(session) {
                    self.viewers
                        .subscribe(id, &add, &remove, refs, &self.presence, &self.topic);
                }
            }
        }
    }

    /// The channel-local id of a publish's session, if it is subscribed.
    fn publisher(&self, p: &Publish) -> Option<u64> {
        p.from.and_then(|s| self.id(s))
    }

    /// The channel-local id of a subscribing session.
    fn id(&self, session: SessionRef) -> Option<u64> {
        self.ids.get(&session).copied()
    }

    fn join(&mut self, j: JoinReq) {
        self.peak_before_join();
        let p = j.params;
        // A second join of the same session replaces the first.
        if let Some(old) = self.id(j.session) {
            self.remove(old);
        }
        let pid = self.next_id;
        self.next_id += 1;
        self.ids.insert(j.session, pid);
        let vsn = if p.v2 { Vsn::V2 } else { Vsn::V1 };
        let reply = frame::reply(
            vsn,
            Some(&p.join_ref),
            p.msg_ref.as_deref(),
            &self.topic,
            "ok",
            br#"{"postgres_changes":[]}"#,
        );
        send_control(j.outlet, &reply);
        let member = chorus_core::selective::Member {
            key: p.presence_key.clone(),
            friends: p.friends,
            presence_enabled: p.presence_enabled,
        };
        let addr = crate::viewers::Addr {
            outlet: j.outlet,
            v2: p.v2,
        };
        self.viewers
            .join(pid, addr, &p.join_ref, member, &self.presence, &self.topic);
        if let Some((since_ms, limit)) = p.replay {
            self.replay(j.outlet, vsn, since_ms, limit);
        }
        if let Some(retained) = self
            .room
            .as_ref()
            .and_then(|r| r.retained(&self.topic, vsn))
        {
            send_control(j.outlet, &retained);
        }
        self.subs.insert(
            pid,
            Subscriber {
                session: j.session,
                outlet: j.outlet,
                join_ref: p.join_ref,
                v2: p.v2,
                broadcast_self: p.broadcast_self,
                presence_key: p.presence_key,
                batch: p.batch,
            },
        );
    }

    fn remove(&mut self, session: u64) {
        if let Some(sub) = self.subs.remove(&session) {
            self.ids.remove(&sub.session);
            self.viewers.leave(session);
            let diff = self.presence.untrack(session);
            self.diff_out(diff);
        }
    }

    /// Drops subscribers whose session died without leaving (a crash):
    /// their presences leave within half a heartbeat timeout.
    /// Drops subscribers whose session ended without leaving, or whose
    /// node left the cluster (with their presence: a lost node's clients
    /// leave everyone's presence within this sweep's period).
    fn sweep_dead(&mut self) {
        let members = mail::cluster_nodes();
        let dead: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| !s.session.is_alive(&members))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in dead {
            self.remove(pid);
        }
    }

    fn publish(&mut self, mut p: Publish) {
        let started = self.now;
        // The publisher's id here (`None`: the admin API, or a session that
        // is not, or no longer, subscribed).
        let from = self.publisher(&p);
        // A REST post's user is its token's `sub`.
        let user = from
            .and_then(|from| self.subs.get(&from))
            .map(|s| s.presence_key.clone())
            .or_else(|| p.by.clone());
        // A retry of a stored client message id is acknowledged again,
        // neither stored nor delivered twice.
        let msg_id = match (&p.payload, self.persist && user.is_some()) {
            (Body::Json(text), true) => match dedupe::client_id(text) {
                Ok(id) => id,
                Err(reason) => {
                    self.refuse(&p, &reason);
                    return;
                }
            },
            _ => None,
        };
        if let (Some(id), Some(user)) = (&msg_id, &user) {
            if let Some(stored) = self.dedupe.seen(user, id, now_ms()) {
                host::metric(Metric::Duplicates, 1);
                p.answer(Ok(stored.to_owned()));
                self.ack(&p, br#"{"duplicate":true}"#);
                return;
            }
        }
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
                    if let (Some(msg_id), Some(user)) = (&msg_id, &user) {
                        self.dedupe.remember(user, msg_id, &id.0, now_ms());
                    }
                    stored = Some(id);
                }
                Err(reason) => {
                    host::metric(Metric::StoreFailed, 1);
                    self.refuse(&p, &reason);
                    self.tell_unstored(&p, msg_id.as_deref(), &reason);
                    return;
                }
            }
        } else {
            p.answer(Ok(String::new()));
        }
        if let Some(sub) = from.and_then(|from| self.subs.get(&from)) {
            self.viewers.chatted(&sub.presence_key);
        }
        // In peak mode the broadcast is held and delivered with its period.
        if self.peak_hold(&p) {
            let (lane, key) = broadcast_lane(&self.topic, &p.event, p.payload.as_ref());
            let route = host::Route {
                lane,
                topic: &self.topic,
                key: &key,
            };
            self.fan_out(
                |vsn| frame::broadcast(vsn, &self.topic, &p.event, p.payload.as_ref(), None),
                route,
                |pid, sub| Some(pid) == from && !sub.broadcast_self,
            );
            host::observe(
                Histogram::FanoutLatency,
                started.elapsed().as_nanos() as u64,
            );
        }
        self.ack(&p, b"{}");
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

    /// Queues a frame on every subscriber `skip` does not name: the frame is
    /// built once per serializer in use (`frame_for`); one host call per
    /// serializer queues the same bytes on the `route`'s lane of every
    /// subscriber's socket on this node (see host-bridge/src/socket.rs), and
    /// one message per other node with subscribers carries the bytes to
    /// that node's relay (`crate::relay`).
    fn fan_out(
        &self,
        frame_for: impl Fn(Vsn) -> Option<Vec<u8>>,
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
        let frames: Vec<(Vec<u8>, Vec<Outlet>)> = [(to_v1, Vsn::V1), (to_v2, Vsn::V2)]
            .into_iter()
            .filter(|(outlets, _)| !outlets.is_empty())
            .filter_map(|(outlets, vsn)| frame_for(vsn).map(|bytes| (bytes, outlets)))
            .collect();
        crate::relay::fanout(frames, route);
    }

    /// Acknowledges a publish with an ok reply carrying `response`, when its
    /// publisher asked for it.
    fn ack(&self, p: &Publish, response: &[u8]) {
        if let (Some(from), Some((join_ref, msg_ref))) = (self.publisher(p), &p.ack) {
            if let Some(sub) = self.subs.get(&from) {
                let ok = frame::reply(
                    sub.vsn(),
                    Some(join_ref),
                    msg_ref.as_deref(),
                    &self.topic,
                    "ok",
                    response,
                );
                send_control(sub.outlet, &ok);
            }
        }
    }

    /// A chat message the store refused, from a publisher that did not ask
    /// for an acknowledgement: it still learns, by a `system` push naming
    /// the topic, the event (and its `msg_id`) and the store's reason, so
    /// nothing is lost silently. Nobody else hears of it.
    fn tell_unstored(&self, p: &Publish, msg_id: Option<&str>, reason: &str) {
        if p.ack.is_some() {
            return;
        }
        let Some(sub) = self.publisher(p).and_then(|from| self.subs.get(&from)) else {
            return;
        };
        let system = json!({
            "extension": "broadcast",
            "status": "error",
            "message": format!("not stored, not delivered: {reason}"),
            "channel": self.topic,
            "event": p.event,
            "msg_id": msg_id,
        });
        let push = frame::message(
            sub.vsn(),
            Some(&sub.join_ref),
            None,
            &self.topic,
            "system",
            system.to_string().as_bytes(),
        );
        send_control(sub.outlet, &push);
    }

    /// Answers a refused publish with an error reply carrying `reason`, when
    /// its publisher asked for an acknowledgement.
    fn refuse(&self, p: &Publish, reason: &str) {
        p.answer(Err(reason.to_string()));
        if let (Some(from), Some((join_ref, msg_ref))) = (self.publisher(p), &p.ack) {
            if let Some(sub) = self.subs.get(&from) {
                let err = frame::error_reply(
                    sub.vsn(),
                    Some(join_ref),
                    msg_ref.as_deref(),
                    &self.topic,
                    reason,
                );
                send_control(sub.outlet, &err);
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
                        body: Body::Json(m.payload.get().as_bytes().to_vec()),
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
    fn replay(&self, outlet: Outlet, vsn: Vsn, since_ms: u64, limit: u32) {
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
                        .map(|m| {
                            let body = Body::Json(m.payload.get().as_bytes().to_vec());
                            (Some(m.id), m.event, body)
                        })
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
                .map(|k| (k.id.clone(), k.event.clone(), k.body.clone()))
                .collect()
        });
        host::metric(Metric::Replayed, items.len() as i64);
        for (id, event, body) in items {
            let meta = match id {
                Some(id) => json!({"id": id, "replayed": true}),
                None => json!({"replayed": true}),
            }
            .to_string();
            let frame = frame::broadcast(
                vsn,
                &self.topic,
                &event,
                body.as_ref(),
                Some(meta.as_bytes()),
            );
            if let Some(frame) = frame {
                send_control(outlet, &frame);
            }
        }
    }

    /// Persists a chat message; it is fanned out (and acknowledged) only
    /// once the backend has committed it.
    fn store(&self, p: &Publish) -> Result<(String, u64), String> {
        let payload = match &p.payload {
            Body::Json(text) => chorus_core::data::raw_json(text)?,
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
        let (outlet, vsn) = (sub.outlet, sub.vsn());
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
            Ok(_) => frame::reply(
                vsn,
                Some(&refs.0),
                refs.1.as_deref(),
                &self.topic,
                "ok",
                b"{}",
            ),
            Err(reason) => {
                frame::error_reply(vsn, Some(&refs.0), refs.1.as_deref(), &self.topic, reason)
            }
        };
        send_control(outlet, &reply);
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

    /// The topic moved to another node: every subscriber is told (its
    /// client gets `phx_error` and rejoins there) and leaves, its presence
    /// leaving the green dot (no diff is sent: everyone is leaving).
    fn hand_over(&mut self, me: ChannelRef) {
        for (id, sub) in std::mem::take(&mut self.subs) {
            sub.session.send(&SessionMsg::Moved {
                topic: self.topic.clone(),
                channel: me,
            });
            let diff = self.presence.untrack(id);
            for (key, metas) in &diff.leaves {
                crate::presence::report(key, -(metas.len() as i32), self.presence_shards);
            }
        }
        self.ids.clear();
    }

    /// Joins that raced with the stop are sent back to be retried against
    /// the channel's next incarnation; publishes are refused with `reason`
    /// (a REST post's answer, a client push's error reply) at once instead
    /// of timing out.
    fn drain_for_restart(&mut self, inbox: &Inbox<ChannelMsg>, reason: &str) {
        while let Some(Incoming::Message(msg)) = inbox.receive_timeout(Duration::ZERO) {
            match msg {
                ChannelMsg::Join(j) => j.session.send(&SessionMsg::Rejoin {
                    topic: self.topic.clone(),
                }),
                ChannelMsg::Publish(p) => self.refuse(&p, reason),
                _ => {}
            }
        }
    }
}

impl Subscriber {
    fn vsn(&self) -> Vsn {
        if self.v2 {
            Vsn::V2
        } else {
            Vsn::V1
        }
    }
}

pub fn now_ms() -> u64 {
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

/// Encodes a server message (presence, `system`, …) as the WebSocket frame
/// bytes for one serializer.
pub fn encode_ws(vsn: Vsn, msg: &Outbound) -> Option<Vec<u8>> {
    let frame = chorus_core::phoenix::encode(vsn, msg).ok()?;
    let mut out = Vec::new();
    match &frame {
        Frame::Text(t) => ws::encode_text(&mut out, t),
        Frame::Binary(b) => ws::encode_binary(&mut out, b),
    }
    Some(out)
}

/// Sends frame bytes to one socket on its control lane.
fn send_control(outlet: Outlet, bytes: &[u8]) {
    crate::relay::send(outlet, bytes, host::Route::CONTROL);
}

/// The outlet lane of a broadcast on `topic` and, on a reactions lane, the
/// key it counts as when aggregated (docs/ROOMS.md, "Rooms and lanes").
fn broadcast_lane(topic: &str, event: &str, payload: BodyRef<'_>) -> (Lane, String) {
    let lane = Lane::of_broadcast(topic);
    let key = if lane == Lane::Reactions {
        lanes::reaction_key(event, payload)
    } else {
        String::new()
    };
    (lane, key)
}
