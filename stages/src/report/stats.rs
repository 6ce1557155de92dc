//! Classification statistics from per-image predictions: polars' eager
//! frame counts per-class true positives, support, predictions and the
//! confusion matrix by group-by over the prediction rows; from those counts
//! come precision, recall and F1 (0 where undefined, as scikit-learn's
//! `zero_division=0`), their macro (unweighted) and support-weighted
//! averages, accuracy and the most confused class pairs. Classes that never
//! occur still get a row, so the table always has one row per class. The
//! eager API (not the lazy one) keeps polars' query planner and streaming
//! engine out of the build.

use polars::prelude::*;

/// One class's row.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassRow {
    pub class: usize,
    pub name: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Images whose true label is this class.
    pub support: u64,
    /// Images predicted as this class.
    pub predicted: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Average {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub classes: Vec<ClassRow>,
    pub macro_avg: Average,
    pub weighted_avg: Average,
    pub accuracy: f64,
    pub examples: u64,
    /// `confusion[true][pred]` counts.
    pub confusion: Vec<Vec<u64>>,
}

/// Two classes confused with each other, `a < b`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    pub a: usize,
    pub b: usize,
    /// Images of class `a` predicted as `b`.
    pub a_as_b: u64,
    /// Images of class `b` predicted as `a`.
    pub b_as_a: u64,
}

