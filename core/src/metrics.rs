//! The node's counters and gauges. Guests bump them through one cheap host
//! call (`chorus::metric_add`) with the index of a [`Metric`]; the host keeps
//! them in atomics and renders Prometheus text, so /metrics sees every process
//! without messages on the hot path.

/// Whether a metric only grows or goes up and down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

macro_rules! metrics {
    ($($variant:ident => $name:literal, $kind:ident, $help:literal;)*) => {
        /// Every metric the node exports, in a fixed order (the host-call index).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        pub enum Metric { $($variant,)* }

        impl Metric {
            /// All metrics, index = `self as u32`.
            pub const ALL: &'static [Metric] = &[$(Metric::$variant,)*];
            /// Prometheus name.
            pub fn name(self) -> &'static str { match self { $(Metric::$variant => $name,)* } }
            /// Counter or gauge.
            pub fn kind(self) -> Kind { match self { $(Metric::$variant => Kind::$kind,)* } }
            /// Prometheus HELP text.
            pub fn help(self) -> &'static str { match self { $(Metric::$variant => $help,)* } }
        }
    };
}

metrics! {
    SessionsActive => "chorus_sessions", Gauge, "WebSocket sessions open now";
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
}

impl Metric {
    /// The metric with host-call index `i`, if any.
    pub fn from_index(i: u32) -> Option<Metric> {
        Metric::ALL.get(i as usize).copied()
    }
}

/// Renders values (indexed like [`Metric::ALL`]) plus extra host-side lines
/// as Prometheus text exposition format.
pub fn render(values: &[i64], extra: &[(&str, Kind, &str, i64)]) -> String {
    let mut out = String::new();
    let own = Metric::ALL
        .iter()
        .zip(values)
        .map(|(m, v)| (m.name(), m.kind(), m.help(), *v));
    for (name, kind, help, value) in own.chain(extra.iter().copied()) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_round_trips() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(Metric::from_index(i as u32), Some(*m));
        }
        assert_eq!(Metric::from_index(Metric::ALL.len() as u32), None);
    }

    #[test]
    fn renders_prometheus_text() {
        let mut values = vec![0; Metric::ALL.len()];
        values[Metric::SessionsActive as usize] = 3;
        let text = render(
            &values,
            &[("chorus_processes", Kind::Gauge, "Processes", 9)],
        );
        assert!(text.contains("# TYPE chorus_sessions gauge\nchorus_sessions 3\n"));
        assert!(text.contains("chorus_processes 9\n"));
    }
}
