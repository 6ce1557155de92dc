//! The `report` kind's worker: reads predictions, class names, training
//! histories, Grad-CAM figures and stage params ([`inputs`]), computes the
//! statistics with polars ([`stats`]), draws the confusion matrix and the
//! learning curves (`crate::plot`), and writes the per-class and
//! confused-pairs tables, the `metrics` JSON ([`metrics`], a documented
//! schema), `report.md` ([`markdown`]) and one self-contained `index.html`
//! ([`html`]). Nothing here needs libtorch; the kind lives in the worker
//! only because the worker is where built-in ML kinds run.

pub mod html;
pub mod inputs;
pub mod markdown;
pub mod metrics;
pub mod stats;

use std::path::PathBuf;

use cairn_formats::table::{Column, Table, TableError};
use cairn_kinds::report::ReportParams;

use crate::ctx::{StageError, StageResult, WorkerCtx};
use crate::plot::curves::Phase;
use crate::plot::{self, PlotError};
use inputs::{InputError, Predictions, StageParams};
use stats::{Pair, Stats};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Stats(#[from] stats::StatsError),
    #[error("{what}: {source}")]
    Plot { what: &'static str, source: PlotError },
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Stage(#[from] StageError),
}

impl From<ReportError> for StageError {
    fn from(e: ReportError) -> Self {
        match e {
            ReportError::Stage(s) => s,
            other => StageError::new(other.to_string()),
        }
    }
}

/// Everything the Markdown and HTML renderers show.
pub struct Document<'a> {
    pub title: &'a str,
    pub stats: &'a Stats,
    /// The most confused pairs, already cut to `top_pairs`.
    pub pairs: &'a [Pair],
    /// Accuracies in percent.
    pub phases: &'a [Phase],
    pub mean_confidence: Option<f64>,
    pub confusion_png: &'a [u8],
    pub curves_png: &'a [u8],
    pub gallery: &'a [Vec<u8>],
    pub faithfulness: Option<&'a Table>,
    pub stages: &'a [StageParams],
}

/// A rate as a percentage with two decimals.
pub fn pct(v: f64) -> String {
    format!("{:.2}%", v * 100.0)
}

/// A rate with three decimals.
pub fn num3(v: f64) -> String {
    format!("{v:.3}")
}

pub fn run(ctx: &mut WorkerCtx, p: ReportParams) -> StageResult {
    Ok(build(ctx, p)?)
}

fn plot_err(what: &'static str) -> impl Fn(PlotError) -> ReportError {
    move |source| ReportError::Plot { what, source }
}

fn write(path: &std::path::Path, bytes: impl AsRef<[u8]>) -> Result<(), ReportError> {
    std::fs::write(path, bytes).map_err(|source| ReportError::Io { path: path.into(), source })
}

fn build(ctx: &mut WorkerCtx, p: ReportParams) -> Result<(), ReportError> {
    let preds = Predictions::read(ctx.input("predictions")?)?;
    let names = ctx.inputs("classes").first().map(|path| inputs::read_classes(path)).transpose()?;
    let k = preds.num_classes(names.as_deref());
    let names = names.unwrap_or_else(|| inputs::numbered_classes(k));
    ctx.progress(format!("per-class statistics over {} predictions, {k} classes", preds.label.len()));
    let stats = stats::compute(&preds.label, &preds.pred, &names)?;
    let pairs = stats::confused_pairs(&stats.confusion);
    let top = &pairs[..pairs.len().min(p.top_pairs as usize)];
    let phases = read_phases(ctx, &p.phases)?;

    per_class_table(&stats).write(ctx.output("per_class")?)?;
    pairs_table(&pairs, &names).write(ctx.output("confused_pairs")?)?;

    ctx.progress("drawing figures");
    let (confusion_path, curves_path) = (ctx.output("confusion")?, ctx.output("curves")?);
    let confusion_png = plot::confusion::draw(&stats.confusion, &names, "Confusion matrix")
        .and_then(|f| f.save(confusion_path))
        .map_err(plot_err("confusion matrix"))?;
    let curves_png = plot::curves::draw(&phases).and_then(|f| f.save(curves_path)).map_err(plot_err("learning curves"))?;

    let metrics = metrics::to_json(&p.title, &stats, top, &phases, &preds.confidence);
    write(ctx.output("metrics")?, metrics)?;

    let gallery = ctx.inputs("gradcam").iter().map(|path| read_png(path)).collect::<Result<Vec<_>, _>>()?;
    let faithfulness = ctx.inputs("faithfulness").first().map(|path| Table::read(path)).transpose()?;
    let stages = ctx.inputs("pipeline").first().map(|path| inputs::read_pipeline(path)).transpose()?.unwrap_or_default();
    let mean_confidence = (!preds.confidence.is_empty()).then(|| preds.confidence.iter().sum::<f64>() / preds.confidence.len() as f64);
    let doc = Document {
        title: &p.title,
        stats: &stats,
        pairs: top,
        phases: &phases,
        mean_confidence,
        confusion_png: &confusion_png,
        curves_png: &curves_png,
        gallery: &gallery,
        faithfulness: faithfulness.as_ref(),
        stages: &stages,
    };
    write(ctx.output("report")?, markdown::render(&doc))?;
    write(ctx.output("index")?, html::render(&doc))?;

    ctx.metric("accuracy", stats.accuracy);
    ctx.metric("macro_f1", stats.macro_avg.f1);
    ctx.metric("weighted_f1", stats.weighted_avg.f1);
    Ok(())
}

/// The histories, named by `phases` (or `phase 1`, …), accuracies in percent.
fn read_phases(ctx: &WorkerCtx, names: &[String]) -> Result<Vec<Phase>, ReportError> {
    let paths = ctx.inputs("histories");
    if !names.is_empty() && names.len() != paths.len() {
        return Err(ReportError::Invalid(format!(
            "`phases` names {} phases but {} histories are connected; give one name per `histories` input, in order",
            names.len(),
            paths.len()
        )));
    }
    let mut phases = paths
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let name = names.get(i).cloned().unwrap_or_else(|| format!("phase {}", i + 1));
            Ok(Phase { name, epochs: inputs::read_history(path)? })
        })
        .collect::<Result<Vec<_>, ReportError>>()?;
    inputs::accuracies_to_percent(&mut phases);
    Ok(phases)
}

