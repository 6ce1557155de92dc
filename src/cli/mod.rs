//! Argument parsing and dispatch for the `cairn` binary.

mod bars;
mod commands;
mod diff;
mod heartbeat;
mod history;
mod inspect;
mod inspect_file;
mod local;
mod lock;
mod remote;
mod results;
mod sweep;
mod ui;

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Exit codes.
pub mod exit {
    pub const OK: i32 = 0;
    /// A stage failed, `verify` found a difference, or `run --locked` found
    /// a result that differs from cairn.lock (or no lock, or a stale one).
    pub const FAILED: i32 = 1;
    /// The pipeline file, cairn.lock or the command line is invalid.
    pub const USAGE: i32 = 2;
    /// The cache or a file could not be read or written.
    pub const IO: i32 = 3;
    /// Interrupted by Ctrl-C.
    pub const INTERRUPTED: i32 = 130;
}

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Declarative, content-hashed, incremental pipelines for deep-learning experiments",
    after_help = "Examples:\n  cairn run                          run what is stale\n  cairn run --set finetune.lr=3e-4   change a param for this run\n  cairn status                       what is fresh, what is stale and why\n  cairn explain finetune             why `finetune` would re-run, field by field\n  cairn inspect resize.train_images  dtype, shape and stats of an intermediate\n  cairn dag --format mermaid         the stage graph"
)]
pub struct Cli {
    /// The pipeline file.
    #[arg(short = 'f', long = "file", global = true, default_value = "pipeline.toml")]
    pub file: PathBuf,
    /// The cache directory [default: `cache` beside the pipeline file].
    #[arg(long, global = true, env = "CAIRN_CACHE_DIR", default_value = "cache", hide_default_value = true)]
    pub cache_dir: PathBuf,
    /// More output (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log format for diagnostics on stderr (RUST_LOG is honoured).
    #[arg(long, global = true, value_parser = ["pretty", "json"], default_value = "pretty")]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Cmd,
}

