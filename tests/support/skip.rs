//! Visible skips, shared by every crate's tests (included with `#[path]`).
//!
//! A test whose prerequisite is missing calls [`missing`] when `.ci/run`
//! installs that prerequisite (Chromium, torchvision in the torch venv):
//! under CI (`CI=true`, which `.ci/run` sets) the test then fails instead of
//! passing vacuously. [`unavailable`] is for what no install provides (root
//! with CAP_SYS_ADMIN for a tmpfs): it always skips.
//!
//! Either way the skip is printed as `SKIPPED <test>: <why>` and, when
//! `CAIRN_SKIP_LOG` names a file, appended to it: `make test` sets it and
//! prints the list and its count after the run, so a skip is seen where the
//! runner's totals are, not buried in a passing test's captured output.

#![allow(dead_code)]

use std::io::Write;

/// Whether this run is CI's (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `test` cannot run because `why`; CI installs the prerequisite, so under
/// CI this panics.
pub fn missing(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why}; CI (.ci/run) installs this prerequisite, so the test must not skip there");
    }
    record(test, why);
}

/// `test` cannot run here because `why`, which no install can change.
pub fn unavailable(test: &str, why: &str) {
    record(test, why);
}

fn record(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    if let Some(log) = std::env::var_os("CAIRN_SKIP_LOG") {
        // One short O_APPEND write per skip: lines from parallel tests do
        // not interleave.
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}
