//! Reading the report's inputs: the `predictions` table (`label`, `pred`,
//! optional `confidence` and `prob_<k>` columns, as `evaluate` writes it),
//! the optional `classes` table (`label`, `name`), training `histories`
//! (`epoch`, `train_loss`, `train_acc`, optional `val_loss` / `val_acc`;
//! NaN means "not measured"), and the optional `pipeline` JSON with the
//! params of the pipeline's stages. Every error names the file and column.

use std::path::{Path, PathBuf};

use cairn_formats::table::{Column, Table, TableError};
use serde_json::Value;

use crate::plot::curves::Epoch;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{path}: no column `{column}` (columns: {has})")]
    Missing { path: PathBuf, column: String, has: String },
    #[error("{path}: column `{column}` holds {found}, expected {expected}")]
    Type { path: PathBuf, column: String, found: &'static str, expected: &'static str },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

fn column<'t>(t: &'t Table, path: &Path, name: &str) -> Result<&'t Column, InputError> {
    t.column(name).ok_or_else(|| InputError::Missing {
        path: path.into(),
        column: name.into(),
        has: t.columns.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
    })
}

/// An integer column.
pub fn ints(t: &Table, path: &Path, name: &str) -> Result<Vec<i64>, InputError> {
    match column(t, path, name)? {
        Column::I64(v) => Ok(v.clone()),
        other => Err(InputError::Type { path: path.into(), column: name.into(), found: other.type_name(), expected: "i64" }),
    }
}

/// A numeric column as f64 (f32 and integer columns widen losslessly).
pub fn floats(t: &Table, path: &Path, name: &str) -> Result<Vec<f64>, InputError> {
    match column(t, path, name)? {
        Column::F64(v) => Ok(v.clone()),
        Column::F32(v) => Ok(v.iter().map(|&x| x as f64).collect()),
        Column::I64(v) => Ok(v.iter().map(|&x| x as f64).collect()),
        other => Err(InputError::Type { path: path.into(), column: name.into(), found: other.type_name(), expected: "a number" }),
    }
}

/// The evaluation's per-image predictions.
#[derive(Clone, Debug, PartialEq)]
pub struct Predictions {
    /// Row position in the evaluated image set (`index`, else 0..n).
    pub index: Vec<i64>,
    pub label: Vec<i64>,
    pub pred: Vec<i64>,
    /// Softmax probability of `pred`; empty when the table has none.
    pub confidence: Vec<f64>,
    /// How many `prob_<k>` columns the table has (0 if none).
    pub prob_columns: usize,
}

impl Predictions {
    pub fn read(path: &Path) -> Result<Self, InputError> {
        let t = Table::read(path)?;
        let label = ints(&t, path, "label")?;
        let pred = ints(&t, path, "pred")?;
        let index = if t.column("index").is_some() { ints(&t, path, "index")? } else { (0..label.len() as i64).collect() };
        let confidence = if t.column("confidence").is_some() { floats(&t, path, "confidence")? } else { Vec::new() };
        let prob_columns = (0..).take_while(|k| t.column(&format!("prob_{k}")).is_some()).count();
        Ok(Self { index, label, pred, confidence, prob_columns })
    }

    /// Class count: the names' when given, else the `prob_<k>` columns',
    /// else one past the largest class seen.
    pub fn num_classes(&self, names: Option<&[String]>) -> usize {
        names.map(|n| n.len()).filter(|&n| n > 0).unwrap_or_else(|| {
            let seen = self.label.iter().chain(&self.pred).max().map_or(0, |&m| m.max(-1) + 1) as usize;
            self.prob_columns.max(seen)
        })
    }
}

