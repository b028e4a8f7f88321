//! A WebSocket session's protocol state machine (sans-IO).
//!
//! The session process is a thin interpreter around [`Session`]: it feeds
//! client frames and answers from other processes in, and carries out the
//! [`Effect`]s that come back — bytes to write on the socket, messages to
//! channel processes, a question to the presence shards. Everything the
//! protocol decides (which topic is joined with which refs, rate limiting,
//! who may publish playback, every refusal and its reason) is decided here
//! and unit-tested natively.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::caps;
use crate::command::{self, Command, Limits, Push, Refusal};
use crate::config::Config;
use crate::frame::{self, Body, BodyRef};
use crate::join::{self, JoinConfig};
use crate::jwt::{self, Claims};
use crate::metrics::Metric;
use crate::phoenix::{event, FrameRef, Vsn, PHOENIX_TOPIC};
use crate::policy::{self, Action, Policies, PolicyConfig};
use crate::ratelimit::{self, TokenBucket};
use crate::room;

/// What a session needs of the node's configuration (built once by the host
/// from [`Config`]; a session never holds the whole config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionConfig {
    pub max_payload_bytes: u32,
    pub max_channels_per_socket: u32,
    /// New channels this socket may start per second
    /// (`limits.channel_creations_per_second`, burst the same).
    pub channel_creations_per_second: u32,
    pub client_messages_per_second: u32,
    pub client_burst: u32,
    pub max_subscribed_keys: u32,
    pub max_json_depth: u32,
    /// Presence shard processes (the green dot's `presence_online`).
    pub presence_shards: u32,
    /// HS256 secret; empty when auth is off.
    pub jwt_secret: String,
    /// Longest presence key a join may ask for (`limits.presence_key_bytes`).
    pub presence_key_bytes: u32,
    /// Topic policies (`[[auth.policies]]`) for private topics.
    pub policies: Vec<PolicyConfig>,
    /// Test switch: `chorus_crash` on `phoenix` crashes the session,
    /// `chorus_crash_channel` on a joined topic its channel.
    pub fault_injection: bool,
}

impl SessionConfig {
    pub fn from_config(c: &Config) -> SessionConfig {
        SessionConfig {
            max_payload_bytes: c.limits.max_payload_bytes,
            max_channels_per_socket: c.limits.max_channels_per_socket,
            channel_creations_per_second: c.limits.channel_creations_per_second,
            client_messages_per_second: c.limits.client_messages_per_second,
            client_burst: c.limits.client_burst,
            max_subscribed_keys: c.presence.max_subscribed_keys,
            max_json_depth: c.limits.max_json_depth,
            presence_shards: c.presence.shards,
            jwt_secret: c.auth.jwt_secret.clone(),
            presence_key_bytes: c.limits.presence_key_bytes,
            policies: c.auth.policies.clone(),
            fault_injection: c.node.fault_injection,
        }
    }
}

/// What the host hands a new session process: its socket, serializer, the
/// verified claims of the socket's `apikey` (auth on) and its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub socket: u64,
    pub vsn: Vsn,
    /// The `apikey` claims as JSON text, when auth is on.
    pub claims: Option<String>,
    pub config: SessionConfig,
}

/// A join as its channel needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinParams {
    pub join_ref: String,
    pub msg_ref: Option<String>,
    pub v2: bool,
    pub broadcast_self: bool,
    pub presence_key: String,
    pub presence_enabled: bool,
    /// `config.broadcast.replay`: `(since_ms, limit)`.
    pub replay: Option<(u64, u32)>,
    /// `config.chorus.batch`.
    pub batch: bool,
    /// The client's friends: its relevant set in a large room.
    pub friends: Vec<String>,
}

/// `(join_ref, ref)` a channel answers a push with.
pub type Refs = (String, Option<String>);

/// What the session process must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Bytes (whole WebSocket frames) to write to the client.
    Write(Vec<u8>),
    /// Bump a metric by one.
    Count(Metric),
    /// Join `topic`'s channel: find it, or start it only when `may_start`
    /// (this socket's channel-creation bucket has a token). Then call
    /// [`Session::channel_started`] if a channel was started for it,
    /// [`Session::join_refused`] if none runs and none may start, or
    /// [`Session::join_failed`] if it cannot be found.
    Join {
        topic: String,
        params: JoinParams,
        may_start: bool,
    },
    /// Tell `topic`'s channel this session left.
    Leave { topic: String },
    /// A user broadcast to `topic`'s channel.
    Publish {
        topic: String,
        event: String,
        payload: Body,
        ack: Option<Refs>,
    },
    /// A checked `playback` for the audio lane's channel, which decides
    /// whether `user` is the room's host.
    Playback {
        topic: String,
        user: String,
        by_claim: bool,
        payload: Vec<u8>,
        refs: Refs,
        ack: bool,
    },
    /// Presence track (`meta` JSON text) or untrack (`None`).
    Track {
        topic: String,
        meta: Option<String>,
        refs: Refs,
    },
    /// `presence_subscribe` for the channel, which knows the current set.
    Subscribe {
        topic: String,
        add: Vec<String>,
        remove: Vec<String>,
        refs: Refs,
    },
    /// Ask the presence shards which `keys` are online, then call
    /// [`Session::online_answer`].
    Online {
        keys: Vec<String>,
        join_ref: Option<String>,
        msg_ref: Option<String>,
    },
    /// Check which joined channels' processes died and report each with
    /// [`Session::channel_died`].
    CheckChannels,
    /// Crash this session (fault injection).
    Crash,
    /// Crash the channel of `topic` (fault injection).
    CrashChannel { topic: String },
    /// Crash the presence shard that owns `key` (fault injection).
    CrashPresence { key: String },
}

/// The clocks a session reads, passed in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Now {
    /// Monotonic milliseconds (the flood limit's clock).
    pub mono_ms: u64,
    /// Wall clock, Unix milliseconds (clock sync, token expiry).
    pub unix_ms: f64,
}

impl Now {
    fn unix_secs(&self) -> u64 {
        (self.unix_ms / 1000.0) as u64
    }
}

/// One topic this socket has joined.
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub join_ref: String,
    /// The join push's ref (answers a retried join).
    pub msg_ref: Option<String>,
    pub config: JoinConfig,
    /// The presence key sent to the channel: with auth on, the token's
    /// `sub` (the user id).
    pub key: String,
    /// When the token the join was authorized with expires (Unix seconds):
    /// then the channel is closed with a `system` message.
    pub exp: Option<u64>,
    /// Cached policy decisions on a private topic: why a broadcast or a
    /// presence track is refused, `None` when allowed.
    pub send_refused: Option<String>,
    pub track_refused: Option<String>,
}

/// What [`Session::authorize`] decided for a join.
struct Authorized {
    key: String,
    exp: Option<u64>,
    send_refused: Option<String>,
    track_refused: Option<String>,
}

/// A session's protocol state.
#[derive(Debug)]
pub struct Session {
    vsn: Vsn,
    config: SessionConfig,
    claims: Option<Claims>,
    /// This process' id, for generated presence keys.
    pid: u64,
    /// Its cluster node id (0 outside a cluster), also in generated keys:
    /// pids repeat across nodes.
    node: u64,
    joined: HashMap<String, Joined>,
    flood: TokenBucket,
    /// New channels this socket may start (`limits.channel_creations_per_second`).
    creations: TokenBucket,
    policies: Policies,
}

