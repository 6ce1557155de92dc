//! One function per subcommand. Each returns an exit code; library errors
//! are rendered here, the only place that knows about the terminal.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use cairn::cache::gc::{Forget, Held};
use cairn::timestamp;
use cairn::cache::{Cache, CacheLock, Project};
use cairn::digest::ArtifactHash;
use cairn::env::Environment;
use cairn::exec::{execute, ExecRequest};
use cairn::kinds::Registry;
use cairn::plan::{Resolver, StageState};
use cairn::runner::{self, Outcome, RunOptions};
use cairn::spec::{self, LoadOptions, Pipeline, ProfileChoice, SpecError};

use super::ui::{human_bytes, reasons_text, when, Console};
use super::{exit, CacheCmd, Cli, Cmd, Config};

pub fn dispatch(cli: Cli) -> i32 {
    let console = Console::new(cli.quiet, cli.verbose > 0);
    if let Some(why) = cairn::worker::threads_env_problem() {
        console.warn_line(&why);
    }
    if let Cmd::Run { save_overrides: true, config, .. } = &cli.command {
        if save_overrides(&cli, config, &console).is_err() {
            return exit::IO;
        }
    }
    let result = match &cli.command {
        Cmd::Run { targets, force, dry_run, jobs, no_wait, json, push, remote_required, locked, sweep, config, .. } => {
            let opts = RunOptions {
                targets: targets.clone(),
                force: force.clone(),
                dry_run: *dry_run,
                jobs: jobs.map_or(1, NonZeroUsize::get),
                push: *push,
                remote_required: *remote_required,
                remote: None,
            };
            let quiet = Console::new(cli.quiet || *json, cli.verbose > 0);
            let run = RunCmd { wait: !no_wait, json: *json, locked: locked.as_deref(), sweep, jobs_set: jobs.is_some() };
            cmd_run(&cli, config, &opts, &run, &quiet)
        }
        Cmd::Push { stages, config } => super::remote::cmd_push(&cli, config, stages, &console),
        Cmd::Pull { stages, config } => super::remote::cmd_pull(&cli, config, stages, &console),
        Cmd::Status { json, config } => cmd_status(&cli, config, *json, &console),
        Cmd::Explain { stage, json, config } => cmd_explain(&cli, config, stage, *json, &console),
        Cmd::Dag { format, config } => cmd_dag(&cli, config, format, &console),
        Cmd::Inspect { target, json, grid, rows, config } => {
            load(&cli, config, &console).and_then(|(p, env)| super::inspect::run(&cli, &p, &env, target, *json, grid.as_deref(), *rows, &console))
        }
        Cmd::Runs { limit, json, all_projects } => super::history::runs(&cli, limit.get(), *json, *all_projects),
        Cmd::Diff { run_a, run_b, format, lock, config } => {
            let args = super::diff::DiffArgs { run_a: run_a.as_deref(), run_b: run_b.as_deref(), lock: lock.as_ref().map(|l| l.as_deref()), markdown: format == "markdown" };
            super::diff::diff(&cli, config, &args, &console)
        }
        Cmd::Gc { dry_run, keep_runs, forget, forget_gone_after, config } => {
            cmd_gc(&cli, config, *dry_run, *keep_runs, forget, *forget_gone_after, &console)
        }
        Cmd::Verify { stages, config } => cmd_verify(&cli, config, stages, &console),
        Cmd::Cache { command: CacheCmd::Verify } => cmd_cache_verify(&cli, &console),
        Cmd::Remote { command } => super::remote::cmd_remote(&cli, command, &console),
        Cmd::ExecJob { dir, remote_job, probe_worker } => {
            let ran = match (dir, remote_job) {
                (_, Some(address)) => match probe_worker {
                    Some(worker) => cairn::executor::remote_job::run_remote_probe(address, worker),
                    None => cairn::executor::remote_job::run_remote_job(address, &registry()),
                }
                .map_err(|e| e.to_string()),
                (Some(dir), None) => cairn::executor::job::run_job(dir, &registry()).map_err(|e| e.to_string()),
                (None, None) => unreachable!("clap requires one"),
            };
            ran.map(|ok| if ok { exit::OK } else { exit::FAILED }).map_err(|e| fail(&console, exit::IO, e))
        }
    };
    result.unwrap_or_else(|code| code)
}

/// A failed command: its exit code (the message is already printed).
pub type CmdResult = Result<i32, i32>;

