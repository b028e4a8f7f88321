//! A WebSocket session: one process per socket, spawned by the host (see
//! `host-bridge/src/gateway.rs`) from the exported `chorus_session`.
//!
//! The host reads the socket, decodes WebSocket frames and queues whole
//! client messages; a small wake message (tag `INLET_TAG`) says some wait,
//! and the session takes them with `host::inlet_next`. Everything the
//! protocol decides is in `chorus_core::session`; this process only moves
//! its effects: frames to the socket's outlet, messages to channels and
//! presence shards.

use std::collections::HashMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chorus_core::metrics::Metric;
use chorus_core::phoenix::FrameRef;
use chorus_core::session::{Effect, Now, Session, Start};
use supervisors::mail::{self, Mail};

use crate::channel;
use crate::host::{self, Inlet};
use crate::msg::{
    ChannelMsg, ChannelRef, JoinReq, Located, Mailer, Publish, RoomMsg, SessionMsg, SessionRef,
};

/// Tag of the host's "client messages are waiting" mail (`socket.rs`).
const INLET_TAG: i64 = 64;

/// The session process' entry, exported to the host.
pub fn run(socket: u64) {
    let Some(start) =
        host::socket_start(socket).and_then(|bytes| bincode::deserialize::<Start>(&bytes).ok())
    else {
        host::log(host::Level::Error, "a session started without its socket");
        return;
    };
    host::metric(Metric::SessionsActive, 1);
    host::metric(Metric::SessionsTotal, 1);
    let started = Instant::now();
    let this = crate::msg::this_session();
    let mut shell = Shell {
        session: Session::new(&start, lunatic::host::process_id(), now(started))
            .on_node(mail::node_id()),
        socket,
        this,
        channels: HashMap::new(),
        watched: Vec::new(),
        started,
        presence_shards: start.config.presence_shards,
    };
    // Client messages may have arrived before this process existed.
    let close = shell.drain_inlet().err();
    let close = match close {
        Some(close) => close,
        None => shell.serve(),
    };
    for topic in shell.session.leave_all() {
        if let Some(channel) = shell.channels.remove(&topic) {
            channel.send(ChannelMsg::Leave { session: this });
        }
    }
    let frame = (close.code != 0).then_some((close.code, close.reason.as_str()));
    host::outlet_close(socket, frame);
    host::metric(Metric::SessionsActive, -1);
}

/// Why a session ended: the close frame to send (code 0: none).
struct Close {
    code: u16,
    reason: String,
}

struct Shell {
    session: Session,
    socket: u64,
    this: SessionRef,
    /// The channel process of every joined topic.
    channels: HashMap<String, ChannelRef>,
    /// The other nodes whose watch (`door::watch`) this session monitors,
    /// and that watch's pid.
    watched: Vec<(u64, u64)>,
    started: Instant,
    presence_shards: u32,
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

impl Shell {
    /// Waits for mail until the socket ends. The host enforces idleness (no
    /// heartbeat for `limits.heartbeat_timeout_ms` ends the inlet), so this
    /// waits without a timeout.
    fn serve(&mut self) -> Close {
        loop {
            match mail::receive(&[], None) {
                Mail::Data { tag: INLET_TAG, .. } => {
                    if let Err(close) = self.drain_inlet() {
                        return close;
                    }
                }
                Mail::Data {
                    tag: mail::UNTAGGED,
                    bytes,
                } => match mail::decode::<SessionMsg>(&bytes) {
                    Ok(SessionMsg::Rejoin { topic }) => {
                        let mut effects = Vec::new();
                        self.session.rejoin(&topic, now(self.started), &mut effects);
                        if let Some(close) = self.apply(effects) {
                            return close;
                        }
                    }
                    Ok(SessionMsg::Moved { topic, channel }) => {
                        if self.channels.get(&topic) == Some(&channel) {
                            self.channels.remove(&topic);
                            let mut effects = Vec::new();
                            self.session.channel_died(&topic, &mut effects);
                            if let Some(close) = self.apply(effects) {
                                return close;
                            }
                        }
                    }
                    Err(e) => host::log(
                        host::Level::Warn,
                        &format!("session: an undecodable message was dropped: {e}"),
                    ),
                },
                // A monitored channel died: its topics get `phx_error`.
                Mail::ProcessDied { pid } => {
                    // A watch that ended: its node left (a later join there
                    // watches its next incarnation).
                    self.watched.retain(|(_, w)| *w != pid);
                    if let Some(close) = self.apply(vec![Effect::CheckChannels]) {
                        return close;
                    }
                }
                // Late answers of calls this session stopped waiting for.
                Mail::Data { .. } | Mail::LinkDied { .. } => {}
                Mail::TimedOut => {}
            }
        }
    }

