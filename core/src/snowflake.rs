//! Snowflake ids: 64-bit, time-ordered, unique without coordination.
//!
//! Layout (most significant first), as Twitter and Discord use it:
//!
//! ```text
//! | 42 bits: ms since CHORUS_EPOCH_MS | 10 bits: worker | 12 bits: sequence |
//! ```
//!
//! Ids sort by creation time, which is what lets message history be
//! clustered by id and partitioned into time buckets (Discord's
//! `(channel_id, bucket)` schema). Each channel process generates ids with a
//! worker id unique in the cluster, so no two processes collide; the clock
//! is passed in, so the generator is deterministic and testable.
//!
//! Ids travel as decimal strings in JSON: JavaScript numbers lose precision
//! above 2^53, and Phoenix clients are JavaScript.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The Chorus epoch, 2026-01-01T00:00:00Z, in Unix milliseconds. 42 bits of
/// milliseconds from here last until the year 2165.
pub const CHORUS_EPOCH_MS: u64 = 1_767_225_600_000;

/// Width of a message-history partition: 10 days, Discord's choice, which
/// keeps partitions of busy channels small and quiet channels to few
/// partitions.
pub const BUCKET_WIDTH_MS: u64 = 10 * 24 * 60 * 60 * 1000;

const TIMESTAMP_BITS: u32 = 42;
const WORKER_BITS: u32 = 10;
const SEQUENCE_BITS: u32 = 12;

/// Worker ids are `0..=MAX_WORKER`.
pub const MAX_WORKER: u16 = (1 << WORKER_BITS) - 1;
/// Ids per worker per millisecond before the generator borrows the next one.
pub const SEQUENCE_PER_MS: u16 = 1 << SEQUENCE_BITS;
const MAX_TIMESTAMP: u64 = (1 << TIMESTAMP_BITS) - 1;

/// A Snowflake id. Ordering is creation order (then worker, then sequence).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Id(u64);

impl Id {
    /// Wraps a raw value, e.g. read back from storage.
    pub const fn from_u64(raw: u64) -> Id {
        Id(raw)
    }

    /// The raw value, for storage as a 64-bit integer.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Assembles an id from its parts: `since_epoch_ms` relative to
    /// [`CHORUS_EPOCH_MS`]. `None` if a part does not fit its field.
    pub fn from_parts(since_epoch_ms: u64, worker: u16, sequence: u16) -> Option<Id> {
        if since_epoch_ms > MAX_TIMESTAMP || worker > MAX_WORKER || sequence >= SEQUENCE_PER_MS {
            return None;
        }
        Some(Id(since_epoch_ms << (WORKER_BITS + SEQUENCE_BITS)
            | u64::from(worker) << SEQUENCE_BITS
            | u64::from(sequence)))
    }

    /// Milliseconds since [`CHORUS_EPOCH_MS`].
    pub const fn since_epoch_ms(self) -> u64 {
        self.0 >> (WORKER_BITS + SEQUENCE_BITS)
    }

    /// Creation time in Unix milliseconds.
    pub const fn timestamp_ms(self) -> u64 {
        self.since_epoch_ms() + CHORUS_EPOCH_MS
    }

    /// The worker that generated the id.
    pub const fn worker(self) -> u16 {
        ((self.0 >> SEQUENCE_BITS) & MAX_WORKER as u64) as u16
    }

    /// Position within the worker's millisecond.
    pub const fn sequence(self) -> u16 {
        (self.0 & (SEQUENCE_PER_MS as u64 - 1)) as u16
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A string that is not a decimal u64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError(String);

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid snowflake id {:?}: expected a decimal 64-bit number",
            self.0
        )
    }
}

impl std::error::Error for ParseIdError {}

impl FromStr for Id {
    type Err = ParseIdError;

    /// Strict decimal: no sign, no spaces, so an id has one spelling.
    fn from_str(s: &str) -> Result<Id, ParseIdError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseIdError(s.to_string()));
        }
        s.parse::<u64>()
            .map(Id)
            .map_err(|_| ParseIdError(s.to_string()))
    }
}

