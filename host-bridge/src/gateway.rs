//! The gateway's host side: the node's listener, every connection's request
//! head, WebSocket upgrades, and the spawning of one guest process per
//! connection.
//!
//! Connections are accepted and read here, in parallel on the runtime's
//! worker threads, not by a guest acceptor handing each one to a supervisor:
//! a connection costs no guest process until its head has been read and
//! checked. Then:
//!
//! * a WebSocket upgrade gets its `101`, a [`Socket`] (inlet and outlet, see
//!   `socket.rs`) and a native session process (`session.rs`); this task
//!   then reads the socket for it;
//! * any other request gets its body read here and a process spawned from
//!   `chorus_http(socket)` that answers it through the socket's outlet.
//!
//! The host is the sessions' supervisor (they are temporary children): a
//! session that crashes closes only its own socket (1011) and is counted in
//! `chorus_session_crashes_total`; one that returns has already closed it.
//! (An HTTP handler is a guest process, supervised the same way.)
//! Every refusal before a process exists is an HTTP answer naming its
//! reason and, for limits, the config key.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use chorus_core::admission::{self, Admission};
use chorus_core::config::Config;
use chorus_core::http::{self, Request, Response};
use chorus_core::phoenix::Vsn;
use chorus_core::session::{SessionConfig, Start};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::cluster::Cluster;
use crate::session::Sessions;
use crate::socket::{self, Conn, Sockets};
use crate::spawn::Spawner;

/// What an HTTP handler process reads: the request head and its body.
#[derive(serde::Serialize)]
struct Exchange<'a> {
    request: &'a Request,
    #[serde(with = "serde_bytes")]
    body: &'a [u8],
}

/// The node's gateway.
pub struct Gateway {
    config: Config,
    session: SessionConfig,
    sockets: Arc<Sockets>,
    admission: Mutex<Admission>,
    spawner: OnceLock<Spawner>,
    /// The native session processes' shared part (with the spawner).
    sessions: OnceLock<Arc<Sessions>>,
    /// Bound at start (so a busy port fails the start, naming it), taken
    /// when the guest's tree is up and asks to accept.
    listener: Mutex<Option<std::net::TcpListener>>,
    /// Session (and HTTP handler) processes that crashed; their sockets
    /// were closed with 1011.
    crashes: Arc<AtomicU64>,
    /// Connections refused before their head was read (limits).
    refused: AtomicU64,
    /// A drain started: the listener is closed, upgrades are refused and
    /// `/healthz` and `/readyz` answer 503.
    draining: AtomicBool,
    /// Tells the accept loop (and the node) that a drain started.
    drain: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    /// Binds the node's port with `limits.listen_backlog`.
    pub fn bind(config: &Config, sockets: Arc<Sockets>) -> Result<Arc<Gateway>> {
        let addr: SocketAddr = format!("{}:{}", config.node.host, config.node.port)
            .parse()
            .with_context(|| {
                format!(
                    "node.host {:?} and node.port {} do not form an address",
                    config.node.host, config.node.port
                )
            })?;
        let listener = listen(addr, config.limits.listen_backlog).with_context(|| {
            format!(
                "cannot listen on {addr} (is another node running? set CHORUS_PORT or node.port)"
            )
        })?;
        Ok(Arc::new(Gateway {
            session: SessionConfig::from_config(config),
            config: config.clone(),
            sockets,
            admission: Mutex::new(Admission::new(&config.limits)),
            spawner: OnceLock::new(),
            sessions: OnceLock::new(),
            listener: Mutex::new(Some(listener)),
            crashes: Arc::new(AtomicU64::new(0)),
            refused: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            drain: tokio::sync::watch::channel(false).0,
        }))
    }

    /// Gives the gateway the means to spawn guest processes (once the guest
    /// is compiled) and to start sessions in the same environment.
    pub fn set_spawner(self: &Arc<Self>, spawner: Spawner, cluster: Option<Arc<Cluster>>) {
        let sessions = Sessions::new(
            spawner.env.clone(),
            spawner.registry.clone(),
            self.sockets.clone(),
            cluster,
            Arc::downgrade(self),
            self.crashes.clone(),
        );
        let _ = self.sessions.set(sessions);
        let _ = self.spawner.set(spawner);
    }

