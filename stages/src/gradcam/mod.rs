//! The `gradcam` kind's worker: Grad-CAM (Selvaraju et al., arXiv
//! 1610.02391) maps for a deterministic selection of test images
//! ([`select`]), each explained for its predicted and its true class
//! ([`cam`]). Writes the maps (`heatmaps`, M×2×H×W f32: channel 0 the
//! predicted class, 1 the true class; row m is `selection` row m), the
//! selection table, a per-class montage and a worst-mistakes grid
//! ([`overlay`], `crate::plot::montage`) and a faithfulness table
//! ([`faithfulness`]).

pub mod cam;
pub mod faithfulness;
pub mod overlay;
pub mod select;

use cairn_formats::table::{Column, Table};
use cairn_formats::tensor::TensorFile;
use cairn_kinds::gradcam::GradCamParams;
use tch::{Device, Kind, Tensor};

use crate::ctx::{StageError, StageResult, WorkerCtx};
use crate::load;
use crate::models::{Feed, Net};
use crate::plot::montage::{self, Row, Tile};
use crate::report::inputs::{self, Predictions};
use crate::tensors;
use select::{Pick, Selection};

/// Images per forward/backward pass: bounds memory at ImageNet sizes.
const BATCH: i64 = 32;
const MISTAKE: [u8; 3] = [214, 39, 40];
const CORRECT: [u8; 3] = [44, 160, 44];

fn err(e: impl std::fmt::Display) -> StageError {
    StageError::new(e.to_string())
}

pub fn run(ctx: &mut WorkerCtx, p: GradCamParams) -> StageResult {
    let model = load::trained(ctx, p.model.as_ref())?;
    let (net, k) = (&model.net, model.spec.num_classes);
    let layer = p.layer_in(&model.spec)?;
    let cut = net.index(&layer)?;
    let (file, y) = load::labelled_file(ctx, "images", "labels", k)?;
    let preds = Predictions::read(ctx.input("predictions")?).map_err(err)?;
    check_predictions(&preds, &y, k)?;
    let names = match ctx.inputs("classes").first() {
        Some(path) => inputs::read_classes(path).map_err(err)?,
        None => inputs::numbered_classes(k as usize),
    };
    if names.len() != k as usize {
        return Err(StageError::new(format!("`classes` names {} classes but the model has {k}", names.len())));
    }
    let sel = select::select(&preds, k as usize, p.per_class as usize, p.worst as usize).map_err(err)?;
    ctx.progress(format!("Grad-CAM on `{layer}` for {} images", sel.picks.len()));

    let images = rows_of(&file, &sel.picks.iter().map(|q| q.index).collect::<Vec<_>>())?;
    let feed = Feed { normalize: model.spec.normalize, kind: Kind::Float, device: ctx.device };
    let features = |t: &Tensor| net.forward_range(t, 0..cut + 1, |_| false);
    let head = |a: &Tensor| net.forward_range(a, cut + 1..net.blocks.len(), |_| false);
    let pred_t = Tensor::from_slice(&sel.picks.iter().map(|q| q.pred).collect::<Vec<_>>());
    let label_t = Tensor::from_slice(&sel.picks.iter().map(|q| q.label).collect::<Vec<_>>());
    let m = sel.picks.len() as i64;
    let mut maps = Vec::new();
    for start in (0..m).step_by(BATCH as usize) {
        let n = BATCH.min(m - start);
        let input = feed.input(&images.narrow(0, start, n));
        let for_pred = cam::grad_cam(&input, &pred_t.narrow(0, start, n), features, head);
        let for_true = cam::grad_cam(&input, &label_t.narrow(0, start, n), features, head);
        maps.push(Tensor::stack(&[for_pred, for_true], 1).to_device(Device::Cpu));
    }
    let size = images.size();
    let heatmaps = if maps.is_empty() { Tensor::zeros([0, 2, size[2], size[3]], (Kind::Float, Device::Cpu)) } else { Tensor::cat(&maps, 0) };
    tensors::save(ctx.output("heatmaps")?, &heatmaps)?;
    selection_table(&sel).write(ctx.output("selection")?).map_err(err)?;

    let faith = faithfulness_table(ctx, &p, &images, &heatmaps, &pred_t, net, &feed)?;
    faith.write(ctx.output("faithfulness")?).map_err(err)?;

    ctx.progress("drawing figures");
    let tiles = |which: i64| -> Vec<Vec<u8>> {
        (0..m).map(|i| overlay::overlay(&images.get(i), &heatmaps.get(i).get(which), p.tile as i64)).collect()
    };
    let (pred_tiles, true_tiles) = (tiles(0), tiles(1));
    let grid = class_montage(&sel, &names, &pred_tiles, &p, &layer).map_err(err)?;
    grid.save(ctx.output("grid")?).map_err(err)?;
    let worst = worst_montage(&sel, &names, &pred_tiles, &true_tiles, &p, &layer).map_err(err)?;
    worst.save(ctx.output("worst")?).map_err(err)?;
    Ok(())
}

