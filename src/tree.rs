//! Chorus' supervision tree, declared in one place.
//!
//! ```text
//! chorus (one_for_one, 10 restarts / 10 s)
//! ├── presence (one_for_one)      fixed shards chorus-presence-0..N
//! ├── modules (one_for_one)       module-manager, then chorus-module-<name> per loaded module (permanent)
//! └── channels (one_for_all)
//!     ├── channels                dynamic: one process per active topic (transient,
//!     │                           restart backoff 100 ms doubling to 5 s)
//!     └── chorus-dir-0..3         directory shards owning topics by hash ring
//! ```
//!
//! Connections are not in this tree: the host accepts them and spawns one
//! process per connection (a session per WebSocket, a handler per HTTP
//! request) from the guest's exported entries, and is their supervisor
//! (temporary children: a crash closes only that socket and is counted).
//! So is the relay that queues on this node's sockets the frames channels on
//! other nodes send (a native process of the host, `chorus_core::msg::RELAY_PID`).
//! Order matters: modules start before the channels that ask them, and the
//! host starts accepting only once the whole tree is up.

use std::time::Duration;

use chorus_core::config::Config;
use supervisors::{
    Backoff, ChildSpec, DynamicSupervisorSpec, Restart, Shutdown, Strategy, SupervisorRef,
    SupervisorSpec,
};

use crate::{channel, host, modules, presence};

/// Registered name of the root supervisor.
pub const ROOT: &str = "chorus";

fn spec(config: &Config) -> SupervisorSpec {
    let presence = (0..config.presence.shards).fold(
        SupervisorSpec::new(Strategy::OneForOne)
            .intensity(10)
            .period(Duration::from_secs(10)),
        |sup, i| {
            sup.child(
                ChildSpec::new(format!("presence-{i}"), presence::shard, i)
                    .register(&presence::shard_name(i)),
            )
        },
    );

    let directories = (0..channel::DIRECTORIES).fold(
        SupervisorSpec::new(Strategy::OneForAll)
            .intensity(10)
            .period(Duration::from_secs(10))
            .child(
                ChildSpec::dynamic_supervisor(
                    channel::CHANNELS,
                    DynamicSupervisorSpec::new(channel::channel)
                        .restart(Restart::Transient)
                        .shutdown(Shutdown::Timeout(Duration::from_secs(2)))
                        .intensity(1000)
                        .period(Duration::from_secs(10))
                        // A channel that keeps crashing right after its
                        // start (a refill it cannot hold) waits 100 ms,
                        // 200 ms, … up to 5 s between restarts instead of
                        // spinning the CPU.
                        .backoff(Backoff::new(
                            Duration::from_millis(100),
                            Duration::from_secs(5),
                        )),
                )
                .register(channel::CHANNELS),
            ),
        |sup, i| {
            let name = channel::directory_name(i);
            sup.child(
                ChildSpec::new(
                    name.clone(),
                    channel::directory,
                    (name.clone(), config.clone()),
                )
                .register(&name),
            )
        },
    );

    SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10)
        .period(Duration::from_secs(10))
        .child(ChildSpec::supervisor("presence", presence))
        .child(
            ChildSpec::supervisor("modules", modules::supervisor(config))
                .register(modules::SUPERVISOR),
        )
        .child(ChildSpec::supervisor("channels", directories))
}

/// Starts the tree, then the main process becomes the node's door
/// (`crate::door`) for the other nodes of a cluster. If the root supervisor
/// gives up (too many restarts), the link takes the main process down with
/// it and the node exits with an error.
pub fn start(config: Config) {
    match SupervisorRef::start_link(ROOT, spec(&config)) {
        Ok(_) => {
            host::log(host::Level::Info, "supervision tree started");
            if !host::listen_start() {
                host::log(host::Level::Error, "the host cannot accept connections");
                std::process::exit(1);
            }
        }
        Err(e) => {
            host::log(host::Level::Error, &format!("cannot start the tree: {e}"));
            std::process::exit(1);
        }
    }
    crate::door::serve();
}
