//! The per-socket flood limit (sans-IO): a token bucket of `burst` tokens
//! refilled at `per_second` tokens per second. The session takes one token
//! per client push (heartbeats and leaves are exempt, see [`is_exempt`]);
//! without a token the push is refused with [`refusal`].

use crate::phoenix::{event, PHOENIX_TOPIC};

/// Thousandths of a token: whole-millisecond refills stay exact.
const MILLI: u64 = 1000;

/// A token bucket driven by a monotonic clock in milliseconds.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Refill, in tokens per second (= thousandths per millisecond).
    per_second: u64,
    /// Capacity, in thousandths of a token.
    capacity: u64,
    /// Tokens now, in thousandths.
    level: u64,
    /// Time of the last refill.
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `per_second`, at time
    /// `now_ms`.
    pub fn new(per_second: u32, burst: u32, now_ms: u64) -> TokenBucket {
        let capacity = u64::from(burst.max(1)) * MILLI;
        TokenBucket {
            per_second: u64::from(per_second),
            capacity,
            level: capacity,
            last_ms: now_ms,
        }
    }

    /// Takes one token at `now_ms` if there is one.
    pub fn try_take(&mut self, now_ms: u64) -> bool {
        if self.ready(now_ms) {
            self.level -= MILLI;
            true
        } else {
            false
        }
    }

    /// Whether a token is there at `now_ms` (refilling, taking none).
    pub fn ready(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.level = self
            .level
            .saturating_add(elapsed.saturating_mul(self.per_second))
            .min(self.capacity);
        self.level >= MILLI
    }
}

/// Pushes that never take a token: the heartbeat (on topic `phoenix`) and
/// `phx_leave`.
pub fn is_exempt(topic: &str, event_name: &str) -> bool {
    event_name == event::LEAVE || (topic == PHOENIX_TOPIC && event_name == event::HEARTBEAT)
}

/// The error reason of a refused push.
pub fn refusal(per_second: u32) -> String {
    format!(
        "rate_limited: at most {per_second} messages per second per socket (limits.client_messages_per_second)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_the_burst_then_refuses() {
        let mut b = TokenBucket::new(10, 5, 1_000);
        assert_eq!((0..5).filter(|_| b.try_take(1_000)).count(), 5);
        assert!(!b.try_take(1_000));
        assert!(!b.try_take(1_050), "half a token after 50 ms");
        assert!(b.try_take(1_100), "one token after 100 ms at 10/s");
        assert!(!b.try_take(1_100));
    }

    #[test]
    fn refills_up_to_the_burst_only() {
        let mut b = TokenBucket::new(100, 3, 0);
        for _ in 0..3 {
            assert!(b.try_take(0));
        }
        // An hour later the bucket holds the burst, not 360,000 tokens.
        assert_eq!((0..10).filter(|_| b.try_take(3_600_000)).count(), 3);
    }

    #[test]
    fn sustained_rate_is_the_refill_rate() {
        let mut b = TokenBucket::new(50, 1, 0);
        // One push per millisecond for 10 s: the burst token at 0 ms, then
        // one every 20 ms (20, 40, … 9,980 ms).
        let allowed = (0..10_000u64).filter(|ms| b.try_take(*ms)).count();
        assert_eq!(allowed, 1 + 499);
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut b = TokenBucket::new(1_000, 1, 5_000);
        assert!(b.try_take(5_000));
        assert!(!b.try_take(4_000));
        assert!(!b.try_take(5_000));
        assert!(b.try_take(5_001));
    }

    #[test]
    fn exemptions_and_reason() {
        assert!(is_exempt("phoenix", "heartbeat"));
        assert!(is_exempt("realtime:room:1:chat", "phx_leave"));
        assert!(!is_exempt("realtime:room:1:chat", "heartbeat"));
        assert!(!is_exempt("realtime:room:1:chat", "phx_join"));
        assert!(!is_exempt("phoenix", "clock"));
        assert_eq!(
            refusal(100),
            "rate_limited: at most 100 messages per second per socket (limits.client_messages_per_second)"
        );
    }
}