pub fn fail(console: &Console, code: i32, message: impl std::fmt::Display) -> i32 {
    console.error(&format!("error: {message}"));
    code
}

/// The kinds `cairn` runs: the engine's own (`command`) and the built-in ML
/// kinds, declared in `cairn-kinds` and run by `cairn-worker`.
pub fn registry() -> Registry {
    Registry::builtin().with_worker_kinds(cairn_kinds::all())
}

/// Loads the pipeline with the invocation's profile and overrides.
pub fn load(cli: &Cli, config: &Config, console: &Console) -> Result<(Pipeline, Environment), i32> {
    // The worker's facts are probed only when a key needs them, and cached
    // under the cache directory and per user (see `cairn::env`).
    let registry = registry();
    let env = Environment::detect(config.cpu)
        .with_probe_cache(&cli.cache_dir)
        .with_user_probe_cache(cairn::env::user_cache_dir())
        .with_worker_kinds(registry.worker_kinds().clone());
    let local = super::local::Overrides::read(&cli.file).map_err(|e| fail(console, exit::USAGE, e))?;
    if !local.is_empty() {
        console.line(&format!("using {} ({})", super::local::FILE, local.describe()));
    }
    let profile = match config.profile.as_deref().or(local.profile.as_deref()) {
        None => ProfileChoice::Auto { cuda: env.cuda_hint() },
        Some("none") => ProfileChoice::None,
        Some(p) => ProfileChoice::Named(p),
    };
    // Flags on the command line come last, so they win; a saved one that
    // the command line repeats (as `--save-overrides` does) is not applied
    // or recorded twice.
    let sets = local.set.iter().filter(|s| !config.sets.contains(s)).chain(&config.sets).cloned().collect();
    let opts = LoadOptions { profile, sets };
    match spec::load(&cli.file, &opts, &registry) {
        Ok(p) => {
            if let Some(line) = p.profile.as_ref().and_then(|(name, why)| why.announce(name)) {
                console.line(&line);
            }
            // Stages on a scheduler are keyed with its nodes' facts.
            // (A remote that does not resolve is reported by the command that uses it.)
            let remote = cairn::remote::RemoteConfig::resolve(config.remote.as_deref(), p.remote.as_ref()).ok().flatten();
            let env = env.with_executors(cairn::executor::node_probes(&p, remote.as_ref()));
            Ok((p, env))
        }
        Err(e @ SpecError::Read { .. }) => Err(fail(console, exit::USAGE, format!("{e}\n  help: run cairn in the directory holding pipeline.toml, or pass -f PATH"))),
        Err(e) => {
            console.error(&e.to_string());
            Err(exit::USAGE)
        }
    }
}

/// Writes this invocation's `--set` and `--profile` to `cairn.local.toml`,
/// and says so where that changed it.
fn save_overrides(cli: &Cli, config: &Config, console: &Console) -> Result<(), ()> {
    let o = super::local::Overrides { set: config.sets.clone(), profile: config.profile.clone() };
    match o.save(&cli.file) {
        Ok(written) => {
            if let Some(path) = written {
                console.line(&format!("saved {} to {}; later commands apply it", o.describe(), path.display()));
            }
            Ok(())
        }
        Err(e) => {
            fail(console, exit::IO, e);
            Err(())
        }
    }
}

fn open_cache(cli: &Cli, console: &Console) -> Result<Cache, i32> {
    Cache::open(&cli.cache_dir).map_err(|e| fail(console, exit::IO, e))
}

fn lock(cli: &Cli, wait: bool, console: &Console) -> Result<CacheLock, i32> {
    CacheLock::acquire(&cli.cache_dir, wait, |pid| {
        console.line(&format!(
            "waiting for another cairn process (pid {}) to release the cache at {}…",
            if pid.is_empty() { "?" } else { pid },
            cli.cache_dir.display()
        ))
    })
    .map_err(|e| fail(console, exit::USAGE, e))
}

/// Ctrl-C sets the flag; running stages are stopped and not cached.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, flag.clone());
    }
    flag
}

fn artifacts_dir(cli: &Cli) -> PathBuf {
    std::env::var_os("CAIRN_ARTIFACTS_DIR")
        .map(Into::into)
        .unwrap_or_else(|| spec::beside(&cli.file, "artifacts"))
}