    /// Handles every client message waiting in the host's inlet.
    fn drain_inlet(&mut self) -> Result<(), Close> {
        while let Some(inlet) = host::inlet_next(self.socket) {
            let now = now(self.started);
            let mut effects = Vec::new();
            match &inlet {
                Inlet::Text(bytes) => {
                    host::metric(Metric::MessagesIn, 1);
                    match std::str::from_utf8(bytes) {
                        Ok(text) => self
                            .session
                            .on_frame(FrameRef::Text(text), now, &mut effects),
                        // The host checked UTF-8 (1007); never here.
                        Err(_) => {
                            return Err(Close {
                                code: 1007,
                                reason: "invalid UTF-8".into(),
                            })
                        }
                    }
                }
                Inlet::Binary(bytes) => {
                    host::metric(Metric::MessagesIn, 1);
                    self.session
                        .on_frame(FrameRef::Binary(bytes), now, &mut effects);
                }
                Inlet::Closed { code, reason } => {
                    if *code > 1000 {
                        host::metric(Metric::ProtocolErrors, 1);
                    }
                    return Err(Close {
                        code: *code,
                        reason: reason.clone(),
                    });
                }
            }
            if let Some(close) = self.apply(effects) {
                return Err(close);
            }
        }
        Ok(())
    }

    /// Carries out effects, and those they lead to; `Some` when the session
    /// must end.
    fn apply(&mut self, mut effects: Vec<Effect>) -> Option<Close> {
        let mut ended = None;
        while !effects.is_empty() {
            for effect in std::mem::take(&mut effects) {
                if let Some(close) = self.effect(effect, &mut effects) {
                    ended = Some(close);
                }
            }
        }
        ended
    }

