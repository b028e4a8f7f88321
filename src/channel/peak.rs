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
use chorus_core::frame::{self, BodyRef};
use chorus_core::lanes::{reaction_counts_payload, reaction_key, REACTION_COUNTS_EVENT};
use chorus_core::metrics::Metric;
use chorus_core::peak::{self, Held, Peak, ReactionCounts, Run, Transition};
use chorus_core::phoenix::Vsn;
use chorus_core::presence::Diff;
use chorus_core::room::{parse_lane, Lane};

use super::{send_control, Channel, Publish, Subscriber};
use crate::host;
use crate::msg::Body;

/// A broadcast's frames for the 1.0.0 and 2.0.0 serializers.
type Frames = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Frames a broadcast once per serializer.
fn broadcast_frames(topic: &str, event: &str, payload: BodyRef<'_>) -> Frames {
    (
        frame::broadcast(Vsn::V1, topic, event, payload, None),
        frame::broadcast(Vsn::V2, topic, event, payload, None),
    )
}

/// The frame of `frames` for serializer `vsn`.
fn of(frames: &Frames, vsn: Vsn) -> Option<Vec<u8>> {
    match vsn {
        Vsn::V1 => frames.0.clone(),
        Vsn::V2 => frames.1.clone(),
    }
}

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

    /// `now` on the core's millisecond clock.
    fn ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// How long the channel may wait for a message (from `now`) before
    /// [`Channel::peak_tick`] is due; `None` when nothing is pending.
    pub(super) fn wait(&self, now: Instant) -> Option<Duration> {
        let now = self.ms(now);
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
fn send_frames(sub: &Subscriber, frames: Frames, route: host::Route<'_>) {
    if let Some(bytes) = if sub.v2 { frames.1 } else { frames.0 } {
        crate::relay::send(sub.outlet, &bytes, route);
    }
}

/// The outlet lane of what peak mode delivers per period: chat, never
/// dropped (a period's `reaction_counts` too: counted again under
/// backpressure it would lose its meaning).
fn held_route(topic: &str) -> host::Route<'_> {
    host::Route {
        lane: chorus_core::lanes::Lane::Chat,
        topic,
        key: "",
    }
}

impl Channel {
    /// Measures a publish. In peak mode the broadcast is held (or counted,
    /// on a reactions lane) and `false` is returned; `true`: deliver it now.
    pub(super) fn peak_hold(&mut self, p: &Publish) -> bool {
        let now = self.peak.ms(self.now);
        let from = self.publisher(p);
        self.peak.core.record(now);
        self.peak_tick_at(now);
        if !self.peak.core.is_on() {
            return true;
        }
        match self.peak.lane {
            Some(Lane::Audio) => return true,
            Some(Lane::Reactions) => {
                let key = reaction_key(&p.event, p.payload.as_ref());
                self.peak.core.count_reaction(now, from, key);
            }
            Some(Lane::Chat) | None => {
                let json = match &p.payload {
                    Body::Json(text) => Some(text.clone()),
                    Body::Binary(_) => None,
                };
                let frames = broadcast_frames(&self.topic, &p.event, p.payload.as_ref());
                let held = Held {
                    from,
                    event: p.event.clone(),
                    json,
                    frames,
                };
                self.peak.core.hold(now, held);
            }
        }
        false
    }

    /// A presence diff: merged into the period's in peak mode, fanned out
    /// now otherwise.
    pub(super) fn diff_out(&mut self, diff: Diff) {
        if self.peak.core.is_on() {
            let now = self.peak.ms(self.now);
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
        let now = self.peak.ms(self.now);
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
        let payload = t.system_payload().to_string();
        for sub in self.subs.values() {
            let msg = frame::message(
                sub.vsn(),
                Some(&sub.join_ref),
                None,
                &self.topic,
                peak::SYSTEM_EVENT,
                payload.as_bytes(),
            );
            send_control(sub.outlet, &msg);
        }
    }

    /// What a batching client receives for `items`: `batch` frames (one,
    /// unless binary broadcasts split the period), concatenated.
    fn batch_frames<'a>(&self, items: impl IntoIterator<Item = &'a Held<Frames>>) -> Frames {
        let runs: Vec<Frames> = peak::batch_runs(items)
            .into_iter()
            .map(|run| match run {
                Run::Batch(payload) => {
                    broadcast_frames(&self.topic, peak::BATCH_EVENT, BodyRef::Json(&payload))
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
        self.fan_out(
            |vsn| of(&plain, vsn),
            held_route(&self.topic),
            |pid, sub| sub.batch || own(pid, sub),
        );
        if self.subs.values().any(|s| s.batch) {
            let batched = self.batch_frames(&items);
            self.fan_out(
                |vsn| of(&batched, vsn),
                held_route(&self.topic),
                |pid, sub| !sub.batch || own(pid, sub),
            );
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
            send_frames(sub, frames, held_route(&self.topic));
        }
    }

    /// Sends an interval's reaction counts; a sender without `self: true`
    /// gets the counts without its own reactions.
    fn flush_reactions(&self, counts: &ReactionCounts) {
        let interval = Some(self.peak.core.reaction_interval_ms());
        let frames = |c: &BTreeMap<String, u64>| {
            let payload = reaction_counts_payload(c, interval).to_string();
            broadcast_frames(
                &self.topic,
                REACTION_COUNTS_EVENT,
                BodyRef::Json(payload.as_bytes()),
            )
        };
        let senders: BTreeSet<u64> = counts.senders().collect();
        let all = frames(counts.all());
        self.fan_out(
            |vsn| of(&all, vsn),
            held_route(&self.topic),
            |pid, sub| senders.contains(&pid) && !sub.broadcast_self,
        );
        for pid in &senders {
            let Some(sub) = self.subs.get(pid).filter(|s| !s.broadcast_self) else {
                continue;
            };
            let rest = counts.without(*pid);
            if !rest.is_empty() {
                send_frames(sub, frames(&rest), held_route(&self.topic));
            }
        }
    }
}
