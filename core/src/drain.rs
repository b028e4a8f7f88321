//! Graceful drain of a node (SIGTERM or `POST /realtime/v1/api/drain`):
//! which client connections to close next, when, and when the drain is over.
//!
//! The host stops accepting first (the listener is closed, so a second node
//! can bind the port), then asks [`Drain::step`] what to do with the
//! WebSocket connections still open: close the next batch of
//! `node.drain_batch_size` with `1001 going away`, wait
//! `node.drain_batch_interval_ms` before the next batch (so thousands of
//! clients do not reconnect to the next node in the same millisecond), and
//! report [`Step::Flushed`] once every connection's outlet has written its
//! queued frames and its close, or [`Step::TimedOut`] at
//! `node.shutdown_timeout_ms` after the start. Connections that appear
//! during the drain (upgraded from a head read before the listener closed)
//! are closed in a later batch like the others.
//!
//! A cluster node hands its channels over to the other nodes first
//! ([`Drain::hand_over_first`]): its own clients are closed only once none of
//! its channel processes runs any more (or the handover's bound passed).
//! Closed earlier, they would reconnect to another node and join the topic's
//! new home while the old channel still stores and acknowledges messages
//! they would then never see, neither live nor in their replay.

use std::collections::BTreeSet;

use crate::config::Config;

/// The close code clients get: the server is going away.
pub const CLOSE_CODE: u16 = 1001;

/// The close reason clients get.
pub const CLOSE_REASON: &str = "server draining";

/// The drain's settings (`[node]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainConfig {
    /// `node.drain_batch_size`: connections closed per batch (at least 1).
    pub batch_size: usize,
    /// `node.drain_batch_interval_ms`: pause between two batches.
    pub batch_interval_ms: u64,
    /// `node.shutdown_timeout_ms`: the drain's whole budget, from its start
    /// to the process's exit.
    pub shutdown_timeout_ms: u64,
}

impl DrainConfig {
    pub fn from_config(c: &Config) -> Self {
        Self {
            batch_size: (c.node.drain_batch_size as usize).max(1),
            batch_interval_ms: c.node.drain_batch_interval_ms,
            shutdown_timeout_ms: c.node.shutdown_timeout_ms,
        }
    }
}

/// What the host does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Close these connections with [`CLOSE_CODE`] (after their queued
    /// frames), then ask again.
    Close(Vec<u64>),
    /// Nothing to do for this many milliseconds (or until a connection
    /// ends); then ask again.
    Wait(u64),
    /// Every connection is closed and its outlet written: flush the store
    /// and exit.
    Flushed,
    /// `node.shutdown_timeout_ms` passed: exit now; `open` connections were
    /// still open.
    TimedOut { open: usize },
}

/// How often the host looks at the open connections while it waits for
/// the last outlets to finish.
pub const POLL_MS: u64 = 20;

/// A drain in progress.
#[derive(Debug, Clone)]
pub struct Drain {
    config: DrainConfig,
    deadline_ms: u64,
    /// When the next batch may be closed.
    next_batch_ms: u64,
    /// Connections already told to close.
    closing: BTreeSet<u64>,
    /// Until when no connection is closed while channels still run here
    /// (0: no handover to wait for, or it is over).
    handover_until_ms: u64,
    /// Channel processes still running here, as last reported.
    channels: usize,
}

impl Drain {
    /// A drain that starts at `now_ms`.
    pub fn new(config: DrainConfig, now_ms: u64) -> Self {
        Self {
            config,
            deadline_ms: now_ms.saturating_add(config.shutdown_timeout_ms),
            next_batch_ms: now_ms,
            closing: BTreeSet::new(),
            handover_until_ms: 0,
            channels: 0,
        }
    }

    /// A cluster node's drain: no connection is closed before the node's
    /// channels have stopped (reported with [`Drain::channels`]), or for
    /// `within_ms` from `now_ms` at most.
    pub fn hand_over_first(mut self, now_ms: u64, within_ms: u64) -> Self {
        self.handover_until_ms = now_ms.saturating_add(within_ms).min(self.deadline_ms);
        self.channels = usize::MAX;
        self
    }

    /// How many channel processes still run on this node.
    pub fn channels(&mut self, running: usize) {
        self.channels = running;
    }

    /// Whether the drain still waits for the handover of its channels.
    fn handing_over(&mut self, now_ms: u64) -> bool {
        if self.handover_until_ms == 0 {
            return false;
        }
        if self.channels == 0 || now_ms >= self.handover_until_ms {
            self.handover_until_ms = 0;
            return false;
        }
        true
    }

    /// When the drain must be over, whatever is still open.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// The next step, given the connections `open` now (in any order).
    pub fn step(&mut self, open: &[u64], now_ms: u64) -> Step {
        if open.is_empty() {
            return Step::Flushed;
        }
        if now_ms >= self.deadline_ms {
            return Step::TimedOut { open: open.len() };
        }
        let left = self.deadline_ms - now_ms;
        if self.handing_over(now_ms) {
            return Step::Wait(POLL_MS.min(self.handover_until_ms - now_ms));
        }
        let mut fresh: Vec<u64> = open
            .iter()
            .copied()
            .filter(|id| !self.closing.contains(id))
            .collect();
        if fresh.is_empty() {
            // Only outlets still writing: look again soon.
            return Step::Wait(POLL_MS.min(left));
        }
        if now_ms < self.next_batch_ms {
            return Step::Wait((self.next_batch_ms - now_ms).min(left));
        }
        fresh.sort_unstable();
        fresh.dedup();
        fresh.truncate(self.config.batch_size);
        self.closing.extend(fresh.iter().copied());
        self.next_batch_ms = now_ms.saturating_add(self.config.batch_interval_ms);
        Step::Close(fresh)
    }

