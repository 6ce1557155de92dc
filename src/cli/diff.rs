//! `cairn diff`: the params and metrics of two recorded runs, or of the
//! working tree (the pipeline as it is now, with the metrics of its fresh
//! stages) against `cairn.lock`, as aligned text (the default) or as a
//! Markdown table for a pull-request comment. Params are shown where they
//! differ, metrics always, with their change. A sweep's run (named, or the
//! newest when none is) is shown as its table of points instead.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cairn::cache::Cache;
use cairn::history::{self, HistoryRow};
use cairn::lock::{class_of, Entry, Lock};
use cairn::plan::StageState;

use super::commands::{fail, load, stage_states, CmdResult};
use super::history::own_runs_newest_first;
use super::ui::Console;
use super::{exit, Cli, Config};

/// One side of the comparison: its label and, per stage, its facts.
struct Side {
    label: String,
    stages: BTreeMap<String, Facts>,
}

#[derive(Default)]
struct Facts {
    /// Dotted param name → its JSON text.
    params: BTreeMap<String, String>,
    metrics: BTreeMap<String, f64>,
}

enum Row {
    Param { name: String, a: Option<String>, b: Option<String> },
    Metric { name: String, a: Option<f64>, b: Option<f64> },
}

/// What `cairn diff` compares and how it prints it.
pub struct DiffArgs<'a> {
    pub run_a: Option<&'a str>,
    pub run_b: Option<&'a str>,
    /// `--lock[=PATH]`: the working tree against this lock (`Some(None)`:
    /// the one next to the pipeline).
    pub lock: Option<Option<&'a Path>>,
    pub markdown: bool,
}

pub fn diff(cli: &Cli, config: &Config, args: &DiffArgs, console: &Console) -> CmdResult {
    if args.lock.is_none() && args.run_b.is_none() {
        if let Some(table) = sweep_table(cli, args.run_a, args.markdown)? {
            print!("{table}");
            return Ok(exit::OK);
        }
    }
    let [a, b] = match args.lock {
        Some(path) => against_lock(cli, config, path, console)?,
        None => runs(cli, args.run_a, args.run_b)?,
    };
    let rows = rows(&a, &b);
    print!("{}", if args.markdown { markdown(&a, &b, &rows) } else { text(&a, &b, &rows) });
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

fn facts(params: &serde_json::Value, metrics: BTreeMap<String, f64>) -> Facts {
    let mut f = Facts { params: BTreeMap::new(), metrics };
    flatten("", params, &mut f.params);
    f
}

/// Every stage with something to show: params that differ, then metrics.
fn rows(a: &Side, b: &Side) -> Vec<(String, Vec<Row>)> {
    let empty = Facts::default();
    let stages: BTreeSet<&String> = a.stages.keys().chain(b.stages.keys()).collect();
    let mut out = Vec::new();
    for stage in stages {
        let (x, y) = (a.stages.get(stage).unwrap_or(&empty), b.stages.get(stage).unwrap_or(&empty));
        let mut rows = Vec::new();
        for k in x.params.keys().chain(y.params.keys()).collect::<BTreeSet<_>>() {
            let (pa, pb) = (x.params.get(k).cloned(), y.params.get(k).cloned());
            if pa != pb {
                rows.push(Row::Param { name: k.clone(), a: pa, b: pb });
            }
        }
        for k in x.metrics.keys().chain(y.metrics.keys()).collect::<BTreeSet<_>>() {
            rows.push(Row::Metric { name: k.clone(), a: x.metrics.get(k).copied(), b: y.metrics.get(k).copied() });
        }
        if !rows.is_empty() {
            out.push((stage.clone(), rows));
        }
    }
    out
}

fn metric(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or("-".into())
}

fn text(a: &Side, b: &Side, rows: &[(String, Vec<Row>)]) -> String {
    let mut out = format!("{:<40} {:>24} {:>24}\n", "", a.label, b.label);
    for (stage, rows) in rows {
        out += &format!("{stage}\n");
        for r in rows {
            out += &match r {
                Row::Param { name, a, b } => {
                    format!("  param {name:<32} {:>24} {:>24}\n", a.as_deref().unwrap_or("-"), b.as_deref().unwrap_or("-"))
                }
                Row::Metric { name, a, b } => format!("  metric {name:<31} {:>24} {:>24}\n", metric(*a), metric(*b)),
            };
        }
    }
    out
}

/// A Markdown table cell: pipes and line breaks would end the cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(a: &Side, b: &Side, rows: &[(String, Vec<Row>)]) -> String {
    let (la, lb) = (cell(&a.label), cell(&b.label));
    let mut out = format!("### cairn diff: `{la}` → `{lb}`\n\n");
    if rows.is_empty() {
        return out + "No param or metric differs.\n";
    }
    out += &format!("| stage | | name | `{la}` | `{lb}` | change |\n| --- | --- | --- | ---: | ---: | ---: |\n");
    for (stage, rows) in rows {
        for r in rows {
            let (what, name, va, vb, change) = match r {
                Row::Param { name, a, b } => {
                    let code = |v: &Option<String>| v.as_deref().map(|v| format!("`{v}`")).unwrap_or("-".into());
                    ("param", name, code(a), code(b), String::new())
                }
                Row::Metric { name, a, b } => {
                    let change = match (a, b) {
                        (Some(x), Some(y)) if x != y => format!("{:+.4}", y - x),
                        _ => String::new(),
                    };
                    ("metric", name, metric(*a), metric(*b), change)
                }
            };
            out += &format!("| `{}` | {what} | `{}` | {} | {} | {change} |\n", cell(stage), cell(name), cell(&va), cell(&vb));
        }
    }
    out
}

