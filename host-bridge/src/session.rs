//! WebSocket sessions as native lunatic processes of the host.
//!
//! A session is one tokio task per socket driving `chorus_core::session`
//! (the protocol's state machine): no WebAssembly instance, no WASI context,
//! no guest memory. It is still a lunatic process: it has an id from the
//! node's environment and is registered there, so the guest's channels,
//! directory shards and presence shards send to it (answers, `SessionMsg`)
//! exactly as to any process, monitor it, and see it gone when it ends.
//!
//! What it sends them are the pure message types of `chorus_core::msg`,
//! encoded with bincode as the guest's `supervisors` crate encodes its own
//! (a supervised child's mail wrapped in its envelope: [`envelope`]), to a
//! local process through the environment and to another node's through
//! [`Cluster::send`]. A request carries a reply address with a tag of this
//! session; the session waits for that tag until a deadline, keeping every
//! other signal for after ([`Mailbox::call`]).
//!
//! Liveness of the channels it joined: a local channel is monitored (its
//! death arrives as `ProcessDied`); a channel on another node counts alive
//! while its node is a member: checked when it is joined, then each time
//! the cluster's membership changes ([`Cluster::subscribe`]) — no timer per
//! session (a 250 ms re-check per session with a remote channel cost a
//! node of 16,000 such sessions 64,000 wake-ups a second).
//!
//! A session that ends closes its socket (with the close code it chose); a
//! crash (a panic here, a `Kill` signal, or the fault-injection `crash`
//! command) closes it with 1011 and is counted in
//! `chorus_session_crashes_total`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_core::lanes::Lane;
use chorus_core::metrics::Metric;
use chorus_core::msg::{
    envelope, ChannelMsg, ChannelRef, DirMsg, DoorMsg, JoinReq, Located, Publish, ReplyTo, RoomMsg,
    SessionMsg, SessionRef, ShardMsg, DOOR_PID, RELAY_PID,
};
use chorus_core::phoenix::FrameRef;
use chorus_core::placement::{directory_name, Placement};
use chorus_core::relay::Outlet;
use chorus_core::ring::shard_of;
use chorus_core::session::{Effect, Now, Session, Start};
use lunatic_process::env::{Environment, LunaticEnvironment};
use lunatic_process::message::{DataMessage, Message};
use lunatic_process::{Process, Signal};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::socket::{Inbound, Sent, Socket, Sockets, INLET_TAG};
use crate::spawn::Registry;

/// How long a session waits for a directory shard (here or on the topic's
/// home node) to answer a look-up.
const LOCATE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it waits for a presence shard's answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a look-up waiting for another node checks that the node is
/// still a member.
const REMOTE_CHECK: Duration = Duration::from_millis(250);
/// The registry names (`supervisors/<message type>/<name>`) of the guest's
/// processes a session looks up.
const DIR_KEY: &str = "supervisors/chorus_core::msg::DirMsg/";
const SHARD_KEY: &str = "supervisors/chorus_core::msg::ShardMsg/";

/// A placement and the members it was built for.
type Ring = (Vec<u64>, Arc<Placement<String>>);

/// Everything sessions share: the node's environment and registry (where
/// the guest's processes are), its sockets, metrics and cluster.
pub struct Sessions {
    env: Arc<LunaticEnvironment>,
    registry: Registry,
    sockets: Arc<Sockets>,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
    gateway: Weak<Gateway>,
    /// The placement ring over the members it was built for.
    placement: Mutex<Option<Ring>>,
    /// Request tags, unique on this node (answers are matched per session).
    tags: AtomicI64,
    /// Sessions that crashed (the gateway's count, for `/metrics`).
    crashes: Arc<AtomicU64>,
}

impl Sessions {
    pub fn new(
        env: Arc<LunaticEnvironment>,
        registry: Registry,
        sockets: Arc<Sockets>,
        cluster: Option<Arc<Cluster>>,
        gateway: Weak<Gateway>,
        crashes: Arc<AtomicU64>,
    ) -> Arc<Self> {
        Arc::new(Sessions {
            metrics: sockets.metrics().clone(),
            env,
            registry,
            sockets,
            cluster,
            gateway,
            placement: Mutex::new(None),
            // Above the tags the host's own wakes use.
            tags: AtomicI64::new(1 << 32),
            crashes,
        })
    }

