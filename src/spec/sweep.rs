//! Parameter sweeps: `cairn run --sweep finetune.lr=1e-3,3e-4` runs the
//! pipeline once per point of the grid the `--sweep` flags span, as one
//! run of one merged pipeline.
//!
//! Each point is loaded as the pipeline with that point's `--set` flags
//! ([`points`]); [`merge`] then keeps one copy of every stage that is the
//! same computation in all points (same kind, params and upstream stages:
//! the load, the resize, a pretrain upstream of the swept finetune) and one
//! copy per distinct variant of the others, named `STAGE@K` after the first
//! point (1-based) that has it. The runner then sees an ordinary DAG: the
//! shared stages run (or hit) once, the variants are independent and run
//! side by side up to `--jobs`, on whatever executor their stage chose.
//! Keys do not change: a variant is keyed as the same stage run with
//! `--set`, so a later plain run of one point hits the sweep's results.

use std::collections::{BTreeMap, HashMap};

use crate::kind::InputRef;

use super::{assemble, Pipeline, Stage};

/// The most points one sweep may span: a typo such as a 50-value axis
/// times another should not submit thousands of jobs.
pub const MAX_POINTS: usize = 256;

/// One `--sweep STAGE.PARAM=V1,V2,...` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Axis {
    /// `STAGE.PARAM` (a dotted param path, as `--set` takes).
    pub target: String,
    /// The values, as TOML text.
    pub values: Vec<String>,
}

/// What a merged pipeline records about its sweep.
#[derive(Clone, Debug, Default)]
pub struct Sweep {
    /// Each point's assignments, `(STAGE.PARAM, value)` in axis order.
    pub points: Vec<Vec<(String, String)>>,
    /// Each stage that differs between points: its declared name and the
    /// points (0-based) it belongs to. Shared stages are absent.
    pub variants: BTreeMap<String, (String, Vec<usize>)>,
}

impl Sweep {
    /// The name `stage` has in `pipeline.toml` (a variant's, or its own).
    pub fn declared<'a>(&'a self, stage: &'a str) -> &'a str {
        self.variants.get(stage).map_or(stage, |(d, _)| d.as_str())
    }

    /// The stages of the merged pipeline that stand for declared stage
    /// `name`: itself when shared, else its variants.
    pub fn stages_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.variants.iter().filter(move |(_, (d, _))| d == name).map(|(v, _)| v.as_str())
    }
}

/// Parses `STAGE.PARAM=V1,V2,...`. Commas inside brackets, braces or
/// quotes do not split values, so `--sweep m.widths=[8,16],[16,32]` has two.
pub fn parse_axis(flag: &str) -> Result<Axis, String> {
    let (target, values) = flag.split_once('=').ok_or_else(|| format!("--sweep {flag}: missing `=`; write `--sweep STAGE.PARAM=V1,V2`"))?;
    let target = target.trim();
    if !target.contains('.') || target.starts_with('.') || target.ends_with('.') {
        return Err(format!("--sweep {flag}: `{target}` does not name `<stage>.<param>`"));
    }
    let values = split_values(values);
    if values.iter().any(String::is_empty) {
        return Err(format!("--sweep {flag}: an empty value; separate values with single commas"));
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(i, v)| values[..*i].contains(v)) {
        return Err(format!("--sweep {flag}: value {} is `{v}` again; list each value once", i + 1));
    }
    Ok(Axis { target: target.to_string(), values })
}

