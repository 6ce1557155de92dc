//! The engine side of a submitted stage: a [`StageKind`] that wraps the
//! stage's own kind and, instead of running it here, writes the job
//! directory, submits it, waits for it with the run's [`Queue`], and
//! accepts what it wrote only when its result record says it succeeded
//! and every output re-hashes to the hash the record gives. From there
//! `crate::exec` stores the outputs exactly as for a local run. An
//! executor with `data = "remote"` moves the job's files through the
//! remote cache instead of the shared filesystem ([`super::remote_submit`]).

use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::job::{self, JobInput, JobSpec, ResultRecord};
use super::queue::{Queue, Waited};
use super::remote_log::LogMirror;
use super::remote_submit::{self, JobFacts, RemoteData, RemoteJob};
use super::{Executor, JobId, JobState, Prepared};
use crate::kind::{Checked, EnvNeeds, ParamError, Progress, StageCtx, StageFailure, StageKind};

/// How many lines of a failed job's log its message shows.
const LOG_TAIL_LINES: usize = 15;

/// One executor of a run, with its queue.
pub struct Backend {
    exec: Arc<dyn Executor>,
    queue: Queue,
    /// The run's record of jobs cancelled on an interrupt (label, id).
    cancelled: Arc<Mutex<Vec<(String, JobId)>>>,
    /// `Some`: the executor's jobs share only the remote cache.
    data: Option<RemoteData>,
}

impl Backend {
    pub fn new(exec: Arc<dyn Executor>, cancelled: Arc<Mutex<Vec<(String, JobId)>>>, data: Option<RemoteData>) -> Self {
        Self { queue: Queue::new(exec.clone()), exec, cancelled, data }
    }
}

/// A stage's kind, run through an executor.
pub struct Submitted {
    inner: Arc<dyn StageKind>,
    /// Which environment facts the stage's key holds.
    needs: EnvNeeds,
    backend: Arc<Backend>,
    run_id: String,
}

impl Submitted {
    pub fn new(inner: Arc<dyn StageKind>, needs: EnvNeeds, backend: Arc<Backend>, run_id: &str) -> Self {
        Self { inner, needs, backend, run_id: run_id.to_string() }
    }

    fn prepare(&self, ctx: &StageCtx<'_>) -> Result<Prepared, StageFailure> {
        let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let dir = job_dir(ctx)?;
        std::fs::create_dir_all(&dir)?;
        let inputs = ctx
            .inputs
            .iter()
            .map(|(slot, paths)| {
                let hashes = &ctx.input_hashes[slot];
                (slot.clone(), paths.iter().zip(hashes).map(|(p, h)| JobInput { path: abs(p), hash: *h }).collect())
            })
            .collect();
        let cache_dir = ctx.scratch.ancestors().nth(3).map(abs);
        let spec = JobSpec {
            stage: ctx.stage.to_string(),
            kind: self.inner.name().to_string(),
            params: ctx.params.clone(),
            inputs,
            outputs: ctx.outputs.iter().map(|(n, p)| (n.clone(), abs(p))).collect(),
            scratch: abs(ctx.scratch),
            project_dir: abs(ctx.project_dir),
            seed: ctx.seed,
            cache_dir,
            keyed_env: ctx.env.key_entries(self.needs),
            needs_torch: self.needs.torch,
            needs_threads: self.needs.threads,
            checkpoint_dir: ctx.checkpoint_dir.as_deref().map(abs),
        };
        job::write_json(&dir, job::JOB_FILE, &spec).map_err(|e| StageFailure::new(e.to_string()))?;
        Ok(Prepared {
            name: format!("cairn-{}-{}", self.run_id, ctx.stage),
            log: dir.join(job::LOG_FILE),
            argv: vec![exe()?.to_string_lossy().into_owned(), "exec-job".into(), dir.to_string_lossy().into_owned()],
            dir,
            env: threads_env(&spec.keyed_env),
        })
    }

