//! The gateway's guest side: the process the host spawns per HTTP request.
//! The host accepts connections, reads request heads and WebSocket frames
//! (`host-bridge/src/gateway.rs`, `socket.rs`); a WebSocket gets a native
//! session process of the host (`host-bridge/src/session.rs`), any other
//! request an HTTP handler here ([`http`]).

pub mod http;
