//! Draws the stratified subset: per class, a seeded shuffle of that class's
//! official training items gives the training picks, then the validation
//! picks, and the rest form the pool (with the training picks too where
//! asked); the test split is all test items or a seeded per-class draw.
//!
//! The shuffle is a Fisher–Yates driven by SplitMix64 seeded from the
//! pipeline seed, the split and the class, so the subset depends on nothing
//! but those (not on thread count, not on the number of classes drawn
//! before, not on a library's RNG version). Each split's picks are returned
//! in source order, which keeps the index table easy to read.

use cairn_kinds::data::{LoadSubsetParams, Pool, TestAmount};

use super::catalog::Item;

/// Indexes into the catalog's train and test item lists.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Picks {
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub pool: Vec<usize>,
    pub test: Vec<usize>,
}

/// SplitMix64 (Steele et al., 2014): tiny, fast, and fixed forever.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias.
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
}

/// `items` shuffled by a generator seeded from `(seed, stream, class)`.
fn shuffled(mut items: Vec<usize>, seed: u64, stream: u64, class: usize) -> Vec<usize> {
    let mut mix = SplitMix64(seed ^ stream.wrapping_mul(0xd6e8_feb8_6659_fd93));
    let mut rng = SplitMix64(mix.next() ^ (class as u64).wrapping_mul(0xa076_1d64_78bd_642f));
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
    items
}

fn by_class(items: &[Item], classes: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); classes];
    for (i, it) in items.iter().enumerate() {
        out[it.label].push(i);
    }
    out
}

const TRAIN_STREAM: u64 = 1;
const TEST_STREAM: u64 = 2;

pub(crate) fn pick(
    classes: &[String],
    train: &[Item],
    test: &[Item],
    params: &LoadSubsetParams,
    seed: u64,
) -> Result<Picks, String> {
    let val_n = params.val_count();
    let wanted = params.train_per_class + val_n;
    let mut picks = Picks::default();
    for (class, members) in by_class(train, classes.len()).into_iter().enumerate() {
        if members.len() < wanted {
            return Err(format!(
                "class `{}` has {} training images, but train_per_class = {}{} needs {wanted}; lower train_per_class",
                classes[class],
                members.len(),
                params.train_per_class,
                if val_n > 0 { format!(" plus {val_n} for validation") } else { String::new() },
            ));
        }
        let order = shuffled(members, seed, TRAIN_STREAM, class);
        picks.train.extend_from_slice(&order[..params.train_per_class]);
        picks.val.extend_from_slice(&order[params.train_per_class..wanted]);
        match params.pool {
            Pool::None => {}
            Pool::Rest => picks.pool.extend_from_slice(&order[wanted..]),
            Pool::WithTrain => {
                picks.pool.extend_from_slice(&order[..params.train_per_class]);
                picks.pool.extend_from_slice(&order[wanted..]);
            }
        }
    }
    match params.test {
        TestAmount::All => picks.test = (0..test.len()).collect(),
        TestAmount::PerClass(n) => {
            for (class, members) in by_class(test, classes.len()).into_iter().enumerate() {
                if members.len() < n {
                    return Err(format!(
                        "class `{}` has {} test images, but test = {n} per class; lower `test` or use \"all\"",
                        classes[class],
                        members.len()
                    ));
                }
                picks.test.extend_from_slice(&shuffled(members, seed, TEST_STREAM, class)[..n]);
            }
        }
    }
    for list in [&mut picks.train, &mut picks.val, &mut picks.pool, &mut picks.test] {
        list.sort_unstable();
    }
    Ok(picks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(per_class: usize, classes: usize) -> Vec<Item> {
        (0..per_class * classes)
            .map(|i| Item { label: i % classes, source: format!("{i}"), file: 0, offset: 0 })
            .collect()
    }

    fn params(train: usize, val: Option<usize>, test: TestAmount, pool: impl serde::Serialize) -> LoadSubsetParams {
        serde_json::from_value(serde_json::json!({
            "train_per_class": train, "val_per_class": val, "test": test, "pool": pool
        }))
        .unwrap()
    }

    #[test]
    fn picks_are_stratified_disjoint_and_complete() {
        let classes: Vec<String> = (0..3).map(|c| format!("c{c}")).collect();
        let (train, test) = (items(20, 3), items(10, 3));
        let p = pick(&classes, &train, &test, &params(5, Some(3), TestAmount::PerClass(4), true), 7).unwrap();
        for (list, per_class) in [(&p.train, 5), (&p.val, 3), (&p.pool, 12)] {
            for c in 0..3 {
                assert_eq!(list.iter().filter(|&&i| train[i].label == c).count(), per_class);
            }
        }
        let mut all: Vec<usize> = p.train.iter().chain(&p.val).chain(&p.pool).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..60).collect::<Vec<_>>(), "train, val and pool partition the training split");
        assert_eq!(p.test.len(), 12);
    }

    #[test]
    fn a_pool_with_train_holds_every_training_item_but_val() {
        let classes: Vec<String> = (0..3).map(|c| format!("c{c}")).collect();
        let (train, test) = (items(20, 3), items(2, 3));
        let rest = pick(&classes, &train, &test, &params(5, Some(3), TestAmount::All, true), 7).unwrap();
        let with = pick(&classes, &train, &test, &params(5, Some(3), TestAmount::All, "with_train"), 7).unwrap();
        assert_eq!((with.train.clone(), with.val.clone()), (rest.train.clone(), rest.val.clone()), "the subset does not move");
        let mut expected: Vec<usize> = rest.pool.iter().chain(&rest.train).copied().collect();
        expected.sort_unstable();
        assert_eq!(with.pool, expected);
        assert!(with.val.iter().all(|i| !with.pool.contains(i)), "val stays out of the pool");
    }

    #[test]
    fn the_seed_alone_decides() {
        let classes: Vec<String> = (0..2).map(|c| format!("c{c}")).collect();
        let (train, test) = (items(50, 2), items(5, 2));
        let pr = params(10, None, TestAmount::All, false);
        let a = pick(&classes, &train, &test, &pr, 1).unwrap();
        assert_eq!(a, pick(&classes, &train, &test, &pr, 1).unwrap());
        assert_ne!(a.train, pick(&classes, &train, &test, &pr, 2).unwrap().train);
        // Fixed forever: a change here silently changes every cached subset.
        assert_eq!(&a.train[..4], &[5, 9, 22, 28]);
    }

    #[test]
    fn asking_for_more_than_exists_names_the_class() {
        let classes: Vec<String> = vec!["cat".into(), "dog".into()];
        let err = pick(&classes, &items(4, 2), &items(1, 2), &params(4, Some(1), TestAmount::All, false), 0).unwrap_err();
        assert!(err.contains("class `cat` has 4 training images") && err.contains("needs 5"), "{err}");
        let err = pick(&classes, &items(4, 2), &items(1, 2), &params(1, None, TestAmount::PerClass(2), false), 0).unwrap_err();
        assert!(err.contains("test images"), "{err}");
    }
}