    /// Starts accepting connections; false if already started or the
    /// listener cannot be handed to the runtime.
    pub fn start(self: &Arc<Self>) -> bool {
        let Some(listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return false;
        };
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot accept on the node's listener: {e}");
                return false;
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(
            backlog = self.config.limits.listen_backlog,
            "listening on ws://{addr}/realtime/v1/websocket"
        );
        tokio::spawn(self.clone().accept_loop(listener));
        true
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut drain = self.drain.subscribe();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = drain.wait_for(|d| *d) => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(self.clone().serve(stream, peer));
                }
                Err(e) => {
                    // Out of file descriptors, mostly: wait for some to close.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        // Connections the kernel completed before the drain (in the
        // listen backlog, not accepted yet) are taken and answered — 503
        // `draining` to an upgrade, HTTP served — instead of being reset
        // when the listener closes.
        let mut late = 0usize;
        match listener.into_std() {
            Ok(std) => {
                // At most a backlog's worth: what was waiting, not what
                // keeps arriving.
                let most = self.config.limits.listen_backlog as usize;
                if std.set_nonblocking(true).is_ok() {
                    while late < most {
                        let Ok((stream, peer)) = std.accept() else {
                            break;
                        };
                        late += 1;
                        let stream = stream
                            .set_nonblocking(true)
                            .and_then(|()| TcpStream::from_std(stream));
                        if let Ok(stream) = stream {
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(self.clone().serve(stream, peer));
                        }
                    }
                }
                // Dropping the listener closes the port: a second node can
                // bind it while this one drains.
                drop(std);
            }
            Err(e) => tracing::warn!("draining: the listen backlog was not taken: {e}"),
        }
        tracing::info!(backlog_taken = late, "draining: the listener is closed");
    }

    /// Starts a drain (SIGTERM or the admin route): no connection is
    /// accepted any more, the listener is closed, upgrades on connections
    /// already accepted are refused. True when this call started it.
    pub fn request_drain(&self) -> bool {
        if self.draining.swap(true, Ordering::AcqRel) {
            return false;
        }
        // Not accepting yet (the tree is not up): close the port now.
        if let Ok(mut listener) = self.listener.lock() {
            listener.take();
        }
        self.drain.send_replace(true);
        true
    }

    /// Whether a drain started.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Resolves once a drain is requested.
    pub async fn drain_requested(&self) {
        let mut drain = self.drain.subscribe();
        let _ = drain.wait_for(|d| *d).await;
    }

    /// One connection: admission, head, then upgrade or HTTP.
    async fn serve(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let admitted = self
            .admission
            .lock()
            .map(|mut a| a.admit(peer.ip()))
            .unwrap_or(Ok(()));
        if let Err(refused) = admitted {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let response = Response::json(503, &json!({ "error": refused.to_string() }));
            let _ = write_timeout(&mut stream, &response.to_bytes()).await;
            return;
        }
        let ticket = Ticket {
            gateway: self.clone(),
            peer: peer.ip(),
            pending: true,
        };
        let limits = &self.config.limits;
        let head = tokio::time::timeout(
            Duration::from_millis(limits.http_head_timeout_ms),
            Box::pin(read_head(&mut stream, limits.max_http_head_bytes as usize)),
        )
        .await;
        let (request, rest) = match head {
            Ok(Ok(Some(r))) => r,
            Ok(Ok(None)) => return,
            Ok(Err(response)) => {
                if write_timeout(&mut stream, &response.to_bytes())
                    .await
                    .is_ok()
                {
                    linger(&mut stream).await;
                }
                return;
            }
            Err(_) => {
                let response = Response::json(
                    408,
                    &json!({"error": format!(
                        "request head not received within {} ms (limits.http_head_timeout_ms)",
                        limits.http_head_timeout_ms
                    )}),
                );
                let _ = write_timeout(&mut stream, &response.to_bytes()).await;
                return;
            }
        };
        let mut ticket = ticket;
        ticket.head_done();
        if admission::WS_PATHS.contains(&request.path.as_str()) {
            self.upgrade(stream, request, rest, ticket).await;
        } else {
            Box::pin(self.http(stream, request, rest, ticket)).await;
        }
    }

