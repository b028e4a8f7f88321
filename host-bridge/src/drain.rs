//! A node's graceful drain, the host's shell around `chorus_core::drain`:
//! started by SIGTERM/SIGINT or `POST /realtime/v1/api/drain` (through the
//! gateway's `request_drain`), it closes the WebSocket connections in
//! batches with `1001`, waits for their outlets to write what was queued,
//! then for the store's requests in flight, all within
//! `node.shutdown_timeout_ms`. The listener is already closed by then
//! (`gateway.rs`), so a second node may bind the port while this one drains.
//! A cluster node first waits (at most [`HANDOVER_WAIT_MS`]) for its
//! channels to be handed over and stop: its clients reconnect elsewhere only
//! once no channel here can acknowledge a message any more.

use std::time::{Duration, Instant};

use chorus_core::drain::{Drain, DrainConfig, Step, CLOSE_CODE, CLOSE_REASON};

use crate::socket::Sockets;
use crate::store::DataService;

/// How long a cluster node's drain lasts at least: its directory shards
/// see the drain within 250 ms (`src/channel.rs`) and hand their channels
/// over, whose subscribers on other nodes must be told (`Moved`, a message
/// to another node) before this process exits.
pub const CLUSTER_HANDOVER_MS: u64 = 1_000;

/// How long a cluster node's drain waits, at most, for its channel
/// processes to stop (`chorus_channels` at 0) before it closes its clients'
/// connections: a channel ends once it has answered what was queued before
/// its handover, which a busy store can stretch.
pub const HANDOVER_WAIT_MS: u64 = 3_000;

/// Runs the drain to its end (flushed or timed out), lasting at least
/// `hold_ms` ([`CLUSTER_HANDOVER_MS`] in a cluster); `channels` counts the
/// channel processes still running here.
pub async fn run(
    sockets: &Sockets,
    store: Option<&DataService>,
    channels: &(dyn Fn() -> usize + Sync),
    config: DrainConfig,
    hold_ms: u64,
) {
    let started = Instant::now();
    let mut drain = Drain::new(config, 0);
    if hold_ms > 0 {
        drain = drain.hand_over_first(0, HANDOVER_WAIT_MS);
    }
    let elapsed = || started.elapsed().as_millis() as u64;
    let mut closing = false;
    tracing::info!(
        connections = sockets.websockets().len(),
        batch = config.batch_size,
        interval_ms = config.batch_interval_ms,
        timeout_ms = config.shutdown_timeout_ms,
        "draining: closing client connections with 1001"
    );
    loop {
        let open = sockets.websockets();
        // Only a cluster node's drain waits for its channels (a single
        // node's ignores the count, and counting takes a lock).
        if hold_ms > 0 {
            drain.channels(channels());
        }
        match drain.step(&open, elapsed()) {
            Step::Close(ids) => {
                if hold_ms > 0 && !closing {
                    match channels() {
                        0 => tracing::info!(ms = elapsed(), "draining: channels handed over"),
                        running => tracing::warn!(
                            running,
                            ms = elapsed(),
                            "draining: channels still running after the handover wait; closing connections anyway"
                        ),
                    }
                }
                closing = true;
                for id in ids {
                    sockets.close(id, Some(CLOSE_CODE), CLOSE_REASON);
                }
            }
            Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms.max(1))).await,
            // HTTP exchanges still answering (the drain call's own 202
            // among them) finish before the exit, and a cluster node's
            // channels are handed over, within the deadline.
            Step::Flushed
                if (sockets.count() > 0
                    || elapsed() < hold_ms
                    || (hold_ms > 0 && channels() > 0 && elapsed() < HANDOVER_WAIT_MS))
                    && elapsed() < drain.deadline_ms() =>
            {
                tokio::time::sleep(Duration::from_millis(chorus_core::drain::POLL_MS)).await;
            }
            Step::Flushed => {
                tracing::info!(
                    closed = drain.closed(),
                    ms = elapsed(),
                    "draining: every connection closed and its outlet written"
                );
                break;
            }
            Step::TimedOut { open } => {
                tracing::warn!(
                    open,
                    "draining: node.shutdown_timeout_ms reached with connections still open"
                );
                break;
            }
        }
    }
    if let Some(store) = store {
        let left = drain.deadline_ms().saturating_sub(elapsed());
        if store.flush(Duration::from_millis(left)).await {
            tracing::info!(ms = elapsed(), "draining: store flushed; exiting");
        } else {
            tracing::warn!(
                in_flight = store.in_flight(),
                "draining: node.shutdown_timeout_ms reached with store requests in flight (none was acknowledged)"
            );
        }
    }
}
