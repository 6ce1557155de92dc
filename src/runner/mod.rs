//! `cairn run`: walks the graph in dependency order, serves cache hits, and
//! executes stale stages, up to `jobs` at a time.
//!
//! Each stage is looked at once, when its dependencies have settled
//! ([`frontier`]); a stale one then waits for a job slot with its key,
//! and is asked of the local cache once more as it starts, in case a stage
//! with the same key finished meanwhile.
//!
//! A stage's key is computed only once all its inputs' content hashes are
//! known, so a re-run stage whose outputs come out byte-identical leaves
//! its descendants' keys unchanged and they stay cached (early cutoff).
//! Around every execution the stage's inputs are checked against its key
//! ([`Resolver::check_inputs`]): before, so damaged bytes never reach a
//! stage (the damaged object is evicted and its producer re-run); after,
//! so a stage that wrote its inputs, or an input edited while it ran, is
//! never cached. A run that changes nothing writes nothing: refs are
//! written once, at the end, and only when they changed.
//!
//! With a remote cache, a stage found there is served by its manifest;
//! its bytes are downloaded only when they are wanted (the stage is a
//! target; every stage is when none is named), all together once the rest
//! of the run has settled, or when a stage that executes reads them.
//! Otherwise only its manifest is read, and nothing of it is installed
//! locally, so the local cache never holds a manifest whose objects are
//! absent (`status` says "on remote", and `cairn pull` brings the bytes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use serde::Serialize;

use crate::cache::manifest::ManifestOf;
use crate::cache::{output_hashes, Cache, CacheError, Manifest, OutputRecord, StageRef};
use crate::digest::{ArtifactHash, StageKey};
use crate::env::Environment;
use crate::exec::{execute, ExecRequest, Executed};
use crate::key::{DirtyReason, KeyInputs};
use crate::kind::{Reporter, StageFailure};
use crate::plan::{InputProblem, Resolver};
use crate::spec::{Pipeline, Stage};

mod frontier;
mod remote;
use frontier::Frontier;
pub use remote::transfer_progress;
use remote::{Ask, Pusher};

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stages to bring up to date (with their ancestors); empty means all.
    pub targets: Vec<String>,
    /// Stages to run even if cached.
    pub force: Vec<String>,
    pub dry_run: bool,
    pub jobs: usize,
    /// The shared remote cache, asked before executing a stage that misses
    /// locally (see [`crate::remote`]).
    pub remote: Option<std::sync::Arc<crate::remote::Remote>>,
    /// Push each stage to the remote as it finishes (and hits it lacks).
    pub push: bool,
    /// A remote that cannot be used stops the run instead of being skipped.
    pub remote_required: bool,
}

/// What happened to one stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    Cached,
    /// Served from the remote cache (downloaded and verified).
    Pulled,
    Ran,
    /// `--dry-run`: it would run.
    WouldRun,
    Failed { error: String },
    /// Not attempted because an upstream stage failed.
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
    /// Whether the run changed nothing: every stage was a cache hit.
    pub fn all_cached(&self) -> bool {
        self.stages.iter().all(|s| s.outcome == Outcome::Cached)
    }
}

/// Receives what the runner does, for display.
pub trait Observer: Reporter {
    fn started(&self, stage: &str, reasons: &[DirtyReason]);
    fn finished(&self, report: &StageReport);
    fn warn(&self, message: &str);
    /// A transfer reported under `stage` after the stage finished (a push
    /// in the background, or its bytes downloaded at the end of the run)
    /// is over.
    fn transfer_done(&self, _stage: &str) {}
}

/// Errors that stop a run as a whole (stage failures are in the report).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("stage `{stage}`: {source}")]
    External { stage: String, source: crate::external::ExternalError },
    /// Input files that no run can fetch, found before anything ran.
    #[error("{}", unobtainable_list(.0))]
    Unobtainable(Vec<(String, crate::external::ExternalError)>),
    #[error("no stage named `{0}`")]
    UnknownStage(String),
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    /// The run's executors cannot be set up as the spec asks.
    #[error("{0}")]
    Executors(String),
}

fn unobtainable_list(missing: &[(String, crate::external::ExternalError)]) -> String {
    let each = missing.iter().map(|(stage, e)| format!("stage `{stage}`: {e}")).collect::<Vec<_>>().join("\n");
    match missing.len() {
        1 => each,
        n => format!("{n} input files do not exist, so nothing ran:\n{each}"),
    }
}

