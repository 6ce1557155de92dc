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
//! [`Dispatch::new`], not a rewrite. This step uses the shared-filesystem
//! mode: the cache directory is visible on the compute node (a single-node
//! cluster, an NFS mount).

pub mod job;
pub mod local;
pub mod queue;
pub mod slurm;
pub mod submitted;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::env::RemoteProbe;
use crate::spec::executors::ExecutorSpec;
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
/// the facts of the node that will run it.
pub fn node_probes(pipeline: &Pipeline) -> BTreeMap<String, RemoteProbe> {
    let used: std::collections::BTreeSet<&String> = pipeline.stage_executors.values().collect();
    let mut out = BTreeMap::new();
    for (name, spec) in pipeline.executors.iter().filter(|(n, _)| used.contains(n)) {
        let ExecutorSpec::Slurm(shape) = spec else { continue };
        let slurm = Arc::new(slurm::Slurm::new(shape.clone()));
        let run = Arc::new(move |worker: &std::path::Path, out: &std::path::Path| slurm.probe(worker, out));
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
    pub fn new(pipeline: &Pipeline, run_id: &str) -> Self {
        let cancelled = Arc::new(Mutex::new(Vec::new()));
        let backends = pipeline
            .executors
            .iter()
            .filter_map(|(name, spec)| {
                let exec: Arc<dyn Executor> = match spec {
                    ExecutorSpec::Local => return None,
                    ExecutorSpec::Slurm(shape) => Arc::new(slurm::Slurm::new(shape.clone())),
                };
                Some((name.clone(), Arc::new(submitted::Backend::new(exec, cancelled.clone()))))
            })
            .collect();
        Self { backends, by_stage: pipeline.stage_executors.clone(), run_id: run_id.to_string(), cancelled }
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