impl Session {
    /// A session of process `pid` started from `start` at `now`.
    pub fn new(start: &Start, pid: u64, now: Now) -> Session {
        let claims = start
            .claims
            .as_deref()
            .and_then(|c| serde_json::from_str::<serde_json::Map<String, Value>>(c).ok())
            .map(Claims::from_verified);
        Session {
            vsn: start.vsn,
            flood: TokenBucket::new(
                start.config.client_messages_per_second,
                start.config.client_burst,
                now.mono_ms,
            ),
            creations: TokenBucket::new(
                start.config.channel_creations_per_second,
                start.config.channel_creations_per_second,
                now.mono_ms,
            ),
            config: start.config.clone(),
            claims,
            pid,
            node: 0,
            joined: HashMap::new(),
            // Checked when the config was loaded.
            policies: Policies::compile(&start.config.policies).unwrap_or_default(),
        }
    }

    /// The session runs on cluster node `node` (a lunatic node id): keys it
    /// generates name the node, so that two nodes' processes with the same
    /// pid never share one.
    pub fn on_node(mut self, node: u64) -> Session {
        self.node = node;
        self
    }

    pub fn vsn(&self) -> Vsn {
        self.vsn
    }

    /// The topics joined now.
    pub fn joined(&self) -> impl Iterator<Item = (&String, &Joined)> {
        self.joined.iter()
    }

    /// Handles one client frame.
    pub fn on_frame(&mut self, frame: FrameRef<'_>, now: Now, out: &mut Vec<Effect>) {
        let size = match frame {
            FrameRef::Text(t) => t.len(),
            FrameRef::Binary(b) => b.len(),
        };
        let push = match command::decode(self.vsn, frame, self.config.max_json_depth as usize) {
            Ok(p) => p,
            Err(e) => {
                out.push(Effect::Count(Metric::ProtocolErrors));
                let payload = json!({ "reason": e.to_string() }).to_string();
                out.push(Effect::Write(frame::message(
                    self.vsn,
                    None,
                    None,
                    PHOENIX_TOPIC,
                    event::ERROR,
                    payload.as_bytes(),
                )));
                return;
            }
        };
        self.on_push(push, size, now, out);
    }

    fn on_push(&mut self, push: Push<'_>, size: usize, now: Now, out: &mut Vec<Effect>) {
        self.expire(now, out);
        let topic = push.topic.as_ref();
        let join_ref = push.join_ref.as_deref();
        let msg_ref = push.msg_ref.as_deref();
        if !ratelimit::is_exempt(topic, push.event()) && !self.flood.try_take(now.mono_ms) {
            out.push(Effect::Count(Metric::RateLimited));
            let reason = ratelimit::refusal(self.config.client_messages_per_second);
            return self.error(join_ref, msg_ref, topic, &reason, out);
        }
        let limits = Limits {
            max_subscribed_keys: self.config.max_subscribed_keys as usize,
        };
        let on_phoenix = topic == PHOENIX_TOPIC;
        if !on_phoenix
            && size > self.config.max_payload_bytes as usize
            && push.event() != event::LEAVE
        {
            out.push(Effect::Count(Metric::ProtocolErrors));
            return self.error(join_ref, msg_ref, topic, "payload_size_exceeded", out);
        }
        let command = match command::command(&push, limits) {
            Ok(c) => c,
            Err(refusal) => {
                // Every push but a join needs its topic joined first.
                let reason = match refusal {
                    _ if !on_phoenix
                        && push.event() != event::JOIN
                        && !self.joined.contains_key(topic) =>
                    {
                        "unmatched topic".to_string()
                    }
                    Refusal::UnknownEvent { .. } | Refusal::Invalid(_) => refusal.to_string(),
                };
                return self.error(join_ref, msg_ref, topic, &reason, out);
            }
        };
        match command {
            Command::Heartbeat => {
                out.push(Effect::CheckChannels);
                self.ok(join_ref, msg_ref, topic, b"{}", out);
            }
            Command::Clock { .. } if !on_phoenix && !self.joined.contains_key(topic) => {
                self.error(join_ref, msg_ref, topic, "unmatched topic", out)
            }
            Command::Clock { t0 } => {
                let reply = json!({
                    "t0": t0,
                    "server_receive_ms": now.unix_ms,
                    "server_send_ms": now.unix_ms,
                });
                self.ok(join_ref, msg_ref, topic, reply.to_string().as_bytes(), out);
            }
            Command::Online { keys } => out.push(Effect::Online {
                keys,
                join_ref: join_ref.map(str::to_owned),
                msg_ref: msg_ref.map(str::to_owned),
            }),
            Command::Crash if self.config.fault_injection => out.push(Effect::Crash),
            Command::Crash => {
                let reason = Refusal::UnknownEvent {
                    event: "chorus_crash".into(),
                    on_phoenix: true,
                };
                self.error(join_ref, msg_ref, topic, &reason.to_string(), out)
            }
            Command::CrashChannel if self.config.fault_injection => {
                if self.joined.contains_key(topic) {
                    out.push(Effect::CrashChannel {
                        topic: topic.to_owned(),
                    });
                }
            }
            Command::CrashChannel => {
                let reason = Refusal::UnknownEvent {
                    event: command::CRASH_CHANNEL_EVENT.into(),
                    on_phoenix: false,
                };
                self.error(join_ref, msg_ref, topic, &reason.to_string(), out)
            }
            Command::CrashPresence { key } if self.config.fault_injection => {
                if self.joined.contains_key(topic) {
                    out.push(Effect::CrashPresence { key });
                }
            }
            Command::CrashPresence { .. } => {
                let reason = Refusal::UnknownEvent {
                    event: command::CRASH_PRESENCE_EVENT.into(),
                    on_phoenix: false,
                };
                self.error(join_ref, msg_ref, topic, &reason.to_string(), out)
            }
            Command::Join(config) => self.join(topic, join_ref, msg_ref, *config, now, out),
            Command::Leave => self.leave(topic, msg_ref, out),
            Command::Broadcast { event, payload } => {
                self.broadcast(topic, join_ref, msg_ref, &event, payload, now, out)
            }
            Command::Track { .. }
            | Command::Untrack
            | Command::AccessToken { .. }
            | Command::Subscribe { .. }
                if !self.joined.contains_key(topic) =>
            {
                self.error(join_ref, msg_ref, topic, "unmatched topic", out)
            }
            Command::Track { meta } => self.track(topic, msg_ref, Some(meta.to_owned()), out),
            Command::Untrack => self.track(topic, msg_ref, None, out),
            Command::AccessToken { token } => {
                self.access_token(topic, join_ref, msg_ref, token, now, out)
            }
            Command::Subscribe { add, remove } => {
                if let Some(j) = self.joined.get(topic) {
                    out.push(Effect::Subscribe {
                        topic: topic.to_owned(),
                        add,
                        remove,
                        refs: (j.join_ref.clone(), msg_ref.map(str::to_owned)),
                    });
                }
            }
        }
    }

