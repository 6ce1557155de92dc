//! `cairn push`, `cairn pull`, and the remote's part in `run`, `status`
//! and `explain`: opening the configured remote, reporting it once when it
//! cannot be used, and the transfer summary.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use cairn::cache::{Cache, CacheLock};
use cairn::digest::ArtifactHash;
use cairn::plan::{Resolver, StageState};
use cairn::remote::{Remote, RemoteConfig, RemoteError};
use cairn::runner::RunOptions;
use cairn::spec::Pipeline;

use super::commands::{fail, load, stage_states, CmdResult};
use cairn::kind::Reporter;

use super::ui::{human_bytes, Console};
use super::{exit, Cli, Config};

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

/// After `cairn run`: the transfer summary, and the exit code when a
/// required remote could not be used.
pub fn after_run(opts: &RunOptions, console: &Console) -> Option<i32> {
    let remote = opts.remote.as_deref()?;
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
/// hashes. A remote that cannot be used is reported once and changes
/// nothing.
pub fn on_remote(
    config: &Config,
    pipeline: &Pipeline,
    cache: &Cache,
    env: &cairn::env::Environment,
    states: &[(String, StageState)],
    console: &Console,
) -> Result<BTreeSet<String>, i32> {
    let mut found = BTreeSet::new();
    let Some((remote, _)) = open(config, pipeline, console)? else { return Ok(found) };
    let warn = |m: String| console.warn_line(&m);
    let resolver = Resolver::new(pipeline, cache, env, &warn);
    let mut outputs: BTreeMap<String, BTreeMap<String, ArtifactHash>> = BTreeMap::new();
    for (i, (name, st)) in states.iter().enumerate() {
        let m = match st {
            StageState::Fresh { manifest, .. } => manifest.as_ref().clone(),
            StageState::Stale { .. } => {
                let stage = &pipeline.stages[i];
                let Ok(Some(ki)) = resolver.key_inputs(stage, &outputs, false) else { continue };
                match remote.peek_entry(stage, &ki, &ki.key(), &warn) {
                    Ok(Some(m)) => {
                        found.insert(name.clone());
                        m
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        console.warn_line(&e.to_string());
                        continue;
                    }
                }
            }
            StageState::Blocked { .. } => continue,
        };
        outputs.insert(name.clone(), m.outputs.iter().map(|(k, o)| (k.clone(), o.hash)).collect());
    }
    Ok(found)
}

pub fn cmd_push(cli: &Cli, config: &Config, only: &[String], console: &Console) -> CmdResult {
    let (pipeline, env) = load(cli, config, console)?;
    check_names(&pipeline, only, console)?;
    let remote = required(config, &pipeline, console)?;
    let cache = Cache::open_existing(&cli.cache_dir).map_err(|e| fail(console, exit::USAGE, e))?;
    let states = stage_states(&pipeline, &cache, &env, console)?;
    let t0 = Instant::now();
    let (mut pushed, mut present, mut not_cached, mut failed) = (0, 0, 0, 0);
    for (name, st) in &states {
        if !only.is_empty() && !only.contains(name) {
            continue;
        }
        let StageState::Fresh { manifest, .. } = st else {
            not_cached += 1;
            console.line(&format!("not cached {name:<12} nothing to push (run it first)"));
            continue;
        };
        let progress = |done: u64, total: u64| console.progress(name, &cairn::runner::transfer_progress("pushing", done, total));
        let result = remote.push_entry(&cache, manifest, &progress);
        console.finish_bar(name);
        match result {
            Ok(_) if remote.down().is_some() => break,
            Ok(s) if s.already => {
                present += 1;
                console.line(&format!("present    {name:<12} already on the remote"));
            }
            Ok(s) => {
                pushed += 1;
                console.line(&format!("pushed     {name:<12} {} object(s), {}", s.objects_sent, human_bytes(s.bytes_sent)));
            }
            Err(e @ RemoteError::Unavailable { .. }) => return Err(fail(console, exit::IO, e)),
            Err(e) => {
                failed += 1;
                console.warn_line(&e.to_string());
            }
        }
    }
    if let Some(cause) = remote.down() {
        return Err(fail(console, exit::IO, format!("remote {}: {cause}", remote.display())));
    }
    let up = remote.bytes_up.load(std::sync::atomic::Ordering::Relaxed);
    console.line(&format!(
        "{pushed} pushed, {present} already there, {not_cached} not cached, {failed} failed: {} in {:.1}s ({}/s) to {}",
        human_bytes(up),
        t0.elapsed().as_secs_f64(),
        human_bytes((up as f64 / t0.elapsed().as_secs_f64().max(1e-3)) as u64),
        remote.display()
    ));
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
    let mut outputs: BTreeMap<String, BTreeMap<String, ArtifactHash>> = BTreeMap::new();
    let (mut pulled, mut local, mut missing) = (0, 0, 0);
    for (i, stage) in pipeline.stages.iter().enumerate() {
        if !selected.contains(&i) {
            continue;
        }
        let name = &stage.name;
        let ki = match resolver.key_inputs(stage, &outputs, false) {
            Ok(Some(ki)) => ki,
            Ok(None) => {
                missing += 1;
                console.line(&format!("unknown    {name:<12} an upstream stage is neither local nor on the remote"));
                continue;
            }
            Err(e) => {
                missing += 1;
                console.line(&format!("blocked    {name:<12} {}", e.to_string().lines().next().unwrap_or("")));
                continue;
            }
        };
        let key = ki.key();
        let m = match resolver.lookup(stage, &key).map_err(|e| fail(console, exit::IO, e))? {
            Some(m) => {
                local += 1;
                console.line(&format!("local      {name:<12} already in the local cache"));
                m
            }
            None => match pull_one(&remote, &cache, stage, &ki, &key, console) {
                Ok(Some(p)) => {
                    pulled += 1;
                    console.line(&format!("pulled     {name:<12} {}", human_bytes(p.bytes)));
                    p.manifest
                }
                Ok(None) => {
                    missing += 1;
                    console.line(&format!("not there  {name:<12} not on the remote (`cairn run` will compute it)"));
                    continue;
                }
                Err(e) => return Err(fail(console, exit_code(&e), e)),
            },
        };
        outputs.insert(name.clone(), m.outputs.iter().map(|(k, o)| (k.clone(), o.hash)).collect());
    }
    cache.stat().save();
    let down = remote.bytes_down.load(std::sync::atomic::Ordering::Relaxed);
    console.line(&format!(
        "{pulled} pulled, {local} already local, {missing} not available: {} in {:.1}s ({}/s) from {}",
        human_bytes(down),
        t0.elapsed().as_secs_f64(),
        human_bytes((down as f64 / t0.elapsed().as_secs_f64().max(1e-3)) as u64),
        remote.display()
    ));
    Ok(exit::OK)
}

/// Pulls one stage's entry with a progress bar.
fn pull_one(
    remote: &Remote,
    cache: &Cache,
    stage: &cairn::spec::Stage,
    ki: &cairn::key::KeyInputs,
    key: &cairn::digest::StageKey,
    console: &Console,
) -> Result<Option<cairn::remote::Pulled>, RemoteError> {
    let warn = |m: String| console.warn_line(&m);
    let progress = |done: u64, total: u64| console.progress(&stage.name, &cairn::runner::transfer_progress("pulling", done, total));
    let pulled = remote.pull_entry(cache, stage, ki, key, &warn, &progress);
    console.finish_bar(&stage.name);
    pulled
}

fn check_names(pipeline: &Pipeline, names: &[String], console: &Console) -> Result<(), i32> {
    for s in names {
        if pipeline.stage(s).is_none() {
            return Err(fail(console, exit::USAGE, format!("no stage named `{s}`")));
        }
    }
    Ok(())
}
