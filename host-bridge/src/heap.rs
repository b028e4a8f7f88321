//! Giving the host's freed heap back to the system after a load.
//!
//! Every process and socket allocates host memory (its store, instance,
//! mailbox, socket queues) from glibc's malloc, spread over one arena per
//! worker thread. When thousands of sessions end together, their blocks are
//! freed but glibc returns only what lies at the top of each arena: the rest
//! stays in the node's RSS until new sessions reuse it. `malloc_trim(0)`
//! releases every free page of every arena (`madvise`), at the cost of a
//! walk over the arenas, so it runs only after the population has fallen
//! well below its peak ([`Trim::after`]), from the host's once-a-second
//! sweeper.

/// When to trim: once the live count (processes) has fallen to half of the
/// highest seen since the last trim, by at least [`Trim::MIN_DROP`].
#[derive(Debug, Default)]
pub struct Trim {
    high: usize,
}

impl Trim {
    /// Fewer ended processes are not worth a walk over the arenas.
    pub const MIN_DROP: usize = 1000;

    /// Records the live count; true when the heap should be trimmed now.
    pub fn after(&mut self, live: usize) -> bool {
        self.high = self.high.max(live);
        let dropped = self.high - live;
        if dropped >= Self::MIN_DROP && live <= self.high / 2 {
            self.high = live;
            return true;
        }
        false
    }
}

/// Returns the free pages of every malloc arena to the system.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::Trim;

    #[test]
    fn trims_once_the_population_halves_by_enough() {
        let mut t = Trim::default();
        assert!(!t.after(0));
        assert!(!t.after(5000));
        assert!(!t.after(2600), "not yet half");
        assert!(t.after(2500), "half of the peak, 2,500 gone");
        assert!(!t.after(2500), "once, not every second");
        assert!(!t.after(1300));
        assert!(t.after(1250), "the new high of 2,500 halved: 1,250 gone");
    }

    #[test]
    fn small_populations_are_not_trimmed() {
        let mut t = Trim::default();
        assert!(!t.after(900));
        assert!(!t.after(0), "900 gone: under MIN_DROP");
        assert!(!t.after(1500));
        assert!(t.after(0), "1,500 gone");
    }
}
