//! The data service and its first backend, embedded SQLite.
//!
//! Guests never open a database: they send a [`DataRequest`] through the
//! `chorus::data` host call and the service answers. SQLite is synchronous,
//! so the connection lives on its own thread and requests reach it over a
//! channel; the calling lunatic process just awaits the answer and the other
//! processes keep running.
//!
//! Schema: Discord's message layout, partition `(channel_id, bucket)` with
//! ten-day buckets, clustered by Snowflake `message_id` (descending reads).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use chorus_core::data::{DataRequest, DataResponse, StoredMessage};
use chorus_core::snowflake::{self, Generator, Id};
use tokio::sync::{mpsc, oneshot};

type Job = (DataRequest, oneshot::Sender<DataResponse>);

/// Handle to the data service; cheap to clone.
#[derive(Clone)]
pub struct DataService {
    tx: mpsc::UnboundedSender<Job>,
}

impl DataService {
    /// Opens (creating if needed) `<data_dir>/chorus.db` in WAL mode.
    pub fn open_sqlite(data_dir: &Path, worker_id: u16) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join("chorus.db");
        let store = SqliteStore::open(&path, worker_id)?;
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("chorus-sqlite".into())
            .spawn(move || {
                let mut store = store;
                while let Some((request, reply)) = rx.blocking_recv() {
                    let response = store.handle(request).unwrap_or_else(|e| {
                        tracing::error!(error = %e, "sqlite request failed");
                        DataResponse::Error {
                            reason: format!("storage error: {e}"),
                        }
                    });
                    let _ = reply.send(response);
                }
            })?;
        tracing::info!(path = %path.display(), "sqlite store open");
        Ok(Self { tx })
    }

    /// Runs one request; an unavailable backend is an error answer, never a hang.
    pub async fn call(&self, request: DataRequest) -> DataResponse {
        let (reply, answer) = oneshot::channel();
        if self.tx.send((request, reply)).is_err() {
            return DataResponse::Error {
                reason: "storage unavailable".into(),
            };
        }
        answer.await.unwrap_or(DataResponse::Error {
            reason: "storage unavailable".into(),
        })
    }
}

struct SqliteStore {
    conn: sqlite::Connection,
    ids: Generator,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SqliteStore {
    fn open(path: &Path, worker_id: u16) -> Result<Self> {
        let conn = sqlite::open(path).with_context(|| format!("opening {}", path.display()))?;
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
        let ids = Generator::new(worker_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self { conn, ids })
    }

    fn handle(&mut self, request: DataRequest) -> Result<DataResponse> {
        Ok(match request {
            DataRequest::Append {
                topic,
                event,
                payload,
            } => {
                let id = self.ids.next(now_ms());
                let mut st = self.conn.prepare(
                    "INSERT INTO messages (channel_id, bucket, message_id, event, payload)
                     VALUES (?, ?, ?, ?, ?)",
                )?;
                st.bind((1, topic.as_str()))?;
                st.bind((2, bucket(id)))?;
                st.bind((3, id_i64(id)))?;
                st.bind((4, event.as_str()))?;
                st.bind((5, payload.to_string().as_str()))?;
                while st.next()? != sqlite::State::Done {}
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
                let mut st = self.conn.prepare(
                    "SELECT message_id, event, payload FROM messages
                     WHERE channel_id = ? AND message_id < ? AND message_id > ?
                     ORDER BY bucket DESC, message_id DESC LIMIT ?",
                )?;
                st.bind((1, topic.as_str()))?;
                st.bind((
                    2,
                    before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64),
                ))?;
                st.bind((3, after.map_or(-1, |a| a.min(i64::MAX as u64) as i64)))?;
                st.bind((4, i64::from(limit)))?;
                let mut messages = Vec::new();
                while st.next()? == sqlite::State::Row {
                    let raw = st.read::<i64, _>(0)? as u64;
                    let payload: String = st.read(2)?;
                    messages.push(StoredMessage {
                        id: raw.to_string(),
                        topic: topic.clone(),
                        event: st.read(1)?,
                        payload: serde_json::from_str(&payload)
                            .unwrap_or(serde_json::Value::String(payload)),
                        inserted_at: Id::from_u64(raw).timestamp_ms(),
                    });
                }
                DataResponse::Messages { messages }
            }
            DataRequest::GetRoomState { room } => {
                let mut st = self
                    .conn
                    .prepare("SELECT state FROM room_state WHERE room_id = ?")?;
                st.bind((1, room.as_str()))?;
                let state = if st.next()? == sqlite::State::Row {
                    let text: String = st.read(0)?;
                    Some(serde_json::from_str(&text)?)
                } else {
                    None
                };
                DataResponse::RoomState { state }
            }
            DataRequest::PutRoomState { room, state } => {
                let mut st = self.conn.prepare(
                    "INSERT INTO room_state (room_id, state, updated_at) VALUES (?, ?, ?)
                     ON CONFLICT(room_id) DO UPDATE SET state = excluded.state,
                     updated_at = excluded.updated_at",
                )?;
                st.bind((1, room.as_str()))?;
                st.bind((2, state.to_string().as_str()))?;
                st.bind((3, now_ms() as i64))?;
                while st.next()? != sqlite::State::Done {}
                DataResponse::Done
            }
        })
    }
}

fn bucket(id: Id) -> i64 {
    snowflake::bucket_of(id, snowflake::BUCKET_WIDTH_MS) as i64
}

fn id_i64(id: Id) -> i64 {
    id.as_u64() as i64
}
