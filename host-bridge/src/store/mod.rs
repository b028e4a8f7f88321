//! The data service: every read and write of messages and room state goes
//! through it (Discord's data services). Backends implement [`Backend`]; the
//! service in front of them assigns Snowflake ids, and is where coalescing,
//! caching and routing to workers live.
//!
//! Backends: [`sqlite`] (embedded, the default).

pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use chorus_core::data::{DataRequest, DataResponse, StoredMessage};
use chorus_core::snowflake::{Generator, Id};
use serde_json::Value;

/// A boxed future, so backends can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message to persist, its id already assigned.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Id,
    pub topic: String,
    pub event: String,
    pub payload: Value,
}

/// A history query: newest first, ids strictly between `after` and `before`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HistoryQuery {
    pub topic: String,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub limit: u32,
}

/// One storage backend. Every method resolves once the backend has
/// answered; `append` only once the write is durable.
pub trait Backend: Send + Sync + 'static {
    fn append(&self, msg: NewMessage) -> BoxFuture<'_, Result<()>>;
    fn history(&self, q: HistoryQuery) -> BoxFuture<'_, Result<Vec<StoredMessage>>>;
    fn get_room_state(&self, room: String) -> BoxFuture<'_, Result<Option<Value>>>;
    fn put_room_state(&self, room: String, state: Value) -> BoxFuture<'_, Result<()>>;
}

/// Handle to the data service; cheap to clone.
#[derive(Clone)]
pub struct DataService {
    backend: Arc<dyn Backend>,
    ids: Arc<Mutex<Generator>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl DataService {
    pub fn new(backend: Arc<dyn Backend>, worker_id: u16) -> Result<Self> {
        let ids = Generator::new(worker_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self {
            backend,
            ids: Arc::new(Mutex::new(ids)),
        })
    }

    fn next_id(&self) -> Result<Id> {
        let mut ids = self
            .ids
            .lock()
            .map_err(|_| anyhow::anyhow!("id generator poisoned"))?;
        Ok(ids.next(now_ms()))
    }

    /// Runs one request; a failing backend is an error answer, never a hang.
    pub async fn call(&self, request: DataRequest) -> DataResponse {
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

    async fn dispatch(&self, request: DataRequest) -> Result<DataResponse> {
        Ok(match request {
            DataRequest::Append {
                topic,
                event,
                payload,
            } => {
                let id = self.next_id()?;
                self.backend
                    .append(NewMessage {
                        id,
                        topic,
                        event,
                        payload,
                    })
                    .await?;
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
            } => DataResponse::Messages {
                messages: self
                    .backend
                    .history(HistoryQuery {
                        topic,
                        before,
                        after,
                        limit,
                    })
                    .await?,
            },
            DataRequest::GetRoomState { room } => DataResponse::RoomState {
                state: self.backend.get_room_state(room).await?,
            },
            DataRequest::PutRoomState { room, state } => {
                self.backend.put_room_state(room, state).await?;
                DataResponse::Done
            }
        })
    }
}
