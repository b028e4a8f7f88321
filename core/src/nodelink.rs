//! What one node sends another: guest messages coalesced into batches.
//!
//! lunatic's node-to-node send is one request per message, each
//! acknowledged by the other node: every relayed frame and every remote
//! publish cost a QUIC request, an acknowledgement, a task and a timer.
//! Instead the host queues each message bound for a node in that node's
//! [`Outbox`] and sends the queue as few lunatic messages (batches) as it
//! can: at most `cluster.batches_in_flight` batches await their
//! acknowledgement at once; while they do, new messages gather into the
//! next batch (up to `cluster.batch_bytes`). With a slot free, messages
//! leave at the end of the burst that queued them: the first push asks
//! the host to schedule a flush ([`Outbox::wants_flush`]), which runs
//! once the tasks already ready have run, so what a node's processes send
//! one node together (a fan-out's relay messages, many channels' at once
//! under load) leaves as one batch, with no timer and no wait when the
//! node is idle. The other node's mailbag (host-bridge's
//! `cluster.rs`) unpacks a batch with [`entries`] and hands each message to
//! its process, in order.
//!
//! A batch is a sequence of entries: process id (u64 LE), tag (a presence
//! byte, then i64 LE when present), length (u32 LE), bytes.

use std::collections::VecDeque;

/// One message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    pub pid: u64,
    pub tag: Option<i64>,
    pub data: &'a [u8],
}

/// A batch that ends in the middle of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated {
    /// Offset of the entry that does not fit.
    pub at: usize,
}

/// The bytes an entry of `len` data bytes takes in a batch, tag included.
pub fn entry_len(tag: Option<i64>, len: usize) -> usize {
    8 + 1 + if tag.is_some() { 8 } else { 0 } + 4 + len
}

/// Appends one entry to `batch`. `data` longer than `u32::MAX` bytes is
/// never a lunatic message (a process's memory is smaller).
pub fn push(batch: &mut Vec<u8>, pid: u64, tag: Option<i64>, data: &[u8]) {
    batch.reserve(entry_len(tag, data.len()));
    batch.extend_from_slice(&pid.to_le_bytes());
    match tag {
        Some(t) => {
            batch.push(1);
            batch.extend_from_slice(&t.to_le_bytes());
        }
        None => batch.push(0),
    }
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    batch.extend_from_slice(&len.to_le_bytes());
    batch.extend_from_slice(&data[..len as usize]);
}

/// The entries of `batch`, in order; a truncated or malformed entry ends
/// the iteration with an error.
pub fn entries(batch: &[u8]) -> Entries<'_> {
    Entries { batch, at: 0 }
}

/// Iterator of [`entries`].
pub struct Entries<'a> {
    batch: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, Truncated>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.at >= self.batch.len() {
            return None;
        }
        let start = self.at;
        let entry = self.read();
        if entry.is_none() {
            // Nothing after a bad entry can be trusted.
            self.at = self.batch.len();
        }
        Some(entry.ok_or(Truncated { at: start }))
    }
}

impl<'a> Entries<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let bytes = self.batch.get(self.at..end)?;
        self.at = end;
        Some(bytes)
    }

    fn read(&mut self) -> Option<Entry<'a>> {
        let pid = u64::from_le_bytes(self.take(8)?.try_into().ok()?);
        let tag = match self.take(1)? {
            [0] => None,
            [1] => Some(i64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            _ => return None,
        };
        let len = u32::from_le_bytes(self.take(4)?.try_into().ok()?);
        let data = self.take(usize::try_from(len).ok()?)?;
        Some(Entry { pid, tag, data })
    }
}

/// Limits of one outbox (`[cluster]` keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `cluster.batch_bytes`: a batch closes once it holds this many
    /// bytes (a larger message goes alone).
    pub batch_bytes: usize,
    /// `cluster.batches_in_flight`: batches sent and not yet acknowledged
    /// (nor given up) at once.
    pub in_flight: usize,
    /// `cluster.send_queue_bytes`: bytes waiting for a slot; a message that
    /// would pass it is dropped.
    pub queue_bytes: usize,
}

/// The messages of one node bound for another, sans IO.
#[derive(Debug)]
pub struct Outbox {
    limits: Limits,
    /// Closed batches, oldest first, then the open one (last, possibly
    /// empty), each with its number of messages.
    batches: VecDeque<(Vec<u8>, usize)>,
    queued: usize,
    in_flight: usize,
    /// Messages dropped since the last one queued.
    dropped: u64,
    /// A flush is scheduled and has not run yet.
    flush_due: bool,
}

