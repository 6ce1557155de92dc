//! Executors: where a stage that must execute runs. The engine stays the
//! scheduler of the DAG (`crate::runner`); an executor only runs one
//! prepared stage somewhere else and says when it ended, like Snakemake's
//! executor plugins or Bazel's remote execution.
//!
//! A stage on the default `local` executor runs in this process, as it
//! always did ([`local`]). A stage on another executor is written out as a
//! job directory ([`job`]: inputs named by content hash and path, outputs
//! to write, a result record to fill), submitted through the [`Executor`]
//! trait, waited for by a [`queue::Queue`] that asks the scheduler about
//! all of the run's jobs in one call per interval, and accepted only once
//! its result record checks out against the bytes it left ([`submitted`]).
//! Its outputs then go into the cache exactly as a local stage's do.
//!
//! One scheduler is one file implementing [`Executor`] (today [`slurm`]);
//! a Kubernetes or Ray executor is a new file beside it (submit = create a
//! Job / a task, poll = one list call, cancel = delete) plus one arm in
//! [`Dispatch::new`], not a rewrite. An executor's `data` says how a job's
//! bytes reach its node: through the cache directory on a filesystem the
//! nodes share ([`job`]), or, with nothing shared but the remote cache,
//! through the remote ([`remote_submit`] and [`remote_log`] on this side;
//! [`remote_job`], [`node_dir`], [`node_log`] and [`node_checkpoints`] on
//! the node).

pub mod job;
pub mod local;
pub mod node_checkpoints;
pub mod node_dir;
pub mod node_log;
pub mod queue;
pub mod remote_job;
pub mod remote_log;
pub mod remote_submit;
pub mod slurm;
pub mod submitted;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::cache::Cache;
use crate::env::RemoteProbe;
use crate::remote::{Remote, RemoteConfig};
use crate::spec::executors::{DataPlane, ExecutorSpec};
use crate::spec::{Pipeline, Stage};

/// A scheduler's id for a submitted job (Slurm's job id).
pub type JobId = String;

/// Where a job stands, as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    /// Ended normally; its result record says how the stage went.
    Completed,
    /// Ended otherwise; `state` is the scheduler's word (FAILED, CANCELLED,
    /// TIMEOUT, OUT_OF_MEMORY, ...).
    Ended { state: String },
    /// The scheduler no longer knows the job (purged from its memory).
    Gone,
}

impl JobState {
    pub fn is_final(&self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// A job ready to submit: its directory and the command it runs there.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Shown in the scheduler's queue (`cairn-<run>-<stage>`).
    pub name: String,
    pub dir: PathBuf,
    /// Where the job's stdout and stderr go.
    pub log: PathBuf,
    pub argv: Vec<String>,
    /// Variables the job must see, on top of the submitter's environment.
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("`{program}` could not be started: {source}\n  help: install the scheduler's client tools on this machine (for Slurm: `slurm-client`), or use a local executor")]
    Spawn { program: String, source: std::io::Error },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command { command: String, status: String, stderr: String, transient: bool },
    #[error("`{command}` printed {output:?}, not what was expected")]
    Output { command: String, output: String },
}

impl ExecutorError {
    /// Whether trying again later may succeed (a controller that is busy
    /// or restarting), as opposed to a refusal (a bad partition).
    pub fn is_transient(&self) -> bool {
        matches!(self, ExecutorError::Command { transient: true, .. })
    }
}

/// One scheduler. See the module docs.
pub trait Executor: Send + Sync {
    /// The scheduler's name, for messages ("Slurm").
    fn label(&self) -> &str;
    fn submit(&self, job: &Prepared) -> Result<JobId, ExecutorError>;
    /// The states of all `jobs` in one call; a job missing from the answer
    /// is [`JobState::Gone`].
    fn poll(&self, jobs: &[JobId]) -> Result<BTreeMap<JobId, JobState>, ExecutorError>;
    fn cancel(&self, jobs: &[JobId]) -> Result<(), ExecutorError>;
}

