//! Memory bounded by bytes: the byte budgets of client data and the
//! start-up check that they fit the process memory.
//!
//! Every buffer of client data a process holds has a byte budget in
//! `[limits]` (NATS' habit: a named option, a default, a refusal naming
//! it). A channel process is the one that holds the most at once, so its
//! share must fit the linear memory of one process
//! (`runtime.process_memory_mib`) with room to spare for code, stacks,
//! the allocator and parsed copies: at most [`CLIENT_DATA_SHARE`] of it.
//! A config that does not fit is refused at start, naming the keys, rather
//! than letting one busy room crash-loop its channel later.

use crate::config::Config;

/// The share of a process' memory its client data may take: half (the
/// other half is code, stacks, allocator slack and decoded copies).
pub const CLIENT_DATA_SHARE: (u64, u64) = (1, 2);

const MIB: u64 = 1024 * 1024;

/// What one channel process may hold at once: each budget, named by its
/// key, times how many copies can be live together.
pub fn channel_share(config: &Config) -> Vec<(&'static str, u64, u64)> {
    let l = &config.limits;
    vec![
        (
            "limits.channel_history_bytes",
            1,
            u64::from(l.channel_history_bytes),
        ),
        ("limits.presence_bytes", 1, u64::from(l.presence_bytes)),
        ("limits.room_state_bytes", 1, u64::from(l.room_state_bytes)),
        ("limits.dedupe_bytes", 1, u64::from(l.dedupe_bytes)),
        // A history answer (refill or replay) as received, and its decoded copy.
        (
            "limits.history_page_bytes",
            2,
            u64::from(l.history_page_bytes),
        ),
        // A message being published: its text and its decoded copy.
        (
            "limits.max_payload_bytes",
            2,
            u64::from(l.max_payload_bytes),
        ),
    ]
}

/// Checks the budgets against each other and against the process memory;
/// the error is `(key, reason)`.
pub fn check(config: &Config) -> Result<(), (&'static str, String)> {
    let l = &config.limits;
    if l.history_page_bytes < l.max_payload_bytes {
        return Err((
            "limits.history_page_bytes",
            format!(
                "must be at least limits.max_payload_bytes ({}) so that any stored message fits a page",
                l.max_payload_bytes
            ),
        ));
    }
    if !(16..=4096).contains(&l.presence_key_bytes) {
        return Err((
            "limits.presence_key_bytes",
            "must be between 16 and 4096".into(),
        ));
    }
    if l.presence_bytes < l.presence_key_bytes {
        return Err((
            "limits.presence_bytes",
            "must be at least limits.presence_key_bytes".into(),
        ));
    }
    if l.room_state_bytes < 1024 {
        return Err(("limits.room_state_bytes", "must be at least 1024".into()));
    }
    let share = channel_share(config);
    let total: u64 = share.iter().map(|(_, times, bytes)| times * bytes).sum();
    let memory = u64::from(config.runtime.process_memory_mib) * MIB;
    let allowed = memory * CLIENT_DATA_SHARE.0 / CLIENT_DATA_SHARE.1;
    if total > allowed {
        let parts: Vec<String> = share
            .iter()
            .map(|(key, times, bytes)| match times {
                1 => format!("{key} {bytes}"),
                n => format!("{n} x {key} {bytes}"),
            })
            .collect();
        return Err((
            "runtime.process_memory_mib",
            format!(
                "the byte budgets of one channel process ({} = {total} bytes) exceed half of \
                 runtime.process_memory_mib ({} MiB = {memory} bytes); lower those keys or raise \
                 runtime.process_memory_mib",
                parts.join(" + "),
                config.runtime.process_memory_mib
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fit() {
        assert_eq!(check(&Config::default()), Ok(()));
        let total: u64 = channel_share(&Config::default())
            .iter()
            .map(|(_, n, b)| n * b)
            .sum();
        assert!(total <= 8 * MIB, "{total}");
    }

    #[test]
    fn budgets_over_the_process_memory_are_refused_naming_the_keys() {
        // The configuration that bricked a room: 100 messages of 256 KiB of
        // history (25 MiB) in a 16 MiB process.
        let mut c = Config::default();
        c.limits.channel_history_bytes = 100 * 256 * 1024;
        let (key, reason) = check(&c).unwrap_err();
        assert_eq!(key, "runtime.process_memory_mib");
        for k in [
            "limits.channel_history_bytes 26214400",
            "2 x limits.history_page_bytes",
            "limits.presence_bytes",
            "16 MiB",
        ] {
            assert!(reason.contains(k), "{k} missing from: {reason}");
        }
        // More memory makes it fit.
        c.runtime.process_memory_mib = 64;
        assert_eq!(check(&c), Ok(()));
    }

    #[test]
    fn budgets_are_checked_against_each_other() {
        let mut c = Config::default();
        c.limits.history_page_bytes = c.limits.max_payload_bytes - 1;
        assert_eq!(check(&c).unwrap_err().0, "limits.history_page_bytes");
        let mut c = Config::default();
        c.limits.presence_key_bytes = 8;
        assert_eq!(check(&c).unwrap_err().0, "limits.presence_key_bytes");
        let mut c = Config::default();
        c.limits.room_state_bytes = 10;
        assert_eq!(check(&c).unwrap_err().0, "limits.room_state_bytes");
    }

    #[test]
    fn the_node_refuses_such_a_config_at_load() {
        let err = Config::load(
            None,
            [(
                "CHORUS_LIMITS_CHANNEL_HISTORY_BYTES".to_string(),
                (64 * MIB).to_string(),
            )],
        )
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("runtime.process_memory_mib"));
        assert!(
            err.to_string().contains("limits.channel_history_bytes"),
            "{err}"
        );
    }
}
