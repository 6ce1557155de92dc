//! The `metrics` JSON: the report's numbers in a stable shape for CI to diff
//! and for scripts to read. Schema `cairn.report.metrics/1`:
//!
//! ```text
//! {
//!   "schema": "cairn.report.metrics/1",
//!   "title": str,
//!   "examples": int,                 // rows in `predictions`
//!   "num_classes": int,
//!   "accuracy": float,               // fractions in [0, 1] throughout
//!   "mean_confidence": float|null,   // null when predictions lack `confidence`
//!   "macro_avg":    {"precision": float, "recall": float, "f1": float},
//!   "weighted_avg": {"precision": float, "recall": float, "f1": float},
//!   "per_class": [{"class": int, "name": str, "precision": float,
//!                  "recall": float, "f1": float, "support": int,
//!                  "predicted": int}],            // ordered by class
//!   "confused_pairs": [{"a": int, "b": int, "name_a": str, "name_b": str,
//!                       "a_as_b": int, "b_as_a": int, "total": int}],
//!                                                  // top `top_pairs`, most confused first
//!   "phases": [{"name": str, "epochs": int, "final_train_loss": float,
//!               "final_train_acc": float, "final_val_loss": float|null,
//!               "final_val_acc": float|null, "best_val_acc": float|null}]
//! }
//! ```
//!
//! Floats are rounded to 6 decimals so that last-bit noise does not show up
//! in diffs; keys keep the order above. A new version may add keys, never
//! rename or remove them (that would bump the schema number).

use serde::Serialize;

use super::stats::{Average, Pair, Stats};
use crate::plot::curves::Phase;

pub const SCHEMA: &str = "cairn.report.metrics/1";

fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

#[derive(Serialize)]
struct Avg {
    precision: f64,
    recall: f64,
    f1: f64,
}

impl From<&Average> for Avg {
    fn from(a: &Average) -> Self {
        Self { precision: round6(a.precision), recall: round6(a.recall), f1: round6(a.f1) }
    }
}

#[derive(Serialize)]
struct ClassEntry<'a> {
    class: usize,
    name: &'a str,
    precision: f64,
    recall: f64,
    f1: f64,
    support: u64,
    predicted: u64,
}

#[derive(Serialize)]
struct PairEntry<'a> {
    a: usize,
    b: usize,
    name_a: &'a str,
    name_b: &'a str,
    a_as_b: u64,
    b_as_a: u64,
    total: u64,
}

#[derive(Serialize)]
struct PhaseEntry<'a> {
    name: &'a str,
    epochs: usize,
    final_train_loss: f64,
    final_train_acc: f64,
    final_val_loss: Option<f64>,
    final_val_acc: Option<f64>,
    best_val_acc: Option<f64>,
}

#[derive(Serialize)]
struct Metrics<'a> {
    schema: &'static str,
    title: &'a str,
    examples: u64,
    num_classes: usize,
    accuracy: f64,
    mean_confidence: Option<f64>,
    macro_avg: Avg,
    weighted_avg: Avg,
    per_class: Vec<ClassEntry<'a>>,
    confused_pairs: Vec<PairEntry<'a>>,
    phases: Vec<PhaseEntry<'a>>,
}

/// The metrics document as pretty JSON. `phases` carry accuracies in
/// percent (as drawn); they are stored as fractions like every other rate.
pub fn to_json(title: &str, stats: &Stats, pairs: &[Pair], phases: &[Phase], confidence: &[f64]) -> String {
    let names: Vec<&str> = stats.classes.iter().map(|c| c.name.as_str()).collect();
    let frac = |pct: f64| round6(pct / 100.0);
    let metrics = Metrics {
        schema: SCHEMA,
        title,
        examples: stats.examples,
        num_classes: stats.classes.len(),
        accuracy: round6(stats.accuracy),
        mean_confidence: (!confidence.is_empty()).then(|| round6(confidence.iter().sum::<f64>() / confidence.len() as f64)),
        macro_avg: (&stats.macro_avg).into(),
        weighted_avg: (&stats.weighted_avg).into(),
        per_class: stats
            .classes
            .iter()
            .map(|c| ClassEntry {
                class: c.class,
                name: &c.name,
                precision: round6(c.precision),
                recall: round6(c.recall),
                f1: round6(c.f1),
                support: c.support,
                predicted: c.predicted,
            })
            .collect(),
        confused_pairs: pairs
            .iter()
            .map(|p| PairEntry {
                a: p.a,
                b: p.b,
                name_a: names[p.a],
                name_b: names[p.b],
                a_as_b: p.a_as_b,
                b_as_a: p.b_as_a,
                total: p.total(),
            })
            .collect(),
        phases: phases
            .iter()
            .filter_map(|ph| {
                let last = ph.epochs.last()?;
                Some(PhaseEntry {
                    name: &ph.name,
                    epochs: ph.epochs.len(),
                    final_train_loss: round6(last.train_loss),
                    final_train_acc: frac(last.train_acc),
                    final_val_loss: last.val_loss.map(round6),
                    final_val_acc: last.val_acc.map(frac),
                    best_val_acc: ph.epochs.iter().filter_map(|e| e.val_acc).reduce(f64::max).map(frac),
                })
            })
            .collect(),
    };
    let mut s = serde_json::to_string_pretty(&metrics).expect("metrics hold only finite numbers and strings");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::curves::Epoch;
    use crate::report::stats::compute;

    #[test]
    fn schema_keys_are_stable_and_rates_are_fractions() {
        let names = vec!["cat".to_string(), "dog".to_string()];
        let stats = compute(&[0, 0, 1], &[0, 1, 1], &names).unwrap();
        let pairs = crate::report::stats::confused_pairs(&stats.confusion);
        let e = |acc| Epoch { train_loss: 0.5, train_acc: acc, val_loss: None, val_acc: Some(acc) };
        let phases = vec![Phase { name: "frozen".into(), epochs: vec![e(40.0), e(60.0), e(50.0)] }];
        let v: serde_json::Value = serde_json::from_str(&to_json("t", &stats, &pairs, &phases, &[])).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        let mut expected = vec!["schema", "title", "examples", "num_classes", "accuracy", "mean_confidence", "macro_avg", "weighted_avg", "per_class", "confused_pairs", "phases"];
        expected.sort();
        assert_eq!(keys, expected, "the key set is the schema: it must not change");
        assert_eq!(v["schema"], SCHEMA);
        assert_eq!(v["accuracy"], 0.666667);
        assert_eq!(v["mean_confidence"], serde_json::Value::Null);
        assert_eq!(v["confused_pairs"][0]["name_b"], "dog");
        assert_eq!(v["phases"][0]["final_val_acc"], 0.5);
        assert_eq!(v["phases"][0]["best_val_acc"], 0.6);
    }
}
