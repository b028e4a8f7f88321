//! Socket-writer wake-ups, coalesced per guest process.
//!
//! A frame a guest process queues on a socket (`outlet_send`, `fanout`)
//! does not wake the socket's writer task at once. The wake joins the
//! process's pending [`Batch`] and is issued when the process is about to
//! wait:
//!
//! * its `lunatic::message::receive` finds no message ready (we shadow
//!   lunatic's receive with [`register_receive`], which polls the mailbox
//!   once and flushes the batch before it blocks, or before a zero-timeout
//!   receive answers "none");
//! * it awaits one of our own async host calls (`data`, `module_call`,
//!   which call [`Deferred::flush`] first), or closes a socket
//!   (`outlet_close`: a process done with its socket is likely to end).
//!
//! So a channel that drains a backlog of 20 broadcasts for the same 10
//! sockets wakes each writer once, and each writer writes the 20 frames
//! with one `write` call; a single fan-out still wakes its writers as soon
//! as the channel goes back to its mailbox.
//!
//! Bounds, so latency never grows with a backlog: a batch is flushed at once
//! when the frames queued since it opened reach [`BATCH_FRAMES`] or their
//! bytes reach [`BATCH_BYTES`] (one fan-out to thousands of sockets is
//! flushed by its own call, exactly as without batching), and a backstop
//! task flushes every batch that outlived one [`BACKSTOP`] sweep (a process
//! preempted in the middle of a backlog, or one that died with a batch
//! open: its wakes are issued, never lost). A wake is only ever delayed:
//! one for a socket closed meanwhile wakes a writer that finds its queue
//! closed, as it would have at once.
//!
//! A batch of many wakes — a fan-out to a large room found that many
//! writers idle — is issued `node.fanout_write_delay_ms` later instead, all
//! on one timer ([`Deferred::issue`], [`FanoutDelay`]): each writer then
//! finds the frames of the fan-outs that followed meanwhile and writes them
//! with one `write`. That delay adapts to how long the writes take: the
//! writers of a delayed batch each get a [`DrainToken`] they drop after
//! their write, and the time until nine in ten have ([`DrainBatch`]) sets
//! the next delay ([`FanoutDelay::adapt`]).
//!
//! The decisions (when a batch opens, when it must flush, which batches a
//! sweep takes) are the pure [`Pending`], tested here; [`Deferred`] is the
//! shared, locked shell around it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use chorus_core::outq::FanoutDelay;
use lunatic_process::message::Message;
use lunatic_process::state::ProcessState;
use lunatic_process_api::ProcessCtx;
use tokio::sync::Notify;
use wasmtime::{Caller, Linker};

use crate::spawn::State;

/// A batch holding this many queued frames is flushed at once.
pub const BATCH_FRAMES: usize = 1024;
/// A batch whose queued frames hold this many bytes is flushed at once.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Period of the backstop sweep: a batch is flushed at the latest by the
/// second sweep after it opened.
pub const BACKSTOP: Duration = Duration::from_millis(2);

/// Shards of the pending map (by process id), so processes on different
/// threads rarely take the same lock.
const SHARDS: usize = 16;

/// When a batch must be flushed without waiting for its process.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub frames: usize,
    pub bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            frames: BATCH_FRAMES,
            bytes: BATCH_BYTES,
        }
    }
}

/// One process's wakes not yet issued.
#[derive(Debug)]
pub struct Batch<T> {
    wakes: Vec<T>,
    frames: usize,
    bytes: usize,
    /// The sweep epoch in which the batch opened.
    epoch: u64,
}

/// The pending batches of some processes (sans-IO: the caller issues the
/// wakes it is handed).
#[derive(Debug)]
pub struct Pending<T> {
    limits: Limits,
    batches: HashMap<u64, Batch<T>>,
    epoch: u64,
}

