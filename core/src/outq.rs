//! A socket's outbound queue, split by [`Lane`] (sans-IO). The host's outlet
//! (`host-bridge/src/socket.rs`) keeps one per socket under its lock and
//! drains it from a writer task; every decision lives here:
//!
//! * what a push does: queue, replace the unwritten audio frame of the same
//!   topic, count a reaction instead of queueing it, or declare the socket a
//!   slow consumer;
//! * the order frames are written in: control, audio, chat, reactions, then
//!   the reaction counts;
//! * closing: the close frame is written after everything queued before it.
//!
//! Frames are shared buffers ([`Frame`]): a fan-out of one frame to N sockets
//! queues N clones of one `Arc`, with no copy of the bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{LimitsConfig, NodeConfig};
use crate::lanes::{self, Lane};
use crate::phoenix::Vsn;

/// Encoded WebSocket frame bytes, shared by every queue it was pushed to.
pub type Frame = Arc<[u8]>;

/// Distinct reaction keys counted per topic; further keys count as `other`,
/// so a flood of made-up keys cannot grow a slow socket's memory.
pub const MAX_COUNTED_KEYS: usize = 64;

/// Bounds of one queue (from `limits.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutqLimits {
    /// Frames the control+audio lanes, or the chat lane, may hold before the
    /// socket is a slow consumer (`limits.outlet_queue_frames`).
    pub queue_frames: usize,
    /// Unwritten reaction frames kept before reactions are counted instead
    /// (`limits.reaction_queue_frames`).
    pub reaction_frames: usize,
    /// Bytes all lanes together may hold (`limits.outlet_queue_bytes`):
    /// past it a control, audio or chat frame makes the socket a slow
    /// consumer and a reaction is counted instead of queued, so big frames
    /// cannot grow a socket's queue past a byte bound.
    pub queue_bytes: usize,
}

impl OutqLimits {
    /// The bounds configured in `limits`.
    pub fn from_config(limits: &LimitsConfig) -> OutqLimits {
        OutqLimits {
            queue_frames: limits.outlet_queue_frames as usize,
            reaction_frames: limits.reaction_queue_frames as usize,
            queue_bytes: limits.outlet_queue_bytes as usize,
        }
    }
}

/// When the writers of a fan-out's sockets are woken
/// (`node.fanout_write_delay_ms`, `node.fanout_write_delay_sockets`); the
/// host applies it to each batch of writer wakes it issues
/// (`host-bridge/src/wakes.rs`).
///
/// Written at once, a room of thousands costs one `write` (and one TCP
/// segment for its client to read) per socket per message: at tens of
/// messages a second that kernel work is most of a node's CPU. Woken a few
/// milliseconds later, each writer finds the frames of the fan-outs that
/// followed meanwhile and writes them together. Small rooms are written at
/// once: their latency is what their users feel, and their writes are few.
///
/// The delay adapts to how long the writes take ([`FanoutDelay::adapt`]):
/// `delay` while the writers of a delayed batch are done well within it,
/// up to `max` when writing a batch takes longer (a slower kernel, a busier
/// machine). With a fixed delay, a node whose writes of one batch took
/// longer than the time between two broadcasts wrote about one frame per
/// write again and fell behind: on one 2-core machine 30 ms was enough
/// (p99 below NATS'), on another the same load needed 150 ms and 30 ms
/// left a p99 of seconds (bench/results/machine-20261201).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FanoutDelay {
    /// The shortest delay: what a batch waits while writes keep up.
    pub delay: Duration,
    /// The longest delay (never below `delay`).
    pub max: Duration,
    pub min_sockets: usize,
}

impl FanoutDelay {
    /// The delay configured in `node`.
    pub fn from_config(node: &NodeConfig) -> FanoutDelay {
        let delay = Duration::from_millis(u64::from(node.fanout_write_delay_ms));
        FanoutDelay {
            delay,
            max: Duration::from_millis(u64::from(node.fanout_write_delay_max_ms)).max(delay),
            min_sockets: node.fanout_write_delay_sockets as usize,
        }
    }

