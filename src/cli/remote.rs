//! `cairn push`, `cairn pull`, and the remote's part in `run`, `status`
//! and `explain`: opening the configured remote, reporting it once when it
//! cannot be used, and the transfer summary.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use cairn::cache::{output_hashes, Cache, CacheLock, Manifest};
use cairn::digest::{ArtifactHash, StageKey};
use cairn::plan::{Resolver, StageState};
use cairn::remote::gc::GcOptions;
use cairn::remote::runs::RunRecord;
use cairn::remote::{PushResult, Remote, RemoteConfig, RemoteError};
use cairn::runner::{Outcome, RunOptions, RunReport};
use cairn::spec::Pipeline;

use super::commands::{fail, load, stage_states, CmdResult};
use cairn::kind::Reporter;

use super::ui::{human_bytes, Console};
use super::{exit, Cli, Config, RemoteCmd};

/// The exit code for a remote error: a bad URL is a usage error, the rest I/O.
pub fn exit_code(e: &RemoteError) -> i32 {
    match e {
        RemoteError::Config { .. } => exit::USAGE,
        _ => exit::IO,
    }
}

/// The remote this invocation uses (with `push = true` from the file), or
/// none. Opening makes no request.
pub fn open(config: &Config, pipeline: &Pipeline, console: &Console) -> Result<Option<(Arc<Remote>, bool)>, i32> {
    let cfg = RemoteConfig::resolve(config.remote.as_deref(), pipeline.remote.as_ref()).map_err(|e| fail(console, exit_code(&e), e))?;
    let Some(cfg) = cfg else { return Ok(None) };
    let remote = Remote::open(&cfg).map_err(|e| fail(console, exit_code(&e), e))?;
    Ok(Some((Arc::new(remote), cfg.push)))
}

fn required(config: &Config, pipeline: &Pipeline, console: &Console) -> Result<Arc<Remote>, i32> {
    match open(config, pipeline, console)? {
        Some((r, _)) => Ok(r),
        None => Err(fail(
            console,
            exit::USAGE,
            "no remote cache is configured\n  help: set `url` in a `[remote]` table of pipeline.toml, or pass --remote s3://bucket/prefix (or CAIRN_REMOTE)",
        )),
    }
}

/// After `cairn run`: the run's record on the remote when it pushed (what
/// `cairn remote gc` keeps), the transfer summary, and the exit code when a
/// required remote could not be used.
pub fn after_run(opts: &RunOptions, pipeline: &Pipeline, cache: &Cache, report: &RunReport, console: &Console) -> Option<i32> {
    let remote = opts.remote.as_deref()?;
    let remote_only: Vec<&str> = report
        .stages
        .iter()
        .filter(|s| s.outcome == Outcome::Pulled && s.outputs.values().any(|o| !cache.has_object(&o.hash)))
        .map(|s| s.stage.as_str())
        .collect();
    if !remote_only.is_empty() {
        console.line(&format!(
            "on the remote only (nothing here needed their bytes): {}; `cairn pull {}` downloads them",
            remote_only.join(", "),
            remote_only.join(" ")
        ));
    }
    if opts.push && !opts.dry_run {
        let done = report.stages.iter().filter(|s| matches!(s.outcome, Outcome::Cached | Outcome::Pulled | Outcome::Ran));
        let keys = done.filter_map(|s| Some((s.stage.clone(), s.key?))).collect();
        record_run(remote, &RunRecord::new(&report.run_id, &pipeline.name, keys), console);
    }
    let (down, up) = (remote.bytes_down.load(std::sync::atomic::Ordering::Relaxed), remote.bytes_up.load(std::sync::atomic::Ordering::Relaxed));
    if down > 0 || up > 0 {
        console.line(&format!("remote {}: {} downloaded, {} uploaded", remote.display(), human_bytes(down), human_bytes(up)));
    }
    let cause = remote.down()?;
    if opts.remote_required {
        return Some(fail(console, exit::IO, format!("remote {} could not be used ({cause}) and --remote-required is set", remote.display())));
    }
    console.line(&format!("the remote cache was not used ({cause}): everything came from the local cache or ran here"));
    None
}