enum State {
    Pending,
    /// Stale, waiting for a job slot; its key is in [`Scheduler::queued`].
    Queued,
    Running,
    /// Its outputs' hashes are in [`Scheduler::hashes`].
    Done,
    /// `--dry-run`: it would run, so its outputs are not known.
    WouldRun,
    Failed,
    Blocked,
}

impl State {
    /// Whether the stage's users can be looked at.
    fn settled(&self) -> bool {
        matches!(self, State::Done | State::WouldRun | State::Failed | State::Blocked)
    }
}

/// A stage ready to execute.
struct Ready {
    i: usize,
    key_inputs: KeyInputs,
    inputs: BTreeMap<String, Vec<PathBuf>>,
}

/// A stale stage waiting for a job slot.
struct Queued {
    key_inputs: KeyInputs,
    reasons: Vec<DirtyReason>,
}

/// What starting a queued stage led to.
enum Launch {
    /// It must execute now.
    Execute(Ready),
    /// It was served, failed, or sent its producer back to pending instead.
    Settled,
}

struct Scheduler<'a> {
    pipeline: &'a Pipeline,
    cache: &'a Cache,
    opts: &'a RunOptions,
    observer: &'a dyn Observer,
    cancel: &'a AtomicBool,
    resolver: &'a Resolver<'a>,
    selected: BTreeSet<usize>,
    frontier: Frontier,
    /// Stale stages waiting for a job slot, the lowest index first.
    queued: BTreeMap<usize, Queued>,
    forced: BTreeSet<usize>,
    /// Stages re-run because an output of theirs was found damaged.
    damaged: BTreeMap<usize, String>,
    /// Stages whose outputs were asked for (the targets; all when none
    /// are named): a remote hit's bytes are downloaded by the end of the run.
    wanted: BTreeSet<usize>,
    /// Stages served from the remote without their bytes yet (their
    /// manifest is known, not installed): downloaded when a stage that
    /// must execute reads them, or at the end when they are wanted.
    lazy: BTreeMap<usize, Manifest>,
    /// Stages whose remote bytes could not be had: computed here.
    unfetched: BTreeSet<usize>,
    /// The keys whose entries this run brought from the remote: a stage
    /// served from one locally (sent back after an upstream's bytes could
    /// not be had, and found the same) is still reported as pulled.
    pulled: BTreeSet<StageKey>,
    states: Vec<State>,
    reports: BTreeMap<usize, StageReport>,
    /// The output hashes of each done stage, by stage and output name.
    hashes: BTreeMap<String, BTreeMap<String, ArtifactHash>>,
    key_inputs: BTreeMap<usize, KeyInputs>,
    /// The key each stage last ran or hit with, as the cache's refs held
    /// them when the run started.
    ref_keys: BTreeMap<String, StageKey>,
    /// The refs this run changed, with their key inputs; a stage whose
    /// ref keeps its key is not held here (its key inputs are dropped once
    /// its key is known, which at 10,000 stages is 19 MB fewer).
    refs: BTreeMap<String, StageRef>,
    running: usize,
    /// With `--push`, while the run goes on: pushes each stage that ran,
    /// and each hit, in the background.
    pusher: Option<Pusher>,
}

type Finished = (usize, Result<Executed, StageFailure>);