    /// How long a batch of `sockets` writer wakes (the idle writers a
    /// broadcast found, over all its serializers) waits before it is
    /// issued, when the delay is `current` now; `None`: at once.
    pub fn for_fanout(&self, sockets: usize, current: Duration) -> Option<Duration> {
        (!self.delay.is_zero() && sockets >= self.min_sockets)
            .then(|| current.clamp(self.delay, self.max))
    }

    /// The delay after a delayed batch's writers (most of them: the host
    /// ignores the slowest tenth, a few slow clients must not slow a room)
    /// finished writing `drain` after they were woken, when it was
    /// `current`. Writing should take at most a quarter of the delay, so
    /// the writers are idle — and collecting the next frames — the rest of
    /// it (and the node has CPU left for everything else): a longer drain
    /// sets the delay to four times it at once (at most `max`); a drain well
    /// within (an eighth or less) lets it shrink by a sixteenth per batch,
    /// back to `delay` when the load has gone.
    pub fn adapt(&self, current: Duration, drain: Duration) -> Duration {
        let current = current.clamp(self.delay, self.max);
        if drain * 4 > current {
            (drain * 4).min(self.max)
        } else if drain * 8 <= current {
            (current - current / 16).max(self.delay)
        } else {
            current
        }
    }
}

/// Where a pushed frame goes: its lane plus what the lane needs to know.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// Replies, presence, `system`, errors.
    Control,
    /// A room's audio state on `topic`: replaces an unwritten one.
    Audio { topic: &'a Arc<str> },
    /// Chat and every other broadcast.
    Chat,
    /// A reaction on `topic` that counts as `key` when aggregated.
    Reactions { topic: &'a Arc<str>, key: &'a str },
}

impl Route<'_> {
    /// The lane of this route.
    pub fn lane(&self) -> Lane {
        match self {
            Route::Control => Lane::Control,
            Route::Audio { .. } => Lane::Audio,
            Route::Chat => Lane::Chat,
            Route::Reactions { .. } => Lane::Reactions,
        }
    }
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued behind the frames of its lane.
    Queued,
    /// Took the place of the unwritten audio frame of its topic.
    Replaced,
    /// Counted under its reaction key, to be delivered in `reaction_counts`.
    Counted,
    /// The lane was full: the socket is a slow consumer. The backlog is
    /// dropped; the writer sends the 1008 close.
    Slow,
    /// The queue is closing or already slow: nothing more is accepted.
    Refused,
}

/// One item taken by the writer, in write order.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// Frame bytes to write as they are.
    Frame(Frame),
    /// Aggregated reactions of `topic`, to encode for the socket's
    /// serializer with [`reaction_counts_frame`].
    Counts {
        topic: Arc<str>,
        counts: BTreeMap<String, u64>,
    },
}

/// State of a queue after a [`OutQ::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Open: write what was taken, then take again.
    Open,
    /// Closed and drained: write what was taken (the close frame last), then
    /// end the connection.
    Finished,
    /// A slow consumer: write the 1008 `slow_consumer` close and end.
    Slow,
}

/// The outbound queue of one socket.
#[derive(Debug, Default)]
pub struct OutQ {
    control: VecDeque<Frame>,
    /// Latest unwritten frame per topic, in order of first arrival.
    audio: VecDeque<(Arc<str>, Frame)>,
    chat: VecDeque<Frame>,
    reactions: VecDeque<Frame>,
    /// Reactions counted instead of queued, per topic.
    counts: Vec<(Arc<str>, BTreeMap<String, u64>)>,
    /// Set by [`OutQ::close`]: nothing more is accepted.
    closing: bool,
    /// Written once everything else has been.
    close_frame: Option<Frame>,
    slow: bool,
    /// Bytes of the queued frames (counts aside).
    bytes: usize,
}

impl OutQ {
    /// An empty queue.
    pub fn new() -> OutQ {
        OutQ::default()
    }

    /// Nothing waits to be written (the close frame aside).
    pub fn is_empty(&self) -> bool {
        self.control.is_empty()
            && self.audio.is_empty()
            && self.chat.is_empty()
            && self.reactions.is_empty()
            && self.counts.is_empty()
    }

    /// Items waiting to be written: frames on every lane plus one per topic
    /// with counted reactions.
    pub fn len(&self) -> usize {
        self.control.len()
            + self.audio.len()
            + self.chat.len()
            + self.reactions.len()
            + self.counts.len()
    }

