//! The `evaluate` kind: rebuilds the trained network from the spec its model
//! file stores ([`crate::load::trained`]), loads its weights and scores it
//! on a labelled image set, read from its file a batch at a time.
//!
//! Outputs `predictions` (index, label, pred, confidence, prob_0..prob_{K-1}),
//! `confusion` (rows = true class, one count column per predicted class,
//! named after `classes` when that input is connected) and `metrics`
//! (test_acc, test_loss, n), the last two also reported as stage metrics so
//! `cairn diff` shows them. A `model` the stage states is compared with the
//! one stored in the weights file, so evaluating with a different
//! normalisation or architecture than training fails loudly instead of
//! scoring 10%.

use std::time::Instant;

use cairn_formats::table::{Column, Table};
use cairn_kinds::eval::EvaluateParams;
use tch::Kind;

use crate::ctx::{StageError, StageResult, WorkerCtx};
use crate::load;
use crate::models::{self, Feed};
use crate::precision::compute_kind;
use crate::tensors;

fn table_err(e: impl std::fmt::Display) -> StageError {
    StageError::new(e.to_string())
}

/// Class names from the optional `classes` table (first string column).
fn class_names(ctx: &WorkerCtx, k: i64) -> StageResult<Vec<String>> {
    let fallback = || (0..k).map(|i| format!("class_{i}")).collect();
    if !ctx.has_input("classes") {
        return Ok(fallback());
    }
    let t = Table::read(ctx.input("classes")?).map_err(table_err)?;
    let names = t.columns.iter().find_map(|(_, c)| if let Column::Str(v) = c { Some(v.clone()) } else { None });
    match names {
        Some(v) if v.len() as i64 == k => Ok(v),
        Some(v) => Err(StageError::new(format!("`classes` lists {} names but the model has {k} classes", v.len()))),
        None => Ok(fallback()),
    }
}

/// Reports how far scoring `n` images has got, so a long evaluation moves
/// a terminal's bar and a log's heartbeat.
fn scoring_progress(ctx: &WorkerCtx, n: i64) -> impl FnMut(i64) + '_ {
    let t0 = Instant::now();
    move |done| {
        if ctx.progress_due() {
            let rate = done as f64 / t0.elapsed().as_secs_f64();
            ctx.progress_at(format!("scoring at {rate:.0} img/s"), done as u64, n as u64, true);
        }
    }
}

/// An error naming how many images got a non-finite output (and the
/// first), where any did: their predictions and the accuracy would be
/// noise, so nothing is written.
fn finite_outputs(logits: &tch::Tensor) -> StageResult {
    let bad = logits.isfinite().logical_not().any_dim(1, false);
    let count = bad.sum(Kind::Int64).int64_value(&[]);
    if count == 0 {
        return Ok(());
    }
    let first = bad.nonzero().int64_value(&[0, 0]);
    Err(StageError::new(format!(
        "the model's outputs are not finite for {count} of {} images (the first: image {first}): its weights diverged in training or hold NaN or inf; evaluate a model that trained",
        logits.size()[0]
    )))
}

pub fn run(ctx: &mut WorkerCtx, p: EvaluateParams) -> StageResult {
    let model = load::trained(ctx, p.model.as_ref())?;
    let (net, k) = (&model.net, model.spec.num_classes);
    let (images, y) = load::labelled_file(ctx, "images", "labels", k)?;
    let classes = class_names(ctx, k)?;
    let feed = Feed { normalize: model.spec.normalize, kind: compute_kind(p.precision, ctx), device: ctx.device };
    let n = y.size()[0];
    let rows = |first: i64, count: i64| tensors::load_rows(&images, first as usize, count as usize);
    let logits = models::predict(net, n, rows, &feed, p.batch_size as i64, p.tta, scoring_progress(ctx, n))?;
    finite_outputs(&logits)?;
    let loss = if n > 0 { logits.cross_entropy_loss::<tch::Tensor>(&y, None, tch::Reduction::Mean, -100, 0.0).double_value(&[]) } else { f64::NAN };
    let probs = logits.softmax(1, Kind::Float);
    let (conf, pred) = probs.max_dim(1, false);
    let pred: Vec<i64> = Vec::try_from(&pred)?;
    let label: Vec<i64> = Vec::try_from(&y)?;
    let acc = pred.iter().zip(&label).filter(|(a, b)| a == b).count() as f64 / n.max(1) as f64;

    let mut preds = Table::new()
        .with("index", Column::I64((0..n).collect()))
        .with("label", Column::I64(label.clone()))
        .with("pred", Column::I64(pred.clone()))
        .with("confidence", Column::F32(Vec::try_from(&conf)?));
    for c in 0..k {
        preds = preds.with(format!("prob_{c}"), Column::F32(Vec::try_from(&probs.select(1, c))?));
    }
    preds.write(ctx.output("predictions")?).map_err(table_err)?;

    let mut counts = vec![vec![0i64; k as usize]; k as usize];
    for (&t, &q) in label.iter().zip(&pred) {
        counts[t as usize][q as usize] += 1;
    }
    let mut confusion = Table::new().with("true", Column::Str(classes.clone()));
    for (j, name) in classes.iter().enumerate() {
        confusion = confusion.with(name.clone(), Column::I64(counts.iter().map(|row| row[j]).collect()));
    }
    confusion.write(ctx.output("confusion")?).map_err(table_err)?;

    Table::new()
        .with("test_acc", Column::F64(vec![acc]))
        .with("test_loss", Column::F64(vec![loss]))
        .with("n", Column::I64(vec![n]))
        .write(ctx.output("metrics")?)
        .map_err(table_err)?;
    ctx.metric("test_acc", acc);
    ctx.metric("test_loss", loss);
    ctx.progress(format!("test accuracy {:.2}% on {n} images (loss {loss:.4})", 100.0 * acc));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn outputs_that_are_not_finite_fail_naming_the_first_image() {
        let logits = Tensor::zeros([4, 3], (Kind::Float, tch::Device::Cpu));
        assert!(finite_outputs(&logits).is_ok());
        let _ = logits.get(2).get(1).fill_(f64::NAN);
        let _ = logits.get(3).get(0).fill_(f64::INFINITY);
        let e = finite_outputs(&logits).unwrap_err().0;
        assert!(e.starts_with("the model's outputs are not finite for 2 of 4 images (the first: image 2)"), "{e}");
    }
}