    async fn upgrade(
        self: Arc<Self>,
        mut stream: TcpStream,
        request: Request,
        early: Vec<u8>,
        ticket: Ticket,
    ) {
        if self.draining() {
            let response = Response::json(
                503,
                &json!({"error": "draining: this node is shutting down; connect again (to the next node)"}),
            );
            let _ = write_timeout(&mut stream, &response.to_bytes()).await;
            return;
        }
        let up = match admission::upgrade(&request, &self.config, now_secs()) {
            Ok(up) => up,
            Err(response) => {
                let _ = write_timeout(&mut stream, &response.to_bytes()).await;
                return;
            }
        };
        if write_timeout(&mut stream, &up.accept).await.is_err() {
            return;
        }
        let (reader, writer) = stream.into_split();
        let claims = up
            .claims
            .map(|c| serde_json::Value::Object(c.into_map()).to_string());
        let socket = self.sockets.open(
            writer,
            up.vsn,
            Conn::WebSocket {
                deflate: up.deflate,
            },
            |_| Vec::new(),
        );
        let start = Start {
            socket: socket.id,
            vsn: up.vsn,
            claims,
            config: self.session.clone(),
        };
        if !self.start_session(&socket, start) {
            return;
        }
        // This task lives as long as the session; the futures boxed above
        // (head, HTTP path, spawn) would otherwise size it for their largest
        // state (~9 KiB a session), and the parsed request is not needed.
        drop(request);
        socket::read_loop(self.sockets.clone(), socket, reader, early).await;
        drop(ticket);
    }

    async fn http(
        self: Arc<Self>,
        mut stream: TcpStream,
        request: Request,
        mut body: Vec<u8>,
        ticket: Ticket,
    ) {
        let limits = &self.config.limits;
        let len = request.content_length.unwrap_or(0);
        let max = limits.max_frame_bytes as usize;
        if len > max {
            let response = Response::json(
                413,
                &json!({"error": format!("payload_size_exceeded: body over {max} bytes (limits.max_frame_bytes)")}),
            );
            let _ = write_timeout(&mut stream, &response.to_bytes()).await;
            return;
        }
        if body.len() < len {
            let read = tokio::time::timeout(
                Duration::from_millis(limits.http_body_timeout_ms),
                read_body(&mut stream, &mut body, len),
            )
            .await;
            let failure = match read {
                Ok(Ok(())) => None,
                Ok(Err(_)) => Some(Response::json(
                    400,
                    &json!({"error": "body shorter than Content-Length"}),
                )),
                Err(_) => Some(Response::json(
                    408,
                    &json!({"error": format!(
                        "request body not received within {} ms (limits.http_body_timeout_ms)",
                        limits.http_body_timeout_ms
                    )}),
                )),
            };
            if let Some(response) = failure {
                let _ = write_timeout(&mut stream, &response.to_bytes()).await;
                return;
            }
        }
        body.truncate(len);
        let (_reader, writer) = stream.into_split();
        let socket = self.sockets.open(writer, Vsn::V1, Conn::Http, |_| {
            bincode::serialize(&Exchange {
                request: &request,
                body: &body,
            })
            .unwrap_or_default()
        });
        self.spawn(&socket, "chorus_http").await;
        drop(ticket);
    }

    /// Starts the native session process that owns `socket`. False when
    /// the node is not ready for sessions (the socket is closed).
    fn start_session(&self, socket: &Arc<socket::Socket>, start: Start) -> bool {
        let Some(sessions) = self.sessions.get() else {
            self.sockets.close(socket.id, Some(1011), "node starting");
            return false;
        };
        sessions.start(socket, start);
        true
    }