impl Pair {
    pub fn total(&self) -> u64 {
        self.a_as_b + self.b_as_a
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("per-class statistics (polars): {0}")]
    Polars(#[from] PolarsError),
    #[error("predictions: {0}")]
    Invalid(String),
}

/// `num / den`, 0 where `den` is 0.
fn ratio(num: f64, den: f64) -> f64 {
    if den > 0.0 {
        num / den
    } else {
        0.0
    }
}

/// The key columns and size of each group of `rows` by the columns `by`.
fn group_sizes(rows: &DataFrame, by: &[&str]) -> Result<(Vec<Vec<i64>>, Vec<u64>), StatsError> {
    let groups = rows.group_by(by.iter().copied())?;
    let keys = groups.keys().iter().map(|c| Ok(c.i64()?.into_no_null_iter().collect())).collect::<PolarsResult<_>>()?;
    let sizes = groups.get_groups().group_count().into_no_null_iter().map(u64::from).collect();
    Ok((keys, sizes))
}

/// How many of `rows` fall in each class of the column `by` (0 for classes
/// with no rows, so every class has its count).
fn count_by(rows: &DataFrame, by: &str, k: usize) -> Result<Vec<u64>, StatsError> {
    let (keys, sizes) = group_sizes(rows, &[by])?;
    let mut counts = vec![0; k];
    for (class, n) in keys[0].iter().zip(sizes) {
        counts[*class as usize] = n;
    }
    Ok(counts)
}

/// The `k`×`k` matrix of (label, pred) counts.
fn confusion(rows: &DataFrame, k: usize) -> Result<Vec<Vec<u64>>, StatsError> {
    let (keys, sizes) = group_sizes(rows, &["label", "pred"])?;
    let mut m = vec![vec![0u64; k]; k];
    for ((l, p), n) in keys[0].iter().zip(&keys[1]).zip(sizes) {
        m[*l as usize][*p as usize] = n;
    }
    Ok(m)
}

/// The unweighted and the support-weighted mean of one metric over classes.
fn means(classes: &[ClassRow], metric: impl Fn(&ClassRow) -> f64) -> (f64, f64) {
    let support: u64 = classes.iter().map(|c| c.support).sum();
    let unweighted = ratio(classes.iter().map(&metric).sum(), classes.len() as f64);
    let weighted = ratio(classes.iter().map(|c| metric(c) * c.support as f64).sum(), support as f64);
    (unweighted, weighted)
}

/// Statistics of `label` vs `pred` over the classes `names` (index = class).
pub fn compute(label: &[i64], pred: &[i64], names: &[String]) -> Result<Stats, StatsError> {
    let k = names.len();
    if label.len() != pred.len() {
        return Err(StatsError::Invalid(format!("{} labels but {} predictions", label.len(), pred.len())));
    }
    if let Some(bad) = label.iter().chain(pred).find(|&&c| c < 0 || c as usize >= k) {
        return Err(StatsError::Invalid(format!("class {bad} is outside 0..{k} ({k} classes)")));
    }
    let rows = polars::df!("label" => label, "pred" => pred)?;
    let hits = rows.filter(&rows.column("label")?.i64()?.equal(rows.column("pred")?.i64()?))?;
    let (support, predicted, tp) = (count_by(&rows, "label", k)?, count_by(&rows, "pred", k)?, count_by(&hits, "label", k)?);
    let classes: Vec<ClassRow> = (0..k)
        .map(|c| {
            let (precision, recall) = (ratio(tp[c] as f64, predicted[c] as f64), ratio(tp[c] as f64, support[c] as f64));
            let f1 = ratio(2.0 * precision * recall, precision + recall);
            ClassRow { class: c, name: names[c].clone(), precision, recall, f1, support: support[c], predicted: predicted[c] }
        })
        .collect();
    let [(mp, wp), (mr, wr), (mf, wf)] = [means(&classes, |c| c.precision), means(&classes, |c| c.recall), means(&classes, |c| c.f1)];
    Ok(Stats {
        macro_avg: Average { precision: mp, recall: mr, f1: mf },
        weighted_avg: Average { precision: wp, recall: wr, f1: wf },
        accuracy: ratio(hits.height() as f64, rows.height() as f64),
        examples: label.len() as u64,
        confusion: confusion(&rows, k)?,
        classes,
    })
}

/// Every pair of distinct classes confused at least once, most confused
/// first (ties by class indices, so the order is stable).
pub fn confused_pairs(confusion: &[Vec<u64>]) -> Vec<Pair> {
    let k = confusion.len();
    let mut pairs: Vec<Pair> = (0..k)
        .flat_map(|a| (a + 1..k).map(move |b| (a, b)))
        .map(|(a, b)| Pair { a, b, a_as_b: confusion[a][b], b_as_a: confusion[b][a] })
        .filter(|p| p.total() > 0)
        .collect();
    pairs.sort_by(|x, y| y.total().cmp(&x.total()).then((x.a, x.b).cmp(&(y.a, y.b))));
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(k: usize) -> Vec<String> {
        (0..k).map(|i| format!("c{i}")).collect()
    }

    #[test]
    fn matches_a_hand_worked_example() {
        // class 0: 3 images, 2 right, 1 called 1; class 1: 3 images, 2
        // right, 1 called 2; class 2 never occurs but is predicted once.
        let label = [0, 0, 0, 1, 1, 1];
        let pred = [0, 0, 1, 1, 1, 2];
        let s = compute(&label, &pred, &names(3)).unwrap();
        let c0 = &s.classes[0];
        assert_eq!((c0.precision, c0.recall, c0.support), (1.0, 2.0 / 3.0, 3));
        let c1 = &s.classes[1];
        assert_eq!((c1.precision, c1.recall, c1.support, c1.predicted), (2.0 / 3.0, 2.0 / 3.0, 3, 3));
        let c2 = &s.classes[2];
        assert_eq!((c2.precision, c2.recall, c2.f1, c2.support, c2.predicted), (0.0, 0.0, 0.0, 0, 1));
        assert!((s.accuracy - 4.0 / 6.0).abs() < 1e-12);
        assert!((c0.f1 - 0.8).abs() < 1e-12);
        assert!((s.macro_avg.recall - (2.0 / 3.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((s.weighted_avg.recall - 4.0 / 6.0).abs() < 1e-12, "weighted recall equals accuracy");
        assert_eq!(s.confusion, vec![vec![2, 1, 0], vec![0, 2, 1], vec![0, 0, 0]]);
    }

    #[test]
    fn pairs_sum_both_directions_and_sort_stably() {
        let m = vec![vec![5, 2, 0], vec![3, 5, 1], vec![0, 1, 5]];
        let pairs = confused_pairs(&m);
        assert_eq!(pairs[0], Pair { a: 0, b: 1, a_as_b: 2, b_as_a: 3 });
        assert_eq!(pairs[1], Pair { a: 1, b: 2, a_as_b: 1, b_as_a: 1 });
        assert_eq!(pairs.len(), 2);
    }

    #[test]
    fn rejects_out_of_range_classes_and_handles_no_rows() {
        assert!(compute(&[0, 3], &[0, 0], &names(3)).is_err());
        assert!(compute(&[0], &[0, 1], &names(3)).is_err());
        let s = compute(&[], &[], &names(2)).unwrap();
        assert_eq!((s.accuracy, s.examples, s.classes.len()), (0.0, 0, 2));
    }
}
