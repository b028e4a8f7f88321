//! Whole-buffer mail between processes.
//!
//! lunatic's `Process::send` and `Mailbox::receive` stream bincode through
//! the `write_data` / `read_data` host calls one field at a time: a host call
//! per field, and one per byte of a `Vec<u8>`. Sessions and channels move
//! every client message this way, so here a message is encoded into one
//! buffer and handed to the host in one call, and read back in one call.
//!
//! Tags: plain messages carry tag 0 (lunatic's `Tag::none`). A non-zero tag
//! marks the answer of a request ([`crate::ReplyTo`]): a process waits for it
//! with [`receive`] on that tag, and a receive loop that finds a tagged
//! message it is no longer waiting for drops it ([`Mail::Late`]) instead of
//! decoding it as one of its own messages.

use std::time::Duration;

use lunatic::host;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// lunatic's codes for what `message::receive` found.
const DATA_MESSAGE: u32 = 0;
const LINK_DIED: u32 = 1;
const PROCESS_DIED: u32 = 2;
const TIMEOUT: u32 = 9027;

/// The tag of plain (untagged) messages.
pub const UNTAGGED: i64 = 0;

/// This node's id, asked once per process (every send compares with it).
pub fn node_id() -> u64 {
    thread_local! {
        static NODE: u64 = host::node_id();
    }
    NODE.with(|n| *n)
}

/// The nodes a process on another node may live on: this node's cluster
/// as lunatic's control server last told it (empty without a cluster).
pub fn cluster_nodes() -> Vec<u64> {
    lunatic::distributed::nodes()
}

/// Whether process `pid` on `node` may still run: a local process that
/// exists, or any process of a node still in `members`
/// ([`cluster_nodes`]). A remote process is not asked (that would cost a
/// round trip): only its node's loss is seen.
pub fn maybe_alive(node: u64, pid: u64, members: &[u64]) -> bool {
    if node == node_id() {
        // SAFETY: scalar host call.
        unsafe { host::api::process::exists(pid) != 0 }
    } else {
        members.contains(&node)
    }
}

/// Sends `bytes` as one data message under `tag` to process `pid` on `node`.
/// Like every lunatic send it is dropped silently if the process is gone.
pub fn send_bytes(node: u64, pid: u64, tag: i64, bytes: &[u8]) {
    // SAFETY: plain host calls; `bytes` is a live buffer of its length.
    unsafe {
        host::api::message::create_data(tag, bytes.len() as u64);
        host::api::message::write_data(bytes.as_ptr(), bytes.len());
    }
    if node == node_id() {
        // SAFETY: sends the message created above.
        unsafe { host::api::message::send(pid) };
    } else {
        send_remote(node, pid);
    }
}

/// Sends the message built in the scratch area to another node.
#[cfg(not(feature = "chorus-host"))]
fn send_remote(node: u64, pid: u64) {
    host::send(node, pid);
}

/// Sends the message built in the scratch area to another node through the
/// `chorus` host, which queues it without waiting for that node and drops
/// it when `node` is not a member of the cluster (lunatic's own send would
/// block the sender for a round trip, forever for a dead node still listed,
/// and spin for a node id it does not list).
#[cfg(feature = "chorus-host")]
fn send_remote(node: u64, pid: u64) {
    #[link(wasm_import_module = "chorus")]
    extern "C" {
        #[link_name = "send_remote"]
        fn chorus_send_remote(node: u64, pid: u64) -> u32;
    }
    // SAFETY: scalar host call; it takes the message built above.
    let _ = unsafe { chorus_send_remote(node, pid) };
}

/// Encodes `message` with bincode and sends it (see [`send_bytes`]).
///
/// # Panics
///
/// If `message` cannot be encoded (a type whose `Serialize` fails, never
/// one of our message types).
pub fn send<M: Serialize>(node: u64, pid: u64, tag: i64, message: &M) {
    match bincode::serialize(message) {
        Ok(bytes) => send_bytes(node, pid, tag, &bytes),
        Err(e) => panic!("cannot encode a message: {e}"),
    }
}

/// What a receive found.
#[derive(Debug, PartialEq, Eq)]
pub enum Mail {
    /// A data message and its tag.
    Data { tag: i64, bytes: Vec<u8> },
    /// A linked process died (only for processes that trap link deaths).
    LinkDied { tag: i64 },
    /// A monitored process died.
    ProcessDied { pid: u64 },
    /// Nothing within the timeout.
    TimedOut,
}

/// Waits at most `timeout` (forever with `None`) for the next message whose
/// tag is one of `tags` (any message when `tags` is empty).
pub fn receive(tags: &[i64], timeout: Option<Duration>) -> Mail {
    let timeout_ms = timeout.map_or(u64::MAX, |t| {
        t.as_millis().min(u128::from(u64::MAX - 1)) as u64
    });
    // SAFETY: `tags` is a live slice of its length.
    let kind = unsafe { host::api::message::receive(tags.as_ptr(), tags.len(), timeout_ms) };
    match kind {
        DATA_MESSAGE => {
            // SAFETY: a data message is being received: its size and tag can
            // be read and its bytes copied into a buffer of that size.
            unsafe {
                let tag = host::api::message::get_tag();
                let size = host::api::message::data_size() as usize;
                let mut bytes = vec![0u8; size];
                host::api::message::read_data(bytes.as_mut_ptr(), size);
                Mail::Data { tag, bytes }
            }
        }
        // SAFETY: the tag of the link signal being received.
        LINK_DIED => Mail::LinkDied {
            tag: unsafe { host::api::message::get_tag() },
        },
        // SAFETY: the process id of the monitor signal being received.
        PROCESS_DIED => Mail::ProcessDied {
            pid: unsafe { host::api::message::get_process_id() },
        },
        TIMEOUT => Mail::TimedOut,
        other => panic!("unknown receive result {other} from the host"),
    }
}

