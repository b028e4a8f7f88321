//! Peak mode of a channel process (docs/ROOMS.md, "Peak mode"): the thin
//! shell around `chorus_core::peak`. The channel measures every publish;
//! entering and leaving is a `system` push to every subscriber, the
//! `chorus_peak_*` metrics and an info log line. In peak mode broadcasts are
//! held and delivered once per `rooms.peak_batch_ms` (one `batch` frame to
//! clients that joined with `config.chorus.batch: true`, every broadcast's
//! own frame in one write to the others), presence diffs are merged over
//! `rooms.peak_presence_merge_ms`, and on a reactions lane reactions are
//! counted and sent as `reaction_counts` every
//! `rooms.peak_reaction_interval_ms`. A room's audio lane is measured but
//! never held back (playback state must not wait).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chorus_core::config::RoomsConfig;
use chorus_core::lanes::{reaction_counts_payload, reaction_key, REACTION_COUNTS_EVENT};
use chorus_core::metrics::Metric;
use chorus_core::peak::{self, Held, Peak, ReactionCounts, Run, Transition};
use chorus_core::phoenix::{Outbound, Payload};
use chorus_core::presence::Diff;
use chorus_core::room::{parse_lane, Lane};
use serde_json::Value;

use super::{broadcast_frames, send_outbound, Channel, Frames, Publish, Subscriber};
use crate::host;

/// A channel's peak mode and its clock.
pub(super) struct PeakState {
    core: Peak<Frames>,
    /// The zero of the core's millisecond clock.
    epoch: Instant,
    /// Which room lane the topic is, if any.
    lane: Option<Lane>,
}

impl PeakState {
    /// Peak mode of `topic`, off.
    pub(super) fn new(rooms: &RoomsConfig, topic: &str) -> Self {
        Self {
            core: Peak::new(rooms),
            epoch: Instant::now(),
            lane: parse_lane(topic).map(|(_, lane)| lane),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long the channel may wait for a message before
    /// [`Channel::peak_tick`] is due; `None` when nothing is pending.
    pub(super) fn wait(&self) -> Option<Duration> {
        let now = self.now_ms();
        self.core
            .next_wake(now)
            .map(|due| Duration::from_millis(due.saturating_sub(now)))
    }
}

/// Appends frames to one write per serializer.
fn concat<'a>(frames: impl IntoIterator<Item = &'a Frames>) -> Frames {
    let (mut v1, mut v2) = (Vec::new(), Vec::new());
    for (a, b) in frames {
        v1.extend_from_slice(a.as_deref().unwrap_or_default());
        v2.extend_from_slice(b.as_deref().unwrap_or_default());
    }
    let some = |v: Vec<u8>| (!v.is_empty()).then_some(v);
    (some(v1), some(v2))
}

/// Sends one subscriber the frame(s) of its serializer.
fn send_frames(sub: &Subscriber, frames: Frames) {
    if let Some(bytes) = if sub.v2 { frames.1 } else { frames.0 } {
        host::outlet_send(sub.outlet, &bytes);
    }
}

impl Channel {
    /// Measures a publish. In peak mode the broadcast is held (or counted,
    /// on a reactions lane) and `None` is returned; otherwise the payload
    /// comes back to be delivered now.
    pub(super) fn peak_hold(&mut self, p: &Publish, payload: Payload) -> Option<Payload> {
        let now = self.peak.now_ms();
        self.peak.core.record(now);
        self.peak_tick_at(now);
        if !self.peak.core.is_on() {
            return Some(payload);
        }
        match self.peak.lane {
            Some(Lane::Audio) => return Some(payload),
            Some(Lane::Reactions) => {
                let key = match &payload {
                    Payload::Json(v) => reaction_key(&p.event, v),
                    Payload::Binary(_) => reaction_key(&p.event, &Value::Null),
                };
                self.peak.core.count_reaction(now, p.from, key);
            }
            Some(Lane::Chat) | None => {
                let json = match &payload {
                    Payload::Json(v) => Some(v.clone()),
                    Payload::Binary(_) => None,
                };
                let frames = broadcast_frames(&self.topic, &p.event, payload);
                let held = Held {
                    from: p.from,
                    event: p.event.clone(),
                    json,
                    frames,
                };
                self.peak.core.hold(now, held);
            }
        }
        None
    }

    /// A presence diff: merged into the period's in peak mode, fanned out
    /// now otherwise.
    pub(super) fn diff_out(&mut self, diff: Diff) {
        if self.peak.core.is_on() {
            let now = self.peak.now_ms();
            self.peak.core.hold_diff(now, diff);
        } else {
            self.fan_out_diff(diff);
        }
    }

