//! `vm.max_map_count`: every live process costs a few memory mappings, and
//! Linux' default (65,530) caps a node near 20 k processes. Like
//! Elasticsearch, the node raises it when it can (root) and says exactly what
//! to run when it cannot.

const PATH: &str = "/proc/sys/vm/max_map_count";

/// Raises `vm.max_map_count` to at least `wanted`, or warns how to.
pub fn ensure_max_map_count(wanted: u64) {
    let current = match std::fs::read_to_string(PATH) {
        Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
        Err(_) => return, // not Linux, or no procfs: nothing to do
    };
    if current >= wanted {
        return;
    }
    match std::fs::write(PATH, wanted.to_string()) {
        Ok(()) => tracing::info!(from = current, to = wanted, "raised vm.max_map_count"),
        Err(e) => tracing::warn!(
            current,
            wanted,
            error = %e,
            "vm.max_map_count is {current}; the node holds fewer processes than \
             runtime.max_processes until an administrator runs \
             `sysctl -w vm.max_map_count={wanted}`"
        ),
    }
}
