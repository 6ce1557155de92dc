//! A job of a `data = "remote"` executor, where the compute node shares
//! nothing with the engine but the remote cache: its description names
//! every input by content hash (a directory as the tree of its files'
//! hashes) and is read from `v1/jobs/<job>/job.json`; the node side
//! (`cairn exec-job --remote-job ADDRESS`) works in a node-local directory
//! ([`super::node_dir`]), downloads each input with the
//! checks of a pull (size and blake3 as it arrives; a directory's Merkle
//! hash once rebuilt), checks its own facts, runs the stage as
//! `super::job` does, uploads the outputs create-only, then its result
//! record and the tail of its log, and deletes the directory (or, if it
//! is killed, the next job on the node does). The stage's
//! checkpoints are kept on the remote under the job's name while it runs,
//! and a job brings back what is there before its stage runs
//! ([`super::node_checkpoints`]), so a requeued job resumes on any node.
//! The address on the command line holds the remote's URL and settings,
//! never credentials: the node reads those from its own AWS environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::job::{self, JobInput, JobSpec, ResultRecord, JOB_FILE, LOG_FILE, RESULT_FILE};
use super::{node_checkpoints, node_log};
use crate::digest::ArtifactHash;
use crate::env::Environment;
use crate::kind::StageFailure;
use crate::kinds::Registry;
use crate::remote::{Remote, RemoteConfig, RemoteError};

/// The version of [`RemoteJobSpec`]; a node refuses another.
pub const SCHEMA: u32 = 1;
/// The largest job description a node reads (a directory input of many
/// files is listed in it).
pub const JOB_MAX: u64 = 64 << 20;
/// The largest result record the engine reads.
pub const RECORD_MAX: u64 = 4 << 20;
/// How much of the end of its log a job uploads.
pub const LOG_MAX: u64 = 1 << 20;
/// Where on the node Slurm writes what a job prints outside `cairn`'s
/// own log (a binary missing on the node); removed when it stays empty.
pub const NODE_LOG: &str = "/tmp/cairn-job-%j.log";
/// A probe job's answer (`cairn-worker --probe`'s output).
pub const PROBE_FILE: &str = "probe.out";

/// Where a job's files are: the remote (no credentials) and the job's
/// name under `v1/jobs/`. The one argument of the node's command.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobAddress {
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: Option<bool>,
    /// `<run>/<stage>-<nonce>`.
    pub job: String,
}

impl JobAddress {
    pub fn new(cfg: &RemoteConfig, job: &str) -> Self {
        Self { url: cfg.url.clone(), endpoint: cfg.endpoint.clone(), region: cfg.region.clone(), allow_http: cfg.allow_http, job: job.to_string() }
    }

    fn config(&self) -> Result<RemoteConfig, RemoteError> {
        let kind = crate::remote::config::parse_url(&self.url)?;
        Ok(RemoteConfig { url: self.url.clone(), kind, endpoint: self.endpoint.clone(), region: self.region.clone(), allow_http: self.allow_http, push: false })
    }
}

/// What a job of the remote data plane is asked to do (`job.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteJobSpec {
    pub schema: u32,
    pub stage: String,
    pub kind: String,
    pub params: Value,
    pub seed: u64,
    pub inputs: BTreeMap<String, Vec<RemoteInput>>,
    /// Output name → the file name the stage writes it as.
    pub outputs: BTreeMap<String, String>,
    /// As in [`JobSpec`]: the node must have the facts the key holds.
    pub keyed_env: BTreeMap<String, String>,
    pub needs_torch: bool,
    pub needs_threads: bool,
}

/// An input, by content hash.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RemoteInput {
    /// The hash the key holds: a file's blake3, a directory's Merkle hash.
    pub hash: ArtifactHash,
    /// The file or directory name the stage sees (kinds may read an
    /// external input's extension).
    pub name: String,
    /// A file's size.
    pub size: u64,
    /// A directory's entries (`None`: the input is a file).
    pub tree: Option<Vec<TreeEntry>>,
}

/// One entry of a directory input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Relative, `/`-separated.
    pub path: String,
    /// A file's object and size; `None`: a directory (empty ones count).
    pub object: Option<(ArtifactHash, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteJobError {
    #[error("the job address {0:?} does not parse: {1}")]
    Address(String, serde_json::Error),
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("job {0} has no description on the remote")]
    NoJob(String),
    #[error("the description of job {job} is not valid: {why}\n  help: cairn on the node must be the engine's build")]
    Invalid { job: String, why: String },
    #[error("cannot set up the job's directory: {0}")]
    Io(#[from] std::io::Error),
}

/// A file or directory name that is one plain component.
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0'])
}