fn split_values(text: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0i32, None);
    for c in text.chars() {
        match (c, quote) {
            (q @ ('"' | '\''), None) => quote = Some(q),
            (q, Some(open)) if q == open => quote = None,
            ('[' | '{', None) => depth += 1,
            (']' | '}', None) => depth -= 1,
            (',', None) if depth == 0 => {
                out.push(std::mem::take(&mut cur).trim().to_string());
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur.trim().to_string());
    out
}

/// The grid's points, each as its `STAGE.PARAM=VALUE` flags, the last axis
/// varying fastest. Two axes on one param, or more than [`MAX_POINTS`]
/// points, are refused.
pub fn points(axes: &[Axis]) -> Result<Vec<Vec<(String, String)>>, String> {
    for (i, a) in axes.iter().enumerate() {
        if axes[..i].iter().any(|b| b.target == a.target) {
            return Err(format!("--sweep {} is given twice; list all its values in one flag", a.target));
        }
    }
    let count = axes.iter().try_fold(1usize, |n, a| n.checked_mul(a.values.len())).unwrap_or(usize::MAX);
    if count > MAX_POINTS {
        return Err(format!("the sweep spans {count} points, more than {MAX_POINTS}; sweep fewer values at once"));
    }
    let mut grid: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for a in axes {
        grid = grid.into_iter().flat_map(|p| a.values.iter().map(move |v| [p.clone(), vec![(a.target.clone(), v.clone())]].concat())).collect();
    }
    Ok(grid)
}

/// Merges the pipelines loaded for each point (in point order) into one,
/// sharing what is the same computation in every point.
pub fn merge(loaded: Vec<Pipeline>, assignments: Vec<Vec<(String, String)>>) -> Pipeline {
    let ids: Vec<Vec<String>> = loaded.iter().map(identities).collect();
    let names = variant_names(&loaded, &ids);
    let mut stages: Vec<Stage> = Vec::new();
    let mut executors = BTreeMap::new();
    let mut variants: BTreeMap<String, (String, Vec<usize>)> = BTreeMap::new();
    let mut emitted: HashMap<&str, String> = HashMap::new();
    for (p, pipeline) in loaded.iter().enumerate() {
        for (i, s) in pipeline.stages.iter().enumerate() {
            let id = ids[p][i].as_str();
            let name = names[id].clone();
            if name != s.name {
                variants.entry(name.clone()).or_insert_with(|| (s.name.clone(), Vec::new())).1.push(p);
            }
            if emitted.insert(id, name.clone()).is_some() {
                continue;
            }
            let rename = |r: &InputRef| match r {
                InputRef::Output { stage, output } => {
                    let up = pipeline.index_of(stage).expect("a loaded pipeline resolves its references");
                    InputRef::Output { stage: names[ids[p][up].as_str()].clone(), output: output.clone() }
                }
                other => other.clone(),
            };
            let inputs = s.inputs.iter().map(|(slot, refs)| (slot.clone(), refs.iter().map(rename).collect())).collect();
            if let Some(e) = pipeline.stage_executors.get(&s.name) {
                executors.insert(name.clone(), e.clone());
            }
            stages.push(Stage { name, inputs, ..s.clone() });
        }
    }
    let first = loaded.into_iter().next().expect("a sweep has at least one point");
    // Each point's stages come in its topological order, after the shared
    // stages they read: the concatenation is one too.
    let (stages, graph) = assemble(stages);
    let sweep = Sweep { points: assignments, variants };
    Pipeline { stages, graph, stage_executors: executors, sweep: Some(sweep), ..first }
}

/// Each stage's identity in one point: its name, kind, params, executor
/// and inputs, with upstream stages replaced by their identities, so two
/// points agree on a stage exactly when it and all it reads agree.
fn identities(p: &Pipeline) -> Vec<String> {
    let mut ids: Vec<String> = Vec::with_capacity(p.stages.len());
    for s in &p.stages {
        let inputs: BTreeMap<&String, Vec<String>> = s
            .inputs
            .iter()
            .map(|(slot, refs)| {
                let refs = refs.iter().map(|r| match r {
                    InputRef::Output { stage, output } => format!("{}.{output}", ids[p.index_of(stage).expect("resolved")]),
                    other => serde_json::to_string(other).unwrap_or_default(),
                });
                (slot, refs.collect())
            })
            .collect();
        let doc = serde_json::json!([s.name, s.kind.name(), s.checked.params, p.stage_executors.get(&s.name), inputs]);
        ids.push(blake3::hash(doc.to_string().as_bytes()).to_hex().to_string());
    }
    ids
}

/// The merged name of each identity: the declared name where every point
/// agrees on the stage, else `NAME@K` after the first point K (1-based)
/// with that variant.
fn variant_names(loaded: &[Pipeline], ids: &[Vec<String>]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    let Some(first) = loaded.first() else { return names };
    // `--set` changes params, never which stages exist: every point
    // declares the same stages.
    for declared in first.names() {
        let per_point: Vec<&String> = loaded.iter().zip(ids).map(|(p, id)| &id[p.index_of(declared).expect("same stages")]).collect();
        let shared = per_point.iter().all(|id| *id == per_point[0]);
        for (k, id) in per_point.into_iter().enumerate() {
            let name = if shared { declared.to_string() } else { format!("{declared}@{}", k + 1) };
            names.entry(id.clone()).or_insert(name);
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_on_top_level_commas_only() {
        let a = parse_axis("m.widths=[8,16], [16,32]").unwrap();
        assert_eq!(a, Axis { target: "m.widths".into(), values: vec!["[8,16]".into(), "[16,32]".into()] });
        assert_eq!(parse_axis(r#"s.name="a,b",c"#).unwrap().values, vec![r#""a,b""#, "c"]);
        assert_eq!(parse_axis("f.lr=1e-3,3e-4,1e-4").unwrap().values.len(), 3);
        assert!(parse_axis("f.lr=1e-3,,1e-4").unwrap_err().contains("empty value"));
        assert!(parse_axis("lr=1").unwrap_err().contains("<stage>.<param>"));
        assert!(parse_axis("f.lr").unwrap_err().contains("missing `=`"));
        assert!(parse_axis("f.lr=1e-3,3e-4,1e-3").unwrap_err().contains("value 3 is `1e-3` again"));
    }

    #[test]
    fn points_span_the_grid_last_axis_fastest() {
        let axes = [parse_axis("f.lr=1,2").unwrap(), parse_axis("f.epochs=3,5,7").unwrap()];
        let pts = points(&axes).unwrap();
        assert_eq!(pts.len(), 6);
        assert_eq!(pts[1], vec![("f.lr".to_string(), "1".to_string()), ("f.epochs".to_string(), "5".to_string())]);
        assert!(points(&[axes[0].clone(), axes[0].clone()]).unwrap_err().contains("twice"));
        let big = Axis { target: "f.x".into(), values: (0..17).map(|v| v.to_string()).collect() };
        assert!(points(&[big.clone(), Axis { target: "f.y".into(), ..big }]).unwrap_err().contains("289 points"));
    }
}
