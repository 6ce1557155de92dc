//! The job directory: what a submitted stage is told (`job.json`) and what
//! it answers (`result.json`), and the node side that reads the one and
//! writes the other (`cairn exec-job <dir>`).
//!
//! Inputs are named by content hash next to their path: the job re-hashes
//! each before running and refuses bytes that are not the ones keyed
//! (a shared filesystem that served stale data). The result record lists
//! every output with its hash; the engine trusts it only after re-hashing
//! the files itself (`super::submitted`). The record is written to a
//! temporary name and renamed, so a job killed mid-write leaves none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cache::statcache::StatCache;
use crate::digest::ArtifactHash;
use crate::env::Environment;
use crate::kind::{EnvNeeds, Progress, Reporter, StageCtx, StageFailure};
use crate::kinds::Registry;

pub const JOB_FILE: &str = "job.json";
pub const RESULT_FILE: &str = "result.json";
pub const LOG_FILE: &str = "job.log";

/// An input as the job sees it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobInput {
    pub path: PathBuf,
    pub hash: ArtifactHash,
}

/// What a job is asked to do (`job.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobSpec {
    pub stage: String,
    pub kind: String,
    pub params: Value,
    pub inputs: BTreeMap<String, Vec<JobInput>>,
    /// Output name → the path to write it to.
    pub outputs: BTreeMap<String, PathBuf>,
    /// The stage's private working directory.
    pub scratch: PathBuf,
    /// The pipeline file's directory on the submitting machine (empty:
    /// not shared with the node, or an older job file).
    #[serde(default)]
    pub project_dir: PathBuf,
    pub seed: u64,
    /// The cache directory, for the worker's probe answers.
    pub cache_dir: Option<PathBuf>,
    /// The environment entries of the stage's key, as the engine's machine
    /// gave them, and which facts they cover: the node must have the same.
    pub keyed_env: BTreeMap<String, String>,
    pub needs_torch: bool,
    pub needs_threads: bool,
    /// The stage key's checkpoint directory in the shared cache, where a
    /// resumable kind checkpoints, so a requeued job or a later run's job
    /// resumes where the last one stopped (absent: `verify`, or older job
    /// files).
    #[serde(default)]
    pub checkpoint_dir: Option<PathBuf>,
}

/// An output as the job hashed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobOutput {
    pub hash: ArtifactHash,
    /// Its size in bytes (what a job of the remote data plane uploaded).
    #[serde(default)]
    pub size: u64,
}

/// The content hash of a file or a directory (its Merkle hash), read in
/// full: no stat cache, whose answers are another machine's.
pub fn content_hash(path: &Path) -> Result<ArtifactHash, StageFailure> {
    let fresh = StatCache::load(Path::new("/nonexistent/cairn-no-stat-cache"));
    fresh.hash(path).map_err(|e| StageFailure::new(e.to_string()))
}

/// What a job answers (`result.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResultRecord {
    /// `None`: the stage succeeded; else why it failed.
    pub error: Option<String>,
    pub outputs: BTreeMap<String, JobOutput>,
    pub metrics: BTreeMap<String, f64>,
    /// The job process's peak resident memory (MiB).
    pub peak_rss_mb: f64,
    pub host: String,
    pub duration_s: f64,
    /// The node refused the job: its facts are not those the stage was
    /// keyed with (the engine then drops its cached probe of the nodes).
    #[serde(default)]
    pub env_refused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot read or write job file {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("job file {} is not valid: {source}\n  help: cairn and the job must come from the same checkout", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
}

/// Writes `value` as JSON to `dir/name`, atomically.
pub fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<(), JobError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |source| JobError::Io { path: path.clone(), source };
    let bytes = serde_json::to_vec_pretty(value).expect("job files serialise");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, JobError> {
    let bytes = std::fs::read(path).map_err(|source| JobError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_slice(&bytes).map_err(|source| JobError::Parse { path: path.to_path_buf(), source })
}

/// Prints what the stage reports into the job's log.
struct LogReporter;

impl Reporter for LogReporter {
    fn progress(&self, stage: &str, progress: &Progress) {
        if !progress.transient {
            println!("[{stage}] {}", progress.message);
        }
    }
    fn log(&self, stage: &str, line: &str) {
        println!("[{stage}] {line}");
    }
}

/// The node side: runs the job in `dir` and writes its result record.
/// Returns whether the stage succeeded (the process's exit status).
pub fn run_job(dir: &Path, registry: &Registry) -> Result<bool, JobError> {
    let spec: JobSpec = read_json(&dir.join(JOB_FILE))?;
    let mut env = Environment::detect(false).with_worker_kinds(registry.worker_kinds().clone());
    if let Some(dir) = &spec.cache_dir {
        env = env.with_probe_cache(dir);
    }
    let record = execute(&spec, registry, &env, &mut || Ok(()));
    write_json(dir, RESULT_FILE, &record)?;
    Ok(record.error.is_none())
}

/// Runs `spec` on this node and says how it went: the node's facts are
/// checked first, then `fetch` brings the inputs (nothing to do where the
/// filesystem is shared), then the stage runs and its outputs are hashed.
pub(super) fn execute(spec: &JobSpec, registry: &Registry, env: &Environment, fetch: &mut dyn FnMut() -> Result<(), StageFailure>) -> ResultRecord {
    let t0 = std::time::Instant::now();
    // scancel and a time limit send SIGTERM first: stop the stage cleanly.
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, cancel.clone());
    }
    let mut record = ResultRecord {
        error: None,
        outputs: BTreeMap::new(),
        metrics: BTreeMap::new(),
        peak_rss_mb: 0.0,
        host: crate::env::hostname(),
        duration_s: 0.0,
        env_refused: false,
    };
    let ran = match check_env(spec, env) {
        Err(refused) => {
            record.env_refused = true;
            Err(refused)
        }
        Ok(()) => fetch().and_then(|()| run_stage(spec, registry, env, &cancel, &mut record.metrics)).and_then(|()| hash_outputs(spec)),
    };
    match ran {
        Ok(outputs) => record.outputs = outputs,
        Err(e) => record.error = Some(e.message),
    }
    record.duration_s = t0.elapsed().as_secs_f64();
    record.peak_rss_mb = peak_rss_mb();
    if let Some(e) = &record.error {
        eprintln!("cairn exec-job: stage `{}` failed: {e}", spec.stage);
    }
    record
}

