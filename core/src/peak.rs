//! Peak mode of a channel (docs/ROOMS.md, "Peak mode"), sans-IO.
//!
//! A channel measures its message rate over the last second ([`RateMeter`],
//! ten 100 ms buckets). Above `rooms.peak_enter_per_s` it enters peak mode;
//! it leaves once the rate has stayed below `rooms.peak_exit_per_s` for
//! `rooms.peak_exit_after_ms` ([`Detector`]). In peak mode the channel holds
//! deliveries back and flushes them once per period ([`Peak`]): broadcasts
//! (sent as one `batch` frame to opted-in clients, coalesced into one write
//! for the others), presence diffs (merged) and reactions (counted per key).
//!
//! Time is passed in as milliseconds on any monotonic clock; frames are an
//! opaque type `F` (the channel's encoded bytes), so everything here is
//! testable natively.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

use crate::config::RoomsConfig;
use crate::presence::Diff;

/// Width of one bucket of the rate meter.
pub const BUCKET_MS: u64 = 100;
/// Buckets in the meter's window (one second).
const BUCKETS: usize = 10;
/// The `system` push's `extension` field.
pub const EXTENSION: &str = "peak_mode";
/// The event of a batch of broadcasts.
pub const BATCH_EVENT: &str = "batch";
/// The event of the `system` push announcing a transition.
pub const SYSTEM_EVENT: &str = "system";

/// Messages over the last second, counted in [`BUCKET_MS`] buckets: a
/// message costs one increment, a reading sums ten numbers.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    /// `(bucket number, count)`, indexed by bucket number modulo `BUCKETS`.
    slots: [(u64, u32); BUCKETS],
}

impl RateMeter {
    /// Counts one message at `now_ms`.
    pub fn record(&mut self, now_ms: u64) {
        let bucket = now_ms / BUCKET_MS;
        let slot = &mut self.slots[(bucket % BUCKETS as u64) as usize];
        if slot.0 != bucket {
            *slot = (bucket, 0);
        }
        slot.1 = slot.1.saturating_add(1);
    }

    /// Messages in the last second (the current bucket and the nine before).
    pub fn rate(&self, now_ms: u64) -> u32 {
        let bucket = now_ms / BUCKET_MS;
        self.slots
            .iter()
            .filter(|(b, _)| *b <= bucket && *b + BUCKETS as u64 > bucket)
            .fold(0u32, |sum, (_, n)| sum.saturating_add(*n))
    }
}

/// Entering or leaving peak mode, with the rate that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Entered { rate: u32 },
    Left { rate: u32 },
}

impl Transition {
    /// The payload of the `system` push announcing this transition.
    pub fn system_payload(self) -> Value {
        let (peak, rate) = match self {
            Transition::Entered { rate } => (true, rate),
            Transition::Left { rate } => (false, rate),
        };
        json!({
            "extension": EXTENSION,
            "status": "ok",
            "peak": peak,
            "rate": rate,
            "message": if peak { "peak mode on" } else { "peak mode off" },
        })
    }
}

/// The enter/leave state machine with hysteresis.
#[derive(Debug, Clone)]
pub struct Detector {
    meter: RateMeter,
    enter_per_s: u32,
    exit_per_s: u32,
    exit_after_ms: u64,
    on: bool,
    /// In peak mode: since when the rate has been seen below `exit_per_s`.
    below_since: Option<u64>,
}

impl Detector {
    /// A detector with the thresholds of `rooms`, not in peak mode.
    pub fn new(rooms: &RoomsConfig) -> Self {
        Self {
            meter: RateMeter::default(),
            enter_per_s: rooms.peak_enter_per_s,
            exit_per_s: rooms.peak_exit_per_s,
            exit_after_ms: rooms.peak_exit_after_ms,
            on: false,
            below_since: None,
        }
    }

    /// Whether the channel is in peak mode.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Counts one message at `now_ms` (call [`Detector::check`] after).
    pub fn record(&mut self, now_ms: u64) {
        self.meter.record(now_ms);
    }

