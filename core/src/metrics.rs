//! The node's metrics, declared once: counters and gauges that guests bump
//! through one cheap host call (`chorus::metric_add`) with the index of a
//! [`Metric`], and histograms they or the host observe into
//! (`chorus::metric_observe`, index of a [`Histogram`]). The host keeps the
//! values in atomics and renders them (OpenMetrics or Prometheus text) with
//! the `prometheus-client` crate, so /metrics sees every process without
//! messages on the hot path.
//!
//! Names follow Prometheus conventions: base units (`_seconds`, `_bytes`),
//! counters end in `_total`, and no gauge is named like a counter family
//! without its suffix (under OpenMetrics a counter `x_total` is the family
//! `x`, so a gauge `x` beside it would clash).

/// Whether a metric only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

macro_rules! metrics {
    ($($variant:ident => $name:literal, $kind:ident, $help:literal;)*) => {
        /// Every counter and gauge guests report, in a fixed order (the
        /// host-call index).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        pub enum Metric { $($variant,)* }

        impl Metric {
            /// All metrics, index = `self as u32`.
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)*];
            /// Prometheus name (counters with their `_total` suffix).
            pub fn name(self) -> &'static str { match self { $(Metric::$variant => $name,)* } }
            /// Counter or gauge.
            pub fn kind(self) -> Kind { match self { $(Metric::$variant => Kind::$kind,)* } }
            /// Prometheus HELP text.
            pub fn help(self) -> &'static str { match self { $(Metric::$variant => $help,)* } }
        }
    };
}

metrics! {
    SessionsActive => "chorus_sessions_open", Gauge, "WebSocket sessions open now";
    SessionsTotal => "chorus_sessions_total", Counter, "WebSocket sessions accepted since start";
    ChannelsActive => "chorus_channels", Gauge, "Channel processes running now";
    MessagesIn => "chorus_messages_in_total", Counter, "Frames received from clients";
    MessagesOut => "chorus_messages_out_total", Counter, "Frames sent to clients";
    BytesIn => "chorus_bytes_in_total", Counter, "WebSocket payload bytes received";
    BytesOut => "chorus_bytes_out_total", Counter, "WebSocket payload bytes sent";
    HttpRequests => "chorus_http_requests_total", Counter, "HTTP requests served";
    ProtocolErrors => "chorus_protocol_errors_total", Counter, "Client frames refused as malformed or over a limit";
    HistoryRefilled => "chorus_channel_history_refilled_total", Counter, "Messages channel servers reloaded from storage into their in-memory history at start";
    Replayed => "chorus_replayed_messages_total", Counter, "Stored messages replayed to clients on join (broadcast.replay)";
    HistorySkipped => "chorus_channel_history_skipped_total", Counter, "Messages a channel did not keep in its in-memory history because they alone pass limits.channel_history_bytes";
    RateLimited => "chorus_rate_limited_total", Counter, "Client messages refused by the per-socket rate limit";
    Unauthorized => "chorus_joins_refused_total", Counter, "Joins refused for identity or policy (presence key not the token's sub, a private topic's policy)";
    PeakChannels => "chorus_peak_channels", Gauge, "Channels in peak mode now";
    PeakEntered => "chorus_peak_entered_total", Counter, "Times a channel entered peak mode";
    PeakLeft => "chorus_peak_left_total", Counter, "Times a channel left peak mode";
    PresenceSubscriptions => "chorus_presence_subscriptions", Gauge, "Clients with a selective presence subscription now";
    ModuleVerdicts => "chorus_module_verdicts_total", Counter, "Messages a process module changed or refused";
    ModuleTimeouts => "chorus_module_timeouts_total", Counter, "Module calls that timed out or found the module unavailable (fail_open applied)";
    ModuleCrashes => "chorus_module_crashes_total", Counter, "Module calls that trapped or ran out of fuel (the module's process is restarted)";
    ModuleErrors => "chorus_module_errors_total", Counter, "Module answers refused as garbage (the message is handled as if unanswered)";
    ChannelsRefused => "chorus_channel_starts_refused_total", Counter, "Joins refused because they would start a channel past limits.max_channels or limits.channel_creations_per_second";
    Duplicates => "chorus_duplicate_messages_total", Counter, "Chat messages retried with a msg_id the lane had stored (acknowledged again, not stored or delivered twice)";
    StoreFailed => "chorus_store_failures_total", Counter, "Chat messages refused because the store failed (the sender gets an error reply or a system push)";
    RemoteLocates => "chorus_remote_locates_total", Counter, "Channel look-ups sent to the topic's home on another cluster node (joins, REST publishes)";
    HandedOver => "chorus_channels_handed_over_total", Counter, "Channels handed over because their topic's home moved to a node that joined the cluster, or because this node drains (their subscribers rejoin there)";
    LocatesForwarded => "chorus_locates_forwarded_total", Counter, "Channel look-ups a directory passed on to the topic's home on another node (this node drains, or the topic moved to a node that joined and the asker had not seen it yet)";
    RegionForwards => "chorus_region_forwards_total", Counter, "Relay messages this node's relay forwarded to another node of its region, as the hub of a channel in another region";
}