/// What [`Outbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Queued; `dropped` messages had been refused since the last one
    /// queued (the end of a full queue: worth a log line).
    Queued { dropped: u64 },
    /// Refused: the queue is full. `first` for the first refusal since the
    /// last queued message (the start of a full queue: worth a log line).
    Dropped { first: bool },
}

impl Outbox {
    pub fn new(limits: Limits) -> Self {
        Outbox {
            limits,
            batches: VecDeque::new(),
            queued: 0,
            in_flight: 0,
            dropped: 0,
            flush_due: false,
        }
    }

    /// Whether the caller must schedule a flush (a task that calls
    /// [`Outbox::flushing`] then [`Outbox::take`]) after a push: only when
    /// none is scheduled yet, so a burst of pushes shares one flush.
    pub fn wants_flush(&mut self) -> bool {
        !std::mem::replace(&mut self.flush_due, true)
    }

    /// The scheduled flush runs: a later push schedules another.
    pub fn flushing(&mut self) {
        self.flush_due = false;
    }

    /// Whether a message pushed now waits for a slot (every slot is busy)
    /// instead of leaving at once.
    pub fn busy(&self) -> bool {
        self.in_flight >= self.limits.in_flight
    }

    /// Queues one message.
    pub fn push(&mut self, pid: u64, tag: Option<i64>, data: &[u8]) -> Pushed {
        let len = entry_len(tag, data.len());
        if self.queued + len > self.limits.queue_bytes && self.queued > 0 {
            self.dropped += 1;
            return Pushed::Dropped {
                first: self.dropped == 1,
            };
        }
        let (open, count) = match self.batches.back_mut() {
            Some((b, n)) if b.is_empty() || b.len() + len <= self.limits.batch_bytes => (b, n),
            _ => {
                self.batches.push_back((Vec::new(), 0));
                let (b, n) = self.batches.back_mut().expect("just pushed");
                (b, n)
            }
        };
        push(open, pid, tag, data);
        *count += 1;
        self.queued += len;
        let dropped = std::mem::take(&mut self.dropped);
        Pushed::Queued { dropped }
    }

    /// The next batch to send when a slot is free (counted as in flight
    /// until [`Outbox::done`]), with its number of messages.
    pub fn take(&mut self) -> Option<(Vec<u8>, usize)> {
        if self.busy() {
            return None;
        }
        let (batch, count) = self.batches.pop_front()?;
        self.queued -= batch.len();
        self.in_flight += 1;
        Some((batch, count))
    }

    /// A batch was acknowledged, refused or given up: its slot is free.
    pub fn done(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Bytes waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued
    }

    /// Messages waiting for a slot.
    pub fn queued_messages(&self) -> usize {
        self.batches.iter().map(|(_, n)| n).sum()
    }