    /// Queues `frame` on the lane of `route`.
    pub fn push(&mut self, route: Route<'_>, frame: &Frame, limits: &OutqLimits) -> Pushed {
        if self.closing || self.slow {
            return Pushed::Refused;
        }
        let over_bytes = self.bytes + frame.len() > limits.queue_bytes;
        match route {
            Route::Control => {
                if over_bytes || self.control.len() + self.audio.len() >= limits.queue_frames {
                    return self.overflow();
                }
                self.control.push_back(frame.clone());
            }
            Route::Audio { topic } => {
                if let Some((_, slot)) = self.audio.iter_mut().find(|(t, _)| t == topic) {
                    let old = slot.len();
                    if self.bytes - old + frame.len() > limits.queue_bytes {
                        return self.overflow();
                    }
                    *slot = frame.clone();
                    self.bytes = self.bytes - old + frame.len();
                    return Pushed::Replaced;
                }
                if over_bytes || self.control.len() + self.audio.len() >= limits.queue_frames {
                    return self.overflow();
                }
                self.audio.push_back((topic.clone(), frame.clone()));
            }
            Route::Chat => {
                if over_bytes || self.chat.len() >= limits.queue_frames {
                    return self.overflow();
                }
                self.chat.push_back(frame.clone());
            }
            Route::Reactions { topic, key } => {
                if over_bytes || self.reactions.len() >= limits.reaction_frames {
                    self.count(topic, key);
                    return Pushed::Counted;
                }
                self.reactions.push_back(frame.clone());
            }
        }
        self.bytes += frame.len();
        Pushed::Queued
    }

    fn overflow(&mut self) -> Pushed {
        *self = OutQ {
            slow: true,
            ..OutQ::default()
        };
        Pushed::Slow
    }

    fn count(&mut self, topic: &Arc<str>, key: &str) {
        let i = match self.counts.iter().position(|(t, _)| t == topic) {
            Some(i) => i,
            None => {
                self.counts.push((topic.clone(), BTreeMap::new()));
                self.counts.len() - 1
            }
        };
        let counts = &mut self.counts[i].1;
        if let Some(n) = counts.get_mut(key) {
            *n += 1;
            return;
        }
        let key = if counts.len() < MAX_COUNTED_KEYS {
            key
        } else {
            "other"
        };
        *counts.entry(key.to_string()).or_insert(0) += 1;
    }

    /// Closes the queue: `frame` (a WebSocket close frame, if any) is written
    /// after everything already queued; later pushes are refused.
    pub fn close(&mut self, frame: Option<Frame>) {
        if !self.closing {
            self.closing = true;
            self.close_frame = frame;
        }
    }

    /// Whether the queue is closing or was cut off as a slow consumer:
    /// nothing more will be accepted.
    pub fn is_closing(&self) -> bool {
        self.closing || self.slow
    }

    /// Moves the next frames to write into `out`, in priority order, about
    /// `max_bytes` of them (at least one item when any is queued).
    pub fn take(&mut self, max_bytes: usize, out: &mut Vec<Out>) -> Status {
        if self.slow {
            return Status::Slow;
        }
        let mut bytes = 0;
        let mut room = |len: usize, out: &Vec<Out>| {
            let fits = out.is_empty() || bytes + len <= max_bytes;
            if fits {
                bytes += len;
            }
            fits
        };
        'lanes: {
            for lane in [Lane::Control, Lane::Audio, Lane::Chat, Lane::Reactions] {
                loop {
                    let next = match lane {
                        Lane::Control => self.control.front().map(|f| f.len()),
                        Lane::Audio => self.audio.front().map(|(_, f)| f.len()),
                        Lane::Chat => self.chat.front().map(|f| f.len()),
                        Lane::Reactions => self.reactions.front().map(|f| f.len()),
                    };
                    let Some(len) = next else { break };
                    if !room(len, out) {
                        break 'lanes;
                    }
                    let frame = match lane {
                        Lane::Control => self.control.pop_front(),
                        Lane::Audio => self.audio.pop_front().map(|(_, f)| f),
                        Lane::Chat => self.chat.pop_front(),
                        Lane::Reactions => self.reactions.pop_front(),
                    };
                    if let Some(frame) = frame {
                        self.bytes -= frame.len();
                        out.push(Out::Frame(frame));
                    }
                }
            }
            while let Some((topic, counts)) = self.counts.first() {
                let len = topic.len() + counts.keys().map(|k| k.len() + 16).sum::<usize>();
                if !room(len, out) {
                    break 'lanes;
                }
                let (topic, counts) = self.counts.remove(0);
                out.push(Out::Counts { topic, counts });
            }
        }
        self.shrink();
        if self.closing && self.is_empty() {
            if let Some(frame) = self.close_frame.take() {
                out.push(Out::Frame(frame));
            }
            return Status::Finished;
        }
        Status::Open
    }

    /// An idle socket keeps no queue memory after a burst.
    fn shrink(&mut self) {
        const KEEP: usize = 4;
        if self.control.is_empty() && self.control.capacity() > KEEP {
            self.control = VecDeque::new();
        }
        if self.chat.is_empty() && self.chat.capacity() > KEEP {
            self.chat = VecDeque::new();
        }
        if self.reactions.is_empty() && self.reactions.capacity() > KEEP {
            self.reactions = VecDeque::new();
        }
    }
}