impl<T> Pending<T> {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            batches: HashMap::new(),
            epoch: 0,
        }
    }

    /// Process `pid` queued `frames` frames of `bytes` bytes in all, which
    /// left `wakes` to issue (writers that were idle). Returns the wakes to
    /// issue now (the batch reached a bound), else keeps them; the flag tells
    /// whether a batch opened (the backstop must be armed).
    pub fn add(&mut self, pid: u64, wakes: Vec<T>, frames: usize, bytes: usize) -> (Vec<T>, bool) {
        let opened = !self.batches.contains_key(&pid);
        if opened && wakes.is_empty() {
            // Every writer concerned is awake already, or woken by
            // another process's batch: nothing to hold.
            return (wakes, false);
        }
        let epoch = self.epoch;
        let batch = self.batches.entry(pid).or_insert_with(|| Batch {
            wakes: Vec::new(),
            frames: 0,
            bytes: 0,
            epoch,
        });
        batch.wakes.extend(wakes);
        batch.frames = batch.frames.saturating_add(frames);
        batch.bytes = batch.bytes.saturating_add(bytes);
        if batch.frames >= self.limits.frames || batch.bytes >= self.limits.bytes {
            return (self.take(pid), false);
        }
        (Vec::new(), opened)
    }

    /// Process `pid` is about to wait: every wake it holds.
    pub fn take(&mut self, pid: u64) -> Vec<T> {
        self.batches.remove(&pid).map_or_else(Vec::new, |b| b.wakes)
    }

    /// A backstop sweep: the wakes of every batch opened before the
    /// previous sweep. The flag tells whether batches remain (the next
    /// sweep must come).
    pub fn sweep(&mut self) -> (Vec<T>, bool) {
        let epoch = self.epoch;
        let mut wakes = Vec::new();
        self.batches.retain(|_, b| {
            if b.epoch < epoch {
                wakes.append(&mut b.wakes);
                false
            } else {
                true
            }
        });
        self.epoch += 1;
        if self.batches.is_empty() && self.batches.capacity() > 64 {
            self.batches = HashMap::new();
        }
        (wakes, !self.batches.is_empty())
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// Something a deferred wake wakes (a socket's writer task).
pub trait Wake {
    fn wake(&self);

    /// Wakes as one of a delayed batch: `token` is dropped once the woken
    /// writer has written (here at once, for wakes that write nothing).
    fn wake_late(&self, token: DrainToken) {
        drop(token);
        self.wake();
    }
}

/// A delayed batch of writer wakes, timing its writers: when nine in ten
/// of them have dropped their [`DrainToken`] (written), the time since the
/// batch was issued adapts the node's delay.
pub struct DrainBatch {
    issued: Instant,
    quorum: usize,
    done: AtomicUsize,
    delay: FanoutDelay,
    /// The node's current delay, in microseconds.
    current: Arc<AtomicU64>,
}

impl DrainBatch {
    fn new(writers: usize, delay: FanoutDelay, current: Arc<AtomicU64>) -> Arc<Self> {
        Arc::new(DrainBatch {
            issued: Instant::now(),
            quorum: (writers * 9).div_ceil(10).max(1),
            done: AtomicUsize::new(0),
            delay,
            current,
        })
    }
}

/// A woken writer's share of a [`DrainBatch`]: dropped when it has written.
pub struct DrainToken(Arc<DrainBatch>);

impl Drop for DrainToken {
    fn drop(&mut self) {
        let batch = &self.0;
        if batch.done.fetch_add(1, Ordering::Relaxed) + 1 != batch.quorum {
            return;
        }
        let drain = batch.issued.elapsed();
        let _ = batch
            .current
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |us| {
                let next = batch.delay.adapt(Duration::from_micros(us), drain);
                Some(next.as_micros() as u64)
            });
    }
}

/// A wake, and whether a fan-out asked for it (only those may be delayed:
/// a reply to one socket is written at once).
pub type Tagged<T> = (T, bool);

/// The node's pending wakes, shared by every process.
pub struct Deferred<T> {
    shards: Vec<Mutex<Pending<Tagged<T>>>>,
    /// Notified when a batch opens: the backstop sweeps soon after.
    armed: Arc<Notify>,
    /// Whether the backstop task runs (false outside a tokio runtime:
    /// wakes are then issued at once).
    backstop: OnceLock<bool>,
    /// When a large batch of wakes is issued.
    delay: FanoutDelay,
    /// The delay now (microseconds), adapted by each batch's writers.
    current: Arc<AtomicU64>,
    /// Batches issued late because of `delay`.
    delayed: AtomicU64,
}

