//! Shared harness of the end-to-end tests: a real `chorus run` node process
//! (own free port, own temporary data dir, `CHORUS_*` overrides), a raw HTTP
//! helper and a real WebSocket client (tungstenite) speaking the Phoenix
//! protocol through `chorus_core::phoenix::client`.
//!
//! Every wait is bounded: sockets have read timeouts and every "until" loop
//! has a deadline, so a hung node fails the test instead of hanging it.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chorus_core::phoenix::{client, FrameRef, Inbound, Message, Outbound, Payload, Vsn};
use serde_json::{json, Value};
use tungstenite::protocol::CloseFrame;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message as WsMessage, WebSocket};

/// How long a node may take to answer /healthz after it is spawned.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Default wait for one expected frame.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host-bridge lives inside the workspace")
        .to_path_buf()
}

/// The guest module: `CHORUS_GUEST`, else the workspace's release build.
/// Missing means the test cannot run: fail loudly, never pass.
pub fn guest_wasm() -> PathBuf {
    let wasm = std::env::var_os("CHORUS_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/wasm32-wasip1/release/chorus-guest.wasm"));
    assert!(
        wasm.is_file(),
        "the chorus guest is not built: {} does not exist.\n\
         Build it with `cargo build --release --target wasm32-wasip1 -p chorus-guest` \
         from the workspace root, or point CHORUS_GUEST at the .wasm file.",
        wasm.display()
    );
    wasm
}

pub fn chorus_bin() -> &'static str {
    env!("CARGO_BIN_EXE_chorus")
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "chorus-e2e-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nobody listens on right now (the node binds it a moment later;
/// [`Node::start`] retries with another port if it was taken meanwhile).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Environment every test node gets: small process pool, no sysctl changes.
fn base_env() -> Vec<(String, String)> {
    vec![
        ("CHORUS_RUNTIME_MAX_PROCESSES".into(), "2000".into()),
        ("CHORUS_RUNTIME_MIN_MAX_MAP_COUNT".into(), "1".into()),
        ("RUST_LOG".into(), "info".into()),
    ]
}

/// Output of a process, collected by reader threads.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<String>>);

impl Output {
    pub fn drain(&self, pipe: impl Read + Send + 'static) {
        let out = self.0.clone();
        thread::spawn(move || {
            let mut pipe = pipe;
            let mut buf = [0u8; 4096];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => out
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                }
            }
        });
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// Spawns `chorus run` with the given environment and working directory.
/// The inherited environment's `CHORUS_*` variables are removed so a
/// developer's shell cannot change what a test checks (except CHORUS_GUEST,
/// which is passed as --guest).
pub fn spawn_chorus(
    args: &[&str],
    env: &[(String, String)],
    cwd: &Path,
) -> (Child, Output, Output) {
    let mut cmd = Command::new(chorus_bin());
    cmd.arg("run")
        .arg("--guest")
        .arg(guest_wasm())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("CHORUS_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    for (k, v) in base_env().iter().chain(env) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn the chorus binary");
    let (stdout, stderr) = (Output::default(), Output::default());
    stdout.drain(child.stdout.take().expect("piped stdout"));
    stderr.drain(child.stderr.take().expect("piped stderr"));
    (child, stdout, stderr)
}

/// Waits for `child` to exit, killing it after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait for chorus") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A node process that is killed when dropped.
pub struct Node {
    pub child: Child,
    pub port: u16,
    pub data_dir: TempDir,
    pub stdout: Output,
    pub stderr: Output,
}

impl Node {
    /// A node with default settings.
    pub fn start() -> Node {
        Node::start_with(&[])
    }

    /// A node with extra `CHORUS_*` overrides; waits until /healthz answers.
    pub fn start_with(env: &[(&str, &str)]) -> Node {
        let mut last_failure = String::new();
        for _attempt in 0..3 {
            let data_dir = TempDir::new("node");
            let port = free_port();
            let mut all: Vec<(String, String)> = vec![
                ("CHORUS_PORT".into(), port.to_string()),
                (
                    "CHORUS_DATA_DIR".into(),
                    data_dir.path().display().to_string(),
                ),
            ];
            all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            let (child, stdout, stderr) = spawn_chorus(&[], &all, data_dir.path());
            let mut node = Node {
                child,
                port,
                data_dir,
                stdout,
                stderr,
            };
            match node.wait_healthy() {
                Ok(()) => return node,
                Err(reason) => {
                    let logs = node.stderr.text();
                    // Lost a race for the free port: try another one.
                    if logs.contains("cannot listen") {
                        last_failure = format!("{reason}\n{logs}");
                        continue;
                    }
                    panic!("node did not become healthy: {reason}\n--- stderr\n{logs}");
                }
            }
        }
        panic!("node could not bind a free port three times:\n{last_failure}");
    }

    fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for chorus") {
                return Err(format!("node exited during start-up with {status}"));
            }
            if let Ok(resp) = try_http(self.port, "GET", "/healthz", &[], b"") {
                if resp.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("no 200 from /healthz within {START_TIMEOUT:?}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn ws_url(&self, path: &str, vsn: &str) -> String {
        format!("ws://127.0.0.1:{}{path}?vsn={vsn}", self.port)
    }

    /// A client on /realtime/v1/websocket.
    pub fn connect(&self, vsn: Vsn) -> Client {
        Client::connect(&self.ws_url("/realtime/v1/websocket", vsn.as_str()), vsn)
            .unwrap_or_else(|e| panic!("connect: {e}\n--- node stderr\n{}", self.logs()))
    }

    pub fn http(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Http {
        try_http(self.port, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n--- node stderr\n{}", self.logs()))
    }

    /// The Prometheus text of /metrics.
    pub fn metrics(&self) -> String {
        let resp = self.http("GET", "/metrics", &[], b"");
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.body_text());
        resp.body_text()
    }

    /// The value of an unlabelled metric, panicking if it is absent.
    pub fn metric(&self, name: &str) -> i64 {
        let text = self.metrics();
        metric_value(&text, name).unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    pub fn logs(&self) -> String {
        self.stderr.text()
    }

    /// Waits up to `timeout` for `needle` to appear in the node's stderr.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.logs().contains(needle)
    }

    /// Sends a signal with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.path().join("chorus.db")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `name` in Prometheus text (`name value` line).
pub fn metric_value(text: &str, name: &str) -> Option<i64> {
    text.lines().find_map(|line| {
        let (n, v) = line.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// One HTTP response.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Http {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body_text()))
    }

    /// A header value (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// One HTTP/1.1 request on a fresh connection; reads until the server closes
/// it (the admin API answers one request per connection).
pub fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Http, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).map_err(|e| e.to_string())?;
    let raw = read_to_close(&mut stream, RECV_TIMEOUT)?;
    parse_http(&raw)
}

/// Splits a raw response into status, head and (Content-Length bounded) body.
pub fn parse_http(raw: &[u8]) -> Result<Http, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete head in {:?}", String::from_utf8_lossy(raw)))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let mut body = raw[split + 4..].to_vec();
    let resp = Http {
        status,
        head,
        body: Vec::new(),
    };
    if let Some(len) = resp.header("content-length").and_then(|l| l.parse().ok()) {
        body.truncate(len);
    }
    Ok(Http { body, ..resp })
}

/// Reads until EOF; an error is returned if the peer keeps the connection
/// open past `timeout`.
pub fn read_to_close(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "connection still open after {timeout:?}; read so far: {:?}",
                String::from_utf8_lossy(&raw)
            ));
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return Ok(raw),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(raw),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// What a client read from its socket.
#[derive(Debug)]
pub enum Event {
    /// A data frame, decoded as the npm clients decode it.
    Msg(Outbound),
    /// A close frame (code, reason).
    Close(Option<(u16, String)>),
}

/// A Phoenix client over a real WebSocket.
pub struct Client {
    pub ws: WebSocket<MaybeTlsStream<TcpStream>>,
    pub vsn: Vsn,
    next_ref: u64,
    /// Messages read while waiting for something else.
    pending: Vec<Outbound>,
}

impl Client {
    /// Connects; an HTTP refusal comes back as `Err((status, body))` text.
    pub fn connect(url: &str, vsn: Vsn) -> Result<Client, String> {
        match Client::try_connect(url, vsn) {
            Ok(c) => Ok(c),
            Err((status, body)) => Err(format!("HTTP {status}: {body}")),
        }
    }

    /// Connects, returning the HTTP status and body of a refused handshake.
    pub fn try_connect(url: &str, vsn: Vsn) -> Result<Client, (u16, String)> {
        let addr = url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let stream = TcpStream::connect(&addr).map_err(|e| (0, e.to_string()))?;
        Client::handshake(url, stream, vsn)
    }