    /// Starts the session process of `socket`.
    pub fn start(self: &Arc<Self>, socket: &Arc<Socket>, start: Start) {
        let id = self.env.get_next_process_id();
        let (tx, rx) = unbounded_channel();
        let handle: Arc<dyn Process> = Arc::new(Handle { id, tx });
        self.env.add_process(id, handle.clone());
        // Wakes the session at once if client messages already wait.
        self.sockets.set_owner(socket, handle.clone());
        let sessions = self.clone();
        tokio::spawn(async move {
            // Dropped last: a crash (even a panic) closes the socket.
            let mut crash = CrashGuard {
                sessions: sessions.clone(),
                socket: start.socket,
                why: Some("the session panicked"),
            };
            let mut registered = Registered {
                env: sessions.env.clone(),
                id,
                monitors: Vec::new(),
            };
            let mut shell = Shell::new(sessions, id, handle, rx, &start);
            let ended = shell.run(&mut registered).await;
            crash.why = shell.finish(ended);
        });
    }

    /// This node's lunatic node id (0 outside a cluster).
    fn node_id(&self) -> u64 {
        self.cluster.as_ref().map_or(0, |c| c.node_id)
    }

    fn draining(&self) -> bool {
        self.gateway.upgrade().is_some_and(|g| g.draining())
    }

    /// The nodes a topic may live on, as the guest's directories compute
    /// them (`src/channel.rs`): the members both the control server and
    /// lunatic list, and this node unless it is draining; sorted.
    fn members(&self) -> Vec<u64> {
        let Some(cluster) = &self.cluster else {
            return vec![0];
        };
        let here = cluster.node_id;
        let mut nodes: Vec<u64> = cluster
            .members()
            .iter()
            .map(|m| m.id)
            .filter(|id| *id != here && cluster.is_member(*id))
            .collect();
        if !self.draining() {
            nodes.push(here);
        }
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }

    /// The placement over the members as of now.
    fn placement(&self) -> Arc<Placement<String>> {
        let nodes = self.members();
        let Ok(mut cached) = self.placement.lock() else {
            return Arc::new(Placement::new(nodes.iter().map(u64::to_string)));
        };
        match cached.as_ref() {
            Some((old, placement)) if *old == nodes => placement.clone(),
            _ => {
                let placement = Arc::new(Placement::new(nodes.iter().map(u64::to_string)));
                *cached = Some((nodes, placement.clone()));
                placement
            }
        }
    }

    /// Whether process `pid` on `node` may still run: a local process that
    /// exists, or any process of a node that is still a member.
    fn maybe_alive(&self, node: u64, pid: u64) -> bool {
        if node == self.node_id() {
            self.env.get_process(pid).is_some()
        } else {
            self.node_alive(node)
        }
    }

    /// Whether `node` is this node or a member of its cluster.
    fn node_alive(&self, node: u64) -> bool {
        node == self.node_id() || self.cluster.as_ref().is_some_and(|c| c.is_member(node))
    }

    /// Sends `bytes` under `tag` to process `pid` on `node` (dropped when
    /// it is gone, as every lunatic send).
    fn send_bytes(&self, node: u64, pid: u64, tag: Option<i64>, bytes: Vec<u8>) {
        if node == self.node_id() {
            if let Some(process) = self.env.get_process(pid) {
                process.send(Signal::Message(Message::Data(DataMessage::new_from_vec(
                    tag, bytes,
                ))));
            }
        } else if let Some(cluster) = &self.cluster {
            cluster.send(node, self.env.id(), pid, tag, bytes);
        }
    }

    /// Sends `message` to a supervised process (a channel, a directory or
    /// presence shard: inside the supervisors' envelope).
    fn send_child<M: Serialize>(&self, node: u64, pid: u64, message: &M) {
        match envelope(message) {
            Ok(bytes) => self.send_bytes(node, pid, None, bytes),
            Err(e) => tracing::error!("a session cannot encode a message: {e}"),
        }
    }