    /// Connections told to close so far.
    pub fn closed(&self) -> usize {
        self.closing.len()
    }
}

/// `/healthz` and `/readyz`: `(status, "ok" | "draining" | "not_a_member")`.
/// `refused`: the node is in a cluster whose control server no longer knows
/// it (the other nodes do not list it): a load balancer should move its
/// clients to a node that is a member.
pub fn health(draining: bool, refused: bool) -> (u16, &'static str) {
    if draining {
        (503, "draining")
    } else if refused {
        (503, "not_a_member")
    } else {
        (200, "ok")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(batch: usize, interval: u64, timeout: u64) -> DrainConfig {
        DrainConfig {
            batch_size: batch,
            batch_interval_ms: interval,
            shutdown_timeout_ms: timeout,
        }
    }

    #[test]
    fn nothing_open_is_flushed_at_once() {
        let mut d = Drain::new(cfg(10, 100, 1000), 0);
        assert_eq!(d.step(&[], 0), Step::Flushed);
    }

    #[test]
    fn connections_close_in_batches_spaced_by_the_interval() {
        let open: Vec<u64> = (1..=25).rev().collect();
        let mut d = Drain::new(cfg(10, 100, 10_000), 1_000);
        assert_eq!(d.step(&open, 1_000), Step::Close((1..=10).collect()));
        // Too early for the next batch.
        assert_eq!(d.step(&open, 1_040), Step::Wait(60));
        assert_eq!(d.step(&open, 1_100), Step::Close((11..=20).collect()));
        assert_eq!(d.step(&open, 1_200), Step::Close((21..=25).collect()));
        assert_eq!(d.closed(), 25);
        // All told to close; outlets still writing: poll.
        assert_eq!(d.step(&open, 1_300), Step::Wait(POLL_MS));
        assert_eq!(d.step(&open[..3], 1_320), Step::Wait(POLL_MS));
        assert_eq!(d.step(&[], 1_340), Step::Flushed);
    }

    #[test]
    fn a_connection_that_appears_later_gets_its_own_batch() {
        let mut d = Drain::new(cfg(2, 50, 10_000), 0);
        assert_eq!(d.step(&[1, 2], 0), Step::Close(vec![1, 2]));
        assert_eq!(d.step(&[1, 2, 7], 10), Step::Wait(40));
        assert_eq!(d.step(&[2, 7], 50), Step::Close(vec![7]));
    }

    #[test]
    fn the_deadline_ends_the_drain_and_caps_every_wait() {
        let mut d = Drain::new(cfg(1, 5_000, 1_000), 0);
        assert_eq!(d.deadline_ms(), 1_000);
        assert_eq!(d.step(&[1, 2], 0), Step::Close(vec![1]));
        assert_eq!(d.step(&[1, 2], 990), Step::Wait(10));
        assert_eq!(d.step(&[1, 2], 1_000), Step::TimedOut { open: 2 });
    }

    #[test]
    fn the_config_keys_set_the_drain() {
        let mut c = Config::default();
        c.node.drain_batch_size = 1;
        c.node.shutdown_timeout_ms = 200;
        let dc = DrainConfig::from_config(&c);
        assert_eq!(dc.batch_size, 1);
        let mut d = Drain::new(dc, 0);
        assert_eq!(d.step(&[4, 3], 0), Step::Close(vec![3]));
        assert_eq!(d.step(&[4, 3], 200), Step::TimedOut { open: 2 });
    }

    #[test]
    fn a_cluster_node_closes_no_connection_before_its_channels_stopped() {
        let mut d = Drain::new(cfg(10, 0, 10_000), 0).hand_over_first(0, 2_000);
        // Nothing reported yet: the channels are assumed to run.
        assert_eq!(d.step(&[1, 2], 0), Step::Wait(POLL_MS));
        d.channels(3);
        assert_eq!(d.step(&[1, 2], 500), Step::Wait(POLL_MS));
        assert_eq!(d.step(&[1, 2], 1_990), Step::Wait(10));
        d.channels(0);
        assert_eq!(d.step(&[1, 2], 1_995), Step::Close(vec![1, 2]));
        // Over once: a channel seen later does not hold the rest back.
        d.channels(1);
        assert_eq!(d.step(&[1, 2, 3], 1_996), Step::Close(vec![3]));
    }

    #[test]
    fn the_handover_wait_is_bounded() {
        let mut d = Drain::new(cfg(10, 0, 10_000), 100).hand_over_first(100, 1_000);
        d.channels(5);
        assert_eq!(d.step(&[7], 600), Step::Wait(POLL_MS));
        assert_eq!(d.step(&[7], 1_100), Step::Close(vec![7]));
        // The node's own deadline caps the wait too.
        let mut d = Drain::new(cfg(10, 0, 300), 0).hand_over_first(0, 1_000);
        assert_eq!(d.step(&[7], 290), Step::Wait(10));
        assert_eq!(d.step(&[7], 300), Step::TimedOut { open: 1 });
    }

    /// Serving state as the admin routes show it.
    #[test]
    fn health_answers_follow_the_state() {
        assert_eq!(health(false, false), (200, "ok"));
        assert_eq!(health(true, false), (503, "draining"));
        assert_eq!(health(false, true), (503, "not_a_member"));
        assert_eq!(health(true, true), (503, "draining"));
    }
}
