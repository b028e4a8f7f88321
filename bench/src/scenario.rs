//! The scenarios and their parameters, as given on the command line and
//! recorded in every result.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::rooms::RoomParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N sessions open and join one room.
    ConnectStorm,
    /// One room, N subscribers, one publisher at a fixed rate.
    FanOut,
    /// R rooms of M members, every member publishing at a fixed rate.
    ManyRooms,
    /// N sessions join one room each and stay, keeping themselves alive
    /// with their protocol's heartbeat, for a while: memory per idle
    /// session.
    Idle,
    /// Chorus only: R rooms of M members with presence on, each member
    /// chatting at a fixed rate and updating its presence meta: what the
    /// server writes per client on the wire (chat and presence bytes).
    ChatPresence,
    /// Chorus only: presence churn in one large room, plain vs selective
    /// presence vs the large-room relevant set (`rooms.rs`).
    PresenceChurn,
    /// Chorus only: audio-lane latency with and without a reaction flood.
    AudioFlood,
}

impl Scenario {
    pub const ALL: [Scenario; 7] = [
        Scenario::ConnectStorm,
        Scenario::FanOut,
        Scenario::ManyRooms,
        Scenario::Idle,
        Scenario::ChatPresence,
        Scenario::PresenceChurn,
        Scenario::AudioFlood,
    ];

    /// The room scenarios of issue 5: Chorus extensions no peer has.
    pub fn is_room(self) -> bool {
        matches!(self, Scenario::PresenceChurn | Scenario::AudioFlood)
    }

    /// Scenarios only Chorus runs (its extensions, or Supabase presence,
    /// which no peer speaks).
    pub fn chorus_only(self) -> bool {
        self.is_room() || self == Scenario::ChatPresence
    }

    /// Scenarios whose clients publish (and so deliveries are counted).
    pub fn publishes(self) -> bool {
        matches!(
            self,
            Scenario::FanOut | Scenario::ManyRooms | Scenario::ChatPresence
        )
    }

    /// Scenarios whose clients are spread over rooms of `members_per_room`.
    pub fn in_rooms(self) -> bool {
        matches!(self, Scenario::ManyRooms | Scenario::ChatPresence)
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::ConnectStorm => "connect-storm",
            Scenario::FanOut => "fan-out",
            Scenario::ManyRooms => "many-rooms",
            Scenario::Idle => "idle",
            Scenario::ChatPresence => "chat-presence",
            Scenario::PresenceChurn => "presence-churn",
            Scenario::AudioFlood => "audio-flood",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Scenario, String> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown scenario {s:?} (connect-storm, fan-out, many-rooms, idle, chat-presence, presence-churn, audio-flood)"
                )
            })
    }
}

/// Everything that shapes a run's load. Each scenario reads the fields it
/// needs; all are recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Params {
    pub scenario: Scenario,
    /// connect-storm: sessions; fan-out: subscribers; many-rooms: rooms × members.
    pub clients: u64,
    /// many-rooms: members per room (0 otherwise).
    pub members_per_room: u64,
    /// fan-out: the publisher's messages/s; many-rooms: each member's.
    pub rate: f64,
    pub payload_bytes: usize,
    /// Publishing time.
    pub duration_s: f64,
    /// Time after the last publish for deliveries to arrive.
    pub drain_s: f64,
    /// Most clients in one loader process (≤ its file-descriptor limit).
    pub clients_per_worker: u64,
    /// Joins in flight per loader process.
    pub connect_concurrency: usize,
    pub connect_timeout_s: f64,
    /// The room scenarios' loads (`None` for the others).
    #[serde(default)]
    pub room: Option<RoomParams>,
    /// Seconds to wait after every session left before the last RSS
    /// sample ("memory comes back").
    #[serde(default)]
    pub after_s: f64,
    /// chat-presence: each member updates its presence meta this often
    /// (seconds; 0 = presence off).
    #[serde(default)]
    pub presence_every_s: f64,
    /// Clients offer `permessage-deflate` (`--deflate`); a server that
    /// agrees sends compressed frames, which the loader inflates.
    #[serde(default)]
    pub deflate: bool,
}

impl Params {
    pub fn connect_storm(sessions: u64) -> Params {
        Params {
            scenario: Scenario::ConnectStorm,
            clients: sessions,
            members_per_room: 0,
            rate: 0.0,
            payload_bytes: 100,
            duration_s: 0.0,
            drain_s: 0.0,
            clients_per_worker: 5000,
            connect_concurrency: 256,
            connect_timeout_s: 60.0,
            room: None,
            after_s: 5.0,
            presence_every_s: 0.0,
            deflate: false,
        }
    }

    /// idle: `sessions` join one room each (rooms of 10) and stay for
    /// `hold_s` with heartbeats.
    pub fn idle(sessions: u64, hold_s: f64) -> Params {
        Params {
            scenario: Scenario::Idle,
            members_per_room: 10,
            duration_s: hold_s,
            // Big enough joins in flight for 19,000 sessions in time.
            connect_timeout_s: 120.0,
            ..Params::connect_storm(sessions)
        }
    }