    /// Verifies a token when the node has a JWT secret: the claims that
    /// apply (the token's, else the socket's `apikey`), `None` with auth
    /// off.
    fn verify(&self, token: Option<&str>, now: Now) -> Result<Option<Claims>, String> {
        let secret = &self.config.jwt_secret;
        if secret.is_empty() {
            return Ok(None);
        }
        match token {
            Some(t) => jwt::verify_hs256(t, secret.as_bytes(), now.unix_secs())
                .map(Some)
                .map_err(|e| format!("invalid access token: {e}")),
            None if self.claims.is_some() => Ok(self.claims.clone()),
            None => Err("an access token is required".into()),
        }
    }

    /// Closes, Supabase's way (a `system` error, then `phx_close`), every
    /// channel whose token has expired.
    fn expire(&mut self, now: Now, out: &mut Vec<Effect>) {
        let secs = now.unix_secs();
        let expired: Vec<String> = self
            .joined
            .iter()
            .filter(|(_, j)| j.exp.is_some_and(|exp| exp <= secs))
            .map(|(t, _)| t.clone())
            .collect();
        for topic in expired {
            self.close_with_system(
                &topic,
                "token has expired: send a fresh access_token and rejoin",
                out,
            );
        }
    }

    /// Leaves `topic` with a `system` error carrying `reason`, then
    /// `phx_close`.
    fn close_with_system(&mut self, topic: &str, reason: &str, out: &mut Vec<Effect>) {
        if let Some(j) = self.joined.remove(topic) {
            out.push(Effect::Leave {
                topic: topic.to_owned(),
            });
            let system = json!({
                "extension": "system",
                "status": "error",
                "message": reason,
                "channel": topic,
            });
            out.push(Effect::Write(frame::message(
                self.vsn,
                Some(&j.join_ref),
                None,
                topic,
                "system",
                system.to_string().as_bytes(),
            )));
            self.close(&j.join_ref, topic, out);
        }
    }

    /// With auth on, who the client is and what it may do on `topic`: the
    /// presence key (the token's `sub`; a different key is refused unless
    /// the token is the service key), and the policy decisions of a private
    /// topic. Auth off: the key the client chose, everything allowed.
    fn authorize(
        &self,
        topic: &str,
        config: &JoinConfig,
        claims: Option<&Claims>,
    ) -> Result<Authorized, String> {
        join::check_presence_key(&config.presence_key, self.config.presence_key_bytes)?;
        let Some(claims) = claims else {
            return Ok(Authorized {
                key: config.presence_key.clone(),
                exp: None,
                send_refused: None,
                track_refused: None,
            });
        };
        let map = claims.as_map();
        let service = policy::is_service_role(map);
        let key = match (claims.sub(), config.presence_key.as_str()) {
            (_, asked) if service => asked.to_owned(),
            (Some(sub), "") => sub.to_owned(),
            (Some(sub), asked) if asked == sub => sub.to_owned(),
            (Some(sub), asked) => {
                return Err(format!(
                    "presence_key_mismatch: config.presence.key {asked:?} is not your user id; with auth on a session's presence key is its token's sub ({sub:?}), or leave it empty"
                ))
            }
            (None, "") => String::new(),
            (None, asked) => {
                return Err(format!(
                    "presence_key_needs_sub: config.presence.key {asked:?} needs a token whose sub is that user (this token has no sub); leave it empty"
                ))
            }
        };
        let private = config.private || self.policies.covers(topic);
        let (mut send_refused, mut track_refused) = (None, None);
        if private {
            self.policies
                .decide(topic, Action::Join, map)
                .map_err(|r| r.reason)?;
            send_refused = self
                .policies
                .decide(topic, Action::Send, map)
                .err()
                .map(|r| r.reason);
            track_refused = self
                .policies
                .decide(topic, Action::Track, map)
                .err()
                .map(|r| r.reason);
        }
        Ok(Authorized {
            key,
            exp: claims.exp(),
            send_refused,
            track_refused,
        })
    }

    /// The claims of the join's `access_token` (verified), else of the
    /// socket's `apikey`; none without auth.
    fn claims_for(&self, config: &JoinConfig, now: Now) -> Option<Claims> {
        let secret = self.config.jwt_secret.as_bytes();
        if secret.is_empty() {
            return None;
        }
        config
            .access_token
            .as_deref()
            .and_then(|t| jwt::verify_hs256(t, secret, now.unix_secs()).ok())
            .or_else(|| self.claims.clone())
    }

    fn join(
        &mut self,
        topic: &str,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        config: JoinConfig,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        if let Err(reason) = join::validate_topic(topic) {
            return self.error(join_ref, msg_ref, topic, &reason, out);
        }
        let claims = match self.verify(config.access_token.as_deref(), now) {
            Ok(c) => c,
            Err(reason) => return self.error(join_ref, msg_ref, topic, &reason, out),
        };
        let authorized = match self.authorize(topic, &config, claims.as_ref()) {
            Ok(a) => a,
            Err(reason) => {
                out.push(Effect::Count(Metric::Unauthorized));
                return self.error(join_ref, msg_ref, topic, &reason, out);
            }
        };
        if let Some(old) = self.joined.remove(topic) {
            // A second join of the same topic replaces the first.
            out.push(Effect::Leave {
                topic: topic.to_owned(),
            });
            self.close(&old.join_ref, topic, out);
        } else if self.joined.len() >= self.config.max_channels_per_socket as usize {
            let reason = format!(
                "ChannelRateLimitReached: at most {} channels per socket (limits.max_channels_per_socket)",
                self.config.max_channels_per_socket
            );
            return self.error(join_ref, msg_ref, topic, &reason, out);
        }
        let join_ref = join_ref.or(msg_ref).unwrap_or_default().to_owned();
        let key = if !authorized.key.is_empty() {
            authorized.key
        } else if self.node == 0 {
            format!("{:x}-{:x}", self.pid, now.unix_secs())
        } else {
            format!("{:x}.{:x}-{:x}", self.node, self.pid, now.unix_secs())
        };
        let joined = Joined {
            join_ref,
            msg_ref: msg_ref.map(str::to_owned),
            key,
            config,
            exp: authorized.exp,
            send_refused: authorized.send_refused,
            track_refused: authorized.track_refused,
        };
        out.push(Effect::Join {
            topic: topic.to_owned(),
            params: self.params(&joined, now),
            may_start: self.creations.ready(now.mono_ms),
        });
        self.joined.insert(topic.to_owned(), joined);
    }

    /// A join started its topic's channel: it takes a creation token.
    pub fn channel_started(&mut self, now: Now) {
        self.creations.try_take(now.mono_ms);
    }

    /// No channel runs for a join's topic and none was started: the node
    /// is full (`reason` from the directory), or (`None`) this socket may
    /// start no channel now.
    pub fn join_refused(&mut self, topic: &str, reason: Option<&str>, out: &mut Vec<Effect>) {
        if let Some(j) = self.joined.remove(topic) {
            let rate;
            let reason = match reason {
                Some(r) => r,
                None => {
                    rate = caps::creation_refusal(self.config.channel_creations_per_second);
                    &rate
                }
            };
            out.push(Effect::Count(Metric::ChannelsRefused));
            self.error(Some(&j.join_ref), j.msg_ref.as_deref(), topic, reason, out);
        }
    }