/// Decodes a message body received with [`receive`].
pub fn decode<M: DeserializeOwned>(bytes: &[u8]) -> Result<M, bincode::Error> {
    bincode::deserialize(bytes)
}

/// A wake-up this process sends itself, for receives with a deadline.
///
/// lunatic's `receive` with a timeout leaves the mailbox in a state where
/// the next message to arrive is parked aside and later re-queued *behind*
/// messages that arrived after it (`lunatic_process::mailbox::MessageMailbox`
/// re-queues its `found` message at the back). That broke per-channel order
/// under load. So no receive here ever times out inside lunatic: a deadline
/// is a tagged message the process sends itself with lunatic's timer
/// (`send_after`), and the receive waits without a timeout until either a
/// message or the wake-up arrives. One wake-up is kept scheduled and only
/// re-armed when a deadline moves earlier; a stale one is a tagged message
/// nobody waits for, dropped by the receive loops.
#[derive(Debug, Default)]
pub struct Alarm {
    /// The scheduled wake-up: its tag, when it fires, the timer id.
    pending: Option<(i64, std::time::Instant, u64)>,
}

impl Alarm {
    /// Waits for the next message whose tag is in `tags` (any when empty)
    /// until `deadline` (forever with `None`). Returns [`Mail::TimedOut`]
    /// only once `deadline` has passed. This alarm's own wake-ups are never
    /// returned.
    pub fn receive(&mut self, tags: &[i64], deadline: Option<std::time::Instant>) -> Mail {
        self.receive_since(tags, deadline, None)
    }

    /// [`Alarm::receive`] with the caller's own reading of the clock
    /// (`now`, taken just before), which saves this wait one: reading the
    /// clock is a WASI call, not free in a loop that runs per message. The
    /// clock is read only when there is a deadline.
    pub fn receive_since(
        &mut self,
        tags: &[i64],
        deadline: Option<std::time::Instant>,
        mut now: Option<std::time::Instant>,
    ) -> Mail {
        loop {
            let wake = match deadline {
                Some(deadline) => {
                    let now = now.take().unwrap_or_else(std::time::Instant::now);
                    if deadline <= now {
                        return match receive_now(tags) {
                            Some(mail) => mail,
                            None => Mail::TimedOut,
                        };
                    }
                    Some(self.arm(deadline, now))
                }
                None => None,
            };
            let waiting: Vec<i64> = match (tags.is_empty(), wake) {
                (false, Some(wake)) => tags.iter().copied().chain([wake]).collect(),
                _ => tags.to_vec(),
            };
            match receive(&waiting, None) {
                // A wake-up (this one, or one armed for an earlier wait):
                // check the deadline again.
                Mail::Data { tag, .. } if self.pending.is_some_and(|(p, ..)| p == tag) => {
                    self.pending = None;
                }
                other => return other,
            }
        }
    }

    /// Makes sure a wake-up fires no later than `deadline`; returns its tag.
    fn arm(&mut self, deadline: std::time::Instant, now: std::time::Instant) -> i64 {
        if let Some((tag, due, _)) = self.pending {
            if due <= deadline {
                return tag;
            }
        }
        if let Some((_, _, timer)) = self.pending.take() {
            // SAFETY: scalar host call; a timer that already fired is gone.
            unsafe { host::api::timer::cancel_timer(timer) };
        }
        let tag = lunatic::Tag::new().id();
        let ms = deadline.saturating_duration_since(now).as_millis();
        // Round up: waking a millisecond early would only mean a re-arm.
        let ms = u64::try_from(ms).unwrap_or(u64::MAX).saturating_add(1);
        // SAFETY: creates the wake-up message and hands it to the timer.
        let timer = unsafe {
            host::api::message::create_data(tag, 0);
            host::api::timer::send_after(host::process_id(), ms)
        };
        self.pending = Some((tag, deadline, timer));
        tag
    }
}

/// A process that ends with a wake-up still scheduled cancels it: lunatic's
/// timer task holds the target process (its mailbox, with whatever was
/// sent to it after it stopped receiving) until it fires, so a channel that
/// stopped with its next sweep 30 s away kept a few KiB of host heap alive
/// that long — per channel, scattered over the heap among blocks freed at
/// once, which kept the node's RSS up after a load (issue 10 item 6).
impl Drop for Alarm {
    fn drop(&mut self) {
        if let Some((_, _, timer)) = self.pending.take() {
            // SAFETY: scalar host call; a timer that already fired is gone.
            unsafe { host::api::timer::cancel_timer(timer) };
        }
    }
}

/// A message already waiting (tags as in [`receive`]), without waiting.
/// Implemented with a wake-up sent right away, so the mailbox never goes
/// through a lunatic receive timeout (see [`Alarm`]).
fn receive_now(tags: &[i64]) -> Option<Mail> {
    let tag = lunatic::Tag::new().id();
    // SAFETY: creates the marker message and sends it to this process.
    unsafe {
        host::api::message::create_data(tag, 0);
        host::api::message::send(host::process_id());
    }
    let mut waiting: Vec<i64> = tags.to_vec();
    if !waiting.is_empty() {
        waiting.push(tag);
    }
    match receive(&waiting, None) {
        Mail::Data { tag: t, .. } if t == tag => None,
        // The marker stays queued behind what was there: it is tagged, and
        // the next receive loop drops it.
        other => Some(other),
    }
}