    /// Batches sent and not yet done.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        batch_bytes: 64,
        in_flight: 2,
        queue_bytes: 200,
    };

    fn all(batch: &[u8]) -> Vec<(u64, Option<i64>, Vec<u8>)> {
        entries(batch)
            .map(|e| {
                let e = e.expect("well formed");
                (e.pid, e.tag, e.data.to_vec())
            })
            .collect()
    }

    #[test]
    fn entries_round_trip_in_order() {
        let mut b = Vec::new();
        push(&mut b, 7, None, b"hello");
        push(&mut b, u64::MAX, Some(-3), b"");
        push(&mut b, 1, Some(i64::MAX), &[0xff; 300]);
        assert_eq!(
            b.len(),
            entry_len(None, 5) + entry_len(Some(0), 0) + entry_len(Some(1), 300)
        );
        assert_eq!(
            all(&b),
            vec![
                (7, None, b"hello".to_vec()),
                (u64::MAX, Some(-3), vec![]),
                (1, Some(i64::MAX), vec![0xff; 300]),
            ]
        );
        assert_eq!(entries(&[]).count(), 0);
    }

    #[test]
    fn a_truncated_or_malformed_batch_ends_with_an_error() {
        let mut b = Vec::new();
        push(&mut b, 7, None, b"hello");
        let first = b.len();
        push(&mut b, 8, Some(1), b"world");
        for cut in first + 1..b.len() {
            let got: Vec<_> = entries(&b[..cut]).collect();
            assert_eq!(got.len(), 2, "cut at {cut}");
            assert!(got[0].is_ok());
            assert_eq!(got[1], Err(Truncated { at: first }));
        }
        // An unknown tag marker.
        let mut bad = b.clone();
        bad[first + 8] = 2;
        let got: Vec<_> = entries(&bad).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], Err(Truncated { at: first }));
        // A length past the end.
        let mut long = Vec::new();
        push(&mut long, 1, None, b"ab");
        long[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            entries(&long).collect::<Vec<_>>(),
            vec![Err(Truncated { at: 0 })]
        );
    }

    #[test]
    fn a_free_slot_takes_a_message_alone_and_a_busy_link_gathers() {
        let mut o = Outbox::new(LIMITS);
        assert_eq!(o.take(), None);
        o.push(1, None, b"a");
        assert!(!o.busy());
        let (first, n) = o.take().expect("a slot is free");
        assert_eq!(all(&first), vec![(1, None, b"a".to_vec())]);
        assert_eq!(n, 1);
        o.push(2, None, b"b");
        assert!(o.take().is_some());
        assert_eq!(o.in_flight(), 2);
        assert!(o.busy());
        // Both slots busy: these gather.
        for pid in 3..6 {
            assert_eq!(o.push(pid, None, b"c"), Pushed::Queued { dropped: 0 });
        }
        assert_eq!(o.queued_messages(), 3);
        assert_eq!(o.take(), None);
        o.done();
        let (gathered, n) = o.take().expect("a slot was freed");
        assert_eq!(
            all(&gathered).iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(n, 3);
        assert_eq!(o.queued(), 0);
        assert_eq!(o.queued_messages(), 0);
    }

    #[test]
    fn a_burst_of_pushes_shares_one_flush() {
        let mut o = Outbox::new(LIMITS);
        for pid in 1..=3 {
            o.push(pid, None, b"m");
            assert_eq!(o.wants_flush(), pid == 1, "push {pid}");
        }
        o.flushing();
        let (batch, n) = o.take().expect("a slot is free");
        assert_eq!(n, 3);
        assert_eq!(
            all(&batch).iter().map(|e| e.0).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        o.push(4, None, b"m");
        assert!(o.wants_flush(), "the next burst schedules its own flush");
    }

    #[test]
    fn batches_close_at_batch_bytes_and_keep_their_order() {
        let mut o = Outbox::new(Limits {
            in_flight: 1,
            queue_bytes: 1000,
            ..LIMITS
        });
        o.push(0, None, b"");
        let _busy = o.take();
        // Each entry is 13 + 10 bytes: two fit in 64, the third opens a batch.
        for pid in 1..=5 {
            o.push(pid, None, &[0; 10]);
        }
        // One larger than a batch goes alone.
        o.push(6, None, &[0; 100]);
        o.push(7, None, b"x");
        let mut order = Vec::new();
        let mut sizes = Vec::new();
        loop {
            o.done();
            let Some((b, n)) = o.take() else { break };
            assert!(b.len() <= LIMITS.batch_bytes || all(&b).len() == 1);
            assert_eq!(n, all(&b).len());
            sizes.push(n);
            order.extend(all(&b).into_iter().map(|e| e.0));
        }
        assert_eq!(order, vec![1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(sizes, vec![2, 2, 1, 1, 1]);
    }

    #[test]
    fn a_full_queue_drops_and_says_when_it_starts_and_ends() {
        let mut o = Outbox::new(Limits {
            in_flight: 1,
            ..LIMITS
        });
        o.push(0, None, b"");
        let _busy = o.take();
        // 5 entries of 40 bytes fill the 200.
        for pid in 1..=5 {
            assert_eq!(o.push(pid, None, &[0; 27]), Pushed::Queued { dropped: 0 });
        }
        assert_eq!(o.queued(), 200);
        assert_eq!(o.push(6, None, b""), Pushed::Dropped { first: true });
        assert_eq!(o.push(7, None, b""), Pushed::Dropped { first: false });
        o.done();
        assert!(o.take().is_some());
        assert_eq!(o.push(8, None, b""), Pushed::Queued { dropped: 2 });
        assert_eq!(o.push(9, None, b""), Pushed::Queued { dropped: 0 });
        // A message larger than the whole queue still goes when it is empty.
        let mut empty = Outbox::new(LIMITS);
        assert_eq!(
            empty.push(1, None, &[0; 500]),
            Pushed::Queued { dropped: 0 }
        );
    }
}
