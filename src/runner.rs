//! `cairn run`: walks the graph in dependency order, serves cache hits, and
//! executes stale stages, up to `jobs` at a time.
//!
//! A stage's key is computed only once all its inputs' content hashes are
//! known, so a re-run stage whose outputs come out byte-identical leaves
//! its descendants' keys unchanged and they stay cached (early cutoff).
//! Before a stage runs, its input objects are re-hashed: a damaged object is
//! evicted and its producer re-run, so corrupt bytes never reach a stage.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use serde::Serialize;

use crate::cache::{Cache, CacheError, OutputRecord, StageRef};
use crate::digest::{ArtifactHash, StageKey};
use crate::env::Environment;
use crate::exec::{execute, ExecRequest, Executed};
use crate::key::{DirtyReason, KeyInputs};
use crate::kind::{InputRef, Reporter, StageFailure};
use crate::plan::Resolver;
use crate::spec::Pipeline;

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stages to bring up to date (with their ancestors); empty means all.
    pub targets: Vec<String>,
    /// Stages to run even if cached.
    pub force: Vec<String>,
    pub dry_run: bool,
    pub jobs: usize,
}

/// What happened to one stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Cached,
    Ran,
    /// `--dry-run`: it would run.
    WouldRun,
    Failed { error: String },
    /// Not attempted because an upstream stage failed or would run first.
    Skipped { because: String },
    Interrupted,
}

#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub kind: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub key: Option<StageKey>,
    pub reasons: Vec<DirtyReason>,
    pub duration_s: f64,
    pub outputs: BTreeMap<String, OutputRecord>,
    pub metrics: BTreeMap<String, f64>,
    #[serde(skip)]
    pub params: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub started_at: String,
    pub finished_at: String,
    pub profile: Option<String>,
    pub stages: Vec<StageReport>,
    pub interrupted: bool,
}

impl RunReport {
    pub fn failed(&self) -> bool {
        self.stages.iter().any(|s| matches!(s.outcome, Outcome::Failed { .. }))
    }
    pub fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.stages.iter().filter(|s| f(&s.outcome)).count()
    }
}

/// Receives what the runner does, for display.
pub trait Observer: Reporter {
    fn started(&self, stage: &str, reasons: &[DirtyReason]);
    fn finished(&self, report: &StageReport);
    fn warn(&self, message: &str);
}

/// Errors that stop a run as a whole (stage failures are in the report).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("stage `{stage}`: {source}")]
    External { stage: String, source: crate::external::ExternalError },
    #[error("no stage named `{0}`")]
    UnknownStage(String),
}

enum State {
    Pending,
    Running,
    Done(BTreeMap<String, OutputRecord>),
    Failed,
    Blocked,
}

