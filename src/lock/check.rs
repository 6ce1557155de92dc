//! `cairn run --locked`: a finished run compared against the committed lock.
//!
//! Each stage the run brought up to date is found in the lock by its key
//! (then it must have produced the same outputs, byte for byte), else by
//! its environment class (then the lock is stale, and the key inputs say
//! why: a param, a version, an input). A stage with no entry of this
//! machine's class cannot be compared: results legitimately differ across
//! CPU kernels and devices, so it is reported and fails only under
//! `--locked=strict`. Stages whose keys need no environment fact (data
//! stages) are of class `any` and always compared.

use std::collections::BTreeMap;
use std::fmt;

use super::{class_of, locked_outputs, same_computation, KeyLookup, Lock, LockedOutput, ANY_CLASS, FILE};
use crate::key::{DirtyReason, KeyInputs};
use crate::runner::{Outcome, RunReport};

/// What the lock says about one stage of the run.
#[derive(Clone, Debug, PartialEq)]
pub enum Finding {
    /// Same key, every output byte-identical.
    Matches,
    /// Same key, other outputs: the result is not what was committed.
    Differs { outputs: Vec<OutputDiff> },
    /// The lock's entry asks for another computation (a param, a version,
    /// an input moved): the lock is stale.
    Stale { class: String, reasons: Vec<DirtyReason> },
    /// The stage is not in the lock.
    Missing,
    /// The stage is in the lock, not in the pipeline.
    Removed,
    /// The lock holds this stage only for other environment classes.
    NotComparable { this: BTreeMap<String, String>, locked: Vec<BTreeMap<String, String>> },
}

/// One output whose hash differs (`None`: absent on that side).
#[derive(Clone, Debug, PartialEq)]
pub struct OutputDiff {
    pub output: String,
    pub locked: Option<LockedOutput>,
    pub now: Option<LockedOutput>,
}

/// Every stage's finding, in pipeline order (removed stages last).
#[derive(Debug, Default)]
pub struct LockCheck {
    pub stages: Vec<(String, Finding)>,
}

impl LockCheck {
    /// Whether the check fails: a difference or a stale lock, and under
    /// `strict` also a stage that could not be compared.
    pub fn failed(&self, strict: bool) -> bool {
        self.stages.iter().any(|(_, f)| match f {
            Finding::Matches => false,
            Finding::NotComparable { .. } => strict,
            _ => true,
        })
    }

    pub fn count(&self, f: impl Fn(&Finding) -> bool) -> usize {
        self.stages.iter().filter(|(_, x)| f(x)).count()
    }
}

/// Compares a successful run with the lock. `whole_pipeline` is given when
/// the run covered every stage (no targets): stages the lock holds that it
/// does not name are reported too.
pub fn check(lock: &Lock, report: &RunReport, whole_pipeline: Option<&dyn Fn(&str) -> bool>, lookup: KeyLookup<'_>) -> LockCheck {
    let mut out = LockCheck::default();
    for s in report.stages.iter().filter(|s| matches!(s.outcome, Outcome::Cached | Outcome::Pulled | Outcome::Ran)) {
        let Some(key) = s.key else { continue };
        let finding = match lock.stages.get(&s.stage) {
            None => Finding::Missing,
            Some(classes) => match classes.values().find(|e| e.key == key) {
                Some(e) => compare_outputs(&e.outputs, &locked_outputs(s)),
                None => by_class(classes, lookup(&s.stage, &key)),
            },
        };
        out.stages.push((s.stage.clone(), finding));
    }
    if let Some(in_pipeline) = whole_pipeline {
        out.stages.extend(lock.stages.keys().filter(|n| !in_pipeline(n)).map(|n| (n.clone(), Finding::Removed)));
    }
    out
}

fn compare_outputs(locked: &BTreeMap<String, LockedOutput>, now: &BTreeMap<String, LockedOutput>) -> Finding {
    let mut names: Vec<&String> = locked.keys().chain(now.keys()).collect();
    names.sort();
    names.dedup();
    let outputs: Vec<OutputDiff> = names
        .into_iter()
        .filter(|n| locked.get(*n).map(|o| o.hash) != now.get(*n).map(|o| o.hash))
        .map(|n| OutputDiff { output: n.clone(), locked: locked.get(n).copied(), now: now.get(n).copied() })
        .collect();
    if outputs.is_empty() {
        Finding::Matches
    } else {
        Finding::Differs { outputs }
    }
}

/// A stage whose key is in no entry: the entry of its class, or one asking
/// for another computation, says why the lock is stale; otherwise the
/// lock knows it only on other machines.
fn by_class(classes: &BTreeMap<String, super::Entry>, now: Option<KeyInputs>) -> Finding {
    let Some(now) = now else {
        return Finding::Stale { class: String::new(), reasons: Vec::new() };
    };
    let class = class_of(&now.env);
    if let Some(e) = classes.get(&class) {
        return Finding::Stale { class, reasons: now.diff(&e.key_inputs) };
    }
    if let Some((class, e)) = classes.iter().find(|(_, e)| !same_computation(&e.key_inputs, &now)) {
        let reasons = now.diff(&e.key_inputs).into_iter().filter(|r| !matches!(r, DirtyReason::EnvChanged { .. } | DirtyReason::InputChanged { .. })).collect();
        return Finding::Stale { class: class.clone(), reasons };
    }
    Finding::NotComparable { this: now.env, locked: classes.values().map(|e| e.key_inputs.env.clone()).collect() }
}

const FIX: &str = "run `cairn run` and commit";

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::Matches => write!(f, "matches the lock"),
            Finding::Differs { outputs } => {
                let parts: Vec<String> = outputs.iter().map(|d| format!("output `{}` is {} in the lock, {} in this run", d.output, show(d.locked), show(d.now))).collect();
                write!(f, "{}", parts.join("; "))
            }
            Finding::Stale { class, reasons } => {
                let why = if reasons.is_empty() { "its key changed".to_string() } else { reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ") };
                let class = if class.is_empty() || class == ANY_CLASS { String::new() } else { format!(" (class {class})") };
                // Often the echo of a difference upstream, reported there.
                let inputs_only = !reasons.is_empty() && reasons.iter().all(|r| matches!(r, DirtyReason::InputChanged { .. }));
                let what = if inputs_only { "its inputs are not the lock's (an upstream output or an input file changed)" } else { "the lock is stale" };
                write!(f, "{what}{class}: {why}; {FIX} {FILE} if the change is intended")
            }
            Finding::Missing => write!(f, "not in the lock; {FIX} {FILE}"),
            Finding::Removed => write!(f, "in the lock but not in the pipeline; {FIX} {FILE}"),
            Finding::NotComparable { this, locked } => {
                let under: Vec<String> = locked.iter().map(|l| differing(l, this)).collect();
                write!(f, "computed under {}, this machine is {}: not comparable", under.join(" or "), differing(this, locked.first().unwrap_or(this)))
            }
        }
    }
}

fn show(o: Option<LockedOutput>) -> String {
    match o {
        Some(o) => format!("{} ({} bytes)", o.hash.short(), o.size),
        None => "absent".into(),
    }
}

/// The facts of `a` that differ from `b` (all of them when none do).
fn differing(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> String {
    let diff: BTreeMap<String, String> = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
    class_of(if diff.is_empty() { a } else { &diff })
}
