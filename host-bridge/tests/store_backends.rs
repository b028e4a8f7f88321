//! One behaviour suite for every storage backend: the same cases run against
//! the embedded SQLite store (a temp dir) and against a real CQL database
//! (ScyllaDB or Apache Cassandra) at `CHORUS_SCYLLA_NODES`.
//!
//! The CQL half FAILS when `CHORUS_SCYLLA_NODES` is not set, unless
//! `CHORUS_SKIP_CQL=1` says to skip it. Start a local Cassandra with
//! `scripts/cassandra.sh start` and set `CHORUS_SCYLLA_NODES=127.0.0.1:9042`.
//! The fault test (stop and restart the database) is in store_cql_fault.rs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chorus_core::data::{RawJson, StoredMessage};
use chorus_core::snowflake::{self, Id, BUCKET_WIDTH_MS};
use chorus_host::store::cql::{Cql, CqlOptions};
use chorus_host::store::sqlite::Sqlite;
use chorus_host::store::{Backend, HistoryQuery, NewMessage};
use serde_json::json;

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn now_since_epoch_ms() -> u64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    unix.saturating_sub(snowflake::CHORUS_EPOCH_MS)
}

/// Topics of this run: a CQL keyspace outlives the run, so names are unique.
struct Topics(String);

impl Topics {
    fn new() -> Self {
        Topics(format!("{}-{}", std::process::id(), nanos()))
    }
    fn topic(&self, case: &str) -> String {
        format!("room:{}-{case}:chat", self.0)
    }
}

fn id_at(since_epoch_ms: u64, seq: u16) -> Id {
    Id::from_parts(since_epoch_ms, 7, seq).expect("test id in range")
}

fn msg(topic: &str, id: Id) -> NewMessage {
    NewMessage {
        id,
        topic: topic.to_owned(),
        event: format!("ev-{}", id.as_u64() % 1000),
        payload: RawJson::of(&json!({"n": id.as_u64().to_string(), "text": "hé ✓"})),
    }
}

async fn append_all(b: &dyn Backend, topic: &str, ids: &[Id]) {
    for &id in ids {
        b.append(msg(topic, id))
            .await
            .unwrap_or_else(|e| panic!("append {} to {topic}: {e:#}", id.as_u64()));
    }
}

async fn history(
    b: &dyn Backend,
    topic: &str,
    before: Option<Id>,
    after: Option<Id>,
    limit: u32,
) -> Vec<StoredMessage> {
    b.history(HistoryQuery {
        topic: topic.to_owned(),
        before: before.map(Id::as_u64),
        after: after.map(Id::as_u64),
        limit,
        max_bytes: usize::MAX,
    })
    .await
    .unwrap_or_else(|e| panic!("history of {topic}: {e:#}"))
}

fn ids_of(ms: &[StoredMessage]) -> Vec<u64> {
    ms.iter()
        .map(|m| m.id.parse::<u64>().expect("decimal id"))
        .collect()
}

