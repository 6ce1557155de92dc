//! `cairn runs`: the run history, read back from Parquet (`cairn diff`
//! compares two of its runs, see `diff.rs`); a sweep's run is followed by
//! its table of points. Both show this project's runs: those recorded
//! under its pipeline file (and those recorded before runs named one),
//! not those of other projects sharing the cache.

use std::collections::BTreeMap;

use cairn::cache::Project;
use cairn::history::{self, HistoryRow};
use cairn::spec::Pipeline;

use super::commands::CmdResult;
use super::exit;
use super::ui::when;
use super::Cli;

fn headline(rows: &[HistoryRow]) -> String {
    let mut metrics: BTreeMap<String, f64> = BTreeMap::new();
    for r in rows {
        for (k, v) in &r.metrics {
            if k.ends_with("acc") || k.ends_with("accuracy") {
                metrics.insert(format!("{}.{k}", r.stage), *v);
            }
        }
    }
    metrics.iter().map(|(k, v)| format!("{k}={v:.4}")).collect::<Vec<_>>().join(" ")
}

pub fn runs(cli: &Cli, limit: usize, json: bool, all_projects: bool) -> CmdResult {
    let me = Project::of(&cli.file);
    let mut newest: Vec<(String, Vec<HistoryRow>)> =
        if all_projects { runs_newest_first(cli).take(limit).collect() } else { own_runs_newest_first(cli).take(limit).collect() };
    newest.reverse();
    let mut out = Vec::new();
    for (id, rows) in &newest {
        let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
        let project = rows.first().map(|r| r.project.as_str()).unwrap_or_default();
        if json {
            out.push(serde_json::json!({
                "run_id": id,
                "project": if project.is_empty() { None } else { Some(project) },
                "started_at": rows.first().map(|r| r.started_at.clone()).unwrap_or_default(),
                "profile": rows.first().map(|r| r.profile.clone()).unwrap_or_default(),
                "ran": count("ran"), "cached": count("cached"), "pulled": count("pulled"), "failed": count("failed"),
                "stages": rows.iter().map(|r| serde_json::json!({"stage": r.stage, "status": r.status, "metrics": r.metrics, "duration_s": r.duration_s, "sweep_points": r.sweep_points})).collect::<Vec<_>>(),
                "sweep": rows.first().map(|r| r.sweep.clone()).unwrap_or_default(),
            }));
        } else {
            println!(
                "{id}  {}  ran {:>2} cached {:>2}{} failed {:>2}  {}",
                rows.first().map(|r| when(&r.started_at)).unwrap_or_default(),
                count("ran"),
                count("cached"),
                match count("pulled") {
                    0 => String::new(),
                    n => format!(" pulled {n:>2}"),
                },
                count("failed"),
                headline(rows)
            );
            if !me.owns(project) {
                println!("    of {project}");
            }
            if let Some(table) = super::sweep::table(rows, false) {
                println!("{}", super::ui::indent(&table));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if newest.is_empty() {
        println!("no runs of {} recorded in {}", cli.file.display(), cli.cache_dir.display());
    }
    Ok(exit::OK)
}

/// Every readable run in the cache, newest first, read as they are taken.
fn runs_newest_first(cli: &Cli) -> impl Iterator<Item = (String, Vec<HistoryRow>)> + '_ {
    let ids = history::run_ids(&cli.cache_dir);
    ids.into_iter().rev().filter_map(move |id| Some((id.clone(), readable(cli, &id)?)))
}

/// This project's readable runs, newest first, read as they are taken.
pub(super) fn own_runs_newest_first(cli: &Cli) -> impl Iterator<Item = (String, Vec<HistoryRow>)> + '_ {
    let me = Project::of(&cli.file);
    runs_newest_first(cli).filter(move |(_, rows)| rows.first().is_some_and(|r| me.owns(&r.project)))
}

/// Where the newest run of this project was given `--set` flags or a
/// profile that this command lacks, a note naming them and how to keep
/// them: a stage run with `--set load.source=...` is not fresh for a
/// command without it, which otherwise reads as a lost result.
pub(super) fn missing_flags_note(cli: &Cli, pipeline: &Pipeline) -> Option<String> {
    let (id, rows) = own_runs_newest_first(cli).next()?;
    let last = rows.first()?;
    let profile = pipeline.profile.as_ref().map_or("", |(name, _)| name.as_str());
    let lacks_sets = last.sets.iter().any(|s| !pipeline.sets.contains(s));
    if !lacks_sets && (last.profile.is_empty() || last.profile == profile) {
        return None;
    }
    let mut flags: Vec<String> = last.sets.iter().map(|s| format!("--set {}", cairn::shell::word(s))).collect();
    if !last.profile.is_empty() && last.profile != profile {
        flags.push(format!("--profile {}", cairn::shell::word(&last.profile)));
    }
    let flags = flags.join(" ");
    Some(format!(
        "note: the last run ({id}, {}) ran with `{flags}`, which this command lacks\n  help: give them again, or keep them for every later command: `cairn run --save-overrides {flags}`",
        when(&last.started_at)
    ))
}

/// The rows of run `id`, or `None` after a warning when its record cannot
/// be read: one damaged file must not hide the rest of the history.
pub(super) fn readable(cli: &Cli, id: &str) -> Option<Vec<HistoryRow>> {
    match history::load(&cli.cache_dir, id) {
        Ok(rows) => Some(rows),
        Err(e) => {
            eprintln!("warning: skipping damaged run record {id}: {e}");
            None
        }
    }
}
