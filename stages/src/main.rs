//! `cairn-worker`: runs one libtorch stage job for the cairn engine.
//!
//! `cairn-worker run <job.json>` reads a [`Job`] (see `cairn::worker` for
//! the protocol), checks its protocol version, fixes libtorch's thread count
//! and seed from the job so results depend only on the key's inputs, and
//! runs the kind's implementation. Success is exit 0. A stage error or a
//! panic is reported as one [`Event::Error`] line on stdout and exit 1; a
//! kind this worker does not know is exit 2 (the worker is older or newer
//! than the engine). `cairn-worker --version` prints the versions a bug
//! report needs. Logs go to stderr through `tracing`, filtered by
//! `CAIRN_LOG` (the engine passes its own level): the job runs in a
//! `stage` span, training epochs in `epoch` spans whose close lines carry
//! their durations.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn::worker::{Event, Job, PROTOCOL_VERSION};
use cairn_stages::ctx::{emit, WorkerCtx};

/// Exit status for a failed stage or an unreadable job.
const EXIT_FAILED: u8 = 1;
/// Exit status for a kind this worker does not implement.
const EXIT_UNKNOWN_KIND: u8 = 2;

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("cannot read job file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("job file {path} is not a valid cairn job: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error(
        "job file {path} speaks worker protocol {found}, this cairn-worker speaks {PROTOCOL_VERSION}; \
         rebuild both with `make setup` so they come from the same checkout"
    )]
    Protocol { path: PathBuf, found: u32 },
}

fn main() -> ExitCode {
    // cuBLAS reads this when its first handle is made, so it must be set
    // before any CUDA work (see `cairn_stages::determinism`). A value the
    // user set wins.
    if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", cairn_stages::determinism::CUBLAS_WORKSPACE_CONFIG);
    }
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--version"] | ["-V"] => {
            print_version();
            ExitCode::SUCCESS
        }
        ["run", job] => run(Path::new(job)),
        _ => {
            eprintln!(
                "usage: cairn-worker run <job.json>\n       cairn-worker --version\n\
                 cairn-worker is started by `cairn run`; it is not meant to be run by hand."
            );
            ExitCode::from(EXIT_UNKNOWN_KIND)
        }
    }
}

/// stderr logging at the engine's level (`cairn::worker::LOG_ENV`),
/// warnings only when run by hand.
fn init_tracing() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = std::env::var(cairn::worker::LOG_ENV).unwrap_or_else(|_| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        // Uptime, not wall time: the engine's lines carry the clock; and
        // without a timer the close lines would lose their durations.
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_span_events(FmtSpan::CLOSE)
        .try_init();
}

fn print_version() {
    let cuda = if tch::Cuda::is_available() {
        format!("available ({} device(s), cuDNN {})", tch::Cuda::device_count(), tch::Cuda::cudnn_is_available())
    } else {
        "not available".to_string()
    };
    println!("cairn-worker {}", env!("CARGO_PKG_VERSION"));
    println!("protocol {PROTOCOL_VERSION}");
    println!("libtorch {}", cairn::env::TORCH_VERSION);
    println!("CUDA {cuda}");
}

fn load_job(path: &Path) -> Result<Job, JobError> {
    let text = fs::read_to_string(path).map_err(|source| JobError::Read { path: path.into(), source })?;
    // Read the version first so that a job from a different protocol gets
    // the "rebuild" message, not a confusing missing-field error.
    let raw: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| JobError::Parse { path: path.into(), source })?;
    let found = raw.get("protocol").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
    if found != PROTOCOL_VERSION {
        return Err(JobError::Protocol { path: path.into(), found });
    }
    serde_json::from_value(raw).map_err(|source| JobError::Parse { path: path.into(), source })
}

fn fail(message: String, code: u8) -> ExitCode {
    eprintln!("cairn-worker: {message}");
    emit(&Event::Error { message });
    ExitCode::from(code)
}

fn run(job_path: &Path) -> ExitCode {
    let job = match load_job(job_path) {
        Ok(job) => job,
        Err(e) => return fail(e.to_string(), EXIT_FAILED),
    };
    let Some(stage_fn) = cairn_stages::dispatch(&job.kind) else {
        return fail(
            format!(
                "stage `{}`: this cairn-worker has no kind `{}`; rebuild it with `make setup` \
                 (it must come from the same checkout as `cairn`)",
                job.stage, job.kind
            ),
            EXIT_UNKNOWN_KIND,
        );
    };
    // The thread count is part of the key of kinds whose float reductions
    // depend on it, so it must be exactly what the engine decided.
    tch::set_num_threads(i32::try_from(job.env.threads.max(1)).unwrap_or(i32::MAX));
    tch::manual_seed(job.seed as i64);

    let _stage = tracing::info_span!("stage", stage = %job.stage, kind = %job.kind).entered();
    let mut ctx = WorkerCtx::new(job);
    // A panic in a stage (or in tch, which panics on libtorch errors in its
    // non-`f_` API) must still reach the engine as a readable Error event.
    // The default hook has already printed the location to stderr.
    match panic::catch_unwind(AssertUnwindSafe(|| stage_fn(&mut ctx))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(e.to_string(), EXIT_FAILED),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            fail(format!("internal error in kind `{}` (a bug; please report it): {what}", ctx.job.kind), EXIT_FAILED)
        }
    }
}