/// For each scheduler executor a stage of `pipeline` uses, how to probe
/// its nodes (see `crate::env`): the key of a stage that runs there holds
/// the facts of the node that will run it. A probe of an executor with
/// `data = "remote"` answers through `remote` (the run's remote cache);
/// what the nodes are does not depend on it, so neither does the id its
/// answer is cached under.
pub fn node_probes(pipeline: &Pipeline, remote: Option<&RemoteConfig>) -> BTreeMap<String, RemoteProbe> {
    let used: std::collections::BTreeSet<&String> = pipeline.stage_executors.values().collect();
    let mut out = BTreeMap::new();
    for (name, spec) in pipeline.executors.iter().filter(|(n, _)| used.contains(n)) {
        let ExecutorSpec::Slurm { shape, data } = spec else { continue };
        let slurm = Arc::new(slurm::Slurm::new(shape.clone()));
        let run: crate::env::ProbeRun = match (data, remote) {
            (DataPlane::Remote, Some(cfg)) => {
                let cfg = cfg.clone();
                Arc::new(move |worker: &std::path::Path, _: &std::path::Path| remote_submit::probe(&slurm, &cfg, worker))
            }
            _ => Arc::new(move |worker: &std::path::Path, out: &std::path::Path| slurm.probe(worker, out)),
        };
        out.insert(name.clone(), RemoteProbe { label: format!("executor `{name}` (Slurm)"), config: format!("slurm {shape:?}"), run });
    }
    out
}

/// The executors of one run: which stage goes where, and what was
/// cancelled on an interrupt (to say so).
pub struct Dispatch {
    backends: BTreeMap<String, Arc<submitted::Backend>>,
    by_stage: BTreeMap<String, String>,
    run_id: String,
    cancelled: Arc<Mutex<Vec<(String, JobId)>>>,
}

impl Dispatch {
    /// The run's executors; `remote` is the run's remote cache, which an
    /// executor with `data = "remote"` needs when a stage of the run uses it.
    pub fn new(pipeline: &Pipeline, run_id: &str, remote: Option<&Arc<Remote>>, cache: &Cache) -> Result<Self, String> {
        let cancelled = Arc::new(Mutex::new(Vec::new()));
        let used: std::collections::BTreeSet<&String> = pipeline.stage_executors.values().collect();
        let mut backends = BTreeMap::new();
        for (name, spec) in &pipeline.executors {
            let ExecutorSpec::Slurm { shape, data } = spec else { continue };
            let data = match (data, remote) {
                (DataPlane::Shared, _) => None,
                (DataPlane::Remote, Some(remote)) => Some(remote_submit::RemoteData { remote: remote.clone(), stat: cache.stat_handle() }),
                (DataPlane::Remote, None) if used.contains(name) => return Err(format!(
                    "executor `{name}` moves its jobs' data through the remote cache (`executors.{name}.data = \"remote\"`), but this run has no remote cache\n  help: set `url` in a `[remote]` table of pipeline.toml, or pass --remote s3://bucket/prefix (or CAIRN_REMOTE); not --remote none"
                )),
                (DataPlane::Remote, None) => None,
            };
            let exec: Arc<dyn Executor> = Arc::new(slurm::Slurm::new(shape.clone()));
            backends.insert(name.clone(), Arc::new(submitted::Backend::new(exec, cancelled.clone(), data)));
        }
        Ok(Self { backends, by_stage: pipeline.stage_executors.clone(), run_id: run_id.to_string(), cancelled })
    }

    /// The stage as it must run: unchanged for a local stage, else with
    /// its kind wrapped so that running it submits a job. The key is
    /// computed before and is not touched.
    pub fn stage<'s>(&self, stage: &'s Stage) -> Cow<'s, Stage> {
        let Some(backend) = self.by_stage.get(&stage.name).and_then(|e| self.backends.get(e)) else {
            return Cow::Borrowed(stage);
        };
        let mut s = stage.clone();
        s.kind = Arc::new(submitted::Submitted::new(stage.kind.clone(), stage.checked.env, backend.clone(), &self.run_id));
        Cow::Owned(s)
    }

    /// One line per scheduler whose jobs an interrupt cancelled.
    pub fn cancelled_messages(&self) -> Vec<String> {
        let cancelled = self.cancelled.lock().unwrap_or_else(|e| e.into_inner());
        let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (label, id) in cancelled.iter() {
            by.entry(label).or_default().push(id);
        }
        by.into_iter().map(|(label, ids)| format!("cancelled {} submitted {label} job(s): {}", ids.len(), ids.join(", "))).collect()
    }
}