/// The images at `rows` (checked to exist), read from their file one row at
/// a time: a stage that draws a few dozen never holds the whole set.
fn rows_of(file: &TensorFile, rows: &[i64]) -> StageResult<Tensor> {
    let picked: Vec<(&TensorFile, usize)> = rows.iter().map(|&r| (file, r as usize)).collect();
    tensors::gather_rows(file, &picked)
}

/// Predictions must describe these images: same labels at the same rows.
fn check_predictions(preds: &Predictions, labels: &Tensor, k: i64) -> StageResult {
    let labels: Vec<i64> = Vec::try_from(labels)?;
    for (row, (&i, &l)) in preds.index.iter().zip(&preds.label).enumerate() {
        let stored = usize::try_from(i).ok().and_then(|i| labels.get(i));
        if stored != Some(&l) {
            return Err(StageError::new(format!(
                "predictions row {row} says image {i} has label {l}, but `labels` {}; connect the images and labels that `evaluate` scored",
                stored.map_or_else(|| format!("has only {} images", labels.len()), |s| format!("says {s}"))
            )));
        }
    }
    if let Some(bad) = preds.pred.iter().find(|&&c| c < 0 || c >= k) {
        return Err(StageError::new(format!("predictions hold class {bad}, outside the model's 0..{k}")));
    }
    Ok(())
}

fn selection_table(sel: &Selection) -> Table {
    let col = |f: &dyn Fn(&Pick) -> i64| Column::I64(sel.picks.iter().map(f).collect());
    let mut worst_rank = vec![-1i64; sel.picks.len()];
    for (rank, &i) in sel.worst.iter().enumerate() {
        worst_rank[i] = rank as i64;
    }
    Table::new()
        .with("index", col(&|q| q.index))
        .with("label", col(&|q| q.label))
        .with("pred", col(&|q| q.pred))
        .with("confidence", Column::F64(sel.picks.iter().map(|q| q.confidence).collect()))
        .with("correct", Column::Bool(sel.picks.iter().map(Pick::correct).collect()))
        .with("worst_rank", Column::I64(worst_rank))
}

/// Softmax probability of `target` for float images (0–255 scale).
fn confidence(net: &Net, feed: &Feed, images: &Tensor, target: &Tensor) -> Tensor {
    tch::no_grad(|| {
        let n = images.size()[0];
        let mut out = Vec::new();
        for start in (0..n).step_by(BATCH as usize) {
            let len = BATCH.min(n - start);
            let logits = net.forward_t(&feed.input(&images.narrow(0, start, len)), false).to_kind(Kind::Float);
            let t = target.narrow(0, start, len).to_device(logits.device()).view([-1, 1]);
            out.push(logits.softmax(1, Kind::Float).gather(1, &t, false).squeeze_dim(1).to_device(Device::Cpu));
        }
        Tensor::cat(&out, 0)
    })
}