    /// The rate now.
    pub fn rate(&self, now_ms: u64) -> u32 {
        self.meter.rate(now_ms)
    }

    /// Compares the rate with the thresholds. The rate only rises when a
    /// message is recorded, so checking after every message sees every rise;
    /// a fall is seen at the next check (the channel checks at least every
    /// [`BUCKET_MS`] while in peak mode, see [`Detector::next_check`]).
    pub fn check(&mut self, now_ms: u64) -> Option<Transition> {
        let rate = self.meter.rate(now_ms);
        if !self.on {
            if rate > self.enter_per_s {
                self.on = true;
                self.below_since = None;
                return Some(Transition::Entered { rate });
            }
            return None;
        }
        if rate >= self.exit_per_s {
            self.below_since = None;
            return None;
        }
        let since = *self.below_since.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= self.exit_after_ms {
            self.on = false;
            self.below_since = None;
            return Some(Transition::Left { rate });
        }
        None
    }

    /// When the next [`Detector::check`] is due in peak mode (the next bucket
    /// boundary, or the end of the hold time if sooner); `None` outside.
    pub fn next_check(&self, now_ms: u64) -> Option<u64> {
        if !self.on {
            return None;
        }
        let boundary = (now_ms / BUCKET_MS + 1) * BUCKET_MS;
        Some(match self.below_since {
            Some(since) => boundary.min(since.saturating_add(self.exit_after_ms)),
            None => boundary,
        })
    }
}

/// A broadcast held back in peak mode.
#[derive(Debug, Clone, PartialEq)]
pub struct Held<F> {
    /// The publishing session (excluded from delivery unless it joined
    /// with `self: true`); `None` for the admin API.
    pub from: Option<u64>,
    /// The broadcast event.
    pub event: String,
    /// The JSON payload (text): it can go into a `batch`. A binary payload
    /// (`None`) is delivered as its own frame, in order between batches.
    pub json: Option<Vec<u8>>,
    /// The broadcast's own frame(s), for clients that do not batch.
    pub frames: F,
}

/// The sessions that published any of `items`.
pub fn senders<F>(items: &[Held<F>]) -> BTreeSet<u64> {
    items.iter().filter_map(|h| h.from).collect()
}

/// One frame of what a batching client receives for a period.
#[derive(Debug, PartialEq)]
pub enum Run<'a, F> {
    /// A `batch` broadcast with this payload (JSON text):
    /// `{"messages": [{event, payload}, ...]}`, spliced from the held bytes.
    Batch(Vec<u8>),
    /// A held broadcast that cannot be batched (binary), as its own frame.
    Single(&'a F),
}

/// What a batching client receives for `items`, in order: each run of JSON
/// broadcasts becomes one `batch` payload (normally the whole period is one).
pub fn batch_runs<'a, F: 'a>(items: impl IntoIterator<Item = &'a Held<F>>) -> Vec<Run<'a, F>> {
    fn close(batch: &mut Vec<u8>, runs: &mut Vec<Run<'_, impl Sized>>) {
        if !batch.is_empty() {
            batch.extend_from_slice(b"]}");
            runs.push(Run::Batch(std::mem::take(batch)));
        }
    }
    let mut runs = Vec::new();
    let mut batch: Vec<u8> = Vec::new();
    for h in items {
        match &h.json {
            Some(payload) => {
                batch.extend_from_slice(if batch.is_empty() {
                    b"{\"messages\":["
                } else {
                    b","
                });
                batch.extend_from_slice(b"{\"event\":");
                crate::frame::write_str(&mut batch, &h.event);
                batch.extend_from_slice(b",\"payload\":");
                batch.extend_from_slice(payload);
                batch.push(b'}');
            }
            None => {
                close(&mut batch, &mut runs);
                runs.push(Run::Single(&h.frames));
            }
        }
    }
    close(&mut batch, &mut runs);
    runs
}

/// Reactions counted per key over one interval, also per sender (a sender
/// without `self: true` gets the counts without its own reactions).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReactionCounts {
    total: BTreeMap<String, u64>,
    by_sender: HashMap<u64, BTreeMap<String, u64>>,
}

