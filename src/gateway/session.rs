//! A WebSocket session: one supervised process owning the socket's write
//! side and the session's joins, plus a linked reader process that decodes
//! frames and mails them in. Client frames and channel deliveries arrive in
//! the one mailbox, so the session handles them in order without locks.

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_core::config::Config;
use chorus_core::join::{self, JoinConfig};
use chorus_core::jwt;
use chorus_core::metrics::Metric;
use chorus_core::phoenix::{self, event, FrameRef, Inbound, Outbound, Payload, Vsn};
use chorus_core::ratelimit::{self, TokenBucket};
use chorus_core::selective;
use chorus_core::ws::{self, FrameDecoder, WsEvent};
use lunatic::net::TcpStream;
use lunatic::{Mailbox, Process};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use supervisors::{ChildRef, Inbox, Incoming};

use crate::channel::{self, Body, ChannelMsg, JoinReq, Publish};
use crate::host;

/// Everything a session process receives.
#[derive(Debug, Serialize, Deserialize)]
pub enum SessionMsg {
    /// The accepted connection, sent by the acceptor right after the start
    /// (a lunatic resource cannot be a restartable start argument).
    Socket(TcpStream),
    /// A data message from the client.
    Text(String),
    Binary(Vec<u8>),
    /// A ping to answer with a pong.
    Ping(Vec<u8>),
    /// The reader stopped: the client closed, the socket failed or the
    /// client broke the protocol. `code` is the close code to send (0: none).
    ReaderClosed {
        code: u16,
        reason: String,
    },
    /// A join raced with its channel stopping: join again.
    Rejoin {
        topic: String,
    },
}

/// The session process: waits for its socket, then serves it.
pub fn session(config: Config, inbox: Inbox<SessionMsg>) {
    // Generous: under a connect storm the acceptor may be slow to hand it over.
    let stream = match inbox.receive_timeout(Duration::from_secs(30)) {
        Some(Incoming::Message(SessionMsg::Socket(s))) => s,
        _ => return,
    };
    super::conn::serve(stream, config, inbox);
}

/// Runs an upgraded WebSocket until it closes or its heartbeat times out.
pub fn run(
    stream: TcpStream,
    vsn: Vsn,
    early: Vec<u8>,
    config: Config,
    claims: Option<jwt::Claims>,
    inbox: Inbox<SessionMsg>,
) {
    let this = inbox.this();
    let max_frame = config.limits.max_frame_bytes as usize;
    let reader = Process::spawn_link(
        (stream.clone(), early, max_frame, this),
        |(stream, early, max, session), _: Mailbox<()>| read_loop(stream, early, max, session),
    );
    let Some(outlet) = host::outlet_open(&stream, vsn) else {
        host::log(host::Level::Error, "cannot hand the socket to the host");
        reader.kill();
        return;
    };
    host::metric(Metric::SessionsActive, 1);
    host::metric(Metric::SessionsTotal, 1);
    let flood = TokenBucket::new(
        config.limits.client_messages_per_second,
        config.limits.client_burst,
        0,
    );
    let mut session = Session {
        outlet,
        vsn,
        heartbeat: Duration::from_millis(config.limits.heartbeat_timeout_ms),
        last_seen: Instant::now(),
        joined: HashMap::new(),
        this,
        config,
        claims,
        closed: None,
        flood,
        started: Instant::now(),
    };
    let close = session.serve(&inbox);
    session.leave_all();
    session.close(close);
    reader.kill();
    host::metric(Metric::SessionsActive, -1);
}

