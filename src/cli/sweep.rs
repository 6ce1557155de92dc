//! `cairn run --sweep`: loading one pipeline per grid point and merging
//! them (see `cairn::spec::sweep`), naming targets across the variants,
//! and the sweep's table of params and metrics that `run`, `runs` and
//! `diff` print from the run record.

use std::collections::BTreeMap;

use cairn::env::Environment;
use cairn::history::HistoryRow;
use cairn::spec::sweep::{self, Sweep};
use cairn::spec::Pipeline;

use super::commands::{fail, load};
use super::ui::Console;
use super::{exit, Cli, Config};

/// The pipeline of every point of the `--sweep` flags, merged. A point
/// that does not load names its assignments after the loader's error.
pub fn load_merged(cli: &Cli, config: &Config, flags: &[String], console: &Console) -> Result<(Pipeline, Environment), i32> {
    let axes = flags.iter().map(|f| sweep::parse_axis(f)).collect::<Result<Vec<_>, _>>().map_err(|e| fail(console, exit::USAGE, e))?;
    let points = sweep::points(&axes).map_err(|e| fail(console, exit::USAGE, e))?;
    let quiet = Console::new(true, false);
    let mut loaded = Vec::with_capacity(points.len());
    let mut env = None;
    for (k, point) in points.iter().enumerate() {
        let mut c = config.clone();
        c.sets.extend(point.iter().map(|(t, v)| format!("{t}={v}")));
        let (p, e) = load(cli, &c, if k == 0 { console } else { &quiet }).inspect_err(|_code| {
            console.error(&format!("  in sweep point {} ({})", k + 1, assignments(point)));
        })?;
        loaded.push(p);
        env.get_or_insert(e);
    }
    let mut merged = sweep::merge(loaded, points);
    // Each point's assignments came after the flags all points share.
    let shared = merged.sets.len() - merged.sweep.as_ref().map_or(0, |w| w.points[0].len());
    merged.sets.truncate(shared);
    let w = merged.sweep.as_ref().expect("merged");
    let (shared, own) = (merged.stages.len() - w.variants.len(), per_point(w));
    console.line(&format!("sweep: {} points, {shared} {} shared, {own} {} of each point's own", w.points.len(), plural(shared, "stage"), plural(own, "stage")));
    Ok((merged, env.expect("at least one point")))
}

/// `-j` for a sweep when none is given: the number of points when a stage
/// that differs between them runs on a scheduler, whose nodes bring their
/// own cores; else 1, since points of CPU stages side by side on this
/// machine only share its cores (a 3-point sweep of CPU training at once
/// took 1.1-1.6x as long as one point after another, BENCHMARKS.md).
pub fn default_jobs(pipeline: &Pipeline, w: &Sweep) -> usize {
    let on_scheduler = |stage: &String| {
        let executor = pipeline.executor_of(stage).and_then(|e| pipeline.executors.get(e));
        executor.is_some_and(|e| !matches!(e, cairn::spec::executors::ExecutorSpec::Local))
    };
    if w.variants.keys().any(on_scheduler) {
        w.points.len()
    } else {
        1
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}

fn per_point(w: &Sweep) -> usize {
    w.variants.values().filter(|(_, pts)| pts.contains(&0)).count()
}

fn assignments(point: &[(String, String)]) -> String {
    point.iter().map(|(t, v)| format!("{t}={v}")).collect::<Vec<_>>().join(", ")
}

/// `names` as the merged pipeline calls them: a declared stage that
/// differs between points stands for all its variants.
pub fn expand(pipeline: &Pipeline, names: &[String]) -> Vec<String> {
    let Some(w) = &pipeline.sweep else { return names.to_vec() };
    let mut out = Vec::new();
    for n in names {
        let variants: Vec<String> = w.stages_named(n).map(str::to_string).collect();
        if variants.is_empty() {
            out.push(n.clone());
        } else {
            out.extend(variants);
        }
    }
    out
}

/// One row per point: its assignments, the worst status of its own stages
/// and their headline metrics (accuracies and losses), by declared stage
/// name. `None` when `rows` are not a sweep's.
pub fn table(rows: &[HistoryRow], markdown: bool) -> Option<String> {
    let grid = &rows.first()?.sweep;
    if grid.is_empty() {
        return None;
    }
    let mut header: Vec<String> = vec!["point".into()];
    header.extend(grid[0].iter().map(|(t, _)| t.clone()));
    header.push("status".into());
    let metrics: Vec<BTreeMap<String, f64>> = (0..grid.len()).map(|k| point_metrics(rows, k)).collect();
    let names: std::collections::BTreeSet<&String> = metrics.iter().flat_map(|m| m.keys()).collect();
    header.extend(names.iter().map(|n| n.to_string()));
    let body: Vec<Vec<String>> = grid
        .iter()
        .enumerate()
        .map(|(k, point)| {
            let mut r = vec![(k + 1).to_string()];
            r.extend(point.iter().map(|(_, v)| v.clone()));
            r.push(point_status(rows, k).to_string());
            r.extend(names.iter().map(|n| metrics[k].get(*n).map_or("-".into(), |v| format!("{v:.4}"))));
            r
        })
        .collect();
    Some(if markdown { render_markdown(&header, &body) } else { render_text(&header, &body) })
}

fn own(rows: &[HistoryRow], k: usize) -> impl Iterator<Item = &HistoryRow> {
    rows.iter().filter(move |r| r.sweep_points.contains(&k))
}

fn point_metrics(rows: &[HistoryRow], k: usize) -> BTreeMap<String, f64> {
    let headline = |m: &str| ["acc", "accuracy", "loss"].iter().any(|s| m.ends_with(s));
    own(rows, k)
        .flat_map(|r| {
            let stage = r.stage.split('@').next().unwrap_or(&r.stage).to_string();
            r.metrics.iter().filter(|(m, _)| headline(m)).map(move |(m, v)| (format!("{stage}.{m}"), *v))
        })
        .collect()
}

/// The point's worst outcome: failed, interrupted, skipped, ran, pulled, cached.
fn point_status(rows: &[HistoryRow], k: usize) -> &'static str {
    let order = ["failed", "interrupted", "skipped", "would_run", "ran", "pulled", "cached"];
    own(rows, k).filter_map(|r| order.iter().position(|s| *s == r.status)).min().map_or("-", |i| order[i])
}