impl Metric {
    /// The metric with host-call index `i`, if any.
    pub fn from_index(i: u32) -> Option<Metric> {
        Metric::ALL.get(i as usize).copied()
    }
}

macro_rules! host_metrics {
    ($($variant:ident => $name:literal, $kind:ident, $label:expr, $help:literal;)*) => {
        /// Every counter and gauge only the host knows, read at each scrape
        /// (sockets, queues, the data service, supervision restarts), in a
        /// fixed order. Declared here beside [`Metric`] so one test sees every
        /// name the node exports.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        pub enum HostMetric { $($variant,)* }

        impl HostMetric {
            /// All host metrics, index = `self as usize`.
            pub const ALL: &'static [HostMetric] = &[$(HostMetric::$variant,)*];
            /// Prometheus name (counters with their `_total` suffix).
            pub fn name(self) -> &'static str { match self { $(HostMetric::$variant => $name,)* } }
            /// Counter or gauge.
            pub fn kind(self) -> Kind { match self { $(HostMetric::$variant => Kind::$kind,)* } }
            /// The label key of a metric exported as several series (one
            /// per label value; counters only), `None` for a single series.
            pub fn label(self) -> Option<&'static str> { match self { $(HostMetric::$variant => $label,)* } }
            /// Prometheus HELP text.
            pub fn help(self) -> &'static str { match self { $(HostMetric::$variant => $help,)* } }
        }
    };
}