impl ReactionCounts {
    /// Counts one reaction under `key` (see `lanes::reaction_key`).
    pub fn add(&mut self, from: Option<u64>, key: String) {
        if let Some(from) = from {
            *self
                .by_sender
                .entry(from)
                .or_default()
                .entry(key.clone())
                .or_default() += 1;
        }
        *self.total.entry(key).or_default() += 1;
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.total.is_empty()
    }

    /// Every reaction of the interval, per key.
    pub fn all(&self) -> &BTreeMap<String, u64> {
        &self.total
    }

    /// The sessions that reacted in the interval.
    pub fn senders(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_sender.keys().copied()
    }

    /// The counts without `sender`'s own reactions (keys left at zero
    /// dropped).
    pub fn without(&self, sender: u64) -> BTreeMap<String, u64> {
        let Some(own) = self.by_sender.get(&sender) else {
            return self.total.clone();
        };
        self.total
            .iter()
            .filter_map(|(k, n)| {
                let left = n - own.get(k).copied().unwrap_or(0).min(*n);
                (left > 0).then(|| (k.clone(), left))
            })
            .collect()
    }
}

/// Deliveries due now (or everything, when peak mode was just left).
#[derive(Debug, PartialEq)]
pub struct Flush<F> {
    /// Entered or left peak mode at this tick: push the `system` event
    /// (after delivering the rest of this flush when leaving).
    pub transition: Option<Transition>,
    /// Held broadcasts, in order.
    pub broadcasts: Vec<Held<F>>,
    /// The merged presence diff (never empty).
    pub diff: Option<Diff>,
    /// Reaction counts of the interval (never empty).
    pub reactions: Option<ReactionCounts>,
}

/// A buffer that is due one period after its first item.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    due: Option<u64>,
}

impl Window {
    fn open(&mut self, now_ms: u64, period_ms: u64) {
        self.due.get_or_insert(now_ms.saturating_add(period_ms));
    }

    fn take_if_due(&mut self, now_ms: u64, all: bool) -> bool {
        match self.due {
            Some(due) if all || due <= now_ms => {
                self.due = None;
                true
            }
            _ => false,
        }
    }
}

/// A channel's peak mode: the detector and the per-period buffers.
#[derive(Debug)]
pub struct Peak<F> {
    detector: Detector,
    batch_ms: u64,
    presence_merge_ms: u64,
    reaction_interval_ms: u64,
    broadcasts: Vec<Held<F>>,
    broadcasts_window: Window,
    diff: Diff,
    diff_window: Window,
    reactions: ReactionCounts,
    reactions_window: Window,
}

impl<F> Peak<F> {
    /// Peak mode with the settings of `rooms`, off.
    pub fn new(rooms: &RoomsConfig) -> Self {
        Self {
            detector: Detector::new(rooms),
            batch_ms: rooms.peak_batch_ms,
            presence_merge_ms: rooms.peak_presence_merge_ms,
            reaction_interval_ms: rooms.peak_reaction_interval_ms,
            broadcasts: Vec::new(),
            broadcasts_window: Window::default(),
            diff: Diff::default(),
            diff_window: Window::default(),
            reactions: ReactionCounts::default(),
            reactions_window: Window::default(),
        }
    }

    /// Whether the channel is in peak mode (hold deliveries back).
    pub fn is_on(&self) -> bool {
        self.detector.is_on()
    }

    /// The reaction interval, for the `reaction_counts` payload.
    pub fn reaction_interval_ms(&self) -> u64 {
        self.reaction_interval_ms
    }

    /// Counts one published message (then call [`Peak::tick`]).
    pub fn record(&mut self, now_ms: u64) {
        self.detector.record(now_ms);
    }

