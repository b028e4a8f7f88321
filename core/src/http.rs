//! Minimal HTTP/1.1, server side, sans-IO.
//!
//! Chorus speaks HTTP for two things only: the WebSocket upgrade and the
//! small admin API (`/healthz`, `/metrics`, broadcast, history). Both are
//! request → response on a connection that is then closed or upgraded, so
//! this module parses one request head and renders one response; there is no
//! keep-alive, no chunked encoding and no pipelining. The head is parsed by
//! `httparse` (a zero-copy, fuzzed parser); this module turns its borrowed
//! view into an owned [`Request`] that can be moved between processes.

use std::fmt;

/// Headers beyond this count are rejected with 431: no legitimate client of
/// ours (browsers, `@supabase/realtime-js`, curl) sends this many, and the
/// bound keeps the parser's scratch space on the stack.
pub const MAX_HEADERS: usize = 64;

/// An owned, parsed request head.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// The method exactly as sent (`GET`, `POST`, ...).
    pub method: String,
    /// The path part of the request target, before `?`, not percent-decoded
    /// (routes are matched on the raw path so `%2F` cannot forge a `/`).
    pub path: String,
    /// Query parameters in order, names and values percent-decoded (`+` is a
    /// space, as browsers encode forms); repeated names are kept.
    pub query: Vec<(String, String)>,
    /// Headers in order, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The declared body length, if any.
    pub content_length: Option<usize>,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header with this name (case-insensitive), in order; some headers
    /// (`Connection`, `Sec-WebSocket-Protocol`) may legally be repeated.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The query parameter with this (decoded) name; when it is repeated,
    /// the last one wins, as in Phoenix (Plug). phoenix.js appends its own
    /// `vsn` after the user's params, so `?vsn=1.0.0&vsn=2.0.0` is 2.0.0.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request head was refused. Each maps to the status to answer with
/// before closing, see [`HttpError::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The bytes are not an HTTP/1.x request head (garbage, a TLS hello on
    /// the plain port, a bad header line...). The reason comes from httparse.
    Malformed(String),
    /// The head did not end within `limit` bytes.
    HeadTooLarge { limit: usize },
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// A header value that is not valid UTF-8.
    NonUtf8Header(String),
    /// `Content-Length` missing a number, or two different values.
    BadContentLength,
    /// `Transfer-Encoding` (chunked bodies) is not supported; refusing it is
    /// safer than misreading where the body ends.
    TransferEncodingUnsupported,
}

impl HttpError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Malformed(_) | HttpError::NonUtf8Header(_) | HttpError::BadContentLength => {
                400
            }
            HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders => 431,
            HttpError::TransferEncodingUnsupported => 501,
        }
    }

    /// A ready-made plain-text response carrying [`HttpError::status`] and
    /// this error's message.
    pub fn to_response(&self) -> Response {
        Response::text(self.status(), &self.to_string())
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Malformed(why) => write!(f, "malformed HTTP request: {why}"),
            HttpError::HeadTooLarge { limit } => {
                write!(
                    f,
                    "request head larger than the {limit}-byte limit (limits.max_http_head_bytes)"
                )
            }
            HttpError::TooManyHeaders => {
                write!(f, "more than {MAX_HEADERS} request headers")
            }
            HttpError::NonUtf8Header(name) => {
                write!(f, "header {name} is not valid UTF-8")
            }
            HttpError::BadContentLength => write!(f, "invalid Content-Length"),
            HttpError::TransferEncodingUnsupported => {
                write!(f, "Transfer-Encoding is not supported; send Content-Length")
            }
        }
    }
}

impl std::error::Error for HttpError {}

