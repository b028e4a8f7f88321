//! WebSocket (RFC 6455), sans-IO.
//!
//! The gateway process owns the socket; this module owns the protocol:
//! validating the upgrade request, turning received bytes into
//! [`WsEvent`]s, and encoding frames to write. Both directions are here
//! because the benchmark load generator and the tests act as clients: the
//! server role decodes masked frames and encodes unmasked ones, the client
//! role the reverse.
//!
//! The one extension is `permessage-deflate` ([`crate::deflate`]): a decoder
//! built [`FrameDecoder::with_deflate`] takes RSV1 on the first frame of a
//! data message as "compressed" and inflates the message; every other RSV
//! bit, and RSV1 without the extension, is a protocol error.

use std::fmt;

use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::http::{Request, Response};

/// The fixed GUID of RFC 6455 §1.3, appended to the client key.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Largest frame header: 2 bytes + 8 bytes of extended length + 4 of mask.
pub const MAX_HEADER_LEN: usize = 14;

/// Control frames carry at most this many payload bytes (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64 of the
/// SHA-1 of the key followed by the RFC's GUID. It proves to the client that
/// the server understood the handshake (not a cache replaying a response).
pub fn handshake_accept_key(client_key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// What is wrong with an upgrade request; the Display text names the
/// missing piece so a developer pointing a wrong client at us sees why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeError {
    /// The method was not GET.
    NotGet(String),
    /// No `Upgrade: websocket` header.
    MissingUpgradeHeader,
    /// No `Connection` header listing `upgrade`.
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` absent or not 13.
    UnsupportedVersion(Option<String>),
    /// No `Sec-WebSocket-Key`.
    MissingKey,
    /// A key that is not base64 of 16 bytes.
    InvalidKey,
}

impl HandshakeError {
    /// The response to send before closing: 426 with the version we speak
    /// for a version mismatch (RFC 6455 §4.4), 405 for a wrong method, 400
    /// otherwise.
    pub fn to_response(&self) -> Response {
        let status = match self {
            HandshakeError::NotGet(_) => 405,
            HandshakeError::UnsupportedVersion(_) => 426,
            _ => 400,
        };
        let resp = Response::text(status, &self.to_string());
        match self {
            HandshakeError::UnsupportedVersion(_) => {
                resp.with_header("Sec-WebSocket-Version", "13")
            }
            HandshakeError::NotGet(_) => resp.with_header("Allow", "GET"),
            _ => resp,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::NotGet(m) => write!(f, "WebSocket upgrade must use GET, not {m}"),
            HandshakeError::MissingUpgradeHeader => {
                write!(
                    f,
                    "WebSocket upgrade is missing the header `Upgrade: websocket`"
                )
            }
            HandshakeError::MissingConnectionUpgrade => {
                write!(
                    f,
                    "WebSocket upgrade is missing the header `Connection: Upgrade`"
                )
            }
            HandshakeError::UnsupportedVersion(None) => {
                write!(
                    f,
                    "WebSocket upgrade is missing `Sec-WebSocket-Version: 13`"
                )
            }
            HandshakeError::UnsupportedVersion(Some(v)) => {
                write!(
                    f,
                    "unsupported Sec-WebSocket-Version {v:?}; only 13 is supported"
                )
            }
            HandshakeError::MissingKey => {
                write!(
                    f,
                    "WebSocket upgrade is missing the header `Sec-WebSocket-Key`"
                )
            }
            HandshakeError::InvalidKey => {
                write!(
                    f,
                    "Sec-WebSocket-Key is not the base64 encoding of 16 bytes"
                )
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Checks that `req` is a valid WebSocket upgrade and returns the bytes of
/// the `101 Switching Protocols` response to write.
///
/// Routing (which path, which `apikey`, which `vsn`) is the caller's job;
/// this only checks what RFC 6455 §4.2.1 requires of the request.
/// `extensions`: the `Sec-WebSocket-Extensions` value agreed, if any.
pub fn accept_upgrade(req: &Request, extensions: Option<&str>) -> Result<Vec<u8>, HandshakeError> {
    if req.method != "GET" {
        return Err(HandshakeError::NotGet(req.method.clone()));
    }
    let has_token = |name: &str, token: &str| {
        req.header_values(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token("upgrade", "websocket") {
        return Err(HandshakeError::MissingUpgradeHeader);
    }
    if !has_token("connection", "upgrade") {
        return Err(HandshakeError::MissingConnectionUpgrade);
    }
    match req.header("sec-websocket-version") {
        Some("13") => {}
        other => {
            return Err(HandshakeError::UnsupportedVersion(
                other.map(str::to_string),
            ))
        }
    }
    let key = req
        .header("sec-websocket-key")
        .ok_or(HandshakeError::MissingKey)?;
    match base64::engine::general_purpose::STANDARD.decode(key) {
        Ok(raw) if raw.len() == 16 => {}
        _ => return Err(HandshakeError::InvalidKey),
    }
    let mut response = Response::new(101)
        .with_header("Upgrade", "websocket")
        .with_header("Connection", "Upgrade")
        .with_header("Sec-WebSocket-Accept", &handshake_accept_key(key));
    if let Some(ext) = extensions {
        response = response.with_header("Sec-WebSocket-Extensions", ext);
    }
    Ok(response.to_bytes())
}

/// Frame opcodes (RFC 6455 §5.2). Reserved values are not representable;
/// receiving one is a protocol error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// The opcode for a wire value, `None` for reserved ones.
    pub fn from_u8(v: u8) -> Option<Opcode> {
        match v {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    /// Close, Ping and Pong: small, never fragmented, may arrive between
    /// the fragments of a data message.
    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// A complete message or control frame received from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    Text(String),
    Binary(Vec<u8>),
    /// Must be answered with a Pong carrying the same payload.
    Ping(Vec<u8>),
    /// Payload ignored: we never send pings whose payload we need back.
    Pong,
    /// The peer's close code and reason, `None` if it sent no code.
    Close(Option<(u16, String)>),
}

/// Why the byte stream was rejected. After an error the connection must be
/// closed with [`WsError::close_code`]; the decoder keeps returning the same
/// error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// A violation of RFC 6455 framing (close code 1002); the text says which.
    Protocol(&'static str),
    /// Text or a close reason that is not UTF-8 (close code 1007).
    InvalidUtf8,
    /// A frame or reassembled message larger than the configured limit
    /// (close code 1009), compressed or once inflated.
    TooLarge { limit: usize },
    /// A compressed message that is not valid deflate data (close code 1007).
    Inflate,
}

impl WsError {
    /// The close code to send the peer (RFC 6455 §7.4.1).
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::InvalidUtf8 => 1007,
            WsError::TooLarge { .. } => 1009,
            WsError::Inflate => 1007,
        }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Protocol(why) => write!(f, "WebSocket protocol error: {why}"),
            WsError::InvalidUtf8 => write!(f, "WebSocket text is not valid UTF-8"),
            WsError::Inflate => write!(f, "compressed WebSocket message is not valid deflate data"),
            WsError::TooLarge { limit } => {
                write!(
                    f,
                    "WebSocket message larger than the {limit}-byte limit (limits.max_frame_bytes)"
                )
            }
        }
    }
}

impl std::error::Error for WsError {}

/// Which side of the connection the decoder is on; it decides whether
/// incoming frames must be masked (server) or must not be (client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// A data message whose first fragment has arrived but not its last.
#[derive(Debug)]
struct Partial {
    text: bool,
    /// RSV1 on its first frame: `data` is deflate data (permessage-deflate).
    compressed: bool,
    data: Vec<u8>,
    /// Bytes of `data` already known to be valid UTF-8, so each fragment is
    /// validated once and bad text fails at the fragment that carries it.
    utf8_checked: usize,
}

/// Incremental frame decoder: feed received bytes with [`push`], then call
/// [`next`] until it returns `Ok(None)`.
///
/// Memory is bounded: a frame's declared length is checked against the
/// limit as soon as its header arrives (before its payload is buffered), and
/// fragments are moved out of the receive buffer as they complete, so the
/// decoder holds at most one message (≤ limit), one incomplete frame
/// (≤ limit + [`MAX_HEADER_LEN`]) plus whatever the last `push` delivered
/// beyond it. Callers push socket reads of bounded size and drain `next`
/// after each push; then the buffer stays within limit + header + one read.
///
/// [`push`]: FrameDecoder::push
/// [`next`]: FrameDecoder::next
#[derive(Debug)]
pub struct FrameDecoder {
    role: Role,
    limit: usize,
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed; compacted on the next `push` so a
    /// batch of small frames costs one memmove, not one per frame.
    start: usize,
    partial: Option<Partial>,
    failed: Option<WsError>,
    /// `permessage-deflate` was agreed: RSV1 marks a compressed message.
    deflate: bool,
}

impl FrameDecoder {
    /// A server-side decoder (client frames must be masked) that refuses
    /// frames and messages longer than `max_message` bytes.
    pub fn new(max_message: usize) -> Self {
        FrameDecoder::with_role(Role::Server, max_message)
    }

    /// A client-side decoder (server frames must not be masked), for tests
    /// and the load generator.
    pub fn for_client(max_message: usize) -> Self {
        FrameDecoder::with_role(Role::Client, max_message)
    }

    fn with_role(role: Role, limit: usize) -> Self {
        FrameDecoder {
            role,
            limit,
            buf: Vec::new(),
            start: 0,
            partial: None,
            failed: None,
            deflate: false,
        }
    }

    /// The same decoder for a connection that agreed to `permessage-deflate`.
    pub fn with_deflate(mut self, deflate: bool) -> Self {
        self.deflate = deflate;
        self
    }

    /// Appends received bytes. Nothing is parsed until [`FrameDecoder::next`].
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.drain(..self.start);
            self.start = 0;
            self.buf.extend_from_slice(bytes);
        }
    }

    /// Drops the receive buffer when every byte in it has been decoded, so
    /// an idle connection holds no buffer between reads.
    pub fn release_idle(&mut self) {
        if self.start >= self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
        }
    }

    /// Bytes received but not yet consumed by a complete frame.
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }

    /// The next complete event, `Ok(None)` if more bytes are needed.
    // Not `Iterator::next`: "no event yet" and "stream is broken" must stay
    // distinct, and a broken stream keeps reporting its error.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<WsEvent>, WsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        loop {
            match self.step() {
                Ok(Step::NeedMore) => return Ok(None),
                Ok(Step::Event(ev)) => return Ok(Some(ev)),
                Ok(Step::Fragment) => continue,
                Err(e) => {
                    self.failed = Some(e.clone());
                    self.buf = Vec::new();
                    self.start = 0;
                    self.partial = None;
                    return Err(e);
                }
            }
        }
    }

    /// Decodes at most one frame from the buffer.
    fn step(&mut self) -> Result<Step, WsError> {
        let pending = self.buf.get(self.start..).unwrap_or_default();
        let Some(head) = parse_header(pending, self.role, self.limit, self.deflate)? else {
            return Ok(Step::NeedMore);
        };
        let frame_end = head.header_len + head.payload_len;
        let Some(raw) = pending.get(head.header_len..frame_end) else {
            // Check the message limit now rather than after the payload
            // arrived: a client must not make us buffer a frame we will
            // refuse anyway.
            self.check_message_limit(&head)?;
            return Ok(Step::NeedMore);
        };
        self.check_message_limit(&head)?;
        let mut payload = raw.to_vec();
        self.start += frame_end;
        if let Some(mask) = head.mask {
            apply_mask(&mut payload, mask);
        }

        match head.opcode {
            Opcode::Ping => Ok(Step::Event(WsEvent::Ping(payload))),
            Opcode::Pong => Ok(Step::Event(WsEvent::Pong)),
            Opcode::Close => parse_close(&payload).map(Step::Event),
            Opcode::Text | Opcode::Binary => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol(
                        "new data frame before the previous fragmented message ended",
                    ));
                }
                let text = head.opcode == Opcode::Text;
                let mut partial = Partial {
                    text,
                    compressed: head.rsv1,
                    data: payload,
                    utf8_checked: 0,
                };
                if head.fin {
                    return finish(partial, self.limit).map(Step::Event);
                }
                check_utf8_prefix(&mut partial)?;
                self.partial = Some(partial);
                Ok(Step::Fragment)
            }
            Opcode::Continuation => {
                let Some(mut partial) = self.partial.take() else {
                    return Err(WsError::Protocol(
                        "continuation frame without a message to continue",
                    ));
                };
                partial.data.extend_from_slice(&payload);
                if head.fin {
                    return finish(partial, self.limit).map(Step::Event);
                }
                check_utf8_prefix(&mut partial)?;
                self.partial = Some(partial);
                Ok(Step::Fragment)
            }
        }
    }

    fn check_message_limit(&self, head: &FrameHeader) -> Result<(), WsError> {
        let already = match (&self.partial, head.opcode) {
            // Control frames are bounded by the 125-byte rule instead.
            (_, op) if op.is_control() => return Ok(()),
            (Some(p), Opcode::Continuation) => p.data.len(),
            _ => 0,
        };
        if already.saturating_add(head.payload_len) > self.limit {
            return Err(WsError::TooLarge { limit: self.limit });
        }
        Ok(())
    }
}

enum Step {
    NeedMore,
    Event(WsEvent),
    /// A non-final fragment was absorbed; try the next frame.
    Fragment,
}

struct FrameHeader {
    fin: bool,
    /// RSV1: a compressed message (only where the extension was agreed).
    rsv1: bool,
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    header_len: usize,
    payload_len: usize,
}

/// Parses a frame header, `Ok(None)` if incomplete. Everything that can be
/// judged from the header alone is judged here.
fn parse_header(
    buf: &[u8],
    role: Role,
    limit: usize,
    deflate: bool,
) -> Result<Option<FrameHeader>, WsError> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(WsError::Protocol("reserved opcode"))?;
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || rsv1 && !deflate {
        return Err(WsError::Protocol(
            "reserved bits set without a negotiated extension",
        ));
    }
    if rsv1 && !matches!(opcode, Opcode::Text | Opcode::Binary) {
        return Err(WsError::Protocol(
            "RSV1 set on a control or continuation frame",
        ));
    }
    let masked = b1 & 0x80 != 0;
    match role {
        Role::Server if !masked => return Err(WsError::Protocol("client frames must be masked")),
        Role::Client if masked => {
            return Err(WsError::Protocol("server frames must not be masked"))
        }
        _ => {}
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() {
        if !fin {
            return Err(WsError::Protocol("control frames must not be fragmented"));
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(WsError::Protocol(
                "control frame payload longer than 125 bytes",
            ));
        }
    }
    let (payload_len, mut pos): (u64, usize) = match len7 {
        126 => match buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
            Some(b) => (u64::from(u16::from_be_bytes(b)), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => {
                let n = u64::from_be_bytes(b);
                if n >> 63 != 0 {
                    return Err(WsError::Protocol(
                        "64-bit payload length with the high bit set",
                    ));
                }
                (n, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    // Refuse before converting: on 32-bit wasm a u64 length may not fit.
    // (Control frames are already capped at 125 bytes above.)
    if payload_len > limit as u64 && !opcode.is_control() {
        return Err(WsError::TooLarge { limit });
    }
    let payload_len = payload_len as usize;
    let mask = if masked {
        match buf
            .get(pos..pos + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        {
            Some(m) => {
                pos += 4;
                Some(m)
            }
            None => return Ok(None),
        }
    } else {
        None
    };
    Ok(Some(FrameHeader {
        fin,
        rsv1,
        opcode,
        mask,
        header_len: pos,
        payload_len,
    }))
}

fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (b, m) in data.iter_mut().zip(mask.iter().cycle()) {
        *b ^= m;
    }
}

/// Validates the new bytes of a text message in progress. A code point cut
/// at the end of a fragment is fine; anything else invalid fails now.
fn check_utf8_prefix(p: &mut Partial) -> Result<(), WsError> {
    if !p.text || p.compressed {
        return Ok(());
    }
    let tail = p.data.get(p.utf8_checked..).unwrap_or_default();
    match std::str::from_utf8(tail) {
        Ok(_) => p.utf8_checked = p.data.len(),
        Err(e) if e.error_len().is_none() => p.utf8_checked += e.valid_up_to(),
        Err(_) => return Err(WsError::InvalidUtf8),
    }
    Ok(())
}

fn finish(p: Partial, limit: usize) -> Result<WsEvent, WsError> {
    let data = if p.compressed {
        crate::deflate::inflate(&p.data, limit)?
    } else {
        p.data
    };
    if p.text {
        String::from_utf8(data)
            .map(WsEvent::Text)
            .map_err(|_| WsError::InvalidUtf8)
    } else {
        Ok(WsEvent::Binary(data))
    }
}

/// Decodes a close payload (RFC 6455 §5.5.1, §7.4).
fn parse_close(payload: &[u8]) -> Result<WsEvent, WsError> {
    match payload {
        [] => Ok(WsEvent::Close(None)),
        [_] => Err(WsError::Protocol("close frame with a 1-byte payload")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| WsError::InvalidUtf8)?;
            Ok(WsEvent::Close(Some((code, reason.to_string()))))
        }
    }
}

/// Codes a peer may put on the wire: the defined ones (1004-1006 and 1015
/// are reserved for local use only) and the registered/private ranges.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Appends one frame. `mask` selects the client encoding.
fn encode_frame(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) {
    out.reserve(MAX_HEADER_LEN + payload.len());
    out.push(if fin { 0x80 } else { 0 } | opcode.as_u8());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if let Ok(len16) = u16::try_from(len) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&len16.to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(m) => {
            out.extend_from_slice(&m);
            let start = out.len();
            out.extend_from_slice(payload);
            if let Some(tail) = out.get_mut(start..) {
                apply_mask(tail, m);
            }
        }
        None => out.extend_from_slice(payload),
    }
}

/// Control payloads over 125 bytes are cut rather than producing a frame
/// every peer must reject.
fn control_payload(payload: &[u8]) -> &[u8] {
    payload.get(..MAX_CONTROL_PAYLOAD).unwrap_or(payload)
}

/// Appends a server text frame. Appending lets a session batch several
/// frames into one socket write.
pub fn encode_text(out: &mut Vec<u8>, text: &str) {
    encode_frame(out, true, Opcode::Text, text.as_bytes(), None);
}

/// Appends a server text frame whose payload the caller built as bytes; they
/// must be UTF-8 (JSON assembled from `str`s and checked JSON text).
pub fn encode_text_bytes(out: &mut Vec<u8>, text: &[u8]) {
    debug_assert!(std::str::from_utf8(text).is_ok());
    encode_frame(out, true, Opcode::Text, text, None);
}

/// Appends a server binary frame.
pub fn encode_binary(out: &mut Vec<u8>, data: &[u8]) {
    encode_frame(out, true, Opcode::Binary, data, None);
}

/// Appends a server ping (payload cut to 125 bytes).
pub fn encode_ping(out: &mut Vec<u8>, payload: &[u8]) {
    encode_frame(out, true, Opcode::Ping, control_payload(payload), None);
}

/// Appends a server pong; echo the ping's payload (cut to 125 bytes).
pub fn encode_pong(out: &mut Vec<u8>, payload: &[u8]) {
    encode_frame(out, true, Opcode::Pong, control_payload(payload), None);
}

/// Appends a server close frame. The reason is cut to 123 bytes at a
/// character boundary so the frame stays a valid control frame.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes().get(..end).unwrap_or_default());
    encode_frame(out, true, Opcode::Close, &payload, None);
}

/// Appends a complete (FIN) masked client frame; the caller chooses the
/// mask so tests are deterministic (a real client must use random masks).
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: [u8; 4]) {
    encode_frame(out, true, opcode, payload, Some(mask));
}

/// Appends a masked client frame with an explicit FIN bit, for sending
/// fragmented messages (`Text`/`Binary` with `fin = false`, then
/// `Continuation` frames).
pub fn encode_client_fragment(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: Opcode,
    payload: &[u8],
    mask: [u8; 4],
) {
    encode_frame(out, fin, opcode, payload, Some(mask));
}