    /// Holds a broadcast until the end of its batch period.
    pub fn hold(&mut self, now_ms: u64, held: Held<F>) {
        self.broadcasts.push(held);
        self.broadcasts_window.open(now_ms, self.batch_ms);
    }

    /// Merges a presence diff into the current period's.
    pub fn hold_diff(&mut self, now_ms: u64, diff: Diff) {
        if diff.is_empty() {
            return;
        }
        self.diff.merge(diff);
        self.diff_window.open(now_ms, self.presence_merge_ms);
    }

    /// Counts a reaction into the current interval.
    pub fn count_reaction(&mut self, now_ms: u64, from: Option<u64>, key: String) {
        self.reactions.add(from, key);
        self.reactions_window
            .open(now_ms, self.reaction_interval_ms);
    }

    /// Takes the held broadcasts now (before a join, so a joiner gets only
    /// what is published after its join).
    pub fn take_broadcasts(&mut self) -> Vec<Held<F>> {
        self.broadcasts_window.due = None;
        std::mem::take(&mut self.broadcasts)
    }

    /// Checks the rate and hands out what is due. Leaving peak mode hands
    /// out everything held.
    pub fn tick(&mut self, now_ms: u64) -> Flush<F> {
        let transition = self.detector.check(now_ms);
        let all = matches!(transition, Some(Transition::Left { .. }));
        let broadcasts = if self.broadcasts_window.take_if_due(now_ms, all) {
            std::mem::take(&mut self.broadcasts)
        } else {
            Vec::new()
        };
        let diff = self
            .diff_window
            .take_if_due(now_ms, all)
            .then(|| std::mem::take(&mut self.diff))
            .filter(|d| !d.is_empty());
        let reactions = self
            .reactions_window
            .take_if_due(now_ms, all)
            .then(|| std::mem::take(&mut self.reactions))
            .filter(|r| !r.is_empty());
        Flush {
            transition,
            broadcasts,
            diff,
            reactions,
        }
    }