host_metrics! {
    Processes => "chorus_processes", Gauge, None, "lunatic processes alive on this node";
    Sockets => "chorus_sockets", Gauge, None, "Client connections the host reads and writes";
    PendingConnections => "chorus_pending_connections", Gauge, None, "Connections still sending their request head";
    ConnectionsRefused => "chorus_connections_refused_total", Counter, None, "Connections refused before their head was read (limits.max_connections_per_ip, limits.max_pending_connections)";
    SessionCrashes => "chorus_session_crashes_total", Counter, None, "Session or HTTP handler processes that crashed (their socket closed with 1011)";
    InletPauses => "chorus_inlet_pauses_total", Counter, None, "Times the host stopped reading a socket because its session had limits.inlet_queue_messages (or inlet_queue_bytes) unprocessed";
    DeflateSockets => "chorus_ws_deflate_sockets_total", Counter, None, "WebSocket connections that agreed to permessage-deflate (node.permessage_deflate)";
    DeflatedFrames => "chorus_ws_deflated_frames_total", Counter, None, "Frames compressed for permessage-deflate sockets (a fan-out frame counts once, however many sockets it goes to)";
    DeflateSavedBytes => "chorus_ws_deflate_saved_bytes_total", Counter, None, "Bytes not written thanks to permessage-deflate (uncompressed minus compressed size, summed over every socket written)";
    ParkedAnswers => "chorus_parked_answers", Gauge, None, "Host-call answers waiting for their process to take them (dead processes' are swept every second)";
    QueuedFrames => "chorus_outlet_queued_frames", Gauge, None, "Frames waiting in all sockets' send queues now";
    StoreInFlight => "chorus_store_in_flight", Gauge, None, "Data-service requests waiting for an answer now";
    StoreRequests => "chorus_store_requests_total", Counter, Some("op"), "Requests to the data service, by operation";
    StoreBackendQueries => "chorus_store_backend_queries_total", Counter, Some("op"), "Queries the data service sent to its backend (after coalescing and caching), by operation";
    ReactionsAggregated => "chorus_reactions_aggregated_total", Counter, None, "Reactions counted into a reaction_counts frame instead of queued (slow sockets)";
    AudioReplaced => "chorus_audio_frames_replaced_total", Counter, None, "Unwritten audio frames replaced by a newer one of their topic (slow sockets)";
    SocketWrites => "chorus_socket_writes_total", Counter, None, "Writes to client sockets, each carrying one or more frames (chorus_messages_out_total ÷ this: how many frames a write carries, which node.fanout_write_delay_ms raises)";
    DelayedFanouts => "chorus_fanouts_delayed_total", Counter, None, "Batches of at least node.fanout_write_delay_sockets socket-writer wakes (a broadcast to a large room) issued node.fanout_write_delay_ms late, so the frames of the next broadcasts share their writes";
    SlowConsumers => "chorus_slow_consumers_total", Counter, None, "Sockets closed with 1008 slow_consumer (a full control or chat lane, or a write stuck for 10 s)";
    Restarts => "chorus_restarts_total", Counter, None, "Processes restarted by a supervisor";
    ClusterNodes => "chorus_cluster_nodes", Gauge, None, "Nodes this node knows in its cluster, itself included (1 outside a cluster)";
    OutboxQueuedMessages => "chorus_cluster_outbox_queued_messages", Gauge, None, "Messages to other cluster nodes waiting in this node's outboxes for a free batch slot (cluster.batches_in_flight)";
    OutboxQueuedBytes => "chorus_cluster_outbox_queued_bytes", Gauge, None, "Bytes of the messages waiting in this node's outboxes to other nodes (dropped past cluster.send_queue_bytes per node)";
    OutboxMessages => "chorus_cluster_outbox_messages_total", Counter, None, "Messages queued in this node's outboxes to other cluster nodes (relay frames, remote publishes, answers)";
    OutboxBatches => "chorus_cluster_outbox_batches_total", Counter, None, "Batches this node's outboxes handed to lunatic's node-to-node send (messages / batches: the batching)";
    OutboxWaits => "chorus_cluster_outbox_waits_total", Counter, None, "Messages to other nodes that found every batch slot busy and waited for a later batch";
    OutboxDropped => "chorus_cluster_outbox_dropped_total", Counter, None, "Messages to other nodes dropped because cluster.send_queue_bytes were already waiting";
}

/// Upper bounds of latency buckets, in nanoseconds (50 µs … 10 s).
const LATENCY_NS: &[u64] = &[
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    10_000_000_000,
];

/// Upper bounds of message-size buckets, in bytes (64 B … 1 MiB).
const SIZE_BYTES: &[u64] = &[
    64, 128, 256, 512, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576,
];

/// Upper bounds of queue-depth buckets, in frames.
const DEPTH_FRAMES: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 4_096];

macro_rules! histograms {
    ($($variant:ident => $name:literal, $label:expr, $scale:expr, $bounds:expr, $help:literal;)*) => {
        /// Every histogram series of the node, in a fixed order (the
        /// host-call index). Several series may share a name and differ by
        /// one label (`direction`, `op`): they render as one family.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        pub enum Histogram { $($variant,)* }

        impl Histogram {
            /// All series, index = `self as u32`.
            pub const ALL: &'static [Histogram] = &[$(Histogram::$variant,)*];
            /// Prometheus family name.
            pub fn name(self) -> &'static str { match self { $(Histogram::$variant => $name,)* } }
            /// The one label telling this series from others of its family.
            pub fn label(self) -> Option<(&'static str, &'static str)> {
                match self { $(Histogram::$variant => $label,)* }
            }
            /// Observed values are integers in raw units; the exported value
            /// is raw / scale (nanoseconds → seconds, bytes → bytes).
            pub fn scale(self) -> f64 { match self { $(Histogram::$variant => $scale,)* } }
            /// Bucket upper bounds in raw units (the `+Inf` bucket is implied).
            pub fn bounds(self) -> &'static [u64] { match self { $(Histogram::$variant => $bounds,)* } }
            /// Prometheus HELP text (shared by a family).
            pub fn help(self) -> &'static str { match self { $(Histogram::$variant => $help,)* } }
        }
    };
}