/// How `cairn run` was asked to run, beyond [`RunOptions`].
struct RunCmd<'a> {
    wait: bool,
    json: bool,
    locked: Option<&'a str>,
    /// The `--sweep` flags.
    sweep: &'a [String],
    /// Whether `--jobs` was given (else a sweep picks its own, see
    /// `sweep::default_jobs`).
    jobs_set: bool,
}

fn cmd_run(cli: &Cli, config: &Config, opts: &RunOptions, run: &RunCmd, console: &Console) -> CmdResult {
    let (pipeline, env) = if run.sweep.is_empty() { load(cli, config, console)? } else { super::sweep::load_merged(cli, config, run.sweep, console)? };
    let opts = &run_options(opts, run, &pipeline, config, console)?;
    let cache = open_cache(cli, console)?;
    let _lock = if opts.dry_run { None } else { Some(lock(cli, run.wait, console)?) };
    // Read once the cache is ours: a run it waited for may have changed it.
    let lock_plan = super::lock::before_run(cli, run.locked, console)?;
    if !opts.dry_run {
        cache.clean_tmp();
    }
    let cancel = interrupt_flag();
    let t0 = std::time::Instant::now();
    let report = runner::run(&pipeline, &cache, &env, opts, console, &cancel).map_err(|e| {
        let code = match e {
            runner::RunError::UnknownStage(_) | runner::RunError::Executors(_) => exit::USAGE,
            runner::RunError::Cache(_) | runner::RunError::External { .. } | runner::RunError::Unobtainable(_) => exit::IO,
            runner::RunError::Remote(ref e) => super::remote::exit_code(e),
        };
        fail(console, code, e)
    })?;
    if !opts.dry_run {
        record_run(cli, &pipeline, &cache, &report, console);
    }
    let recorded = !opts.dry_run && in_history(&report);
    print_summary(&pipeline, &report, opts, run.json, recorded, t0.elapsed(), console);
    if !run.json && !opts.dry_run {
        for line in super::results::lines(&pipeline, &report, &artifacts_dir(cli)) {
            console.line(&line);
        }
    }
    if let Some(code) = super::remote::after_run(opts, &pipeline, &cache, &report, console) {
        return Ok(code);
    }
    if let Some(code) = failure_code(&report, &cache, console) {
        return Ok(code);
    }
    if opts.dry_run || pipeline.sweep.is_some() {
        // cairn.lock records the pipeline as committed, not a sweep's points.
        return Ok(exit::OK);
    }
    Ok(super::lock::after_run(lock_plan, &pipeline, &cache, &report, opts.targets.is_empty(), console))
}

/// The run's options for this pipeline: a sweep's targets expanded to its
/// points (and its own job count unless `--jobs` was given), the remote
/// cache opened if one is configured.
fn run_options(opts: &RunOptions, run: &RunCmd, pipeline: &Pipeline, config: &Config, console: &Console) -> Result<RunOptions, i32> {
    let mut opts = opts.clone();
    if let Some(w) = &pipeline.sweep {
        opts.targets = super::sweep::expand(pipeline, &opts.targets);
        opts.force = super::sweep::expand(pipeline, &opts.force);
        if !run.jobs_set {
            opts.jobs = super::sweep::default_jobs(pipeline, w);
        }
    }
    if let Some((remote, push)) = super::remote::open(config, pipeline, console)? {
        opts.push |= push;
        opts.remote = Some(remote);
    }
    Ok(opts)
}

/// What a (not dry) run leaves behind. A run that changed nothing writes
/// nothing: no history row, and artifacts/ is only touched where it
/// differs.
fn record_run(cli: &Cli, pipeline: &Pipeline, cache: &Cache, report: &runner::RunReport, console: &Console) {
    materialize(cli, pipeline, cache, report, console);
    // Links made in artifacts/ changed objects' ctimes; remember they were
    // verified through it.
    cache.stat().save();
    if in_history(report) {
        if let Err(e) = cairn::history::record(cache, report, pipeline) {
            console.warn_line(&format!("could not record the run history: {e}"));
        }
    }
}

/// Whether a (not dry) run goes into the history, so that `cairn runs`
/// and `diff` know its id: only one that changed something.
fn in_history(report: &runner::RunReport) -> bool {
    !report.all_cached()
}

