//! A cross-node message round trip for the cluster test
//! (`host-bridge/tests/cluster.rs`), run with `chorus exec` on nodes of a
//! cluster:
//!
//! * `cluster_ping serve`: prints `serving <node> <pid>`, waits for one
//!   `ping <node> <pid>` message, answers `pong from <node>` to its sender
//!   and prints `served`;
//! * `cluster_ping send <node> <pid>`: sends the ping there through
//!   [`supervisors::mail::send_bytes`] (a remote send for another node),
//!   prints `pong from <node>` when the answer comes (and stays one more
//!   second, for its node to acknowledge it), exits 1 after 10 s without
//!   one.

use std::time::Duration;

use lunatic::host;
use supervisors::mail::{self, Mail};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (node, pid) = (host::node_id(), host::process_id());
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            println!(
                "serving {node} {pid} nodes {:?}",
                lunatic::distributed::nodes()
            );
            let Mail::Data { bytes, .. } = mail::receive(&[], Some(Duration::from_secs(30))) else {
                println!("no ping");
                std::process::exit(1);
            };
            let text = String::from_utf8_lossy(&bytes).to_string();
            let mut words = text.split(' ').skip(1);
            let from_node = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let from_pid = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            println!("got {text:?}");
            mail::send_bytes(
                from_node,
                from_pid,
                0,
                format!("pong from {node}").as_bytes(),
            );
            println!("served");
        }
        Some("send") => {
            let to_node: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(0);
            let to_pid: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(0);
            mail::send_bytes(to_node, to_pid, 0, format!("ping {node} {pid}").as_bytes());
            match mail::receive(&[], Some(Duration::from_secs(10))) {
                Mail::Data { bytes, .. } => {
                    println!("{}", String::from_utf8_lossy(&bytes));
                    // The server's send (lunatic's, blocking) waits for this
                    // node to acknowledge the pong: leaving at once could
                    // end the node before it does, and the server would
                    // wait for an acknowledgement that never comes.
                    let _ = mail::receive(&[], Some(Duration::from_secs(1)));
                }
                other => {
                    println!("no pong: {other:?}");
                    std::process::exit(1);
                }
            }
        }
        _ => {
            println!("usage: cluster_ping serve | send <node> <pid>");
            std::process::exit(2);
        }
    }
}