/// Reads a figure to embed, checking it really is a PNG.
fn read_png(path: &std::path::Path) -> Result<Vec<u8>, ReportError> {
    let bytes = std::fs::read(path).map_err(|source| ReportError::Io { path: path.into(), source })?;
    if !bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Err(ReportError::Invalid(format!("{}: a `gradcam` input must be a PNG figure", path.display())));
    }
    Ok(bytes)
}

/// `per_class`: one row per class, then `macro avg` and `weighted avg`
/// rows with `class` = -1 (cairn tables hold no nulls).
pub fn per_class_table(s: &Stats) -> Table {
    let total: u64 = s.examples;
    let avgs = [("macro avg", &s.macro_avg), ("weighted avg", &s.weighted_avg)];
    let mut class: Vec<i64> = s.classes.iter().map(|c| c.class as i64).collect();
    let mut name: Vec<String> = s.classes.iter().map(|c| c.name.clone()).collect();
    let mut precision: Vec<f64> = s.classes.iter().map(|c| c.precision).collect();
    let mut recall: Vec<f64> = s.classes.iter().map(|c| c.recall).collect();
    let mut f1: Vec<f64> = s.classes.iter().map(|c| c.f1).collect();
    let mut support: Vec<i64> = s.classes.iter().map(|c| c.support as i64).collect();
    let mut predicted: Vec<i64> = s.classes.iter().map(|c| c.predicted as i64).collect();
    for (n, a) in avgs {
        class.push(-1);
        name.push(n.into());
        precision.push(a.precision);
        recall.push(a.recall);
        f1.push(a.f1);
        support.push(total as i64);
        predicted.push(total as i64);
    }
    Table::new()
        .with("class", Column::I64(class))
        .with("name", Column::Str(name))
        .with("precision", Column::F64(precision))
        .with("recall", Column::F64(recall))
        .with("f1", Column::F64(f1))
        .with("support", Column::I64(support))
        .with("predicted", Column::I64(predicted))
}

/// `confused_pairs`: every pair confused at least once, most first.
pub fn pairs_table(pairs: &[Pair], names: &[String]) -> Table {
    let ints = |f: &dyn Fn(&Pair) -> u64| Column::I64(pairs.iter().map(|p| f(p) as i64).collect());
    let strs = |f: &dyn Fn(&Pair) -> usize| Column::Str(pairs.iter().map(|p| names[f(p)].clone()).collect());
    Table::new()
        .with("class_a", ints(&|p| p.a as u64))
        .with("name_a", strs(&|p| p.a))
        .with("class_b", ints(&|p| p.b as u64))
        .with("name_b", strs(&|p| p.b))
        .with("a_as_b", ints(&|p| p.a_as_b))
        .with("b_as_a", ints(&|p| p.b_as_a))
        .with("total", ints(&Pair::total))
}