    /// Spawns the guest process that owns `socket`, and a task that closes
    /// the socket when the process ends (counting a crash). False when no
    /// process could be started (the socket is closed with 1011).
    async fn spawn(&self, socket: &Arc<socket::Socket>, function: &str) -> bool {
        let Some(spawner) = self.spawner.get() else {
            self.sockets.close(socket.id, Some(1011), "node starting");
            return false;
        };
        match spawner.spawn(function, socket.id).await {
            Ok((done, process)) => {
                self.sockets.set_owner(socket, process);
                let sockets = self.sockets.clone();
                let id = socket.id;
                let crashes = self.crashes.clone();
                tokio::spawn(async move {
                    let crashed = !matches!(done.await, Ok(Ok(_)));
                    if crashed {
                        crashes.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            socket = id,
                            "a connection's process crashed; its socket is closed"
                        );
                        sockets.close(id, Some(1011), "internal error");
                    } else {
                        sockets.close(id, None, "");
                    }
                });
                true
            }
            Err(e) => {
                tracing::error!("cannot start a process for a connection: {e:#}");
                self.sockets
                    .close(socket.id, Some(1011), "cannot start a session");
                false
            }
        }
    }

    /// Session (and HTTP handler) processes that crashed so far.
    pub fn crashes(&self) -> u64 {
        self.crashes.load(Ordering::Relaxed)
    }

    /// Connections refused by an admission limit so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Connections still sending their request head, for /metrics.
    pub fn pending(&self) -> u32 {
        self.admission.lock().map(|a| a.pending()).unwrap_or(0)
    }
}

/// An admitted connection's place in the counts; released when dropped.
struct Ticket {
    gateway: Arc<Gateway>,
    peer: std::net::IpAddr,
    pending: bool,
}

impl Ticket {
    fn head_done(&mut self) {
        if std::mem::replace(&mut self.pending, false) {
            if let Ok(mut a) = self.gateway.admission.lock() {
                a.head_done();
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.head_done();
        if let Ok(mut a) = self.gateway.admission.lock() {
            a.closed(self.peer);
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A non-blocking listener on `addr` with the given accept queue.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket as RawSocket, Type};
    let socket = RawSocket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Writes a short answer, giving up after a few seconds.
async fn write_timeout(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(Duration::from_secs(5), stream.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Closes a connection whose request was refused while the client may still
/// be sending it (an oversized head): our side of the stream ends first, then
/// what the client still sends is read and dropped — at most
/// `LINGER_BYTES`, for at most `LINGER` — so that the kernel does not answer
/// the unread bytes with a reset that can destroy the refusal before the
/// client reads it.
async fn linger(stream: &mut TcpStream) {
    const LINGER: Duration = Duration::from_secs(1);
    const LINGER_BYTES: usize = 256 * 1024;
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut drained = 0;
    let mut chunk = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while drained < LINGER_BYTES {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Reads until a whole request head is buffered: the request and the bytes
/// after it. `Ok(None)` when the client closed without sending anything.
async fn read_head(
    stream: &mut TcpStream,
    max: usize,
) -> Result<Option<(Request, Vec<u8>)>, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err(Response::text(400, "incomplete request head\n")),
            Ok(n) => n,
            Err(_) => return Ok(None),
        };
        buf.extend_from_slice(&chunk[..n]);
        match http::parse_request(&buf, max) {
            Ok(Some((request, head_len))) => {
                let rest = buf.split_off(head_len);
                return Ok(Some((request, rest)));
            }
            Ok(None) => continue,
            Err(e) => return Err(e.to_response()),
        }
    }
}

async fn read_body(stream: &mut TcpStream, body: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 16 * 1024];
    while body.len() < len {
        match stream.read(&mut chunk).await? {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => body.extend_from_slice(&chunk[..n]),
        }
    }
    Ok(())
}