/// The stale stages a run would pull, when a remote is configured: one
/// manifest request per stale stage whose key is known, where a stage
/// after one on the remote gets its key from the remote manifest's output
/// hashes; a wave's requests go together (see [`survey`]). A remote that
/// cannot be used is reported once and changes nothing.
pub fn on_remote(
    config: &Config,
    pipeline: &Pipeline,
    cache: &Cache,
    env: &cairn::env::Environment,
    states: &mut [(String, StageState)],
    console: &Console,
) -> Result<BTreeSet<String>, i32> {
    let Some((remote, _)) = open(config, pipeline, console)? else { return Ok(BTreeSet::new()) };
    let (found, local) = remote_keys(&remote, pipeline, cache, env, states, console);
    for (i, st) in local {
        states[i].1 = st;
    }
    Ok(found.into_keys().collect())
}

/// The stale stages the remote has a valid entry for, with its key; and
/// the stages complete here whose key became known only through the
/// remote's manifests (their new, fresh state).
fn remote_keys(
    remote: &Remote,
    pipeline: &Pipeline,
    cache: &Cache,
    env: &cairn::env::Environment,
    states: &[(String, StageState)],
    console: &Console,
) -> (BTreeMap<String, StageKey>, Vec<(usize, StageState)>) {
    let (mut found, mut local) = (BTreeMap::new(), Vec::new());
    let warn = |m: String| console.warn_line(&m);
    let resolver = Resolver::new(pipeline, cache, env, &warn);
    let mut outputs: BTreeMap<String, BTreeMap<String, ArtifactHash>> = BTreeMap::new();
    for wave in pipeline.graph.waves(|_| true) {
        let mut asks = Vec::new();
        for i in wave {
            let (name, stage) = (&states[i].0, &pipeline.stages[i]);
            match &states[i].1 {
                StageState::Fresh { manifest, .. } => {
                    outputs.insert(name.clone(), output_hashes(&manifest.outputs));
                }
                StageState::Stale { .. } => {
                    let Ok(Some(ki)) = resolver.key_inputs(stage, &outputs, false) else { continue };
                    // Its key known only now (upstream is on the remote), the
                    // stage may well be complete here.
                    if let Ok(Some(m)) = resolver.lookup(stage, &ki.key()) {
                        outputs.insert(name.clone(), output_hashes(&m.outputs));
                        local.push((i, StageState::Fresh { key: m.key, manifest: Box::new(m) }));
                    } else {
                        asks.push((stage, ki));
                    }
                }
                StageState::Blocked { .. } => {}
            }
        }
        let answers = remote.peek_entries(&asks, &warn).unwrap_or_else(|e| {
            console.warn_line(&e.to_string());
            asks.iter().map(|_| None).collect()
        });
        for ((stage, _), m) in asks.iter().zip(answers) {
            if let Some(m) = m {
                found.insert(stage.name.clone(), m.key);
                outputs.insert(stage.name.clone(), output_hashes(&m.outputs));
            }
        }
    }
    (found, local)
}