    /// When [`Peak::tick`] should run next: the earliest flush or rate check
    /// due; `None` when nothing is pending outside peak mode.
    pub fn next_wake(&self, now_ms: u64) -> Option<u64> {
        [
            self.detector.next_check(now_ms),
            self.broadcasts_window.due,
            self.diff_window.due,
            self.reactions_window.due,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Presence;

    fn rooms() -> RoomsConfig {
        RoomsConfig {
            peak_enter_per_s: 20,
            peak_exit_per_s: 5,
            peak_exit_after_ms: 500,
            peak_batch_ms: 50,
            peak_presence_merge_ms: 1_000,
            peak_reaction_interval_ms: 500,
        }
    }

    /// Records `n` messages evenly over `[from, from + span)`, checking
    /// after each; returns the transitions seen.
    fn feed(d: &mut Detector, from: u64, span: u64, n: u64) -> Vec<Transition> {
        let mut seen = Vec::new();
        for i in 0..n {
            let t = from + i * span / n;
            d.record(t);
            seen.extend(d.check(t));
        }
        seen
    }

    fn held(from: Option<u64>, event: &str, json: Option<Value>) -> Held<&'static str> {
        Held {
            from,
            event: event.into(),
            json: json.map(|v| v.to_string().into_bytes()),
            frames: "frame",
        }
    }

    /// A batch run's payload, parsed back.
    fn batch(run: &Run<'_, &str>) -> Value {
        match run {
            Run::Batch(text) => serde_json::from_slice(text).unwrap(),
            Run::Single(_) => Value::Null,
        }
    }

    #[test]
    fn meter_counts_the_last_second_only() {
        let mut m = RateMeter::default();
        for t in (0..1_000).step_by(10) {
            m.record(t);
        }
        assert_eq!(m.rate(999), 100);
        // 100 ms later the first bucket has left the window.
        assert_eq!(m.rate(1_050), 90);
        assert_eq!(m.rate(1_850), 10);
        assert_eq!(m.rate(1_950), 0);
        assert_eq!(m.rate(2_000), 0);
        assert_eq!(m.rate(50_000), 0);
        // A slot reused after a lap starts from zero.
        m.record(50_000);
        assert_eq!(m.rate(50_000), 1);
    }

    #[test]
    fn enters_above_the_threshold_with_the_rate() {
        let mut d = Detector::new(&rooms());
        // Exactly 20 in a second is not above 20.
        assert!(feed(&mut d, 0, 1_000, 20).is_empty());
        assert!(!d.is_on());
        d.record(990);
        assert_eq!(d.check(990), Some(Transition::Entered { rate: 21 }));
        assert!(d.is_on());
        // Already on: no second entry.
        assert!(feed(&mut d, 1_000, 1_000, 100).is_empty());
    }

    #[test]
    fn does_not_flap_near_either_threshold() {
        let mut d = Detector::new(&rooms());
        let mut seen = feed(&mut d, 0, 1_000, 30);
        assert_eq!(seen.len(), 1);
        // Hovering around the entry threshold, and anywhere above the exit
        // threshold, for ten seconds: still the one entry.
        for s in 1..11u64 {
            let n = if s % 2 == 0 { 22 } else { 6 };
            seen.extend(feed(&mut d, s * 1_000, 1_000, n));
            for t in (s * 1_000..(s + 1) * 1_000).step_by(100) {
                seen.extend(d.check(t));
            }
        }
        assert_eq!(seen, vec![Transition::Entered { rate: 21 }]);
        assert!(d.is_on());
    }

    #[test]
    fn leaves_only_after_the_hold_time_below_exit() {
        let mut d = Detector::new(&rooms());
        feed(&mut d, 0, 1_000, 50);
        assert!(d.is_on());
        // Silence from 1000: the rate falls below 5 once the window has
        // passed (about 1900); leaving needs 500 ms more.
        let mut left = None;
        for t in (1_000..4_000).step_by(100) {
            if let Some(tr) = d.check(t) {
                left = Some((t, tr));
                break;
            }
        }
        let (t, tr) = left.expect("left peak mode");
        assert_eq!(tr, Transition::Left { rate: 0 });
        assert!((2_300..=2_500).contains(&t), "left at {t}");
        assert!(!d.is_on());
        assert_eq!(d.next_check(t), None);
    }

    #[test]
    fn a_rise_above_exit_restarts_the_hold_time() {
        let mut d = Detector::new(&rooms());
        feed(&mut d, 0, 1_000, 50);
        for t in (1_000..2_200).step_by(100) {
            assert_eq!(d.check(t), None);
        }
        // Below since about 1900; a burst of 5 at 2300 resets the count.
        feed(&mut d, 2_300, 10, 5);
        assert_eq!(d.check(2_400), None);
        assert!(d.is_on());
        // Now it takes the burst's second to pass plus the hold time.
        for t in (2_400..3_300).step_by(100) {
            assert_eq!(d.check(t), None, "at {t}");
        }
        let mut t = 3_300;
        while d.check(t).is_none() {
            t += 100;
            assert!(t < 5_000);
        }
        assert!(t >= 3_300 + 500, "left at {t}");
    }

    #[test]
    fn next_check_ticks_in_peak_and_meets_the_hold_deadline() {
        let mut d = Detector::new(&rooms());
        assert_eq!(d.next_check(0), None);
        feed(&mut d, 0, 100, 30);
        assert_eq!(d.next_check(150), Some(200));
        // Below exit since 2000: the deadline 2500 lands on a boundary.
        assert_eq!(d.check(2_000), None);
        assert_eq!(d.next_check(2_450), Some(2_500));
        assert_eq!(d.check(2_500), Some(Transition::Left { rate: 0 }));
    }

    #[test]
    fn system_payloads() {
        assert_eq!(
            Transition::Entered { rate: 153 }.system_payload(),
            json!({"extension": "peak_mode", "status": "ok", "peak": true, "rate": 153, "message": "peak mode on"})
        );
        assert_eq!(
            Transition::Left { rate: 2 }.system_payload(),
            json!({"extension": "peak_mode", "status": "ok", "peak": false, "rate": 2, "message": "peak mode off"})
        );
    }

    #[test]
    fn batches_keep_order_and_split_around_binary() {
        let items = vec![
            held(Some(1), "a", Some(json!({"n": 1}))),
            held(None, "b", Some(json!(2))),
            held(Some(2), "bin", None),
            held(Some(1), "c", Some(json!("3"))),
        ];
        let runs = batch_runs(&items);
        assert_eq!(runs.len(), 3);
        assert_eq!(
            batch(&runs[0]),
            json!({"messages": [
                {"event": "a", "payload": {"n": 1}},
                {"event": "b", "payload": 2},
            ]})
        );
        assert_eq!(runs[1], Run::Single(&"frame"));
        assert_eq!(
            batch(&runs[2]),
            json!({"messages": [{"event": "c", "payload": "3"}]})
        );
        // Seen by sender 1 (without self): its own messages are left out.
        let runs = batch_runs(items.iter().filter(|h| h.from != Some(1)));
        assert_eq!(runs.len(), 2);
        assert_eq!(
            batch(&runs[0]),
            json!({"messages": [{"event": "b", "payload": 2}]})
        );
        assert_eq!(runs[1], Run::Single(&"frame"));
        assert!(batch_runs::<&str>(&[]).is_empty());
        assert_eq!(senders(&items), BTreeSet::from([1, 2]));
    }

    #[test]
    fn broadcasts_flush_once_per_period_in_order() {
        let mut p: Peak<&str> = Peak::new(&rooms());
        for t in 0..30 {
            p.record(t);
        }
        let f = p.tick(30);
        assert_eq!(f.transition, Some(Transition::Entered { rate: 30 }));
        assert!(p.is_on());
        assert_eq!(p.next_wake(30), Some(100));
        for (i, t) in (30..70).step_by(10).enumerate() {
            p.hold(t, held(None, &format!("m{i}"), Some(json!(i))));
            // Nothing due before the period (from the first held) ends.
            assert!(p.tick(t).broadcasts.is_empty());
        }
        assert_eq!(p.next_wake(70), Some(80));
        let f = p.tick(80);
        let events: Vec<_> = f.broadcasts.iter().map(|h| h.event.as_str()).collect();
        assert_eq!(events, ["m0", "m1", "m2", "m3"]);
        assert!(p.tick(200).broadcasts.is_empty());
        // The next period starts at the next held broadcast.
        p.hold(210, held(None, "m4", Some(json!(4))));
        assert!(p.tick(259).broadcasts.is_empty());
        assert_eq!(p.tick(260).broadcasts.len(), 1);
    }

    #[test]
    fn take_broadcasts_empties_the_period() {
        let mut p: Peak<&str> = Peak::new(&rooms());
        p.hold(0, held(None, "a", None));
        assert_eq!(p.take_broadcasts().len(), 1);
        assert_eq!(p.next_wake(0), None);
        assert!(p.tick(1_000).broadcasts.is_empty());
    }

    #[test]
    fn leaving_flushes_everything_held() {
        let mut p: Peak<&str> = Peak::new(&rooms());
        for t in 0..30 {
            p.record(t);
        }
        p.tick(30);
        let mut pres = Presence::new(10);
        let (mut t, mut sent, mut got_held, mut got_reactions, mut left) = (30, 0, 0, 0, None);
        while p.is_on() {
            t += 100;
            // Each item opens (or joins) a period that ends after `t`.
            p.hold(t, held(None, "late", None));
            p.hold_diff(t, pres.track(t, &format!("k{t}"), json!({})).unwrap());
            p.count_reaction(t, None, "🔥".into());
            sent += 1;
            let f = p.tick(t);
            got_held += f.broadcasts.len();
            got_reactions += f.reactions.map_or(0, |r| r.all()["🔥"]);
            if f.transition.is_some() {
                left = f.transition;
                assert!(f.diff.is_some());
            }
            assert!(t < 5_000);
        }
        assert_eq!(left, Some(Transition::Left { rate: 0 }));
        // Everything held was handed out by the tick that left.
        assert_eq!((got_held, got_reactions), (sent, sent as u64));
        assert_eq!(p.next_wake(t), None);
    }

    #[test]
    fn merged_presence_cancels_join_then_leave_and_keeps_the_rest() {
        let mut p: Peak<&str> = Peak::new(&rooms());
        let mut pres = Presence::new(10);
        p.hold_diff(0, pres.track(1, "alice", json!({"s": 1})).unwrap());
        p.hold_diff(10, pres.track(2, "bob", json!({})).unwrap());
        // Alice updates then leaves; bob stays; carol comes and goes.
        p.hold_diff(20, pres.track(1, "alice", json!({"s": 2})).unwrap());
        p.hold_diff(30, pres.untrack(1));
        p.hold_diff(40, pres.track(3, "carol", json!({})).unwrap());
        p.hold_diff(50, pres.untrack(3));
        // An empty diff does not open a period.
        p.hold_diff(60, Diff::default());
        assert_eq!(p.next_wake(60), Some(1_000));
        assert_eq!(p.tick(999).diff, None);
        let diff = p.tick(1_000).diff.expect("a merged diff");
        assert_eq!(diff.joins.keys().collect::<Vec<_>>(), ["bob"]);
        assert!(diff.leaves.is_empty(), "{diff:?}");
        // A leave of a presence from before the period survives the merge.
        p.hold_diff(2_000, pres.track(4, "dave", json!({})).unwrap());
        p.hold_diff(2_010, pres.untrack(2));
        let diff = p.tick(3_000).diff.expect("a merged diff");
        assert_eq!(diff.joins.keys().collect::<Vec<_>>(), ["dave"]);
        assert_eq!(diff.leaves.keys().collect::<Vec<_>>(), ["bob"]);
        // A period whose changes all cancel out sends nothing.
        p.hold_diff(4_000, pres.track(5, "eve", json!({})).unwrap());
        p.hold_diff(4_010, pres.untrack(5));
        assert_eq!(p.tick(5_000).diff, None);
    }

    #[test]
    fn reactions_count_per_key_and_interval() {
        let mut p: Peak<&str> = Peak::new(&rooms());
        for i in 0..7u64 {
            let key = if i % 3 == 0 { "❤️" } else { "🔥" };
            p.count_reaction(i * 10, Some(i % 2), key.to_string());
        }
        p.count_reaction(70, None, "🔥".into());
        assert_eq!(p.next_wake(70), Some(500));
        assert_eq!(p.tick(499).reactions, None);
        let r = p.tick(500).reactions.expect("counts");
        assert_eq!(
            r.all(),
            &BTreeMap::from([("❤️".to_string(), 3), ("🔥".to_string(), 5)])
        );
        assert_eq!(r.all().values().sum::<u64>(), 8);
        let mut senders: Vec<_> = r.senders().collect();
        senders.sort();
        assert_eq!(senders, [0, 1]);
        // Sender 1 reacted 🔥 at 10, 50 and ❤️ at 30.
        assert_eq!(
            r.without(1),
            BTreeMap::from([("❤️".to_string(), 2), ("🔥".to_string(), 3)])
        );
        assert_eq!(r.without(9), *r.all());
        let mut only = ReactionCounts::default();
        only.add(Some(4), "👏".into());
        assert!(only.without(4).is_empty());
        assert_eq!(
            crate::lanes::reaction_counts_payload(r.all(), Some(p.reaction_interval_ms())),
            json!({"counts": {"❤️": 3, "🔥": 5}, "interval_ms": 500})
        );
        assert_eq!(p.tick(10_000).reactions, None);
    }
}