    /// The job to submit, and where its files are when not beside it.
    fn prepare_job(&self, ctx: &StageCtx<'_>) -> Result<(Prepared, Option<RemoteJob>), StageFailure> {
        let Some(data) = &self.backend.data else { return Ok((self.prepare(ctx)?, None)) };
        let facts = JobFacts { kind: self.inner.name(), needs: self.needs, run_id: &self.run_id, exe: exe()?, env: threads_env(&ctx.env.key_entries(self.needs)) };
        let (job, remote) = remote_submit::prepare(data, facts, ctx)?;
        Ok((job, Some(remote)))
    }

    fn accept(&self, id: &JobId, job: &Prepared, remote: Option<&RemoteJob>, ctx: &mut StageCtx<'_>) -> Result<(), StageFailure> {
        let label = self.backend.exec.label();
        let record = match remote.map_or_else(|| Ok(read_record(&job.dir)), |r| r.record(true)) {
            Ok(Some(record)) => record,
            Ok(None) => return Err(StageFailure::new(format!("{label} job {id} completed without a result record; nothing was cached{}", tail(job, remote)))),
            Err(why) => return Err(StageFailure::new(format!("{label} job {id}: {why}; nothing was cached{}", tail(job, remote)))),
        };
        if let Some(e) = &record.error {
            let reprobe = reprobe(Some(&record), ctx);
            return Err(StageFailure::new(format!("{label} job {id} on {}: {e}{reprobe}{}", record.host, tail(job, remote))));
        }
        if let Some(r) = remote {
            r.fetch_outputs(&record, &ctx.outputs).map_err(|why| StageFailure::new(format!("{label} job {id} on {}: {why}", record.host)))?;
        }
        for (name, path) in ctx.outputs.iter().filter(|_| remote.is_none()) {
            let claimed = record.outputs.get(name).ok_or_else(|| StageFailure::new(format!("{label} job {id}: its result record lacks output `{name}`")))?;
            let hash = job::content_hash(path).map_err(|e| StageFailure::new(format!("{label} job {id}: output `{name}`: {}", e.message)))?;
            if hash != claimed.hash {
                return Err(StageFailure::new(format!(
                    "{label} job {id}: output `{name}` hashes to {} here, not the {} its record gives; nothing was cached",
                    hash.short(),
                    claimed.hash.short()
                )));
            }
        }
        ctx.metrics = record.metrics;
        ctx.metrics.insert("job_peak_rss_mb".into(), record.peak_rss_mb);
        Ok(())
    }

    fn interrupted(&self, id: &JobId) -> StageFailure {
        let label = self.backend.exec.label();
        match self.backend.exec.cancel(std::slice::from_ref(id)) {
            Ok(()) => self.backend.cancelled.lock().unwrap_or_else(|e| e.into_inner()).push((label.to_string(), id.clone())),
            Err(e) => tracing::warn!(job = %id, error = %e, "could not cancel the job"),
        }
        StageFailure { message: format!("interrupted; {label} job {id} cancelled"), interrupted: true }
    }
}

/// Reads the lines a job appends to its log, for `-v` (per-epoch lines
/// reach the terminal as a local worker's do): the log itself where the
/// filesystem is shared, else the copy a [`LogMirror`] keeps.
struct LogFollower<'a> {
    path: &'a Path,
    /// What the job puts before the stage's own lines (`[stage] `).
    prefix: String,
    read: Cell<u64>,
}

impl<'a> LogFollower<'a> {
    fn new(path: &'a Path, stage: &str) -> Self {
        Self { path, prefix: format!("[{stage}] "), read: Cell::new(0) }
    }

    /// Hands each new complete line to `out`, without the job's prefix.
    fn forward(&self, out: impl Fn(&str)) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(self.path) else { return };
        let mut bytes = Vec::new();
        if f.seek(SeekFrom::Start(self.read.get())).is_err() || f.read_to_end(&mut bytes).is_err() {
            return;
        }
        // Only whole lines; a partial one is read again next time.
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else { return };
        self.read.set(self.read.get() + end as u64 + 1);
        for line in String::from_utf8_lossy(&bytes[..end]).lines() {
            out(line.strip_prefix(&self.prefix).unwrap_or(line));
        }
    }
}

