//! Embedded SQLite backend, the default.
//!
//! SQLite is synchronous, so the connection lives on its own thread and
//! requests reach it over a channel; the calling lunatic process just awaits
//! the answer and the other processes keep running. WAL mode with
//! `synchronous = FULL`: an append returns once it is on disk.
//!
//! Schema: Discord's message layout, partition `(channel_id, bucket)` with
//! ten-day buckets, clustered by Snowflake `message_id` (read newest first).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use chorus_core::data::{RawJson, StoredMessage};
use chorus_core::snowflake::{self, Id};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{Backend, BoxFuture, HistoryQuery, NewMessage, PageBudget};

enum Job {
    Append(NewMessage, oneshot::Sender<Result<()>>),
    History(HistoryQuery, oneshot::Sender<Result<Vec<StoredMessage>>>),
    GetRoom(String, oneshot::Sender<Result<Option<Value>>>),
    PutRoom(String, Value, oneshot::Sender<Result<()>>),
}

/// Handle to the SQLite thread.
pub struct Sqlite {
    tx: mpsc::UnboundedSender<Job>,
}

impl Sqlite {
    /// Opens (creating if needed) `<data_dir>/chorus.db`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join("chorus.db");
        let conn = open_db(&path)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("chorus-sqlite".into())
            .spawn(move || {
                let mut queued = Vec::new();
                while rx.blocking_recv_many(&mut queued, 1024) > 0 {
                    // Group commit: appends queued together share one
                    // transaction (one WAL sync); replies still go out only
                    // after that commit.
                    let mut appends = Vec::new();
                    for job in queued.drain(..) {
                        match job {
                            Job::Append(m, reply) => appends.push((m, reply)),
                            other => {
                                commit_appends(&conn, std::mem::take(&mut appends));
                                serve(&conn, other);
                            }
                        }
                    }
                    commit_appends(&conn, appends);
                }
            })?;
        tracing::info!(path = %path.display(), "sqlite store open");
        Ok(Self { tx })
    }

    async fn run<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T>>) -> Job) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(job(reply))
            .map_err(|_| anyhow!("sqlite thread stopped"))?;
        answer.await.map_err(|_| anyhow!("sqlite thread stopped"))?
    }
}

impl Backend for Sqlite {
    fn append(&self, msg: NewMessage) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.run(|r| Job::Append(msg, r)))
    }
    fn history(&self, q: HistoryQuery) -> BoxFuture<'_, Result<Vec<StoredMessage>>> {
        Box::pin(self.run(|r| Job::History(q, r)))
    }
    fn get_room_state(&self, room: String) -> BoxFuture<'_, Result<Option<Value>>> {
        Box::pin(self.run(|r| Job::GetRoom(room, r)))
    }
    fn put_room_state(&self, room: String, state: Value) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.run(|r| Job::PutRoom(room, state, r)))
    }
}

/// How long a write waits for a lock another process holds (a backup, an
/// operator's shell) before it fails with "database is locked".
const BUSY_TIMEOUT_MS: usize = 1_000;

fn serve(conn: &sqlite::Connection, job: Job) {
    match job {
        Job::Append(m, reply) => drop(reply.send(append(conn, &m).map_err(explain))),
        Job::History(q, reply) => drop(reply.send(history(conn, &q).map_err(explain))),
        Job::GetRoom(r, reply) => drop(reply.send(get_room(conn, &r).map_err(explain))),
        Job::PutRoom(r, s, reply) => drop(reply.send(put_room(conn, &r, &s).map_err(explain))),
    }
}

/// Commits a batch of appends in one transaction and answers each. If the
/// batch fails it is rolled back and every append is retried on its own, so
/// one bad message cannot fail its neighbours and each answer is exact.
fn commit_appends(
    conn: &sqlite::Connection,
    batch: Vec<(NewMessage, oneshot::Sender<Result<()>>)>,
) {
    match batch.len() {
        0 => return,
        1 => {
            for (m, reply) in batch {
                serve(conn, Job::Append(m, reply));
            }
            return;
        }
        _ => {}
    }
    let together = conn
        .execute("BEGIN IMMEDIATE")
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            for (m, _) in &batch {
                append(conn, m)?;
            }
            conn.execute("COMMIT").map_err(anyhow::Error::from)
        });
    match together {
        Ok(()) => {
            for (_, reply) in batch {
                let _ = reply.send(Ok(()));
            }
        }
        Err(e) => {
            let _ = conn.execute("ROLLBACK");
            tracing::warn!(error = %explain(e), size = batch.len(), "group commit failed; appending one by one");
            for (m, reply) in batch {
                serve(conn, Job::Append(m, reply));
            }
        }
    }
}

