//! Declared kinds run by the worker, seen from the engine: a
//! [`Kind`] declaration (the `cairn` binary registers those of
//! `cairn-kinds`) checks params, and `run` hands the job to a `cairn-worker`
//! process, streaming its events back to the runner. The job carries the
//! kind version and environment entries the stage was keyed with, so the
//! worker can refuse to run anything its key does not describe, and each
//! input's content hash next to its path. A resumable kind's job also names
//! the key's checkpoint directory, created here, so an interrupted
//! execution resumes where it stopped.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::kind::{Checked, Kind, KindInfo, ParamError, StageCtx, StageFailure, StageKind};
use crate::worker::{Event, Job, JobEnv, JobInput};
use super::exit_hint::Process;
use super::supervise::stderr_tail;

/// A declared kind, run by the worker.
pub struct WorkerKind {
    decl: &'static dyn Kind,
    info: KindInfo,
}

impl WorkerKind {
    pub fn new(decl: &'static dyn Kind) -> Self {
        Self { decl, info: decl.info() }
    }
}

/// Where the worker binary is: `$CAIRN_WORKER`, else next to this executable.
pub fn worker_path() -> Result<PathBuf, StageFailure> {
    crate::worker::locate().map_err(StageFailure::new)
}

impl StageKind for WorkerKind {
    fn name(&self) -> &str {
        self.info.name
    }

    fn version(&self) -> u32 {
        self.info.version
    }

    fn summary(&self) -> &str {
        self.info.summary
    }

    fn check(&self, raw: &Value) -> Result<Checked, ParamError> {
        self.decl.checked(raw)
    }

    fn run(&self, ctx: &mut StageCtx<'_>) -> Result<(), StageFailure> {
        let mut job = Job::new(self.info, ctx.stage, ctx.params.clone(), ctx.scratch)
            .with_seed(ctx.seed)
            .with_env(self.job_env(ctx.env)?);
        for (slot, paths) in &ctx.inputs {
            let hashes = ctx.input_hashes.get(slot);
            let inputs = paths.iter().enumerate().map(|(i, p)| JobInput::new(p, hashes.and_then(|h| h.get(i)).map(|h| h.to_hex())));
            job = job.with_input(slot, inputs);
        }
        for (name, path) in &ctx.outputs {
            job = job.with_output(name, path);
        }
        if let Some(dir) = ctx.checkpoint_dir.as_ref().filter(|_| self.decl.resumable()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StageFailure::new(format!("cannot create the checkpoint directory {}: {e}", dir.display())))?;
            job = job.with_checkpoint_dir(dir);
        }
        let job_path = ctx.scratch.join("job.json");
        std::fs::write(&job_path, serde_json::to_vec_pretty(&job).map_err(|e| StageFailure::new(e.to_string()))?)?;
        let worker = worker_path()?;
        let child = super::supervise::spawn(
            Command::new(&worker)
                .arg("run")
                .arg(&job_path)
                .env(crate::worker::LOG_ENV, worker_log_filter())
                .current_dir(ctx.scratch)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .map_err(|e| StageFailure::new(format!("cannot start {}: {e}", worker.display())))?;
        let mut error_message = None;
        let cancel = ctx.cancel;
        // The worker's log (its tracing spans and events, libtorch's
        // warnings) is shown as it comes when the engine logs at info or
        // more (`-v`); otherwise only a failure's tail is.
        let (reporter, stage) = (ctx.reporter, ctx.stage);
        let show_log = tracing::level_filters::LevelFilter::current() >= tracing::Level::INFO;
        let ended = super::supervise::supervise(
            child,
            cancel,
            |line| handle_event(ctx, line, &mut error_message),
            |line| {
                if show_log {
                    reporter.log(stage, line)
                }
            },
        )?;
        ctx.metrics.insert("peak_rss_mb".into(), ended.peak_rss_mb());
        let status = ended.status;
        if status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&ended.stderr);
        let said = format!("{}\n{stderr}", error_message.as_deref().unwrap_or_default());
        let hint = super::exit_hint::hint(Process::Worker, &ended, &said).unwrap_or_default();
        let message = match error_message {
            // The worker echoes its error as its last stderr line (for a
            // person running it by hand): shown once, with what came before.
            Some(m) => match stderr.trim_end().strip_suffix(&format!("cairn-worker: {m}")).unwrap_or(&stderr) {
                rest if rest.trim().is_empty() => m,
                rest => m + &stderr_tail(rest, "worker stderr"),
            },
            None => format!("cairn-worker exited with {status}{}", stderr_tail(&stderr, "worker stderr")),
        };
        Err(StageFailure::new(message + &hint))
    }
}

impl WorkerKind {
    /// The environment the stage was keyed with: the same entries as its
    /// key (the probe is made once per invocation). A kind that needs no
    /// facts runs on the CPU and never probes.
    fn job_env(&self, env: &crate::env::Environment) -> Result<JobEnv, StageFailure> {
        let needs = self.info.env;
        if !needs.torch && !needs.threads {
            return Ok(JobEnv::cpu(env.threads));
        }
        let device = env.device().map_err(|e| StageFailure::new(format!("cannot learn the environment from cairn-worker: {e}")))?;
        Ok(JobEnv { device, threads: env.threads, keyed: env.key_entries(needs) })
    }
}

/// The filter the worker logs with: the user's `RUST_LOG` if set, else the
/// engine's own level (`-v` → info, `-vv` → debug, else warn).
fn worker_log_filter() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| tracing::level_filters::LevelFilter::current().to_string().to_lowercase())
}

/// Routes one line of worker stdout; lines that are not events are logs.
fn handle_event(ctx: &mut StageCtx<'_>, line: &str, error_message: &mut Option<String>) {
    match serde_json::from_str::<Event>(line) {
        Ok(Event::Progress(p)) => ctx.reporter.progress(ctx.stage, &p),
        Ok(Event::Metric { name, value }) => {
            ctx.metrics.insert(name, value);
        }
        Ok(Event::Log { line }) => ctx.reporter.log(ctx.stage, &line),
        Ok(Event::Error { message }) => *error_message = Some(message),
        Err(_) => ctx.reporter.log(ctx.stage, line),
    }
}
