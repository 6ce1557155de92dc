//! The run history: one Parquet file per `cairn run` under `cache/runs/`,
//! one row per stage, so `cairn runs` and `cairn diff` — or polars, pandas
//! and DuckDB — can compare params and metrics across runs. A sweep's run
//! (`run --sweep`) also records its grid (`sweep`, the same in every row)
//! and, for each stage that differs between points, the points it belongs
//! to (`sweep_points`; empty for shared stages).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::formats::table::{Column, Table, TableError};
use crate::runner::{Outcome, RunReport};
use crate::spec::sweep::Sweep;

/// One stage of one run, as read back.
#[derive(Clone, Debug)]
pub struct HistoryRow {
    pub run_id: String,
    pub started_at: String,
    pub profile: String,
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

/// Appends a run to the history; `sweep` is the merged pipeline's, if any.
pub fn record(cache: &crate::cache::Cache, report: &RunReport, sweep: Option<&Sweep>) -> Result<PathBuf, TableError> {
    let s = &report.stages;
    let grid = sweep.map(|w| serde_json::to_string(&w.points).unwrap_or_default()).unwrap_or_default();
    let points = |stage: &str| sweep.and_then(|w| w.variants.get(stage)).map(|(_, p)| serde_json::to_string(p).unwrap_or_default());
    let col_str = |f: &dyn Fn(&crate::runner::StageReport) -> String| Column::Str(s.iter().map(f).collect());
    let table = Table::new()
        .with("run_id", col_str(&|_| report.run_id.clone()))
        .with("started_at", col_str(&|_| report.started_at.clone()))
        .with("finished_at", col_str(&|_| report.finished_at.clone()))
        .with("profile", col_str(&|_| report.profile.clone().unwrap_or_default()))
        .with("stage", col_str(&|r| r.stage.clone()))
        .with("kind", col_str(&|r| r.kind.clone()))
        .with("status", col_str(&|r| status_name(&r.outcome).to_string()))
        .with("key", col_str(&|r| r.key.map(|k| k.to_hex()).unwrap_or_default()))
        .with("duration_s", Column::F64(s.iter().map(|r| r.duration_s).collect()))
        .with("params", col_str(&|r| r.params.to_string()))
        .with("metrics", col_str(&|r| serde_json::to_string(&r.metrics).unwrap_or_default()))
        .with(
            "outputs",
            col_str(&|r| {
                let m: BTreeMap<&String, String> = r.outputs.iter().map(|(k, o)| (k, o.hash.to_hex())).collect();
                serde_json::to_string(&m).unwrap_or_default()
            }),
        )
        .with("sweep", col_str(&|_| grid.clone()))
        .with("sweep_points", col_str(&|r| points(&r.stage).unwrap_or_default()));
    let path = runs_dir(cache.root()).join(format!("{}.parquet", report.run_id));
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
    let path = runs_dir(cache_root).join(format!("{run_id}.parquet"));
    let t = Table::read(&path)?;
    let strs = |name: &str| -> Vec<String> {
        match t.column(name) {
            Some(Column::Str(v)) => v.clone(),
            _ => vec![String::new(); t.num_rows()],
        }
    };
    let (grid, points) = (strs("sweep"), strs("sweep_points"));
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
            profile: profile[i].clone(),
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