/// `ids` newest first, as raw values.
fn desc(ids: &[Id]) -> Vec<u64> {
    let mut v: Vec<u64> = ids.iter().map(|i| i.as_u64()).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

/// Start of the bucket ten buckets before now: room for history in the past.
fn base_ms() -> u64 {
    (now_since_epoch_ms() / BUCKET_WIDTH_MS).saturating_sub(10) * BUCKET_WIDTH_MS
}

async fn case_append_then_history(b: &dyn Backend, t: &Topics) {
    let topic = t.topic("append");
    let base = now_since_epoch_ms().saturating_sub(60_000);
    let ids: Vec<Id> = (0..5).map(|i| id_at(base + i * 10, 0)).collect();
    append_all(b, &topic, &ids).await;
    let got = history(b, &topic, None, None, 50).await;
    assert_eq!(ids_of(&got), desc(&ids), "newest first, all of them");
    for m in &got {
        let id = Id::from_u64(m.id.parse().expect("decimal id"));
        assert_eq!(m.topic, topic);
        assert_eq!(m.event, format!("ev-{}", id.as_u64() % 1000));
        assert_eq!(
            m.payload,
            RawJson::of(&json!({"n": id.as_u64().to_string(), "text": "hé ✓"}))
        );
        assert_eq!(m.inserted_at, id.timestamp_ms());
    }
    // Another topic sees none of them; an unknown topic is empty.
    assert!(history(b, &t.topic("append-other"), None, None, 50)
        .await
        .is_empty());
}

async fn case_bounds(b: &dyn Backend, t: &Topics) {
    let topic = t.topic("bounds");
    let base = now_since_epoch_ms().saturating_sub(60_000);
    let ids: Vec<Id> = (0..10).map(|i| id_at(base + i, 0)).collect();
    append_all(b, &topic, &ids).await;
    let all = desc(&ids);
    // before is exclusive
    let got = history(b, &topic, Some(ids[5]), None, 50).await;
    assert_eq!(ids_of(&got), all[5..].to_vec(), "before ids[5]");
    // after is exclusive
    let got = history(b, &topic, None, Some(ids[5]), 50).await;
    assert_eq!(ids_of(&got), all[..4].to_vec(), "after ids[5]");
    // both
    let got = history(b, &topic, Some(ids[8]), Some(ids[2]), 50).await;
    assert_eq!(ids_of(&got), desc(&ids[3..8]), "between ids[2] and ids[8]");
    // empty ranges
    assert!(history(b, &topic, Some(ids[3]), Some(ids[3]), 50)
        .await
        .is_empty());
    assert!(history(b, &topic, Some(ids[3]), Some(ids[2]), 50)
        .await
        .is_empty());
    assert!(history(b, &topic, Some(ids[2]), Some(ids[6]), 50)
        .await
        .is_empty());
    assert!(history(b, &topic, Some(ids[0]), None, 50).await.is_empty());
    assert!(history(b, &topic, None, Some(ids[9]), 50).await.is_empty());
    // bounds that are not ids of stored messages
    let between = Id::from_u64(ids[4].as_u64() + 1);
    let got = history(b, &topic, Some(between), None, 50).await;
    assert_eq!(ids_of(&got), desc(&ids[..5]), "before a non-stored id");
    // extreme bounds
    let got = history(
        b,
        &topic,
        Some(Id::from_u64(u64::MAX)),
        Some(Id::from_u64(0)),
        50,
    )
    .await;
    assert_eq!(ids_of(&got), all, "widest range");
}

async fn case_limit(b: &dyn Backend, t: &Topics) {
    let topic = t.topic("limit");
    let base = now_since_epoch_ms().saturating_sub(60_000);
    let ids: Vec<Id> = (0..12).map(|i| id_at(base, i)).collect();
    append_all(b, &topic, &ids).await;
    let all = desc(&ids);
    assert_eq!(ids_of(&history(b, &topic, None, None, 3).await), all[..3]);
    assert_eq!(ids_of(&history(b, &topic, None, None, 1).await), all[..1]);
    assert_eq!(ids_of(&history(b, &topic, None, None, 12).await), all);
    assert_eq!(ids_of(&history(b, &topic, None, None, 1000).await), all);
    assert!(history(b, &topic, None, None, 0).await.is_empty());
    // paging backwards with before = the oldest id of the previous page
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = history(b, &topic, before, None, 5).await;
        if page.is_empty() {
            break;
        }
        let ids = ids_of(&page);
        before = ids.last().map(|&raw| Id::from_u64(raw));
        pages.extend(ids);
    }
    assert_eq!(pages, all, "pages of 5 cover everything once, in order");
}

async fn case_buckets(b: &dyn Backend, t: &Topics) {
    let topic = t.topic("buckets");
    let base = base_ms();
    let day = 24 * 60 * 60 * 1000;
    // Buckets k = 0, 2 and 5 (relative to base) hold messages; 1, 3, 4 are
    // empty, as are the buckets after 5 up to now.
    let in_bucket = |k: u64, offset: u64| base + k * BUCKET_WIDTH_MS + offset;
    let ids = vec![
        id_at(in_bucket(0, 1000), 0),
        id_at(in_bucket(0, 3 * day), 0),
        id_at(in_bucket(0, BUCKET_WIDTH_MS - 1), 0),
        id_at(in_bucket(2, 0), 0),
        id_at(in_bucket(2, 5 * day), 1),
        id_at(in_bucket(5, day), 0),
        id_at(in_bucket(5, 9 * day), 0),
    ];
    let buckets: Vec<u64> = ids
        .iter()
        .map(|&i| snowflake::bucket_of(i, BUCKET_WIDTH_MS) - base / BUCKET_WIDTH_MS)
        .collect();
    assert_eq!(
        buckets,
        vec![0, 0, 0, 2, 2, 5, 5],
        "test ids in the intended buckets"
    );
    // Out of order, to show order comes from the ids.
    let mut shuffled = ids.clone();
    shuffled.swap(0, 5);
    shuffled.swap(2, 6);
    append_all(b, &topic, &shuffled).await;
    let all = desc(&ids);

    assert_eq!(
        ids_of(&history(b, &topic, None, None, 100).await),
        all,
        "all buckets"
    );
    // a limit that ends inside the middle bucket
    assert_eq!(ids_of(&history(b, &topic, None, None, 3).await), all[..3]);
    // before inside an empty bucket (4): starts at bucket 2
    let empty4 = id_at(in_bucket(4, day), 0);
    assert_eq!(
        ids_of(&history(b, &topic, Some(empty4), None, 100).await),
        desc(&ids[..5]),
        "before an id in empty bucket 4"
    );
    // after inside an empty bucket (1): stops after bucket 2
    let empty1 = id_at(in_bucket(1, day), 0);
    assert_eq!(
        ids_of(&history(b, &topic, None, Some(empty1), 100).await),
        desc(&ids[3..]),
        "after an id in empty bucket 1"
    );
    // both bounds in empty buckets around one non-empty bucket
    let empty3 = id_at(in_bucket(3, day), 0);
    assert_eq!(
        ids_of(&history(b, &topic, Some(empty3), Some(empty1), 100).await),
        desc(&ids[3..5]),
        "between empty buckets 1 and 3"
    );
    // a range of empty buckets only
    let got = history(
        b,
        &topic,
        Some(id_at(in_bucket(4, 2 * day), 0)),
        Some(id_at(in_bucket(3, 0), 0)),
        100,
    )
    .await;
    assert!(got.is_empty(), "buckets 3..4 are empty");
    // bounds at bucket edges: after the last id of bucket 0, before the first of 2
    assert_eq!(
        ids_of(&history(b, &topic, Some(ids[3]), Some(ids[2]), 100).await),
        Vec::<u64>::new()
    );
    assert_eq!(
        ids_of(&history(b, &topic, Some(ids[4]), Some(ids[1]), 100).await),
        vec![ids[3].as_u64(), ids[2].as_u64()],
        "across the edge of buckets 0 and 2"
    );
    // paging across buckets, 2 at a time
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = ids_of(&history(b, &topic, before, None, 2).await);
        if page.is_empty() {
            break;
        }
        before = page.last().map(|&raw| Id::from_u64(raw));
        pages.extend(page);
    }
    assert_eq!(pages, all, "paging across buckets");
}

