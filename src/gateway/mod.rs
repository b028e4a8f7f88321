//! The gateway's guest side: the processes the host spawns per connection.
//! The host accepts connections, reads request heads and WebSocket frames
//! (`host-bridge/src/gateway.rs`, `socket.rs`); a WebSocket gets a session
//! process ([`session`]), any other request an HTTP handler ([`http`]).

pub mod http;
pub mod session;
