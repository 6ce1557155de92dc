//! Reads an image-folder data set: `<split>/<class>/<image>` with splits
//! `train` and `test`, optionally under one top folder (as in
//! `cifar10-jpg/train/cat/0001.jpg`). Classes are the sorted folder names
//! of `train`, and `test` must have the same folders; labels are positions
//! in that sorted list. Image files are `.jpg`, `.jpeg` or `.png`.

use std::collections::BTreeSet;

use super::catalog::{Catalog, Item, Pixels};
use super::decode;
use super::source::SourceTree;
use super::DataError;

const SPLITS: [&str; 2] = ["train", "test"];

fn is_image(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(_, e)| ["jpg", "jpeg", "png"].iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// `(top folder, split, class)` of a path laid out as `[top/]split/class/file`.
fn layout(name: &str) -> Option<(&str, &str, &str)> {
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        [split, class, _] if SPLITS.contains(split) => Some(("", split, class)),
        [top, split, class, _] if SPLITS.contains(split) => Some((top, split, class)),
        _ => None,
    }
}

/// An image's index in the tree, its split and its class folder.
type Placed<'a> = (usize, &'a str, &'a str);

pub(crate) fn read(tree: SourceTree) -> Result<Catalog, DataError> {
    let (prefix, placed) = place(&tree)?;
    let classes = classes(&tree, &prefix, &placed)?;
    let [train, test] = split_items(&tree, &prefix, &classes, placed)?;
    let first = &tree.files[train[0].file];
    let dims = decode::dims(&first.display(&tree), &first.read(&tree)?)?;
    if dims.0 == 0 || dims.1 == 0 {
        return Err(DataError::invalid(first.display(&tree), "image has no pixels"));
    }
    Ok(Catalog { classes, train, test, pixels: Pixels::Encoded { tree, dims }, square: None })
}

/// Every image's split and class, and the top folder they share (as a
/// `top/` prefix, empty when there is none).
fn place(tree: &SourceTree) -> Result<(String, Vec<Placed<'_>>), DataError> {
    let mut top: Option<&str> = None;
    let mut placed = Vec::new();
    for (i, file) in tree.files.iter().enumerate() {
        if !is_image(&file.name) {
            continue;
        }
        let Some((t, split, class)) = layout(&file.name) else {
            return Err(DataError::invalid(
                file.display(tree),
                "image is not laid out as [<top>/]<split>/<class>/<file> with split `train` or `test`",
            ));
        };
        if *top.get_or_insert(t) != t {
            return Err(DataError::invalid(
                file.display(tree),
                format!("image is under top folder `{t}`, others under `{}`; keep one top folder", top.unwrap_or("")),
            ));
        }
        placed.push((i, split, class));
    }
    match top {
        None => Err(DataError::invalid(
            tree.origin.display().to_string(),
            "no .jpg/.jpeg/.png images found; expected [<top>/]train/<class>/<file> and test/<class>/<file>",
        )),
        Some("") => Ok((String::new(), placed)),
        Some(top) => Ok((format!("{top}/"), placed)),
    }
}

/// The sorted class folders, which both splits must have the same of.
fn classes(tree: &SourceTree, prefix: &str, placed: &[Placed<'_>]) -> Result<Vec<String>, DataError> {
    let origin = || tree.origin.display().to_string();
    // From directories too, so empty class folders show.
    let folders = |split: &str| -> BTreeSet<String> {
        let split_dir = format!("{prefix}{split}/");
        let from_dirs = tree.dirs.iter().filter_map(|d| d.strip_prefix(&split_dir)).filter(|c| !c.contains('/'));
        let from_files = placed.iter().filter(|(_, s, _)| *s == split).map(|(_, _, c)| *c);
        from_dirs.chain(from_files).map(String::from).collect()
    };
    let train_classes = folders("train");
    let test_classes = folders("test");
    if train_classes.is_empty() {
        return Err(DataError::invalid(origin(), format!("no class folders under `{prefix}train/`")));
    }
    for (split, mine, other) in [("test", &test_classes, &train_classes), ("train", &train_classes, &test_classes)] {
        if let Some(class) = other.difference(mine).next() {
            return Err(DataError::invalid(
                origin(),
                format!("class folder `{prefix}{split}/{class}` is missing (the other split has it); both splits need the same classes"),
            ));
        }
    }
    Ok(train_classes.into_iter().collect())
}

/// The train and test items, labelled by class position; every class
/// folder of each split must hold an image.
fn split_items(tree: &SourceTree, prefix: &str, classes: &[String], placed: Vec<Placed<'_>>) -> Result<[Vec<Item>; 2], DataError> {
    let mut splits: [Vec<Item>; 2] = Default::default();
    for (i, split, class) in placed {
        let label = classes.binary_search_by(|c| c.as_str().cmp(class)).expect("class collected above");
        let s = SPLITS.iter().position(|x| *x == split).expect("layout checked the split");
        splits[s].push(Item { label, source: tree.files[i].name.clone(), file: i, offset: 0 });
    }
    for (s, items) in splits.iter().enumerate() {
        for (label, class) in classes.iter().enumerate() {
            if !items.iter().any(|it| it.label == label) {
                return Err(DataError::invalid(
                    tree.origin.display().to_string(),
                    format!("class folder `{prefix}{}/{class}` has no images", SPLITS[s]),
                ));
            }
        }
    }
    Ok(splits)
}
