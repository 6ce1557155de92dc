//! The run history: one Parquet file per `cairn run` under `cache/runs/`,
//! one row per stage, so `cairn runs` and `cairn diff` — or polars, pandas
//! and DuckDB — can compare params and metrics across runs. A sweep's run
//! (`run --sweep`) also records its grid (`sweep`, the same in every row)
//! and, for each stage that differs between points, the points it belongs
//! to (`sweep_points`; empty for shared stages). Each row names the
//! project (its pipeline file, see [`crate::cache::projects`]) whose run
//! it was, so projects sharing a cache each see their own history.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cache::Project;
use crate::formats::table::{Column, Table, TableError};
use crate::runner::{Outcome, RunReport};
use crate::spec::Pipeline;

/// One stage of one run, as read back.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    pub run_id: String,
    pub started_at: String,
    /// The project's pipeline file; empty in runs recorded before projects
    /// were (see [`Project::owns`]).
    pub project: String,
    pub profile: String,
    /// The `--set` overrides the run was given, saved ones first.
    pub sets: Vec<String>,
    pub stage: String,
    pub kind: String,
    pub status: String,
    pub key: String,
    pub duration_s: f64,
    pub params: serde_json::Value,
    pub metrics: BTreeMap<String, f64>,
    pub outputs: BTreeMap<String, String>,
    /// The run's sweep points, each `(STAGE.PARAM, value)`s; empty when
    /// the run was no sweep.
    pub sweep: Vec<Vec<(String, String)>>,
    /// The points (0-based) this stage belongs to; empty when shared.
    pub sweep_points: Vec<usize>,
}

fn runs_dir(cache_root: &Path) -> PathBuf {
    cache_root.join("runs")
}

/// The file that records run `run_id`.
pub fn record_path(cache_root: &Path, run_id: &str) -> PathBuf {
    runs_dir(cache_root).join(format!("{run_id}.parquet"))
}

fn status_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Cached => "cached",
        Outcome::Pulled => "pulled",
        Outcome::Ran => "ran",
        Outcome::WouldRun => "would_run",
        Outcome::Failed { .. } => "failed",
        Outcome::Skipped { .. } => "skipped",
        Outcome::Interrupted => "interrupted",
    }
}

/// The run's rows as the history keeps them, with each stage's params
/// from `pipeline` (the merged one of a sweep). What `record` writes, and
/// what a sweep's closing table is built from (so an all-cached sweep,
/// which writes no record, still gets its table).
pub fn rows(report: &RunReport, pipeline: &Pipeline) -> Vec<HistoryRow> {
    let sweep = pipeline.sweep.as_ref();
    let grid = sweep.map(|w| w.points.clone()).unwrap_or_default();
    let project = Project::of(&pipeline.file).pipeline;
    report
        .stages
        .iter()
        .map(|r| HistoryRow {
            run_id: report.run_id.clone(),
            started_at: report.started_at.clone(),
            project: project.clone(),
            profile: report.profile.clone().unwrap_or_default(),
            sets: pipeline.sets.clone(),
            stage: r.stage.clone(),
            kind: r.kind.clone(),
            status: status_name(&r.outcome).to_string(),
            key: r.key.map(|k| k.to_hex()).unwrap_or_default(),
            duration_s: r.duration_s,
            params: pipeline.stage(&r.stage).map(|s| s.checked.params.clone()).unwrap_or_default(),
            metrics: r.metrics.clone(),
            outputs: r.outputs.iter().map(|(k, o)| (k.clone(), o.hash.to_hex())).collect(),
            sweep: grid.clone(),
            sweep_points: sweep.and_then(|w| w.variants.get(&r.stage)).map(|(_, p)| p.clone()).unwrap_or_default(),
        })
        .collect()
}

