//! The gateway: the TCP acceptor and one process per connection. A
//! connection is either a WebSocket session (Phoenix protocol) or one HTTP
//! request for the admin API; both share the node's single port.

pub mod conn;
pub mod session;

use chorus_core::config::Config;
use lunatic::net::TcpListener;

/// The acceptor: binds the node's port and hands every connection to a new
/// connection process. Supervised as permanent: if it dies the port is
/// re-bound by its restart.
pub fn acceptor(config: Config) {
    let addr = format!("{}:{}", config.node.host, config.node.port);
    let listener = match TcpListener::bind(addr.as_str()) {
        Ok(l) => l,
        Err(e) => {
            crate::host::log(
                crate::host::Level::Error,
                &format!("cannot listen on {addr}: {e} (set CHORUS_PORT or node.port)"),
            );
            panic!("cannot listen on {addr}: {e}");
        }
    };
    crate::host::log(
        crate::host::Level::Info,
        &format!("listening on ws://{addr}/realtime/v1/websocket"),
    );
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => conn::spawn(stream, config.clone()),
            Err(e) => crate::host::log(crate::host::Level::Warn, &format!("accept failed: {e}")),
        }
    }
}
