//! Restart intensity: the circuit breaker that turns a crash loop into an
//! escalation instead of a supervisor restarting a broken child forever.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The restarts of one supervisor within the sliding `period`.
pub(crate) struct RestartWindow {
    intensity: u32,
    period: Duration,
    recent: VecDeque<Instant>,
}

impl RestartWindow {
    pub(crate) fn new(intensity: u32, period: Duration) -> Self {
        Self {
            intensity,
            period,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now`; false if that makes more than `intensity`
    /// restarts within the last `period` (OTP's rule: intensity 0 means the
    /// first restart already escalates).
    pub(crate) fn allow(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) >= self.period {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        self.recent.len() <= self.intensity as usize
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} restarts in {:?}", self.intensity, self.period)
    }
}