    /// Sends `message` plain (to another node's door).
    fn send_plain<M: Serialize>(&self, node: u64, pid: u64, message: &M) {
        match bincode::serialize(message) {
            Ok(bytes) => self.send_bytes(node, pid, None, bytes),
            Err(e) => tracing::error!("a session cannot encode a message: {e}"),
        }
    }

    /// The process registered under `key` in this node's registry.
    async fn lookup(&self, key: &str) -> Option<(u64, u64)> {
        self.registry.read().await.get(key).copied()
    }

    fn next_tag(&self) -> i64 {
        self.tags.fetch_add(1, Ordering::Relaxed)
    }
}

/// The session's entry in lunatic's process table: signals go to its task.
struct Handle {
    id: u64,
    tx: UnboundedSender<Signal>,
}

impl Process for Handle {
    fn id(&self) -> u64 {
        self.id
    }

    fn send(&self, signal: Signal) {
        // A session that ended drops what is sent to it, as lunatic does.
        let _ = self.tx.send(signal);
    }
}

/// Removes the session from the environment and tells its monitors, also
/// when its task panics.
struct Registered {
    env: Arc<LunaticEnvironment>,
    id: u64,
    monitors: Vec<Arc<dyn Process>>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.env.remove_process(self.id);
        for monitor in self.monitors.drain(..) {
            monitor.send(Signal::ProcessDied(self.id));
        }
    }
}

/// Closes a crashed session's socket with 1011 and counts it, when the
/// session ended with a crash or panicked (`why` still set).
struct CrashGuard {
    sessions: Arc<Sessions>,
    socket: u64,
    why: Option<&'static str>,
}

impl Drop for CrashGuard {
    fn drop(&mut self) {
        let Some(why) = self.why else {
            return;
        };
        self.sessions.crashes.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(socket = self.socket, "{why}: its socket is closed");
        self.sessions
            .sockets
            .close(self.socket, Some(1011), "internal error");
    }
}

/// How a session ended: a close frame to send (code 0: none), or a crash.
enum Ended {
    Close(u16, String),
    Crash(&'static str),
}

/// A call's outcome when no answer came.
enum NoAnswer {
    TimedOut,
    /// The callee's node left the cluster while the session waited.
    NodeLeft,
}

/// The session's signals, and those kept aside while it waited for an
/// answer.
struct Mailbox {
    rx: UnboundedReceiver<Signal>,
    held: VecDeque<Signal>,
}

impl Mailbox {
    /// The next signal: a kept one first; with `members`, `Some(None)` when
    /// the cluster's membership changed. `None` once nothing can come.
    async fn next(&mut self, members: Option<&mut watch::Receiver<u64>>) -> Option<Option<Signal>> {
        if let Some(signal) = self.held.pop_front() {
            return Some(Some(signal));
        }
        let Some(members) = members else {
            return self.rx.recv().await.map(Some);
        };
        let changed = tokio::select! {
            signal = self.rx.recv() => return signal.map(Some),
            changed = members.changed() => changed,
        };
        match changed {
            Ok(()) => Some(None),
            // The cluster is gone (the node stops): no change comes any more.
            Err(_) => self.rx.recv().await.map(Some),
        }
    }

    /// Waits until `deadline` for the answer tagged `tag`; every other
    /// signal is kept for later, in order. With `node`, gives up as soon as
    /// `alive(node)` says that node left.
    async fn call(
        &mut self,
        tag: i64,
        deadline: Instant,
        node: Option<u64>,
        alive: impl Fn(u64) -> bool,
    ) -> Result<Vec<u8>, NoAnswer> {
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(NoAnswer::TimedOut);
            }
            let wake = match node {
                Some(_) => deadline.min(now + REMOTE_CHECK),
                None => deadline,
            };
            tokio::select! {
                signal = self.rx.recv() => match signal {
                    Some(Signal::Message(Message::Data(data))) if data.tag == Some(tag) => {
                        return Ok(data.buffer);
                    }
                    Some(other) => self.held.push_back(other),
                    None => return Err(NoAnswer::TimedOut),
                },
                () = tokio::time::sleep_until(wake.into()) => {
                    if node.is_some_and(|n| !alive(n)) {
                        return Err(NoAnswer::NodeLeft);
                    }
                }
            }
        }
    }
}

