//! What the two kinds of loader process share (the peer comparison's
//! `worker` and the room scenarios' `room-worker`): on the driver's side,
//! starting them, reading their JSON lines and stopping them; on the
//! loader's side, the runtime, the join accounting and the lines.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Interval};

use crate::stats;
use crate::ws::WsConn;

/// A loader process, as the driver holds it.
pub struct LoaderProc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl LoaderProc {
    /// Starts this binary as `<command> <spec JSON>`; a thread sends each
    /// of its stdout lines that parses as an `L` to `tx`, tagged with `i`.
    pub fn start<S, L>(
        command: &str,
        spec: &S,
        i: usize,
        tx: &mpsc::Sender<(usize, L)>,
    ) -> Result<LoaderProc, String>
    where
        S: Serialize,
        L: DeserializeOwned + Send + 'static,
    {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let json = serde_json::to_string(spec).map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .arg(command)
            .arg(json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start loader process: {e}"))?;
        let stdin = child.stdin.take();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(l) = serde_json::from_str::<L>(&line) {
                        if tx.send((i, l)).is_err() {
                            break;
                        }
                    }
                }
            });
        }
        Ok(LoaderProc { child, stdin })
    }

    /// Writes one control word to the loader's stdin.
    pub fn say(&mut self, word: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = writeln!(stdin, "{word}");
            let _ = stdin.flush();
        }
    }
}

/// Closes the loaders' stdin (they stop), waits for them a while, then
/// kills whatever is left.
pub fn kill_all(procs: &mut [LoaderProc]) {
    for w in procs.iter_mut() {
        w.stdin = None;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for w in procs.iter_mut() {
        while Instant::now() < deadline {
            if !matches!(w.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = w.child.kill();
        let _ = w.child.wait();
    }
}

/// Loader `k`'s own loopback address, so no single address runs out of
/// ephemeral ports (~28k each).
pub fn loopback(k: usize) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (k % 250) as u8)))
}

pub fn merge_errors(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// The most frequent error with its count, or nothing.
pub fn top_error(errors: &BTreeMap<String, u64>) -> String {
    errors
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(k, n)| format!("{k} (×{n})"))
        .unwrap_or_default()
}

/// The `ready` line: the join phase's outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ready {
    pub joined: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub join_hist: String,
    /// Multi-node runs: clients joined through each node, by its index.
    #[serde(default)]
    pub joined_per_server: Vec<u64>,
    /// Joins sent again after a refusal that said to retry.
    #[serde(default)]
    pub rejoins: u64,
}

/// What a loader counts of its clients' lives, shared by its client tasks
/// (one thread).
pub struct Tally {
    pub joined: u64,
    pub failed: u64,
    pub alive: u64,
    pub errors: BTreeMap<String, u64>,
    join_us: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            joined: 0,
            failed: 0,
            alive: 0,
            errors: BTreeMap::new(),
            join_us: stats::new_histogram(),
        }
    }
}

impl Tally {
    pub fn error(&mut self, why: String) {
        // Keep the distinct reasons few: numbers vary, the kind matters.
        let key: String = why.chars().take(160).collect();
        if self.errors.len() < 20 || self.errors.contains_key(&key) {
            *self.errors.entry(key).or_default() += 1;
        }
    }

    /// A client joined, `started` being when it began to connect.
    pub fn opened(&mut self, started: Instant) {
        self.joined += 1;
        self.alive += 1;
        let us = started.elapsed().as_micros() as u64;
        let _ = self.join_us.record(us.max(1));
    }

    pub fn open_failed(&mut self, why: String) {
        self.failed += 1;
        self.error(why);
    }

    /// A joined client ended, on `failure` if any.
    pub fn closed(&mut self, failure: Option<String>) {
        self.alive = self.alive.saturating_sub(1);
        if let Some(why) = failure {
            self.error(why);
        }
    }

    pub fn ready(&self) -> Ready {
        Ready {
            joined: self.joined,
            failed: self.failed,
            errors: self.errors.clone(),
            join_hist: stats::encode_histogram(&self.join_us),
            joined_per_server: Vec::new(),
            rejoins: 0,
        }
    }
}

/// Writes one JSON line to the driver.
pub fn emit<L: Serialize>(line: &L) {
    if let Ok(s) = serde_json::to_string(line) {
        println!("{s}");
    }
}

/// Runs a loader on one thread, its client tasks local to it.
pub fn block_on(run: impl Future<Output = ()>) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run);
    Ok(())
}

/// Opens a client's connection under the loader's limits: one of
/// `permits` at a time, within `timeout_ms`.
pub async fn open_within(
    permits: &Semaphore,
    timeout_ms: u64,
    open: impl Future<Output = Result<WsConn, String>>,
) -> Result<WsConn, String> {
    let _permit = permits.acquire().await;
    timeout(Duration::from_millis(timeout_ms), open)
        .await
        .unwrap_or_else(|_| Err("connect and join timed out".into()))
}

/// Waits until `total` clients said they settled (joined or failed).
pub async fn all_settled(settled: &mut UnboundedReceiver<()>, total: u64) {
    let mut n = 0;
    while n < total {
        if settled.recv().await.is_none() {
            break;
        }
        n += 1;
    }
}

/// Lets the clients close politely, but never waits long.
pub async fn wind_down(tasks: Vec<JoinHandle<()>>) {
    let _ = timeout(Duration::from_secs(5), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
}

/// Ticks when the timer is set; pending forever otherwise.
pub async fn tick(timer: &mut Option<Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending::<()>().await,
    }
}