/// The closing line (or the JSON report, with `recorded`: whether the
/// history has the run), and a sweep's table.
fn print_summary(pipeline: &Pipeline, report: &runner::RunReport, opts: &RunOptions, json: bool, recorded: bool, took: std::time::Duration, console: &Console) {
    if json {
        let mut doc = serde_json::to_value(report).unwrap_or_default();
        doc["recorded"] = recorded.into();
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return;
    }
    let cached = report.count(|o| matches!(o, Outcome::Cached));
    if opts.dry_run {
        console.line(&format!("dry run: {} would run, {cached} cached", report.count(|o| matches!(o, Outcome::WouldRun))));
        return;
    }
    let ran = report.count(|o| matches!(o, Outcome::Ran));
    let failed = report.count(|o| matches!(o, Outcome::Failed { .. }));
    let pulled = match opts.remote {
        Some(_) => format!(", {} pulled", report.count(|o| matches!(o, Outcome::Pulled))),
        None => String::new(),
    };
    // Naming an id the history does not have would point `cairn runs` and
    // `diff` at a run they never see.
    let run = if recorded { format!("run {}", report.run_id) } else { "nothing changed, no run recorded".to_string() };
    console.line(&format!("{ran} ran, {cached} cached{pulled}, {failed} failed in {:.1}s ({run})", took.as_secs_f64()));
    if pipeline.sweep.is_some() {
        if let Some(table) = super::sweep::table(&cairn::history::rows(report, pipeline), false) {
            console.line(table.trim_end());
        }
    }
}

/// The exit code of a run that did not finish cleanly, said on stderr.
fn failure_code(report: &runner::RunReport, cache: &Cache, console: &Console) -> Option<i32> {
    if report.interrupted {
        let ran = report.count(|o| matches!(o, Outcome::Ran));
        console.error(&format!(
            "interrupted: {ran} finished stage(s) are cached and will not re-run; the stage in progress was discarded"
        ));
        return Some(exit::INTERRUPTED);
    }
    if let Some((stage, why)) = cache_io_failure(report) {
        console.error(&format!("`{stage}` failed because {why} ({}); earlier results are intact", cache.root().display()));
        return Some(exit::IO);
    }
    report.failed().then_some(exit::FAILED)
}

/// The first stage that failed because the cache could not be written (a
/// full disk, a read-only mount): a cache I/O error (exit 3), not the
/// stage's fault.
fn cache_io_failure(report: &runner::RunReport) -> Option<(&str, &'static str)> {
    let full = std::io::Error::from_raw_os_error(libc::ENOSPC).to_string();
    let full = full.split(" (os error").next().unwrap_or("No space left on device").to_string();
    report.stages.iter().find_map(|s| match &s.outcome {
        Outcome::Failed { error } if error.contains(&full) => {
            Some((s.stage.as_str(), "the disk is full: free space on the cache's disk or point --cache-dir elsewhere"))
        }
        Outcome::Failed { error } if error.contains("cannot write to the cache at") => {
            Some((s.stage.as_str(), "the cache could not be written (see the error above)"))
        }
        _ => None,
    })
}

/// Points `artifacts/` at the outputs of the stages this run brought up
/// to date; stages it did not select keep what they had.
fn materialize(cli: &Cli, pipeline: &Pipeline, cache: &Cache, report: &runner::RunReport, console: &Console) {
    let outputs = report
        .stages
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Cached | Outcome::Pulled | Outcome::Ran))
        .flat_map(|s| s.outputs.iter().map(move |(o, rec)| (s.stage.as_str(), o.as_str(), rec)));
    let in_run: BTreeSet<&str> = report.stages.iter().map(|s| s.stage.as_str()).collect();
    let untouched = |stage: &str| pipeline.stage(stage).is_some() && !in_run.contains(stage);
    let dir = artifacts_dir(cli);
    match cairn::artifacts::materialize(&dir, cache, outputs, &untouched) {
        Ok(done) => {
            for p in done.left_alone {
                console.warn_line(&format!("{} is not cairn's, so it was left alone; move it away to see the output there", p.display()));
            }
        }
        Err(e) => console.warn_line(&format!("could not update {}: {e}", dir.display())),
    }
}