impl<T: Wake + Send + 'static> Deferred<T> {
    pub fn new(limits: Limits, delay: FanoutDelay) -> Arc<Self> {
        Arc::new(Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Pending::new(limits)))
                .collect(),
            armed: Arc::new(Notify::new()),
            backstop: OnceLock::new(),
            delay,
            current: Arc::new(AtomicU64::new(delay.delay.as_micros() as u64)),
            delayed: AtomicU64::new(0),
        })
    }

    /// Issues `wakes`: at once, except the fan-outs' when they are many (a
    /// broadcast to a large room found that many writers idle, see
    /// [`FanoutDelay`]): those all together `delay` later, on one timer. A
    /// writer woken late writes everything queued for it meanwhile, and
    /// pushes to it until then queue without a wake of their own (it is no
    /// longer idle).
    pub fn issue(&self, wakes: Vec<Tagged<T>>) {
        let fanout = wakes.iter().filter(|(_, fanout)| *fanout).count();
        let later = self.delay.for_fanout(fanout, self.current_delay());
        match (later, tokio::runtime::Handle::try_current()) {
            (Some(delay), Ok(rt)) => {
                self.delayed.fetch_add(1, Ordering::Relaxed);
                let (late, now): (Vec<_>, Vec<_>) = wakes.into_iter().partition(|(_, f)| *f);
                now.iter().for_each(|(w, _)| w.wake());
                let (config, current) = (self.delay, self.current.clone());
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let batch = DrainBatch::new(late.len(), config, current);
                    for (w, _) in late {
                        w.wake_late(DrainToken(batch.clone()));
                    }
                });
            }
            _ => wakes.iter().for_each(|(w, _)| w.wake()),
        }
    }

    /// Batches of wakes [`Deferred::issue`] delayed so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// The delay a large batch of wakes gets now.
    pub fn current_delay(&self) -> Duration {
        Duration::from_micros(self.current.load(Ordering::Relaxed))
    }

    fn shard(&self, pid: u64) -> std::sync::MutexGuard<'_, Pending<Tagged<T>>> {
        // A panic while holding the lock leaves at worst wakes that the
        // backstop or the process still issues; keep serving.
        self.shards[pid as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Defers `wakes` to process `pid`'s next wait (see [`Pending::add`]);
    /// issues them at once when a bound is reached or no backstop can run.
    pub fn defer(self: &Arc<Self>, pid: u64, wakes: Vec<Tagged<T>>, frames: usize, bytes: usize) {
        if !self.backstop_running() {
            wakes.iter().for_each(|(w, _)| w.wake());
            return;
        }
        let (now, opened) = self.shard(pid).add(pid, wakes, frames, bytes);
        if opened {
            self.armed.notify_one();
        }
        self.issue(now);
    }

    /// Process `pid` is about to wait: issues the wakes it holds.
    pub fn flush(&self, pid: u64) {
        let wakes = self.shard(pid).take(pid);
        self.issue(wakes);
    }

    fn backstop_running(self: &Arc<Self>) -> bool {
        *self
            .backstop
            .get_or_init(|| match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(backstop(Arc::downgrade(self), self.armed.clone()));
                    true
                }
                Err(_) => false,
            })
    }

    /// One backstop sweep over every shard; true when batches remain.
    fn sweep(&self) -> bool {
        let mut more = false;
        for shard in &self.shards {
            let (wakes, left) = shard.lock().unwrap_or_else(|p| p.into_inner()).sweep();
            more |= left;
            self.issue(wakes);
        }
        more
    }
}

/// Sweeps [`BACKSTOP`] after a batch opened, and again while batches
/// remain; ends with its [`Deferred`].
async fn backstop<T: Wake + Send + 'static>(deferred: Weak<Deferred<T>>, armed: Arc<Notify>) {
    loop {
        armed.notified().await;
        tokio::time::sleep(BACKSTOP).await;
        let Some(deferred) = deferred.upgrade() else {
            return;
        };
        if deferred.sweep() {
            armed.notify_one();
        }
    }
}

/// Code `lunatic::message::receive` answers when its timeout passed.
const RECEIVE_TIMED_OUT: u32 = 9027;