/// The stage's job directory: `ctx.scratch` is `<stage tmp>/work`, and
/// the job directory goes beside it.
fn job_dir(ctx: &StageCtx<'_>) -> Result<std::path::PathBuf, StageFailure> {
    let dir = ctx.scratch.parent().map(|p| p.join("job")).ok_or_else(|| StageFailure::new("the stage has no scratch directory"))?;
    Ok(std::path::absolute(&dir).unwrap_or(dir))
}

/// A key that holds the CPU thread count (float reductions are ordered per
/// thread) is computed with that count on the node too (`CAIRN_THREADS`,
/// read by `cairn_kind::protocol::threads_from_env`).
fn threads_env(keyed_env: &std::collections::BTreeMap<String, String>) -> std::collections::BTreeMap<String, String> {
    keyed_env.get("threads").map(|n| ("CAIRN_THREADS".to_string(), n.clone())).into_iter().collect()
}

/// This `cairn`'s path for a job, or why there is none.
pub(super) fn exe() -> Result<std::path::PathBuf, StageFailure> {
    cairn_exe().map_err(|e| StageFailure::new(format!("cannot find the cairn binary to run on the node: {e}")))
}

/// The end of a job's log, from beside its job file or from the remote.
fn tail(job: &Prepared, remote: Option<&RemoteJob>) -> String {
    remote.map_or_else(|| log_tail(&job.log), RemoteJob::log_tail)
}

/// This `cairn`'s path, for the job to run. A binary rebuilt while the run
/// goes on reads as `<path> (deleted)` on Linux: the job runs the new one.
fn cairn_exe() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(match exe.to_str().and_then(|s| s.strip_suffix(" (deleted)")) {
        Some(path) => path.into(),
        None => exe,
    })
}

