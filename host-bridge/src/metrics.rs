//! The node's metrics as the host keeps and exports them.
//!
//! * Values: the guest's counters and gauges ([`Metric`], bumped through
//!   `chorus::metric_add`) and every histogram series ([`Histogram`],
//!   observed by guests through `chorus::metric_observe` or by the host
//!   itself) live in atomics: an observation is two relaxed atomic adds, no
//!   lock, so the hot path pays next to nothing.
//! * Export: each scrape builds a `prometheus-client` registry with one
//!   collector that reads the atomics plus what only the host knows
//!   ([`HostValues`]: processes, sockets and their queues, data service, restarts, the
//!   process's own CPU, memory and descriptors) and encodes OpenMetrics or
//!   Prometheus text 0.0.4, whichever the scraper asked for.
//! * Dashboard: a sampler ([`Metrics::sample`], once a second) keeps the last
//!   few seconds of counters and histogram buckets, so [`Metrics::stats`] can
//!   answer rates and recent latency quantiles for `/dashboard`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chorus_core::metrics::{self, Histogram, HostMetric, Kind, Metric};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use crate::procstat;

/// Versions baked in at build time (build.rs reads them from Cargo.lock).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const LUNATIC_VERSION: &str = env!("CHORUS_LUNATIC_VERSION");
pub const WASMTIME_VERSION: &str = env!("CHORUS_WASMTIME_VERSION");

/// How many one-second samples the dashboard's window spans.
const WINDOW: usize = 10;

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (`promtool check metrics`, plain `curl`).
    Prometheus,
    /// OpenMetrics 1.0 text (what Prometheus asks for first).
    OpenMetrics,
}