/// Shadows lunatic's `lunatic::message::receive` (same signature and
/// answers: 0 data, 1 link died, 2 process died, 9027 timed out; the
/// message is left in the scratch area) with one that issues the process's
/// deferred wakes when no message is ready, before it blocks.
pub fn register_receive<T: Wake + Send + Sync + 'static>(
    linker: &mut Linker<State>,
    deferred: Arc<Deferred<T>>,
) -> Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap3_async(
        "lunatic::message",
        "receive",
        move |mut caller: Caller<'_, State>, tags_ptr: u32, tags_len: u32, timeout_ms: u64| {
            let deferred = deferred.clone();
            Box::new(async move {
                let tags = read_tags(&mut caller, tags_ptr, tags_len)?;
                let pid = caller.data().id();
                let mailbox = caller.data_mut().mailbox().clone();
                let pop = mailbox.pop(tags.as_deref());
                tokio::pin!(pop);
                let ready = std::future::poll_fn(|cx| {
                    std::task::Poll::Ready(match pop.as_mut().poll(cx) {
                        std::task::Poll::Ready(m) => Some(m),
                        std::task::Poll::Pending => None,
                    })
                })
                .await;
                let message = match ready {
                    Some(m) => Some(m),
                    None => {
                        deferred.flush(pid);
                        match timeout_ms {
                            u64::MAX => Some(pop.await),
                            ms => tokio::time::timeout(Duration::from_millis(ms), pop)
                                .await
                                .ok(),
                        }
                    }
                };
                let Some(message) = message else {
                    return Ok(RECEIVE_TIMED_OUT);
                };
                let kind = match &message {
                    Message::Data(_) => 0,
                    Message::LinkDied(_) => 1,
                    Message::ProcessDied(_) => 2,
                };
                *caller.data_mut().message_scratch_area() = Some(message);
                Ok(kind)
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The `tags_len` little-endian `i64` tags at `tags_ptr`; `None` (any
/// message) when there are none.
fn read_tags(caller: &mut Caller<'_, State>, ptr: u32, len: u32) -> Result<Option<Vec<i64>>> {
    if len == 0 {
        return Ok(None);
    }
    let memory = caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or_else(|| anyhow!("guest exports no memory"))?;
    let bytes = (len as usize)
        .checked_mul(8)
        .ok_or_else(|| anyhow!("lunatic::message::receive: too many tags"))?;
    let mut raw = vec![0u8; bytes];
    memory
        .read(&*caller, ptr as usize, &mut raw)
        .map_err(|_| anyhow!("lunatic::message::receive: tags out of bounds"))?;
    Ok(Some(
        raw.chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Pending<u64> {
        Pending::new(Limits {
            frames: 10,
            bytes: 1000,
        })
    }

    #[test]
    fn wakes_wait_for_the_process_and_are_issued_once() {
        let mut p = small();
        assert_eq!(p.add(1, vec![7, 8], 2, 20), (vec![], true), "opens");
        // The same writers are not woken again (their writer is no longer
        // idle): later frames only count.
        assert_eq!(p.add(1, vec![], 2, 20), (vec![], false));
        assert_eq!(p.add(1, vec![9], 1, 10), (vec![], false));
        assert_eq!(p.take(1), vec![7, 8, 9]);
        assert_eq!(p.take(1), Vec::<u64>::new(), "issued once");
        assert!(p.is_empty());
    }

    #[test]
    fn nothing_to_hold_opens_no_batch() {
        let mut p = small();
        assert_eq!(p.add(1, vec![], 5, 50), (vec![], false));
        assert!(p.is_empty());
        assert_eq!(p.sweep(), (vec![], false));
    }

    #[test]
    fn processes_have_batches_of_their_own() {
        let mut p = small();
        p.add(1, vec![1], 1, 1);
        p.add(2, vec![2], 1, 1);
        assert_eq!(p.take(2), vec![2]);
        assert_eq!(p.take(1), vec![1]);
    }

    #[test]
    fn a_bound_flushes_at_once() {
        let mut p = small();
        p.add(1, vec![1], 4, 40);
        p.add(1, vec![2], 5, 50);
        // The tenth frame reaches the frame bound.
        assert_eq!(p.add(1, vec![3], 1, 10), (vec![1, 2, 3], false));
        assert!(p.is_empty());
        // One large fan-out is flushed by its own call.
        assert_eq!(p.add(1, vec![4, 5], 500, 20), (vec![4, 5], false));
        // The byte bound.
        p.add(1, vec![6], 1, 600);
        assert_eq!(p.add(1, vec![], 1, 400), (vec![6], false));
        assert!(p.is_empty());
    }

    #[test]
    fn the_backstop_flushes_batches_that_outlive_a_sweep() {
        let mut p = small();
        p.add(1, vec![1], 1, 1);
        // Opened in this epoch: kept by the first sweep.
        assert_eq!(p.sweep(), (vec![], true));
        p.add(2, vec![2], 1, 1);
        // The second sweep takes the old batch, keeps the new one.
        assert_eq!(p.sweep(), (vec![1], true));
        assert_eq!(p.sweep(), (vec![2], false));
        assert!(p.is_empty());
        // A dead process's batch is flushed the same way.
        p.add(3, vec![3], 1, 1);
        p.sweep();
        assert_eq!(p.sweep(), (vec![3], false));
    }

    const NO_DELAY: FanoutDelay = FanoutDelay {
        delay: Duration::ZERO,
        max: Duration::ZERO,
        min_sockets: 1,
    };

    struct Counter(Arc<std::sync::atomic::AtomicUsize>);
    impl Wake for Counter {
        fn wake(&self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn outside_a_runtime_wakes_are_issued_at_once() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let d = Deferred::new(Limits::default(), NO_DELAY);
        d.defer(
            1,
            vec![(Counter(n.clone()), false), (Counter(n.clone()), false)],
            2,
            2,
        );
        assert_eq!(n.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_backstop_issues_wakes_a_process_never_flushed() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let d = Deferred::new(Limits::default(), NO_DELAY);
        d.defer(1, vec![(Counter(n.clone()), false)], 1, 1);
        d.defer(2, vec![(Counter(n.clone()), false)], 1, 1);
        assert_eq!(n.load(std::sync::atomic::Ordering::Relaxed), 0, "held");
        d.flush(2);
        assert_eq!(n.load(std::sync::atomic::Ordering::Relaxed), 1);
        // Process 1 never waits (it died): the backstop wakes its writer.
        for _ in 0..100 {
            if n.load(std::sync::atomic::Ordering::Relaxed) == 2 {
                break;
            }
            tokio::time::sleep(BACKSTOP).await;
        }
        assert_eq!(n.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn many_wakes_are_issued_together_later_and_a_few_at_once() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = || n.load(std::sync::atomic::Ordering::Relaxed);
        let delay = FanoutDelay {
            delay: Duration::from_millis(50),
            max: Duration::from_millis(50),
            min_sockets: 3,
        };
        let d = Deferred::new(Limits::default(), delay);
        let wakes = |k: usize, fanout: bool| {
            (0..k)
                .map(|_| (Counter(n.clone()), fanout))
                .collect::<Vec<_>>()
        };
        // Two writers of a fan-out (a small room) and a reply: at the
        // process's wait, at once.
        d.defer(1, wakes(2, true), 2, 2);
        d.defer(1, wakes(1, false), 1, 1);
        d.flush(1);
        assert_eq!(count(), 3);
        assert_eq!(d.delayed(), 0);
        // Three of fan-outs (a large room, over two serializers' calls) and
        // a reply: the reply at the wait, the three later.
        d.defer(1, wakes(2, true), 2, 2);
        d.defer(1, wakes(1, false), 1, 1);
        d.defer(1, wakes(1, true), 1, 1);
        d.flush(1);
        assert_eq!(count(), 4, "the reply at once, the fan-out held");
        assert_eq!(d.delayed(), 1);
        for _ in 0..500 {
            if count() == 7 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(count(), 7, "issued after the delay");
        // Replies never wait, however many.
        d.issue(wakes(5, false));
        assert_eq!(count(), 12);
    }

    /// A writer that writes `after` its wake (holds its token that long).
    struct Slow {
        after: Duration,
        written: Arc<std::sync::atomic::AtomicUsize>,
    }
    impl Wake for Slow {
        fn wake(&self) {}
        fn wake_late(&self, token: DrainToken) {
            let (after, written) = (self.after, self.written.clone());
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(token);
            });
        }
    }

    #[tokio::test]
    async fn slow_writes_lengthen_the_delay_and_quick_ones_bring_it_back() {
        let ms = Duration::from_millis;
        let delay = FanoutDelay {
            delay: ms(20),
            max: ms(300),
            min_sockets: 3,
        };
        let d = Deferred::new(Limits::default(), delay);
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let batch = |after: Duration| {
            (0..10)
                .map(|_| {
                    let w = Slow {
                        after,
                        written: written.clone(),
                    };
                    (w, true)
                })
                .collect::<Vec<_>>()
        };
        let wait_written = |n: usize| {
            let written = written.clone();
            async move {
                for _ in 0..500 {
                    if written.load(std::sync::atomic::Ordering::Relaxed) >= n {
                        return;
                    }
                    tokio::time::sleep(ms(5)).await;
                }
                panic!("the writers did not write");
            }
        };
        assert_eq!(d.current_delay(), ms(20));
        // Ten writers that each take 60 ms to write: the next delay is four
        // times that, at most the maximum.
        d.issue(batch(ms(60)));
        wait_written(10).await;
        let grown = d.current_delay();
        assert!(grown >= ms(240) && grown <= ms(300), "{grown:?}");
        // One very slow writer of ten (a slow client) does not count: the
        // other nine wrote at once.
        let mut mixed = batch(ms(0));
        mixed[0].0.after = ms(400);
        d.issue(mixed);
        wait_written(19).await;
        let kept = d.current_delay();
        assert!(kept < grown, "{kept:?} after {grown:?}");
        // Quick writes from then on: a sixteenth less per batch, back to
        // the minimum (about 30 batches; more allowed for a busy machine).
        let mut n = 20;
        for _ in 0..200 {
            if d.current_delay() == ms(20) {
                break;
            }
            d.issue(batch(ms(0)));
            n += 10;
            wait_written(n - 1).await;
        }
        assert_eq!(d.current_delay(), ms(20), "back to the minimum");
    }
}