pub fn run(
    pipeline: &Pipeline,
    cache: &Cache,
    env: &Environment,
    opts: &RunOptions,
    observer: &dyn Observer,
    cancel: &AtomicBool,
) -> Result<RunReport, RunError> {
    let started_at = crate::exec::now_rfc3339();
    let run_id = format!(
        "{}-{:04x}",
        started_at.replace([':', '-'], "").chars().take(15).collect::<String>(),
        std::process::id() & 0xffff
    );
    let n = pipeline.stages.len();
    let mut targets = Vec::new();
    for t in &opts.targets {
        targets.push(pipeline.index_of(t).ok_or_else(|| RunError::UnknownStage(t.clone()))?);
    }
    for f in &opts.force {
        pipeline.index_of(f).ok_or_else(|| RunError::UnknownStage(f.clone()))?;
    }
    let selected: BTreeSet<usize> =
        if targets.is_empty() { (0..n).collect() } else { pipeline.graph.ancestors_of(&targets) };
    let mut forced: BTreeSet<usize> = opts.force.iter().filter_map(|f| pipeline.index_of(f)).collect();

    let warn = |m: String| observer.warn(&m);
    let resolver = Resolver::new(pipeline, cache, env, &warn);
    let mut states: Vec<State> = (0..n).map(|_| State::Pending).collect();
    let mut reports: BTreeMap<usize, StageReport> = BTreeMap::new();
    let mut hashes: BTreeMap<String, BTreeMap<String, ArtifactHash>> = BTreeMap::new();
    let mut key_inputs: BTreeMap<usize, KeyInputs> = BTreeMap::new();
    let jobs = opts.jobs.max(1);
    let mut running = 0usize;

    std::thread::scope(|scope| -> Result<(), RunError> {
        let (tx, rx) = mpsc::channel::<(usize, Result<Executed, StageFailure>)>();
        loop {
            let mut progressed = false;
            for i in 0..n {
                if !selected.contains(&i) || !matches!(states[i], State::Pending) {
                    continue;
                }
                let stage = &pipeline.stages[i];
                let deps = &pipeline.graph.deps[i];
                if let Some(&d) = deps.iter().find(|&&d| matches!(states[d], State::Failed | State::Blocked)) {
                    let because = format!("upstream stage `{}` did not finish", pipeline.stages[d].name);
                    states[i] = State::Blocked;
                    let r = report(stage, Outcome::Skipped { because }, None, vec![]);
                    observer.finished(&r);
                    reports.insert(i, r);
                    progressed = true;
                    continue;
                }
                if !deps.iter().all(|&d| matches!(states[d], State::Done(_))) {
                    continue;
                }
                if cancel.load(Ordering::Relaxed) {
                    continue;
                }
                let ki = match resolver.key_inputs(stage, &hashes, !opts.dry_run) {
                    Ok(Some(ki)) => ki,
                    Ok(None) => unreachable!("all upstream stages are done"),
                    Err(source) => {
                        if opts.dry_run {
                            states[i] = State::Blocked;
                            reports.insert(i, report(stage, Outcome::Failed { error: source.to_string() }, None, vec![]));
                            progressed = true;
                            continue;
                        }
                        return Err(RunError::External { stage: stage.name.clone(), source });
                    }
                };
                let key = ki.key();
                let hit = if forced.contains(&i) { None } else { resolver.lookup(&key)? };
                progressed = true;
                if let Some(m) = hit {
                    tracing::debug!(stage = %stage.name, key = %key.short(), "cache hit");
                    cache.write_stage_ref(&stage.name, &StageRef { key, key_inputs: ki })?;
                    hashes.insert(stage.name.clone(), m.outputs.iter().map(|(k, o)| (k.clone(), o.hash)).collect());
                    let mut r = report(stage, Outcome::Cached, Some(key), vec![]);
                    r.outputs = m.outputs.clone();
                    r.metrics = m.metrics.clone();
                    r.duration_s = m.duration_s;
                    observer.finished(&r);
                    reports.insert(i, r);
                    states[i] = State::Done(m.outputs);
                    continue;
                }
                let reasons = if forced.contains(&i) { vec![DirtyReason::Forced] } else { resolver.reasons(&stage.name, Some(&ki), None) };
                if opts.dry_run {
                    let r = report(stage, Outcome::WouldRun, Some(key), reasons);
                    observer.finished(&r);
                    reports.insert(i, r);
                    states[i] = State::Blocked;
                    continue;
                }
                if running >= jobs {
                    progressed = false;
                    continue;
                }
                // Never feed damaged bytes to a stage: re-hash its inputs.
                if let Some(producer) = damaged_input(pipeline, cache, &states, i)? {
                    observer.warn(&format!(
                        "an output of `{}` in the cache is damaged; re-running `{}`",
                        pipeline.stages[producer].name, pipeline.stages[producer].name
                    ));
                    reset_from(pipeline, producer, &selected, &mut states, &mut hashes, &mut reports);
                    forced.insert(producer);
                    continue;
                }
                let inputs = resolver.input_paths(i, |up, output| match &states[pipeline.index_of(up).expect("references are checked")] {
                    State::Done(outs) => outs[output].hash,
                    _ => unreachable!("inputs are done before a stage runs"),
                })?;
                observer.started(&stage.name, &reasons);
                let mut r = report(stage, Outcome::Ran, Some(key), reasons);
                r.params = stage.checked.params.clone();
                reports.insert(i, r);
                key_inputs.insert(i, ki);
                states[i] = State::Running;
                running += 1;
                let tx = tx.clone();
                let ki = key_inputs[&i].clone();
                let seed = pipeline.seed;
                // One span per executed stage: every log line of the engine
                // (and of a worker, which runs inside it) names the stage.
                let span = tracing::info_span!("stage", stage = %stage.name, kind = stage.kind.name(), key = %key.short());
                scope.spawn(move || {
                    let _entered = span.enter();
                    let res = execute(
                        cache,
                        ExecRequest { stage, key_inputs: &ki, inputs, seed, env, reporter: observer, cancel, store: true },
                    );
                    match &res {
                        Ok(done) => tracing::info!(secs = done.duration_s, "stage finished"),
                        Err(f) => tracing::info!(error = %f.message, "stage did not finish"),
                    }
                    let _ = tx.send((i, res));
                });
            }
            if running == 0 && !progressed {
                break;
            }
            if running > 0 && (!progressed || running >= jobs) {
                let (i, res) = rx.recv().expect("a stage thread is running");
                running -= 1;
                let stage = &pipeline.stages[i];
                let r = reports.get_mut(&i).expect("running stages have a report");
                match res {
                    Ok(done) => {
                        r.outputs = done.outputs.clone();
                        r.metrics = done.metrics;
                        r.duration_s = done.duration_s;
                        let key = r.key.expect("ran stages have a key");
                        cache.write_stage_ref(&stage.name, &StageRef { key, key_inputs: key_inputs[&i].clone() })?;
                        hashes.insert(stage.name.clone(), done.outputs.iter().map(|(k, o)| (k.clone(), o.hash)).collect());
                        states[i] = State::Done(done.outputs);
                    }
                    Err(f) => {
                        r.outcome = if f.interrupted { Outcome::Interrupted } else { Outcome::Failed { error: f.message } };
                        states[i] = State::Failed;
                    }
                }
                observer.finished(r);
            }
        }
        Ok(())
    })?;
    resolver.stat.save();

    let interrupted = cancel.load(Ordering::Relaxed);
    let mut stages = Vec::new();
    for i in 0..n {
        if let Some(r) = reports.remove(&i) {
            stages.push(r);
        } else if selected.contains(&i) && interrupted {
            stages.push(report(&pipeline.stages[i], Outcome::Skipped { because: "interrupted".into() }, None, vec![]));
        }
    }
    Ok(RunReport {
        run_id,
        started_at,
        finished_at: crate::exec::now_rfc3339(),
        profile: pipeline.profile.as_ref().map(|p| p.0.clone()),
        stages,
        interrupted,
    })
}