fn faithfulness_table(ctx: &WorkerCtx, p: &GradCamParams, images: &Tensor, heatmaps: &Tensor, pred: &Tensor, net: &Net, feed: &Feed) -> StageResult<Table> {
    let m = images.size()[0];
    let (h, w) = (images.size()[2], images.size()[3]);
    let count = ((p.faithfulness_fraction * (h * w) as f64).round() as i64).clamp(1, h * w);
    let x = images.to_kind(Kind::Float);
    let mut rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    if m > 0 {
        let blurred = faithfulness::blur(&x, p.blur_sigma);
        let before = confidence(net, feed, &x, pred);
        let salient = heatmaps.select(1, 0);
        for (method, scores) in [("salient", salient.shallow_clone()), ("random", faithfulness::random_scores(&salient, ctx.seed()))] {
            let masked = faithfulness::apply(&x, &blurred, &faithfulness::top_mask(&scores, count));
            let after = confidence(net, feed, &masked, pred);
            let (b, a) = (before.mean(Kind::Double).double_value(&[]), after.mean(Kind::Double).double_value(&[]));
            ctx.metric(&format!("faithfulness_{method}_drop"), b - a);
            rows.0.push(method.to_string());
            rows.1.push(b);
            rows.2.push(a);
            rows.3.push(b - a);
            rows.4.push(m);
        }
    }
    let n = rows.0.len();
    Ok(Table::new()
        .with("method", Column::Str(rows.0))
        .with("fraction", Column::F64(vec![p.faithfulness_fraction; n]))
        .with("images", Column::I64(rows.4))
        .with("confidence_before", Column::F64(rows.1))
        .with("confidence_after", Column::F64(rows.2))
        .with("mean_drop", Column::F64(rows.3)))
}

fn tile(rgb: &[u8], side: u32, caption: Vec<String>, correct: bool) -> Tile {
    Tile { rgb: rgb.to_vec(), side, caption, frame: Some(if correct { CORRECT } else { MISTAKE }) }
}

fn class_montage(sel: &Selection, names: &[String], tiles: &[Vec<u8>], p: &GradCamParams, layer: &str) -> Result<crate::plot::Figure, crate::plot::PlotError> {
    let rows: Vec<Row> = sel
        .per_class
        .iter()
        .enumerate()
        .map(|(class, picks)| Row {
            header: Some(names[class].clone()),
            tiles: picks
                .iter()
                .map(|&i| {
                    let q = &sel.picks[i];
                    let first = if q.correct() { "correct".to_string() } else { format!("pred: {}", names[q.pred as usize]) };
                    tile(&tiles[i], p.tile, vec![first, format!("conf {:.1}%", 100.0 * q.confidence)], q.correct())
                })
                .collect(),
        })
        .collect();
    let subtitle = format!(
        "Grad-CAM of `{layer}` for the predicted class · per true class: {} most confident mistakes (red), {} most confident hits (green)",
        p.per_class, p.per_class
    );
    montage::draw("Grad-CAM by class", &subtitle, &rows, 2 * p.per_class as usize)
}

fn worst_montage(sel: &Selection, names: &[String], pred_tiles: &[Vec<u8>], true_tiles: &[Vec<u8>], p: &GradCamParams, layer: &str) -> Result<crate::plot::Figure, crate::plot::PlotError> {
    let tiles = sel
        .worst
        .iter()
        .flat_map(|&i| {
            let q = &sel.picks[i];
            let (t, pr) = (&names[q.label as usize], &names[q.pred as usize]);
            [
                tile(&pred_tiles[i], p.tile, vec![format!("{t} → {pr}"), format!("{:.1}% · map: {pr}", 100.0 * q.confidence)], false),
                tile(&true_tiles[i], p.tile, vec![format!("image #{}", q.index), format!("map: {t} (true)")], true),
            ]
        })
        .collect();
    let subtitle = format!("Grad-CAM of `{layer}` · each pair: map for the predicted class (red), for the true class (green)");
    montage::draw("Most confident mistakes", &subtitle, &[Row { header: None, tiles }], 8)
}
