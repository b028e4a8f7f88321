//! The Chorus guest: every process of a node, compiled to wasm32-wasip1 and
//! run by the `chorus` host (host-bridge/). `main` reads the node config from
//! the host and starts the supervision tree declared in [`tree`]; the host
//! spawns one process per HTTP request from [`chorus_http`] (WebSocket
//! sessions are native processes of the host, which talk to this guest's
//! processes with the messages of `chorus_core::msg`).

mod admin;
mod channel;
mod door;
mod gateway;
mod host;
mod modules;
mod msg;
mod presence;
mod relay;
mod room;
mod tree;
mod viewers;

use chorus_core::config::Config;

/// The node's configuration, as the host serves it.
pub fn config() -> Option<Config> {
    serde_json::from_slice(&host::config_json()).ok()
}

fn main() {
    let Some(config) = config() else {
        host::log(host::Level::Error, "no usable config from the host");
        std::process::exit(2);
    };
    tree::start(config);
}

/// One HTTP request, spawned by the host for connection `socket`.
#[no_mangle]
pub extern "C" fn chorus_http(socket: u64) {
    gateway::http::run(socket);
}