impl RemoteJobSpec {
    /// Refuses what would make the node write outside its directory.
    fn check(&self) -> Result<(), String> {
        if self.schema != SCHEMA {
            return Err(format!("its schema is {}, this cairn reads {SCHEMA}", self.schema));
        }
        let rel_ok = |p: &str| p.split('/').all(is_plain_name);
        for (slot, inputs) in &self.inputs {
            for i in inputs {
                let tree_ok = i.tree.iter().flatten().all(|e| rel_ok(&e.path));
                if !is_plain_name(slot) || !is_plain_name(&i.name) || !tree_ok {
                    return Err(format!("input `{slot}` names a path outside the job's directory"));
                }
            }
        }
        match self.outputs.iter().find(|(n, f)| !is_plain_name(n) || !is_plain_name(f)) {
            Some((n, _)) => Err(format!("output `{n}` names a path outside the job's directory")),
            None => Ok(()),
        }
    }

    fn input_path(work: &Path, slot: &str, i: usize, input: &RemoteInput) -> PathBuf {
        work.join("in").join(slot).join(i.to_string()).join(&input.name)
    }

    /// The job as `super::job` runs it, in the node-local directory `work`.
    fn local(&self, work: &Path) -> JobSpec {
        let inputs = self.inputs.iter().map(|(slot, v)| {
            (slot.clone(), v.iter().enumerate().map(|(i, input)| JobInput { path: Self::input_path(work, slot, i, input), hash: input.hash }).collect())
        });
        JobSpec {
            stage: self.stage.clone(),
            kind: self.kind.clone(),
            params: self.params.clone(),
            inputs: inputs.collect(),
            outputs: self.outputs.iter().map(|(n, f)| (n.clone(), work.join("out").join(f))).collect(),
            scratch: work.join("scratch"),
            project_dir: PathBuf::new(),
            seed: self.seed,
            cache_dir: None,
            keyed_env: self.keyed_env.clone(),
            needs_torch: self.needs_torch,
            needs_threads: self.needs_threads,
            checkpoint_dir: Some(work.join(node_checkpoints::DIR)),
        }
    }
}

/// Downloads every input into `work/in/`; a directory is rebuilt from
/// its files' objects (each downloaded once), and its Merkle hash is
/// checked with the other inputs' before the stage runs (`job::execute`).
fn pull_inputs(remote: &Remote, spec: &RemoteJobSpec, work: &Path) -> Result<(), StageFailure> {
    let objects = work.join("objects");
    std::fs::create_dir_all(&objects)?;
    let mut downloads: Vec<(ArtifactHash, u64, PathBuf)> = Vec::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    for (slot, inputs) in &spec.inputs {
        for (i, input) in inputs.iter().enumerate() {
            let dest = RemoteJobSpec::input_path(work, slot, i, input);
            std::fs::create_dir_all(dest.parent().expect("under work/in"))?;
            let Some(tree) = &input.tree else {
                downloads.push((input.hash, input.size, dest));
                continue;
            };
            std::fs::create_dir_all(&dest)?;
            for entry in tree {
                let path = dest.join(&entry.path);
                let Some((h, size)) = entry.object else {
                    std::fs::create_dir_all(&path)?;
                    continue;
                };
                let object = objects.join(h.to_hex());
                if !downloads.iter().any(|(d, _, _)| *d == h) {
                    downloads.push((h, size, object.clone()));
                }
                links.push((object, path));
            }
        }
    }
    remote.fetch_files(&downloads).map_err(|e| StageFailure::new(format!("cannot download its inputs: {e}")))?;
    for (object, path) in links {
        std::fs::create_dir_all(path.parent().expect("under an input"))?;
        std::fs::hard_link(&object, &path).or_else(|_| std::fs::copy(&object, &path).map(drop))?;
    }
    Ok(())
}