pub fn run(
    pipeline: &Pipeline,
    cache: &Cache,
    env: &Environment,
    opts: &RunOptions,
    observer: &dyn Observer,
    cancel: &AtomicBool,
) -> Result<RunReport, RunError> {
    let started_at = crate::timestamp::now();
    let warn = |m: String| observer.warn(&m);
    let mut resolver = Resolver::new(pipeline, cache, env, &warn);
    resolver.repair = !opts.dry_run;
    let mut s = Scheduler::new(pipeline, cache, opts, observer, cancel, &resolver)?;
    if !opts.dry_run {
        let missing = resolver.unobtainable_inputs(&s.selected);
        if !missing.is_empty() {
            return Err(RunError::Unobtainable(missing));
        }
    }
    let seed = pipeline.seed;
    let jobs = opts.jobs.max(1);
    // Stages on a non-local executor are submitted as jobs (see crate::executor).
    let dispatch = crate::executor::Dispatch::new(pipeline, &run_id(&started_at), opts.remote.as_ref(), cache).map_err(RunError::Executors)?;
    let push = opts.remote.as_deref().filter(|_| opts.push);
    std::thread::scope(|scope| -> Result<(), RunError> {
        let (tx, rx) = mpsc::channel::<Finished>();
        s.pusher = push.map(|remote| Pusher::start(scope, remote, cache, observer));
        let mut drive = || -> Result<(), RunError> {
            loop {
                let mut progressed = s.examine_all()?;
                while s.running < jobs && !cancel.load(Ordering::Relaxed) {
                    let Some(launch) = s.launch_next()? else { break };
                    let Launch::Execute(ready) = launch else {
                        progressed = true;
                        continue;
                    };
                    s.running += 1;
                    let (resolver, tx) = (&resolver, tx.clone());
                    let env = env.for_executor(pipeline.executor_of(&pipeline.stages[ready.i].name));
                    let (stage, ctx) = (dispatch.stage(&pipeline.stages[ready.i]), (cache, env, observer, cancel, seed));
                    scope.spawn(move || {
                        let i = ready.i;
                        let _ = tx.send((i, execute_ready(&stage, ready, resolver, ctx)));
                    });
                }
                if progressed {
                    continue;
                }
                if s.running == 0 {
                    if s.fetch_wanted()? {
                        continue;
                    }
                    return Ok(());
                }
                let (i, res) = rx.recv().expect("a stage thread is running");
                s.running -= 1;
                s.finish(i, res);
            }
        };
        let driven = drive();
        // Closes the push queue: the pusher finishes what is queued, and
        // the scope waits for it.
        s.pusher = None;
        driven
    })?;
    dispatch.cancelled_messages().iter().for_each(|m| observer.warn(m));
    s.save_refs()?;
    cache.stat().save();
    Ok(s.into_report(started_at))
}

/// What an executing stage needs from the run.
type ExecCtx<'a> = (&'a Cache, &'a Environment, &'a dyn Observer, &'a AtomicBool, u64);

/// Runs one stage on its own thread, inside a span naming it, with its
/// inputs re-checked after it finished and before anything is stored.
fn execute_ready(stage: &Stage, ready: Ready, resolver: &Resolver<'_>, ctx: ExecCtx<'_>) -> Result<Executed, StageFailure> {
    let (cache, env, observer, cancel, seed) = ctx;
    let key = ready.key_inputs.key();
    let span = tracing::info_span!("stage", stage = %stage.name, kind = stage.kind.name(), key = %key.short());
    let _entered = span.enter();
    let check = || match resolver.check_inputs(ready.i, &ready.key_inputs) {
        Ok(None) => Ok(()),
        Ok(Some(problem)) => Err(StageFailure::new(format!("{problem}; nothing from this run was cached, run again"))),
        Err(e) => Err(StageFailure::new(e.to_string())),
    };
    let req = ExecRequest {
        stage,
        key_inputs: &ready.key_inputs,
        inputs: ready.inputs,
        seed,
        project_dir: &resolver.pipeline.root,
        env,
        reporter: observer,
        cancel,
        store: true,
        check_inputs: &check,
    };
    let res = execute(cache, req);
    match &res {
        Ok(done) => tracing::info!(secs = done.duration_s, "stage finished"),
        Err(f) => tracing::info!(error = %f.message, "stage did not finish"),
    }
    res
}

impl<'a> Scheduler<'a> {
    fn new(
        pipeline: &'a Pipeline,
        cache: &'a Cache,
        opts: &'a RunOptions,
        observer: &'a dyn Observer,
        cancel: &'a AtomicBool,
        resolver: &'a Resolver<'a>,
    ) -> Result<Self, RunError> {
        let index = |name: &String| pipeline.index_of(name).ok_or_else(|| RunError::UnknownStage(name.clone()));
        let targets = opts.targets.iter().map(index).collect::<Result<Vec<_>, _>>()?;
        let forced = opts.force.iter().map(index).collect::<Result<BTreeSet<_>, _>>()?;
        let n = pipeline.stages.len();
        let selected: BTreeSet<usize> = if targets.is_empty() { (0..n).collect() } else { pipeline.graph.ancestors_of(&targets) };
        let wanted = if targets.is_empty() { selected.clone() } else { targets.iter().copied().collect() };
        Ok(Self {
            pipeline,
            cache,
            opts,
            observer,
            cancel,
            resolver,
            frontier: Frontier::new(&pipeline.graph, &selected),
            selected,
            queued: BTreeMap::new(),
            forced,
            damaged: BTreeMap::new(),
            wanted,
            lazy: BTreeMap::new(),
            unfetched: BTreeSet::new(),
            pulled: BTreeSet::new(),
            states: (0..n).map(|_| State::Pending).collect(),
            reports: BTreeMap::new(),
            hashes: BTreeMap::new(),
            key_inputs: BTreeMap::new(),
            ref_keys: cache.stage_ref_keys(&resolver.project),
            refs: BTreeMap::new(),
            running: 0,
            pusher: None,
        })
    }