/// When the node refused the job for its facts, the cached probe of the
/// executor's nodes is wrong (they changed since): drop it so the next run
/// asks them again instead of failing the same way, and say so.
fn reprobe(record: Option<&ResultRecord>, ctx: &StageCtx<'_>) -> &'static str {
    if record.is_some_and(|r| r.env_refused) && ctx.env.forget_probe() {
        "; the cached probe of these nodes was dropped, so the next run probes them again"
    } else {
        ""
    }
}

/// The result record, allowing a shared filesystem a moment to show it.
fn read_record(dir: &Path) -> Option<ResultRecord> {
    let path = dir.join(job::RESULT_FILE);
    for _ in 0..10 {
        if let Ok(r) = job::read_json::<ResultRecord>(&path) {
            return Some(r);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

/// The last lines of a job's log, as the end of a message.
fn log_tail(log: &Path) -> String {
    tail_message(&std::fs::read_to_string(log).unwrap_or_default())
}

/// The last lines of a log's `text`, as the end of a message.
pub(super) fn tail_message(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "; its log is empty".to_string();
    }
    let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
    // The log goes with the stage's scratch directory: quote, do not point.
    format!("; the end of its log:\n    {}", tail.join("\n    "))
}

impl StageKind for Submitted {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn version(&self) -> u32 {
        self.inner.version()
    }
    fn summary(&self) -> &str {
        self.inner.summary()
    }
    fn check(&self, params: &Value) -> Result<Checked, ParamError> {
        self.inner.check(params)
    }

    fn run(&self, ctx: &mut StageCtx<'_>) -> Result<(), StageFailure> {
        let label = self.backend.exec.label();
        if ctx.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(StageFailure { message: "interrupted before it was submitted".into(), interrupted: true });
        }
        let (job, remote) = self.prepare_job(ctx)?;
        let id = self.backend.exec.submit(&job).map_err(|e| StageFailure::new(format!("cannot submit to {label}: {e}")))?;
        tracing::info!(job = %id, stage = ctx.stage, "submitted");
        self.backend.queue.add(&id);
        let (stage, reporter) = (ctx.stage, ctx.reporter);
        let shown = Cell::new(None);
        // A job of the remote data plane uploads its log: follow a copy.
        let mirror = remote.as_ref().map(|r| job_dir(ctx).map(|d| LogMirror::new(r, d.join(job::LOG_FILE)))).transpose()?;
        let log = LogFollower::new(mirror.as_ref().map_or(&job.log, |m| &m.path), stage);
        let wants_log = reporter.wants_log();
        let follow = |now: bool| {
            if wants_log {
                mirror.iter().for_each(|m| m.update(now));
                log.forward(|line| reporter.log(stage, line));
            }
        };
        let watch = |st: &JobState| {
            follow(false);
            let what = match st {
                JobState::Queued => "queued",
                JobState::Running => "running",
                _ => return,
            };
            if shown.replace(Some(what)) != Some(what) {
                let message = format!("{what} as {label} job {id}");
                reporter.progress(stage, &Progress { message, done: None, total: None, transient: true });
            }
        };
        let waited = self.backend.queue.wait(&id, ctx.cancel, &watch);
        // A job that ended has uploaded its whole log: its last lines now.
        follow(matches!(waited, Waited::Final(_)));
        let remote = remote.as_ref();
        match waited {
            Waited::Final(JobState::Completed) => self.accept(&id, &job, remote, ctx),
            Waited::Final(JobState::Gone) => self.accept(&id, &job, remote, ctx).map_err(|e| {
                StageFailure::new(format!("{label} job {id} left the queue: {}", e.message))
            }),
            Waited::Final(JobState::Ended { state }) => {
                let why = match state.as_str() {
                    "TIMEOUT" => " (it ran past its time limit: raise `time` in its executor)",
                    "OUT_OF_MEMORY" => " (raise `mem` in its executor)",
                    "CANCELLED" => " (cancelled outside cairn, e.g. by scancel)",
                    _ => "",
                };
                // The log ends with the stage's own error, when it had one.
                let record = match remote {
                    // Slurm may call the job over while it still uploads
                    // its last words (a time limit's SIGTERM): a moment for them.
                    Some(r) => r.record(true).ok().flatten(),
                    None => job::read_json::<ResultRecord>(&job.dir.join(job::RESULT_FILE)).ok(),
                };
                let reprobe = reprobe(record.as_ref(), ctx);
                Err(StageFailure::new(format!("{label} job {id} ended in state {state}{why}; nothing was cached{reprobe}{}", tail(&job, remote))))
            }
            Waited::Final(other) => unreachable!("{other:?} is not final"),
            Waited::Interrupted => Err(self.interrupted(&id)),
            Waited::Unreachable(e) => Err(StageFailure::new(format!("lost track of {label} job {id}: {e}; it may still run (cancel it by hand)"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followed_log_gives_each_whole_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.log");
        let follower = LogFollower::new(&path, "train");
        let got = std::cell::RefCell::new(Vec::new());
        let take = || {
            follower.forward(|l| got.borrow_mut().push(l.to_string()));
            got.borrow_mut().drain(..).collect::<Vec<_>>()
        };
        assert!(take().is_empty(), "no log yet");
        std::fs::write(&path, "[train] epoch 1\n[INFO] plain line\n[train] epo").unwrap();
        assert_eq!(take(), ["epoch 1", "[INFO] plain line"]);
        std::fs::write(&path, "[train] epoch 1\n[INFO] plain line\n[train] epoch 2\n").unwrap();
        assert_eq!(take(), ["epoch 2"]);
        assert!(take().is_empty());
    }

    #[test]
    fn a_log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("job.log");
        std::fs::write(&log, (0..40).map(|i| format!("line {i}\n")).collect::<String>()).unwrap();
        let tail = log_tail(&log);
        assert!(tail.contains("line 39") && tail.contains("line 25") && !tail.contains("line 24\n"), "{tail}");
    }
}
