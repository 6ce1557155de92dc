//! The lock's part in `cairn run`: `cairn.lock` is read before the run and,
//! after a successful one, either updated (the default) or, with
//! `--locked`, compared and left as it is (see `cairn::lock`).

use std::collections::BTreeMap;
use std::path::Path;

use cairn::cache::{Cache, Project, StageRef};
use cairn::digest::StageKey;
use cairn::key::KeyInputs;
use cairn::lock::check::{check, Finding, LockCheck};
use cairn::lock::{LockError, OnDisk};
use cairn::runner::RunReport;
use cairn::spec::Pipeline;

use super::commands::fail;
use super::ui::Console;
use super::{exit, Cli};

/// `--locked` and `--locked=strict`.
pub const STRICT: &str = "strict";

/// What the lock does in this run.
pub struct LockPlan {
    on_disk: OnDisk,
    /// `--locked`: compare instead of writing; `Some(true)` is strict.
    strict: Option<bool>,
}

fn lock_error(console: &Console, e: LockError) -> i32 {
    let code = match e {
        LockError::Read { .. } | LockError::Write { .. } => exit::IO,
        LockError::Parse { .. } | LockError::Schema { .. } => exit::USAGE,
    };
    fail(console, code, e)
}

/// Reads the lock before the run, once the cache is locked for it (a run
/// it waited for may have changed the lock). With `--locked`, a missing
/// lock fails (exit 1) before anything runs.
pub fn before_run(cli: &Cli, locked: Option<&str>, console: &Console) -> Result<LockPlan, i32> {
    let path = cairn::lock::path_for(&cli.file);
    let on_disk = OnDisk::read(&path).map_err(|e| lock_error(console, e))?;
    let strict = locked.map(|mode| mode == STRICT);
    if strict.is_some() && !on_disk.exists() {
        return Err(fail(
            console,
            exit::FAILED,
            format!("--locked: there is no lock at {}\n  help: run `cairn run` (without --locked) and commit {}", path.display(), cairn::lock::FILE),
        ));
    }
    Ok(LockPlan { on_disk, strict })
}

/// After a successful run: writes the lock, or compares the run with it.
/// Returns the exit code.
pub fn after_run(plan: LockPlan, pipeline: &Pipeline, cache: &Cache, report: &RunReport, whole: bool, console: &Console) -> i32 {
    let in_pipeline = |name: &str| pipeline.stage(name).is_some();
    if plan.strict.is_none() && plan.on_disk.holds(&in_pipeline, report) {
        return exit::OK;
    }
    // The refs hold every stage the run brought up to date, with the key
    // inputs it had (read once, and only when the lock changes). Each
    // stage is asked for once, so its key inputs move into the lock.
    let refs = std::cell::RefCell::new(None);
    let lookup = |stage: &str, key: &StageKey| -> Option<KeyInputs> {
        let mut refs = refs.borrow_mut();
        let refs: &mut BTreeMap<String, StageRef> = refs.get_or_insert_with(|| cache.stage_refs(&Project::of(&pipeline.file)));
        refs.remove(stage).filter(|r| r.key == *key).map(|r| r.key_inputs)
    };
    let lock = match plan.on_disk.lock() {
        Ok(lock) => lock.unwrap_or_default(),
        Err(e) => return lock_error(console, e),
    };
    let Some(strict) = plan.strict else {
        let mut lock = lock;
        lock.record(&in_pipeline, report, &lookup);
        return match plan.on_disk.write(&lock) {
            Ok(_) => exit::OK,
            Err(e) => lock_error(console, e),
        };
    };
    let result = check(&lock, report, whole.then_some(&in_pipeline as &dyn Fn(&str) -> bool), &lookup);
    print_check(&result, strict, &plan.on_disk.path, console)
}

/// Prints each stage that does not match and the verdict; returns the exit
/// code.
fn print_check(result: &LockCheck, strict: bool, path: &Path, console: &Console) -> i32 {
    for (stage, finding) in &result.stages {
        let label = match finding {
            Finding::Matches => continue,
            Finding::Differs { .. } => "DIFFERS",
            Finding::Stale { .. } => "STALE",
            Finding::Missing => "MISSING",
            Finding::Removed => "REMOVED",
            Finding::NotComparable { .. } if strict => "NOT COMPARED",
            Finding::NotComparable { .. } => "not compared",
        };
        console.error(&format!("{label:<12} {stage}: {finding}"));
    }
    let matched = result.count(|f| matches!(f, Finding::Matches));
    let other = result.count(|f| matches!(f, Finding::NotComparable { .. }));
    let path = path.display();
    if result.failed(strict) {
        let why = if strict && other > 0 { " (--locked=strict fails on stages it could not compare)" } else { "" };
        return fail(console, exit::FAILED, format!("this run does not match {path}{why}; {matched} stage(s) matched"));
    }
    console.line(&format!("{path}: {matched} stage(s) match, {other} of another environment class not compared"));
    exit::OK
}