const NS: f64 = 1e9;

histograms! {
    FanoutLatency => "chorus_fanout_latency_seconds", None, NS, LATENCY_NS,
        "Time from a channel taking a broadcast from its mailbox to its frames queued on every subscriber's socket (module verdicts, persistence and encoding included)";
    MessageSizeIn => "chorus_message_size_bytes", Some(("direction", "in")), 1.0, SIZE_BYTES,
        "Size of WebSocket messages received from clients (in) and of frames queued to clients, once per fan-out (out)";
    MessageSizeOut => "chorus_message_size_bytes", Some(("direction", "out")), 1.0, SIZE_BYTES,
        "Size of WebSocket messages received from clients (in) and of frames queued to clients, once per fan-out (out)";
    StoreAppend => "chorus_store_operation_seconds", Some(("op", "append")), NS, LATENCY_NS,
        "Data-service operations as the node's processes see them (coalescing, cache and backend included), by operation";
    StoreHistory => "chorus_store_operation_seconds", Some(("op", "history")), NS, LATENCY_NS,
        "Data-service operations as the node's processes see them (coalescing, cache and backend included), by operation";
    StoreGetRoomState => "chorus_store_operation_seconds", Some(("op", "get_room_state")), NS, LATENCY_NS,
        "Data-service operations as the node's processes see them (coalescing, cache and backend included), by operation";
    StorePutRoomState => "chorus_store_operation_seconds", Some(("op", "put_room_state")), NS, LATENCY_NS,
        "Data-service operations as the node's processes see them (coalescing, cache and backend included), by operation";
    OutletQueueDepth => "chorus_outlet_queue_depth_frames", None, 1.0, DEPTH_FRAMES,
        "Frames waiting in a socket's send queue each time its writer takes a batch";
    OutletWait => "chorus_outlet_wait_seconds", None, NS, LATENCY_NS,
        "Time from a frame queued on a socket whose writer was idle to the writer taking it (the node's own share of delivery latency: wake-up, scheduling, backlog)";
}

impl Histogram {
    /// The series with host-call index `i`, if any.
    pub fn from_index(i: u32) -> Option<Histogram> {
        Histogram::ALL.get(i as usize).copied()
    }

    /// Index of the bucket `raw` falls in (`bounds().len()` is `+Inf`).
    pub fn bucket_of(self, raw: u64) -> usize {
        self.bounds().partition_point(|b| *b < raw)
    }
}

/// The standard process metrics the host exports (Prometheus' client
/// conventions), for the name-clash check.
pub const PROCESS_METRICS: &[&str] = &[
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_threads",
    "process_start_time_seconds",
];

/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of the OpenMetrics 1.0 text format.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether a scrape's `Accept` header asks for OpenMetrics (Prometheus asks
/// for it first); anything else gets the Prometheus text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next();
            let refused = parts.any(|p| matches!(p, "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
            media == Some("application/openmetrics-text") && !refused
        })
    })
}

