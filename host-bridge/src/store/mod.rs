//! The data service: every read and write of messages and room state goes
//! through it (Discord's data services). Backends implement [`Backend`]; the
//! service in front of them assigns Snowflake ids, coalesces identical reads,
//! caches room state and routes every key to one worker.
//!
//! Backends: [`sqlite`] (embedded, the default).
//!
//! # Design: routing, coalescing, caching
//!
//! ```text
//!  guest process ──chorus::data──▶ DataService::call
//!                                      │ shard_of(key, N)   key = topic | room
//!                        ┌─────────────┼─────────────┐
//!                     worker 0      worker 1 …    worker N-1     (tokio tasks)
//!                        │ in-flight table, room-state cache (owned, no locks)
//!                        └──▶ backend query (spawned task) ──▶ Done(token) back
//! ```
//!
//! * **Routing.** A request's key (the topic for `append`/`history`, the
//!   room for room state) is hashed with [`chorus_core::ring::shard_of`] onto
//!   one of `N` worker tasks. Every request about one key meets the same
//!   worker, so that worker alone decides what is in flight for the key and
//!   needs no lock; different keys spread over the workers.
//! * **Coalescing.** A worker never awaits the backend itself: it starts each
//!   backend query as its own task, records it in an in-flight table under
//!   the read's identity (the whole [`HistoryQuery`], or the room), and goes
//!   back to its mailbox. An identical read arriving while that query runs is
//!   added to the query's waiters instead of reaching the backend; when the
//!   query finishes every waiter gets the same result (`Arc`-shared). Before
//!   starting queries the worker drains everything already queued, so a burst
//!   of identical reads costs one backend query.
//! * **Read-your-writes.** A committed `append` on a topic detaches that
//!   topic's in-flight history reads: they still answer their own waiters,
//!   but a read that arrives after the append was acknowledged starts a fresh
//!   query instead of joining one that began before the commit.
//! * **Room-state cache.** A `get_room_state` result is cached per room for
//!   `store.room_state_ttl_ms` (0 disables). A `put_room_state` invalidates
//!   the room's cache entry and detaches its in-flight read both when it
//!   starts and when it commits, so a read that raced with the write is
//!   answered but never cached.
//! * **Metrics.** `chorus_store_requests_total{op}` counts requests reaching
//!   the service, `chorus_store_backend_queries_total{op}` the queries that
//!   reached the backend; their ratio is the coalescing and cache hit rate.

pub mod cql;
pub mod sqlite;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use chorus_core::config::Config;
use chorus_core::data::{DataRequest, DataResponse, RawJson, StoredMessage};
use chorus_core::ring::shard_of;
use chorus_core::snowflake::{Generator, Id};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

/// A boxed future, so backends can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message to persist, its id already assigned.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Id,
    pub topic: String,
    pub event: String,
    pub payload: RawJson,
}

/// A history query: newest first, ids strictly between `after` and `before`,
/// at most `limit` messages and about `max_bytes` of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HistoryQuery {
    pub topic: String,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: u32,
    /// The answer's byte budget (`limits.history_page_bytes`): a backend
    /// stops before the message that would take the answer's payload and
    /// event bytes past it, but always returns at least one message, so
    /// paging with `before` always moves on.
    pub max_bytes: usize,
}

/// Tracks an answer's bytes against [`HistoryQuery::max_bytes`].
pub struct PageBudget {
    left: usize,
    taken: usize,
}

impl PageBudget {
    pub fn new(max_bytes: usize) -> Self {
        Self {
            left: max_bytes,
            taken: 0,
        }
    }

    /// Whether a message of `bytes` still fits (the first always does).
    pub fn take(&mut self, bytes: usize) -> bool {
        if self.taken > 0 && bytes > self.left {
            return false;
        }
        self.left = self.left.saturating_sub(bytes);
        self.taken += 1;
        true
    }
}