fn cmd_status(cli: &Cli, config: &Config, json: bool, console: &Console) -> CmdResult {
    let (pipeline, env) = load(cli, config, console)?;
    let cache = Cache::open_read(&cli.cache_dir);
    let mut states = stage_states(&pipeline, &cache, &env, console)?;
    let on_remote = super::remote::on_remote(config, &pipeline, &cache, &env, &mut states, console)?;
    if json {
        let rows: Vec<serde_json::Value> = states
            .iter()
            .map(|(name, st)| match st {
                StageState::Fresh { key, manifest } => serde_json::json!({
                    "stage": name, "status": "fresh", "key": key, "finished_at": manifest.finished_at, "metrics": manifest.metrics,
                }),
                StageState::Stale { reasons, .. } => serde_json::json!({
                    "stage": name,
                    "status": if reasons.iter().any(|r| matches!(r, cairn::key::DirtyReason::NeverRun)) { "never_run" } else { "stale" },
                    "reasons": reasons,
                    "on_remote": on_remote.contains(name),
                }),
                StageState::Blocked { error } => serde_json::json!({"stage": name, "status": "blocked", "error": error}),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default());
        return Ok(exit::OK);
    }
    for (name, st) in &states {
        let line = match st {
            StageState::Fresh { manifest, .. } => format!("fresh      {name:<12} (ran {}, {:.1}s)", when(&manifest.finished_at), manifest.duration_s),
            StageState::Stale { .. } if on_remote.contains(name) => format!("stale      {name:<12} on remote: will be pulled"),
            StageState::Stale { reasons, .. } if reasons.iter().any(|r| matches!(r, cairn::key::DirtyReason::NeverRun)) => {
                format!("never run  {name:<12}")
            }
            StageState::Stale { reasons, .. } => format!("stale      {name:<12} {}", reasons_text(reasons)),
            // The error's help lines too: they say how to unblock it.
            StageState::Blocked { error } => format!("blocked    {name:<12} {}", error.trim_end().replace('\n', &format!("\n{:24}", ""))),
        };
        println!("{line}");
    }
    if states.iter().any(|(_, st)| !matches!(st, StageState::Fresh { .. })) {
        super::history::missing_flags_note(cli, &pipeline).inspect(|n| console.line(n));
    }
    Ok(exit::OK)
}

fn cmd_explain(cli: &Cli, config: &Config, stage: &str, json: bool, console: &Console) -> CmdResult {
    let (pipeline, env) = load(cli, config, console)?;
    if pipeline.stage(stage).is_none() {
        let names: Vec<&str> = pipeline.names().collect();
        return Err(fail(console, exit::USAGE, format!("no stage named `{stage}` (stages: {})", names.join(", "))));
    }
    let cache = Cache::open_read(&cli.cache_dir);
    let mut states = stage_states(&pipeline, &cache, &env, console)?;
    let on_remote = super::remote::on_remote(config, &pipeline, &cache, &env, &mut states, console)?.contains(stage);
    let (_, st) = states.iter().find(|(n, _)| n == stage).expect("stage exists");
    if json {
        let v = match st {
            StageState::Fresh { key, .. } => serde_json::json!({"stage": stage, "status": "fresh", "key": key}),
            StageState::Stale { reasons, .. } => {
                serde_json::json!({"stage": stage, "status": "stale", "reasons": reasons, "on_remote": on_remote})
            }
            StageState::Blocked { error } => serde_json::json!({"stage": stage, "status": "blocked", "error": error}),
        };
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(exit::OK);
    }
    match st {
        StageState::Fresh { key, manifest } => {
            println!("`{stage}` is fresh: key {} was computed at {} ({:.1}s)", key.short(), when(&manifest.finished_at), manifest.duration_s);
        }
        StageState::Stale { reasons, .. } => {
            if on_remote {
                println!("`{stage}` is stale, on remote: will be pulled");
            }
            println!("`{stage}` is stale because:");
            let declared = pipeline.stage(stage).expect("stage exists");
            for r in reasons {
                println!("  - {r}{}", reads_now(declared, r));
            }
            if let Some(up) = reasons.iter().find_map(|r| match r {
                cairn::key::DirtyReason::UpstreamStale { stage } => Some(stage.clone()),
                _ => None,
            }) {
                println!("  (run `cairn explain {up}` for the root cause)");
            }
        }
        StageState::Blocked { error } => println!("`{stage}` cannot run yet:\n{error}"),
    }
    if !matches!(st, StageState::Fresh { .. }) {
        super::history::missing_flags_note(cli, &pipeline).inspect(|n| console.line(n));
    }
    Ok(exit::OK)
}

/// For a changed input, what its slot reads now (`file data/x.tar.gz`,
/// `resize.train`): the hashes alone do not say where the new bytes came
/// from, and a path is not in the key to show as a param.
fn reads_now(stage: &cairn::spec::Stage, reason: &cairn::key::DirtyReason) -> String {
    let cairn::key::DirtyReason::InputChanged { slot, .. } = reason else { return String::new() };
    match stage.inputs.get(slot) {
        Some(refs) if !refs.is_empty() => {
            format!(" (reads {})", refs.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", "))
        }
        _ => String::new(),
    }
}