impl Format {
    /// The format of ABI number `n` (1 OpenMetrics, anything else 0.0.4).
    pub fn from_u32(n: u32) -> Format {
        if n == 1 {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }
}

/// One histogram series: per-bucket counts (the last is `+Inf`) and the sum
/// of raw observations.
struct Series {
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
}

impl Series {
    fn new(h: Histogram) -> Series {
        Series {
            buckets: (0..=h.bounds().len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }
}

/// What the host knows beside the atomics, read at scrape time: a value
/// per unlabelled [`HostMetric`], plus what is folded into the guest's
/// counters or shown on the dashboard only.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostValues {
    values: [u64; HostMetric::ALL.len()],
    /// Frames in the fullest send queue (dashboard).
    pub largest_queue_frames: u64,
    /// Frames and bytes the host wrote and bytes it read (added to the
    /// guest's counters).
    pub frames_out: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

impl HostValues {
    pub fn get(&self, m: HostMetric) -> u64 {
        self.values[m as usize]
    }

    pub fn set(&mut self, m: HostMetric, v: u64) -> &mut Self {
        self.values[m as usize] = v;
        self
    }
}

/// The last samples the dashboard reads.
struct Sample {
    at: Instant,
    messages_in: u64,
    messages_out: u64,
    bytes_in: u64,
    bytes_out: u64,
    store_ops: u64,
    fanout: Vec<u64>,
    store: Vec<u64>,
}

/// All metrics of a node.
pub struct Metrics {
    values: Vec<AtomicI64>,
    series: Vec<Series>,
    /// What each live process has added to the gauges, by process id, so a
    /// process that dies without taking its share back (a crashed session
    /// or channel) is taken out of the gauges.
    gauge_shares: Mutex<HashMap<u64, HashMap<u32, i64>>>,
    samples: Mutex<VecDeque<Sample>>,
    started: SystemTime,
    node: String,
}

const STORE_SERIES: [Histogram; 4] = [
    Histogram::StoreAppend,
    Histogram::StoreHistory,
    Histogram::StoreGetRoomState,
    Histogram::StorePutRoomState,
];

impl Metrics {
    pub fn new(node: &str) -> Metrics {
        Metrics {
            values: Metric::ALL.iter().map(|_| AtomicI64::new(0)).collect(),
            series: Histogram::ALL.iter().map(|h| Series::new(*h)).collect(),
            gauge_shares: Mutex::new(HashMap::new()),
            samples: Mutex::new(VecDeque::new()),
            started: SystemTime::now(),
            node: node.to_string(),
        }
    }

    /// Adds `delta` to a counter or gauge on behalf of `process`.
    pub fn add(&self, process: u64, m: Metric, delta: i64) {
        self.values[m as usize].fetch_add(delta, Ordering::Relaxed);
        if m.kind() != Kind::Gauge {
            return;
        }
        if let Ok(mut shares) = self.gauge_shares.lock() {
            let mine = shares.entry(process).or_default();
            *mine.entry(m as u32).or_default() += delta;
            mine.retain(|_, v| *v != 0);
            if mine.is_empty() {
                shares.remove(&process);
            }
        }
    }

    /// Records one observation, in the series' raw unit (nanoseconds,
    /// bytes, frames).
    pub fn observe(&self, h: Histogram, raw: u64) {
        let s = &self.series[h as usize];
        s.buckets[h.bucket_of(raw)].fetch_add(1, Ordering::Relaxed);
        s.sum.fetch_add(raw, Ordering::Relaxed);
    }

    /// Takes the gauge shares of processes `alive` says are gone out of the
    /// gauges.
    pub fn release_dead(&self, alive: impl Fn(u64) -> bool) {
        let Ok(mut shares) = self.gauge_shares.lock() else {
            return;
        };
        shares.retain(|process, mine| {
            if alive(*process) {
                return true;
            }
            for (index, share) in mine.iter() {
                self.values[*index as usize].fetch_sub(*share, Ordering::Relaxed);
            }
            false
        });
    }

    /// A metric's value as the guest recorded it (a gauge's level).
    pub fn recorded(&self, m: Metric) -> i64 {
        self.values[m as usize].load(Ordering::Relaxed)
    }

    fn value(&self, m: Metric, host: &HostValues) -> i64 {
        let own = self.recorded(m);
        // Socket reads and writes are counted by the host.
        match m {
            Metric::MessagesOut => own + host.frames_out as i64,
            Metric::BytesOut => own + host.bytes_out as i64,
            Metric::BytesIn => own + host.bytes_in as i64,
            _ => own,
        }
    }

    /// The exposition text of every metric; `store` holds the data
    /// service's request and backend-query counters by op label.
    pub fn render(&self, host: &HostValues, store: &[(&str, u64, u64)], format: Format) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape {
            values: Metric::ALL
                .iter()
                .map(|m| (*m, self.value(*m, host)))
                .collect(),
            series: Histogram::ALL
                .iter()
                .map(|h| {
                    let s = &self.series[*h as usize];
                    (*h, s.counts(), s.sum.load(Ordering::Relaxed))
                })
                .collect(),
            host: *host,
            store: store
                .iter()
                .map(|(op, r, q)| (op.to_string(), *r, *q))
                .collect(),
            process: procstat::read(),
        }));
        let mut out = String::new();
        let encoded = match format {
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            }
        };
        if let Err(e) = encoded {
            tracing::error!("encoding metrics failed: {e}");
        }
        out
    }

    /// Remembers this second's counters (call once a second).
    pub fn sample(&self, host: &HostValues) {
        let store_counts = STORE_SERIES
            .iter()
            .map(|h| self.series[*h as usize].counts())
            .fold(Vec::new(), add_counts);
        let sample = Sample {
            at: Instant::now(),
            messages_in: self.value(Metric::MessagesIn, host).max(0) as u64,
            messages_out: self.value(Metric::MessagesOut, host).max(0) as u64,
            bytes_in: self.value(Metric::BytesIn, host).max(0) as u64,
            bytes_out: self.value(Metric::BytesOut, host).max(0) as u64,
            store_ops: store_counts.iter().sum(),
            fanout: self.series[Histogram::FanoutLatency as usize].counts(),
            store: store_counts,
        };
        if let Ok(mut samples) = self.samples.lock() {
            samples.push_back(sample);
            while samples.len() > WINDOW + 1 {
                samples.pop_front();
            }
        }
    }

    /// The dashboard's JSON: what runs now, rates over the last second and
    /// latency quantiles over the last few seconds.
    pub fn stats(&self, host: &HostValues) -> Value {
        let v = |m| self.value(m, host);
        let samples = self.samples.lock();
        let samples = samples.as_deref().ok();
        let newest = samples.and_then(|s| s.back());
        // Rates: newest sample against the one before it.
        let prev = samples.and_then(|s| s.len().checked_sub(2).and_then(|i| s.get(i)));
        let rate = |f: fn(&Sample) -> u64| match (newest, prev) {
            (Some(a), Some(b)) => {
                let dt = a.at.duration_since(b.at).as_secs_f64();
                if dt > 0.0 {
                    (f(a).saturating_sub(f(b)) as f64 / dt * 10.0).round() / 10.0
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        // Quantiles: newest sample against the oldest in the window.
        let oldest = samples.and_then(|s| s.front());
        let recent = |h: Histogram, f: fn(&Sample) -> &Vec<u64>| -> Value {
            let (Some(a), Some(b)) = (newest, oldest) else {
                return json!({"p50_ms": null, "p99_ms": null, "count": 0});
            };
            let delta: Vec<u64> = f(a)
                .iter()
                .zip(f(b).iter().chain(std::iter::repeat(&0)))
                .map(|(x, y)| x.saturating_sub(*y))
                .collect();
            let ms = |q| {
                metrics::quantile(q, h.bounds(), &delta)
                    .map(|raw| (raw / h.scale() * 1e5).round() / 100.0)
            };
            json!({"p50_ms": ms(0.5), "p99_ms": ms(0.99), "count": delta.iter().sum::<u64>()})
        };
        let window_s = match (newest, oldest) {
            (Some(a), Some(b)) => a.at.duration_since(b.at).as_secs(),
            _ => 0,
        };
        let uptime = self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
        let process = procstat::read();
        json!({
            "node": self.node,
            "version": VERSION,
            "uptime_s": uptime,
            "now_ms": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            "sessions": v(Metric::SessionsActive),
            "channels": v(Metric::ChannelsActive),
            "peak_channels": v(Metric::PeakChannels),
            "processes": host.get(HostMetric::Processes),
            "messages_in_per_s": rate(|s| s.messages_in),
            "messages_out_per_s": rate(|s| s.messages_out),
            "bytes_in_per_s": rate(|s| s.bytes_in),
            "bytes_out_per_s": rate(|s| s.bytes_out),
            "messages_in_total": v(Metric::MessagesIn),
            "messages_out_total": v(Metric::MessagesOut),
            "store": {
                "ops_per_s": rate(|s| s.store_ops),
                "in_flight": host.get(HostMetric::StoreInFlight),
                "latency": recent(Histogram::StoreAppend, |s| &s.store),
            },
            "fanout_latency": recent(Histogram::FanoutLatency, |s| &s.fanout),
            "window_s": window_s,
            "restarts": host.get(HostMetric::Restarts),
            "queues": {
                "sockets": host.get(HostMetric::Sockets),
                "queued_frames": host.get(HostMetric::QueuedFrames),
                "largest_queue_frames": host.largest_queue_frames,
                "store_in_flight": host.get(HostMetric::StoreInFlight),
            },
            "refusals": {
                "slow_consumers": host.get(HostMetric::SlowConsumers),
                "rate_limited": v(Metric::RateLimited),
                "protocol_errors": v(Metric::ProtocolErrors),
            },
            "memory": {
                "rss_bytes": process.as_ref().map(|p| p.resident_bytes),
                "open_fds": process.as_ref().map(|p| p.open_fds),
            },
        })
    }
}

fn add_counts(mut acc: Vec<u64>, counts: Vec<u64>) -> Vec<u64> {
    if acc.is_empty() {
        return counts;
    }
    for (a, c) in acc.iter_mut().zip(counts) {
        *a += c;
    }
    acc
}

/// One scrape: the atomics read into owned values, plus what the host read
/// for it (a collector must own its data).
#[derive(Debug)]
struct Scrape {
    values: Vec<(Metric, i64)>,
    /// Per series: per-bucket counts and the raw sum.
    series: Vec<(Histogram, Vec<u64>, u64)>,
    host: HostValues,
    store: Vec<(String, u64, u64)>,
    process: Option<procstat::ProcessStats>,
}

impl Collector for Scrape {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_all(self, encoder)
    }
}

fn counter<V>(e: &mut DescriptorEncoder, name: &str, help: &str, v: V) -> std::fmt::Result
where
    ConstCounter<V>: EncodeMetric,
{
    let family = name.strip_suffix("_total").unwrap_or(name);
    ConstCounter::new(v).encode(e.encode_descriptor(family, help, None, MetricType::Counter)?)
}

fn gauge<V>(e: &mut DescriptorEncoder, name: &str, help: &str, v: V) -> std::fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn encode_all(s: &Scrape, mut e: DescriptorEncoder) -> std::fmt::Result {
    let h = &s.host;
    e.encode_descriptor(
        "chorus_build_info",
        "Versions of this node: chorus, the lunatic crates and wasmtime it embeds (value 1)",
        None,
        MetricType::Gauge,
    )?
    .encode_family(&[
        ("version", VERSION),
        ("lunatic", LUNATIC_VERSION),
        ("wasmtime", WASMTIME_VERSION),
    ])?
    .encode_gauge(&1i64)?;
    for (metric, v) in &s.values {
        match metric.kind() {
            Kind::Counter => counter(&mut e, metric.name(), metric.help(), (*v).max(0) as u64)?,
            Kind::Gauge => gauge(&mut e, metric.name(), metric.help(), *v)?,
        }
    }
    for m in HostMetric::ALL {
        match (m.label(), m.kind()) {
            (None, Kind::Counter) => counter(&mut e, m.name(), m.help(), h.get(*m))?,
            (None, Kind::Gauge) => gauge(&mut e, m.name(), m.help(), h.get(*m))?,
            // The data service's counters, one series per operation; none
            // without a data service.
            (Some(label), _) if !s.store.is_empty() => {
                let family = m.name().strip_suffix("_total").unwrap_or(m.name());
                let mut enc = e.encode_descriptor(family, m.help(), None, MetricType::Counter)?;
                for (op, requests, queries) in &s.store {
                    let v = match m {
                        HostMetric::StoreBackendQueries => *queries,
                        _ => *requests,
                    };
                    ConstCounter::new(v).encode(enc.encode_family(&[(label, op.as_str())])?)?;
                }
            }
            (Some(_), _) => {}
        }
    }
    // Histograms: series sharing a name are one family.
    let mut done: Vec<&str> = Vec::new();
    for (hist, _, _) in &s.series {
        if done.contains(&hist.name()) {
            continue;
        }
        done.push(hist.name());
        let mut enc = e.encode_descriptor(hist.name(), hist.help(), None, MetricType::Histogram)?;
        for (member, counts, sum) in s.series.iter().filter(|x| x.0.name() == hist.name()) {
            let scale = member.scale();
            let buckets: Vec<(f64, u64)> = counts
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let bound = member
                        .bounds()
                        .get(i)
                        .map_or(f64::INFINITY, |b| *b as f64 / scale);
                    (bound, *n)
                })
                .collect();
            let count = counts.iter().sum();
            let sum = *sum as f64 / scale;
            match member.label() {
                Some(label) => enc
                    .encode_family(&[label])?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?,
                None => enc.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?,
            }
        }
    }
    if let Some(p) = &s.process {
        counter(
            &mut e,
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds",
            p.cpu_seconds,
        )?;
        gauge(
            &mut e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            p.resident_bytes,
        )?;
        gauge(
            &mut e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            p.virtual_bytes,
        )?;
        gauge(
            &mut e,
            "process_open_fds",
            "Number of open file descriptors",
            p.open_fds,
        )?;
        gauge(
            &mut e,
            "process_max_fds",
            "Maximum number of open file descriptors",
            p.max_fds,
        )?;
        gauge(
            &mut e,
            "process_threads",
            "Number of OS threads in the process",
            p.threads,
        )?;
        gauge(
            &mut e,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            p.start_time_seconds,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn prometheus_text_names_counters_with_total_and_types_every_family() {
        let m = Metrics::new("n1");
        m.add(1, Metric::SessionsTotal, 3);
        m.add(1, Metric::SessionsActive, 2);
        let mut host = HostValues::default();
        host.set(HostMetric::Processes, 9)
            .set(HostMetric::Restarts, 4);
        let text = m.render(&host, &[("append", 5, 4)], Format::Prometheus);
        assert!(
            text.contains("# TYPE chorus_sessions_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nchorus_sessions_total 3\n"), "{text}");
        assert!(
            text.contains("# TYPE chorus_sessions_open gauge\n"),
            "{text}"
        );
        assert!(text.contains("\nchorus_sessions_open 2\n"), "{text}");
        assert!(text.contains("\nchorus_restarts_total 4\n"), "{text}");
        assert!(
            text.contains("chorus_store_requests_total{op=\"append\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("chorus_build_info{version=\""), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
        // Every sample belongs to a family announced by a TYPE line.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap_or_default();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| text.contains(&format!("# TYPE {f} histogram\n")))
                .unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "{l}\n{text}");
        }
    }

    #[test]
    fn every_declared_host_and_process_metric_is_rendered() {
        let m = Metrics::new("n1");
        let text = m.render(
            &HostValues::default(),
            &[("append", 1, 1)],
            Format::Prometheus,
        );
        let names = HostMetric::ALL
            .iter()
            .map(|h| h.name())
            .chain(metrics::PROCESS_METRICS.iter().copied());
        for name in names {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(&format!("{name} "))
                        || l.starts_with(&format!("{name}{{"))),
                "{name} missing in\n{text}"
            );
        }
    }

    #[test]
    fn openmetrics_text_ends_with_eof_and_uses_family_names() {
        let m = Metrics::new("n1");
        let text = m.render(&HostValues::default(), &[], Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE chorus_sessions counter\n"), "{text}");
        assert!(text.contains("\nchorus_sessions_total 0\n"), "{text}");
        assert!(
            line(&text, "chorus_store_requests").is_none(),
            "no store without one"
        );
    }

    #[test]
    fn histograms_render_cumulative_buckets_in_base_units() {
        let m = Metrics::new("n1");
        m.observe(Histogram::FanoutLatency, 40_000); // 40 µs
        m.observe(Histogram::FanoutLatency, 2_000_000); // 2 ms
        m.observe(Histogram::MessageSizeOut, 100);
        let text = m.render(&HostValues::default(), &[], Format::Prometheus);
        assert!(
            // The encoder writes small bounds in exponent form (valid for
            // Prometheus and promtool).
            text.contains("chorus_fanout_latency_seconds_bucket{le=\"5e-05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("chorus_fanout_latency_seconds_bucket{le=\"0.0025\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("chorus_fanout_latency_seconds_bucket{le=\"+Inf\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("chorus_fanout_latency_seconds_count 2\n"),
            "{text}"
        );
        assert!(
            text.contains("chorus_fanout_latency_seconds_sum 0.00204\n"),
            "{text}"
        );
        assert!(
            text.contains("chorus_message_size_bytes_count{direction=\"out\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("chorus_message_size_bytes_count{direction=\"in\"} 0\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE chorus_message_size_bytes histogram")
                .count(),
            1,
            "one family for both directions"
        );
    }

    #[test]
    fn gauge_shares_of_dead_processes_are_released() {
        let m = Metrics::new("n1");
        m.add(7, Metric::SessionsActive, 1);
        m.add(8, Metric::SessionsActive, 1);
        m.release_dead(|p| p == 8);
        let text = m.render(&HostValues::default(), &[], Format::Prometheus);
        assert!(text.contains("\nchorus_sessions_open 1\n"), "{text}");
    }

    #[test]
    fn stats_give_rates_and_recent_quantiles() {
        let m = Metrics::new("n1");
        let host = HostValues::default();
        m.sample(&host);
        std::thread::sleep(std::time::Duration::from_millis(100));
        m.add(1, Metric::MessagesIn, 50);
        for _ in 0..10 {
            m.observe(Histogram::StoreAppend, 1_500_000); // 1.5 ms
        }
        m.sample(&host);
        let s = m.stats(&host);
        let rate = s["messages_in_per_s"].as_f64().unwrap_or(0.0);
        assert!(rate > 100.0 && rate <= 500.0, "{s}");
        assert_eq!(s["store"]["latency"]["count"], 10, "{s}");
        let p50 = s["store"]["latency"]["p50_ms"].as_f64().unwrap_or(0.0);
        assert!((1.0..=2.5).contains(&p50), "{s}");
        assert_eq!(s["fanout_latency"]["p50_ms"], Value::Null, "{s}");
    }
}
