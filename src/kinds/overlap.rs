//! Whether stages' processes overlapped in time. The kernel counts
//! out-of-memory kills per cgroup, and every stage runs in the engine's:
//! a kill counted while two stages ran may have been either's, so the
//! hint for a SIGKILL says so where another stage ran beside the killed
//! one ([`super::exit_hint`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};

/// Stages' processes alive now, and started so far.
pub(crate) struct Counters {
    alive: AtomicUsize,
    started: AtomicU64,
}

/// Every stage this engine runs.
pub(crate) static STAGES: Counters = Counters::new();

/// One process's life among the others', from [`Counters::begin`] until
/// dropped.
pub(crate) struct Span<'a> {
    counters: &'a Counters,
    /// Its number in start order.
    started: u64,
    /// Whether another was alive when it started.
    others_alive: bool,
}

impl Counters {
    pub const fn new() -> Self {
        Self { alive: AtomicUsize::new(0), started: AtomicU64::new(0) }
    }

    /// Starts a process's span (call just before it starts).
    pub fn begin(&self) -> Span<'_> {
        let started = self.started.fetch_add(1, SeqCst) + 1;
        let others_alive = self.alive.fetch_add(1, SeqCst) > 0;
        Span { counters: self, started, others_alive }
    }
}

impl Span<'_> {
    /// Whether another process was alive at some moment of this one's life
    /// so far: one already was when it started, or one started since.
    pub fn beside(&self) -> bool {
        self.others_alive || self.counters.started.load(SeqCst) > self.started
    }
}

impl Drop for Span<'_> {
    fn drop(&mut self) {
        self.counters.alive.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_that_overlap_know_it_and_those_that_do_not_too() {
        let c = Counters::new();
        let lone = c.begin();
        assert!(!lone.beside());
        drop(lone);
        let after = c.begin();
        assert!(!after.beside(), "one that ended before it started is not beside it");
        let second = c.begin();
        assert!(after.beside() && second.beside(), "each sees the other: started since, alive at start");
        drop(after);
        assert!(second.beside(), "still: the other ran during its life");
        drop(second);
        assert!(!c.begin().beside());
    }
}