    /// Delivers the held broadcasts before a join: a joiner receives only
    /// what is published after its join (and its replay does not repeat).
    pub(super) fn peak_before_join(&mut self) {
        let held = self.peak.core.take_broadcasts();
        self.flush_broadcasts(held);
    }

    /// Announces transitions and delivers what is due; the channel loop
    /// calls it after every message and when its wait ends.
    pub(super) fn peak_tick(&mut self) {
        let now = self.peak.now_ms();
        self.peak_tick_at(now);
    }

    /// The channel process ends: it no longer counts as in peak mode.
    pub(super) fn peak_end(&self) {
        if self.peak.core.is_on() {
            host::metric(Metric::PeakChannels, -1);
        }
    }

    fn peak_tick_at(&mut self, now: u64) {
        let flush = self.peak.core.tick(now);
        if let Some(t @ Transition::Entered { .. }) = flush.transition {
            self.announce(t);
        }
        self.flush_broadcasts(flush.broadcasts);
        if let Some(diff) = flush.diff {
            self.fan_out_diff(diff);
        }
        if let Some(counts) = flush.reactions {
            self.flush_reactions(&counts);
        }
        if let Some(t @ Transition::Left { .. }) = flush.transition {
            self.announce(t);
        }
    }

    fn announce(&self, t: Transition) {
        let (gauge, counter, rate, what) = match t {
            Transition::Entered { rate } => (1, Metric::PeakEntered, rate, "entered"),
            Transition::Left { rate } => (-1, Metric::PeakLeft, rate, "left"),
        };
        host::metric(Metric::PeakChannels, gauge);
        host::metric(counter, 1);
        host::log(
            host::Level::Info,
            &format!(
                "channel {} {what} peak mode at {rate} messages/s",
                self.topic
            ),
        );
        let payload = t.system_payload();
        for sub in self.subs.values() {
            let msg = Outbound::push(
                Some(sub.join_ref.clone()),
                &self.topic,
                peak::SYSTEM_EVENT,
                payload.clone(),
            );
            send_outbound(sub.outlet, sub.v2, &msg);
        }
    }

    /// What a batching client receives for `items`: `batch` frames (one,
    /// unless binary broadcasts split the period), concatenated.
    fn batch_frames<'a>(&self, items: impl IntoIterator<Item = &'a Held<Frames>>) -> Frames {
        let runs: Vec<Frames> = peak::batch_runs(items)
            .into_iter()
            .map(|run| match run {
                Run::Batch(payload) => {
                    broadcast_frames(&self.topic, peak::BATCH_EVENT, Payload::Json(payload))
                }
                Run::Single(frames) => frames.clone(),
            })
            .collect();
        concat(&runs)
    }

    /// Delivers a period's broadcasts, in order: one write per serializer
    /// for plain clients, the `batch` frame for batching ones. A sender
    /// without `self: true` gets the period without its own broadcasts.
    fn flush_broadcasts(&self, items: Vec<Held<Frames>>) {
        if items.is_empty() {
            return;
        }
        let senders = peak::senders(&items);
        let own = |pid: u64, sub: &Subscriber| senders.contains(&pid) && !sub.broadcast_self;
        let plain = concat(items.iter().map(|h| &h.frames));
        self.fan_out(&plain, |pid, sub| sub.batch || own(pid, sub));
        if self.subs.values().any(|s| s.batch) {
            let batched = self.batch_frames(&items);
            self.fan_out(&batched, |pid, sub| !sub.batch || own(pid, sub));
        }
        for pid in &senders {
            let Some(sub) = self.subs.get(pid).filter(|s| !s.broadcast_self) else {
                continue;
            };
            let others = items.iter().filter(|h| h.from != Some(*pid));
            let frames = if sub.batch {
                self.batch_frames(others)
            } else {
                concat(others.map(|h| &h.frames))
            };
            send_frames(sub, frames);
        }
    }

    /// Sends an interval's reaction counts; a sender without `self: true`
    /// gets the counts without its own reactions.
    fn flush_reactions(&self, counts: &ReactionCounts) {
        let interval = Some(self.peak.core.reaction_interval_ms());
        let frames = |c: &BTreeMap<String, u64>| {
            broadcast_frames(
                &self.topic,
                REACTION_COUNTS_EVENT,
                Payload::Json(reaction_counts_payload(c, interval)),
            )
        };
        let senders: BTreeSet<u64> = counts.senders().collect();
        self.fan_out(&frames(counts.all()), |pid, sub| {
            senders.contains(&pid) && !sub.broadcast_self
        });
        for pid in &senders {
            let Some(sub) = self.subs.get(pid).filter(|s| !s.broadcast_self) else {
                continue;
            };
            let rest = counts.without(*pid);
            if !rest.is_empty() {
                send_frames(sub, frames(&rest));
            }
        }
    }
}