fn report(stage: &crate::spec::Stage, outcome: Outcome, key: Option<StageKey>, reasons: Vec<DirtyReason>) -> StageReport {
    StageReport {
        stage: stage.name.clone(),
        kind: stage.kind.name().to_string(),
        outcome,
        key,
        reasons,
        duration_s: 0.0,
        outputs: BTreeMap::new(),
        metrics: BTreeMap::new(),
        params: stage.checked.params.clone(),
    }
}

/// The first upstream stage whose output object, as stage `i` would read
/// it, no longer hashes to its name. The damaged object is evicted.
fn damaged_input(pipeline: &Pipeline, cache: &Cache, states: &[State], i: usize) -> Result<Option<usize>, CacheError> {
    for refs in pipeline.stages[i].inputs.values() {
        for r in refs {
            let InputRef::Output { stage, output } = r else { continue };
            let p = pipeline.index_of(stage).expect("references are checked");
            let State::Done(outs) = &states[p] else { continue };
            let h = outs[output].hash;
            if !cache.verify_object(&h)? {
                cache.evict_object(&h);
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

/// Puts `producer` and its selected descendants back to pending.
fn reset_from(
    pipeline: &Pipeline,
    producer: usize,
    selected: &BTreeSet<usize>,
    states: &mut [State],
    hashes: &mut BTreeMap<String, BTreeMap<String, ArtifactHash>>,
    reports: &mut BTreeMap<usize, StageReport>,
) {
    let mut stack = vec![producer];
    while let Some(p) = stack.pop() {
        states[p] = State::Pending;
        hashes.remove(&pipeline.stages[p].name);
        reports.remove(&p);
        for (j, deps) in pipeline.graph.deps.iter().enumerate() {
            if deps.contains(&p) && selected.contains(&j) && matches!(states[j], State::Done(_)) {
                stack.push(j);
            }
        }
    }
}
