//! Giving the host's freed heap back to the system after a load.
//!
//! Every process and socket allocates host memory (its store, instance,
//! mailbox, socket queues) from glibc's malloc, spread over one arena per
//! worker thread. When thousands of sessions end together, their blocks are
//! freed but glibc returns only what lies at the top of each arena: the rest
//! stays in the node's RSS until new sessions reuse it. `malloc_trim(0)`
//! releases every free page of every arena (`madvise`), at the cost of a
//! walk over the arenas, so it runs only after the population has fallen
//! well below its peak or has stopped falling after a large enough drop
//! ([`Trim::after`]), from the host's once-a-second sweeper.

/// When to trim, given the live count (processes) once a second:
/// * while it falls, once it is half of the highest seen since the last trim,
///   by at least [`Trim::MIN_DROP`] (a large exodus is trimmed as it goes);
/// * when it stops falling, once it is three quarters of that highest or
///   less, by at least [`Trim::MIN_SETTLED_DROP`] — so what the last
///   sessions of an exodus freed is returned too (without this, the blocks
///   of the last ~1,000 processes to end stayed in the node's RSS).
///
/// * once more at the first second it does not fall after a trim made while
///   it fell: a process leaves the count before its task has dropped its
///   store, socket and queues, so what the last ones of an exodus free
///   lands after that trim (after 19,000 sessions in 1,900 channels left, a
///   `malloc_trim` called from a debugger 4 s after the last session left
///   still released 21 MB of the node's RSS).
///
/// A population that churns by less than a quarter is never trimmed: the
/// walk holds each arena's lock, and churn reuses the freed blocks anyway.
#[derive(Debug, Default)]
pub struct Trim {
    high: usize,
    prev: usize,
    /// A trim was made while the count fell: one more when it stops.
    again: bool,
}

impl Trim {
    /// Fewer ended processes are not worth a walk over the arenas while the
    /// population is still falling.
    pub const MIN_DROP: usize = 1000;
    /// The least drop trimmed once the population has stopped falling.
    pub const MIN_SETTLED_DROP: usize = 250;

    /// Records the live count; true when the heap should be trimmed now.
    pub fn after(&mut self, live: usize) -> bool {
        self.high = self.high.max(live);
        let falling = live < self.prev;
        self.prev = live;
        let dropped = self.high - live;
        let halved = dropped >= Self::MIN_DROP && live <= self.high / 2;
        let settled = !falling && dropped >= Self::MIN_SETTLED_DROP && live <= self.high / 4 * 3;
        let again = !falling && self.again;
        if halved || settled || again {
            self.high = live;
            self.again = falling;
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
        assert!(!t.after(2400), "once, not every second");
        assert!(!t.after(1300));
        assert!(t.after(1250), "the new high of 2,500 halved: 1,250 gone");
    }

    #[test]
    fn trims_what_the_last_of_an_exodus_freed_once_it_settles() {
        let mut t = Trim::default();
        assert!(!t.after(5000));
        assert!(t.after(2500), "halved while falling");
        assert!(!t.after(1900), "still falling, not half");
        assert!(!t.after(1300), "falling, not half");
        assert!(
            t.after(1300),
            "stopped at 1,300: 1,200 gone since the last trim"
        );
        assert!(!t.after(1300), "once");
        assert!(!t.after(1299), "one more gone is not worth a walk");
        assert!(!t.after(1299));
    }

    #[test]
    fn a_trim_while_falling_is_followed_by_one_when_it_stops() {
        let mut t = Trim::default();
        assert!(!t.after(20_000));
        assert!(t.after(9_000), "halved while falling");
        assert!(t.after(2_000), "halved again, still falling");
        assert!(t.after(2_000), "stopped falling: what the last freed");
        assert!(!t.after(2_000), "once");
        // Their channels stop a second later.
        assert!(t.after(30), "halved while falling");
        assert!(t.after(30), "stopped falling");
        assert!(!t.after(30));
        assert!(!t.after(31));
        assert!(!t.after(30), "a settled trim needs a fall after it");
    }

    #[test]
    fn churn_is_not_trimmed() {
        let mut t = Trim::default();
        assert!(!t.after(19_000));
        for _ in 0..10 {
            assert!(!t.after(18_000), "a thousand left");
            assert!(!t.after(18_000), "settled, but less than a quarter gone");
            assert!(!t.after(19_000), "and came back");
        }
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