pub fn cmd_push(cli: &Cli, config: &Config, only: &[String], console: &Console) -> CmdResult {
    let (pipeline, env) = load(cli, config, console)?;
    check_names(&pipeline, only, console)?;
    let remote = required(config, &pipeline, console)?;
    let cache = Cache::open_existing(&cli.cache_dir).map_err(|e| fail(console, exit::USAGE, e))?;
    let states = stage_states(&pipeline, &cache, &env, console)?;
    let t0 = Instant::now();
    let (mut pushed, mut present, mut not_cached, mut failed) = (0, 0, 0, 0);
    let mut on_remote = BTreeMap::new();
    let mut fresh = Vec::new();
    let warn = |m: String| console.warn_line(&m);
    for (name, st) in states.iter().filter(|(name, _)| only.is_empty() || only.contains(name)) {
        // A remote manifest holds the key inputs, which `status` leaves out.
        let whole = match st {
            StageState::Fresh { key, .. } => cache.manifest(key, &warn).map_err(|e| fail(console, exit::IO, e))?,
            _ => None,
        };
        match whole {
            Some(m) => fresh.push(m),
            None => {
                not_cached += 1;
                console.line(&format!("not cached {name:<12} nothing to push (run it first)"));
            }
        }
    }
    // The largest first, so the push does not end with one started last.
    fresh.sort_by_key(|m| std::cmp::Reverse(m.outputs.values().map(|o| o.size).sum::<u64>()));
    let progress = |stage: &str, done: u64, total: u64, since: Instant| console.progress(stage, &cairn::runner::transfer_progress("pushing", done, total, since));
    let mut unavailable = None;
    // Each line as its push ends, so a long push shows where it is.
    let mut done = |i: usize, name: &str, result: PushResult| {
        console.finish_bar(name);
        let manifest = &fresh[i];
        match result {
            Ok(_) if remote.down().is_some() => {}
            Ok(s) if s.already => {
                on_remote.insert(name.to_string(), manifest.key);
                present += 1;
                console.line(&format!("present    {name:<12} already on the remote"));
            }
            Ok(s) => {
                on_remote.insert(name.to_string(), manifest.key);
                pushed += 1;
                console.line(&format!("pushed     {name:<12} {} object(s), {}", s.objects_sent, human_bytes(s.bytes_sent)));
            }
            Err(e @ RemoteError::Unavailable { .. }) => unavailable = unavailable.take().or(Some(e)),
            Err(e) => {
                failed += 1;
                console.warn_line(&e.to_string());
            }
        }
    };
    let entries = futures::stream::iter(fresh.iter().map(|m| (m.stage.clone(), m)));
    remote.push_each(&cache, entries, &progress, &mut done);
    if let Some(e) = unavailable {
        return Err(fail(console, exit::IO, e));
    }
    if let Some(cause) = remote.down() {
        return Err(fail(console, exit::IO, format!("remote {}: {cause}", remote.display())));
    }
    record_run(&remote, &RunRecord::new(&format!("push-{:04x}", std::process::id() & 0xffff), &pipeline.name, on_remote), console);
    let up = remote.bytes_up.load(std::sync::atomic::Ordering::Relaxed);
    let counts = format!("{pushed} pushed, {present} already there, {not_cached} not cached, {failed} failed");
    console.line(&transferred(&counts, up, t0, "to", &remote));
    Ok(if failed > 0 { exit::IO } else { exit::OK })
}

pub fn cmd_pull(cli: &Cli, config: &Config, only: &[String], console: &Console) -> CmdResult {
    let (pipeline, env) = load(cli, config, console)?;
    check_names(&pipeline, only, console)?;
    let remote = required(config, &pipeline, console)?;
    let cache = Cache::open(&cli.cache_dir).map_err(|e| fail(console, exit::IO, e))?;
    let _lock = CacheLock::acquire(&cli.cache_dir, true, |_| console.line("waiting for another cairn process to release the cache…"))
        .map_err(|e| fail(console, exit::USAGE, e))?;
    cache.clean_tmp();
    let warn = |m: String| console.warn_line(&m);
    let mut resolver = Resolver::new(&pipeline, &cache, &env, &warn);
    resolver.repair = true;
    let targets: Vec<usize> = only.iter().filter_map(|s| pipeline.index_of(s)).collect();
    let selected = if targets.is_empty() { (0..pipeline.stages.len()).collect() } else { pipeline.graph.ancestors_of(&targets) };
    let t0 = Instant::now();
    let Survey { found, local, mut missing } = survey(&pipeline, &selected, &resolver, &remote, console)?;
    let fetched = fetch_all(&remote, &cache, found, console)?;
    let failed = fetched.iter().filter(|p| p.is_none()).count();
    missing += failed;
    let pulled = fetched.len() - failed;
    cache.stat().save();
    let down = remote.bytes_down.load(std::sync::atomic::Ordering::Relaxed);
    let counts = format!("{pulled} pulled, {local} already local, {missing} not available");
    console.line(&transferred(&counts, down, t0, "from", &remote));
    Ok(exit::OK)
}

/// A push's or pull's closing line: its counts, then the bytes moved since
/// `t0` and their rate.
fn transferred(counts: &str, bytes: u64, t0: Instant, direction: &str, remote: &Remote) -> String {
    let secs = t0.elapsed().as_secs_f64();
    let rate = human_bytes((bytes as f64 / secs.max(1e-3)) as u64);
    format!("{counts}: {} in {secs:.1}s ({rate}/s) {direction} {}", human_bytes(bytes), remote.display())
}

/// What `pull` found for the selected stages: the remote entries to
/// download, and how many stages were local already or are nowhere.
struct Survey {
    found: Vec<Manifest>,
    local: usize,
    missing: usize,
}

