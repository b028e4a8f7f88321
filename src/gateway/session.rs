//! A WebSocket session: one process owning the socket's write side, plus a
//! linked reader process that decodes frames and mails them in. Everything a
//! session receives (client frames, channel deliveries) arrives in its one
//! mailbox, so it handles them in order without locks.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use chorus_core::config::Config;
use chorus_core::metrics::Metric;
use chorus_core::phoenix::{self, event, Frame, FrameRef, Inbound, Outbound, Vsn};
use chorus_core::ws::{self, FrameDecoder, WsEvent};
use lunatic::net::TcpStream;
use lunatic::{Mailbox, Process};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::host;

/// Everything a session process receives.
#[derive(Debug, Serialize, Deserialize)]
pub enum SessionMsg {
    /// A data message from the client.
    Text(String),
    Binary(Vec<u8>),
    /// A ping to answer with a pong.
    Ping(Vec<u8>),
    /// The reader stopped: the client closed, the socket failed or the
    /// client broke the protocol. `code` is the close code to send (0: none).
    ReaderClosed {
        code: u16,
        reason: String,
    },
}

/// Runs the session in the current (connection) process until the socket
/// closes or the heartbeat times out.
pub fn run(stream: TcpStream, vsn: Vsn, early: Vec<u8>, config: Config) {
    let mailbox: Mailbox<SessionMsg> = unsafe { Mailbox::new() };
    let this = mailbox.this();
    let max_frame = config.limits.max_frame_bytes as usize;
    let reader = Process::spawn_link(
        (stream.clone(), early, max_frame, this),
        |(stream, early, max, session), _: Mailbox<()>| read_loop(stream, early, max, session),
    );
    host::metric(Metric::SessionsActive, 1);
    host::metric(Metric::SessionsTotal, 1);
    let mut session = Session {
        stream,
        vsn,
        heartbeat: Duration::from_millis(config.limits.heartbeat_timeout_ms),
        last_seen: Instant::now(),
    };
    let close = session.serve(&mailbox);
    session.close(close);
    reader.kill();
    host::metric(Metric::SessionsActive, -1);
}

/// Reads the socket and mails each WebSocket event to the session.
fn read_loop(mut stream: TcpStream, early: Vec<u8>, max: usize, session: Process<SessionMsg>) {
    let mut decoder = FrameDecoder::new(max);
    decoder.push(&early);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        loop {
            match decoder.next() {
                Ok(Some(event)) => {
                    let msg = match event {
                        WsEvent::Text(t) => SessionMsg::Text(t),
                        WsEvent::Binary(b) => SessionMsg::Binary(b),
                        WsEvent::Ping(p) => SessionMsg::Ping(p),
                        WsEvent::Pong => continue,
                        WsEvent::Close(_) => {
                            session.send(SessionMsg::ReaderClosed {
                                code: 1000,
                                reason: String::new(),
                            });
                            return;
                        }
                    };
                    session.send(msg);
                }
                Ok(None) => break,
                Err(e) => {
                    host::metric(Metric::ProtocolErrors, 1);
                    session.send(SessionMsg::ReaderClosed {
                        code: e.close_code(),
                        reason: e.to_string(),
                    });
                    return;
                }
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                session.send(SessionMsg::ReaderClosed {
                    code: 0,
                    reason: String::new(),
                });
                return;
            }
            Ok(n) => {
                host::metric(Metric::BytesIn, n as i64);
                decoder.push(&buf[..n]);
            }
        }
    }
}

/// Why a session ended: the close frame to send, if any.
struct Close {
    code: u16,
    reason: String,
}

struct Session {
    stream: TcpStream,
    vsn: Vsn,
    heartbeat: Duration,
    last_seen: Instant,
}

impl Session {
    fn serve(&mut self, mailbox: &Mailbox<SessionMsg>) -> Close {
        loop {
            let left = self.heartbeat.saturating_sub(self.last_seen.elapsed());
            let msg = match mailbox.receive_timeout(left) {
                Ok(msg) => msg,
                Err(e) if e.is_timed_out() => {
                    return Close {
                        code: 1000,
                        reason: "heartbeat timeout".into(),
                    }
                }
                Err(_) => continue,
            };
            match msg {
                SessionMsg::Text(text) => {
                    self.last_seen = Instant::now();
                    self.on_frame(FrameRef::Text(&text));
                }
                SessionMsg::Binary(bytes) => {
                    self.last_seen = Instant::now();
                    self.on_frame(FrameRef::Binary(&bytes));
                }
                SessionMsg::Ping(payload) => {
                    self.last_seen = Instant::now();
                    let mut out = Vec::new();
                    ws::encode_pong(&mut out, &payload);
                    self.write(&out);
                }
                SessionMsg::ReaderClosed { code, reason } => return Close { code, reason },
            }
        }
    }

    fn on_frame(&mut self, frame: FrameRef<'_>) {
        host::metric(Metric::MessagesIn, 1);
        let inbound = match phoenix::decode(self.vsn, frame) {
            Ok(m) => m,
            Err(e) => {
                host::metric(Metric::ProtocolErrors, 1);
                // No refs can be trusted; answer on the socket topic.
                self.send(&Outbound::push(
                    None,
                    phoenix::PHOENIX_TOPIC,
                    "phx_error",
                    json!({"reason": format!("malformed message: {e}")}),
                ));
                return;
            }
        };
        let topic = inbound.topic().to_string();
        let join_ref = inbound.join_ref().map(str::to_string);
        let msg_ref = inbound.msg_ref().map(str::to_string);
        if topic == phoenix::PHOENIX_TOPIC && inbound.event() == event::HEARTBEAT {
            self.send(&Outbound::reply(join_ref, msg_ref, topic, "ok", json!({})));
            return;
        }
        if let Inbound::Push(_) | Inbound::Broadcast { .. } = inbound {
            self.send(&Outbound::reply(
                join_ref,
                msg_ref,
                topic,
                "error",
                json!({"reason": "unmatched topic"}),
            ));
        }
    }

    fn send(&mut self, msg: &Outbound) {
        match phoenix::encode(self.vsn, msg) {
            Ok(frame) => {
                let mut out = Vec::new();
                match &frame {
                    Frame::Text(t) => ws::encode_text(&mut out, t),
                    Frame::Binary(b) => ws::encode_binary(&mut out, b),
                }
                host::metric(Metric::MessagesOut, 1);
                self.write(&out);
            }
            Err(e) => host::log(host::Level::Warn, &format!("cannot encode reply: {e}")),
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.stream.write_all(bytes).is_ok() {
            host::metric(Metric::BytesOut, bytes.len() as i64);
        }
    }

    fn close(&mut self, close: Close) {
        if close.code != 0 {
            let mut out = Vec::new();
            ws::encode_close(&mut out, close.code, &close.reason);
            self.write(&out);
        }
    }
}
