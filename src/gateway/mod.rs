//! The gateway: the TCP acceptor and one supervised process per connection.
//! A connection is either a WebSocket session (Phoenix protocol) or one HTTP
//! request for the admin API; both share the node's single port.

pub mod conn;
pub mod session;

use chorus_core::config::Config;
use lunatic::net::TcpListener;
use supervisors::{DynamicSupervisor, Inbox, Incoming};

use crate::host;
use session::SessionMsg;

/// Registered name of the sessions' dynamic supervisor.
pub const SESSIONS: &str = "sessions";

/// The acceptor: binds the node's port and hands every connection to a new
/// session process under the `sessions` supervisor. If it dies, its restart
/// binds the port again.
pub fn acceptor(config: Config, inbox: Inbox<()>) {
    let addr = format!("{}:{}", config.node.host, config.node.port);
    let listener = match TcpListener::bind(addr.as_str()) {
        Ok(l) => l,
        Err(e) => {
            host::log(
                host::Level::Error,
                &format!("cannot listen on {addr}: {e} (set CHORUS_PORT or node.port)"),
            );
            panic!("cannot listen on {addr}: {e}");
        }
    };
    let backlog = config.limits.listen_backlog;
    if !host::listen_backlog(&listener, backlog) {
        host::log(
            host::Level::Warn,
            &format!("cannot set the listen backlog to {backlog} (limits.listen_backlog); the default 1024 stays"),
        );
    }
    host::log(
        host::Level::Info,
        &format!("listening on ws://{addr}/realtime/v1/websocket (backlog {backlog})"),
    );
    let Some(sessions) = DynamicSupervisor::<Config, SessionMsg>::lookup(SESSIONS) else {
        panic!("the sessions supervisor is not running");
    };
    // The acceptor blocks in accept(); a shutdown request is noticed on the
    // next connection, and the supervisor's timeout kills it otherwise.
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => match sessions.start_child(config.clone()) {
                Ok(child) => child.send(SessionMsg::Socket(stream)),
                Err(e) => host::log(host::Level::Error, &format!("cannot start a session: {e}")),
            },
            Err(e) => host::log(host::Level::Warn, &format!("accept failed: {e}")),
        }
        if let Some(Incoming::Shutdown) = inbox.receive_timeout(std::time::Duration::ZERO) {
            return;
        }
    }
}