/// Appends a run of `pipeline` to the history.
pub fn record(cache: &crate::cache::Cache, report: &RunReport, pipeline: &Pipeline) -> Result<PathBuf, TableError> {
    let rows = rows(report, pipeline);
    let json = |v: &dyn Fn(&HistoryRow) -> String| Column::Str(rows.iter().map(v).collect());
    let text = |v: &dyn Fn(&HistoryRow) -> &String| Column::Str(rows.iter().map(|r| v(r).clone()).collect());
    let table = Table::new()
        .with("run_id", text(&|r| &r.run_id))
        .with("started_at", text(&|r| &r.started_at))
        .with("finished_at", json(&|_| report.finished_at.clone()))
        .with("project", text(&|r| &r.project))
        .with("profile", text(&|r| &r.profile))
        .with("sets", json(&|r| serde_json::to_string(&r.sets).unwrap_or_default()))
        .with("stage", text(&|r| &r.stage))
        .with("kind", text(&|r| &r.kind))
        .with("status", text(&|r| &r.status))
        .with("key", text(&|r| &r.key))
        .with("duration_s", Column::F64(rows.iter().map(|r| r.duration_s).collect()))
        .with("params", json(&|r| r.params.to_string()))
        .with("metrics", json(&|r| serde_json::to_string(&r.metrics).unwrap_or_default()))
        .with("outputs", json(&|r| serde_json::to_string(&r.outputs).unwrap_or_default()))
        // Empty strings where the run was no sweep, or the stage is shared
        // (every sweep has a point, every variant belongs to one).
        .with("sweep", json(&|r| if r.sweep.is_empty() { String::new() } else { serde_json::to_string(&r.sweep).unwrap_or_default() }))
        .with("sweep_points", json(&|r| if r.sweep_points.is_empty() { String::new() } else { serde_json::to_string(&r.sweep_points).unwrap_or_default() }));
    let path = record_path(cache.root(), &report.run_id);
    let tmp = cache.root().join("tmp").join(format!("{}.parquet", report.run_id));
    table.write(&tmp)?;
    std::fs::rename(&tmp, &path).map_err(|source| TableError::Io { path: path.clone(), source })?;
    Ok(path)
}

/// Run ids, oldest first.
pub fn run_ids(cache_root: &Path) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(runs_dir(cache_root))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".parquet").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The rows of one run.
pub fn load(cache_root: &Path, run_id: &str) -> Result<Vec<HistoryRow>, TableError> {
    let t = Table::read(&record_path(cache_root, run_id))?;
    let strs = |name: &str| -> Vec<String> {
        match t.column(name) {
            Some(Column::Str(v)) => v.clone(),
            _ => vec![String::new(); t.num_rows()],
        }
    };
    let (grid, points) = (strs("sweep"), strs("sweep_points"));
    let (project, sets) = (strs("project"), strs("sets"));
    let (ids, started, profile, stage, kind, status, key, params, metrics, outputs) = (
        strs("run_id"),
        strs("started_at"),
        strs("profile"),
        strs("stage"),
        strs("kind"),
        strs("status"),
        strs("key"),
        strs("params"),
        strs("metrics"),
        strs("outputs"),
    );
    let durations = match t.column("duration_s") {
        Some(Column::F64(v)) => v.clone(),
        _ => vec![0.0; t.num_rows()],
    };
    Ok((0..t.num_rows())
        .map(|i| HistoryRow {
            run_id: ids[i].clone(),
            started_at: started[i].clone(),
            project: project[i].clone(),
            profile: profile[i].clone(),
            sets: serde_json::from_str(&sets[i]).unwrap_or_default(),
            stage: stage[i].clone(),
            kind: kind[i].clone(),
            status: status[i].clone(),
            key: key[i].clone(),
            duration_s: durations[i],
            params: serde_json::from_str(&params[i]).unwrap_or_default(),
            metrics: serde_json::from_str(&metrics[i]).unwrap_or_default(),
            outputs: serde_json::from_str(&outputs[i]).unwrap_or_default(),
            sweep: serde_json::from_str(&grid[i]).unwrap_or_default(),
            sweep_points: serde_json::from_str(&points[i]).unwrap_or_default(),
        })
        .collect())
}