    fn params(&self, j: &Joined, now: Now) -> JoinParams {
        JoinParams {
            join_ref: j.join_ref.clone(),
            msg_ref: j.msg_ref.clone(),
            v2: self.vsn == Vsn::V2,
            broadcast_self: j.config.broadcast_self,
            presence_key: j.key.clone(),
            presence_enabled: j.config.presence_enabled,
            replay: j.config.replay.map(|r| (r.since_ms, r.limit)),
            batch: j.config.batch,
            friends: self.friends(&j.config, now),
        }
    }

    /// The `friends` claim (a list of keys) of the join's token or the
    /// socket's, then the join's `config.presence.friends`.
    fn friends(&self, config: &JoinConfig, now: Now) -> Vec<String> {
        let mut friends = self
            .claims_for(config, now)
            .and_then(|c| {
                let v = c.as_map().get("friends")?;
                join::parse_keys(v, "friends", join::MAX_FRIENDS).ok()
            })
            .unwrap_or_default();
        friends.extend(config.friends.iter().cloned());
        friends
    }

    /// The channel of a join could not be found or started.
    pub fn join_failed(&mut self, topic: &str, out: &mut Vec<Effect>) {
        if let Some(j) = self.joined.remove(topic) {
            let reason = "channel unavailable, retry";
            self.error(Some(&j.join_ref), j.msg_ref.as_deref(), topic, reason, out);
        }
    }

    /// A join raced with its channel stopping: join the channel's next
    /// incarnation with the same refs.
    pub fn rejoin(&mut self, topic: &str, now: Now, out: &mut Vec<Effect>) {
        if let Some(j) = self.joined.get(topic) {
            out.push(Effect::Join {
                topic: topic.to_owned(),
                params: self.params(j, now),
                // The topic was open when the client joined it.
                may_start: true,
            });
        }
    }

    /// The process of a joined channel died: the client gets `phx_error`
    /// and rejoins.
    pub fn channel_died(&mut self, topic: &str, out: &mut Vec<Effect>) {
        if let Some(j) = self.joined.remove(topic) {
            out.push(Effect::Write(frame::message(
                self.vsn,
                Some(&j.join_ref),
                Some(&j.join_ref),
                topic,
                event::ERROR,
                b"{}",
            )));
        }
    }