    /// Runs the WebSocket handshake of `url` on an already connected stream
    /// (e.g. one with socket options set before the connect).
    pub fn handshake(url: &str, stream: TcpStream, vsn: Vsn) -> Result<Client, (u16, String)> {
        stream.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(RECV_TIMEOUT)).unwrap();
        match tungstenite::client(url, MaybeTlsStream::Plain(stream)) {
            Ok((ws, _resp)) => Ok(Client {
                ws,
                vsn,
                next_ref: 0,
                pending: Vec::new(),
            }),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                Err((resp.status().as_u16(), body))
            }
            Err(e) => Err((0, e.to_string())),
        }
    }

    pub fn next_ref(&mut self) -> String {
        self.next_ref += 1;
        self.next_ref.to_string()
    }

    fn stream(&self) -> &TcpStream {
        match self.ws.get_ref() {
            MaybeTlsStream::Plain(s) => s,
            _ => unreachable!("plain TCP only"),
        }
    }

    /// Sends raw text as one WebSocket message.
    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(WsMessage::text(text))
            .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
    }

    /// Encodes `msg` as realtime-js would and sends it.
    pub fn send_inbound(&mut self, msg: &Inbound) {
        let frame = client::encode_push(self.vsn, msg).expect("encode push");
        let ws_msg = match frame {
            chorus_core::phoenix::Frame::Text(t) => WsMessage::text(t),
            chorus_core::phoenix::Frame::Binary(b) => WsMessage::binary(b),
        };
        self.ws.send(ws_msg).expect("send push");
    }

    /// Sends a push with fresh refs; returns its ref.
    pub fn push(
        &mut self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let msg_ref = self.next_ref();
        self.send_inbound(&Inbound::Push(Message {
            join_ref: join_ref.map(str::to_string),
            msg_ref: Some(msg_ref.clone()),
            topic: topic.to_string(),
            event: event.to_string(),
            payload: Payload::Json(payload),
        }));
        msg_ref
    }

    /// Reads the next WebSocket event within `timeout`; `None` on timeout.
    /// Panics if the connection broke without a close frame.
    pub fn recv_event(&mut self, timeout: Duration) -> Option<Event> {
        if !self.pending.is_empty() {
            return Some(Event::Msg(self.pending.remove(0)));
        }
        self.stream().set_read_timeout(Some(timeout)).unwrap();
        loop {
            match self.ws.read() {
                Ok(WsMessage::Text(t)) => {
                    let out = client::decode_server(self.vsn, FrameRef::Text(t.as_str()))
                        .unwrap_or_else(|e| panic!("undecodable text frame {t:?}: {e}"));
                    return Some(Event::Msg(out));
                }
                Ok(WsMessage::Binary(b)) => {
                    let out = client::decode_server(self.vsn, FrameRef::Binary(&b))
                        .unwrap_or_else(|e| panic!("undecodable binary frame {b:?}: {e}"));
                    return Some(Event::Msg(out));
                }
                Ok(WsMessage::Close(frame)) => {
                    return Some(Event::Close(frame.map(|CloseFrame { code, reason }| {
                        (code.into(), reason.to_string())
                    })))
                }
                Ok(_) => continue, // ping/pong
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return None
                }
                Err(e) => panic!("websocket read failed: {e}"),
            }
        }
    }

    /// The next data message within `timeout`, panicking on close/timeout.
    pub fn recv(&mut self, timeout: Duration) -> Outbound {
        match self.recv_event(timeout) {
            Some(Event::Msg(m)) => m,
            Some(Event::Close(c)) => panic!("socket closed ({c:?}) while waiting for a message"),
            None => panic!("no message within {timeout:?}"),
        }
    }

    /// Reads until a message satisfies `pred` (others are kept for later
    /// reads), panicking after `timeout`.
    pub fn recv_until(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Outbound) -> bool,
    ) -> Outbound {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i);
        }
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no {what} within {timeout:?}; got instead: {skipped:#?}");
            }
            self.stream().set_read_timeout(Some(left)).unwrap();
            let msg = match self.ws.read() {
                Ok(WsMessage::Text(t)) => {
                    client::decode_server(self.vsn, FrameRef::Text(t.as_str()))
                        .unwrap_or_else(|e| panic!("undecodable text frame {t:?}: {e}"))
                }
                Ok(WsMessage::Binary(b)) => client::decode_server(self.vsn, FrameRef::Binary(&b))
                    .unwrap_or_else(|e| panic!("undecodable binary frame {b:?}: {e}")),
                Ok(WsMessage::Close(c)) => {
                    panic!("socket closed ({c:?}) while waiting for {what}; got: {skipped:#?}")
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(e) => panic!("websocket read failed waiting for {what}: {e}"),
            };
            if pred(&msg) {
                self.pending.extend(skipped);
                return msg;
            }
            skipped.push(msg);
        }
    }

    /// Waits for the reply to push `msg_ref`; returns (status, response).
    pub fn reply(&mut self, msg_ref: &str) -> (String, Value) {
        let m = self.recv_until(
            RECV_TIMEOUT,
            &format!("reply to ref {msg_ref}"),
            |m| matches!(m, Outbound::Reply { msg_ref: Some(r), .. } if r == msg_ref),
        );
        match m {
            Outbound::Reply {
                status,
                response: Payload::Json(v),
                ..
            } => (status, v),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    /// Heartbeat and its ok reply.
    pub fn heartbeat(&mut self) {
        let r = self.push(None, "phoenix", "heartbeat", json!({}));
        let (status, response) = self.reply(&r);
        assert_eq!(
            (status.as_str(), response),
            ("ok", json!({})),
            "heartbeat reply"
        );
    }

    /// Joins `topic` with `config` (the realtime-js join config object);
    /// returns the join ref after checking the ok reply.
    pub fn join(&mut self, topic: &str, config: Value) -> String {
        let (join_ref, status, response) = self.try_join(topic, config);
        assert_eq!(status, "ok", "join {topic}: {response}");
        join_ref
    }

    /// Joins and returns (join_ref, status, response) whatever the outcome.
    pub fn try_join(&mut self, topic: &str, config: Value) -> (String, String, Value) {
        let join_ref = self.next_ref();
        self.send_inbound(&Inbound::Push(Message {
            join_ref: Some(join_ref.clone()),
            msg_ref: Some(join_ref.clone()),
            topic: topic.to_string(),
            event: "phx_join".into(),
            payload: Payload::Json(json!({ "config": config })),
        }));
        let (status, response) = self.reply(&join_ref);
        (join_ref, status, response)
    }

    /// Sends a realtime broadcast (kind 3 under 2.0.0); returns its ref.
    pub fn broadcast(
        &mut self,
        join_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let msg_ref = self.next_ref();
        self.send_inbound(&Inbound::Broadcast {
            join_ref: Some(join_ref.to_string()),
            msg_ref: Some(msg_ref.clone()),
            broadcast: chorus_core::phoenix::UserBroadcast {
                topic: topic.to_string(),
                event: event.to_string(),
                meta: None,
                payload: Payload::Json(payload),
            },
        });
        msg_ref
    }

    /// Waits for a user broadcast of `event` on `topic`; returns its payload.
    pub fn recv_broadcast(&mut self, topic: &str, event: &str) -> Value {
        let m = self.recv_until(
            RECV_TIMEOUT,
            &format!("broadcast {event} on {topic}"),
            |m| matches!(m, Outbound::UserBroadcast(b) if b.topic == topic && b.event == event),
        );
        match m {
            Outbound::UserBroadcast(b) => match b.payload {
                Payload::Json(v) => v,
                Payload::Binary(b) => panic!("binary broadcast payload {b:?}"),
            },
            _ => unreachable!(),
        }
    }

    /// Asserts no user broadcast arrives within `window`.
    pub fn assert_no_broadcast(&mut self, window: Duration) {
        let deadline = Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv_event(left) {
                None => return,
                Some(Event::Msg(Outbound::UserBroadcast(b))) => {
                    panic!("unexpected broadcast {b:?}")
                }
                Some(Event::Msg(other)) => self.pending.push(other),
                Some(Event::Close(c)) => panic!("socket closed ({c:?})"),
            }
        }
    }

    /// Waits for the server to close the socket: returns the close frame's
    /// (code, reason) and checks the TCP connection ends too.
    pub fn expect_close(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "socket not closed within {timeout:?}");
            self.stream().set_read_timeout(Some(left)).unwrap();
            match self.ws.read() {
                Ok(WsMessage::Close(frame)) => {
                    let close =
                        frame.map(|CloseFrame { code, reason }| (code.into(), reason.to_string()));
                    // tungstenite answers the close; the server then drops
                    // the connection.
                    self.wait_closed(deadline.saturating_duration_since(Instant::now()));
                    return close;
                }
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    continue
                }
                Err(
                    tungstenite::Error::ConnectionClosed
                    | tungstenite::Error::AlreadyClosed
                    | tungstenite::Error::Protocol(
                        tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
                    ),
                ) => return None,
                Err(tungstenite::Error::Io(e)) if e.kind() == ErrorKind::ConnectionReset => {
                    return None
                }
                Err(e) => panic!("unexpected error waiting for the close: {e}"),
            }
        }
    }

    /// Answers the close and waits until the server ends the TCP connection.
    fn wait_closed(&mut self, timeout: Duration) {
        let _ = self.ws.flush();
        let deadline = Instant::now() + timeout.max(Duration::from_millis(500));
        let mut stream = self.stream();
        let mut buf = [0u8; 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "TCP connection still open after the close frame"
            );
            stream.set_read_timeout(Some(left)).unwrap();
            match stream.read(&mut buf) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(_) => return,
            }
        }
    }
}