fn open_db(path: &Path) -> Result<sqlite::Connection> {
    let mut conn = sqlite::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.set_busy_timeout(BUSY_TIMEOUT_MS)
        .context("setting the busy timeout")?;
    conn.execute(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS messages (
             channel_id TEXT NOT NULL,
             bucket INTEGER NOT NULL,
             message_id INTEGER NOT NULL,
             event TEXT NOT NULL,
             payload TEXT NOT NULL,
             PRIMARY KEY (channel_id, bucket, message_id)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS room_state (
             room_id TEXT PRIMARY KEY,
             state TEXT NOT NULL,
             updated_at INTEGER NOT NULL
         );",
    )
    .with_context(|| format!("creating the schema in {}", path.display()))?;
    Ok(conn)
}

/// SQLite errors often arrive as a bare result code; name the common ones
/// so the client's error reply says what failed.
fn explain(e: anyhow::Error) -> anyhow::Error {
    let Some(code) = e.downcast_ref::<sqlite::Error>().and_then(|s| s.code) else {
        return e;
    };
    let what = match code & 0xff {
        5 => "database is locked (another process holds its write lock)",
        6 => "a table in the database is locked",
        8 => "attempt to write a read-only database",
        10 => "disk I/O error",
        11 => "the database file is corrupt",
        13 => "database or disk is full",
        14 => "unable to open the database file",
        19 => "a message with this id already exists: refused, not overwritten (does another node share node.worker_id?)",
        _ => return e,
    };
    anyhow!("sqlite: {what} (code {code})")
}

fn bucket(id: Id) -> i64 {
    snowflake::bucket_of(id, snowflake::BUCKET_WIDTH_MS) as i64
}

fn append(conn: &sqlite::Connection, m: &NewMessage) -> Result<()> {
    let mut st = conn.prepare(
        "INSERT INTO messages (channel_id, bucket, message_id, event, payload)
         VALUES (?, ?, ?, ?, ?)",
    )?;
    st.bind((1, m.topic.as_str()))?;
    st.bind((2, bucket(m.id)))?;
    st.bind((3, m.id.as_u64() as i64))?;
    st.bind((4, m.event.as_str()))?;
    st.bind((5, m.payload.get()))?;
    while st.next()? != sqlite::State::Done {}
    Ok(())
}

fn history(conn: &sqlite::Connection, q: &HistoryQuery) -> Result<Vec<StoredMessage>> {
    let mut st = conn.prepare(
        "SELECT message_id, event, payload FROM messages
         WHERE channel_id = ? AND message_id < ? AND message_id > ?
         ORDER BY bucket DESC, message_id DESC LIMIT ?",
    )?;
    st.bind((1, q.topic.as_str()))?;
    st.bind((
        2,
        q.before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64),
    ))?;
    st.bind((3, q.after.map_or(-1, |a| a.min(i64::MAX as u64) as i64)))?;
    st.bind((4, i64::from(q.limit)))?;
    let mut messages = Vec::new();
    let mut budget = PageBudget::new(q.max_bytes);
    while st.next()? == sqlite::State::Row {
        let raw = st.read::<i64, _>(0)? as u64;
        let payload: String = st.read(2)?;
        let event: String = st.read(1)?;
        if !budget.take(payload.len() + event.len()) {
            break;
        }
        messages.push(StoredMessage {
            id: raw.to_string(),
            topic: q.topic.clone(),
            event,
            payload: RawJson::from_stored(payload),
            inserted_at: Id::from_u64(raw).timestamp_ms(),
        });
    }
    Ok(messages)
}

fn get_room(conn: &sqlite::Connection, room: &str) -> Result<Option<Value>> {
    let mut st = conn.prepare("SELECT state FROM room_state WHERE room_id = ?")?;
    st.bind((1, room))?;
    if st.next()? == sqlite::State::Row {
        let text: String = st.read(0)?;
        Ok(Some(serde_json::from_str(&text)?))
    } else {
        Ok(None)
    }
}

fn put_room(conn: &sqlite::Connection, room: &str, state: &Value) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let mut st = conn.prepare(
        "INSERT INTO room_state (room_id, state, updated_at) VALUES (?, ?, ?)
         ON CONFLICT(room_id) DO UPDATE SET state = excluded.state,
         updated_at = excluded.updated_at",
    )?;
    st.bind((1, room))?;
    st.bind((2, state.to_string().as_str()))?;
    st.bind((3, now))?;
    while st.next()? != sqlite::State::Done {}
    Ok(())
}