/// Every selected stage's manifest, locally or on the remote: a key needs
/// its upstream's output hashes, not its bytes, so the stages are looked at
/// wave by wave ([`cairn::dag::Graph::waves`]), the remote asked about a
/// wave's local misses at once, and the objects downloaded afterwards,
/// all together. Says what it found per stage.
fn survey(pipeline: &Pipeline, selected: &BTreeSet<usize>, resolver: &Resolver, remote: &Remote, console: &Console) -> Result<Survey, i32> {
    let warn = |m: String| console.warn_line(&m);
    let mut outputs: BTreeMap<String, BTreeMap<String, ArtifactHash>> = BTreeMap::new();
    let mut s = Survey { found: Vec::new(), local: 0, missing: 0 };
    for wave in pipeline.graph.waves(|i| selected.contains(&i)) {
        let mut asks = Vec::new();
        for stage in wave.iter().map(|&i| &pipeline.stages[i]) {
            let name = &stage.name;
            let ki = match resolver.key_inputs(stage, &outputs, false) {
                Ok(Some(ki)) => ki,
                Ok(None) => {
                    s.missing += 1;
                    console.line(&format!("unknown    {name:<12} an upstream stage is neither local nor on the remote"));
                    continue;
                }
                Err(e) => {
                    s.missing += 1;
                    console.line(&format!("blocked    {name:<12} {}", e.to_string().lines().next().unwrap_or("")));
                    continue;
                }
            };
            if let Some(m) = resolver.lookup(stage, &ki.key()).map_err(|e| fail(console, exit::IO, e))? {
                s.local += 1;
                console.line(&format!("local      {name:<12} already in the local cache"));
                outputs.insert(name.clone(), output_hashes(&m.outputs));
            } else {
                asks.push((stage, ki));
            }
        }
        let found = remote.peek_entries(&asks, &warn).map_err(|e| fail(console, exit_code(&e), e))?;
        for ((stage, _), m) in asks.iter().zip(found) {
            let Some(m) = m else {
                s.missing += 1;
                console.line(&format!("not there  {:<12} not on the remote (`cairn run` will compute it)", stage.name));
                continue;
            };
            outputs.insert(stage.name.clone(), output_hashes(&m.outputs));
            s.found.push(m);
        }
    }
    Ok(s)
}

/// Downloads the objects of every entry in `found` at once, with one
/// progress bar, and says what became of each.
fn fetch_all(remote: &Remote, cache: &Cache, found: Vec<Manifest>, console: &Console) -> Result<Vec<Option<cairn::remote::Pulled>>, i32> {
    let warn = |m: String| console.warn_line(&m);
    let names: Vec<String> = found.iter().map(|m| m.stage.clone()).collect();
    let t0 = Instant::now();
    let bar = format!("{} stage(s)", found.len());
    let progress = |done: u64, total: u64| console.progress(&bar, &cairn::runner::transfer_progress("pulling", done, total, t0));
    let pulled = remote.fetch_entries(cache, found, &warn, &progress);
    console.finish_bar(&bar);
    let pulled = pulled.map_err(|e| fail(console, exit_code(&e), e))?;
    for (name, p) in names.iter().zip(&pulled) {
        match p {
            Some(p) => console.line(&format!("pulled     {name:<12} {}", human_bytes(p.bytes))),
            None => console.line(&format!("not there  {name:<12} its objects could not be had (`cairn run` will compute it)")),
        }
    }
    Ok(pulled)
}

fn check_names(pipeline: &Pipeline, names: &[String], console: &Console) -> Result<(), i32> {
    for s in names {
        if pipeline.stage(s).is_none() {
            return Err(fail(console, exit::USAGE, format!("no stage named `{s}`")));
        }
    }
    Ok(())
}

/// Records a run that pushed; a failure is a warning (its results are on
/// the remote, only `remote gc` does not know this run needs them).
fn record_run(remote: &Remote, record: &RunRecord, console: &Console) {
    if remote.down().is_some() {
        return;
    }
    if let Err(e) = remote.push_run_record(record) {
        console.warn_line(&format!("{e}; `cairn remote gc` will not count this run"));
    }
}