/// Parses one request head from the start of `buf`.
///
/// Returns `Ok(None)` while the head is incomplete (read more and call again
/// with the whole buffer), or the request and the length of its head; the
/// body, if any, starts at that offset. A head that has not ended within
/// `max_head` bytes is an error, so a client cannot make us buffer forever.
pub fn parse_request(buf: &[u8], max_head: usize) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_head {
                return Err(HttpError::HeadTooLarge { limit: max_head });
            }
            return Ok(None);
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooManyHeaders),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    if head_len > max_head {
        return Err(HttpError::HeadTooLarge { limit: max_head });
    }
    // httparse guarantees these are set once the status is Complete; treating
    // their absence as malformed keeps this free of unwraps anyway.
    let method = req
        .method
        .ok_or_else(|| HttpError::Malformed("missing method".into()))?;
    let target = req
        .path
        .ok_or_else(|| HttpError::Malformed("missing request target".into()))?;
    let (path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };

    let mut owned_headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<usize> = None;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = std::str::from_utf8(h.value)
            .map_err(|_| HttpError::NonUtf8Header(name.clone()))?
            .trim()
            .to_string();
        if name == "content-length" {
            let n: usize = value.parse().map_err(|_| HttpError::BadContentLength)?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::BadContentLength);
            }
            content_length = Some(n);
        } else if name == "transfer-encoding" {
            return Err(HttpError::TransferEncodingUnsupported);
        }
        owned_headers.push((name, value));
    }

    Ok(Some((
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: parse_query(raw_query),
            headers: owned_headers,
            content_length,
        },
        head_len,
    )))
}

/// Splits `a=1&b=two%20words` into decoded pairs. A name without `=` gets an
/// empty value; empty segments (`a=1&&b=2`) are skipped.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|seg| !seg.is_empty())
        .map(|seg| {
            let (n, v) = seg.split_once('=').unwrap_or((seg, ""));
            (percent_decode(n), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` (space). A malformed escape is kept
/// literally rather than rejected, as browsers do; bytes that do not form
/// UTF-8 become U+FFFD.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|&c| hex_value(c));
                let lo = bytes.get(i + 2).and_then(|&c| hex_value(c));
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                } else {
                    out.push(b'%');
                    i += 1;
                }
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A response to render with [`Response::to_bytes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Extra headers, written in order. `Content-Length` and `Connection` are
    /// added by `to_bytes` unless present here.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// An empty response with this status.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// A JSON body with `Content-Type: application/json`.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response::new(status)
            .with_header("Content-Type", "application/json")
            .with_body(value.to_string().into_bytes())
    }

    /// A plain-text body with `Content-Type: text/plain; charset=utf-8`.
    pub fn text(status: u16, body: &str) -> Self {
        Response::new(status)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_body(body.as_bytes().to_vec())
    }

    /// Adds a header (builder style).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Replaces the body (builder style).
    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// Renders status line, headers and body.
    ///
    /// Adds `Content-Length` (except on 1xx/204/304, where RFC 9110 forbids
    /// it) and `Connection: close` unless the caller set them: we never keep
    /// connections alive, and saying so lets clients stop waiting. CR and LF
    /// in header names/values are replaced by spaces so a value that carries
    /// client data can never inject a header.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                self.status,
                reason_phrase(self.status)
            )
            .as_bytes(),
        );
        for (name, value) in &self.headers {
            push_header(&mut out, name, value);
        }
        let bodiless =
            (100..200).contains(&self.status) || self.status == 204 || self.status == 304;
        if !bodiless && !self.has_header("content-length") {
            push_header(&mut out, "Content-Length", &self.body.len().to_string());
        }
        if !self.has_header("connection") {
            push_header(&mut out, "Connection", "close");
        }
        out.extend_from_slice(b"\r\n");
        if !bodiless {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let clean = |b: u8| if b == b'\r' || b == b'\n' { b' ' } else { b };
    out.extend(name.bytes().map(clean));
    out.extend_from_slice(b": ");
    out.extend(value.bytes().map(clean));
    out.extend_from_slice(b"\r\n");
}

/// The standard reason phrase for the statuses Chorus uses; `Unknown` for
/// others (clients ignore the phrase, but humans reading curl output do not).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}