    /// Settles a report for stage `i` and tells the observer.
    fn settle(&mut self, i: usize, state: State, r: StageReport) {
        self.observer.finished(&r);
        self.reports.insert(i, r);
        self.set_state(i, state);
    }

    /// Every change to a settled state goes here (pending, queued and
    /// running are set directly), so the frontier hears of each stage that
    /// settles.
    fn set_state(&mut self, i: usize, state: State) {
        let settles = state.settled();
        self.states[i] = state;
        if settles {
            self.frontier.settled(i);
        }
    }

    /// Examines every examinable stage, then asks the remote at once about
    /// those that missed locally. Whether any was examined.
    fn examine_all(&mut self) -> Result<bool, RunError> {
        let mut asks = Vec::new();
        let mut progressed = false;
        while let Some(i) = self.frontier.pop() {
            asks.extend(self.examine(i)?);
            progressed = true;
        }
        if !asks.is_empty() {
            self.ask_remote(asks)?;
        }
        Ok(progressed)
    }

    /// Looks at pending stage `i`, whose dependencies have settled: skips,
    /// serves, or queues it to execute. `Some`: it missed locally, and the
    /// remote is to be asked.
    fn examine(&mut self, i: usize) -> Result<Option<Ask>, RunError> {
        let pipeline = self.pipeline;
        let stage = &pipeline.stages[i];
        let deps = &pipeline.graph.deps[i];
        if let Some(&d) = deps.iter().find(|&&d| matches!(self.states[d], State::Failed | State::Blocked)) {
            let because = format!("upstream stage `{}` did not finish", self.pipeline.stages[d].name);
            self.settle(i, State::Blocked, report(stage, Outcome::Skipped { because }, None, vec![]));
            return Ok(None);
        }
        if let Some(&d) = deps.iter().find(|&&d| matches!(self.states[d], State::WouldRun)) {
            let reasons = vec![DirtyReason::UpstreamStale { stage: self.pipeline.stages[d].name.clone() }];
            self.settle(i, State::WouldRun, report(stage, Outcome::WouldRun, None, reasons));
            return Ok(None);
        }
        if self.cancel.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let ki = match self.resolver.key_inputs(stage, &self.hashes, !self.opts.dry_run) {
            Ok(ki) => ki.expect("all upstream stages are done"),
            Err(source) if self.opts.dry_run => {
                self.settle(i, State::Blocked, report(stage, Outcome::Failed { error: source.to_string() }, None, vec![]));
                return Ok(None);
            }
            Err(source) => return Err(RunError::External { stage: stage.name.clone(), source }),
        };
        let hit = if self.forced.contains(&i) { None } else { self.resolver.lookup(stage, &ki.key())? };
        if let Some(m) = hit {
            self.serve_hit(i, ki, m, Outcome::Cached);
            return Ok(None);
        }
        if self.may_pull(i) {
            return Ok(Some(Ask { i, key_inputs: ki }));
        }
        self.stale(i, ki);
        Ok(None)
    }

    /// Stage `i` must execute: it is queued for a job slot (or, in a dry
    /// run, would run).
    fn stale(&mut self, i: usize, ki: KeyInputs) {
        let reasons = self.reasons(i, &ki);
        if self.opts.dry_run {
            let key = ki.key();
            self.settle(i, State::WouldRun, report(&self.pipeline.stages[i], Outcome::WouldRun, Some(key), reasons));
        } else {
            self.states[i] = State::Queued;
            self.queued.insert(i, Queued { key_inputs: ki, reasons });
        }
    }

