//! The driver every fuzz target shares (included with `#[path]` by
//! `tests/fuzz_*.rs`, `stages/tests/fuzz_pth.rs` and the CIFAR reader's
//! `fuzz_tests`, which live in two crates): proptest cases in batches,
//! counts from `CAIRN_FUZZ_CASES`, a time cap from `CAIRN_FUZZ_SECONDS`,
//! and one summary line, the figures BENCHMARKS.md records.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Runs `test` on `CAIRN_FUZZ_CASES` inputs (else `default`) drawn from
/// `strategy`, in batches with fresh random seeds, stopping at the first
/// batch boundary after `CAIRN_FUZZ_SECONDS` of active time (when set;
/// time the process spends stopped, e.g. paused by `kill -STOP` while a
/// benchmark runs, is not counted). `test` says
/// whether the reader accepted the input, which the summary line counts. A
/// failure is shrunk to a minimal input and reported. Failure persistence
/// is off, so no `proptest-regressions` files appear in the tree.
pub fn fuzz<S: Strategy>(name: &str, default: u64, strategy: S, test: impl Fn(S::Value) -> Result<bool, TestCaseError>) {
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let total = env("CAIRN_FUZZ_CASES").unwrap_or(default);
    let limit = env("CAIRN_FUZZ_SECONDS").map(Duration::from_secs);
    let started = Instant::now();
    let (mut done, mut batches, accepted) = (0u64, 0u64, std::cell::Cell::new(0u64));
    // Active time: the gaps between cases, each capped at a second.
    let (last, active) = (std::cell::Cell::new(Instant::now()), std::cell::Cell::new(Duration::ZERO));
    let counted = |v: S::Value| {
        let ok = test(v)?;
        accepted.set(accepted.get() + ok as u64);
        let now = Instant::now();
        active.set(active.get() + (now - last.get()).min(Duration::from_secs(1)));
        last.set(now);
        Ok(())
    };
    while done < total && limit.is_none_or(|l| active.get() < l) {
        let batch = (total - done).min(10_000);
        let config = Config { cases: batch as u32, failure_persistence: None, ..Config::default() };
        if let Err(e) = TestRunner::new(config).run(&strategy, counted) {
            panic!("{name}: {e}");
        }
        done += batch;
        batches += 1;
        if batches % 10 == 0 {
            eprintln!("{name}: {done} cases, {:.0} s active", active.get().as_secs_f64());
        }
    }
    let (secs, wall) = (active.get().as_secs_f64(), started.elapsed().as_secs_f64());
    eprintln!("{name}: {done} cases passed in {secs:.1} s active, {wall:.1} s wall ({} inputs accepted)", accepted.get());
}