/// How the pipeline is configured for this invocation.
#[derive(Args, Clone, Debug, Default)]
pub struct Config {
    /// Override a param: `--set stage.param=value` (value is TOML). Repeatable.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub sets: Vec<String>,
    /// Apply a named profile from `[profiles]`. Without it, where no CUDA
    /// device is present, `cpu-fp32` is used if the pipeline has such a
    /// profile, else `cpu` if it has that one; `none` disables that.
    #[arg(long)]
    pub profile: Option<String>,
    /// Use the CPU even when a CUDA device is present.
    #[arg(long)]
    pub cpu: bool,
    /// The shared remote cache (`s3://bucket/prefix`, `file:///path`, or
    /// `none`); overrides `[remote] url`. Credentials come from the AWS environment.
    #[arg(long, env = "CAIRN_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the targets (default: every stage) and what they depend on.
    #[command(after_help = "Examples:\n  cairn run\n  cairn run evaluate --set finetune.lr=1e-4\n  cairn run --force finetune\n  cairn run --sweep finetune.lr=1e-3,3e-4,1e-4\n  cairn run --dry-run --json")]
    Run {
        /// Stages to bring up to date, with their ancestors.
        targets: Vec<String>,
        /// Run this stage even if it is cached. Repeatable.
        #[arg(long, value_name = "STAGE")]
        force: Vec<String>,
        /// Show what would run, run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Independent stages to run at once [default: 1; with --sweep
        /// over stages on a scheduler, the number of points].
        #[arg(short, long)]
        jobs: Option<NonZeroUsize>,
        /// Fail instead of waiting when another run holds the cache.
        #[arg(long)]
        no_wait: bool,
        /// Remember this run's --set and --profile in cairn.local.toml, so
        /// later commands (status, explain, inspect, verify) apply them too.
        #[arg(long)]
        save_overrides: bool,
        /// A machine-readable summary on stdout.
        #[arg(long)]
        json: bool,
        /// Push every stage to the remote cache as it finishes (like `push = true` in `[remote]`).
        #[arg(long)]
        push: bool,
        /// Fail (exit 3) when the remote cache cannot be used, instead of continuing locally.
        #[arg(long)]
        remote_required: bool,
        /// Compare the run with the committed cairn.lock instead of updating
        /// it: exit 1 if an output differs or the lock is missing or stale.
        /// `--locked=strict` also fails on stages of another environment class.
        #[arg(long, value_name = "MODE", num_args = 0..=1, require_equals = true, default_missing_value = "compare", value_parser = ["compare", "strict"])]
        locked: Option<String>,
        /// Run the pipeline once per value (a grid over several flags),
        /// sharing every stage the points agree on; the stages that differ
        /// are named `STAGE@K` after point K. Repeatable.
        #[arg(long, value_name = "STAGE.PARAM=V1,V2,...", conflicts_with_all = ["locked", "save_overrides"])]
        sweep: Vec<String>,
        #[command(flatten)]
        config: Config,
    },
    /// Upload what the local cache holds for the pipeline's stages to the remote cache.
    #[command(after_help = "Example:\n  cairn push --remote s3://team-cache/cifar")]
    Push {
        /// Stages to push (default: all that are fresh locally).
        stages: Vec<String>,
        #[command(flatten)]
        config: Config,
    },
    /// Download the remote cache's entries for the pipeline's stages (with their ancestors).
    Pull {
        /// Stages to pull, with their ancestors (default: all).
        stages: Vec<String>,
        #[command(flatten)]
        config: Config,
    },
    /// Each stage: fresh, stale (with the reason) or never run.
    Status {
        /// Each stage's state, reasons and outputs as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: Config,
    },
    /// Why a stage is stale, field by field.
    #[command(after_help = "Example:\n  cairn explain finetune --set finetune.lr=3e-4")]
    Explain {
        /// The stage to explain.
        stage: String,
        /// The changed fields as JSON on stdout.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: Config,
    },
    /// The stage graph.
    Dag {
        /// `dot` for Graphviz, `mermaid` for Markdown pages.
        #[arg(long, value_parser = ["text", "dot", "mermaid"], default_value = "text")]
        format: String,
        #[command(flatten)]
        config: Config,
    },
    /// Show a stage's outputs, or one output in detail.
    #[command(after_help = "Examples:\n  cairn inspect load\n  cairn inspect resize.train_images --grid grid.png\n  cairn inspect evaluate.predictions --rows 20")]
    Inspect {
        /// `STAGE` or `STAGE.OUTPUT`.
        target: String,
        /// The description (and a table's rows) as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Render the first images of an image tensor as a PNG grid.
        #[arg(long, value_name = "FILE.png")]
        grid: Option<PathBuf>,
        /// Table rows, model tensors or a text file's lines to show.
        #[arg(long, default_value_t = 10)]
        rows: usize,
        #[command(flatten)]
        config: Config,
    },
    /// The history of this pipeline's runs (not those of other projects sharing the cache).
    Runs {
        /// The newest N runs.
        #[arg(long, value_name = "N", default_value = "20")]
        limit: NonZeroUsize,
        /// The runs as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// Also the runs of other projects sharing the cache (each named).
        #[arg(long)]
        all_projects: bool,
    },
    /// Params and metrics of two runs side by side (default: the last two),
    /// or of the working tree against cairn.lock.
    #[command(after_help = "Examples:\n  cairn diff\n  cairn diff --lock --format markdown     for a pull-request comment\n  git show main:cairn.lock > base.lock && cairn diff --lock=base.lock")]
    Diff {
        /// Run A's id (see `cairn runs`; default: the newest but one).
        run_a: Option<String>,
        /// Run B's id (default: the newest not named as A).
        run_b: Option<String>,
        /// `markdown` for a pull-request comment.
        #[arg(long, value_parser = ["text", "markdown"], default_value = "text")]
        format: String,
        /// Compare the working tree against this lock (default: cairn.lock
        /// next to the pipeline) instead of two runs.
        #[arg(long, value_name = "PATH", num_args = 0..=1, require_equals = true, conflicts_with_all = ["run_a", "run_b"])]
        lock: Option<Option<PathBuf>>,
        #[command(flatten)]
        config: Config,
    },
    /// Delete objects that neither the current pipeline, another project sharing the cache, nor their last N runs reference.
    #[command(after_help = "Projects sharing the cache are named by their pipeline file. One whose file is gone (moved, \
        deleted, on a drive not mounted) is kept as if it were there until --forget-gone-after days after gc first finds it \
        gone, then forgotten; a project moved elsewhere records itself again on its next run there.\n\n\
        Example:\n  cairn gc --dry-run\n  cairn gc --forget ../old-checkout/pipeline.toml")]
    Gc {
        /// Say what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Also keep what the newest N recorded runs of each project reference.
        #[arg(long, value_name = "N", default_value_t = 5)]
        keep_runs: usize,
        /// Forget another project sharing the cache (its pipeline file, as
        /// `gc` lists it): keep nothing for it, as if its file were gone.
        /// Repeatable.
        #[arg(long, value_name = "PIPELINE_FILE")]
        forget: Vec<PathBuf>,
        /// Forget another project whose pipeline file is gone this many
        /// days after gc first found it gone (0: at once).
        #[arg(long, value_name = "DAYS", default_value_t = 14)]
        forget_gone_after: u32,
        #[command(flatten)]
        config: Config,
    },
    /// Re-execute stages without reading their cache and check the outputs are bit-identical.
    #[command(after_help = "Example (CI reproducibility check):\n  cairn run && cairn verify finetune evaluate")]
    Verify {
        /// Stages to verify (default: all).
        stages: Vec<String>,
        #[command(flatten)]
        config: Config,
    },
    /// Cache maintenance.
    Cache {
        #[command(subcommand)]
        command: CacheCmd,
    },
    /// The shared remote cache: check it, or delete what old runs left there.
    Remote {
        #[command(subcommand)]
        command: RemoteCmd,
    },
    /// Runs a submitted stage's job directory on this node: what a job of a
    /// non-local executor (Slurm) executes. Not for hand use.
    #[command(hide = true)]
    ExecJob {
        /// The job directory (an executor with `data = "shared"`).
        #[arg(required_unless_present = "remote_job")]
        dir: Option<PathBuf>,
        /// The job's address on the remote cache (JSON; `data = "remote"`).
        #[arg(long, conflicts_with = "dir")]
        remote_job: Option<String>,
        /// Instead of a stage, run this worker's `--probe` and leave its
        /// answer beside the job's address (a probe of the nodes).
        #[arg(long, requires = "remote_job")]
        probe_worker: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum RemoteCmd {
    /// Re-hash the remote's entries for the pipeline's stages (or all) and
    /// report damaged, missing or misfiled ones.
    #[command(after_help = "Exit codes: 0 everything checked is intact; 1 something is damaged or missing; 2 usage or no remote configured; 3 the remote cannot be used.\n\nExample:\n  cairn remote verify --all")]
    Verify {
        /// Every manifest and object on the remote, not only the pipeline's.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        config: Config,
    },
    /// Delete from the remote what none of the last N pushed runs needs (a
    /// dry run unless --delete).
    #[command(after_help = "Runs are recorded on the remote by `cairn run --push` and `cairn push`.\nEntries younger than --grace-hours are always kept (a push may be in progress).\n\nExample:\n  cairn remote gc --keep-runs 20            # what would go\n  cairn remote gc --keep-runs 20 --delete")]
    Gc {
        /// Keep what the newest N recorded runs need.
        #[arg(long, value_name = "N")]
        keep_runs: usize,
        /// Delete (without it, only say what would be deleted).
        #[arg(long)]
        delete: bool,
        /// Never delete entries younger than this.
        #[arg(long, value_name = "HOURS", default_value_t = 24.0)]
        grace_hours: f64,
        #[command(flatten)]
        config: Config,
    },
}

#[derive(Subcommand)]
pub enum CacheCmd {
    /// Re-hash every object and report damaged or missing ones, and every
    /// manifest, project record or run record that does not parse.
    Verify,
}

pub fn main() -> i32 {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Like the lock and `artifacts/`, the default cache sits beside the
    // pipeline file, so `cairn -f ../pipeline.toml` from a subdirectory
    // finds the project's cache instead of starting one there.
    if matches.value_source("cache_dir") == Some(clap::parser::ValueSource::DefaultValue) {
        cli.cache_dir = cairn::spec::beside(&cli.file, "cache");
    }
    ui::init_tracing(&cli);
    commands::dispatch(cli)
}
