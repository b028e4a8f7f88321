//! The scenarios and their parameters, as given on the command line and
//! recorded in every result.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// N sessions open and join one room.
    ConnectStorm,
    /// One room, N subscribers, one publisher at a fixed rate.
    FanOut,
    /// R rooms of M members, every member publishing at a fixed rate.
    ManyRooms,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [
        Scenario::ConnectStorm,
        Scenario::FanOut,
        Scenario::ManyRooms,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::ConnectStorm => "connect-storm",
            Scenario::FanOut => "fan-out",
            Scenario::ManyRooms => "many-rooms",
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
            .ok_or_else(|| format!("unknown scenario {s:?} (connect-storm, fan-out, many-rooms)"))
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
        }
    }
}