fn render_text(header: &[String], body: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len()).map(|c| body.iter().map(|r| r[c].len()).chain([header[c].len()]).max().unwrap_or(0)).collect();
    let line = |cells: &[String]| cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string() + "\n";
    std::iter::once(line(header)).chain(body.iter().map(|r| line(r))).collect()
}

fn render_markdown(header: &[String], body: &[Vec<String>]) -> String {
    let row = |cells: &[String]| format!("| {} |\n", cells.iter().map(|c| c.replace('|', "\\|")).collect::<Vec<_>>().join(" | "));
    let rule = format!("|{}\n", " --- |".repeat(header.len()));
    std::iter::once(row(header)).chain([rule]).chain(body.iter().map(|r| row(r))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(stage: &str, status: &str, points: &[usize], acc: f64) -> HistoryRow {
        HistoryRow {
            run_id: "r".into(),
            started_at: String::new(),
            project: String::new(),
            profile: String::new(),
            sets: Vec::new(),
            stage: stage.into(),
            kind: "train".into(),
            status: status.into(),
            key: String::new(),
            duration_s: 1.0,
            params: serde_json::json!({}),
            metrics: [("val_acc".to_string(), acc), ("seconds".to_string(), 9.0)].into(),
            outputs: BTreeMap::new(),
            sweep: vec![vec![("finetune.lr".into(), "1e-3".into())], vec![("finetune.lr".into(), "1e-4".into())]],
            sweep_points: points.to_vec(),
        }
    }

    #[test]
    fn one_row_per_point_with_its_own_stages_metrics() {
        let rows = [row("pretrain", "cached", &[], 0.5), row("finetune@1", "ran", &[0], 0.9), row("finetune@2", "failed", &[1], 0.1)];
        let t = table(&rows, false).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0].split_whitespace().collect::<Vec<_>>(), ["point", "finetune.lr", "status", "finetune.val_acc"]);
        assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["1", "1e-3", "ran", "0.9000"]);
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["2", "1e-4", "failed", "0.1000"]);
        let md = table(&rows, true).unwrap();
        assert!(md.starts_with("| point | finetune.lr | status | finetune.val_acc |\n| --- | --- | --- | --- |\n"), "{md}");
        let mut plain = rows[0].clone();
        plain.sweep.clear();
        assert!(table(&[plain], false).is_none());
    }
}