    /// Starts the first queued stage, or serves it if a stage with the same
    /// key finished while it waited. `None`: none is queued.
    fn launch_next(&mut self) -> Result<Option<Launch>, RunError> {
        let Some((i, q)) = self.queued.pop_first() else { return Ok(None) };
        self.states[i] = State::Pending;
        let stage = &self.pipeline.stages[i];
        let hit = if self.forced.contains(&i) { None } else { self.resolver.lookup(stage, &q.key_inputs.key())? };
        if let Some(m) = hit {
            self.serve_hit(i, q.key_inputs, m, Outcome::Cached);
            return Ok(Some(Launch::Settled));
        }
        self.ready(i, q.key_inputs, q.reasons).map(Some)
    }

    fn serve_hit<K>(&mut self, i: usize, ki: KeyInputs, m: ManifestOf<K>, outcome: Outcome) {
        let pipeline = self.pipeline;
        let stage = &pipeline.stages[i];
        tracing::debug!(stage = %stage.name, key = %m.key.short(), "cache hit");
        let outcome = if self.pulled.contains(&m.key) { Outcome::Pulled } else { outcome };
        if let (Outcome::Cached, Some(pusher)) = (&outcome, &self.pusher) {
            pusher.push(m.key, &stage.name);
        }
        self.hashes.insert(stage.name.clone(), output_hashes(&m.outputs));
        let mut r = report(stage, outcome, Some(m.key), vec![]);
        r.outputs = m.outputs;
        r.metrics = m.metrics;
        r.duration_s = m.duration_s;
        self.remember(i, m.key, ki);
        self.settle(i, State::Done, r);
    }

    fn reasons(&self, i: usize, ki: &KeyInputs) -> Vec<DirtyReason> {
        if let Some(output) = self.damaged.get(&i) {
            vec![DirtyReason::OutputDamaged { output: output.clone() }]
        } else if self.forced.contains(&i) {
            vec![DirtyReason::Forced]
        } else {
            self.resolver.reasons(&self.pipeline.stages[i].name, Some(ki), None)
        }
    }

    /// Checks the stage's inputs one last time and hands it out to run.
    /// A damaged input object sends its producer back to pending instead.
    fn ready(&mut self, i: usize, ki: KeyInputs, reasons: Vec<DirtyReason>) -> Result<Launch, RunError> {
        let pipeline = self.pipeline;
        let stage = &pipeline.stages[i];
        let served: Vec<usize> = pipeline.graph.deps[i].iter().filter(|d| self.lazy.contains_key(d)).copied().collect();
        if !self.fetch_served(served)? {
            return Ok(Launch::Settled);
        }
        match self.resolver.check_inputs(i, &ki)? {
            None => {}
            Some(InputProblem::Damaged { producer: Some((up, output)), .. }) => {
                let p = self.pipeline.index_of(&up).expect("references are checked");
                self.observer.warn(&format!("output `{up}.{output}` in the cache is damaged; re-running `{up}`"));
                self.reset_from(p);
                self.damaged.insert(p, output);
                return Ok(Launch::Settled);
            }
            Some(problem) => {
                let error = format!("{problem}; run again");
                self.settle(i, State::Failed, report(stage, Outcome::Failed { error }, Some(ki.key()), reasons));
                return Ok(Launch::Settled);
            }
        }
        let hashes = &self.hashes;
        let inputs = self.resolver.input_paths(i, |up, output| hashes[up][output])?;
        self.observer.started(&stage.name, &reasons);
        self.reports.insert(i, report(stage, Outcome::Ran, Some(ki.key()), reasons));
        self.key_inputs.insert(i, ki.clone());
        self.states[i] = State::Running;
        Ok(Launch::Execute(Ready { i, key_inputs: ki, inputs }))
    }

    /// Records what an executed stage produced, or why it did not.
    fn finish(&mut self, i: usize, res: Result<Executed, StageFailure>) {
        let stage = &self.pipeline.stages[i];
        let r = self.reports.get_mut(&i).expect("running stages have a report");
        match res {
            Ok(done) => {
                self.hashes.insert(stage.name.clone(), output_hashes(&done.outputs));
                r.outputs = done.outputs;
                r.metrics = done.metrics;
                r.duration_s = done.duration_s;
                let key = r.key.expect("ran stages have a key");
                if let Some(pusher) = &self.pusher {
                    pusher.push(key, &stage.name);
                }
                self.observer.finished(r);
                let ki = self.key_inputs.remove(&i).expect("running stages have key inputs");
                self.remember(i, key, ki);
                self.set_state(i, State::Done);
            }
            Err(f) => {
                r.outcome = if f.interrupted { Outcome::Interrupted } else { Outcome::Failed { error: f.message } };
                self.observer.finished(r);
                self.set_state(i, State::Failed);
            }
        }
    }