/// One storage backend. Every method resolves once the backend has
/// answered; `append` only once the write is durable.
pub trait Backend: Send + Sync + 'static {
    fn append(&self, msg: NewMessage) -> BoxFuture<'_, Result<()>>;
    fn history(&self, q: HistoryQuery) -> BoxFuture<'_, Result<Vec<StoredMessage>>>;
    fn get_room_state(&self, room: String) -> BoxFuture<'_, Result<Option<Value>>>;
    fn put_room_state(&self, room: String, state: Value) -> BoxFuture<'_, Result<()>>;
}

/// The operations, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Append = 0,
    History = 1,
    GetRoomState = 2,
    PutRoomState = 3,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Append, Op::History, Op::GetRoomState, Op::PutRoomState];

    pub fn label(self) -> &'static str {
        match self {
            Op::Append => "append",
            Op::History => "history",
            Op::GetRoomState => "get_room_state",
            Op::PutRoomState => "put_room_state",
        }
    }
}

/// Request and backend-query counters, per [`Op`].
#[derive(Default)]
pub struct StoreMetrics {
    requests: [AtomicU64; 4],
    backend_queries: [AtomicU64; 4],
    /// Room states cached by the workers (a gauge).
    room_cache: AtomicI64,
}

/// How often a worker drops expired room-state cache entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl StoreMetrics {
    pub fn requests(&self, op: Op) -> u64 {
        self.requests[op as usize].load(Ordering::Relaxed)
    }

    pub fn backend_queries(&self, op: Op) -> u64 {
        self.backend_queries[op as usize].load(Ordering::Relaxed)
    }

    /// Room states in the cache now.
    pub fn room_cache_entries(&self) -> i64 {
        self.room_cache.load(Ordering::Relaxed)
    }

    fn request(&self, op: Op) {
        self.requests[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn query(&self, op: Op) {
        self.backend_queries[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Prometheus text of both counters, labelled by op.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, values) in [
            (
                "chorus_store_requests_total",
                "Requests to the data service, by operation",
                &self.requests,
            ),
            (
                "chorus_store_backend_queries_total",
                "Queries the data service sent to its backend (after coalescing and caching), by operation",
                &self.backend_queries,
            ),
        ] {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
            for op in Op::ALL {
                let v = values[op as usize].load(Ordering::Relaxed);
                out.push_str(&format!("{name}{{op=\"{}\"}} {v}\n", op.label()));
            }
        }
        out.push_str(&format!(
            "# HELP chorus_store_room_cache_entries Room states cached by the data service\n\
             # TYPE chorus_store_room_cache_entries gauge\nchorus_store_room_cache_entries {}\n",
            self.room_cache_entries()
        ));
        out
    }
}

/// Tuning of the service in front of the backend.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker tasks keys are routed to.
    pub workers: usize,
    /// Room-state cache lifetime; zero disables the cache. Expired entries
    /// are swept every second.
    pub room_state_ttl: Duration,
    /// Byte budget of one history answer (`limits.history_page_bytes`).
    pub history_page_bytes: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            workers: 8,
            room_state_ttl: Duration::from_millis(5_000),
            history_page_bytes: 1024 * 1024,
        }
    }
}

impl Options {
    pub fn from_config(config: &Config) -> Self {
        Self {
            room_state_ttl: Duration::from_millis(config.store.room_state_ttl_ms),
            history_page_bytes: config.limits.history_page_bytes as usize,
            ..Self::default()
        }
    }
}

/// A backend failure, shared by every waiter of a coalesced read.
type Shared<T> = Result<Arc<T>, Arc<str>>;

/// What a worker receives.
enum Job {
    Append(NewMessage, oneshot::Sender<Result<(), Arc<str>>>),
    History(HistoryQuery, oneshot::Sender<Shared<Vec<StoredMessage>>>),
    GetRoom(String, oneshot::Sender<Shared<Option<Value>>>),
    PutRoom(String, Value, oneshot::Sender<Result<(), Arc<str>>>),
    /// A backend query the worker started has finished.
    Done(u64, Finished),
}

enum Finished {
    Append(
        String,
        Result<(), Arc<str>>,
        oneshot::Sender<Result<(), Arc<str>>>,
    ),
    History(Shared<Vec<StoredMessage>>),
    GetRoom(Shared<Option<Value>>),
    PutRoom(
        String,
        Result<(), Arc<str>>,
        oneshot::Sender<Result<(), Arc<str>>>,
    ),
}

