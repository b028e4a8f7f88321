//! Outlets: the write side of every WebSocket, owned by the host.
//!
//! A channel with 10,000 subscribers used to mail the same frame to 10,000
//! session processes, each of which copied it in and wrote it out: two
//! process switches and three copies per delivery. Instead a session hands
//! its socket's write half to the host once (`outlet_open`), and everything
//! written to the client — the session's own replies and the channel's
//! fan-out (`fanout`: one call, one shared buffer, N queue pushes) — goes
//! through one bounded queue per socket, drained by a host task that
//! coalesces queued frames into few `write` calls. One queue per socket keeps
//! the order of everything the client receives.
//!
//! A socket whose queue is full is a slow consumer: it is sent a close frame
//! with reason `slow_consumer` and shut down, instead of growing memory.
//! An outlet dies with its owner process (a sweeper drops the outlets of
//! processes that are gone, so a crashed session's socket closes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lunatic_networking_api::TcpConnection;
use lunatic_process::env::{Environment, LunaticEnvironment};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

/// Frames queued per socket before it counts as a slow consumer.
const QUEUE_FRAMES: usize = 4096;
/// Bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;
/// A write that takes longer than this ends the socket (slow consumer).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

type Frame = Arc<[u8]>;

struct Entry {
    owner: u64,
    tx: mpsc::Sender<Frame>,
    /// Set when the queue overflowed: the writer drops the backlog.
    slow: Arc<AtomicBool>,
}

/// Status of a send, as returned to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Sent {
    Ok = 0,
    /// The queue is full: the socket is being closed as a slow consumer.
    Slow = 1,
    /// No such outlet (closed, or its socket failed).
    Gone = 2,
}

/// All outlets of the node.
pub struct Outlets {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Entry>>,
    /// Frames and bytes written by outlet tasks, for /metrics.
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl Outlets {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            next: AtomicU64::new(1),
            map: Mutex::new(HashMap::new()),
            frames_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        })
    }

    /// Starts the writer task of `conn`, owned by process `owner`.
    pub fn open(self: &Arc<Self>, owner: u64, conn: Arc<TcpConnection>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        let slow = Arc::new(AtomicBool::new(false));
        if let Ok(mut map) = self.map.lock() {
            map.insert(
                id,
                Entry {
                    owner,
                    tx,
                    slow: slow.clone(),
                },
            );
        }
        tokio::spawn(write_loop(self.clone(), conn, rx, slow));
        id
    }

    /// Queues one frame.
    pub fn send(&self, id: u64, bytes: &[u8]) -> Sent {
        let frame: Frame = Arc::from(bytes);
        let Ok(mut map) = self.map.lock() else {
            return Sent::Gone;
        };
        push(&mut map, id, frame)
    }

    /// Queues one frame on many outlets; returns how many took it.
    pub fn fanout(&self, ids: &[u64], bytes: &[u8]) -> u32 {
        let frame: Frame = Arc::from(bytes);
        let Ok(mut map) = self.map.lock() else {
            return 0;
        };
        ids.iter()
            .filter(|id| push(&mut map, **id, frame.clone()) == Sent::Ok)
            .count() as u32
    }

    /// Closes an outlet after the frames already queued are written.
    pub fn close(&self, id: u64) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&id);
        }
    }

    /// Drops the outlets whose owner process is gone.
    pub fn sweep(&self, env: &LunaticEnvironment) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|_, e| env.get_process(e.owner).is_some());
        }
    }

    /// Outlets open now.
    pub fn count(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

fn push(map: &mut HashMap<u64, Entry>, id: u64, frame: Frame) -> Sent {
    let Some(entry) = map.get(&id) else {
        return Sent::Gone;
    };
    match entry.tx.try_send(frame) {
        Ok(()) => Sent::Ok,
        Err(mpsc::error::TrySendError::Full(_)) => {
            // Dropping the sender ends the writer task, which then sends
            // the slow-consumer close frame.
            tracing::warn!(
                outlet = id,
                "slow consumer: send queue full, closing the socket"
            );
            entry.slow.store(true, Ordering::Relaxed);
            map.remove(&id);
            Sent::Slow
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            map.remove(&id);
            Sent::Gone
        }
    }
}

async fn write_loop(
    outlets: Arc<Outlets>,
    conn: Arc<TcpConnection>,
    mut rx: mpsc::Receiver<Frame>,
    slow_flag: Arc<AtomicBool>,
) {
    // Grown on demand and shrunk after a burst: an idle socket keeps no
    // write buffer.
    let mut batch: Vec<u8> = Vec::new();
    let mut slow = false;
    while let Some(first) = rx.recv().await {
        if slow_flag.load(Ordering::Relaxed) {
            slow = true;
            break;
        }
        batch.clear();
        batch.extend_from_slice(&first);
        let mut frames = 1;
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => {
                    batch.extend_from_slice(&more);
                    frames += 1;
                }
                Err(_) => break,
            }
        }
        let mut writer = conn.writer.lock().await;
        match tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(&batch)).await {
            Ok(Ok(())) => {
                outlets.frames_out.fetch_add(frames, Ordering::Relaxed);
                outlets
                    .bytes_out
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if batch.capacity() > 8 * 1024 {
                    batch = Vec::new();
                }
            }
            Ok(Err(_)) => return,
            Err(_) => {
                slow = true;
                break;
            }
        }
    }
    slow |= slow_flag.load(Ordering::Relaxed);
    let mut writer = conn.writer.lock().await;
    if slow {
        let mut close = Vec::new();
        chorus_core::ws::encode_close(&mut close, 1008, "slow_consumer");
        let _ = tokio::time::timeout(Duration::from_secs(1), writer.write_all(&close)).await;
    }
    let _ = writer.shutdown().await;
}