fn cmd_dag(cli: &Cli, config: &Config, format: &str, console: &Console) -> CmdResult {
    let (pipeline, _) = load(cli, config, console)?;
    let labels: Vec<String> = pipeline.stages.iter().map(|s| s.kind.name().to_string()).collect();
    print!("{}", pipeline.graph.render(format, &labels));
    Ok(exit::OK)
}

/// Every stage's state in the cache; warnings go to the console.
pub fn stage_states(pipeline: &Pipeline, cache: &Cache, env: &Environment, console: &Console) -> Result<Vec<(String, StageState)>, i32> {
    let warn = |m: String| console.warn_line(&m);
    Resolver::new(pipeline, cache, env, &warn).status().map_err(|e| fail(console, exit::IO, e))
}

/// What commands that change the cache (`gc`, `verify`) start from: the
/// pipeline, the cache under its lock, and every stage's state.
struct Locked {
    pipeline: Pipeline,
    env: Environment,
    cache: Cache,
    _lock: CacheLock,
    states: Vec<(String, StageState)>,
}

fn locked(cli: &Cli, config: &Config, console: &Console) -> Result<Locked, i32> {
    let (pipeline, env) = load(cli, config, console)?;
    let cache = open_cache(cli, console)?;
    let _lock = lock(cli, true, console)?;
    let states = stage_states(&pipeline, &cache, &env, console)?;
    Ok(Locked { pipeline, env, cache, _lock, states })
}

fn cmd_gc(cli: &Cli, config: &Config, dry_run: bool, keep_runs: usize, forget: &[PathBuf], gone_days: u32, console: &Console) -> CmdResult {
    let Locked { pipeline, cache, _lock, states, .. } = locked(cli, config, console)?;
    let mut fresh = BTreeSet::new();
    for (i, (_, st)) in states.iter().enumerate() {
        if let StageState::Fresh { manifest, .. } = st {
            fresh.extend(manifest.outputs.values().map(|o| o.hash));
            // The document the engine made for it (a report's params): an
            // input, not an output, but this run's all the same.
            fresh.extend(pipeline.upstream_params_hash(i));
        }
    }
    let me = Project::of(&pipeline.file);
    let named = recorded_projects(&cache, &me, forget).map_err(|e| fail(console, exit::USAGE, e))?;
    let now = time::OffsetDateTime::now_utc();
    let now = now - time::Duration::nanoseconds(now.nanosecond().into()); // whole seconds, as printed
    let forget = Forget { named, grace: time::Duration::days(gone_days.into()), now };
    let roots = cairn::cache::gc::roots(&cache, &me, fresh, keep_runs, &forget).map_err(|e| fail(console, exit::IO, e))?;
    let report = cairn::cache::gc::collect(&cache, &roots, dry_run).map_err(|e| fail(console, exit::IO, e))?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    println!(
        "{verb} {} object(s), {} ({} manifest(s)); kept {} object(s)",
        report.objects,
        human_bytes(report.bytes),
        report.manifests,
        report.kept
    );
    if report.checkpoints > 0 {
        println!("{verb} {} orphaned training checkpoint(s), {}", report.checkpoints, human_bytes(report.checkpoint_bytes));
    }
    let list = |ps: &[cairn::cache::projects::OtherProject]| {
        let on = |p: &cairn::cache::projects::OtherProject| if p.elsewhere() { format!(" (on {}, not checked from here)", p.host) } else { String::new() };
        ps.iter().map(|p| format!("\n  {}{}", p.pipeline, on(p))).collect::<String>()
    };
    if !roots.others.is_empty() {
        let runs = if keep_runs > 0 { format!(" and their newest {keep_runs} run(s) reference") } else { String::new() };
        println!("kept what {} other project(s) sharing this cache last ran or hit{runs}:{}", roots.others.len(), list(&roots.others));
    }
    if !roots.held.is_empty() {
        let runs = if keep_runs > 0 { " (and their newest runs)" } else { "" };
        let until = |h: &Held| format!("\n  {} (gone since {}; kept until {})", h.project.pipeline, timestamp::format(h.since), timestamp::format(h.until));
        let each = roots.held.iter().map(until).collect::<String>();
        println!("kept what {} project(s) whose pipeline file is gone last ran or hit{runs}, for {gone_days} day(s) after gc first found each gone (`--forget` drops one now):{each}", roots.held.len());
    }
    if !roots.gone.is_empty() {
        let verb = if dry_run { "would forget" } else { "forgot" };
        let why = if forget.named.is_empty() { "whose pipeline file is gone" } else { "whose pipeline file is gone or that --forget named" };
        println!("{verb} {} project(s) {why}:{}", roots.gone.len(), list(&roots.gone));
    }
    Ok(exit::OK)
}