struct Shell {
    sessions: Arc<Sessions>,
    session: Session,
    socket: u64,
    this: SessionRef,
    handle: Arc<dyn Process>,
    mailbox: Mailbox,
    /// The cluster's membership changes (outside a cluster: none).
    members: Option<watch::Receiver<u64>>,
    /// The channel process of every joined topic.
    channels: HashMap<String, ChannelRef>,
    started: Instant,
    presence_shards: u32,
}

impl Shell {
    fn new(
        sessions: Arc<Sessions>,
        id: u64,
        handle: Arc<dyn Process>,
        rx: UnboundedReceiver<Signal>,
        start: &Start,
    ) -> Shell {
        let started = Instant::now();
        let node = sessions.node_id();
        Shell {
            session: Session::new(start, id, now(started)).on_node(node),
            socket: start.socket,
            this: SessionRef::at(node, id),
            handle,
            mailbox: Mailbox {
                rx,
                held: VecDeque::new(),
            },
            members: sessions.cluster.as_ref().map(|c| c.subscribe()),
            channels: HashMap::new(),
            started,
            presence_shards: start.config.presence_shards,
            sessions,
        }
    }

    fn count(&self, metric: Metric, delta: i64) {
        self.sessions.metrics.add(self.this.pid(), metric, delta);
    }

    /// Serves the socket until it ends.
    async fn run(&mut self, registered: &mut Registered) -> Ended {
        self.count(Metric::SessionsActive, 1);
        self.count(Metric::SessionsTotal, 1);
        // Client messages may have arrived before this process existed.
        if let Err(ended) = self.drain_inlet().await {
            return ended;
        }
        loop {
            let remote = self.channels.values().any(|c| c.node() != self.this.node());
            let members = self.members.as_mut().filter(|_| remote);
            let Some(signal) = self.mailbox.next(members).await else {
                return Ended::Close(0, String::new());
            };
            let effects = match signal {
                // The membership changed: a channel on another node may be
                // gone with its node.
                None => vec![Effect::CheckChannels],
                Some(Signal::Message(Message::Data(data))) if data.tag == Some(INLET_TAG) => {
                    if let Err(ended) = self.drain_inlet().await {
                        return ended;
                    }
                    continue;
                }
                Some(signal) => match self.signal(signal, registered) {
                    Ok(effects) => effects,
                    Err(ended) => return ended,
                },
            };
            if let Some(ended) = self.apply(effects).await {
                return ended;
            }
        }
    }

    /// What one signal leads to.
    fn signal(
        &mut self,
        signal: Signal,
        registered: &mut Registered,
    ) -> Result<Vec<Effect>, Ended> {
        let mut effects = Vec::new();
        match signal {
            Signal::Message(Message::Data(data)) if data.tag.is_none() => {
                match bincode::deserialize::<SessionMsg>(&data.buffer) {
                    Ok(SessionMsg::Rejoin { topic }) => {
                        self.session.rejoin(&topic, now(self.started), &mut effects);
                    }
                    Ok(SessionMsg::Moved { topic, channel }) => {
                        if self.channels.get(&topic) == Some(&channel) {
                            self.channels.remove(&topic);
                            self.session.channel_died(&topic, &mut effects);
                        }
                    }
                    Err(e) => {
                        tracing::warn!("session: an undecodable message was dropped: {e}")
                    }
                }
            }
            // A monitored channel died: its topics get `phx_error`.
            Signal::ProcessDied(_) => effects.push(Effect::CheckChannels),
            Signal::Monitor(process) => registered.monitors.push(process),
            Signal::StopMonitoring { process_id } => {
                registered.monitors.retain(|p| p.id() != process_id);
            }
            Signal::Kill => return Err(Ended::Crash("the session was killed")),
            // Late answers of calls this session stopped waiting for, and
            // links (nothing links to a session).
            Signal::Message(_)
            | Signal::Link(..)
            | Signal::UnLink { .. }
            | Signal::LinkDied(..)
            | Signal::DieWhenLinkDies(_) => {}
        }
        Ok(effects)
    }
}

