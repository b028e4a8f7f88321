//! Caps on channel processes (sans-IO): how many one node runs at once
//! (`limits.max_channels`) and how fast one socket may start new ones
//! (`limits.channel_creations_per_second`). A join of a topic nobody has
//! open starts a channel process that lives at least `limits.channel_empty_ms`;
//! without these caps a join/leave flood over fresh topics from one socket
//! would fill the node's process pool.
//!
//! The node-wide cap is enforced by the directory shards, each owning the
//! topics the hash ring gives it: each may run its share of the cap
//! ([`shard_quota`]). The per-socket rate is a token bucket in
//! `crate::session`: a join may start a channel only while the bucket has a
//! token, and a start takes one.

/// The most channels one of `shards` directory shards may run, so that all
/// of them together stay within `max_channels` (rounded up: at least one).
pub fn shard_quota(max_channels: u32, shards: u32) -> usize {
    let shards = shards.max(1);
    max_channels.div_ceil(shards).max(1) as usize
}

/// Whether a directory shard running `running` channels may start one more.
pub fn may_start(running: usize, max_channels: u32, shards: u32) -> Result<(), String> {
    if running < shard_quota(max_channels, shards) {
        Ok(())
    } else {
        Err(node_full(max_channels))
    }
}

/// The reason of a join refused because the node runs its most channels.
pub fn node_full(max_channels: u32) -> String {
    format!(
        "too_many_channels: this node runs its most channel processes (limits.max_channels = {max_channels}); joins of open topics still work, retry later"
    )
}

/// The reason of a join refused because its socket started too many
/// channels lately.
pub fn creation_refusal(per_second: u32) -> String {
    format!(
        "channel_creation_rate_limited: at most {per_second} new channels per second per socket (limits.channel_creations_per_second); retry"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shards_share_the_cap_rounding_up() {
        assert_eq!(shard_quota(50_000, 4), 12_500);
        assert_eq!(shard_quota(10, 4), 3);
        assert_eq!(shard_quota(1, 4), 1);
        assert_eq!(shard_quota(7, 0), 7, "no shard count is one shard");
    }

    #[test]
    fn a_full_shard_refuses_naming_the_key() {
        assert!(may_start(2, 10, 4).is_ok());
        let reason = may_start(3, 10, 4).unwrap_err();
        assert!(reason.starts_with("too_many_channels"), "{reason}");
        assert!(reason.contains("limits.max_channels = 10"), "{reason}");
        assert!(creation_refusal(5).contains("(limits.channel_creations_per_second)"));
    }
}
