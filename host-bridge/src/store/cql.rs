//! CQL backend (ScyllaDB or Apache Cassandra) with the `scylla` driver.
//!
//! Schema, created on start (`IF NOT EXISTS`), Discord's message layout:
//!
//! ```text
//! messages        ((channel_id, bucket), message_id DESC)  event, payload
//! channel_buckets (channel_id, bucket DESC)                 the non-empty buckets
//! room_state      (room_id)                                 state, updated_at
//! ```
//!
//! `bucket` is the ten-day partition of the Snowflake id
//! ([`snowflake::bucket_of`]). `channel_buckets` lists, per channel, the
//! buckets that hold messages, so a history query walks buckets newest to
//! oldest from the `before` id down to the `after` id (or the channel's
//! first bucket) and never visits an empty one: a quiet channel costs one
//! index read plus one read per bucket actually returned. An append records
//! its bucket first (once per bucket per process), then the message, so the
//! index never misses a bucket that holds a message.
//!
//! Consistency: reads and writes use `QUORUM`, so a write is acknowledged
//! only once a majority of the replicas (`store.replication_factor`) has it
//! in its commit log, and a read sees every acknowledged write. On a single
//! node (replication factor 1) that is the node itself: configure it with
//! `commitlog_sync: batch` (as tests/cassandra does) or `group` for an
//! acknowledged write to be on disk; Cassandra's default `periodic` sync
//! only fsyncs every 10 s.
//!
//! Faults: every request has a timeout ([`REQUEST_TIMEOUT`]); with the
//! database down a request fails at once (no connection) or at the timeout,
//! never hangs. The driver keeps reconnecting in the background, so requests
//! succeed again when the database is back, without restarting the node.
//!
//! Message ids are stored as `bigint`; Snowflake ids stay below 2^63 until
//! 2095, so signed order is id order.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use chorus_core::data::{RawJson, StoredMessage};
use chorus_core::snowflake::{self, Id};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use serde_json::Value;

use super::{Backend, BoxFuture, HistoryQuery, NewMessage, PageBudget};

/// Upper bound on one request to the database, so a database that is down
/// or overloaded turns into an error rather than a hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on opening a connection to one node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Remembered (channel, bucket) pairs already in `channel_buckets`; past
/// this the memory is dropped and rebuilt (a re-insert is idempotent).
const KNOWN_BUCKETS_MAX: usize = 100_000;

/// Options of the CQL backend.
#[derive(Debug, Clone)]
pub struct CqlOptions {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Keyspace, created if missing.
    pub keyspace: String,
    /// Replication factor of the keyspace when this node creates it
    /// (`SimpleStrategy`); an existing keyspace is left as it is.
    pub replication_factor: u32,
}

struct Statements {
    insert_message: PreparedStatement,
    insert_bucket: PreparedStatement,
    select_buckets: PreparedStatement,
    select_messages: PreparedStatement,
    get_room: PreparedStatement,
    put_room: PreparedStatement,
}

/// A connected CQL backend.
pub struct Cql {
    session: Session,
    st: Statements,
    known_buckets: Mutex<HashSet<(String, i32)>>,
}

/// Whether `name` can be used unquoted as a keyspace name.
fn valid_keyspace(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 48
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
}

fn bucket(id: Id) -> Result<i32> {
    let b = snowflake::bucket_of(id, snowflake::BUCKET_WIDTH_MS);
    i32::try_from(b).map_err(|_| anyhow!("message id {} is beyond the bucket range", id.as_u64()))
}