impl Shell {
    /// Handles every client message waiting in the socket's inlet.
    async fn drain_inlet(&mut self) -> Result<(), Ended> {
        loop {
            let Some(inbound) = self.sessions.sockets.inlet_next(self.socket) else {
                return Ok(());
            };
            let now = now(self.started);
            let mut effects = Vec::new();
            match &inbound {
                Inbound::Text(bytes) => {
                    self.count(Metric::MessagesIn, 1);
                    match std::str::from_utf8(bytes) {
                        Ok(text) => self
                            .session
                            .on_frame(FrameRef::Text(text), now, &mut effects),
                        // The reader checked UTF-8 (1007); never here.
                        Err(_) => return Err(Ended::Close(1007, "invalid UTF-8".into())),
                    }
                }
                Inbound::Binary(bytes) => {
                    self.count(Metric::MessagesIn, 1);
                    self.session
                        .on_frame(FrameRef::Binary(bytes), now, &mut effects);
                }
                Inbound::Closed { code, reason } => {
                    if *code > 1000 {
                        self.count(Metric::ProtocolErrors, 1);
                    }
                    return Err(Ended::Close(*code, reason.clone()));
                }
            }
            if let Some(ended) = self.apply(effects).await {
                return Err(ended);
            }
        }
    }

    /// Carries out effects, and those they lead to; `Some` when the session
    /// must end.
    async fn apply(&mut self, mut effects: Vec<Effect>) -> Option<Ended> {
        let mut ended = None;
        while !effects.is_empty() {
            for effect in std::mem::take(&mut effects) {
                if let Some(end) = self.effect(effect, &mut effects).await {
                    ended = Some(end);
                }
            }
        }
        ended
    }

    /// Sends to the channel of `topic`, if joined.
    fn to_channel(&self, topic: &str, message: &ChannelMsg) {
        if let Some(channel) = self.channels.get(topic) {
            self.sessions
                .send_child(channel.node(), channel.pid(), message);
        }
    }

    /// One effect; follow-up effects (answers fed back to the session) go
    /// to `more`.
    async fn effect(&mut self, effect: Effect, more: &mut Vec<Effect>) -> Option<Ended> {
        let me = self.this;
        match effect {
            Effect::Write(bytes) => {
                let sent =
                    self.sessions
                        .sockets
                        .send(None, self.socket, Lane::Control, "", "", &bytes);
                // The host closes a slow consumer's socket itself.
                if !matches!(sent, Sent::Ok) {
                    return Some(Ended::Close(0, String::new()));
                }
            }
            Effect::Count(metric) => self.count(metric, 1),
            Effect::Join {
                topic,
                params,
                may_start,
            } => {
                let located = Box::pin(self.find(&topic, may_start)).await;
                if let Located::Started(_) = located {
                    self.session.channel_started(now(self.started));
                }
                match located {
                    Located::Found(channel) | Located::Started(channel) => {
                        let outlet = Outlet {
                            node: me.node(),
                            relay: RELAY_PID,
                            socket: self.socket,
                        };
                        self.sessions.send_child(
                            channel.node(),
                            channel.pid(),
                            &ChannelMsg::Join(JoinReq {
                                session: me,
                                outlet,
                                params,
                            }),
                        );
                        self.monitor(&channel, more);
                        if let Some(old) = self.channels.insert(topic, channel) {
                            if old != channel {
                                self.stop_monitoring(&old);
                            }
                        }
                    }
                    Located::Full(reason) | Located::Unreachable(reason) => {
                        self.forget(&topic);
                        self.session.join_refused(&topic, Some(&reason), more);
                    }
                    Located::Absent if !may_start => {
                        self.forget(&topic);
                        self.session.join_refused(&topic, None, more);
                    }
                    Located::Absent => {
                        self.forget(&topic);
                        self.session.join_failed(&topic, more);
                    }
                }
            }
            Effect::Leave { topic } => {
                self.to_channel(&topic, &ChannelMsg::Leave { session: me });
                self.forget(&topic);
            }
            Effect::Publish {
                topic,
                event,
                payload,
                ack,
            } => self.to_channel(
                &topic,
                &ChannelMsg::Publish(Publish {
                    from: Some(me),
                    event,
                    payload,
                    ack,
                    reply: None,
                    by: None,
                }),
            ),
            Effect::Playback {
                topic,
                user,
                by_claim,
                payload,
                refs,
                ack,
            } => self.to_channel(
                &topic,
                &ChannelMsg::Room(RoomMsg::Playback {
                    from: me,
                    user,
                    by_claim,
                    payload,
                    refs,
                    ack,
                }),
            ),
            Effect::Track { topic, meta, refs } => self.to_channel(
                &topic,
                &ChannelMsg::Presence {
                    session: me,
                    meta,
                    refs,
                },
            ),
            Effect::Subscribe {
                topic,
                add,
                remove,
                refs,
            } => self.to_channel(
                &topic,
                &ChannelMsg::PresenceSubscribe {
                    session: me,
                    add,
                    remove,
                    refs,
                },
            ),
            Effect::Online {
                keys,
                join_ref,
                msg_ref,
            } => {
                let online = Box::pin(self.online(&keys)).await;
                self.session.online_answer(
                    &keys,
                    &online,
                    join_ref.as_deref(),
                    msg_ref.as_deref(),
                    more,
                );
            }
            Effect::CheckChannels => {
                let dead: Vec<String> = self
                    .channels
                    .iter()
                    .filter(|(_, c)| !self.sessions.maybe_alive(c.node(), c.pid()))
                    .map(|(t, _)| t.clone())
                    .collect();
                for topic in dead {
                    self.channels.remove(&topic);
                    self.session.channel_died(&topic, more);
                }
            }
            Effect::Crash => return Some(Ended::Crash(
                "fault injection: the session crashed as its client asked (node.fault_injection)",
            )),
            Effect::CrashChannel { topic } => self.to_channel(&topic, &ChannelMsg::Crash),
            Effect::CrashPresence { key } => {
                let shard = shard_of(&key, self.presence_shards as usize);
                if let Some((node, pid)) = self.sessions.lookup(&shard_key(shard)).await {
                    self.sessions.send_child(node, pid, &ShardMsg::Crash);
                }
            }
        }
        None
    }