    /// chat-presence: `rooms` × `members`, each chatting at `rate` and
    /// re-tracking its presence every `presence_every_s`.
    pub fn chat_presence(
        rooms: u64,
        members: u64,
        rate: f64,
        presence_every_s: f64,
        duration_s: f64,
    ) -> Params {
        Params {
            scenario: Scenario::ChatPresence,
            presence_every_s,
            ..Params::many_rooms(rooms, members, rate, duration_s)
        }
    }

    pub fn fan_out(subscribers: u64, rate: f64, duration_s: f64) -> Params {
        Params {
            scenario: Scenario::FanOut,
            clients: subscribers,
            rate,
            duration_s,
            drain_s: 3.0,
            ..Params::connect_storm(subscribers)
        }
    }

    pub fn many_rooms(rooms: u64, members: u64, rate: f64, duration_s: f64) -> Params {
        Params {
            scenario: Scenario::ManyRooms,
            clients: rooms * members,
            members_per_room: members.max(1),
            rate,
            duration_s,
            drain_s: 3.0,
            ..Params::connect_storm(rooms * members)
        }
    }

    /// presence-churn: `members` in one room, `churners` of them leaving
    /// and rejoining at `churn_per_s` leaves/s for `duration_s`.
    pub fn presence_churn(
        members: u64,
        churners: u64,
        churn_per_s: f64,
        duration_s: f64,
    ) -> Params {
        Params {
            scenario: Scenario::PresenceChurn,
            clients: members,
            rate: churn_per_s,
            duration_s,
            drain_s: 2.0,
            room: Some(RoomParams {
                members,
                churners,
                churn_per_s,
                subscribe_keys: 20,
                subscribed_churners: 2,
                listeners: 0,
                flooders: 0,
                playback_per_s: 0.0,
                flood_per_s: 0.0,
                clients_per_worker: 500,
                settle_max_s: 15.0,
                large_room_threshold: None,
            }),
            ..Params::connect_storm(members)
        }
    }

    /// audio-flood: `listeners`, the host at `playback_per_s`, then
    /// `flooders` at `flood_per_s` reactions/s each; `phase_s` per phase.
    pub fn audio_flood(
        listeners: u64,
        flooders: u64,
        playback_per_s: f64,
        flood_per_s: f64,
        phase_s: f64,
    ) -> Params {
        Params {
            scenario: Scenario::AudioFlood,
            clients: listeners + flooders + 1,
            rate: playback_per_s,
            duration_s: phase_s,
            drain_s: 2.0,
            room: Some(RoomParams {
                members: 0,
                churners: 0,
                churn_per_s: 0.0,
                subscribe_keys: 0,
                subscribed_churners: 0,
                listeners,
                flooders,
                playback_per_s,
                flood_per_s,
                clients_per_worker: 250,
                settle_max_s: 5.0,
                large_room_threshold: None,
            }),
            ..Params::connect_storm(listeners + flooders + 1)
        }
    }

    /// The key that tells loads of one scenario apart in the report (two
    /// fan-out loads of one suite get two tables).
    pub fn load_key(&self) -> String {
        match self.scenario {
            Scenario::FanOut => format!("{}-{}x{}", self.scenario, self.clients, self.rate),
            s => s.name().to_string(),
        }
    }

    /// One line for tables: the load in words.
    pub fn describe(&self) -> String {
        match self.scenario {
            Scenario::ConnectStorm => format!("{} sessions join one room", self.clients),
            Scenario::FanOut => format!(
                "1 room, {} subscribers, 1 publisher at {} msg/s, {} B payloads, {} s",
                self.clients, self.rate, self.payload_bytes, self.duration_s
            ),
            Scenario::ManyRooms => format!(
                "{} rooms × {} members, each publishing {} msg/s, {} B payloads, {} s",
                self.clients / self.members_per_room.max(1),
                self.members_per_room,
                self.rate,
                self.payload_bytes,
                self.duration_s
            ),
            Scenario::Idle => format!(
                "{} sessions (rooms of {}) joined and held idle {} s with heartbeats",
                self.clients, self.members_per_room, self.duration_s
            ),
            Scenario::ChatPresence => format!(
                "{} rooms × {} members with presence on, each chatting {} msg/s ({} B payloads) and updating its presence every {} s, {} s",
                self.clients / self.members_per_room.max(1),
                self.members_per_room,
                self.rate,
                self.payload_bytes,
                self.presence_every_s,
                self.duration_s
            ),
            Scenario::PresenceChurn => match &self.room {
                Some(r) => format!(
                    "1 room of {} members tracking presence on room:<id>:chat, {} of them churning: {} leaves + {} rejoins per second for {} s; selective observers subscribe to {} keys ({} churning)",
                    r.members,
                    r.churners,
                    r.churn_per_s,
                    r.churn_per_s,
                    self.duration_s,
                    r.subscribe_keys,
                    r.subscribed_churners
                ),
                None => "presence churn".into(),
            },
            Scenario::AudioFlood => match &self.room {
                Some(r) => format!(
                    "{} listeners on room:<id>:audio + :reactions, the host publishing playback at {}/s; {} s alone, then {} s with {} flooders sending reactions at {}/s each",
                    r.listeners,
                    r.playback_per_s,
                    self.duration_s,
                    self.duration_s,
                    r.flooders,
                    r.flood_per_s
                ),
                None => "audio under a reaction flood".into(),
            },
        }
    }
}