pub fn cmd_remote(cli: &Cli, command: &RemoteCmd, console: &Console) -> CmdResult {
    match command {
        RemoteCmd::Verify { all, config } => cmd_remote_verify(cli, config, *all, console),
        RemoteCmd::Gc { keep_runs, delete, grace_hours, config } => {
            if !(grace_hours.is_finite() && *grace_hours >= 0.0) {
                return Err(fail(console, exit::USAGE, format!("--grace-hours {grace_hours}: expected a number of hours, 0 or more")));
            }
            let grace = std::time::Duration::from_secs_f64(grace_hours * 3600.0);
            cmd_remote_gc(cli, config, GcOptions { keep_runs: *keep_runs, grace, delete: *delete }, console)
        }
    }
}

/// `cairn remote verify`: exit 0 when everything checked is intact, 1 when
/// something is damaged or missing, 3 when the remote cannot be used.
fn cmd_remote_verify(cli: &Cli, config: &Config, all: bool, console: &Console) -> CmdResult {
    let (pipeline, env) = load(cli, config, console)?;
    let remote = required(config, &pipeline, console)?;
    let keys: Option<Vec<StageKey>> = if all {
        None
    } else {
        let cache = Cache::open_read(&cli.cache_dir);
        let states = stage_states(&pipeline, &cache, &env, console)?;
        let (mut keys, local) = remote_keys(&remote, &pipeline, &cache, &env, &states, console);
        keys.extend(local.into_iter().filter_map(|(i, st)| match st {
            StageState::Fresh { key, .. } => Some((pipeline.stages[i].name.clone(), key)),
            _ => None,
        }));
        for (name, st) in &states {
            if let StageState::Fresh { key, .. } = st {
                keys.insert(name.clone(), *key);
            }
        }
        if let Some(cause) = remote.down() {
            return Err(fail(console, exit::IO, format!("remote {}: {cause}", remote.display())));
        }
        Some(keys.into_values().collect())
    };
    let t0 = Instant::now();
    let progress = |done: u64| console.progress("verify", &cairn::runner::transfer_progress("re-hashing", done, done, t0));
    let result = remote.verify(keys.as_deref(), all, &progress);
    console.finish_bar("verify");
    let report = result.map_err(|e| fail(console, exit_code(&e), e))?;
    for p in &report.problems {
        println!("{p}");
    }
    let secs = t0.elapsed().as_secs_f64();
    let absent = if report.absent > 0 { format!("; {} of the pipeline's entries are not on the remote", report.absent) } else { String::new() };
    println!(
        "{} manifest(s), {} object(s) checked on {}: {} problem(s); {} re-hashed in {secs:.1}s ({}/s){absent}",
        report.manifests,
        report.objects,
        remote.display(),
        report.problems.len(),
        human_bytes(report.bytes),
        human_bytes((report.bytes as f64 / secs.max(1e-3)) as u64),
    );
    Ok(if report.problems.is_empty() { exit::OK } else { exit::FAILED })
}

/// `cairn remote gc`: what the last N pushed runs need stays; the rest is
/// listed, and deleted only with `--delete`.
fn cmd_remote_gc(cli: &Cli, config: &Config, opts: GcOptions, console: &Console) -> CmdResult {
    let (pipeline, _env) = load(cli, config, console)?;
    let remote = required(config, &pipeline, console)?;
    let report = remote.gc(opts).map_err(|e| fail(console, exit_code(&e), e))?;
    for bad in &report.bad_runs {
        console.warn_line(&format!("run record {bad} does not parse; kept (it is older than the runs kept, so what it lists would go either way)"));
    }
    let verb = if opts.delete { "deleted" } else { "would delete" };
    println!(
        "{verb} {} manifest(s), {} object(s) ({}), {} run record(s) from {}",
        report.manifests.count,
        report.objects.count,
        human_bytes(report.objects.bytes),
        report.runs.count,
        remote.display()
    );
    if report.jobs.count > 0 {
        println!("{verb} {} file(s) of finished jobs ({})", report.jobs.count, human_bytes(report.jobs.bytes));
    }
    println!(
        "kept {} run(s): {} manifest(s), {} object(s) ({}); nothing younger than {:.0} h is deleted",
        report.runs_kept,
        report.kept_manifests.count,
        report.kept_objects.count,
        human_bytes(report.kept_objects.bytes),
        opts.grace.as_secs_f64() / 3600.0
    );
    if !opts.delete && report.manifests.count + report.objects.count + report.runs.count + report.jobs.count > 0 {
        println!("dry run: nothing was deleted; add --delete to delete the above (the remote is shared: check first)");
    }
    Ok(exit::OK)
}