    /// Puts `producer` and its selected descendants that were served or
    /// queued back to pending.
    fn reset_from(&mut self, producer: usize) {
        let mut stack = vec![producer];
        while let Some(p) = stack.pop() {
            self.states[p] = State::Pending;
            self.queued.remove(&p);
            self.lazy.remove(&p);
            self.hashes.remove(&self.pipeline.stages[p].name);
            self.reports.remove(&p);
            stack.extend(self.frontier.users(p).iter().filter(|&&j| matches!(self.states[j], State::Done | State::Queued)));
        }
        let states = &self.states;
        self.frontier.recount(&self.pipeline.graph, &self.selected, |d| states[d].settled(), |i| matches!(states[i], State::Pending));
    }

    /// Records that stage `i` is done with `key`, keeping its key inputs
    /// only when its ref changes.
    fn remember(&mut self, i: usize, key: StageKey, key_inputs: KeyInputs) {
        let pipeline = self.pipeline;
        let name = &pipeline.stages[i].name;
        if self.ref_keys.get(name) == Some(&key) {
            self.refs.remove(name);
        } else {
            self.refs.insert(name.clone(), StageRef { key, key_inputs });
        }
    }

    /// Writes the refs of this run's stages, once, if any changed.
    fn save_refs(&self) -> Result<(), CacheError> {
        if self.opts.dry_run || self.refs.is_empty() {
            return Ok(());
        }
        let mut all = self.resolver.refs().clone();
        all.extend(self.refs.clone());
        self.cache.write_stage_refs(&self.resolver.project, &all)
    }

    fn into_report(mut self, started_at: String) -> RunReport {
        let interrupted = self.cancel.load(Ordering::Relaxed);
        let mut stages = Vec::new();
        for (i, stage) in self.pipeline.stages.iter().enumerate() {
            if let Some(r) = self.reports.remove(&i) {
                stages.push(r);
            } else if self.selected.contains(&i) && interrupted {
                stages.push(report(stage, Outcome::Skipped { because: "interrupted".into() }, None, vec![]));
            }
        }
        RunReport {
            run_id: run_id(&started_at),
            started_at,
            finished_at: crate::timestamp::now(),
            profile: self.pipeline.profile.as_ref().map(|p| p.0.clone()),
            stages,
            interrupted,
        }
    }
}

/// The id of the run that started at `started_at` (RFC 3339), in this
/// process: the start to the millisecond, so that ids sort as runs started
/// (`diff`'s last two, `gc`'s newest runs), then the process id, so that
/// runs started together differ. `gc` reads the first 15 characters as the
/// start to the second.
fn run_id(started_at: &str) -> String {
    let second = crate::timestamp::compact_second(started_at);
    let fraction = started_at.split_once('.').map_or("", |(_, f)| f);
    let millis: String = fraction.chars().take_while(char::is_ascii_digit).chain(std::iter::repeat('0')).take(3).collect();
    format!("{second}.{millis}-{:04x}", std::process::id() & 0xffff)
}


fn report(stage: &Stage, outcome: Outcome, key: Option<StageKey>, reasons: Vec<DirtyReason>) -> StageReport {
    StageReport {
        stage: stage.name.clone(),
        kind: stage.kind.name().to_string(),
        outcome,
        key,
        reasons,
        duration_s: 0.0,
        outputs: BTreeMap::new(),
        metrics: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::run_id;

    #[test]
    fn run_ids_sort_as_runs_started_within_a_second() {
        let pid = format!("-{:04x}", std::process::id() & 0xffff);
        assert_eq!(run_id("2026-12-07T12:45:31.048123456Z"), format!("20261207T124531.048{pid}"));
        assert_eq!(run_id("2026-12-07T12:45:31.5Z"), format!("20261207T124531.500{pid}"));
        assert_eq!(run_id("2026-12-07T12:45:31Z"), format!("20261207T124531.000{pid}"));
        let ids = ["2026-12-07T12:45:31Z", "2026-12-07T12:45:31.009Z", "2026-12-07T12:45:31.1Z", "2026-12-07T12:45:32.001Z"].map(run_id);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
}
