//! What a run killed while it placed artifacts leaves, and what the next
//! run makes of it: still cairn's directory, and never someone else's file.

use std::fs;
use std::path::Path;

use super::*;
use crate::cache::{Cache, OutputRecord};
use crate::digest::ArtifactHash;
use crate::kind::ArtifactType;

struct Setup {
    _tmp: tempfile::TempDir,
    cache: Cache,
    dir: PathBuf,
    outputs: Vec<(&'static str, &'static str, OutputRecord)>,
}

/// A cache holding the objects of outputs `a.x` and `b.y`, and an
/// artifacts directory path that does not exist yet.
fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(&tmp.path().join("cache")).unwrap();
    let outputs = [("a", "x", b"first\n".as_slice()), ("b", "y", b"second\n".as_slice())]
        .map(|(stage, name, bytes)| {
            cache.put_bytes(bytes).unwrap();
            let rec = OutputRecord { hash: ArtifactHash::of_bytes(bytes), size: bytes.len() as u64, ty: ArtifactType::File, ext: "txt".into() };
            (stage, name, rec)
        })
        .to_vec();
    let dir = tmp.path().join("artifacts");
    Setup { _tmp: tmp, cache, dir, outputs }
}

impl Setup {
    fn materialize(&self) -> Materialized {
        let outputs = self.outputs.iter().map(|(s, n, r)| (*s, *n, r));
        materialize(&self.dir, &self.cache, outputs, &|_| false).unwrap()
    }

    fn record(&self) -> Record {
        serde_json::from_slice(&fs::read(self.dir.join(RECORD)).unwrap()).unwrap()
    }

    fn write_record(&self, files: &[(&str, (u64, u64))], pending: &[&str]) {
        fs::create_dir_all(&self.dir).unwrap();
        let files = files.iter().map(|(rel, id)| (rel.to_string(), *id)).collect();
        write_record(&self.dir, &Record { files, pending: pending.iter().map(|s| s.to_string()).collect() }).unwrap();
    }

    /// Whether `rel` is the object itself (a hard link to it).
    fn is_object(&self, rel: &str, i: usize) -> bool {
        let object = self.cache.object_path(&self.outputs[i].2.hash);
        identity(&fs::metadata(self.dir.join(rel)).unwrap()) == identity(&fs::metadata(object).unwrap())
    }
}

fn write(path: &Path, bytes: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_run_killed_after_writing_its_intent_leaves_a_directory_the_next_run_completes() {
    let s = setup();
    // Killed midway: the intent names both outputs, `a/x.txt` was half
    // copied (as on a filesystem where hard links fail), `b/y.txt` never made.
    s.write_record(&[], &["a/x.txt", "b/y.txt"]);
    write(&s.dir.join("a/x.txt"), "fir");
    let done = s.materialize();
    assert!(done.left_alone.is_empty(), "{:?}", done.left_alone);
    assert!(s.is_object("a/x.txt", 0) && s.is_object("b/y.txt", 1));
    let record = s.record();
    assert!(record.pending.is_empty(), "{record:?}");
    assert_eq!(record.files.len(), 2);
}

#[test]
fn a_new_output_replaces_the_file_cairn_placed_and_a_dropped_one_goes() {
    let s = setup();
    s.materialize();
    // `a.x` now has `b.y`'s bytes, and `b` is no longer in the pipeline.
    let outputs = [("a", "x", &s.outputs[1].2)];
    materialize(&s.dir, &s.cache, outputs, &|_| false).unwrap();
    let record = s.record();
    assert!(record.pending.is_empty() && record.files.len() == 1, "{record:?}");
    assert!(s.is_object("a/x.txt", 1));
    assert!(!s.dir.join("b").exists(), "an output no longer wanted is removed");
}

#[test]
fn a_file_that_is_not_cairns_is_never_made_pending_nor_replaced() {
    let s = setup();
    s.write_record(&[], &[]);
    write(&s.dir.join("a/x.txt"), "mine\n");
    for _ in 0..2 {
        let done = s.materialize();
        assert_eq!(done.left_alone, vec![s.dir.join("a/x.txt")]);
        assert!(!s.record().pending.contains("a/x.txt"));
    }
    assert_eq!(fs::read_to_string(s.dir.join("a/x.txt")).unwrap(), "mine\n");
    assert!(s.is_object("b/y.txt", 1));
}

#[test]
fn a_pending_file_of_a_stage_no_longer_wanted_is_removed() {
    let s = setup();
    s.write_record(&[], &["gone/z.txt"]);
    write(&s.dir.join("gone/z.txt"), "half");
    s.materialize();
    assert!(!s.dir.join("gone").exists());
    assert!(s.record().pending.is_empty());
}

#[test]
fn a_directory_holding_only_a_record_temp_file_is_claimed() {
    let s = setup();
    write(&s.dir.join(format!("{RECORD_TEMP}a1b2c3")), "{\"fi");
    let done = s.materialize();
    assert!(done.left_alone.is_empty());
    assert!(s.is_object("a/x.txt", 0));
    let names: Vec<_> = fs::read_dir(&s.dir).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names.len(), 3, "the temp file is gone: {names:?}");
}

#[test]
fn a_directory_with_other_files_and_no_record_is_still_refused() {
    let s = setup();
    write(&s.dir.join(format!("{RECORD_TEMP}a1b2c3")), "");
    write(&s.dir.join("notes.txt"), "mine\n");
    let outputs = s.outputs.iter().map(|(st, n, r)| (*st, *n, r));
    assert!(matches!(materialize(&s.dir, &s.cache, outputs, &|_| false), Err(ArtifactsError::Foreign { .. })));
    assert_eq!(fs::read_to_string(s.dir.join("notes.txt")).unwrap(), "mine\n");
}
