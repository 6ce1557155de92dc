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
        let rows = match history::load(&cli.cache_dir, id) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("warning: skipping damaged run record {id}: {e}");
                continue;
            }
        };
        let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
        if json {
            out.push(serde_json::json!({
                "run_id": id,
                "started_at": rows.first().map(|r| r.started_at.clone()).unwrap_or_default(),
                "profile": rows.first().map(|r| r.profile.clone()).unwrap_or_default(),
                "ran": count("ran"), "cached": count("cached"), "failed": count("failed"),
                "stages": rows.iter().map(|r| serde_json::json!({"stage": r.stage, "status": r.status, "metrics": r.metrics, "duration_s": r.duration_s})).collect::<Vec<_>>(),
            }));
        } else {
            println!(
                "{id}  {}  ran {:>2} cached {:>2} failed {:>2}  {}",
                rows.first().map(|r| r.started_at.as_str()).unwrap_or(""),
                count("ran"),
                count("cached"),
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

pub fn diff(cli: &Cli, a: Option<&str>, b: Option<&str>) -> CmdResult {
    let ids = history::run_ids(&cli.cache_dir);
    let pick = |given: Option<&str>, from_end: usize| -> Option<String> {
        match given {
            Some(g) => ids.iter().find(|id| id.starts_with(g)).cloned(),
            None => ids.iter().rev().nth(from_end).cloned(),
        }
    };
    let (Some(ra), Some(rb)) = (pick(a, 1), pick(b, 0)) else {
        eprintln!("error: need two recorded runs to compare (have {}); see `cairn runs`", ids.len());
        return Err(exit::USAGE);
    };
    let load = |id: &str| history::load(&cli.cache_dir, id).map_err(|e| {
        eprintln!("error: {e}");
        exit::IO
    });
    let (rows_a, rows_b) = (load(&ra)?, load(&rb)?);
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