fn clamp_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl Cql {
    /// Connects, creates the keyspace and tables if missing, and prepares
    /// the statements. A failure names the nodes and the setting to change.
    pub async fn connect(opts: &CqlOptions) -> Result<Self> {
        if opts.nodes.is_empty() {
            bail!("no CQL nodes configured (store.scylla_nodes / CHORUS_SCYLLA_NODES)");
        }
        if !valid_keyspace(&opts.keyspace) {
            bail!(
                "store.keyspace {:?} is not a valid keyspace name (letters, digits, _; at most 48)",
                opts.keyspace
            );
        }
        if opts.replication_factor == 0 {
            bail!("store.replication_factor must be at least 1");
        }
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::Quorum)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .build();
        let session = SessionBuilder::new()
            .known_nodes(&opts.nodes)
            .connection_timeout(CONNECT_TIMEOUT)
            .default_execution_profile_handle(profile.into_handle())
            .build()
            .await
            .with_context(|| {
                format!(
                    "cannot connect to the CQL database at {} (set store.scylla_nodes or CHORUS_SCYLLA_NODES; \
                     for a local test node run scripts/cassandra.sh start)",
                    opts.nodes.join(", ")
                )
            })?;
        let ks = &opts.keyspace;
        let ddl = [
            format!(
                "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                opts.replication_factor
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.messages (
                    channel_id text, bucket int, message_id bigint,
                    event text, payload text,
                    PRIMARY KEY ((channel_id, bucket), message_id)
                 ) WITH CLUSTERING ORDER BY (message_id DESC)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.channel_buckets (
                    channel_id text, bucket int,
                    PRIMARY KEY (channel_id, bucket)
                 ) WITH CLUSTERING ORDER BY (bucket DESC)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {ks}.room_state (
                    room_id text PRIMARY KEY, state text, updated_at bigint
                 )"
            ),
        ];
        for stmt in &ddl {
            session
                .query_unpaged(stmt.as_str(), &[])
                .await
                .with_context(|| format!("creating the CQL schema in keyspace {ks}"))?;
        }
        let prepare = |cql: String| {
            let session = &session;
            async move {
                session
                    .prepare(cql.clone())
                    .await
                    .with_context(|| format!("preparing {cql}"))
            }
        };
        let st = Statements {
            insert_message: prepare(format!(
                "INSERT INTO {ks}.messages (channel_id, bucket, message_id, event, payload) \
                 VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
            ))
            .await?,
            insert_bucket: prepare(format!(
                "INSERT INTO {ks}.channel_buckets (channel_id, bucket) VALUES (?, ?)"
            ))
            .await?,
            select_buckets: prepare(format!(
                "SELECT bucket FROM {ks}.channel_buckets \
                 WHERE channel_id = ? AND bucket <= ? AND bucket >= ?"
            ))
            .await?,
            select_messages: prepare(format!(
                "SELECT message_id, event, payload FROM {ks}.messages \
                 WHERE channel_id = ? AND bucket = ? AND message_id < ? AND message_id > ? \
                 LIMIT ?"
            ))
            .await?,
            get_room: prepare(format!(
                "SELECT state FROM {ks}.room_state WHERE room_id = ?"
            ))
            .await?,
            put_room: prepare(format!(
                "INSERT INTO {ks}.room_state (room_id, state, updated_at) VALUES (?, ?, ?)"
            ))
            .await?,
        };
        tracing::info!(nodes = %opts.nodes.join(","), keyspace = %ks, "CQL store connected");
        Ok(Self {
            session,
            st,
            known_buckets: Mutex::new(HashSet::new()),
        })
    }

    fn bucket_known(&self, channel: &str, bucket: i32) -> bool {
        self.known_buckets
            .lock()
            .map(|k| k.contains(&(channel.to_owned(), bucket)))
            .unwrap_or(false)
    }

    fn remember_bucket(&self, channel: &str, bucket: i32) {
        if let Ok(mut k) = self.known_buckets.lock() {
            if k.len() >= KNOWN_BUCKETS_MAX {
                k.clear();
            }
            k.insert((channel.to_owned(), bucket));
        }
    }

    async fn do_append(&self, m: NewMessage) -> Result<()> {
        let b = bucket(m.id)?;
        let id = i64::try_from(m.id.as_u64())
            .map_err(|_| anyhow!("message id {} does not fit a bigint", m.id.as_u64()))?;
        if !self.bucket_known(&m.topic, b) {
            self.session
                .execute_unpaged(&self.st.insert_bucket, (m.topic.as_str(), b))
                .await
                .context("CQL write (channel bucket index) failed")?;
            self.remember_bucket(&m.topic, b);
        }
        // A lightweight transaction: an id that already exists (two nodes
        // sharing a store with the same node.worker_id) is refused, never
        // silently overwritten as a plain CQL upsert would.
        let result = self
            .session
            .execute_unpaged(
                &self.st.insert_message,
                (
                    m.topic.as_str(),
                    b,
                    id,
                    m.event.as_str(),
                    m.payload.get().to_string(),
                ),
            )
            .await
            .context("CQL write (message) failed")?
            .into_rows_result()
            .context("CQL write (message): no [applied] answer")?;
        // The first column is `[applied]`; a refused insert adds the
        // existing row's columns after it, so read the row untyped.
        let applied = result
            .rows::<scylla::value::Row>()
            .ok()
            .and_then(|mut rows| rows.next())
            .and_then(Result::ok)
            .and_then(|row| match row.columns.into_iter().next() {
                Some(Some(scylla::value::CqlValue::Boolean(a))) => Some(a),
                _ => None,
            })
            .ok_or_else(|| anyhow!("CQL write (message): unreadable [applied] answer"))?;
        if !applied {
            bail!(
                "message id {} already exists in {}: refused, not overwritten (does another node share node.worker_id?)",
                m.id.as_u64(),
                m.topic
            );
        }
        Ok(())
    }

    async fn do_history(&self, q: HistoryQuery) -> Result<Vec<StoredMessage>> {
        let before = q.before.map_or(i64::MAX, clamp_i64);
        let after = q.after.map_or(-1, clamp_i64);
        if q.limit == 0 || after >= before.saturating_sub(1) {
            return Ok(Vec::new());
        }
        // Bucket range: the `before` id's bucket down to the `after` id's.
        let hi = match q.before {
            Some(b) => bucket(Id::from_u64(b)).unwrap_or(i32::MAX),
            None => i32::MAX,
        };
        let lo = match q.after {
            Some(a) => bucket(Id::from_u64(a)).unwrap_or(i32::MAX),
            None => i32::MIN,
        };
        let buckets: Vec<i32> = self
            .session
            .execute_unpaged(&self.st.select_buckets, (q.topic.as_str(), hi, lo))
            .await
            .context("CQL read (channel bucket index) failed")?
            .into_rows_result()
            .context("CQL read (channel bucket index) failed")?
            .rows::<(i32,)>()
            .context("CQL read (channel bucket index): unexpected columns")?
            .map(|r| r.map(|(b,)| b))
            .collect::<Result<_, _>>()
            .context("CQL read (channel bucket index): bad row")?;
        let mut out = Vec::new();
        let mut budget = PageBudget::new(q.max_bytes);
        'buckets: for b in buckets {
            let remaining = (q.limit as usize).saturating_sub(out.len());
            if remaining == 0 {
                break;
            }
            let limit = i32::try_from(remaining).unwrap_or(i32::MAX);
            let rows = self
                .session
                .execute_unpaged(
                    &self.st.select_messages,
                    (q.topic.as_str(), b, before, after, limit),
                )
                .await
                .context("CQL read (messages) failed")?
                .into_rows_result()
                .context("CQL read (messages) failed")?;
            for row in rows
                .rows::<(i64, String, String)>()
                .context("CQL read (messages): unexpected columns")?
            {
                let (raw, event, payload) = row.context("CQL read (messages): bad row")?;
                if !budget.take(payload.len() + event.len()) {
                    break 'buckets;
                }
                let id = Id::from_u64(raw as u64);
                out.push(StoredMessage {
                    id: id.as_u64().to_string(),
                    topic: q.topic.clone(),
                    event,
                    payload: RawJson::from_stored(payload),
                    inserted_at: id.timestamp_ms(),
                });
            }
        }
        Ok(out)
    }

    async fn do_get_room(&self, room: String) -> Result<Option<Value>> {
        let rows = self
            .session
            .execute_unpaged(&self.st.get_room, (room.as_str(),))
            .await
            .context("CQL read (room state) failed")?
            .into_rows_result()
            .context("CQL read (room state) failed")?;
        match rows
            .maybe_first_row::<(Option<String>,)>()
            .context("CQL read (room state): bad row")?
        {
            Some((Some(text),)) => Ok(Some(
                serde_json::from_str(&text).context("stored room state is not JSON")?,
            )),
            _ => Ok(None),
        }
    }

    async fn do_put_room(&self, room: String, state: Value) -> Result<()> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.session
            .execute_unpaged(&self.st.put_room, (room.as_str(), state.to_string(), now))
            .await
            .context("CQL write (room state) failed")?;
        Ok(())
    }
}

impl Backend for Cql {
    fn append(&self, msg: NewMessage) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_append(msg))
    }
    fn history(&self, q: HistoryQuery) -> BoxFuture<'_, Result<Vec<StoredMessage>>> {
        Box::pin(self.do_history(q))
    }
    fn get_room_state(&self, room: String) -> BoxFuture<'_, Result<Option<Value>>> {
        Box::pin(self.do_get_room(room))
    }
    fn put_room_state(&self, room: String, state: Value) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_put_room(room, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_names() {
        assert!(valid_keyspace("chorus"));
        assert!(valid_keyspace("chorus_test_1"));
        assert!(!valid_keyspace(""));
        assert!(!valid_keyspace("1abc"));
        assert!(!valid_keyspace("a-b"));
        assert!(!valid_keyspace("a; DROP"));
        assert!(!valid_keyspace(&"a".repeat(49)));
    }
}