    /// Asks a local channel to tell this session when it dies (lunatic
    /// monitors only local processes: a remote channel is checked by its
    /// node's membership, now and at each change of it). One that is
    /// already gone is checked at once.
    fn monitor(&self, channel: &ChannelRef, more: &mut Vec<Effect>) {
        if channel.node() != self.this.node() {
            if !self.sessions.node_alive(channel.node()) {
                more.push(Effect::CheckChannels);
            }
            return;
        }
        match self.sessions.env.get_process(channel.pid()) {
            Some(process) => process.send(Signal::Monitor(self.handle.clone())),
            None => more.push(Effect::CheckChannels),
        }
    }

    fn stop_monitoring(&self, channel: &ChannelRef) {
        if channel.node() != self.this.node() {
            return;
        }
        if let Some(process) = self.sessions.env.get_process(channel.pid()) {
            process.send(Signal::StopMonitoring {
                process_id: self.this.pid(),
            });
        }
    }

    /// Drops the channel of `topic` (left, or its join failed).
    fn forget(&mut self, topic: &str) {
        if let Some(channel) = self.channels.remove(topic) {
            if self.channels.values().all(|c| *c != channel) {
                self.stop_monitoring(&channel);
            }
        }
    }

    /// Sends a request built around a reply address of this session and
    /// waits for its answer (see [`Mailbox::call`]).
    async fn call<R: DeserializeOwned>(
        &mut self,
        send: impl FnOnce(ReplyTo<R>),
        timeout: Duration,
        node: Option<u64>,
    ) -> Result<Option<R>, NoAnswer> {
        let tag = self.sessions.next_tag();
        send(ReplyTo::at(self.this.node(), self.this.pid(), tag));
        let sessions = self.sessions.clone();
        let bytes = self
            .mailbox
            .call(tag, Instant::now() + timeout, node, move |n| {
                sessions.node_alive(n)
            })
            .await?;
        Ok(bincode::deserialize(&bytes).ok())
    }