/// Reads the socket and mails each WebSocket event to the session.
fn read_loop(mut stream: TcpStream, early: Vec<u8>, max: usize, session: ChildRef<SessionMsg>) {
    let mut decoder = FrameDecoder::new(max);
    decoder.push(&early);
    // Small: one per connection; a large message just takes more reads.
    let mut buf = vec![0u8; 4 * 1024];
    loop {
        loop {
            match decoder.next() {
                Ok(Some(event)) => {
                    let msg = match event {
                        WsEvent::Text(t) => SessionMsg::Text(t),
                        WsEvent::Binary(b) => SessionMsg::Binary(b),
                        WsEvent::Ping(p) => SessionMsg::Ping(p),
                        WsEvent::Pong => continue,
                        WsEvent::Close(_) => {
                            session.send(SessionMsg::ReaderClosed {
                                code: 1000,
                                reason: String::new(),
                            });
                            return;
                        }
                    };
                    session.send(msg);
                }
                Ok(None) => break,
                Err(e) => {
                    host::metric(Metric::ProtocolErrors, 1);
                    session.send(SessionMsg::ReaderClosed {
                        code: e.close_code(),
                        reason: e.to_string(),
                    });
                    return;
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                session.send(SessionMsg::ReaderClosed {
                    code: 0,
                    reason: String::new(),
                });
                return;
            }
            Ok(n) => {
                host::metric(Metric::BytesIn, n as i64);
                decoder.push(&buf[..n]);
            }
        }
    }
}

/// Why a session ended: the close frame to send, if any.
struct Close {
    code: u16,
    reason: String,
}

/// One topic this socket has joined.
struct Joined {
    join_ref: String,
    /// The join push's ref, to answer a retried join.
    msg_ref: Option<String>,
    channel: ChildRef<ChannelMsg>,
    config: JoinConfig,
}

struct Session {
    /// The host-side write queue of this socket (see `host::outlet_send`).
    outlet: u64,
    vsn: Vsn,
    heartbeat: Duration,
    last_seen: Instant,
    joined: HashMap<String, Joined>,
    this: ChildRef<SessionMsg>,
    config: Config,
    /// Claims of the socket's `apikey` when auth is on.
    claims: Option<jwt::Claims>,
    /// Set when a write failed: the session ends.
    closed: Option<Close>,
    /// Per-socket flood limit (`limits.client_messages_per_second`), on the
    /// clock of `started`.
    flood: TokenBucket,
    started: Instant,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Session {
    fn serve(&mut self, inbox: &Inbox<SessionMsg>) -> Close {
        loop {
            if let Some(close) = self.closed.take() {
                return close;
            }
            let left = self.heartbeat.saturating_sub(self.last_seen.elapsed());
            let msg = match inbox.receive_timeout(left) {
                Some(Incoming::Message(msg)) => msg,
                Some(Incoming::Shutdown) => {
                    return Close {
                        code: 1001,
                        reason: "server shutting down".into(),
                    }
                }
                None => {
                    return Close {
                        code: 1000,
                        reason: "heartbeat timeout".into(),
                    }
                }
            };
            match msg {
                SessionMsg::Text(text) => {
                    self.last_seen = Instant::now();
                    self.on_frame(FrameRef::Text(&text));
                }
                SessionMsg::Binary(bytes) => {
                    self.last_seen = Instant::now();
                    self.on_frame(FrameRef::Binary(&bytes));
                }
                SessionMsg::Ping(payload) => {
                    self.last_seen = Instant::now();
                    let mut out = Vec::new();
                    ws::encode_pong(&mut out, &payload);
                    self.write(&out);
                }
                SessionMsg::Rejoin { topic } => self.rejoin(topic),
                SessionMsg::ReaderClosed { code, reason } => return Close { code, reason },
                SessionMsg::Socket(_) => {}
            }
        }
    }

    fn on_frame(&mut self, frame: FrameRef<'_>) {
        let received_ms = crate::room::now_ms();
        host::metric(Metric::MessagesIn, 1);
        let size = match frame {
            FrameRef::Text(t) => t.len(),
            FrameRef::Binary(b) => b.len(),
        };
        let inbound = match phoenix::decode(self.vsn, frame) {
            Ok(m) => m,
            Err(e) => {
                host::metric(Metric::ProtocolErrors, 1);
                // No refs can be trusted; answer on the socket topic.
                self.send(&Outbound::push(
                    None,
                    phoenix::PHOENIX_TOPIC,
                    "phx_error",
                    json!({ "reason": format!("malformed message: {e}") }),
                ));
                return;
            }
        };
        let topic = inbound.topic().to_string();
        let join_ref = inbound.join_ref().map(str::to_string);
        let msg_ref = inbound.msg_ref().map(str::to_string);
        let event_name = inbound.event().to_string();

        if !ratelimit::is_exempt(&topic, &event_name) {
            let now_ms = self.started.elapsed().as_millis() as u64;
            if !self.flood.try_take(now_ms) {
                host::metric(Metric::RateLimited, 1);
                let reason = ratelimit::refusal(self.config.limits.client_messages_per_second);
                return self.reply_error(join_ref, msg_ref, topic, &reason);
            }
        }
        if topic == phoenix::PHOENIX_TOPIC {
            match event_name.as_str() {
                event::HEARTBEAT => {
                    self.check_channels();
                    self.reply_ok(join_ref, msg_ref, topic, json!({}));
                }
                chorus_core::room::CLOCK_EVENT => {
                    if let Inbound::Push(m) = &inbound {
                        self.clock(join_ref, msg_ref, topic, &m.payload, received_ms);
                    }
                }
                selective::ONLINE_EVENT => {
                    if let Inbound::Push(m) = &inbound {
                        self.presence_online(join_ref, msg_ref, topic, &m.payload);
                    }
                }
                "chorus_crash" if self.config.node.fault_injection => {
                    panic!("fault injection: session crash requested by the client")
                }
                other => {
                    let reason = format!("unknown event {other:?} on topic phoenix");
                    self.reply_error(join_ref, msg_ref, topic, &reason);
                }
            }
            return;
        }
        if size > self.config.limits.max_payload_bytes as usize && event_name != event::LEAVE {
            host::metric(Metric::ProtocolErrors, 1);
            self.reply_error(join_ref, msg_ref, topic, "payload_size_exceeded");
            return;
        }
        match inbound {
            Inbound::Push(m) if m.event == event::JOIN => {
                self.join(m.topic, join_ref, msg_ref, &m.payload)
            }
            Inbound::Push(m) if m.event == event::LEAVE => self.leave(m.topic, msg_ref),
            Inbound::Broadcast { broadcast, .. }
                if crate::room::is_playback(&topic, &broadcast.event) =>
            {
                let Some(joined) = self.joined.get(&topic) else {
                    return self.unmatched(join_ref, msg_ref, topic);
                };
                let refs = (joined.join_ref.clone(), msg_ref.clone());
                let msg = crate::room::playback_msg(
                    &topic,
                    &broadcast.payload,
                    &joined.config,
                    self.claims.as_ref(),
                    &self.config,
                    self.this.pid(),
                    refs.clone(),
                );
                match msg {
                    Ok(msg) => joined.channel.send(msg),
                    Err(reason) => self.reply_error(Some(refs.0), refs.1, topic, &reason),
                }
            }
            Inbound::Broadcast { broadcast, .. } => {
                let Some(joined) = self.joined.get(&topic) else {
                    return self.unmatched(join_ref, msg_ref, topic);
                };
                let ack = joined
                    .config
                    .broadcast_ack
                    .then(|| (joined.join_ref.clone(), msg_ref.clone()));
                joined.channel.send(ChannelMsg::Publish(Publish {
                    from: Some(self.this.pid()),
                    event: broadcast.event,
                    payload: Body::from_payload(&broadcast.payload),
                    ack,
                    reply: None,
                }));
            }
            Inbound::Push(m) => {
                if !self.joined.contains_key(&topic) {
                    return self.unmatched(join_ref, msg_ref, topic);
                }
                match m.event.as_str() {
                    "presence" => self.presence(topic, join_ref, msg_ref, &m.payload),
                    "access_token" => self.access_token(topic, join_ref, msg_ref, &m.payload),
                    selective::SUBSCRIBE_EVENT => {
                        self.presence_subscribe(topic, join_ref, msg_ref, &m.payload)
                    }
                    chorus_core::room::CLOCK_EVENT => {
                        self.clock(join_ref, msg_ref, topic, &m.payload, received_ms)
                    }
                    "chorus_crash_channel" if self.config.node.fault_injection => {
                        if let Some(j) = self.joined.get(&topic) {
                            j.channel.send(ChannelMsg::Crash);
                        }
                    }
                    other => {
                        let reason = format!("unknown event {other:?}");
                        self.reply_error(join_ref, msg_ref, topic, &reason)
                    }
                }
            }
        }
    }

    /// Verifies a token when the node has a JWT secret.
    fn verify(&self, token: Option<&str>) -> Result<(), String> {
        let secret = &self.config.auth.jwt_secret;
        if secret.is_empty() {
            return Ok(());
        }
        match token {
            Some(t) => jwt::verify_hs256(t, secret.as_bytes(), now_secs())
                .map(|_| ())
                .map_err(|e| format!("invalid access token: {e}")),
            None if self.claims.is_some() => Ok(()),
            None => Err("an access token is required".into()),
        }
    }

    fn join(
        &mut self,
        topic: String,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        payload: &Payload,
    ) {
        if let Err(reason) = join::validate_topic(&topic) {
            return self.reply_error(join_ref, msg_ref, topic, &reason);
        }
        let config = match payload {
            Payload::Json(v) => join::parse_join(v),
            Payload::Binary(_) => Err("join payload must be JSON".into()),
        };
        let config = match config.and_then(|c| {
            join::check_presence_key(&c.presence_key, self.config.limits.presence_key_bytes)
                .map(|()| c)
        }) {
            Ok(c) => c,
            Err(reason) => return self.reply_error(join_ref, msg_ref, topic, &reason),
        };
        if let Err(reason) = self.verify(config.access_token.as_deref()) {
            return self.reply_error(join_ref, msg_ref, topic, &reason);
        }
        if let Some(old) = self.joined.remove(&topic) {
            // A second join of the same topic replaces the first.
            old.channel.send(ChannelMsg::Leave {
                session: self.this.pid(),
            });
            self.send(&Outbound::close(Some(old.join_ref), topic.clone()));
        } else if self.joined.len() >= self.config.limits.max_channels_per_socket as usize {
            let reason = format!(
                "ChannelRateLimitReached: at most {} channels per socket (limits.max_channels_per_socket)",
                self.config.limits.max_channels_per_socket
            );
            return self.reply_error(join_ref, msg_ref, topic, &reason);
        }
        let join_ref = join_ref.unwrap_or_else(|| msg_ref.clone().unwrap_or_default());
        self.start_join(topic, join_ref, msg_ref, config);
    }

    fn start_join(
        &mut self,
        topic: String,
        join_ref: String,
        msg_ref: Option<String>,
        config: JoinConfig,
    ) {
        let Some(channel) = channel::locate(&topic, true) else {
            let reason = "channel unavailable, retry";
            return self.reply_error(Some(join_ref), msg_ref, topic, reason);
        };
        let presence_key = if config.presence_key.is_empty() {
            format!("{:x}-{:x}", lunatic::host::process_id(), now_secs())
        } else {
            config.presence_key.clone()
        };
        channel.send(ChannelMsg::Join(JoinReq {
            session: self.this,
            outlet: self.outlet,
            join_ref: join_ref.clone(),
            msg_ref: msg_ref.clone(),
            v2: self.vsn == Vsn::V2,
            broadcast_self: config.broadcast_self,
            presence_key,
            presence_enabled: config.presence_enabled,
            replay: config.replay.map(|r| (r.since_ms, r.limit)),
            batch: config.batch,
            friends: self.friends(&config),
        }));
        self.joined.insert(
            topic,
            Joined {
                join_ref,
                msg_ref,
                channel,
                config,
            },
        );
    }

    fn rejoin(&mut self, topic: String) {
        if let Some(j) = self.joined.remove(&topic) {
            self.start_join(topic, j.join_ref, j.msg_ref, j.config);
        }
    }

    fn leave(&mut self, topic: String, msg_ref: Option<String>) {
        match self.joined.remove(&topic) {
            Some(j) => {
                j.channel.send(ChannelMsg::Leave {
                    session: self.this.pid(),
                });
                self.reply_ok(Some(j.join_ref.clone()), msg_ref, topic.clone(), json!({}));
                self.send(&Outbound::close(Some(j.join_ref), topic));
            }
            None => self.unmatched(None, msg_ref, topic),
        }
    }

    fn presence(
        &mut self,
        topic: String,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        payload: &Payload,
    ) {
        let Payload::Json(v) = payload else {
            return self.reply_error(join_ref, msg_ref, topic, "presence payload must be JSON");
        };
        let meta = match v.get("event").and_then(Value::as_str) {
            Some("track") => Some(v.get("payload").cloned().unwrap_or(json!({})).to_string()),
            Some("untrack") => None,
            _ => {
                let reason = "presence event must be track or untrack";
                return self.reply_error(join_ref, msg_ref, topic, reason);
            }
        };
        if let Some(j) = self.joined.get(&topic) {
            j.channel.send(ChannelMsg::Presence {
                session: self.this.pid(),
                meta,
                refs: (j.join_ref.clone(), msg_ref),
            });
        }
    }

    /// The client's friends: the `friends` claim (ignored unless a list of
    /// keys) of the join's `access_token`, else of the socket's `apikey`
    /// (with auth on), then the join's `config.presence.friends`.
    fn friends(&self, config: &JoinConfig) -> Vec<String> {
        let secret = self.config.auth.jwt_secret.as_bytes();
        let join_claims = config
            .access_token
            .as_deref()
            .filter(|_| !secret.is_empty())
            .and_then(|t| jwt::verify_hs256(t, secret, now_secs()).ok());
        let mut friends = join_claims
            .as_ref()
            .or(self.claims.as_ref())
            .and_then(|c| c.as_map().get("friends"))
            .and_then(|v| join::parse_keys(v, "friends", join::MAX_FRIENDS).ok())
            .unwrap_or_default();
        friends.extend(config.friends.iter().cloned());
        friends
    }

    /// `presence_subscribe {add, remove}`: checked here, applied and
    /// answered by the channel (which knows the current set).
    fn presence_subscribe(
        &mut self,
        topic: String,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        payload: &Payload,
    ) {
        let cap = self.config.presence.max_subscribed_keys as usize;
        let parsed = match payload {
            Payload::Json(v) => selective::parse_subscribe(v, cap),
            Payload::Binary(_) => Err("presence_subscribe payload must be JSON".into()),
        };
        let (add, remove) = match parsed {
            Ok(p) => p,
            Err(reason) => return self.reply_error(join_ref, msg_ref, topic, &reason),
        };
        if let Some(j) = self.joined.get(&topic) {
            j.channel.send(ChannelMsg::PresenceSubscribe {
                session: self.this.pid(),
                add,
                remove,
                refs: (j.join_ref.clone(), msg_ref),
            });
        }
    }

    /// `presence_online {keys}` on topic `phoenix`: which keys have a
    /// presence anywhere on the node (the green dot).
    fn presence_online(
        &mut self,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: String,
        payload: &Payload,
    ) {
        let cap = self.config.presence.max_subscribed_keys as usize;
        let keys = match payload {
            Payload::Json(v) => selective::parse_online(v, cap),
            Payload::Binary(_) => Err("presence_online payload must be JSON".into()),
        };
        match keys {
            Ok(keys) => {
                let online = crate::presence::online(&keys, self.config.presence.shards);
                let reply = selective::online_reply(&keys, &online);
                self.reply_ok(join_ref, msg_ref, topic, reply)
            }
            Err(reason) => self.reply_error(join_ref, msg_ref, topic, &reason),
        }
    }

    fn access_token(
        &mut self,
        topic: String,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        payload: &Payload,
    ) {
        let token = match payload {
            Payload::Json(v) => v.get("access_token").and_then(Value::as_str),
            Payload::Binary(_) => None,
        };
        match self.verify(token.or(Some(""))) {
            Ok(()) => self.reply_ok(join_ref, msg_ref, topic, json!({})),
            Err(reason) => {
                // Supabase's way: a system error, then the channel closes.
                if let Some(j) = self.joined.remove(&topic) {
                    j.channel.send(ChannelMsg::Leave {
                        session: self.this.pid(),
                    });
                    self.send(&Outbound::push(
                        Some(j.join_ref.clone()),
                        topic.clone(),
                        "system",
                        json!({"extension": "system", "status": "error", "message": reason, "channel": topic}),
                    ));
                    self.send(&Outbound::close(Some(j.join_ref), topic));
                }
            }
        }
    }

    /// Audio sync's `clock` push: the server's receive and send times.
    fn clock(
        &mut self,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: String,
        payload: &Payload,
        received_ms: f64,
    ) {
        match crate::room::clock(payload, received_ms) {
            Ok(r) => self.reply_ok(join_ref, msg_ref, topic, r),
            Err(reason) => self.reply_error(join_ref, msg_ref, topic, &reason),
        }
    }

    /// Sends `phx_error` for every joined channel whose process died.
    fn check_channels(&mut self) {
        let dead: Vec<String> = self
            .joined
            .iter()
            .filter(|(_, j)| !j.channel.is_alive())
            .map(|(t, _)| t.clone())
            .collect();
        for topic in dead {
            if let Some(j) = self.joined.remove(&topic) {
                self.send(&Outbound::channel_error(Some(j.join_ref), topic));
            }
        }
    }

    fn leave_all(&mut self) {
        for (_, j) in self.joined.drain() {
            j.channel.send(ChannelMsg::Leave {
                session: self.this.pid(),
            });
        }
    }

    fn unmatched(&mut self, join_ref: Option<String>, msg_ref: Option<String>, topic: String) {
        self.reply_error(join_ref, msg_ref, topic, "unmatched topic");
    }

    fn reply_ok(
        &mut self,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: String,
        response: Value,
    ) {
        self.send(&Outbound::reply(join_ref, msg_ref, topic, "ok", response));
    }

    fn reply_error(
        &mut self,
        join_ref: Option<String>,
        msg_ref: Option<String>,
        topic: String,
        reason: &str,
    ) {
        self.send(&Outbound::reply(
            join_ref,
            msg_ref,
            topic,
            "error",
            json!({ "reason": reason }),
        ));
    }

    fn send(&mut self, msg: &Outbound) {
        if let Some(bytes) = channel::encode_ws(self.vsn, msg) {
            self.write(&bytes);
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.closed.is_some() {
            return;
        }
        match host::outlet_send(self.outlet, bytes, host::Route::CONTROL) {
            host::Sent::Ok => {}
            // The host closes the socket itself (with `slow_consumer`).
            host::Sent::SlowConsumer | host::Sent::Gone => {
                self.closed = Some(Close {
                    code: 0,
                    reason: String::new(),
                })
            }
        }
    }

    fn close(&mut self, close: Close) {
        let frame = (close.code != 0).then_some((close.code, close.reason.as_str()));
        host::outlet_close(self.outlet, frame);
    }
}