fn run_stage(spec: &JobSpec, registry: &Registry, env: &Environment, cancel: &AtomicBool, metrics: &mut BTreeMap<String, f64>) -> Result<(), StageFailure> {
    let kind = registry
        .get(&spec.kind)
        .ok_or_else(|| StageFailure::new(format!("this cairn does not know kind `{}`; install the same cairn on the compute node", spec.kind)))?;
    for (slot, inputs) in &spec.inputs {
        for input in inputs {
            let hash = content_hash(&input.path).map_err(|e| StageFailure::new(format!("input `{slot}`: {}", e.message)))?;
            if hash != input.hash {
                return Err(StageFailure::new(format!(
                    "input `{slot}` ({}) has hash {} on this node, not the keyed {}; the shared filesystem served other bytes",
                    input.path.display(),
                    hash.short(),
                    input.hash.short()
                )));
            }
        }
    }
    std::fs::create_dir_all(&spec.scratch)?;
    let mut ctx = StageCtx {
        stage: &spec.stage,
        params: &spec.params,
        inputs: spec.inputs.iter().map(|(s, v)| (s.clone(), v.iter().map(|i| i.path.clone()).collect())).collect(),
        input_hashes: spec.inputs.iter().map(|(s, v)| (s.clone(), v.iter().map(|i| i.hash).collect())).collect(),
        outputs: spec.outputs.clone(),
        scratch: &spec.scratch,
        project_dir: &spec.project_dir,
        checkpoint_dir: spec.checkpoint_dir.clone(),
        seed: spec.seed,
        env,
        reporter: &LogReporter,
        metrics: BTreeMap::new(),
        cancel,
    };
    kind.run(&mut ctx)?;
    *metrics = std::mem::take(&mut ctx.metrics);
    Ok(())
}

/// Refuses to run where the facts the stage was keyed with do not hold: a
/// result computed here would be served as one from the keyed machine.
fn check_env(spec: &JobSpec, env: &Environment) -> Result<(), StageFailure> {
    let needs = EnvNeeds { torch: spec.needs_torch, threads: spec.needs_threads };
    let here = env.key_entries(needs);
    if here == spec.keyed_env {
        return Ok(());
    }
    let differ: Vec<String> = spec
        .keyed_env
        .keys()
        .chain(here.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| spec.keyed_env.get(*k) != here.get(*k))
        .map(|k| format!("{k}: keyed {:?}, this node {:?}", spec.keyed_env.get(k), here.get(k)))
        .collect();
    Err(StageFailure::new(format!(
        "this node's environment differs from the one the stage was keyed with ({}): the nodes changed since cairn probed them, or the job landed on a node unlike the one probed (constrain the executor's job shape to one kind of node)",
        differ.join("; ")
    )))
}

fn hash_outputs(spec: &JobSpec) -> Result<BTreeMap<String, JobOutput>, StageFailure> {
    let mut out = BTreeMap::new();
    for (name, path) in &spec.outputs {
        let hash = content_hash(path).map_err(|e| StageFailure::new(format!("finished without a readable output `{name}`: {}", e.message)))?;
        let size = std::fs::metadata(path).map(|m| if m.is_file() { m.len() } else { 0 })?;
        out.insert(name.clone(), JobOutput { hash, size });
    }
    Ok(out)
}

/// Peak resident memory of this process and its waited-for children (MiB).
fn peak_rss_mb() -> f64 {
    let max_rss_kib = |who| {
        // SAFETY: getrusage only writes the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(who, &mut u) } == 0 { u.ru_maxrss as f64 } else { 0.0 }
    };
    max_rss_kib(libc::RUSAGE_SELF).max(max_rss_kib(libc::RUSAGE_CHILDREN)) / 1024.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(keyed_env: BTreeMap<String, String>) -> JobSpec {
        JobSpec {
            stage: "train".into(),
            kind: "command".into(),
            params: Value::Null,
            inputs: BTreeMap::new(),
            outputs: BTreeMap::new(),
            scratch: PathBuf::from("/nonexistent"),
            project_dir: PathBuf::new(),
            seed: 0,
            cache_dir: None,
            keyed_env,
            needs_torch: false,
            needs_threads: false,
            checkpoint_dir: None,
        }
    }

    #[test]
    fn a_node_unlike_the_keyed_machine_is_refused() {
        let env = Environment::detect(true);
        assert!(check_env(&spec(BTreeMap::new()), &env).is_ok());
        let keyed = BTreeMap::from([("device".to_string(), "cuda:NVIDIA H200".to_string())]);
        let err = check_env(&spec(keyed), &env).unwrap_err().message;
        assert!(err.contains(r#"device: keyed Some("cuda:NVIDIA H200"), this node None"#), "{err}");
    }
}
