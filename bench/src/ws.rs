//! A WebSocket client connection on tokio, framed by Chorus' sans-IO codec
//! (`chorus_core::ws`): the HTTP upgrade, masked client frames out, server
//! frames in, pings answered.

use std::io;
use std::net::{IpAddr, SocketAddr};

use base64::Engine;
use chorus_core::ws::{encode_client_frame, handshake_accept_key, FrameDecoder, Opcode, WsEvent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Largest server message we accept.
const MAX_MESSAGE: usize = 1 << 20;
/// Largest HTTP response head we accept for the upgrade.
const MAX_HEAD: usize = 8192;

pub struct WsConn {
    stream: TcpStream,
    decoder: FrameDecoder,
    rbuf: Box<[u8]>,
    wbuf: Vec<u8>,
    rng: u64,
    /// Bytes read from the socket after the upgrade.
    read_total: u64,
}

/// A received data message.
pub enum Data {
    Text(String),
    Binary(Vec<u8>),
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

impl WsConn {
    /// Opens a TCP connection from `source` (a 127.0.0.x address, so one
    /// loader can exceed one address' ephemeral ports) and upgrades it.
    pub async fn connect(
        server: SocketAddr,
        source: Option<IpAddr>,
        path: &str,
        subprotocol: Option<&str>,
        seed: u64,
        deflate: bool,
    ) -> io::Result<WsConn> {
        let socket = match server {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        if let Some(ip) = source {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let mut stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let key_bytes: Vec<u8> = (0..16).map(|_| xorshift(&mut rng) as u8).collect();
        let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(p) = subprotocol {
            req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
        }
        if deflate {
            req.push_str(
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            );
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await?;

        let mut head = Vec::with_capacity(512);
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(other("connection closed during the upgrade".into()));
            }
            head.extend_from_slice(&chunk[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if head.len() > MAX_HEAD {
                return Err(other("upgrade response head too large".into()));
            }
        };
        let text = String::from_utf8_lossy(&head[..end]);
        let status = text.lines().next().unwrap_or_default().to_string();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(other(format!("upgrade refused: {status}")));
        }
        let want = handshake_accept_key(&key);
        let accepted = text.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == want
            })
        });
        if !accepted {
            return Err(other(
                "upgrade response has a wrong Sec-WebSocket-Accept".into(),
            ));
        }
        // Frames come compressed only when the server agreed (our client
        // sends uncompressed, which the extension allows).
        let agreed = text.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("sec-websocket-extensions")
                    && v.trim_start().starts_with("permessage-deflate")
            })
        });
        let mut decoder = FrameDecoder::for_client(MAX_MESSAGE).with_deflate(agreed);
        decoder.push(&head[end..]);
        Ok(WsConn {
            stream,
            decoder,
            rbuf: vec![0u8; 16 * 1024].into_boxed_slice(),
            wbuf: Vec::with_capacity(256),
            rng,
            read_total: (head.len() - end) as u64,
        })
    }

    /// Sends one complete message with a fresh mask.
    pub async fn send(&mut self, opcode: Opcode, data: &[u8]) -> io::Result<()> {
        self.queue(opcode, data);
        self.flush().await
    }

    /// Appends a frame to the write buffer; [`WsConn::flush`] sends it.
    pub fn queue(&mut self, opcode: Opcode, data: &[u8]) {
        let mask = (xorshift(&mut self.rng) as u32).to_be_bytes();
        encode_client_frame(&mut self.wbuf, opcode, data, mask);
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// The next data message. Pings are answered (queued, sent with the next
    /// flush or send). Cancel-safe: bytes are handed to the decoder in the
    /// same poll that reads them.
    pub async fn recv(&mut self) -> io::Result<Data> {
        loop {
            match self.decoder.next() {
                Ok(Some(WsEvent::Text(t))) => return Ok(Data::Text(t)),
                Ok(Some(WsEvent::Binary(b))) => return Ok(Data::Binary(b)),
                Ok(Some(WsEvent::Ping(p))) => self.queue(Opcode::Pong, &p),
                Ok(Some(WsEvent::Pong)) => {}
                Ok(Some(WsEvent::Close(c))) => {
                    let why = match c {
                        Some((code, reason)) => format!("server closed: {code} {reason}"),
                        None => "server closed".into(),
                    };
                    return Err(other(why));
                }
                Ok(None) => {
                    let n = self.stream.read(&mut self.rbuf).await?;
                    if n == 0 {
                        return Err(other("server closed the TCP connection".into()));
                    }
                    self.read_total += n as u64;
                    self.decoder.push(&self.rbuf[..n]);
                }
                Err(e) => return Err(other(e.to_string())),
            }
        }
    }

    /// A data message already received and buffered, without reading the
    /// socket: lets the caller drain a batch before waiting again.
    pub fn recv_buffered(&mut self) -> io::Result<Option<Data>> {
        loop {
            match self.decoder.next() {
                Ok(Some(WsEvent::Text(t))) => return Ok(Some(Data::Text(t))),
                Ok(Some(WsEvent::Binary(b))) => return Ok(Some(Data::Binary(b))),
                Ok(Some(WsEvent::Ping(p))) => self.queue(Opcode::Pong, &p),
                Ok(Some(WsEvent::Pong)) => {}
                Ok(Some(WsEvent::Close(c))) => {
                    let why = match c {
                        Some((code, reason)) => format!("server closed: {code} {reason}"),
                        None => "server closed".into(),
                    };
                    return Err(other(why));
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(other(e.to_string())),
            }
        }
    }

    /// Bytes received on this connection since the upgrade (frame headers
    /// included): what a client pays in bandwidth.
    pub fn bytes_read(&self) -> u64 {
        self.read_total
    }

    /// Frames queued by `recv` (pongs) that still need a flush.
    pub fn has_pending(&self) -> bool {
        !self.wbuf.is_empty()
    }

    /// Best-effort close handshake start.
    pub async fn close(mut self) {
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bench done");
        self.queue(Opcode::Close, &payload);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}