    /// One effect; follow-up effects (answers fed back to the session) go
    /// to `more`.
    fn effect(&mut self, effect: Effect, more: &mut Vec<Effect>) -> Option<Close> {
        let me = self.this;
        match effect {
            Effect::Write(bytes) => {
                match host::outlet_send(self.socket, &bytes, host::Route::CONTROL) {
                    host::Sent::Ok => {}
                    // The host closes the socket itself (`slow_consumer`).
                    host::Sent::SlowConsumer | host::Sent::Gone => {
                        return Some(Close {
                            code: 0,
                            reason: String::new(),
                        })
                    }
                }
            }
            Effect::Count(metric) => host::metric(metric, 1),
            Effect::Join {
                topic,
                params,
                may_start,
            } => {
                let located = channel::find(&topic, may_start);
                if let Located::Started(_) = located {
                    self.session.channel_started(now(self.started));
                }
                match located {
                    Located::Found(channel) | Located::Started(channel) => {
                        channel.send(ChannelMsg::Join(JoinReq {
                            session: self.this,
                            outlet: crate::relay::outlet(self.socket),
                            params,
                        }));
                        // A channel that dies tells this session at once
                        // (`ProcessDied`), not at the client's next heartbeat:
                        // the client gets `phx_error` and rejoins the restarted
                        // channel within milliseconds.
                        // lunatic monitors only local processes: a remote
                        // channel's loss shows as its node leaving, which
                        // this node's watch of that node reports by ending.
                        if channel.node() == mail::node_id() {
                            // SAFETY: scalar call on a process id.
                            unsafe { lunatic::host::api::process::monitor(channel.pid()) };
                        } else if self.watched.iter().all(|(n, _)| *n != channel.node()) {
                            if let Some(watch) = crate::door::watch(channel.node()) {
                                self.watched.push((channel.node(), watch));
                                // SAFETY: scalar call on a process id.
                                unsafe { lunatic::host::api::process::monitor(watch) };
                            }
                        }
                        self.channels.insert(topic, channel);
                    }
                    Located::Full(reason) | Located::Unreachable(reason) => {
                        self.channels.remove(&topic);
                        self.session.join_refused(&topic, Some(&reason), more);
                    }
                    Located::Absent if !may_start => {
                        self.channels.remove(&topic);
                        self.session.join_refused(&topic, None, more);
                    }
                    Located::Absent => {
                        self.channels.remove(&topic);
                        self.session.join_failed(&topic, more);
                    }
                }
            }
            Effect::Leave { topic } => {
                if let Some(channel) = self.channels.remove(&topic) {
                    channel.send(ChannelMsg::Leave { session: me });
                }
            }
            Effect::Publish {
                topic,
                event,
                payload,
                ack,
            } => {
                if let Some(channel) = self.channels.get(&topic) {
                    channel.send(ChannelMsg::Publish(Publish {
                        from: Some(me),
                        event,
                        payload,
                        ack,
                        reply: None,
                    }));
                }
            }
            Effect::Playback {
                topic,
                user,
                by_claim,
                payload,
                refs,
                ack,
            } => {
                if let Some(channel) = self.channels.get(&topic) {
                    channel.send(ChannelMsg::Room(RoomMsg::Playback {
                        from: me,
                        user,
                        by_claim,
                        payload,
                        refs,
                        ack,
                    }));
                }
            }
            Effect::Track { topic, meta, refs } => {
                if let Some(channel) = self.channels.get(&topic) {
                    channel.send(ChannelMsg::Presence {
                        session: me,
                        meta,
                        refs,
                    });
                }
            }
            Effect::Subscribe {
                topic,
                add,
                remove,
                refs,
            } => {
                if let Some(channel) = self.channels.get(&topic) {
                    channel.send(ChannelMsg::PresenceSubscribe {
                        session: me,
                        add,
                        remove,
                        refs,
                    });
                }
            }
            Effect::Online {
                keys,
                join_ref,
                msg_ref,
            } => {
                let online = crate::presence::online(&keys, self.presence_shards);
                self.session.online_answer(
                    &keys,
                    &online,
                    join_ref.as_deref(),
                    msg_ref.as_deref(),
                    more,
                );
            }
            Effect::CheckChannels => {
                // Remote channels count alive while their node is a member
                // now (a session told by a watch must see the same).
                let here = mail::node_id();
                let members = if self.channels.values().any(|c| c.node() != here) {
                    channel::members_now()
                } else {
                    Vec::new()
                };
                let dead: Vec<String> = self
                    .channels
                    .iter()
                    .filter(|(_, c)| !mail::maybe_alive(c.node(), c.pid(), &members))
                    .map(|(t, _)| t.clone())
                    .collect();
                for topic in dead {
                    self.channels.remove(&topic);
                    self.session.channel_died(&topic, more);
                }
            }
            Effect::Crash => panic!("fault injection: session crash requested by the client"),
            Effect::CrashChannel { topic } => {
                if let Some(channel) = self.channels.get(&topic) {
                    channel.send(ChannelMsg::Crash);
                }
            }
            Effect::CrashPresence { key } => crate::presence::crash(&key, self.presence_shards),
        }
        None
    }
}