fn side(label: &str, rows: Vec<HistoryRow>) -> Side {
    let stages = rows.into_iter().map(|r| (r.stage.clone(), facts(&r.params, r.metrics))).collect();
    Side { label: label.to_string(), stages }
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

/// The table of points when the run named (else the newest) is a sweep's:
/// its points are what there is to compare.
fn sweep_table(cli: &Cli, given: Option<&str>, markdown: bool) -> Result<Option<String>, i32> {
    let ids = history::run_ids(&cli.cache_dir);
    let rows = match given {
        Some(g) => Some(named(cli, &ids, g)?.1),
        None => own_runs_newest_first(cli).next().map(|(_, rows)| rows),
    };
    Ok(rows.and_then(|rows| super::sweep::table(&rows, markdown)))
}

/// The two runs to compare: those named, the newest readable ones standing
/// in for any not named.
fn runs(cli: &Cli, a: Option<&str>, b: Option<&str>) -> Result<[Side; 2], i32> {
    let ids = history::run_ids(&cli.cache_dir);
    let (a, b) = (a.map(|g| named(cli, &ids, g)).transpose()?, b.map(|g| named(cli, &ids, g)).transpose()?);
    let taken: Vec<String> = a.iter().chain(b.iter()).map(|(id, _)| id.clone()).collect();
    let mut newest = own_runs_newest_first(cli).filter(|(id, _)| !taken.contains(id));
    // Without names: the newest against the one before it.
    let b = b.or_else(|| newest.next());
    let a = a.or_else(|| newest.next());
    match (a, b) {
        (Some((ia, ra)), Some((ib, rb))) => Ok([side(&ia, ra), side(&ib, rb)]),
        _ => {
            eprintln!("error: need two readable recorded runs of {} to compare; see `cairn runs`", cli.file.display());
            Err(exit::USAGE)
        }
    }
}

/// The lock (its entry of the class this machine keys each stage with, else
/// its first) against the pipeline as it is now.
fn against_lock(cli: &Cli, config: &Config, path: Option<&Path>, console: &Console) -> Result<[Side; 2], i32> {
    let default = cairn::lock::path_for(&cli.file);
    let path = path.unwrap_or(&default);
    let lock = match Lock::read(path) {
        Ok(Some(lock)) => lock,
        Ok(None) => return Err(fail(console, exit::USAGE, format!("there is no lock at {}\n  help: run `cairn run` to write one", path.display()))),
        Err(e) => return Err(fail(console, exit::USAGE, e)),
    };
    let (pipeline, env) = load(cli, config, console)?;
    let cache = Cache::open_read(&cli.cache_dir);
    let states = stage_states(&pipeline, &cache, &env, console)?;
    let mut locked = BTreeMap::new();
    let mut now = BTreeMap::new();
    for (name, state) in &states {
        let Some(stage) = pipeline.stage(name) else { continue };
        // The environment class of the stage's key, to pick the lock's entry.
        let (env, metrics) = match state {
            StageState::Fresh { key, manifest } => (cache.manifest(key, &|_| {}).ok().flatten().map(|m| m.key_inputs.env), manifest.metrics.clone()),
            StageState::Stale { key_inputs, .. } => (key_inputs.as_ref().map(|k| k.env.clone()), BTreeMap::new()),
            StageState::Blocked { .. } => (None, BTreeMap::new()),
        };
        now.insert(name.clone(), facts(&stage.checked.key_params(), metrics));
        let classes = lock.stages.get(name);
        if let Some(e) = classes.and_then(|c| env.as_ref().and_then(|env| c.get(&class_of(env))).or_else(|| c.values().next())) {
            locked.insert(name.clone(), entry_facts(e));
        }
    }
    for (name, classes) in lock.stages.iter().filter(|(n, _)| pipeline.stage(n).is_none()) {
        locked.extend(classes.values().next().map(|e| (name.clone(), entry_facts(e))));
    }
    Ok([Side { label: path.display().to_string(), stages: locked }, Side { label: "working tree".into(), stages: now }])
}

fn entry_facts(e: &Entry) -> Facts {
    facts(&e.key_inputs.params, e.metrics.iter().map(|(k, v)| (k.clone(), v.unwrap_or(f64::NAN))).collect())
}
