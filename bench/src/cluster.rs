//! The cluster scenarios (issue 14 item 8): a `chorus control` server and N
//! `chorus run` nodes on this machine, on the CQL store, loaded by the same
//! loader processes as the peer comparison. Client `id` connects to node
//! `id % N` (round robin, as a load balancer places connections), so the
//! members of a room sit on different nodes and most deliveries cross
//! nodes: from the publisher's node to the channel's home node, and from
//! there once per node to that node's relay.
//!
//! One result file per run (`cluster-<scenario>-<N>n-<time>.json`: the run's
//! figures summed over the nodes, each node's own, the machine's load);
//! `summary.md` next to them and the cluster section of BENCHMARKS.md are
//! rendered from those files by [`render`].

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::delay::Links;
use crate::driver::{self, RunResult, Target};
use crate::proto::System;
use crate::report::{self, fmt_num, Machine};
use crate::scenario::{Params, Scenario};
use crate::servers::{self, cpu_s, rss_kib, Paths, Server};

/// How the cluster is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `host:port` of the CQL store every node uses.
    pub cql: String,
    pub keyspace: String,
    /// The control server listens on `base_port`, node k (1-based) on
    /// `base_port + k`.
    pub base_port: u16,
    /// `cluster.node_timeout_ms`.
    pub node_timeout_ms: u64,
}

/// One run's record.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ClusterResult {
    pub nodes: usize,
    /// `git rev-parse --short HEAD` of the tree the bench ran in.
    pub commit: String,
    pub machine: Machine,
    pub load_at_start: String,
    pub load_at_end: String,
    /// `vm.max_map_count` during the run.
    pub max_map_count: u64,
    /// The control server's RSS at the end and CPU over the run.
    pub control_rss_kib: u64,
    pub control_cpu_s: f64,
    pub node_timeout_ms: u64,
    /// The machine's UDP counters (`/proc/net/snmp`) over the run, start of
    /// the cluster to its stop: the nodes talk QUIC over UDP, so receive
    /// buffer overflows show here (other programs' UDP counts too).
    #[serde(default)]
    pub udp: Udp,
    /// Simulated regions (`--regions`), `None` for a plain cluster run.
    /// Then `run.cross_node_*` count deliveries between clients of
    /// different regions, `run.same_node_*` within one region.
    #[serde(default)]
    pub regions: Option<RegionRun>,
    /// The run, its memory and CPU summed over the nodes (`per_server`
    /// holds each node's).
    pub run: RunResult,
}

/// How clients reach the channels in a regions run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RegionMode {
    /// Nodes in every region, clients on their own region's nodes.
    #[default]
    Regional,
    /// Nodes in region `a` only, the other regions' clients connect there.
    Home,
}

impl RegionMode {
    pub fn name(self) -> &'static str {
        match self {
            RegionMode::Regional => "regional",
            RegionMode::Home => "home",
        }
    }
}

impl std::str::FromStr for RegionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "regional" => Ok(RegionMode::Regional),
            "home" => Ok(RegionMode::Home),
            other => Err(format!("{other:?}: regional or home")),
        }
    }
}

/// A regions run's layout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct RegionRun {
    pub regions: u64,
    pub nodes_per_region: usize,
    /// The delay of each direction of an inter-region link (a round trip
    /// takes twice this).
    pub one_way_delay_ms: u64,
    pub mode: RegionMode,
    /// Datagrams the delaying proxies dropped (a full queue).
    #[serde(default)]
    pub proxy_dropped: u64,
}

/// Differences of the `Udp:` line of `/proc/net/snmp` over a run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct Udp {
    pub in_datagrams: u64,
    pub in_errors: u64,
    pub rcvbuf_errors: u64,
    pub sndbuf_errors: u64,
}

impl Udp {
    /// The counters now (zeros where they cannot be read).
    pub fn now() -> Udp {
        fs::read_to_string("/proc/net/snmp")
            .map(|t| Udp::parse(&t))
            .unwrap_or_default()
    }

    /// The `Udp:` counters of a `/proc/net/snmp` text.
    pub fn parse(snmp: &str) -> Udp {
        let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
            return Udp::default();
        };
        let get = |name: &str| {
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        Udp {
            in_datagrams: get("InDatagrams"),
            in_errors: get("InErrors"),
            rcvbuf_errors: get("RcvbufErrors"),
            sndbuf_errors: get("SndbufErrors"),
        }
    }

