//! `artifacts/<stage>/<output>.<ext>`: the human-facing view of the current
//! outputs of every fresh stage, as hard links into the cache (copies when
//! the cache is on another filesystem). Objects are read-only, so editing a
//! file here cannot corrupt the cache. Files of stages that are no longer
//! fresh, or no longer exist, are removed.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::cache::{Cache, OutputRecord};

/// Makes `dir` hold exactly the given outputs. Returns how many files were
/// (re)linked.
pub fn materialize<'a>(
    dir: &Path,
    cache: &Cache,
    outputs: impl IntoIterator<Item = (&'a str, &'a str, &'a OutputRecord)>,
) -> std::io::Result<usize> {
    let mut keep: BTreeSet<PathBuf> = BTreeSet::new();
    let mut linked = 0;
    for (stage, name, rec) in outputs {
        let stage_dir = dir.join(stage);
        fs::create_dir_all(&stage_dir)?;
        let dest = stage_dir.join(format!("{name}.{}", rec.ext));
        keep.insert(dest.clone());
        let src = cache.object_path(&rec.hash);
        if same_file(&src, &dest) {
            continue;
        }
        let _ = fs::remove_file(&dest);
        if fs::hard_link(&src, &dest).is_err() {
            fs::copy(&src, &dest)?;
        }
        linked += 1;
    }
    remove_stale(dir, &keep)?;
    Ok(linked)
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

fn remove_stale(dir: &Path, keep: &BTreeSet<PathBuf>) -> std::io::Result<()> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(()) };
    for stage_dir in entries.flatten() {
        let p = stage_dir.path();
        if !p.is_dir() {
            continue;
        }
        for f in fs::read_dir(&p)?.flatten() {
            if !keep.contains(&f.path()) {
                let _ = fs::remove_file(f.path());
            }
        }
        // Only removes the directory if it is now empty.
        let _ = fs::remove_dir(&p);
    }
    Ok(())
}
