//! Which test images get explained. Per true class: the `per_class` most
//! confident mistakes (what the model is surest about and wrong) and the
//! `per_class` most confident correct predictions (what it has learnt);
//! then the `worst` most confident mistakes overall. Ties break by image
//! index, so the choice depends on the predictions alone.

use std::cmp::Ordering;

use crate::report::inputs::Predictions;

/// One selected image.
#[derive(Clone, Debug, PartialEq)]
pub struct Pick {
    /// Row in the `images` tensor.
    pub index: i64,
    pub label: i64,
    pub pred: i64,
    pub confidence: f64,
}

impl Pick {
    pub fn correct(&self) -> bool {
        self.label == self.pred
    }
}

/// The selection: `picks` holds each image once; the other fields index it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    pub picks: Vec<Pick>,
    /// Per class: positions in `picks` of its mistakes, then its hits.
    pub per_class: Vec<Vec<usize>>,
    /// Positions in `picks` of the worst mistakes, worst first.
    pub worst: Vec<usize>,
}

/// Most confident first, then lower index first.
fn by_confidence(a: &Pick, b: &Pick) -> Ordering {
    b.confidence.total_cmp(&a.confidence).then(a.index.cmp(&b.index))
}

pub fn select(p: &Predictions, num_classes: usize, per_class: usize, worst: usize) -> Result<Selection, String> {
    if p.confidence.len() != p.label.len() {
        return Err("predictions need a `confidence` column to choose images by".into());
    }
    let all: Vec<Pick> = (0..p.label.len())
        .map(|i| Pick { index: p.index[i], label: p.label[i], pred: p.pred[i], confidence: p.confidence[i] })
        .collect();
    let mut sel = Selection { per_class: vec![Vec::new(); num_classes], ..Default::default() };
    let add = |sel: &mut Selection, pick: &Pick| -> usize {
        match sel.picks.iter().position(|q| q.index == pick.index) {
            Some(i) => i,
            None => {
                sel.picks.push(pick.clone());
                sel.picks.len() - 1
            }
        }
    };
    for class in 0..num_classes {
        for want_correct in [false, true] {
            let mut group: Vec<&Pick> = all.iter().filter(|q| q.label == class as i64 && q.correct() == want_correct).collect();
            group.sort_by(|a, b| by_confidence(a, b));
            for q in group.into_iter().take(per_class) {
                let at = add(&mut sel, q);
                sel.per_class[class].push(at);
            }
        }
    }
    let mut mistakes: Vec<&Pick> = all.iter().filter(|q| !q.correct()).collect();
    mistakes.sort_by(|a, b| by_confidence(a, b));
    for q in mistakes.into_iter().take(worst) {
        let at = add(&mut sel, q);
        sel.worst.push(at);
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preds(rows: &[(i64, i64, f64)]) -> Predictions {
        Predictions {
            index: (0..rows.len() as i64).collect(),
            label: rows.iter().map(|r| r.0).collect(),
            pred: rows.iter().map(|r| r.1).collect(),
            confidence: rows.iter().map(|r| r.2).collect(),
            prob_columns: 0,
        }
    }

    #[test]
    fn picks_most_confident_mistakes_and_hits_per_class() {
        let p = preds(&[
            (0, 1, 0.6), // 0: mistake
            (0, 1, 0.9), // 1: worse mistake
            (0, 0, 0.8), // 2: hit
            (0, 0, 0.7), // 3: hit
            (1, 0, 0.9), // 4: mistake, ties with 1 on confidence
            (1, 1, 0.5), // 5: hit
        ]);
        let s = select(&p, 2, 1, 2).unwrap();
        let idx = |ps: &[usize]| ps.iter().map(|&i| s.picks[i].index).collect::<Vec<_>>();
        assert_eq!(idx(&s.per_class[0]), [1, 2]);
        assert_eq!(idx(&s.per_class[1]), [4, 5]);
        assert_eq!(idx(&s.worst), [1, 4], "ties break by index");
        assert_eq!(s.picks.len(), 4, "an image selected twice is stored once");
    }

    #[test]
    fn needs_confidence() {
        let mut p = preds(&[(0, 0, 0.5)]);
        p.confidence.clear();
        assert!(select(&p, 1, 1, 1).is_err());
    }
}