    /// `self - before`, counter by counter.
    pub fn since(self, before: Udp) -> Udp {
        Udp {
            in_datagrams: self.in_datagrams.saturating_sub(before.in_datagrams),
            in_errors: self.in_errors.saturating_sub(before.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(before.rcvbuf_errors),
            sndbuf_errors: self.sndbuf_errors.saturating_sub(before.sndbuf_errors),
        }
    }
}

impl ClusterResult {
    /// Share of the deliveries whose receiver is on another node than the
    /// publisher, in %.
    pub fn cross_node_pct(&self) -> f64 {
        if self.run.delivered == 0 {
            0.0
        } else {
            100.0 * self.run.cross_node_delivered as f64 / self.run.delivered as f64
        }
    }
}

/// A control server and its nodes, started by the bench.
pub struct Cluster {
    control: Child,
    control_pid: u32,
    control_dir: PathBuf,
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// Starts the control server and `n` nodes, and waits until every node
    /// lists all `n` and lunatic's own node list has caught up.
    pub fn start(paths: &Paths, n: usize, setup: &Setup) -> Result<Cluster, String> {
        Cluster::start_with(paths, n, setup, &|_| Vec::new())
    }

    /// [`Cluster::start`], node `k` (1-based) with `node_env(k)` besides.
    pub fn start_with(
        paths: &Paths,
        n: usize,
        setup: &Setup,
        node_env: &dyn Fn(usize) -> Vec<(String, String)>,
    ) -> Result<Cluster, String> {
        let bin = paths.chorus_bin();
        let control_dir = servers::named_temp_dir("control")?;
        let control_addr = SocketAddr::from(([127, 0, 0, 1], setup.base_port));
        let log = control_dir.join("control.log");
        let mut control = servers::spawn(
            &bin,
            &["control".to_string()],
            &[
                ("CHORUS_CLUSTER_INSECURE_LOCAL", "1".into()),
                ("CHORUS_CLUSTER_CONTROL_BIND", control_addr.to_string()),
                // Its table of nodes, kept across its restarts, is this
                // run's alone.
                ("CHORUS_DATA_DIR", control_dir.display().to_string()),
                (
                    "CHORUS_CLUSTER_NODE_TIMEOUT_MS",
                    setup.node_timeout_ms.to_string(),
                ),
                ("NO_COLOR", "1".into()),
            ],
            &log,
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&control_addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline || !matches!(control.try_wait(), Ok(None)) {
                let _ = control.kill();
                let _ = control.wait();
                return Err(format!(
                    "the control server did not listen on {control_addr}: {}",
                    servers::tail(&log, 5)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let control_pid = control.id();
        let mut cluster = Cluster {
            control,
            control_pid,
            control_dir,
            nodes: Vec::new(),
        };
        for k in 1..=n {
            let env = [
                ("CHORUS_NODE_NAME", format!("bench-{k}")),
                ("CHORUS_CONTROL", control_addr.to_string()),
                ("CHORUS_CLUSTER_INSECURE_LOCAL", "1".into()),
                (
                    "CHORUS_CLUSTER_NODE_TIMEOUT_MS",
                    setup.node_timeout_ms.to_string(),
                ),
                ("CHORUS_STORE", "scylla".into()),
                ("CHORUS_SCYLLA_NODES", setup.cql.clone()),
                ("CHORUS_STORE_KEYSPACE", setup.keyspace.clone()),
            ]
            .map(|(k, v)| (k.to_string(), v))
            .into_iter()
            .chain(node_env(k))
            .collect::<Vec<_>>();
            let port = setup.base_port + k as u16;
            match Server::start_chorus_node(paths, &format!("bench-{k}"), port, &env) {
                Ok(s) => cluster.nodes.push(s),
                Err(e) => {
                    cluster.stop();
                    return Err(format!("node bench-{k}: {e}"));
                }
            }
        }
        if let Err(e) = cluster.settle(n) {
            cluster.stop();
            return Err(e);
        }
        Ok(cluster)
    }

    fn settle(&self, n: usize) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let counts: Vec<Option<usize>> =
                self.nodes.iter().map(|s| members_seen(s.addr)).collect();
            if counts.iter().all(|c| *c == Some(n)) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the nodes did not all see {n} members within 90 s (each sees {counts:?})"
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        if n > 1 {
            // lunatic refreshes its own node list every 5 s; the placement
            // ring uses the members both know.
            std::thread::sleep(Duration::from_secs(6));
        }
        Ok(())
    }

    pub fn target(&self) -> Target {
        Target {
            addrs: self.nodes.iter().map(|s| s.addr).collect(),
            pids: self.nodes.iter().map(|s| s.pid).collect(),
            dial: Vec::new(),
        }
    }

    /// Nodes that exited, with the end of their logs.
    pub fn dead_nodes(&mut self) -> Vec<String> {
        self.nodes
            .iter_mut()
            .filter_map(|s| (!s.alive()).then(|| format!("{}: {}", s.addr, s.log_tail())))
            .collect()
    }

    pub fn stop(mut self) {
        for s in self.nodes.drain(..) {
            s.stop();
        }
        let _ = self.control.kill();
        let _ = self.control.wait();
        let _ = fs::remove_dir_all(&self.control_dir);
    }
}

/// How many members the node at `addr` lists in `/healthz`.
fn members_seen(addr: SocketAddr) -> Option<usize> {
    let body = http_get(addr, "/healthz")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v.get("cluster")?.get("nodes")?.as_array().map(Vec::len)
}

/// The body of `GET path` on `addr` (HTTP/1.1, `Connection: close`), any
/// status; `None` when it cannot be read within a few seconds.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        Some(body.to_string())
    }
}

/// A chunked HTTP/1.1 body, joined.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// The value of the unlabelled sample `name` in a Prometheus text page.
pub fn parse_metric(page: &str, name: &str) -> Option<u64> {
    page.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == name)
            .then(|| f.next()?.parse::<f64>().ok())
            .flatten()
            .map(|v| v as u64)
    })
}