/// Class names ordered by label; labels must be exactly 0..n.
pub fn read_classes(path: &Path) -> Result<Vec<String>, InputError> {
    let t = Table::read(path)?;
    let labels = ints(&t, path, "label")?;
    let names = match column(&t, path, "name")? {
        Column::Str(v) => v.clone(),
        other => return Err(InputError::Type { path: path.into(), column: "name".into(), found: other.type_name(), expected: "str" }),
    };
    let mut out = vec![None; labels.len()];
    for (&l, name) in labels.iter().zip(names) {
        let slot = usize::try_from(l).ok().and_then(|i| out.get_mut(i)).ok_or_else(|| InputError::Invalid {
            path: path.into(),
            reason: format!("label {l} is outside 0..{} (labels must number the classes from 0)", labels.len()),
        })?;
        if slot.replace(name).is_some() {
            return Err(InputError::Invalid { path: path.into(), reason: format!("label {l} appears twice") });
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Default names when no `classes` table is connected.
pub fn numbered_classes(k: usize) -> Vec<String> {
    (0..k).map(|i| format!("class {i}")).collect()
}

/// One training history, in epoch order, accuracies as stored.
pub fn read_history(path: &Path) -> Result<Vec<Epoch>, InputError> {
    let t = Table::read(path)?;
    let epoch = ints(&t, path, "epoch")?;
    let (train_loss, train_acc) = (floats(&t, path, "train_loss")?, floats(&t, path, "train_acc")?);
    let optional = |name: &str| -> Result<Vec<Option<f64>>, InputError> {
        Ok(match t.column(name) {
            Some(_) => floats(&t, path, name)?.into_iter().map(|v| Some(v).filter(|v| !v.is_nan())).collect(),
            None => vec![None; epoch.len()],
        })
    };
    let (val_loss, val_acc) = (optional("val_loss")?, optional("val_acc")?);
    let mut order: Vec<usize> = (0..epoch.len()).collect();
    order.sort_by_key(|&i| epoch[i]);
    Ok(order
        .into_iter()
        .map(|i| Epoch { train_loss: train_loss[i], train_acc: train_acc[i], val_loss: val_loss[i], val_acc: val_acc[i] })
        .collect())
}

/// Converts fraction accuracies (every value ≤ 1) to percent in place;
/// histories already in percent are left alone.
pub fn accuracies_to_percent(phases: &mut [crate::plot::curves::Phase]) {
    let accs = || phases.iter().flat_map(|p| &p.epochs).flat_map(|e| [Some(e.train_acc), e.val_acc]).flatten();
    if accs().all(|a| a <= 1.0) {
        for e in phases.iter_mut().flat_map(|p| &mut p.epochs) {
            e.train_acc *= 100.0;
            e.val_acc = e.val_acc.map(|a| a * 100.0);
        }
    }
}

/// One stage of the pipeline as the report shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct StageParams {
    pub name: String,
    pub kind: Option<String>,
    pub params: serde_json::Map<String, Value>,
}

/// Reads the `pipeline` JSON: `{"stages": {name: {"kind": k, "params":
/// {...}}}}`, or `{name: {...params}}` directly; stages keep file order
/// only as far as JSON objects do (they come out sorted by name).
pub fn read_pipeline(path: &Path) -> Result<Vec<StageParams>, InputError> {
    let invalid = |reason: String| InputError::Invalid { path: path.into(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let root: Value = serde_json::from_str(&text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let stages = match root.get("stages") {
        Some(s) => s,
        None => &root,
    };
    let stages = stages.as_object().ok_or_else(|| invalid("expected an object of stages".into()))?;
    stages
        .iter()
        .map(|(name, v)| {
            let obj = v.as_object().ok_or_else(|| invalid(format!("stage `{name}` is not an object")))?;
            let kind = obj.get("kind").and_then(Value::as_str).map(str::to_string);
            let params = match obj.get("params") {
                Some(Value::Object(p)) => p.clone(),
                _ => obj.iter().filter(|(k, _)| *k != "kind" && *k != "inputs").map(|(k, v)| (k.clone(), v.clone())).collect(),
            };
            Ok(StageParams { name: name.clone(), kind, params })
        })
        .collect()
}