/// Handle to the data service; cheap to clone.
#[derive(Clone)]
pub struct DataService {
    workers: Arc<[mpsc::UnboundedSender<Job>]>,
    ids: Arc<Mutex<Generator>>,
    metrics: Arc<StoreMetrics>,
    history_page_bytes: usize,
    /// Requests in flight (asked, not yet answered), for a drain's flush.
    inflight: Arc<AtomicU64>,
}

/// Counts a request in flight until it is answered (or its asker is gone).
struct InFlight(Arc<AtomicU64>);

impl InFlight {
    fn new(count: &Arc<AtomicU64>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn stopped<T>() -> Result<T, Arc<str>> {
    Err(Arc::from("data service stopped"))
}

impl DataService {
    /// A service with default [`Options`]. Must be called inside a tokio
    /// runtime (the workers are tasks).
    pub fn new(backend: Arc<dyn Backend>, worker_id: u16) -> Result<Self> {
        Self::with_options(backend, worker_id, Options::default())
    }

    /// A service configured from the node's config (`[store]`, and the
    /// history page budget from `[limits]`).
    pub fn with_config(backend: Arc<dyn Backend>, worker_id: u16, config: &Config) -> Result<Self> {
        Self::with_options(backend, worker_id, Options::from_config(config))
    }

    pub fn with_options(backend: Arc<dyn Backend>, worker_id: u16, opts: Options) -> Result<Self> {
        let ids = Generator::new(worker_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        let metrics = Arc::new(StoreMetrics::default());
        let workers = (0..opts.workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let worker = Worker {
                    backend: backend.clone(),
                    metrics: metrics.clone(),
                    ttl: opts.room_state_ttl,
                    me: tx.downgrade(),
                    next_token: 0,
                    history_keys: HashMap::new(),
                    history_waiters: HashMap::new(),
                    room_keys: HashMap::new(),
                    room_waiters: HashMap::new(),
                    room_cache: HashMap::new(),
                };
                tokio::spawn(worker.run(rx));
                tx
            })
            .collect();
        Ok(Self {
            workers,
            ids: Arc::new(Mutex::new(ids)),
            metrics,
            history_page_bytes: opts.history_page_bytes.max(1),
            inflight: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    /// Requests asked of the service and not answered yet.
    pub fn in_flight(&self) -> u64 {
        self.inflight.load(Ordering::Acquire)
    }

    /// A drain's store flush: waits until every request in flight is
    /// answered (an append is answered once it is committed: on disk with
    /// SQLite's `synchronous = FULL`, at QUORUM with CQL), at most `within`.
    /// False when some were still in flight then.
    pub async fn flush(&self, within: Duration) -> bool {
        let until = Instant::now() + within;
        while self.in_flight() > 0 {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }

    /// Prometheus lines of the service's counters, for /metrics.
    pub fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    fn next_id(&self) -> Result<Id> {
        let mut ids = self
            .ids
            .lock()
            .map_err(|_| anyhow::anyhow!("id generator poisoned"))?;
        Ok(ids.next(now_ms()))
    }

    fn worker(&self, key: &str) -> &mpsc::UnboundedSender<Job> {
        &self.workers[shard_of(key, self.workers.len())]
    }

    /// Runs one request; a failing backend is an error answer, never a hang.
    pub async fn call(&self, request: DataRequest) -> DataResponse {
        let _counted = InFlight::new(&self.inflight);
        match self.dispatch(request).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "data service request failed");
                DataResponse::Error {
                    reason: format!("storage error: {e}"),
                }
            }
        }
    }

    /// Sends `job` to the worker owning `key`, then awaits the answer. The
    /// send happens before the first await, so a batch of calls polled
    /// together is queued together.
    fn ask<T>(
        &self,
        key: &str,
        job: impl FnOnce(oneshot::Sender<Result<T, Arc<str>>>) -> Job,
    ) -> impl Future<Output = Result<T, Arc<str>>> {
        let (reply, answer) = oneshot::channel();
        let sent = self.worker(key).send(job(reply)).is_ok();
        async move {
            if !sent {
                return stopped();
            }
            answer.await.unwrap_or_else(|_| stopped())
        }
    }

    pub async fn append(&self, topic: String, event: String, payload: RawJson) -> Result<Id> {
        self.metrics.request(Op::Append);
        let id = self.next_id()?;
        let key = topic.clone();
        let msg = NewMessage {
            id,
            topic,
            event,
            payload,
        };
        self.ask(&key, |r| Job::Append(msg, r))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(id)
    }

    pub async fn history(&self, q: HistoryQuery) -> Result<Arc<Vec<StoredMessage>>> {
        self.metrics.request(Op::History);
        let key = q.topic.clone();
        self.ask(&key, |r| Job::History(q, r))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    pub async fn get_room_state(&self, room: String) -> Result<Option<Value>> {
        self.metrics.request(Op::GetRoomState);
        let key = room.clone();
        let state = self
            .ask(&key, |r| Job::GetRoom(room, r))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Option::clone(&state))
    }

    pub async fn put_room_state(&self, room: String, state: Value) -> Result<()> {
        self.metrics.request(Op::PutRoomState);
        let key = room.clone();
        self.ask(&key, |r| Job::PutRoom(room, state, r))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    async fn dispatch(&self, request: DataRequest) -> Result<DataResponse> {
        Ok(match request {
            DataRequest::Append {
                topic,
                event,
                payload,
            } => {
                let id = self.append(topic, event, payload).await?;
                DataResponse::Appended {
                    id: id.to_string(),
                    inserted_at: id.timestamp_ms(),
                }
            }
            DataRequest::History {
                topic,
                before,
                after,
                limit,
            } => {
                let messages = self
                    .history(HistoryQuery {
                        topic,
                        before,
                        after,
                        limit,
                        max_bytes: self.history_page_bytes,
                    })
                    .await?;
                DataResponse::Messages {
                    messages: Vec::clone(&messages),
                }
            }
            DataRequest::GetRoomState { room } => DataResponse::RoomState {
                state: self.get_room_state(room).await?,
            },
            DataRequest::PutRoomState { room, state } => {
                self.put_room_state(room, state).await?;
                DataResponse::Done
            }
        })
    }
}

/// The key of an in-flight read and everyone waiting for its answer.
type Waiters<T> = (String, Vec<oneshot::Sender<Shared<T>>>);

/// One worker: the single owner of the in-flight tables and the room cache
/// of the keys routed to it.
struct Worker {
    backend: Arc<dyn Backend>,
    metrics: Arc<StoreMetrics>,
    ttl: Duration,
    /// Where finished backend queries report (weak: the service's handles
    /// own the channel, so dropping them stops the worker).
    me: mpsc::WeakUnboundedSender<Job>,
    next_token: u64,
    /// Reads that new identical requests may still join.
    history_keys: HashMap<HistoryQuery, u64>,
    history_waiters: HashMap<u64, Waiters<Vec<StoredMessage>>>,
    room_keys: HashMap<String, u64>,
    room_waiters: HashMap<u64, Waiters<Option<Value>>>,
    room_cache: HashMap<String, (Instant, Arc<Option<Value>>)>,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut batch = Vec::new();
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Every queued job is taken before any backend query starts,
                // so a burst of identical reads is coalesced even if the
                // first query would finish before the worker got to the rest.
                n = rx.recv_many(&mut batch, 4096) => {
                    if n == 0 {
                        return;
                    }
                    for job in batch.drain(..) {
                        self.handle(job);
                    }
                }
                _ = sweep.tick() => self.sweep_cache(),
            }
        }
    }

    /// Drops expired room-state entries, so rooms read once are not kept
    /// for the life of the node.
    fn sweep_cache(&mut self) {
        let ttl = self.ttl;
        let before = self.room_cache.len();
        self.room_cache.retain(|_, (at, _)| at.elapsed() < ttl);
        let gone = before - self.room_cache.len();
        self.metrics
            .room_cache
            .fetch_sub(gone as i64, Ordering::Relaxed);
    }

    fn uncache(&mut self, room: &str) {
        if self.room_cache.remove(room).is_some() {
            self.metrics.room_cache.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// Runs `query` as its own task and reports to this worker when done.
    fn start<F>(&self, token: u64, query: F)
    where
        F: Future<Output = Finished> + Send + 'static,
    {
        let me = self.me.clone();
        tokio::spawn(async move {
            let finished = query.await;
            if let Some(me) = me.upgrade() {
                let _ = me.send(Job::Done(token, finished));
            }
        });
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Append(msg, reply) => {
                self.metrics.query(Op::Append);
                let backend = self.backend.clone();
                let token = self.token();
                self.start(token, async move {
                    let topic = msg.topic.clone();
                    let r = backend.append(msg).await.map_err(err);
                    Finished::Append(topic, r, reply)
                });
            }
            Job::History(q, reply) => {
                if let Some(token) = self.history_keys.get(&q) {
                    if let Some((_, waiters)) = self.history_waiters.get_mut(token) {
                        waiters.push(reply);
                        return;
                    }
                }
                self.metrics.query(Op::History);
                let token = self.token();
                self.history_keys.insert(q.clone(), token);
                self.history_waiters
                    .insert(token, (q.topic.clone(), vec![reply]));
                let backend = self.backend.clone();
                self.start(token, async move {
                    Finished::History(backend.history(q).await.map(Arc::new).map_err(err))
                });
            }
            Job::GetRoom(room, reply) => {
                if let Some((at, state)) = self.room_cache.get(&room) {
                    if at.elapsed() < self.ttl {
                        let _ = reply.send(Ok(state.clone()));
                        return;
                    }
                    self.uncache(&room);
                }
                if let Some(token) = self.room_keys.get(&room) {
                    if let Some((_, waiters)) = self.room_waiters.get_mut(token) {
                        waiters.push(reply);
                        return;
                    }
                }
                self.metrics.query(Op::GetRoomState);
                let token = self.token();
                self.room_keys.insert(room.clone(), token);
                self.room_waiters.insert(token, (room.clone(), vec![reply]));
                let backend = self.backend.clone();
                self.start(token, async move {
                    Finished::GetRoom(
                        backend
                            .get_room_state(room)
                            .await
                            .map(Arc::new)
                            .map_err(err),
                    )
                });
            }
            Job::PutRoom(room, state, reply) => {
                self.invalidate_room(&room);
                self.metrics.query(Op::PutRoomState);
                let backend = self.backend.clone();
                let token = self.token();
                self.start(token, async move {
                    let r = backend
                        .put_room_state(room.clone(), state)
                        .await
                        .map_err(err);
                    Finished::PutRoom(room, r, reply)
                });
            }
            Job::Done(token, finished) => self.finished(token, finished),
        }
    }

    fn invalidate_room(&mut self, room: &str) {
        self.uncache(room);
        self.room_keys.remove(room);
    }

    fn finished(&mut self, token: u64, finished: Finished) {
        match finished {
            Finished::Append(topic, result, reply) => {
                if result.is_ok() {
                    // Reads that began before this commit must not answer
                    // requests made after it.
                    self.history_keys.retain(|q, _| q.topic != topic);
                }
                let _ = reply.send(result);
            }
            Finished::History(result) => {
                let Some((topic, waiters)) = self.history_waiters.remove(&token) else {
                    return;
                };
                self.history_keys
                    .retain(|q, t| !(*t == token && q.topic == topic));
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            Finished::GetRoom(result) => {
                let Some((room, waiters)) = self.room_waiters.remove(&token) else {
                    return;
                };
                // Still the room's current read: no write started meanwhile,
                // so the answer may be cached.
                if self.room_keys.get(&room) == Some(&token) {
                    self.room_keys.remove(&room);
                    if let Ok(state) = &result {
                        if !self.ttl.is_zero()
                            && self
                                .room_cache
                                .insert(room, (Instant::now(), state.clone()))
                                .is_none()
                        {
                            self.metrics.room_cache.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
            Finished::PutRoom(room, result, reply) => {
                self.invalidate_room(&room);
                let _ = reply.send(result);
            }
        }
    }
}

fn err(e: anyhow::Error) -> Arc<str> {
    Arc::from(format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    //! The coalescing, caching and routing logic against a counting fake
    //! backend (a test double for this logic only: the real backends have
    //! their own tests against real databases).

    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Notify;

    /// Counts calls; history and room reads wait for `gate` so a test
    /// controls how long a query stays in flight.
    #[derive(Default)]
    struct Counting {
        history: AtomicUsize,
        get_room: AtomicUsize,
        appends: Mutex<Vec<NewMessage>>,
        rooms: Mutex<HashMap<String, Value>>,
        gate: Notify,
        gated: std::sync::atomic::AtomicBool,
        fail_writes: std::sync::atomic::AtomicBool,
    }

    impl Counting {
        async fn wait_gate(&self) {
            if self.gated.load(Ordering::SeqCst) {
                self.gate.notified().await;
            }
        }
    }

    impl Backend for Counting {
        fn append(&self, msg: NewMessage) -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                if self.fail_writes.load(Ordering::SeqCst) {
                    anyhow::bail!("disk on fire");
                }
                self.appends.lock().unwrap().push(msg);
                Ok(())
            })
        }
        fn history(&self, q: HistoryQuery) -> BoxFuture<'_, Result<Vec<StoredMessage>>> {
            Box::pin(async move {
                self.history.fetch_add(1, Ordering::SeqCst);
                self.wait_gate().await;
                let all = self.appends.lock().unwrap().clone();
                Ok(all
                    .iter()
                    .rev()
                    .filter(|m| m.topic == q.topic)
                    .take(q.limit as usize)
                    .map(|m| StoredMessage {
                        id: m.id.to_string(),
                        topic: m.topic.clone(),
                        event: m.event.clone(),
                        payload: m.payload.clone(),
                        inserted_at: m.id.timestamp_ms(),
                    })
                    .collect())
            })
        }
        fn get_room_state(&self, room: String) -> BoxFuture<'_, Result<Option<Value>>> {
            Box::pin(async move {
                self.get_room.fetch_add(1, Ordering::SeqCst);
                self.wait_gate().await;
                Ok(self.rooms.lock().unwrap().get(&room).cloned())
            })
        }
        fn put_room_state(&self, room: String, state: Value) -> BoxFuture<'_, Result<()>> {
            Box::pin(async move {
                if self.fail_writes.load(Ordering::SeqCst) {
                    anyhow::bail!("disk on fire");
                }
                self.rooms.lock().unwrap().insert(room, state);
                Ok(())
            })
        }
    }

    fn service(backend: Arc<Counting>, ttl_ms: u64) -> DataService {
        DataService::with_options(
            backend,
            1,
            Options {
                workers: 4,
                room_state_ttl: Duration::from_millis(ttl_ms),
                history_page_bytes: 1024 * 1024,
            },
        )
        .unwrap()
    }

    fn query(topic: &str) -> HistoryQuery {
        HistoryQuery {
            topic: topic.into(),
            before: None,
            after: None,
            limit: 50,
            max_bytes: usize::MAX,
        }
    }

    /// Waits until `f` holds, at most `limit`.
    async fn until_within(limit: Duration, f: impl Fn() -> bool) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached within {limit:?}");
    }

    /// Waits until `f` holds (bounded).
    async fn until(f: impl Fn() -> bool) {
        for _ in 0..500 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("condition not reached within 1 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_identical_history_reads_make_one_backend_query() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend.clone(), 5_000);
        svc.append(
            "room:1:chat".into(),
            "m".into(),
            RawJson::of(&serde_json::json!({"n": 1})),
        )
        .await
        .unwrap();
        backend.gated.store(true, Ordering::SeqCst);
        let readers: Vec<_> = (0..100)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.history(query("room:1:chat")).await })
            })
            .collect();
        // All 100 are queued behind one in-flight query.
        until(|| svc.metrics().requests(Op::History) == 100).await;
        until(|| backend.history.load(Ordering::SeqCst) == 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        backend.gate.notify_waiters();
        for r in readers {
            let msgs = r.await.unwrap().unwrap();
            assert_eq!(msgs.len(), 1);
            assert_eq!(msgs[0].payload.get(), r#"{"n":1}"#);
        }
        assert_eq!(backend.history.load(Ordering::SeqCst), 1);
        assert_eq!(svc.metrics().backend_queries(Op::History), 1);
        assert_eq!(svc.metrics().requests(Op::History), 100);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_waits_for_the_requests_in_flight() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend.clone(), 0);
        assert!(
            svc.flush(Duration::from_millis(1)).await,
            "nothing in flight"
        );
        backend.gated.store(true, Ordering::SeqCst);
        let asker = {
            let svc = svc.clone();
            tokio::spawn(async move {
                svc.call(DataRequest::History {
                    topic: "room:1:chat".into(),
                    limit: 5,
                    before: None,
                    after: None,
                })
                .await
            })
        };
        until(|| backend.history.load(Ordering::SeqCst) == 1).await;
        assert_eq!(svc.in_flight(), 1);
        assert!(
            !svc.flush(Duration::from_millis(30)).await,
            "a read held by the backend is still in flight"
        );
        let flushed = {
            let svc = svc.clone();
            tokio::spawn(async move { svc.flush(Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        backend.gate.notify_waiters();
        assert!(flushed.await.unwrap());
        asker.await.unwrap();
        assert_eq!(svc.in_flight(), 0);
    }

    #[tokio::test]
    async fn different_ranges_are_not_coalesced_and_finished_reads_are_not_reused() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend.clone(), 5_000);
        let mut other = query("room:1:chat");
        other.limit = 10;
        let (a, b) = tokio::join!(svc.history(query("room:1:chat")), svc.history(other));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(backend.history.load(Ordering::SeqCst), 2);
        svc.history(query("room:1:chat")).await.unwrap();
        assert_eq!(
            backend.history.load(Ordering::SeqCst),
            3,
            "no history cache"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_after_a_committed_append_does_not_join_an_older_read() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend.clone(), 5_000);
        backend.gated.store(true, Ordering::SeqCst);
        let old = {
            let svc = svc.clone();
            tokio::spawn(async move { svc.history(query("room:1:chat")).await })
        };
        until(|| backend.history.load(Ordering::SeqCst) == 1).await;
        svc.append(
            "room:1:chat".into(),
            "m".into(),
            RawJson::of(&serde_json::json!(1)),
        )
        .await
        .unwrap();
        let new = {
            let svc = svc.clone();
            tokio::spawn(async move { svc.history(query("room:1:chat")).await })
        };
        until(|| backend.history.load(Ordering::SeqCst) == 2).await;
        backend.gate.notify_waiters();
        old.await.unwrap().unwrap();
        let new = new.await.unwrap().unwrap();
        assert_eq!(new.len(), 1, "the new read sees the acknowledged append");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_room_reads_coalesce_and_are_cached_until_ttl() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend.clone(), 150);
        svc.put_room_state("r1".into(), serde_json::json!({"v": 1}))
            .await
            .unwrap();
        let reads: Vec<_> = (0..50)
            .map(|_| {
                let svc = svc.clone();
                tokio::spawn(async move { svc.get_room_state("r1".into()).await })
            })
            .collect();
        for r in reads {
            assert_eq!(r.await.unwrap().unwrap(), Some(serde_json::json!({"v": 1})));
        }
        let after_burst = backend.get_room.load(Ordering::SeqCst);
        assert!(
            after_burst <= 2,
            "{after_burst} backend reads for one burst"
        );
        // Cached: more reads inside the TTL cost nothing.
        for _ in 0..10 {
            svc.get_room_state("r1".into()).await.unwrap();
        }
        assert_eq!(backend.get_room.load(Ordering::SeqCst), after_burst);
        // Expired: the next read goes to the backend again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        svc.get_room_state("r1".into()).await.unwrap();
        assert_eq!(backend.get_room.load(Ordering::SeqCst), after_burst + 1);
        assert_eq!(svc.metrics().requests(Op::GetRoomState), 61);
        assert_eq!(
            svc.metrics().backend_queries(Op::GetRoomState) as usize,
            after_burst + 1
        );
    }

    #[tokio::test]
    async fn a_write_invalidates_the_cached_room_state() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend.clone(), 60_000);
        assert_eq!(svc.get_room_state("r1".into()).await.unwrap(), None);
        assert_eq!(svc.get_room_state("r1".into()).await.unwrap(), None);
        assert_eq!(backend.get_room.load(Ordering::SeqCst), 1, "cached");
        svc.put_room_state("r1".into(), serde_json::json!("new"))
            .await
            .unwrap();
        assert_eq!(
            svc.get_room_state("r1".into()).await.unwrap(),
            Some(serde_json::json!("new"))
        );
        assert_eq!(backend.get_room.load(Ordering::SeqCst), 2);
        // Other rooms' entries are untouched.
        svc.get_room_state("r2".into()).await.unwrap();
        svc.put_room_state("r1".into(), serde_json::json!("newer"))
            .await
            .unwrap();
        svc.get_room_state("r2".into()).await.unwrap();
        assert_eq!(backend.get_room.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_racing_with_a_write_is_answered_but_not_cached() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend.clone(), 60_000);
        backend.gated.store(true, Ordering::SeqCst);
        let racing = {
            let svc = svc.clone();
            tokio::spawn(async move { svc.get_room_state("r1".into()).await })
        };
        until(|| backend.get_room.load(Ordering::SeqCst) == 1).await;
        svc.put_room_state("r1".into(), serde_json::json!(2))
            .await
            .unwrap();
        backend.gate.notify_waiters();
        racing.await.unwrap().unwrap();
        backend.gated.store(false, Ordering::SeqCst);
        assert_eq!(
            svc.get_room_state("r1".into()).await.unwrap(),
            Some(serde_json::json!(2))
        );
        assert_eq!(backend.get_room.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn backend_failures_are_error_answers() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend.clone(), 5_000);
        backend.fail_writes.store(true, Ordering::SeqCst);
        let r = svc
            .call(DataRequest::Append {
                topic: "room:1:chat".into(),
                event: "m".into(),
                payload: RawJson::of(&serde_json::json!(1)),
            })
            .await;
        match r {
            DataResponse::Error { reason } => assert!(reason.contains("disk on fire"), "{reason}"),
            other => panic!("expected an error, got {other:?}"),
        }
        assert!(backend.appends.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn expired_room_states_are_swept_from_the_cache() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend.clone(), 100);
        for i in 0..20 {
            svc.get_room_state(format!("r{i}")).await.unwrap();
        }
        assert_eq!(svc.metrics().room_cache_entries(), 20);
        // Nobody reads them again; the sweep (every second) drops them.
        until_within(Duration::from_secs(3), || {
            svc.metrics().room_cache_entries() == 0
        })
        .await;
        assert!(svc
            .render_metrics()
            .contains("chorus_store_room_cache_entries 0\n"));
    }

    #[test]
    fn a_page_budget_keeps_at_least_one_message() {
        let mut b = PageBudget::new(100);
        assert!(b.take(60));
        assert!(b.take(40));
        assert!(!b.take(1));
        let mut b = PageBudget::new(10);
        assert!(b.take(500), "the first message always fits");
        assert!(!b.take(1));
    }

    #[tokio::test]
    async fn metrics_render_per_op() {
        let backend = Arc::new(Counting::default());
        let svc = service(backend, 5_000);
        svc.get_room_state("r".into()).await.unwrap();
        svc.get_room_state("r".into()).await.unwrap();
        let text = svc.render_metrics();
        assert!(text.contains("chorus_store_requests_total{op=\"get_room_state\"} 2\n"));
        assert!(text.contains("chorus_store_backend_queries_total{op=\"get_room_state\"} 1\n"));
        assert!(text.contains("chorus_store_requests_total{op=\"append\"} 0\n"));
    }

    #[test]
    fn keys_route_to_a_stable_worker() {
        let a = shard_of("realtime:room:1:chat", 8);
        assert_eq!(a, shard_of("realtime:room:1:chat", 8));
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|i| shard_of(&format!("room:{i}"), 8))
            .collect();
        assert!(spread.len() > 4, "keys spread over the workers");
    }
}