/// The node at `addr`'s metric `name` (from its `/metrics`).
pub fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    parse_metric(&http_get(addr, "/metrics")?, name)
}

fn commit(root: &Path) -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn max_map_count() -> u64 {
    fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The scenarios a cluster run can drive.
pub fn supported(s: Scenario) -> bool {
    matches!(
        s,
        Scenario::ManyRooms | Scenario::FanOut | Scenario::ConnectStorm | Scenario::Idle
    )
}

/// One run of `params` on a fresh cluster of `n` nodes; always returns a
/// result (with `run.failure` set when something did not work).
pub fn run(paths: &Paths, params: &Params, n: usize, setup: &Setup) -> ClusterResult {
    run_in(paths, params, n, setup, None)
}

/// One run of `params` on simulated regions ([`RegionRun`]): `regional`
/// starts `nodes_per_region` nodes in each region, their QUIC links to the
/// other regions through delaying UDP proxies (`cluster.advertise`), and
/// clients connect to a node of their own region; `home` starts
/// `nodes_per_region` nodes in region `a` only (every channel's home) and
/// clients of the other regions connect to them through delaying TCP
/// proxies.
pub fn run_regions(paths: &Paths, params: &Params, rr: &RegionRun, setup: &Setup) -> ClusterResult {
    let n = match rr.mode {
        RegionMode::Regional => rr.nodes_per_region * rr.regions as usize,
        RegionMode::Home => rr.nodes_per_region,
    };
    let mut params = params.clone();
    params.regions = rr.regions;
    run_in(paths, &params, n, setup, Some(rr))
}

/// Region `i`'s label: `a`, `b`, …
fn region_label(i: usize) -> String {
    char::from(b'a' + (i % 26) as u8).to_string()
}

/// Starts the cluster of a regions run with its proxies: the cluster, the
/// addresses client `id` dials (`dial[id % len]`, region `id % regions`),
/// and the proxies (stopped when dropped).
fn start_regions(
    paths: &Paths,
    n: usize,
    setup: &Setup,
    rr: &RegionRun,
) -> Result<(Cluster, Vec<SocketAddr>, Links), String> {
    let links = Links::new()?;
    let delay = Duration::from_millis(rr.one_way_delay_ms);
    let regions = rr.regions as usize;
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let quic = |k: usize| at(setup.base_port + 100 + k as u16);
    let advertised = |k: usize| at(setup.base_port + 200 + k as u16);
    let cluster = match rr.mode {
        RegionMode::Regional => {
            for k in 1..=n {
                links.udp(advertised(k), quic(k), delay)?;
            }
            // Node k is in region (k - 1) % regions: the node list
            // alternates regions, so client `id` (node `id % n`) lands in
            // region `id % regions`.
            Cluster::start_with(paths, n, setup, &|k| {
                vec![
                    ("CHORUS_REGION".into(), region_label((k - 1) % regions)),
                    ("CHORUS_CLUSTER_BIND".into(), quic(k).to_string()),
                    ("CHORUS_CLUSTER_ADVERTISE".into(), advertised(k).to_string()),
                ]
            })?
        }
        RegionMode::Home => Cluster::start_with(paths, n, setup, &|_| {
            vec![("CHORUS_REGION".into(), region_label(0))]
        })?,
    };
    let dial = match rr.mode {
        RegionMode::Regional => Vec::new(),
        RegionMode::Home => {
            let mut dial = Vec::new();
            for (i, node) in cluster.nodes.iter().enumerate() {
                dial.push(node.addr);
                for r in 1..regions {
                    let proxy = at(setup.base_port + 300 + (i * regions + r) as u16);
                    if let Err(e) = links.tcp(proxy, node.addr, delay) {
                        cluster.stop();
                        return Err(e);
                    }
                    dial.push(proxy);
                }
            }
            dial
        }
    };
    Ok((cluster, dial, links))
}

fn run_in(
    paths: &Paths,
    params: &Params,
    n: usize,
    setup: &Setup,
    regions: Option<&RegionRun>,
) -> ClusterResult {
    let mut c = ClusterResult {
        nodes: n,
        regions: regions.cloned(),
        commit: commit(&paths.root),
        machine: Machine::here(),
        load_at_start: report::loadavg(),
        max_map_count: max_map_count(),
        node_timeout_ms: setup.node_timeout_ms,
        run: RunResult {
            system: Some(System::Chorus),
            params: Some(params.clone()),
            started_at: crate::payload::now_ns() / 1_000_000_000,
            sessions_requested: params.clients,
            ..RunResult::default()
        },
        ..ClusterResult::default()
    };
    eprintln!(
        "== chorus on {n} node(s) {}: {}",
        params.scenario,
        params.describe()
    );
    let udp = Udp::now();
    let started = match regions {
        None => Cluster::start(paths, n, setup).map(|cl| (cl, Vec::new(), None)),
        Some(rr) => {
            start_regions(paths, n, setup, rr).map(|(cl, dial, links)| (cl, dial, Some(links)))
        }
    };
    let (mut cluster, dial, links) = match started {
        Ok(cl) => cl,
        Err(e) => {
            c.run.failure = Some(format!("cluster did not start: {e}"));
            eprintln!(
                "   failed: {}",
                c.run.failure.as_deref().unwrap_or_default()
            );
            c.load_at_end = report::loadavg();
            return c;
        }
    };
    c.run.version = cluster
        .nodes
        .first()
        .map(|s| s.version.clone())
        .unwrap_or_default();
    let control_cpu = cpu_s(cluster.control_pid);
    let mut target = cluster.target();
    target.dial = dial;
    driver::measure(&mut c.run, &target, params);
    c.control_rss_kib = rss_kib(cluster.control_pid).unwrap_or(0);
    if let (Some(a), Some(b)) = (control_cpu, cpu_s(cluster.control_pid)) {
        c.control_cpu_s = b - a;
    }
    let dead = cluster.dead_nodes();
    if c.run.failure.is_none() && !dead.is_empty() {
        c.run.failure = Some(format!(
            "node(s) exited during the run: {}",
            dead.join("; ")
        ));
    }
    cluster.stop();
    if let (Some(rr), Some(links)) = (c.regions.as_mut(), links) {
        rr.proxy_dropped = links.dropped.load(std::sync::atomic::Ordering::Relaxed);
    }
    c.udp = Udp::now().since(udp);
    c.load_at_end = report::loadavg();
    let r = &c.run;
    match &r.failure {
        None => eprintln!(
            "   done: {} sessions on {n} nodes ({:.0}/s), {:.0} deliveries/s ({:.2}%), p50 {:.1} ms p99 {:.1} ms, {} {:.1}%, {:.1} KiB/session (PSS {:.1}), {:.2} µs CPU/delivery",
            r.sessions_joined,
            r.sessions_per_s,
            r.deliveries_per_s,
            r.delivered_pct,
            r.latency.p50_ms,
            r.latency.p99_ms,
            // A regions run's "cross" deliveries are those between regions.
            if c.regions.is_some() { "cross-region" } else { "cross-node" },
            c.cross_node_pct(),
            r.rss_per_session_kib,
            r.pss_per_session_kib,
            r.cpu_us_per_delivery
        ),
        Some(f) => eprintln!("   failed: {f}"),
    }
    eprintln!(
        "   UDP over the run: {} datagrams in, {} receive errors ({} receive-buffer overflows), {} send-buffer errors",
        c.udp.in_datagrams, c.udp.in_errors, c.udp.rcvbuf_errors, c.udp.sndbuf_errors
    );
    c
}

/// Writes `c` as `<out>/cluster-<scenario>-<N>n-<time>.json`.
pub fn save(out: &Path, c: &ClusterResult) -> Result<PathBuf, String> {
    fs::create_dir_all(out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let scenario = c
        .run
        .params
        .as_ref()
        .map_or("unknown", |p| p.scenario.name());
    let mode = c.regions.as_ref().map_or(String::new(), |r| {
        format!("-{}r-{}", r.regions, r.mode.name())
    });
    let path = out.join(format!(
        "cluster-{scenario}-{}n{mode}-{}.json",
        c.nodes,
        report::suite_id_now()
    ));
    let json = serde_json::to_string_pretty(c).map_err(|e| e.to_string())?;
    fs::write(&path, json + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Every `cluster-*.json` in `dir`, by name (so by time).
pub fn load_dir(dir: &Path) -> Vec<(String, ClusterResult)> {
    let mut v: Vec<(String, ClusterResult)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if !(name.starts_with("cluster-") && name.ends_with(".json")) {
                return None;
            }
            let text = fs::read_to_string(e.path()).ok()?;
            Some((name, serde_json::from_str(&text).ok()?))
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The newest `cluster-scale-*` directory in `out`.
/// The tables of the runs in `dir` (the newest results directory of a
/// kind), or why there are none; `say_empty`: an empty directory says so
/// instead of rendering empty tables.
fn newest_results(dir: Option<PathBuf>, root: &Path, say_empty: bool) -> String {
    let Some(dir) = dir else {
        return "Not run yet: no results directory.\n".to_string();
    };
    let results = load_dir(&dir);
    let rel = dir.strip_prefix(root).unwrap_or(&dir);
    if say_empty && results.is_empty() {
        return format!("No results in `{}` yet.\n", rel.display());
    }
    let mut md = format!(
        "From `{}/` (its README.md says how each was run):\n\n",
        rel.display()
    );
    md.push_str(&render(&results));
    md
}

pub fn newest_dir(out: &Path) -> Option<PathBuf> {
    newest_named(out, "cluster-scale-")
}

/// The newest directory in `out` whose name starts with `prefix`.
fn newest_named(out: &Path, prefix: &str) -> Option<PathBuf> {
    fs::read_dir(out)
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .max()
        .map(|n| out.join(n))
}

fn mib(kib: u64) -> String {
    fmt_num(kib as f64 / 1024.0, 0)
}

/// The Markdown tables of `results`: one table per load, one row per run,
/// then each node's share for the largest run of each load.
pub fn render(results: &[(String, ClusterResult)]) -> String {
    let (regions, results): (Vec<_>, Vec<_>) = results
        .iter()
        .cloned()
        .partition(|(_, c)| c.regions.is_some());
    let mut md = render_regions(&regions);
    let results = results.as_slice();
    let mut loads: Vec<String> = Vec::new();
    for (_, c) in results {
        if let Some(p) = &c.run.params {
            let l = format!("{}: {}", p.scenario, p.describe());
            if !loads.contains(&l) {
                loads.push(l);
            }
        }
    }
    for load in &loads {
        let runs: Vec<&(String, ClusterResult)> = results
            .iter()
            .filter(|(_, c)| {
                c.run
                    .params
                    .as_ref()
                    .is_some_and(|p| &format!("{}: {}", p.scenario, p.describe()) == load)
            })
            .collect();
        let _ = writeln!(md, "#### {load}\n");
        md.push_str(
            "| run | nodes | sessions joined | connect (sessions/s) | delivered | deliveries/s | p50 (ms) | p99 (ms) | cross-node deliveries | cross-node p50 / p99 (ms) | same-node p50 / p99 (ms) | RSS per session (KiB) | PSS per session (KiB) | server CPU per delivery (µs) | nodes' RSS / PSS with the load (MiB) | load avg start → end | commit |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        let mut notes = Vec::new();
        for (file, c) in &runs {
            let r = &c.run;
            if let (Some(f), true) = (&r.failure, r.sessions_joined > 0) {
                // The sessions joined: their figures stand, the failure
                // (say, too few deliveries) is said under the table.
                notes.push(format!("`{file}` did not pass: {}", report::cell_escape(f)));
            } else if let Some(f) = &r.failure {
                let _ = writeln!(
                    md,
                    "| `{file}` | {} | did not run: {} |||||||||||||| {} → {} | {} |",
                    c.nodes,
                    report::cell_escape(f),
                    c.load_at_start,
                    c.load_at_end,
                    c.commit
                );
                continue;
            }
            let publishes = r.params.as_ref().is_some_and(|p| p.scenario.publishes());
            let dash = || "—".to_string();
            let _ = writeln!(
                md,
                "| `{file}` | {} | {} of {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} | {} → {} | {} |",
                c.nodes,
                fmt_num(r.sessions_joined as f64, 0),
                fmt_num(r.sessions_requested as f64, 0),
                if r.rejoins > 0 {
                    format!(" ({} joins retried)", fmt_num(r.rejoins as f64, 0))
                } else {
                    String::new()
                },
                fmt_num(r.sessions_per_s, 0),
                if publishes { format!("{:.2} %", r.delivered_pct) } else { dash() },
                if publishes { fmt_num(r.deliveries_per_s, 0) } else { dash() },
                if publishes { fmt_num(r.latency.p50_ms, 1) } else { dash() },
                if publishes { fmt_num(r.latency.p99_ms, 1) } else { dash() },
                if publishes && c.nodes > 1 { format!("{:.1} %", c.cross_node_pct()) } else { dash() },
                if r.cross_node_delivered > 0 {
                    format!("{} / {}", fmt_num(r.cross_node_latency.p50_ms, 1), fmt_num(r.cross_node_latency.p99_ms, 1))
                } else { dash() },
                if r.same_node_latency.count > 0 {
                    format!("{} / {}", fmt_num(r.same_node_latency.p50_ms, 1), fmt_num(r.same_node_latency.p99_ms, 1))
                } else { dash() },
                fmt_num(r.rss_per_session_kib, 1),
                fmt_num(r.pss_per_session_kib, 1),
                if publishes { fmt_num(r.cpu_us_per_delivery, 2) } else { dash() },
                mib(r.rss_connected_kib),
                mib(r.pss_connected_kib),
                c.load_at_start,
                c.load_at_end,
                c.commit
            );
        }
        md.push('\n');
        for n in &notes {
            let _ = writeln!(md, "* {n}");
        }
        if !notes.is_empty() {
            md.push('\n');
        }
        let biggest = runs
            .iter()
            .filter(|(_, c)| c.run.sessions_joined > 0 && !c.run.per_server.is_empty())
            .max_by_key(|(_, c)| (c.nodes, c.run.sessions_joined));
        if let Some((file, c)) = biggest {
            let _ = writeln!(
                md,
                "Each node in `{file}` (sessions as the loaders placed them and as the node's own `chorus_sockets` gauge counted them once all had joined, the `/metrics` request included; CPU while joining and while publishing):\n"
            );
            md.push_str("| node | sessions joined | `chorus_sockets` | RSS before → with the load (MiB) | PSS before → with the load (MiB) | CPU joining (s) | CPU publishing (s) |\n|---|---|---|---|---|---|---|\n");
            for f in &c.run.per_server {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} → {} | {} → {} | {} | {} |",
                    f.addr,
                    fmt_num(f.sessions_joined as f64, 0),
                    f.sockets_reported
                        .map_or("—".to_string(), |v| fmt_num(v as f64, 0)),
                    mib(f.rss_baseline_kib),
                    mib(f.rss_connected_kib),
                    mib(f.pss_baseline_kib),
                    mib(f.pss_connected_kib),
                    fmt_num(f.cpu_connect_s, 1),
                    fmt_num(f.cpu_publish_s, 1)
                );
            }
            md.push('\n');
        }
    }
    md
}

/// The regions runs: one table per load, a row per run, regional and home
/// side by side.
fn render_regions(results: &[(String, ClusterResult)]) -> String {
    let mut md = String::new();
    let mut loads: Vec<String> = Vec::new();
    for (_, c) in results {
        if let (Some(p), Some(rr)) = (&c.run.params, &c.regions) {
            let l = format!(
                "{}: {}; {} regions, {} ms one-way between regions",
                p.scenario,
                p.describe(),
                rr.regions,
                rr.one_way_delay_ms
            );
            if !loads.contains(&l) {
                loads.push(l);
            }
        }
    }
    for load in &loads {
        let _ = writeln!(md, "#### {load}\n");
        md.push_str(
            "| run | clients connect to | nodes | sessions joined | delivered | p50 / p99 (ms) | cross-region deliveries | cross-region p50 / p99 (ms) | same-region p50 / p99 (ms) | server CPU per delivery (µs) | proxy drops | load avg start → end | commit |\n\
             |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for (file, c) in results {
            let (Some(p), Some(rr)) = (&c.run.params, &c.regions) else {
                continue;
            };
            let l = format!(
                "{}: {}; {} regions, {} ms one-way between regions",
                p.scenario,
                p.describe(),
                rr.regions,
                rr.one_way_delay_ms
            );
            if &l != load {
                continue;
            }
            let r = &c.run;
            let mode = match rr.mode {
                RegionMode::Regional => {
                    format!("their region's nodes ({} per region)", rr.nodes_per_region)
                }
                RegionMode::Home => "the home region's nodes (region a only)".to_string(),
            };
            let pair = |l: &crate::stats::Latency| {
                if l.count > 0 {
                    format!("{} / {}", fmt_num(l.p50_ms, 1), fmt_num(l.p99_ms, 1))
                } else {
                    "—".to_string()
                }
            };
            let failure = r.failure.as_ref().map_or(String::new(), |f| {
                format!(" (failed: {})", report::cell_escape(f))
            });
            let _ = writeln!(
                md,
                "| `{file}` | {mode} | {} | {} of {}{failure} | {:.2} % | {} / {} | {:.1} % | {} | {} | {} | {} | {} → {} | {} |",
                c.nodes,
                fmt_num(r.sessions_joined as f64, 0),
                fmt_num(r.sessions_requested as f64, 0),
                r.delivered_pct,
                fmt_num(r.latency.p50_ms, 1),
                fmt_num(r.latency.p99_ms, 1),
                c.cross_node_pct(),
                pair(&r.cross_node_latency),
                pair(&r.same_node_latency),
                fmt_num(r.cpu_us_per_delivery, 2),
                rr.proxy_dropped,
                c.load_at_start,
                c.load_at_end,
                c.commit
            );
        }
        md.push('\n');
    }
    md
}

/// `summary.md` in `dir`, from its result files.
pub fn write_summary(dir: &Path) -> Result<PathBuf, String> {
    let results = load_dir(dir);
    let mut md = String::from(
        "# Cluster runs\n\n<!-- Generated by `chorus-bench cluster` from the cluster-*.json files here. Do not edit by hand. -->\n\n",
    );
    md.push_str(&render(&results));
    let path = dir.join("summary.md");
    fs::write(&path, md).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// BENCHMARKS.md's cluster section, from the newest `cluster-scale-*`
/// directory under `out`.
pub fn benchmarks_section(out: &Path, root: &Path) -> String {
    let mut md = String::from("\n## Cluster: many nodes on one machine\n\n");
    md.push_str(
        "Reproduce (needs the CQL store: `scripts/cassandra.sh start`; takes the machine for ten minutes, so it is not in `scripts/bench.sh`): \
`target/release/chorus-bench cluster --nodes 6 --scenario many-rooms --rooms 10000 --members 10 --room-rate 1 --duration 30 --connect-concurrency 16 --connect-timeout 600` \
and `target/release/chorus-bench cluster --nodes 3,1 --scenario fan-out --subscribers 5000 --rate 50 --duration 10 --repeat 2`. \
A control server and N nodes on the CQL store; loader processes (at most 5,000 clients each) connect from their own 127.0.0.x; \
client `id` goes to node `id % N` (round robin), so a room's members sit on different nodes. *Cross-node deliveries*: the receiver's \
node is not the publisher's. Memory and CPU are summed over the nodes (the control server's are in the files). A join refused \
with a reason that says to retry is sent again after 1, 2, 5, 10 s, as realtime-js rejoins (counted as *joins retried*).\n\n",
    );
    md.push_str(&newest_results(newest_dir(out), root, true));
    md.push_str("\n## Cluster: two simulated regions\n\n");
    md.push_str(
        "Reproduce (needs the CQL store): `target/release/chorus-bench cluster --regions 2 --nodes 2 --scenario many-rooms --rooms 200 --members 10 --room-rate 1 --duration 20 --repeat 2`. \
Client `id` lives in region `id % 2`, so each room has members in both. *Regional*: two nodes per region, each node's QUIC links to the other region through a delaying UDP proxy in the bench \
(`cluster.advertise`), clients on a node of their own region, a channel's fan-out crosses to the other region once. *Home*: the same number of nodes in region a only (every channel's home), \
clients of region b connect to them through a delaying TCP proxy. The delay is one-way per direction (a round trip between regions is twice it). \
*Cross-region*: publisher and receiver in different regions.\n\n",
    );
    md.push_str(&newest_results(newest_named(out, "regions-"), root, false));
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::ServerFigures;
    use crate::stats::Latency;

    #[test]
    fn metrics_page_and_chunked_bodies_parse() {
        let page = "# HELP chorus_sockets x\n# TYPE chorus_sockets gauge\nchorus_sockets 16667\nchorus_sockets_total{a=\"b\"} 3\n";
        assert_eq!(parse_metric(page, "chorus_sockets"), Some(16_667));
        assert_eq!(parse_metric(page, "chorus_nope"), None);
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_deref(),
            Some("hello world")
        );
        assert_eq!(dechunk("zz\r\nhello"), None);
    }

    #[test]
    fn udp_counters_parse_and_subtract() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors\nUdp: 100 2 7 90 5 1 0\nUdpLite: InDatagrams NoPorts InErrors\nUdpLite: 9 9 9\n";
        let after = Udp::parse(snmp);
        assert_eq!(
            after,
            Udp {
                in_datagrams: 100,
                in_errors: 7,
                rcvbuf_errors: 5,
                sndbuf_errors: 1
            }
        );
        let before = Udp {
            in_datagrams: 40,
            in_errors: 2,
            rcvbuf_errors: 5,
            sndbuf_errors: 0,
        };
        assert_eq!(
            after.since(before),
            Udp {
                in_datagrams: 60,
                in_errors: 5,
                rcvbuf_errors: 0,
                sndbuf_errors: 1
            }
        );
        assert_eq!(Udp::parse("nothing"), Udp::default());
    }

    #[test]
    fn render_shows_figures_failures_and_each_node() {
        let ok = ClusterResult {
            nodes: 6,
            commit: "abc1234".into(),
            load_at_start: "1.00 1.00 1.00".into(),
            load_at_end: "5.00 3.00 2.00".into(),
            run: RunResult {
                params: Some(Params::many_rooms(10_000, 10, 0.1, 30.0)),
                sessions_requested: 100_000,
                sessions_joined: 100_000,
                delivered: 1_000,
                cross_node_delivered: 830,
                delivered_pct: 99.5,
                latency: Latency {
                    p50_ms: 12.0,
                    p99_ms: 250.0,
                    ..Latency::default()
                },
                per_server: vec![ServerFigures {
                    addr: "127.0.0.1:47501".into(),
                    sessions_joined: 16_667,
                    sockets_reported: Some(16_667),
                    ..ServerFigures::default()
                }],
                ..RunResult::default()
            },
            ..ClusterResult::default()
        };
        let mut failed = ok.clone();
        failed.nodes = 7;
        failed.run.sessions_joined = 0;
        failed.run.failure = Some("node(s) exited | during the run".into());
        let mut slow = ok.clone();
        slow.run.failure = Some("delivered 3 of 900 expected messages (0.33%)".into());
        let md = render(&[
            ("a.json".into(), ok),
            ("b.json".into(), failed),
            ("c.json".into(), slow),
        ]);
        assert!(md.contains("| `c.json` | 6 | 100,000 of 100,000 |"), "{md}");
        assert!(
            md.contains("* `c.json` did not pass: delivered 3 of 900 expected messages (0.33%)"),
            "{md}"
        );
        assert!(md.contains("| `a.json` | 6 | 100,000 of 100,000 |"), "{md}");
        assert!(md.contains("| 99.50 % |"), "{md}");
        assert!(md.contains("| 83.0 % |"), "{md}");
        assert!(md.contains("| 12.0 | 250.0 |"), "{md}");
        assert!(
            md.contains("| `b.json` | 7 | did not run: node(s) exited \\| during the run"),
            "{md}"
        );
        assert!(md.contains("| 127.0.0.1:47501 | 16,667 | 16,667 |"), "{md}");
        assert_eq!(md.matches("#### many-rooms").count(), 1, "{md}");
    }
}