async fn case_room_state(b: &dyn Backend, t: &Topics) {
    let room = format!("room:{}-state", t.0);
    let got = b.get_room_state(room.clone()).await.expect("get missing");
    assert_eq!(got, None, "no state yet");
    let s1 = json!({"title": "general", "members": [1, 2, 3], "nested": {"a": null}});
    b.put_room_state(room.clone(), s1.clone())
        .await
        .expect("put");
    assert_eq!(b.get_room_state(room.clone()).await.expect("get"), Some(s1));
    let s2 = json!("plain string ✓");
    b.put_room_state(room.clone(), s2.clone())
        .await
        .expect("overwrite");
    assert_eq!(
        b.get_room_state(room.clone())
            .await
            .expect("get after overwrite"),
        Some(s2)
    );
    // rooms are independent
    assert_eq!(
        b.get_room_state(format!("{room}-other"))
            .await
            .expect("get other"),
        None
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Not a benchmark and nothing asserted: one connection, sequential
/// requests, printed so a run shows the order of magnitude.
async fn report_latency(name: &str, b: &dyn Backend, t: &Topics) {
    let topic = t.topic("latency");
    let n = 300u16;
    let base = now_since_epoch_ms().saturating_sub(120_000);
    let mut inserts = Vec::with_capacity(n as usize);
    for i in 0..n {
        let m = msg(&topic, id_at(base + u64::from(i), 0));
        let t0 = Instant::now();
        b.append(m).await.expect("latency append");
        inserts.push(t0.elapsed());
    }
    let mut fetches = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t0 = Instant::now();
        let got = history(b, &topic, None, None, 50).await;
        fetches.push(t0.elapsed());
        assert_eq!(got.len(), 50);
    }
    inserts.sort();
    fetches.sort();
    eprintln!(
        "[{name}] latency over {n} sequential requests: insert p50 {:?} p99 {:?}; \
         fetch(50) p50 {:?} p99 {:?}",
        percentile(&inserts, 0.5),
        percentile(&inserts, 0.99),
        percentile(&fetches, 0.5),
        percentile(&fetches, 0.99)
    );
}

/// Two nodes sharing a store with the same worker id could assign one id
/// twice: the second write is refused and the first message stays.
async fn case_an_existing_id_is_never_overwritten(b: &dyn Backend, t: &Topics) {
    let topic = t.topic("dup");
    let id = id_at(now_since_epoch_ms().saturating_sub(1_000), 3);
    b.append(msg(&topic, id)).await.expect("first write");
    let mut other = msg(&topic, id);
    other.event = "overwrite".into();
    other.payload = RawJson::of(&json!({"evil": true}));
    let err = b
        .append(other)
        .await
        .expect_err("a second message with the same id must be refused");
    let text = format!("{err:#}");
    assert!(text.contains("already exists"), "{text}");
    let got = history(b, &topic, None, None, 10).await;
    assert_eq!(ids_of(&got), vec![id.as_u64()]);
    assert_eq!(got[0].event, format!("ev-{}", id.as_u64() % 1000));
    assert_ne!(got[0].payload.get(), r#"{"evil":true}"#);
}

/// A history answer stops at its byte budget (at least one message), and
/// paging with `before` still covers everything once.
async fn case_history_is_paged_by_bytes(b: &dyn Backend, t: &Topics) {
    let topic = t.topic("bytes");
    let base = now_since_epoch_ms().saturating_sub(30_000);
    let ids: Vec<Id> = (0..6).map(|i| id_at(base + i, 0)).collect();
    for &id in &ids {
        let mut m = msg(&topic, id);
        m.event = "e".into();
        m.payload = RawJson::of(&json!({"text": "x".repeat(1000)}));
        b.append(m).await.expect("append");
    }
    let page = |before: Option<Id>, max_bytes: usize| {
        b.history(HistoryQuery {
            topic: topic.clone(),
            before: before.map(Id::as_u64),
            after: None,
            limit: 100,
            max_bytes,
        })
    };
    let all = desc(&ids);
    // Each message is ~1012 bytes of payload and event: 2500 holds two.
    let got = page(None, 2500).await.expect("history");
    assert_eq!(ids_of(&got), all[..2].to_vec());
    // A budget smaller than one message still returns one.
    let got = page(None, 10).await.expect("history");
    assert_eq!(ids_of(&got), all[..1].to_vec());
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let got = page(before, 2500).await.expect("history");
        if got.is_empty() {
            break;
        }
        assert!(got.len() <= 2);
        let ids = ids_of(&got);
        before = ids.last().map(|&raw| Id::from_u64(raw));
        seen.extend(ids);
    }
    assert_eq!(seen, all, "byte pages cover everything once, in order");
}

async fn run_suite(name: &str, b: &dyn Backend) {
    let t = Topics::new();
    eprintln!("[{name}] append then history");
    case_append_then_history(b, &t).await;
    eprintln!("[{name}] before/after bounds");
    case_bounds(b, &t).await;
    eprintln!("[{name}] limit");
    case_limit(b, &t).await;
    eprintln!("[{name}] several 10-day buckets with empty ones between");
    case_buckets(b, &t).await;
    eprintln!("[{name}] room state");
    case_room_state(b, &t).await;
    eprintln!("[{name}] history paged by bytes");
    case_history_is_paged_by_bytes(b, &t).await;
    eprintln!("[{name}] an existing id is never overwritten");
    case_an_existing_id_is_never_overwritten(b, &t).await;
    report_latency(name, b, &t).await;
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backend_behaviour() {
    let dir = TempDir(std::env::temp_dir().join(format!(
        "chorus-store-test-{}-{}",
        std::process::id(),
        nanos()
    )));
    let backend: Arc<dyn Backend> = Arc::new(Sqlite::open(&dir.0).expect("open sqlite"));
    run_suite("sqlite", backend.as_ref()).await;
}

/// The CQL nodes to test against, or `None` when skipping was asked for
/// explicitly; panics with the way to start a database otherwise.
fn cql_nodes() -> Option<Vec<String>> {
    match std::env::var("CHORUS_SCYLLA_NODES") {
        Ok(v) if !v.trim().is_empty() => Some(
            v.split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
        _ if std::env::var("CHORUS_SKIP_CQL").as_deref() == Ok("1") => {
            eprintln!("CQL backend tests SKIPPED: CHORUS_SKIP_CQL=1");
            None
        }
        _ => panic!(
            "CHORUS_SCYLLA_NODES is not set, so the CQL backend cannot be tested. \
             Start a local Apache Cassandra with `scripts/cassandra.sh start` (first run \
             builds it with Maven, ~1 min; then ~20 s), then run with \
             CHORUS_SCYLLA_NODES=127.0.0.1:9042 (stop it with `scripts/cassandra.sh stop`). \
             To skip the CQL tests on purpose, set CHORUS_SKIP_CQL=1."
        ),
    }
}

fn cql_options(nodes: Vec<String>) -> CqlOptions {
    CqlOptions {
        nodes,
        keyspace: std::env::var("CHORUS_TEST_KEYSPACE").unwrap_or_else(|_| "chorus_test".into()),
        replication_factor: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cql_backend_behaviour() {
    let Some(nodes) = cql_nodes() else { return };
    let t0 = Instant::now();
    let backend = Cql::connect(&cql_options(nodes))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("[cql] connected and schema ready in {:?}", t0.elapsed());
    run_suite("cql", &backend).await;
}

#[tokio::test]
async fn cql_connect_failure_names_the_nodes() {
    // Nothing listens on port 1; the error must say where and what to set.
    let err = match Cql::connect(&cql_options(vec!["127.0.0.1:1".into()])).await {
        Ok(_) => panic!("connected to 127.0.0.1:1"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(err.contains("CHORUS_SCYLLA_NODES"), "{err}");
}
