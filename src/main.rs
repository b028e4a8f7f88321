//! The Chorus guest: every process of a node, compiled to wasm32-wasip1 and
//! run by the `chorus` host (host-bridge/). `main` reads the node config from
//! the host and starts the supervision tree declared in [`tree`].

mod admin;
mod channel;
mod gateway;
mod host;
mod modules;
mod presence;
mod room;
mod tree;
mod viewers;

use chorus_core::config::Config;

fn main() {
    let config: Config = match serde_json::from_slice(&host::config_json()) {
        Ok(c) => c,
        Err(e) => {
            host::log(
                host::Level::Error,
                &format!("no usable config from the host: {e}"),
            );
            std::process::exit(2);
        }
    };
    tree::start(config);
}
