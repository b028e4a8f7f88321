//! How long a channel process lives on once nobody is subscribed
//! (sans-IO: the caller passes the clock).
//!
//! A channel whose last subscriber left holds a wasm instance (its linear
//! memory, some hundreds of KiB) for as long as it runs, so it should stop
//! soon unless it holds something a returning client would miss. What a
//! channel holds comes back when it starts again, except the client message
//! ids of a chat lane's dedupe window (`limits.dedupe_window_ms`): the
//! stored history is refilled from storage, the room state is read again,
//! and the recent history of a lane that is not stored is for the clients
//! that are subscribed (it goes with the channel). So:
//! * a channel that remembers no client message id stops
//!   `limits.channel_empty_ms` after its last subscriber left;
//! * one that does stops `limits.channel_idle_ms` after (if that is longer),
//!   so a client that reconnects and retries an unacknowledged message is
//!   still answered "duplicate".
//!
//! The channel asks its directory shard to stop it; the shard declines while
//! it handed the channel out lately ([`may_stop`]): a look-up it answered
//! with this channel is followed by a join or a publish, possibly from
//! another node, that would otherwise reach a process that is gone (its
//! asker waiting out its timeout), or a channel that no longer is the
//! topic's (two incarnations, each with part of the subscribers). The
//! channel asks again every [`ASK_AGAIN_MS`] while it stays empty.

/// How long after a directory shard handed a channel out (a look-up
/// answered with it) it declines to stop that channel.
pub const HANDED_OUT_GRACE_MS: u64 = 5_000;

/// How often an empty channel whose stop was declined asks again.
pub const ASK_AGAIN_MS: u64 = 1_000;

/// Whether a directory shard stops a channel that asked to stop at
/// `now_ms`, given when it last handed the channel out (same clock).
pub fn may_stop(handed_out_ms: Option<u64>, now_ms: u64) -> bool {
    handed_out_ms.is_none_or(|at| now_ms.saturating_sub(at) >= HANDED_OUT_GRACE_MS)
}

/// What a channel with no subscriber does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It has subscribers: it runs.
    Serving,
    /// Nobody is subscribed: it stops unless someone joins within this many
    /// milliseconds (the longest the caller may wait before asking again).
    Wait(u64),
    /// Nobody has been subscribed for long enough: it stops.
    Stop,
}

/// The empty-channel clock of one channel.
#[derive(Debug, Clone)]
pub struct Linger {
    empty_ms: u64,
    idle_ms: u64,
    /// When the channel was last seen without a subscriber, since it had one.
    since: Option<u64>,
}

impl Linger {
    /// `empty_ms`: `limits.channel_empty_ms`; `idle_ms`:
    /// `limits.channel_idle_ms`. A new channel counts as empty from its
    /// first step (a channel started by a join gets its subscriber at once).
    pub fn new(empty_ms: u64, idle_ms: u64) -> Linger {
        Linger {
            empty_ms,
            idle_ms,
            since: None,
        }
    }

    /// At `now_ms` (a monotonic clock), with or without subscribers, and
    /// whether the channel remembers client message ids (`keeps_ids`).
    pub fn step(&mut self, now_ms: u64, subscribed: bool, keeps_ids: bool) -> Step {
        if subscribed {
            self.since = None;
            return Step::Serving;
        }
        let since = *self.since.get_or_insert(now_ms);
        let limit = if keeps_ids {
            self.idle_ms.max(self.empty_ms)
        } else {
            self.empty_ms
        };
        let empty_for = now_ms.saturating_sub(since);
        if empty_for >= limit {
            Step::Stop
        } else {
            Step::Wait(limit - empty_for)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{may_stop, Linger, Step, HANDED_OUT_GRACE_MS};

    #[test]
    fn a_channel_handed_out_lately_is_not_stopped() {
        // Never handed out (started by a restart): stopped when it asks.
        assert!(may_stop(None, 10));
        assert!(!may_stop(Some(1_000), 1_000));
        assert!(!may_stop(Some(1_000), 1_000 + HANDED_OUT_GRACE_MS - 1));
        assert!(may_stop(Some(1_000), 1_000 + HANDED_OUT_GRACE_MS));
        // A clock that went backwards never stops it early.
        assert!(!may_stop(Some(5_000), 4_000));
    }

    #[test]
    fn an_empty_channel_stops_after_channel_empty_ms() {
        let mut l = Linger::new(1_000, 30_000);
        assert_eq!(l.step(0, true, false), Step::Serving);
        assert_eq!(
            l.step(5_000, false, false),
            Step::Wait(1_000),
            "the last left"
        );
        assert_eq!(l.step(5_400, false, false), Step::Wait(600));
        assert_eq!(l.step(6_000, false, false), Step::Stop);
    }

    #[test]
    fn a_join_restarts_the_clock() {
        let mut l = Linger::new(1_000, 30_000);
        assert_eq!(l.step(0, false, false), Step::Wait(1_000));
        assert_eq!(l.step(900, true, false), Step::Serving);
        assert_eq!(l.step(1_500, false, false), Step::Wait(1_000));
        assert_eq!(l.step(2_499, false, false), Step::Wait(1));
        assert_eq!(l.step(2_500, false, false), Step::Stop);
    }

    #[test]
    fn remembered_message_ids_keep_it_channel_idle_ms() {
        let mut l = Linger::new(1_000, 30_000);
        assert_eq!(l.step(0, false, true), Step::Wait(30_000));
        assert_eq!(l.step(1_000, false, true), Step::Wait(29_000));
        assert_eq!(l.step(30_000, false, true), Step::Stop);
        // Ids forgotten (the window passed): the shorter limit applies,
        // counted from when it became empty.
        let mut l = Linger::new(1_000, 30_000);
        assert_eq!(l.step(0, false, true), Step::Wait(30_000));
        assert_eq!(l.step(2_000, false, false), Step::Stop);
    }

    #[test]
    fn the_longer_of_the_two_limits_applies_to_ids() {
        let mut l = Linger::new(5_000, 1_000);
        assert_eq!(l.step(0, false, true), Step::Wait(5_000));
        assert_eq!(l.step(0, false, false), Step::Wait(5_000));
    }

    #[test]
    fn a_clock_going_back_does_not_stop_it() {
        let mut l = Linger::new(1_000, 30_000);
        assert_eq!(l.step(10_000, false, false), Step::Wait(1_000));
        assert_eq!(l.step(9_000, false, false), Step::Wait(1_000));
    }
}