/// The recorded pipeline path of each project `named` for `gc --forget`:
/// as written, or as the path resolves from here (the file may be gone).
fn recorded_projects(cache: &Cache, me: &Project, named: &[PathBuf]) -> Result<BTreeSet<String>, String> {
    if named.is_empty() {
        return Ok(BTreeSet::new());
    }
    let recorded: Vec<String> = cache.other_projects(me).0.into_iter().map(|p| p.pipeline).collect();
    let mut out = BTreeSet::new();
    for path in named {
        let (given, resolved) = (path.to_string_lossy().into_owned(), Project::of(path).pipeline);
        if resolved == me.pipeline {
            return Err(format!("`--forget {given}` names this project, whose current results gc always keeps; run gc from another project to forget this one"));
        }
        let Some(p) = recorded.iter().find(|r| **r == given || **r == resolved) else {
            let known = if recorded.is_empty() { " none".to_string() } else { recorded.iter().map(|r| format!("\n  {r}")).collect() };
            return Err(format!("`--forget {given}`: no project sharing this cache has that pipeline file; recorded projects:{known}"));
        };
        out.insert(p.clone());
    }
    Ok(out)
}

fn cmd_verify(cli: &Cli, config: &Config, only: &[String], console: &Console) -> CmdResult {
    let Locked { pipeline, env, cache, _lock, states } = locked(cli, config, console)?;
    for s in only {
        if pipeline.stage(s).is_none() {
            return Err(fail(console, exit::USAGE, format!("no stage named `{s}`")));
        }
    }
    let cancel = interrupt_flag();
    let warn = |m: String| console.warn_line(&m);
    let resolver = Resolver::new(&pipeline, &cache, &env, &warn);
    let mut bad = 0;
    for (i, (name, st)) in states.iter().enumerate() {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let not_cached = || fail(console, exit::FAILED, format!("`{name}` is not cached (see any warning above); run `cairn run` first, then verify"));
        let StageState::Fresh { key, .. } = st else { return Err(not_cached()) };
        let manifest = &cache.manifest(key, &warn).map_err(|e| fail(console, exit::IO, e))?.ok_or_else(not_cached)?;
        let damage = stored_damage(&pipeline, &cache, i, manifest).map_err(|e| fail(console, exit::IO, e))?;
        if !damage.is_empty() {
            bad += 1;
            println!("DAMAGED    {name:<12} {}; `cairn run` will recompute it", damage.join("; "));
            continue;
        }
        console.line(&format!("verifying  {name:<12} re-executing…"));
        match reexecute(&pipeline, &cache, &env, &resolver, &states, i, manifest, console, &cancel) {
            Err(message) => return Err(fail(console, exit::FAILED, format!("`{name}` failed while verifying: {message}"))),
            Ok(line) => {
                bad += usize::from(line.starts_with("DIFFERS"));
                println!("{line}");
            }
        }
    }
    if bad > 0 {
        console.error(&format!("{bad} stage(s) are damaged or not reproducible"));
        return Ok(exit::FAILED);
    }
    Ok(exit::OK)
}

/// Reads every stored object stage `i`'s entry uses, its inputs and its
/// outputs, and names each one whose bytes no longer hash to its name
/// (evicting it, so the next run recomputes it).
fn stored_damage(pipeline: &Pipeline, cache: &Cache, i: usize, manifest: &cairn::cache::Manifest) -> Result<Vec<String>, cairn::cache::CacheError> {
    let stage = &pipeline.stages[i];
    let mut objects: Vec<(String, ArtifactHash)> = Vec::new();
    for (slot, refs) in &stage.inputs {
        let hashes = manifest.key_inputs.inputs.get(slot).into_iter().flatten();
        for (r, h) in refs.iter().zip(hashes) {
            if !matches!(r, cairn::kind::InputRef::External { .. }) {
                objects.push((format!("input `{slot}` from `{r}`"), *h));
            }
        }
    }
    objects.extend(manifest.outputs.iter().map(|(o, rec)| (format!("output `{o}`"), rec.hash)));
    let mut damage = Vec::new();
    for (what, h) in objects {
        if !cache.verify_object(&h)? {
            cache.evict_object(&h);
            damage.push(format!("{what} (object {}) in the cache is damaged", h.short()));
        }
    }
    Ok(damage)
}