/// Estimates quantile `q` (0..=1) from per-bucket counts (not cumulative;
/// the last count is the `+Inf` bucket) and their upper `bounds`, like
/// PromQL's `histogram_quantile`: linear inside the bucket the rank falls
/// in, the highest finite bound for the `+Inf` bucket. `None` without
/// observations.
pub fn quantile(q: f64, bounds: &[u64], counts: &[u64]) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().map(|b| *b as f64);
            };
            let lower = if i == 0 { 0 } else { bounds[i - 1] };
            let within = (rank - below as f64) / n as f64;
            return Some(lower as f64 + (upper - lower) as f64 * within);
        }
        below += n;
    }
    bounds.last().map(|b| *b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn index_round_trips() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(Metric::from_index(i as u32), Some(*m));
        }
        assert_eq!(Metric::from_index(Metric::ALL.len() as u32), None);
        for (i, h) in Histogram::ALL.iter().enumerate() {
            assert_eq!(Histogram::from_index(i as u32), Some(*h));
        }
        assert_eq!(Histogram::from_index(Histogram::ALL.len() as u32), None);
        for (i, m) in HostMetric::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i);
            if m.label().is_some() {
                assert_eq!(
                    m.kind(),
                    Kind::Counter,
                    "{m:?}: labelled host metrics are counters"
                );
            }
        }
    }

    #[test]
    fn no_name_clashes_under_openmetrics() {
        // A counter `x_total` is the OpenMetrics family `x`; histograms own
        // `x`, `x_bucket`, `x_sum`, `x_count`. No two families may overlap.
        let mut owner: HashMap<String, String> = HashMap::new();
        let mut claim = |name: String, by: &str| {
            if let Some(other) = owner.insert(name.clone(), by.to_string()) {
                assert_eq!(other, by, "{name} is claimed by {other} and {by}");
            }
        };
        let own = Metric::ALL.iter().map(|m| (m.name(), m.kind()));
        let host = HostMetric::ALL.iter().map(|m| (m.name(), m.kind()));
        for (name, kind) in own.chain(host) {
            let family = match kind {
                Kind::Counter => name
                    .strip_suffix("_total")
                    .unwrap_or_else(|| panic!("counter {name} lacks _total")),
                Kind::Gauge => {
                    assert!(!name.ends_with("_total"), "gauge {name}");
                    name
                }
            };
            claim(family.to_string(), name);
            claim(name.to_string(), name);
        }
        for h in Histogram::ALL {
            for suffix in ["", "_bucket", "_sum", "_count"] {
                claim(format!("{}{suffix}", h.name()), h.name());
            }
        }
        // Names the process collector exports.
        for name in PROCESS_METRICS {
            claim(name.to_string(), name);
            if let Some(family) = name.strip_suffix("_total") {
                claim(family.to_string(), name);
            }
        }
    }

    #[test]
    fn series_of_one_family_agree_on_help_and_label_key() {
        for a in Histogram::ALL {
            for b in Histogram::ALL {
                if a.name() == b.name() && a != b {
                    assert_eq!(a.help(), b.help());
                    assert_eq!(a.label().map(|l| l.0), b.label().map(|l| l.0));
                    assert_ne!(a.label(), b.label(), "{a:?} and {b:?}");
                    assert_eq!(a.bounds(), b.bounds());
                }
            }
        }
    }

    #[test]
    fn bounds_are_increasing_and_buckets_found() {
        for h in Histogram::ALL {
            assert!(h.bounds().windows(2).all(|w| w[0] < w[1]), "{h:?}");
        }
        let h = Histogram::MessageSizeIn;
        assert_eq!(h.bucket_of(0), 0);
        assert_eq!(h.bucket_of(64), 0, "bounds are inclusive (le)");
        assert_eq!(h.bucket_of(65), 1);
        assert_eq!(h.bucket_of(u64::MAX), h.bounds().len());
    }

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0")));
        assert!(!wants_openmetrics(None));
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let bounds = [10, 20, 40];
        // 10 values in (0,10], 10 in (10,20], nothing above.
        let counts = [10, 10, 0, 0];
        assert_eq!(quantile(0.5, &bounds, &counts), Some(10.0));
        assert_eq!(quantile(0.75, &bounds, &counts), Some(15.0));
        assert_eq!(quantile(1.0, &bounds, &counts), Some(20.0));
        assert_eq!(quantile(0.5, &bounds, &[0, 0, 0, 0]), None);
        // Everything in +Inf: the highest finite bound.
        assert_eq!(quantile(0.99, &bounds, &[0, 0, 0, 5]), Some(40.0));
    }
}