/// The node side: runs the job `address` names and leaves its record and
/// log on the remote. Returns whether the stage succeeded.
pub fn run_remote_job(address: &str, registry: &Registry) -> Result<bool, RemoteJobError> {
    let addr: JobAddress = serde_json::from_str(address).map_err(|e| RemoteJobError::Address(address.to_string(), e))?;
    let remote = std::sync::Arc::new(Remote::open(&addr.config()?)?);
    let invalid = |why: String| RemoteJobError::Invalid { job: addr.job.clone(), why };
    let bytes = remote.get_job_file(&addr.job, JOB_FILE, JOB_MAX, true)?.ok_or_else(|| RemoteJobError::NoJob(addr.job.clone()))?;
    let spec: RemoteJobSpec = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    spec.check().map_err(invalid)?;
    let work = super::node_dir::NodeDir::create()?;
    let log = work.path().join(LOG_FILE);
    let _redirected = node_log::redirect_output(&log)?;
    println!("cairn exec-job: job {} working in {}", addr.job, work.path().display());
    let local = spec.local(work.path());
    std::fs::create_dir_all(work.path().join("out"))?;
    let env = Environment::detect(false).with_worker_kinds(registry.worker_kinds().clone());
    let checkpoints = work.path().join(node_checkpoints::DIR);
    let uploader = node_log::Uploader::start(node_log::NodeFiles::new(remote.clone(), &addr.job, log.clone(), checkpoints));
    let mut fetch = || pull_inputs(&remote, &spec, work.path()).map(|()| uploader.with(|f| f.restore_checkpoints()));
    let mut record = job::execute(&local, registry, &env, &mut fetch);
    if record.error.is_some() {
        // Stopped (a requeue, a preemption): the last epoch's checkpoint
        // is what the job resumes from when it runs again.
        uploader.with(|f| f.sync_checkpoints());
    } else {
        let files: Vec<_> = record.outputs.iter().map(|(name, o)| (local.outputs[name].clone(), o.hash, o.size)).collect();
        if let Err(e) = remote.push_files(&files) {
            eprintln!("cairn exec-job: cannot upload the outputs: {e}");
            record.error = Some(format!("cannot upload its outputs: {e}"));
        }
    }
    uploader.stop();
    finish(&remote, &addr.job, &record, &log)?;
    if record.error.is_none() {
        // Checkpoints are never results: gone once the record is written
        // (a job killed in between leaves them to `remote gc`).
        if let Err(e) = remote.delete_job_files(&addr.job, node_checkpoints::DIR) {
            eprintln!("cairn exec-job: cannot delete the job's checkpoints on the remote ({e}); `cairn remote gc` will");
        }
    }
    if let Ok(id) = std::env::var("SLURM_JOB_ID") {
        let slurm_log = PathBuf::from(NODE_LOG.replace("%j", &id));
        if std::fs::metadata(&slurm_log).is_ok_and(|m| m.len() == 0) {
            let _ = std::fs::remove_file(slurm_log);
        }
    }
    Ok(record.error.is_none())
}

/// A probe of the node (`--probe-worker`): runs `<worker> --probe` here
/// and leaves what it printed on the remote for the engine.
pub fn run_remote_probe(address: &str, worker: &Path) -> Result<bool, RemoteJobError> {
    let addr: JobAddress = serde_json::from_str(address).map_err(|e| RemoteJobError::Address(address.to_string(), e))?;
    let remote = Remote::open(&addr.config()?)?;
    let out = std::process::Command::new(worker).arg("--probe").env(crate::worker::LOG_ENV, "error").stdin(std::process::Stdio::null()).output()?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    remote.put_job_file(&addr.job, PROBE_FILE, out.stdout, false)?;
    Ok(out.status.success())
}

/// Uploads the record, then the log's tail (the record first: a job that
/// is being killed may have time for one of them only).
fn finish(remote: &Remote, job: &str, record: &ResultRecord, log: &Path) -> Result<(), RemoteJobError> {
    remote.put_job_file(job, RESULT_FILE, serde_json::to_vec_pretty(record).expect("records serialise"), false)?;
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    remote.put_job_file(job, LOG_FILE, node_log::tail(log, LOG_MAX), false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RemoteJobSpec {
        let input = |name: &str, tree| RemoteInput { hash: ArtifactHash::of_bytes(b"x"), name: name.into(), size: 1, tree };
        RemoteJobSpec {
            schema: SCHEMA,
            stage: "s".into(),
            kind: "command".into(),
            params: Value::Null,
            seed: 0,
            inputs: BTreeMap::from([("a".to_string(), vec![input("f.txt", None), input("d", Some(vec![TreeEntry { path: "sub/x".into(), object: None }]))])]),
            outputs: BTreeMap::from([("o".to_string(), "o.txt".to_string())]),
            keyed_env: BTreeMap::new(),
            needs_torch: false,
            needs_threads: false,
        }
    }

    #[test]
    fn a_description_cannot_reach_outside_the_job_s_directory() {
        assert!(spec().check().is_ok());
        let mut s = spec();
        s.inputs.get_mut("a").unwrap()[1].tree = Some(vec![TreeEntry { path: "../../etc/x".into(), object: None }]);
        assert!(s.check().unwrap_err().contains("input `a`"));
        let mut s = spec();
        s.outputs.insert("o".into(), "/etc/passwd".into());
        assert!(s.check().unwrap_err().contains("output `o`"));
        let mut s = spec();
        s.schema = 2;
        assert!(s.check().unwrap_err().contains("schema is 2"));
    }

    #[test]
    fn the_local_job_lives_in_the_work_directory() {
        let local = spec().local(Path::new("/w"));
        assert_eq!(local.inputs["a"][0].path, Path::new("/w/in/a/0/f.txt"));
        assert_eq!(local.inputs["a"][1].path, Path::new("/w/in/a/1/d"));
        assert_eq!(local.outputs["o"], Path::new("/w/out/o.txt"));
        assert_eq!(local.checkpoint_dir.as_deref(), Some(Path::new("/w/checkpoints")));
        assert!(local.cache_dir.is_none(), "nothing of the engine's cache on the node");
    }


}