/// Runs stage `i` again without storing anything and compares each output
/// with the cached one; returns the line to print.
#[allow(clippy::too_many_arguments)]
fn reexecute(
    pipeline: &Pipeline,
    cache: &Cache,
    env: &Environment,
    resolver: &Resolver<'_>,
    states: &[(String, StageState)],
    i: usize,
    manifest: &cairn::cache::Manifest,
    console: &Console,
    cancel: &AtomicBool,
) -> Result<String, String> {
    let stage = &pipeline.stages[i];
    let name = &stage.name;
    let fresh_output = |up: &str, output: &str| match states.iter().find(|(n, _)| n == up).map(|(_, st)| st) {
        Some(StageState::Fresh { manifest, .. }) => manifest.outputs[output].hash,
        _ => unreachable!("upstream of a fresh stage is fresh"),
    };
    let inputs = resolver.input_paths(i, fresh_output).map_err(|e| e.to_string())?;
    let check = || match resolver.check_inputs(i, &manifest.key_inputs) {
        Ok(None) => Ok(()),
        Ok(Some(p)) => Err(cairn::kind::StageFailure::new(p.to_string())),
        Err(e) => Err(cairn::kind::StageFailure::new(e.to_string())),
    };
    let req = ExecRequest {
        stage,
        key_inputs: &manifest.key_inputs,
        inputs,
        seed: pipeline.seed,
        project_dir: &pipeline.root,
        env,
        reporter: console,
        cancel,
        store: false,
        check_inputs: &check,
    };
    let done = execute(cache, req).map_err(|f| f.message)?;
    // Every output is a function of the key (wall-clock figures are
    // metrics, never outputs), so any difference is a reproducibility bug.
    let diffs: Vec<String> = manifest
        .outputs
        .iter()
        .filter(|(out, rec)| done.outputs[*out].hash != rec.hash)
        .map(|(out, rec)| format!("output `{out}` {} → {}", rec.hash.short(), done.outputs[out].hash.short()))
        .collect();
    if !diffs.is_empty() {
        return Ok(format!("DIFFERS    {name:<12} {}", diffs.join("; ")));
    }
    Ok(format!("identical  {name:<12} ({} output(s) bit-identical)", manifest.outputs.len()))
}

fn cmd_cache_verify(cli: &Cli, console: &Console) -> CmdResult {
    let cache = Cache::open_existing(&cli.cache_dir).map_err(|e| fail(console, exit::USAGE, e))?;
    // Accepted but not a cache: the directory is missing or empty.
    if !cairn::cache::store::is_cache(&cli.cache_dir) {
        console.line(&format!("no cache at {} yet: nothing to verify", cli.cache_dir.display()));
    }
    let report = cairn::cache::gc::verify_all(&cache).map_err(|e| fail(console, exit::IO, e))?;
    for (h, problem) in &report.problems {
        println!("{problem:<9} {}", h.to_hex());
    }
    for p in &report.bad_manifests {
        println!("damaged   manifest {}", p.display());
    }
    for r in &report.bad_records {
        println!("damaged   record {}: {}", r.path.display(), r.reason);
    }
    println!(
        "{} object(s) checked, {} damaged, {} missing; {} manifest(s) checked, {} damaged; {} project or run record(s) damaged",
        report.checked,
        report.damaged(),
        report.missing(),
        report.manifests,
        report.bad_manifests.len(),
        report.bad_records.len()
    );
    if !report.bad_records.is_empty() {
        console.line(&format!("  help: {} (gc deletes nothing while one is there)", cairn::cache::projects::UNREADABLE_HELP));
    }
    Ok(if report.problems.is_empty() && report.bad_manifests.is_empty() && report.bad_records.is_empty() { exit::OK } else { exit::FAILED })
}

impl Console {
    pub fn warn_line(&self, message: &str) {
        self.error(&format!("warning: {message}"));
    }
}