    /// What `topic`'s directory answers: its running channel, one started
    /// for this call (only with `spawn`), none, or none because the node
    /// is full. The directory is on the topic's home node: here, found in
    /// the registry; on another node, reached through that node's door,
    /// whose shard answers this session directly. A home node that leaves
    /// while the session waits is dropped from the ring and the topic's new
    /// home is asked.
    async fn find(&mut self, topic: &str, spawn: bool) -> Located {
        loop {
            let placement = self.sessions.placement();
            let Some((node, directory)) = placement
                .home(topic)
                .and_then(|home| Some((home.node.parse::<u64>().ok()?, home.directory)))
            else {
                return Located::Absent;
            };
            let remote = node != self.this.node();
            // Another node's directory is asked through that node's door
            // (plain message), this node's directly (a supervised child).
            let asked = if remote {
                self.count(Metric::RemoteLocates, 1);
                Some((node, DOOR_PID))
            } else {
                self.sessions
                    .lookup(&format!("{DIR_KEY}{}", directory_name(directory)))
                    .await
            };
            let Some((to_node, to_pid)) = asked else {
                return Located::Absent;
            };
            let sessions = self.sessions.clone();
            let topic = topic.to_string();
            let answer = self
                .call(
                    move |reply| {
                        if remote {
                            let msg = DoorMsg::Locate {
                                directory,
                                topic,
                                spawn,
                                reply,
                            };
                            sessions.send_plain(to_node, to_pid, &msg);
                        } else {
                            let msg = DirMsg::Locate {
                                topic,
                                spawn,
                                reply,
                            };
                            sessions.send_child(to_node, to_pid, &msg);
                        }
                    },
                    LOCATE_TIMEOUT,
                    remote.then_some(node),
                )
                .await;
            return match answer {
                Ok(located) => located.unwrap_or(Located::Absent),
                // The ring has one node fewer each time: this ends.
                Err(NoAnswer::NodeLeft) => continue,
                Err(NoAnswer::TimedOut) if remote => Located::Unreachable(format!(
                    "unavailable: the home node of this topic (cluster node {node}) did not answer within {} s, retry",
                    LOCATE_TIMEOUT.as_secs()
                )),
                Err(NoAnswer::TimedOut) => Located::Absent,
            };
        }
    }

    /// The subset of `keys` online anywhere (this node's presence shards
    /// hold every node's reports), sorted.
    async fn online(&mut self, keys: &[String]) -> Vec<String> {
        let mut by_shard: HashMap<usize, Vec<String>> = HashMap::new();
        for k in keys {
            by_shard
                .entry(shard_of(k, self.presence_shards as usize))
                .or_default()
                .push(k.clone());
        }
        let mut online = Vec::new();
        for (shard, keys) in by_shard {
            let Some((node, pid)) = self.sessions.lookup(&shard_key(shard)).await else {
                continue;
            };
            let sessions = self.sessions.clone();
            let found = self
                .call(
                    move |reply| sessions.send_child(node, pid, &ShardMsg::Query { keys, reply }),
                    QUERY_TIMEOUT,
                    None,
                )
                .await;
            if let Ok(Some(found)) = found {
                online.extend(found);
            }
        }
        online.sort();
        online
    }

    /// Leaves every channel and closes the socket; what crashed it, if it
    /// crashed (the socket is then closed by [`CrashGuard`]).
    fn finish(mut self, ended: Ended) -> Option<&'static str> {
        let me = self.this;
        for topic in self.session.leave_all() {
            if let Some(channel) = self.channels.remove(&topic) {
                self.sessions.send_child(
                    channel.node(),
                    channel.pid(),
                    &ChannelMsg::Leave { session: me },
                );
                self.stop_monitoring(&channel);
            }
        }
        self.count(Metric::SessionsActive, -1);
        match ended {
            Ended::Close(code, reason) => {
                let code = (code != 0).then_some(code);
                self.sessions.sockets.close(self.socket, code, &reason);
                None
            }
            Ended::Crash(why) => Some(why),
        }
    }
}

/// The registry key of presence shard `i`.
fn shard_key(i: usize) -> String {
    format!("{SHARD_KEY}chorus-presence-{i}")
}

fn now(started: Instant) -> Now {
    Now {
        mono_ms: started.elapsed().as_millis() as u64,
        unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0),
    }
}
