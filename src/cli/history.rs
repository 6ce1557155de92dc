//! `cairn runs` and `cairn diff`: the run history, read back from Parquet.

use std::collections::{BTreeMap, BTreeSet};

use cairn::history::{self, HistoryRow};

use super::commands::CmdResult;
use super::exit;
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

pub fn runs(cli: &Cli, limit: usize, json: bool) -> CmdResult {
    let ids = history::run_ids(&cli.cache_dir);
    let mut out = Vec::new();
    for id in ids.iter().rev().take(limit).rev() {
        let Some(rows) = readable(cli, id) else { continue };
        let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
        if json {
            out.push(serde_json::json!({
                "run_id": id,
                "started_at": rows.first().map(|r| r.started_at.clone()).unwrap_or_default(),
                "profile": rows.first().map(|r| r.profile.clone()).unwrap_or_default(),
                "ran": count("ran"), "cached": count("cached"), "pulled": count("pulled"), "failed": count("failed"),
                "stages": rows.iter().map(|r| serde_json::json!({"stage": r.stage, "status": r.status, "metrics": r.metrics, "duration_s": r.duration_s})).collect::<Vec<_>>(),
            }));
        } else {
            println!(
                "{id}  {}  ran {:>2} cached {:>2}{} failed {:>2}  {}",
                rows.first().map(|r| r.started_at.as_str()).unwrap_or(""),
                count("ran"),
                count("cached"),
                match count("pulled") {
                    0 => String::new(),
                    n => format!(" pulled {n:>2}"),
                },
                count("failed"),
                headline(&rows)
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else if ids.is_empty() {
        println!("no runs recorded in {}", cli.cache_dir.display());
    }
    Ok(exit::OK)
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// The rows of run `id`, or `None` after a warning when its record cannot
/// be read: one damaged file must not hide the rest of the history.
fn readable(cli: &Cli, id: &str) -> Option<Vec<HistoryRow>> {
    match history::load(&cli.cache_dir, id) {
        Ok(rows) => Some(rows),
        Err(e) => {
            eprintln!("warning: skipping damaged run record {id}: {e}");
            None
        }
    }
}

/// A run the user named (by id or a prefix of it); a damaged one is an
/// error, since it cannot be compared.
fn named(cli: &Cli, ids: &[String], given: &str) -> Result<(String, Vec<HistoryRow>), i32> {
    let Some(id) = ids.iter().find(|id| id.starts_with(given)) else {
        eprintln!("error: no recorded run matches `{given}`; see `cairn runs`");
        return Err(exit::USAGE);
    };
    match history::load(&cli.cache_dir, id) {
        Ok(rows) => Ok((id.clone(), rows)),
        Err(e) => {
            eprintln!("error: the record of run {id} is damaged: {e}\n  help: name another run (see `cairn runs`), or delete the file");
            Err(exit::IO)
        }
    }
}

/// The two runs to compare: those named, the newest readable ones standing
/// in for any not named.
fn pick(cli: &Cli, ids: &[String], a: Option<&str>, b: Option<&str>) -> Result<[(String, Vec<HistoryRow>); 2], i32> {
    let (a, b) = (a.map(|g| named(cli, ids, g)).transpose()?, b.map(|g| named(cli, ids, g)).transpose()?);
    let taken: Vec<String> = a.iter().chain(b.iter()).map(|(id, _)| id.clone()).collect();
    let mut newest = ids.iter().rev().filter(|id| !taken.contains(id)).filter_map(|id| Some((id.clone(), readable(cli, id)?)));
    // Without names: the newest against the one before it.
    let b = b.or_else(|| newest.next());
    let a = a.or_else(|| newest.next());
    match (a, b) {
        (Some(a), Some(b)) => Ok([a, b]),
        _ => {
            eprintln!("error: need two readable recorded runs to compare (have {}); see `cairn runs`", ids.len());
            Err(exit::USAGE)
        }
    }
}

pub fn diff(cli: &Cli, a: Option<&str>, b: Option<&str>) -> CmdResult {
    let ids = history::run_ids(&cli.cache_dir);
    let [(ra, rows_a), (rb, rows_b)] = pick(cli, &ids, a, b)?;
    println!("{:<40} {:>24} {:>24}", "", ra, rb);
    let stages: BTreeSet<&String> = rows_a.iter().chain(rows_b.iter()).map(|r| &r.stage).collect();
    for stage in stages {
        let find = |rows: &[HistoryRow]| rows.iter().find(|r| &r.stage == stage).cloned();
        let (x, y) = (find(&rows_a), find(&rows_b));
        let mut lines = Vec::new();
        let (mut pa, mut pb) = (BTreeMap::new(), BTreeMap::new());
        if let Some(x) = &x {
            flatten("", &x.params, &mut pa);
        }
        if let Some(y) = &y {
            flatten("", &y.params, &mut pb);
        }
        for k in pa.keys().chain(pb.keys()).collect::<BTreeSet<_>>() {
            let (va, vb) = (pa.get(k).map(String::as_str).unwrap_or("-"), pb.get(k).map(String::as_str).unwrap_or("-"));
            if va != vb {
                lines.push(format!("  param {:<32} {va:>24} {vb:>24}", k));
            }
        }
        let ma = x.as_ref().map(|r| r.metrics.clone()).unwrap_or_default();
        let mb = y.as_ref().map(|r| r.metrics.clone()).unwrap_or_default();
        for k in ma.keys().chain(mb.keys()).collect::<BTreeSet<_>>() {
            let f = |m: &BTreeMap<String, f64>| m.get(k).map(|v| format!("{v:.4}")).unwrap_or("-".into());
            lines.push(format!("  metric {:<31} {:>24} {:>24}", k, f(&ma), f(&mb)));
        }
        if !lines.is_empty() {
            println!("{stage}");
            for l in lines {
                println!("{l}");
            }
        }
    }
    Ok(exit::OK)
}