/// The `reaction_counts` broadcast of `topic` carrying `counts`
/// (`{"counts": {...}, "aggregated": true}`), as WebSocket frame bytes for
/// serializer `vsn`. Under 2.0.0 it is the JSON text array
/// `[null, null, topic, "broadcast", {type, event, payload}]`, like every
/// JSON broadcast the channels send.
pub fn reaction_counts_frame(vsn: Vsn, topic: &str, counts: &BTreeMap<String, u64>) -> Vec<u8> {
    let payload = lanes::reaction_counts_payload(counts, None).to_string();
    crate::frame::broadcast(
        vsn,
        topic,
        lanes::REACTION_COUNTS_EVENT,
        crate::frame::BodyRef::Json(payload.as_bytes()),
        None,
    )
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phoenix::{client, FrameRef, Outbound, Payload};
    use serde_json::json;

    const LIMITS: OutqLimits = OutqLimits {
        queue_frames: 4,
        reaction_frames: 2,
        queue_bytes: 1 << 20,
    };

    #[test]
    fn only_large_fanouts_are_delayed_and_zero_turns_the_delay_off() {
        let node = NodeConfig::default();
        let d = FanoutDelay::from_config(&node);
        let ms = Duration::from_millis;
        assert_eq!(d.delay, ms(30));
        assert_eq!(d.max, ms(250));
        assert_eq!(d.for_fanout(255, ms(30)), None);
        assert_eq!(d.for_fanout(256, ms(30)), Some(ms(30)));
        assert_eq!(d.for_fanout(10_000, ms(120)), Some(ms(120)));
        // The current delay is kept within the configured bounds.
        assert_eq!(d.for_fanout(10_000, ms(0)), Some(ms(30)));
        assert_eq!(d.for_fanout(10_000, ms(5000)), Some(ms(250)));
        let off = FanoutDelay::from_config(&NodeConfig {
            fanout_write_delay_ms: 0,
            ..NodeConfig::default()
        });
        assert_eq!(off.for_fanout(10_000, ms(100)), None);
        let every = FanoutDelay::from_config(&NodeConfig {
            fanout_write_delay_sockets: 1,
            ..NodeConfig::default()
        });
        assert_eq!(every.for_fanout(1, ms(30)), Some(ms(30)));
        assert_eq!(every.for_fanout(0, ms(30)), None);
        // A maximum below the delay is the delay: the delay is fixed.
        let fixed = FanoutDelay::from_config(&NodeConfig {
            fanout_write_delay_ms: 400,
            ..NodeConfig::default()
        });
        assert_eq!(fixed.max, ms(400));
        assert_eq!(fixed.adapt(ms(400), ms(1000)), ms(400));
        assert_eq!(fixed.adapt(ms(400), ms(0)), ms(400));
    }

    #[test]
    fn the_delay_follows_how_long_the_writes_take() {
        let d = FanoutDelay::from_config(&NodeConfig::default());
        let ms = Duration::from_millis;
        // Writes done well within the delay: it stays at its minimum.
        assert_eq!(d.adapt(ms(30), ms(3)), ms(30));
        // A batch took 25 ms to write: the next wait is four times that.
        assert_eq!(d.adapt(ms(30), ms(25)), ms(100));
        // Between an eighth and a quarter of the delay: kept.
        assert_eq!(d.adapt(ms(100), ms(20)), ms(100));
        // Longer and longer writes: capped at the maximum.
        assert_eq!(d.adapt(ms(100), ms(100)), ms(250));
        // The load gone: a sixteenth less per batch, back to the minimum.
        let mut now = ms(250);
        let mut batches = 0;
        while now > ms(30) {
            let next = d.adapt(now, ms(1));
            assert!(next < now && next >= ms(30), "{next:?} after {now:?}");
            now = next;
            batches += 1;
        }
        assert!(
            (30..=40).contains(&batches),
            "{batches} batches to come back"
        );
    }

    #[test]
    fn a_queue_is_bounded_by_bytes_as_well_as_frames() {
        let limits = OutqLimits {
            queue_frames: 100,
            reaction_frames: 100,
            queue_bytes: 1000,
        };
        let big: Frame = Arc::from(vec![b'x'; 400]);
        let r: Arc<str> = Arc::from("room:r:reactions");
        let a: Arc<str> = Arc::from("room:r:audio");
        let mut q = OutQ::new();
        assert_eq!(q.push(Route::Chat, &big, &limits), Pushed::Queued);
        assert_eq!(
            q.push(Route::Audio { topic: &a }, &big, &limits),
            Pushed::Queued
        );
        // A replacement is sized by the difference.
        assert_eq!(
            q.push(Route::Audio { topic: &a }, &big, &limits),
            Pushed::Replaced
        );
        // Reactions past the byte bound are counted, not queued.
        let reaction = Route::Reactions {
            topic: &r,
            key: "fire",
        };
        assert_eq!(q.push(reaction, &big, &limits), Pushed::Counted);
        // Writing frees bytes.
        let mut out = Vec::new();
        assert_eq!(q.take(500, &mut out), Status::Open);
        assert_eq!(out.len(), 1);
        assert_eq!(q.push(Route::Chat, &big, &limits), Pushed::Queued);
        // A chat frame past the bound: a slow consumer.
        assert_eq!(q.push(Route::Chat, &big, &limits), Pushed::Slow);
        assert_eq!(q.take(10_000, &mut out), Status::Slow);
    }

    fn frame(s: &str) -> Frame {
        Arc::from(s.as_bytes())
    }

    fn taken(q: &mut OutQ) -> (Vec<String>, Status) {
        let mut out = Vec::new();
        let status = q.take(usize::MAX, &mut out);
        let names = out
            .into_iter()
            .map(|o| match o {
                Out::Frame(f) => String::from_utf8_lossy(&f).into_owned(),
                Out::Counts { topic, counts } => format!("{topic}:{counts:?}"),
            })
            .collect();
        (names, status)
    }

    #[test]
    fn lanes_drain_in_priority_order_each_in_arrival_order() {
        let mut q = OutQ::new();
        let a: Arc<str> = Arc::from("room:r:audio");
        let r: Arc<str> = Arc::from("room:r:reactions");
        let react = Route::Reactions {
            topic: &r,
            key: "🔥",
        };
        assert_eq!(q.push(react, &frame("r1"), &LIMITS), Pushed::Queued);
        assert_eq!(q.push(Route::Chat, &frame("c1"), &LIMITS), Pushed::Queued);
        assert_eq!(
            q.push(Route::Audio { topic: &a }, &frame("a1"), &LIMITS),
            Pushed::Queued
        );
        assert_eq!(q.push(Route::Chat, &frame("c2"), &LIMITS), Pushed::Queued);
        assert_eq!(
            q.push(Route::Control, &frame("k1"), &LIMITS),
            Pushed::Queued
        );
        assert_eq!(
            taken(&mut q),
            (
                vec!["k1", "a1", "c1", "c2", "r1"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
                Status::Open
            )
        );
        assert!(q.is_empty());
        assert_eq!(taken(&mut q), (vec![], Status::Open));
    }

    #[test]
    fn audio_keeps_the_latest_unwritten_frame_per_topic() {
        let mut q = OutQ::new();
        let a: Arc<str> = Arc::from("room:a:audio");
        let b: Arc<str> = Arc::from("room:b:audio");
        let push =
            |q: &mut OutQ, t: &Arc<str>, s| q.push(Route::Audio { topic: t }, &frame(s), &LIMITS);
        assert_eq!(push(&mut q, &a, "a1"), Pushed::Queued);
        assert_eq!(push(&mut q, &b, "b1"), Pushed::Queued);
        assert_eq!(push(&mut q, &a, "a2"), Pushed::Replaced);
        assert_eq!(push(&mut q, &a, "a3"), Pushed::Replaced);
        // Replaced in place: topic a keeps its position ahead of b.
        assert_eq!(taken(&mut q).0, vec!["a3", "b1"]);
        // Once written, a new frame queues again.
        assert_eq!(push(&mut q, &a, "a4"), Pushed::Queued);
        assert_eq!(taken(&mut q).0, vec!["a4"]);
    }

    #[test]
    fn reactions_past_the_bound_are_counted_and_delivered_once_after_the_queued_ones() {
        let mut q = OutQ::new();
        let r: Arc<str> = Arc::from("room:r:reactions");
        let s: Arc<str> = Arc::from("room:s:reactions");
        let mut results = Vec::new();
        for (topic, key) in [
            (&r, "🔥"),
            (&r, "🔥"),
            (&r, "🔥"),
            (&r, "❤️"),
            (&s, "🔥"),
            (&r, "🔥"),
        ] {
            results.push(q.push(Route::Reactions { topic, key }, &frame(key), &LIMITS));
        }
        assert_eq!(
            results,
            [
                Pushed::Queued,
                Pushed::Queued,
                Pushed::Counted,
                Pushed::Counted,
                Pushed::Counted,
                Pushed::Counted
            ]
        );
        // Chat pushed later still goes first.
        q.push(Route::Chat, &frame("c"), &LIMITS);
        let mut out = Vec::new();
        assert_eq!(q.take(usize::MAX, &mut out), Status::Open);
        let mut rc = BTreeMap::new();
        rc.insert("🔥".to_string(), 2);
        rc.insert("❤️".to_string(), 1);
        let mut sc = BTreeMap::new();
        sc.insert("🔥".to_string(), 1);
        assert_eq!(
            out,
            vec![
                Out::Frame(frame("c")),
                Out::Frame(frame("🔥")),
                Out::Frame(frame("🔥")),
                Out::Counts {
                    topic: r.clone(),
                    counts: rc
                },
                Out::Counts {
                    topic: s.clone(),
                    counts: sc
                },
            ]
        );
        assert!(q.is_empty());
        // Drained: reactions queue individually again.
        assert_eq!(
            q.push(
                Route::Reactions {
                    topic: &r,
                    key: "x"
                },
                &frame("x"),
                &LIMITS
            ),
            Pushed::Queued
        );
    }

    #[test]
    fn made_up_reaction_keys_are_capped() {
        let mut q = OutQ::new();
        let r: Arc<str> = Arc::from("room:r:reactions");
        let limits = OutqLimits {
            reaction_frames: 1,
            ..LIMITS
        };
        let keys: Vec<String> = (0..MAX_COUNTED_KEYS + 11)
            .map(|i| format!("k{i}"))
            .collect();
        q.push(
            Route::Reactions {
                topic: &r,
                key: "first",
            },
            &frame("f"),
            &limits,
        );
        for key in &keys {
            let pushed = q.push(Route::Reactions { topic: &r, key }, &frame("x"), &limits);
            assert_eq!(pushed, Pushed::Counted);
        }
        let mut out = Vec::new();
        q.take(usize::MAX, &mut out);
        let Some(Out::Counts { counts, .. }) = out.pop() else {
            panic!("no counts in {out:?}")
        };
        assert_eq!(counts.len(), MAX_COUNTED_KEYS + 1);
        assert_eq!(counts.get("other"), Some(&11));
        assert_eq!(counts.values().sum::<u64>(), keys.len() as u64);
    }

    #[test]
    fn control_and_chat_overflow_make_a_slow_consumer() {
        for route in [Route::Control, Route::Chat] {
            let mut q = OutQ::new();
            for i in 0..LIMITS.queue_frames {
                assert_eq!(
                    q.push(route, &frame(&i.to_string()), &LIMITS),
                    Pushed::Queued
                );
            }
            assert_eq!(q.push(route, &frame("x"), &LIMITS), Pushed::Slow);
            assert!(q.is_empty(), "the backlog is dropped");
            assert_eq!(
                q.push(Route::Control, &frame("y"), &LIMITS),
                Pushed::Refused
            );
            assert_eq!(taken(&mut q), (vec![], Status::Slow));
        }
        // Audio counts against the control bound, but a replacement never
        // overflows.
        let mut q = OutQ::new();
        let a: Arc<str> = Arc::from("room:a:audio");
        q.push(Route::Audio { topic: &a }, &frame("a"), &LIMITS);
        for _ in 1..LIMITS.queue_frames {
            q.push(Route::Control, &frame("k"), &LIMITS);
        }
        assert_eq!(
            q.push(Route::Audio { topic: &a }, &frame("a2"), &LIMITS),
            Pushed::Replaced
        );
        assert_eq!(q.push(Route::Control, &frame("k"), &LIMITS), Pushed::Slow);
        // Reactions never overflow: they are counted.
        let mut q = OutQ::new();
        let r: Arc<str> = Arc::from("room:r:reactions");
        for _ in 0..100 {
            let pushed = q.push(
                Route::Reactions {
                    topic: &r,
                    key: "k",
                },
                &frame("r"),
                &LIMITS,
            );
            assert_ne!(pushed, Pushed::Slow);
        }
    }

    #[test]
    fn take_is_bounded_by_bytes_but_always_takes_one() {
        let mut q = OutQ::new();
        for s in ["aaaa", "bbbb", "cccc"] {
            q.push(Route::Chat, &frame(s), &LIMITS);
        }
        let mut out = Vec::new();
        q.take(8, &mut out);
        assert_eq!(out.len(), 2);
        out.clear();
        q.take(1, &mut out);
        assert_eq!(out, vec![Out::Frame(frame("cccc"))]);
    }

    #[test]
    fn the_close_frame_goes_last_and_ends_the_queue() {
        let mut q = OutQ::new();
        q.push(Route::Chat, &frame("c"), &LIMITS);
        q.push(Route::Control, &frame("k"), &LIMITS);
        q.close(Some(frame("bye")));
        assert_eq!(
            q.push(Route::Control, &frame("late"), &LIMITS),
            Pushed::Refused
        );
        let mut out = Vec::new();
        assert_eq!(q.take(1, &mut out), Status::Open);
        assert_eq!(out, vec![Out::Frame(frame("k"))]);
        out.clear();
        assert_eq!(q.take(usize::MAX, &mut out), Status::Finished);
        assert_eq!(out, vec![Out::Frame(frame("c")), Out::Frame(frame("bye"))]);
        // A close without a frame on an empty queue finishes at once.
        let mut q = OutQ::new();
        q.close(None);
        assert_eq!(taken(&mut q), (vec![], Status::Finished));
    }

    #[test]
    fn counts_frames_decode_as_user_broadcasts_under_both_serializers() {
        let mut counts = BTreeMap::new();
        counts.insert("🔥".to_string(), 12u64);
        for vsn in [Vsn::V1, Vsn::V2] {
            let bytes = reaction_counts_frame(vsn, "realtime:room:r:reactions", &counts);
            // Server frames are unmasked: 2-byte header plus a 16-bit length
            // when the payload is 126..65535 bytes.
            let (opcode, len) = (bytes[0], bytes[1] as usize);
            assert_eq!(opcode, 0x81, "a final text frame");
            let start = if len == 126 { 4 } else { 2 };
            let text = std::str::from_utf8(&bytes[start..]).expect("utf-8 text");
            let msg = client::decode_server(vsn, FrameRef::Text(text)).expect("decodes");
            let Outbound::UserBroadcast(b) = msg else {
                panic!("{vsn}: not a user broadcast: {msg:?}")
            };
            assert_eq!(b.topic, "realtime:room:r:reactions");
            assert_eq!(b.event, "reaction_counts");
            assert_eq!(
                b.payload,
                Payload::Json(json!({"counts": {"🔥": 12}, "aggregated": true}))
            );
        }
    }
}