impl Serialize for Id {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Id {
    /// Accepts the decimal string we emit and, leniently, a JSON integer
    /// (small ids survive JavaScript numbers, and hand-written requests
    /// often use them).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Id, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a snowflake id as a decimal string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Id, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Id, E> {
                Ok(Id(v))
            }
        }
        deserializer.deserialize_any(IdVisitor)
    }
}

/// A worker id of 1024 or more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerIdOutOfRange(pub u16);

impl fmt::Display for WorkerIdOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "snowflake worker id {} out of range 0..={MAX_WORKER}",
            self.0
        )
    }
}

impl std::error::Error for WorkerIdOutOfRange {}

/// Generates strictly increasing ids for one worker.
#[derive(Debug, Clone)]
pub struct Generator {
    worker: u16,
    /// The last id handed out, `None` before the first.
    last: Option<Id>,
}

impl Generator {
    /// A generator for `worker_id` (`0..=1023`), which must be unique among
    /// the generators alive in the cluster.
    pub fn new(worker_id: u16) -> Result<Generator, WorkerIdOutOfRange> {
        if worker_id > MAX_WORKER {
            return Err(WorkerIdOutOfRange(worker_id));
        }
        Ok(Generator {
            worker: worker_id,
            last: None,
        })
    }

    /// The worker id of this generator.
    pub fn worker(&self) -> u16 {
        self.worker
    }

    /// The next id at Unix time `now_ms`.
    ///
    /// Never repeats and always increases: if the clock has not moved past
    /// the last id's millisecond (same millisecond, or stepped backwards),
    /// the sequence continues, and when it runs out the generator borrows
    /// the next millisecond instead of waiting or failing. Borrowed time is
    /// paid back as the real clock catches up, so id timestamps run ahead by
    /// at most the backwards step (or the burst beyond 4096 ids/ms).
    /// Times before the epoch count as the epoch. The 42-bit timestamp is
    /// exhausted in 2165; past that the generator keeps returning the last
    /// possible id of the worker.
    pub fn next(&mut self, now_ms: u64) -> Id {
        let now = now_ms.saturating_sub(CHORUS_EPOCH_MS).min(MAX_TIMESTAMP);
        let (ts, seq) = match self.last {
            Some(last) if last.since_epoch_ms() >= now => {
                let seq = last.sequence() + 1;
                if seq < SEQUENCE_PER_MS {
                    (last.since_epoch_ms(), seq)
                } else {
                    (last.since_epoch_ms() + 1, 0)
                }
            }
            _ => (now, 0),
        };
        match (Id::from_parts(ts, self.worker, seq), self.last) {
            (Some(id), _) => {
                self.last = Some(id);
                id
            }
            // Only when the last id was the worker's final one (year 2165).
            (None, Some(last)) => last,
            // Unreachable: without a last id, `ts` is the clamped clock.
            (None, None) => first_id_at(u64::MAX),
        }
    }
}

/// The history partition (of width `bucket_width_ms`, normally
/// [`BUCKET_WIDTH_MS`]) that `id` falls in: bucket `k` holds ids created in
/// `[k·width, (k+1)·width)` ms after the epoch. A width of 0 is treated as 1.
pub fn bucket_of(id: Id, bucket_width_ms: u64) -> u64 {
    id.since_epoch_ms() / bucket_width_ms.max(1)
}

/// The smallest id that can be created at Unix time `ms` (worker 0,
/// sequence 0), so `id >= first_id_at(t)` selects ids created at or after
/// `t` and `id < first_id_at(t)` those before. Times before the epoch give
/// the smallest id, times beyond 2165 the largest timestamp.
pub fn first_id_at(ms: u64) -> Id {
    let since = ms.saturating_sub(CHORUS_EPOCH_MS).min(MAX_TIMESTAMP);
    Id(since << (WORKER_BITS + SEQUENCE_BITS))
}