    fn leave(&mut self, topic: &str, msg_ref: Option<&str>, out: &mut Vec<Effect>) {
        match self.joined.remove(topic) {
            Some(j) => {
                out.push(Effect::Leave {
                    topic: topic.to_owned(),
                });
                self.ok(Some(&j.join_ref), msg_ref, topic, b"{}", out);
                self.close(&j.join_ref, topic, out);
            }
            None => self.error(None, msg_ref, topic, "unmatched topic", out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn broadcast(
        &mut self,
        topic: &str,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        user_event: &str,
        payload: BodyRef<'_>,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        let Some(j) = self.joined.get(topic) else {
            return self.error(join_ref, msg_ref, topic, "unmatched topic", out);
        };
        let refs = (j.join_ref.clone(), msg_ref.map(str::to_owned));
        if let Some(reason) = &j.send_refused {
            return self.error(Some(&refs.0), msg_ref, topic, reason, out);
        }
        if user_event == room::PLAYBACK_EVENT {
            if let Some(room_id) = room::audio_room(topic) {
                let checked = match payload {
                    BodyRef::Json(json) => serde_json::from_slice::<Value>(json)
                        .map_err(|e| format!("invalid_playback: {e}"))
                        .and_then(|v| room::validate_playback(&v).map(|_| json)),
                    BodyRef::Binary(_) => Err("invalid_playback: payload must be JSON".into()),
                };
                return match checked {
                    Ok(json) => {
                        let by_claim = self
                            .claims_for(&j.config, now)
                            .is_some_and(|c| room::claims_host(c.as_map(), room_id));
                        out.push(Effect::Playback {
                            topic: topic.to_owned(),
                            user: j.key.clone(),
                            by_claim,
                            payload: json.to_vec(),
                            refs,
                            ack: j.config.broadcast_ack,
                        });
                    }
                    Err(reason) => self.error(Some(&refs.0), msg_ref, topic, &reason, out),
                };
            }
        }
        out.push(Effect::Publish {
            topic: topic.to_owned(),
            event: user_event.to_owned(),
            payload: payload.to_owned(),
            ack: j.config.broadcast_ack.then_some(refs),
        });
    }

    fn track(
        &mut self,
        topic: &str,
        msg_ref: Option<&str>,
        meta: Option<String>,
        out: &mut Vec<Effect>,
    ) {
        if let Some(j) = self.joined.get(topic) {
            if let Some(reason) = &j.track_refused {
                let join_ref = j.join_ref.clone();
                return self.error(Some(&join_ref), msg_ref, topic, reason, out);
            }
            out.push(Effect::Track {
                topic: topic.to_owned(),
                meta,
                refs: (j.join_ref.clone(), msg_ref.map(str::to_owned)),
            });
        }
    }

    fn access_token(
        &mut self,
        topic: &str,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        token: Option<String>,
        now: Now,
        out: &mut Vec<Effect>,
    ) {
        let checked = self
            .verify(Some(token.as_deref().unwrap_or_default()), now)
            .and_then(|claims| {
                // A fresh token keeps the channel open until it expires; it
                // must be the same user's.
                let Some(claims) = claims else { return Ok(None) };
                let same_user = match (claims.sub(), self.joined.get(topic)) {
                    (Some(sub), Some(j)) => sub == j.key || policy::is_service_role(claims.as_map()),
                    _ => true,
                };
                if same_user {
                    Ok(claims.exp())
                } else {
                    Err("access_token is another user's: its sub differs from the joined presence key".into())
                }
            });
        match checked {
            Ok(exp) => {
                if let Some(j) = self.joined.get_mut(topic) {
                    if self.config.jwt_secret.is_empty() {
                        j.exp = None;
                    } else {
                        j.exp = exp;
                    }
                }
                self.ok(join_ref, msg_ref, topic, b"{}", out)
            }
            // Supabase's way: a system error, then the channel closes.
            Err(reason) => self.close_with_system(topic, &reason, out),
        }
    }

    /// The presence shards' answer to [`Effect::Online`].
    pub fn online_answer(
        &mut self,
        keys: &[String],
        online: &[String],
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        out: &mut Vec<Effect>,
    ) {
        let reply = crate::selective::online_reply(keys, online).to_string();
        self.ok(join_ref, msg_ref, PHOENIX_TOPIC, reply.as_bytes(), out);
    }

    /// Topics whose joins must be told to their channels when the session
    /// ends.
    pub fn leave_all(&mut self) -> Vec<String> {
        self.joined.drain().map(|(t, _)| t).collect()
    }

    fn close(&self, join_ref: &str, topic: &str, out: &mut Vec<Effect>) {
        out.push(Effect::Write(frame::message(
            self.vsn,
            Some(join_ref),
            Some(join_ref),
            topic,
            event::CLOSE,
            b"{}",
        )));
    }

    fn ok(
        &self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        response: &[u8],
        out: &mut Vec<Effect>,
    ) {
        out.push(Effect::Write(frame::reply(
            self.vsn, join_ref, msg_ref, topic, "ok", response,
        )));
    }

    fn error(
        &self,
        join_ref: Option<&str>,
        msg_ref: Option<&str>,
        topic: &str,
        reason: &str,
        out: &mut Vec<Effect>,
    ) {
        out.push(Effect::Write(frame::error_reply(
            self.vsn, join_ref, msg_ref, topic, reason,
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phoenix::{self, client, Inbound, Outbound, Payload as PPayload};
    use crate::ws::{FrameDecoder, WsEvent};

    const NOW: Now = Now {
        mono_ms: 1_000,
        unix_ms: 1_700_000_000_000.0,
    };

    fn config() -> SessionConfig {
        SessionConfig {
            max_payload_bytes: 1000,
            max_channels_per_socket: 2,
            channel_creations_per_second: 3,
            client_messages_per_second: 10,
            client_burst: 20,
            max_subscribed_keys: 3,
            max_json_depth: 8,
            presence_shards: 4,
            jwt_secret: String::new(),
            presence_key_bytes: 16,
            policies: Vec::new(),
            fault_injection: false,
        }
    }

    fn session(vsn: Vsn, config: SessionConfig, claims: Option<String>) -> Session {
        let start = Start {
            socket: 1,
            vsn,
            claims,
            config,
        };
        Session::new(&start, 0xab, NOW)
    }

    /// Sends a push as the real clients encode it; returns the effects.
    fn push(
        s: &mut Session,
        join_ref: Option<&str>,
        msg_ref: &str,
        topic: &str,
        ev: &str,
        payload: Value,
    ) -> Vec<Effect> {
        push_at(s, NOW, join_ref, msg_ref, topic, ev, payload)
    }

    /// [`push`] at another time.
    fn push_at(
        s: &mut Session,
        now: Now,
        join_ref: Option<&str>,
        msg_ref: &str,
        topic: &str,
        ev: &str,
        payload: Value,
    ) -> Vec<Effect> {
        let m = Inbound::Push(phoenix::Message {
            join_ref: join_ref.map(str::to_owned),
            msg_ref: Some(msg_ref.into()),
            topic: topic.into(),
            event: ev.into(),
            payload: PPayload::Json(payload),
        });
        let frame = client::encode_push(s.vsn(), &m).unwrap();
        let mut out = Vec::new();
        match &frame {
            phoenix::Frame::Text(t) => s.on_frame(FrameRef::Text(t), now, &mut out),
            phoenix::Frame::Binary(b) => s.on_frame(FrameRef::Binary(b), now, &mut out),
        }
        out
    }

    /// The server messages among the effects, decoded as a client would.
    fn written(vsn: Vsn, effects: &[Effect]) -> Vec<Outbound> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Write(bytes) => {
                    let mut d = FrameDecoder::for_client(1 << 20);
                    d.push(bytes);
                    match d.next().unwrap().unwrap() {
                        WsEvent::Text(t) => client::decode_server(vsn, FrameRef::Text(&t)).ok(),
                        WsEvent::Binary(b) => client::decode_server(vsn, FrameRef::Binary(&b)).ok(),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect()
    }

    fn reply_of(o: &Outbound) -> (String, Value) {
        match o {
            Outbound::Reply {
                status,
                response: PPayload::Json(r),
                ..
            } => (status.clone(), r.clone()),
            other => panic!("not a reply: {other:?}"),
        }
    }

    fn joined(s: &mut Session, topic: &str, config: Value) -> Vec<Effect> {
        push(
            s,
            Some("1"),
            "1",
            topic,
            "phx_join",
            json!({ "config": config }),
        )
    }

    #[test]
    fn a_join_asks_the_channel_with_the_join_refs() {
        for vsn in [Vsn::V1, Vsn::V2] {
            let mut s = session(vsn, config(), None);
            let out = joined(
                &mut s,
                "realtime:a",
                json!({"broadcast": {"ack": true}, "presence": {"key": "u"}}),
            );
            match &out[..] {
                [Effect::Join {
                    topic,
                    params,
                    may_start,
                }] => {
                    assert!(may_start);
                    assert_eq!(topic, "realtime:a");
                    assert_eq!(params.join_ref, "1");
                    assert_eq!(params.presence_key, "u");
                    assert_eq!(params.v2, vsn == Vsn::V2);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_join_without_a_key_gets_a_generated_one() {
        let mut s = session(Vsn::V2, config(), None);
        let out = joined(&mut s, "realtime:a", json!({}));
        let Effect::Join { params, .. } = &out[0] else {
            panic!()
        };
        assert_eq!(params.presence_key, format!("ab-{:x}", 1_700_000_000u64));
    }

    #[test]
    fn a_generated_key_names_the_cluster_node() {
        let mut s = session(Vsn::V2, config(), None).on_node(3);
        let out = joined(&mut s, "realtime:a", json!({}));
        let Effect::Join { params, .. } = &out[0] else {
            panic!()
        };
        assert_eq!(params.presence_key, format!("3.ab-{:x}", 1_700_000_000u64));
    }

    #[test]
    fn a_second_join_of_a_topic_replaces_the_first() {
        let mut s = session(Vsn::V2, config(), None);
        joined(&mut s, "t", json!({}));
        let out = push(&mut s, Some("5"), "5", "t", "phx_join", json!({}));
        assert!(matches!(&out[0], Effect::Leave { topic } if topic == "t"));
        let closes = written(Vsn::V2, &out);
        assert!(
            matches!(&closes[0], Outbound::Message(m) if m.event == "phx_close" && m.join_ref.as_deref() == Some("1"))
        );
        assert!(matches!(&out[2], Effect::Join { params, .. } if params.join_ref == "5"));
    }

    #[test]
    fn channels_per_socket_are_capped_with_the_key_named() {
        let mut s = session(Vsn::V2, config(), None);
        joined(&mut s, "a", json!({}));
        joined(&mut s, "b", json!({}));
        let out = joined(&mut s, "c", json!({}));
        let (status, r) = reply_of(&written(Vsn::V2, &out)[0]);
        assert_eq!(status, "error");
        assert!(r["reason"]
            .as_str()
            .unwrap()
            .contains("limits.max_channels_per_socket"));
    }

    fn may_start(out: &[Effect]) -> bool {
        match out {
            [Effect::Join { may_start, .. }] => *may_start,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn channel_starts_per_socket_are_rate_limited_with_the_key_named() {
        let mut c = config();
        c.max_channels_per_socket = 100;
        c.client_burst = 100;
        c.channel_creations_per_second = 3;
        let mut s = session(Vsn::V2, c, None);
        // Three joins start channels: the burst.
        for i in 0..3 {
            let out = joined(&mut s, &format!("new-{i}"), json!({}));
            assert!(may_start(&out), "join {i}");
            s.channel_started(NOW);
        }
        // The fourth may only find a running channel.
        let out = joined(&mut s, "new-3", json!({}));
        assert!(!may_start(&out));
        // None runs: refused with the key named, and no longer joined.
        let mut refused = Vec::new();
        s.join_refused("new-3", None, &mut refused);
        assert!(refused.contains(&Effect::Count(Metric::ChannelsRefused)));
        let reason = refusal(&refused);
        assert!(
            reason.starts_with("channel_creation_rate_limited"),
            "{reason}"
        );
        assert!(
            reason.contains("(limits.channel_creations_per_second)"),
            "{reason}"
        );
        let out = push(
            &mut s,
            Some("9"),
            "9",
            "new-3",
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {}}),
        );
        assert_eq!(refusal(&out), "unmatched topic");
        // A join that found a running channel costs nothing.
        let out = joined(&mut s, "open", json!({}));
        assert!(!may_start(&out));
        assert!(s.joined().any(|(t, _)| t == "open"));
        // A token comes back after a third of a second at 3/s.
        let later = Now {
            mono_ms: NOW.mono_ms + 334,
            ..NOW
        };
        let out = push_at(
            &mut s,
            later,
            Some("7"),
            "7",
            "new-4",
            "phx_join",
            json!({}),
        );
        assert!(may_start(&out));
    }

    #[test]
    fn a_full_node_refuses_the_join_with_the_directorys_reason() {
        let mut s = session(Vsn::V2, config(), None);
        joined(&mut s, "t", json!({}));
        let mut out = Vec::new();
        s.join_refused("t", Some(&caps::node_full(8)), &mut out);
        assert!(refusal(&out).contains("limits.max_channels = 8"));
        assert_eq!(s.joined().count(), 0);
    }

    #[test]
    fn pushes_on_unjoined_topics_are_unmatched() {
        let mut s = session(Vsn::V2, config(), None);
        for (ev, payload) in [
            (
                "presence",
                json!({"type": "presence", "event": "track", "payload": {}}),
            ),
            ("access_token", json!({"access_token": "x"})),
            ("presence_subscribe", json!({"add": ["a"]})),
            ("clock", json!({"t0": 1})),
            (
                "broadcast",
                json!({"type": "broadcast", "event": "e", "payload": {}}),
            ),
            ("wave", json!({})),
            ("phx_leave", json!({})),
        ] {
            let out = push(&mut s, None, "9", "nope", ev, payload);
            let (status, r) = reply_of(&written(Vsn::V2, &out)[0]);
            assert_eq!(
                (status.as_str(), r["reason"].as_str()),
                ("error", Some("unmatched topic")),
                "{ev}"
            );
        }
    }

    #[test]
    fn a_broadcast_carries_the_payload_bytes_and_ack_refs() {
        let mut s = session(Vsn::V2, config(), None);
        joined(&mut s, "t", json!({"broadcast": {"ack": true}}));
        let out = push(
            &mut s,
            Some("1"),
            "7",
            "t",
            "broadcast",
            json!({"type": "broadcast", "event": "m", "payload": {"x": 1}}),
        );
        match &out[..] {
            [Effect::Publish {
                topic,
                event,
                payload,
                ack,
            }] => {
                assert_eq!((topic.as_str(), event.as_str()), ("t", "m"));
                assert_eq!(payload, &Body::Json(br#"{"x":1}"#.to_vec()));
                assert_eq!(ack, &Some(("1".to_string(), Some("7".to_string()))));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_pushes_are_refused_but_leaves_pass() {
        let mut s = session(Vsn::V2, config(), None);
        joined(&mut s, "t", json!({}));
        let big = "x".repeat(2000);
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "t",
            "broadcast",
            json!({"type": "broadcast", "event": "m", "payload": {"x": big}}),
        );
        assert_eq!(out[0], Effect::Count(Metric::ProtocolErrors));
        let (_, r) = reply_of(&written(Vsn::V2, &out)[0]);
        assert_eq!(r["reason"], "payload_size_exceeded");
        let out = push(
            &mut s,
            Some("1"),
            "3",
            "t",
            "phx_leave",
            json!({"pad": big}),
        );
        assert!(matches!(&out[0], Effect::Leave { .. }));
    }

    #[test]
    fn the_flood_limit_refuses_with_the_key_named_and_exempts_heartbeats() {
        let mut s = session(Vsn::V2, config(), None);
        for i in 0..20 {
            let out = push(
                &mut s,
                None,
                &i.to_string(),
                "phoenix",
                "clock",
                json!({"t0": 1}),
            );
            assert_eq!(reply_of(&written(Vsn::V2, &out)[0]).0, "ok");
        }
        let out = push(&mut s, None, "21", "phoenix", "clock", json!({"t0": 1}));
        assert_eq!(out[0], Effect::Count(Metric::RateLimited));
        let (_, r) = reply_of(&written(Vsn::V2, &out)[0]);
        assert!(r["reason"]
            .as_str()
            .unwrap()
            .contains("limits.client_messages_per_second"));
        let out = push(&mut s, None, "22", "phoenix", "heartbeat", json!({}));
        assert_eq!(out[0], Effect::CheckChannels);
    }

    #[test]
    fn malformed_frames_get_phx_error_on_the_socket_topic() {
        let mut s = session(Vsn::V2, config(), None);
        let mut out = Vec::new();
        s.on_frame(FrameRef::Text("[1,2"), NOW, &mut out);
        assert_eq!(out[0], Effect::Count(Metric::ProtocolErrors));
        match &written(Vsn::V2, &out)[0] {
            Outbound::Message(m) => {
                assert_eq!(
                    (m.topic.as_str(), m.event.as_str()),
                    ("phoenix", "phx_error")
                );
            }
            other => panic!("{other:?}"),
        }
        let deep = format!(
            "[null,null,\"t\",\"e\",{}{}]",
            "[".repeat(20),
            "]".repeat(20)
        );
        let mut out = Vec::new();
        s.on_frame(FrameRef::Text(&deep), NOW, &mut out);
        let Outbound::Message(m) = &written(Vsn::V2, &out)[0] else {
            panic!()
        };
        let PPayload::Json(p) = &m.payload else {
            panic!()
        };
        assert!(p["reason"]
            .as_str()
            .unwrap()
            .contains("limits.max_json_depth"));
    }

    #[test]
    fn playback_is_checked_here_and_judged_by_the_channel() {
        let mut s = session(Vsn::V2, config(), None);
        joined(
            &mut s,
            "realtime:room:9:audio",
            json!({"presence": {"key": "dj"}, "broadcast": {"ack": true}}),
        );
        let good = json!({"track": "t", "position_ms": 0, "playing": true, "taken_at_ms": 1});
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "realtime:room:9:audio",
            "broadcast",
            json!({"type": "broadcast", "event": "playback", "payload": good}),
        );
        assert!(
            matches!(&out[0], Effect::Playback { user, by_claim: false, ack: true, .. } if user == "dj")
        );
        let out = push(
            &mut s,
            Some("1"),
            "3",
            "realtime:room:9:audio",
            "broadcast",
            json!({"type": "broadcast", "event": "playback", "payload": {"track": 1}}),
        );
        let (_, r) = reply_of(&written(Vsn::V2, &out)[0]);
        assert!(r["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid_playback"));
        // On a topic that is not an audio lane it is an ordinary broadcast.
        joined(&mut s, "realtime:x", json!({}));
        let out = push(
            &mut s,
            Some("1"),
            "4",
            "realtime:x",
            "broadcast",
            json!({"type": "broadcast", "event": "playback", "payload": {}}),
        );
        assert!(matches!(&out[0], Effect::Publish { .. }));
    }

    #[test]
    fn a_room_host_claim_counts_only_with_auth_on() {
        let secret = "s3cret";
        let mut c = config();
        c.jwt_secret = secret.into();
        let token = jwt::sign_hs256(
            &json!({"sub": "u", "room_host": ["9"], "exp": 4_000_000_000u64}),
            secret.as_bytes(),
        );
        let claims = json!({"sub": "u", "room_host": ["9"]}).to_string();
        let mut s = session(Vsn::V2, c, Some(claims));
        joined(&mut s, "realtime:room:9:audio", json!({}));
        let good = json!({"track": "t", "position_ms": 0, "playing": true, "taken_at_ms": 1});
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "realtime:room:9:audio",
            "broadcast",
            json!({"type": "broadcast", "event": "playback", "payload": good}),
        );
        assert!(matches!(&out[0], Effect::Playback { by_claim: true, .. }));
        let _ = token;
    }

    #[test]
    fn auth_requires_a_valid_token_for_joins_and_refreshes() {
        let secret = "s3cret";
        let mut c = config();
        c.jwt_secret = secret.into();
        let mut s = session(Vsn::V2, c, None);
        let out = joined(&mut s, "t", json!({}));
        let (_, r) = reply_of(&written(Vsn::V2, &out)[0]);
        assert_eq!(r["reason"], "an access token is required");
        let good = jwt::sign_hs256(
            &json!({"sub": "u", "exp": 4_000_000_000u64}),
            secret.as_bytes(),
        );
        let out = push(
            &mut s,
            Some("1"),
            "1",
            "t",
            "phx_join",
            json!({"access_token": good}),
        );
        assert!(matches!(&out[0], Effect::Join { .. }));
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "t",
            "access_token",
            json!({"access_token": "bad"}),
        );
        assert!(matches!(&out[0], Effect::Leave { .. }));
        let msgs = written(Vsn::V2, &out);
        assert!(matches!(&msgs[0], Outbound::Message(m) if m.event == "system"));
        assert!(matches!(&msgs[1], Outbound::Message(m) if m.event == "phx_close"));
        assert_eq!(s.joined().count(), 0);
    }

    const SECRET: &str = "s3cret";

    /// A session with auth on whose socket's token has `claims`.
    fn authed(claims: Value, policies: &str) -> Session {
        let mut c = config();
        c.jwt_secret = SECRET.into();
        c.policies = if policies.is_empty() {
            Vec::new()
        } else {
            let wrapped: toml::Value = toml::from_str(policies).unwrap();
            wrapped["auth"]["policies"].clone().try_into().unwrap()
        };
        session(Vsn::V2, c, Some(claims.to_string()))
    }

    fn refusal(out: &[Effect]) -> String {
        let (status, r) = reply_of(&written(Vsn::V2, out)[0]);
        assert_eq!(status, "error", "{out:?}");
        r["reason"].as_str().unwrap().to_owned()
    }

    #[test]
    fn with_auth_on_the_presence_key_is_the_tokens_sub() {
        let mut s = authed(json!({"sub": "alice"}), "");
        let out = joined(&mut s, "realtime:a", json!({}));
        assert!(matches!(&out[0], Effect::Join { params, .. } if params.presence_key == "alice"));
        let out = joined(&mut s, "realtime:b", json!({"presence": {"key": "alice"}}));
        assert!(matches!(&out[0], Effect::Join { params, .. } if params.presence_key == "alice"));
        let out = joined(&mut s, "realtime:c", json!({"presence": {"key": "host"}}));
        assert!(refusal(&out).starts_with("presence_key_mismatch"));
        assert!(out.contains(&Effect::Count(Metric::Unauthorized)));
        // A token without sub cannot pick a key, but gets a generated one.
        let mut anon = authed(json!({"role": "anon"}), "");
        let out = joined(
            &mut anon,
            "realtime:c",
            json!({"presence": {"key": "host"}}),
        );
        assert!(refusal(&out).starts_with("presence_key_needs_sub"));
        let out = joined(&mut anon, "realtime:c", json!({}));
        assert!(
            matches!(&out[0], Effect::Join { params, .. } if params.presence_key.starts_with("ab-"))
        );
        // The service key acts for anyone.
        let mut svc = authed(json!({"role": "service_role"}), "");
        let out = joined(&mut svc, "realtime:c", json!({"presence": {"key": "bob"}}));
        assert!(matches!(&out[0], Effect::Join { params, .. } if params.presence_key == "bob"));
    }

    #[test]
    fn playback_is_published_as_the_tokens_user() {
        let mut s = authed(json!({"sub": "mallory"}), "");
        joined(&mut s, "realtime:room:9:audio", json!({}));
        let good = json!({"track": "t", "position_ms": 0, "playing": true, "taken_at_ms": 1});
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "realtime:room:9:audio",
            "broadcast",
            json!({"type": "broadcast", "event": "playback", "payload": good}),
        );
        assert!(
            matches!(&out[0], Effect::Playback { user, by_claim: false, .. } if user == "mallory")
        );
    }

    #[test]
    fn presence_keys_are_capped_in_bytes() {
        let mut s = session(Vsn::V2, config(), None);
        let out = joined(&mut s, "t", json!({"presence": {"key": "k".repeat(17)}}));
        assert!(refusal(&out).contains("limits.presence_key_bytes"));
        assert_eq!(s.joined().count(), 0);
    }

    const ROOM_POLICIES: &str = r#"
        [[auth.policies]]
        name = "room host plays"
        topic = "room:{id}:audio"
        actions = ["send"]
        claims = { room_host = "{id}" }

        [[auth.policies]]
        name = "room members"
        topic = "room:{id}:*"
        actions = ["join", "send", "track"]
        claims = { rooms = "{id}" }
    "#;

    #[test]
    fn private_topics_are_denied_by_default_and_decided_by_policy() {
        // `private: true` on a topic no policy covers: default deny.
        let mut s = authed(json!({"sub": "u", "rooms": ["1"]}), ROOM_POLICIES);
        let out = joined(&mut s, "realtime:lobby", json!({"private": true}));
        assert!(refusal(&out).contains("denied by default"), "{out:?}");
        // A covered topic is private even without `private: true`.
        let out = joined(&mut s, "realtime:room:2:chat", json!({}));
        assert!(refusal(&out).contains("room members"));
        // A member joins, sends and tracks on the chat lane.
        let out = joined(&mut s, "realtime:room:1:chat", json!({"private": true}));
        assert!(matches!(&out[0], Effect::Join { .. }), "{out:?}");
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "realtime:room:1:chat",
            "broadcast",
            json!({"type": "broadcast", "event": "m", "payload": {}}),
        );
        assert!(matches!(&out[0], Effect::Publish { .. }));
        // On the audio lane a member may join but not send (not the host).
        let out = joined(&mut s, "realtime:room:1:audio", json!({}));
        assert!(matches!(&out[0], Effect::Join { .. }), "{out:?}");
        let out = push(
            &mut s,
            Some("1"),
            "3",
            "realtime:room:1:audio",
            "broadcast",
            json!({"type": "broadcast", "event": "m", "payload": {}}),
        );
        assert!(refusal(&out).contains("room host plays"));
        // Without auth the node is open: policies cannot be decided.
        let mut open = session(Vsn::V2, config(), None);
        let out = joined(&mut open, "realtime:lobby", json!({"private": true}));
        assert!(matches!(&out[0], Effect::Join { .. }));
    }

    #[test]
    fn an_expired_token_closes_its_channels_with_a_system_message() {
        let exp = NOW.unix_secs() + 60;
        let mut s = authed(json!({"sub": "u", "exp": exp}), "");
        joined(&mut s, "t", json!({}));
        let later = Now {
            mono_ms: NOW.mono_ms + 61_000,
            unix_ms: NOW.unix_ms + 61_000.0,
        };
        let out = push_at(&mut s, later, None, "9", "phoenix", "heartbeat", json!({}));
        assert!(matches!(&out[0], Effect::Leave { topic } if topic == "t"));
        let msgs = written(Vsn::V2, &out);
        assert!(
            matches!(&msgs[0], Outbound::Message(m) if m.event == "system"),
            "{msgs:?}"
        );
        assert!(matches!(&msgs[1], Outbound::Message(m) if m.event == "phx_close"));
        assert_eq!(s.joined().count(), 0);
    }

    #[test]
    fn a_fresh_token_keeps_the_channel_and_must_be_the_same_users() {
        let exp = NOW.unix_secs() + 60;
        let mut s = authed(json!({"sub": "u", "exp": exp}), "");
        joined(&mut s, "t", json!({}));
        let fresh = jwt::sign_hs256(&json!({"sub": "u", "exp": exp + 3600}), SECRET.as_bytes());
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "t",
            "access_token",
            json!({"access_token": fresh}),
        );
        assert_eq!(reply_of(&written(Vsn::V2, &out)[0]).0, "ok");
        let later = Now {
            mono_ms: NOW.mono_ms + 61_000,
            unix_ms: NOW.unix_ms + 61_000.0,
        };
        let out = push_at(&mut s, later, None, "9", "phoenix", "heartbeat", json!({}));
        assert!(!out.iter().any(|e| matches!(e, Effect::Leave { .. })));
        let other = jwt::sign_hs256(&json!({"sub": "eve", "exp": exp + 3600}), SECRET.as_bytes());
        let out = push(
            &mut s,
            Some("1"),
            "3",
            "t",
            "access_token",
            json!({"access_token": other}),
        );
        assert!(matches!(&out[0], Effect::Leave { .. }));
    }

    #[test]
    fn a_channel_crash_is_only_a_test_switch() {
        let mut s = session(Vsn::V2, config(), None);
        joined(&mut s, "t", json!({}));
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "t",
            "chorus_crash_channel",
            json!({}),
        );
        assert!(refusal(&out).contains("unknown event"));
        let mut c = config();
        c.fault_injection = true;
        let mut s = session(Vsn::V2, c, None);
        joined(&mut s, "t", json!({}));
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "t",
            "chorus_crash_channel",
            json!({}),
        );
        assert_eq!(out, vec![Effect::CrashChannel { topic: "t".into() }]);
    }

    #[test]
    fn a_presence_shard_crash_is_only_a_test_switch() {
        let crash = |s: &mut Session| {
            push(
                s,
                Some("1"),
                "2",
                "t",
                "chorus_crash_presence",
                json!({"key": "alice"}),
            )
        };
        let mut s = session(Vsn::V2, config(), None);
        joined(&mut s, "t", json!({}));
        assert!(refusal(&crash(&mut s)).contains("unknown event"));
        let mut c = config();
        c.fault_injection = true;
        let mut s = session(Vsn::V2, c, None);
        joined(&mut s, "t", json!({}));
        assert_eq!(
            crash(&mut s),
            vec![Effect::CrashPresence {
                key: "alice".into()
            }]
        );
        let out = push(
            &mut s,
            Some("1"),
            "3",
            "t",
            "chorus_crash_presence",
            json!({}),
        );
        assert!(refusal(&out).contains("key"), "{out:?}");
    }

    #[test]
    fn presence_and_subscriptions_go_to_the_channel_with_refs() {
        let mut s = session(Vsn::V1, config(), None);
        joined(&mut s, "t", json!({}));
        let out = push(
            &mut s,
            Some("1"),
            "2",
            "t",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"a": 1}}),
        );
        assert_eq!(
            out,
            vec![Effect::Track {
                topic: "t".into(),
                meta: Some(r#"{"a":1}"#.into()),
                refs: ("1".into(), Some("2".into()))
            }]
        );
        let out = push(
            &mut s,
            Some("1"),
            "3",
            "t",
            "presence_subscribe",
            json!({"add": ["k"]}),
        );
        assert!(matches!(&out[0], Effect::Subscribe { add, .. } if add == &vec!["k".to_string()]));
        let out = push(
            &mut s,
            Some("1"),
            "4",
            "t",
            "presence_subscribe",
            json!({"add": ["a", "b", "c", "d"]}),
        );
        let (_, r) = reply_of(&written(Vsn::V1, &out)[0]);
        assert!(r["reason"]
            .as_str()
            .unwrap()
            .starts_with("presence_subscription_cap"));
    }

    #[test]
    fn a_dead_channel_becomes_phx_error_and_a_failed_join_an_error_reply() {
        let mut s = session(Vsn::V2, config(), None);
        joined(&mut s, "t", json!({}));
        let mut out = Vec::new();
        s.channel_died("t", &mut out);
        assert!(
            matches!(&written(Vsn::V2, &out)[0], Outbound::Message(m) if m.event == "phx_error")
        );
        assert_eq!(s.joined().count(), 0);
        joined(&mut s, "u", json!({}));
        let mut out = Vec::new();
        s.join_failed("u", &mut out);
        let (_, r) = reply_of(&written(Vsn::V2, &out)[0]);
        assert_eq!(r["reason"], "channel unavailable, retry");
    }

    #[test]
    fn crash_needs_fault_injection() {
        let mut s = session(Vsn::V2, config(), None);
        let out = push(&mut s, None, "1", "phoenix", "chorus_crash", json!({}));
        assert_eq!(reply_of(&written(Vsn::V2, &out)[0]).0, "error");
        let mut c = config();
        c.fault_injection = true;
        let mut s = session(Vsn::V2, c, None);
        assert_eq!(
            push(&mut s, None, "1", "phoenix", "chorus_crash", json!({})),
            vec![Effect::Crash]
        );
    }

    #[test]
    fn the_green_dot_is_asked_and_answered() {
        let mut s = session(Vsn::V2, config(), None);
        let out = push(
            &mut s,
            None,
            "1",
            "phoenix",
            "presence_online",
            json!({"keys": ["a", "b"]}),
        );
        assert!(matches!(&out[0], Effect::Online { keys, .. } if keys.len() == 2));
        let mut out = Vec::new();
        s.online_answer(
            &["a".into(), "b".into()],
            &["a".into()],
            None,
            Some("1"),
            &mut out,
        );
        let (status, r) = reply_of(&written(Vsn::V2, &out)[0]);
        assert_eq!(status, "ok");
        assert_eq!(r, json!({"online": {"a": true, "b": false}}));
    }
}
