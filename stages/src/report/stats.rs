//! Classification statistics from per-image predictions, computed with
//! polars: per-class true positives, support and predicted counts by
//! group-by and joins, then precision, recall and F1 (0 where undefined, as
//! scikit-learn's `zero_division=0`), their macro (unweighted) and
//! support-weighted averages, accuracy, the confusion matrix and the most
//! confused class pairs. Classes that never occur still get a row, so the
//! table always has one row per class.

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

fn f64_col(df: &DataFrame, name: &str) -> Result<Vec<f64>, StatsError> {
    Ok(df.column(name)?.f64()?.into_no_null_iter().collect())
}

fn u64_col(df: &DataFrame, name: &str) -> Result<Vec<u64>, StatsError> {
    Ok(df.column(name)?.cast(&DataType::UInt64)?.u64()?.into_no_null_iter().collect())
}

/// `num / den` as floats, 0 where `den` is 0.
fn ratio(num: Expr, den: Expr) -> Expr {
    when(den.clone().gt(lit(0)))
        .then(num.cast(DataType::Float64) / den.cast(DataType::Float64))
        .otherwise(lit(0.0))
}

/// Counts per class of `by` among `rows`, as columns `class`, `alias`.
fn count_by(rows: LazyFrame, by: &str, alias: &str) -> LazyFrame {
    rows.group_by([col(by)])
        .agg([len().cast(DataType::Int64).alias(alias)])
        .select([col(by).alias("class"), col(alias)])
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
    let rows = polars::df!("label" => label, "pred" => pred)?.lazy();
    let classes = polars::df!("class" => (0..k as i64).collect::<Vec<_>>(), "name" => names)?.lazy();
    let hits = rows.clone().filter(col("label").eq(col("pred")));
    let per_class = classes
        .left_join(count_by(rows.clone(), "label", "support"), col("class"), col("class"))
        .left_join(count_by(rows.clone(), "pred", "predicted"), col("class"), col("class"))
        .left_join(count_by(hits, "label", "tp"), col("class"), col("class"))
        .with_columns([
            col("support").fill_null(lit(0i64)),
            col("predicted").fill_null(lit(0i64)),
            col("tp").fill_null(lit(0i64)),
        ])
        .with_columns([ratio(col("tp"), col("predicted")).alias("precision"), ratio(col("tp"), col("support")).alias("recall")])
        .with_columns([when((col("precision") + col("recall")).gt(lit(0.0)))
            .then(lit(2.0) * col("precision") * col("recall") / (col("precision") + col("recall")))
            .otherwise(lit(0.0))
            .alias("f1")])
        .sort(["class"], SortMultipleOptions::default())
        .collect()?;

    let metrics = ["precision", "recall", "f1"];
    let weighted = |m: &str| (col(m) * col("support").cast(DataType::Float64)).sum() / col("support").cast(DataType::Float64).sum();
    let summary = per_class
        .clone()
        .lazy()
        .select(
            metrics
                .iter()
                .map(|m| col(*m).mean().alias(format!("macro_{m}")))
                .chain(metrics.iter().map(|m| weighted(m).alias(format!("weighted_{m}"))))
                .chain([(col("tp").sum().cast(DataType::Float64) / col("support").sum().cast(DataType::Float64)).alias("accuracy")])
                .collect::<Vec<_>>(),
        )
        .collect()?;
    let first = |name: &str| -> Result<f64, StatsError> {
        // Empty inputs give NaN means; report them as 0 like undefined ratios.
        Ok(summary.column(name)?.f64()?.get(0).filter(|v| v.is_finite()).unwrap_or(0.0))
    };
    let average = |prefix: &str| -> Result<Average, StatsError> {
        Ok(Average {
            precision: first(&format!("{prefix}_precision"))?,
            recall: first(&format!("{prefix}_recall"))?,
            f1: first(&format!("{prefix}_f1"))?,
        })
    };

    let (precision, recall, f1) = (f64_col(&per_class, "precision")?, f64_col(&per_class, "recall")?, f64_col(&per_class, "f1")?);
    let (support, predicted) = (u64_col(&per_class, "support")?, u64_col(&per_class, "predicted")?);
    let classes = (0..k)
        .map(|c| ClassRow {
            class: c,
            name: names[c].clone(),
            precision: precision[c],
            recall: recall[c],
            f1: f1[c],
            support: support[c],
            predicted: predicted[c],
        })
        .collect();
    Ok(Stats {
        classes,
        macro_avg: average("macro")?,
        weighted_avg: average("weighted")?,
        accuracy: first("accuracy")?,
        examples: label.len() as u64,
        confusion: confusion(rows, k)?,
    })
}

/// The `k`×`k` matrix of (label, pred) counts.
fn confusion(rows: LazyFrame, k: usize) -> Result<Vec<Vec<u64>>, StatsError> {
    let cells = rows.group_by([col("label"), col("pred")]).agg([len().alias("n")]).collect()?;
    let mut m = vec![vec![0u64; k]; k];
    let (l, p, n) = (cells.column("label")?.i64()?, cells.column("pred")?.i64()?, u64_col(&cells, "n")?);
    for ((l, p), n) in l.into_no_null_iter().zip(p.into_no_null_iter()).zip(n) {
        m[l as usize][p as usize] = n;
    }
    Ok(m)
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
