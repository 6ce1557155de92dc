//! The lock's classes, updates and comparison, without running anything:
//! the cases the end-to-end tests (tests/lock.rs) reach only slowly or not
//! at all, such as a param moved under another class, and the messages.

use std::collections::BTreeMap;

use serde_json::json;

use super::check::{check, Finding};
use super::*;
use crate::cache::OutputRecord;
use crate::key::{DirtyReason, KEY_SCHEMA};
use crate::kind::ArtifactType;

fn env(cap: &str, bf16: &str) -> BTreeMap<String, String> {
    [("cpu_capability", cap), ("device", "cpu"), ("libtorch", "2.11.0"), ("native_bf16", bf16), ("threads", "4")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ki(lr: f64, env: BTreeMap<String, String>) -> KeyInputs {
    KeyInputs { schema: KEY_SCHEMA, kind: "train".into(), version: 6, params: json!({"lr": lr}), seed: 0, inputs: BTreeMap::new(), env }
}

/// A one-stage run of `train` with these key inputs, producing `bytes`.
fn report(ki: &KeyInputs, bytes: &[u8]) -> RunReport {
    let out = OutputRecord { hash: ArtifactHash::of_bytes(bytes), size: bytes.len() as u64, ty: ArtifactType::File, ext: "pt".into() };
    let stage = StageReport {
        stage: "train".into(),
        kind: "train".into(),
        outcome: Outcome::Ran,
        key: Some(ki.key()),
        reasons: vec![],
        duration_s: 1.0,
        outputs: BTreeMap::from([("model".to_string(), out)]),
        metrics: BTreeMap::from([("acc".to_string(), 0.5), ("loss".to_string(), f64::NAN)]),
    };
    RunReport { run_id: "r".into(), started_at: String::new(), finished_at: String::new(), profile: None, stages: vec![stage], interrupted: false }
}

fn recorded(runs: &[(&KeyInputs, &[u8])]) -> Lock {
    let mut lock = Lock::default();
    for (ki, bytes) in runs {
        let ki = (*ki).clone();
        lock.record(&|_| true, &report(&ki, bytes), &move |_, _| Some(ki.clone()));
    }
    lock
}

fn finding(lock: &Lock, ki: &KeyInputs, bytes: &[u8]) -> Finding {
    let ki2 = ki.clone();
    let c = check(lock, &report(ki, bytes), None, &move |_, _| Some(ki2.clone()));
    c.stages.into_iter().next().expect("one stage").1
}

#[test]
fn a_run_keeps_other_classes_and_replaces_its_own() {
    let (avx512, avx2) = (ki(0.1, env("AVX512", "avx512_bf16")), ki(0.1, env("AVX2", "none")));
    let lock = recorded(&[(&avx512, b"a"), (&avx2, b"b"), (&avx2, b"c")]);
    let classes = &lock.stages["train"];
    assert_eq!(classes.len(), 2, "{classes:?}");
    assert_eq!(classes[&class_of(&avx2.env)].outputs["model"].hash, ArtifactHash::of_bytes(b"c"));
    assert_eq!(classes[&class_of(&avx512.env)].outputs["model"].hash, ArtifactHash::of_bytes(b"a"));
}

#[test]
fn a_param_change_drops_the_classes_it_made_stale() {
    let lock = recorded(&[(&ki(0.1, env("AVX512", "avx512_bf16")), b"a"), (&ki(0.2, env("AVX2", "none")), b"b")]);
    assert_eq!(lock.stages["train"].keys().collect::<Vec<_>>(), vec![&class_of(&env("AVX2", "none"))]);
}

#[test]
fn another_class_is_reported_not_compared() {
    let lock = recorded(&[(&ki(0.1, env("AVX512", "avx512_bf16")), b"a")]);
    let f = finding(&lock, &ki(0.1, env("AVX2", "none")), b"zzz");
    assert!(matches!(f, Finding::NotComparable { .. }), "{f:?}");
    assert_eq!(
        f.to_string(),
        "computed under cpu_capability=AVX512, native_bf16=avx512_bf16, this machine is cpu_capability=AVX2, native_bf16=none: not comparable"
    );
    let c = check(&lock, &report(&ki(0.1, env("AVX2", "none")), b"z"), None, &|_, _| Some(ki(0.1, env("AVX2", "none"))));
    assert!(!c.failed(false) && c.failed(true), "only strict fails on a stage it could not compare");
}

#[test]
fn the_matching_class_is_compared() {
    let (avx512, avx2) = (ki(0.1, env("AVX512", "avx512_bf16")), ki(0.1, env("AVX2", "none")));
    let lock = recorded(&[(&avx512, b"a"), (&avx2, b"b")]);
    assert_eq!(finding(&lock, &avx2, b"b"), Finding::Matches);
    let f = finding(&lock, &avx2, b"other");
    assert!(matches!(&f, Finding::Differs { outputs } if outputs[0].output == "model"), "{f:?}");
    assert!(f.to_string().contains("output `model`"), "{f}");
}

#[test]
fn a_moved_param_is_named_even_from_another_class() {
    let lock = recorded(&[(&ki(0.1, env("AVX512", "avx512_bf16")), b"a")]);
    let f = finding(&lock, &ki(0.2, env("AVX2", "none")), b"a");
    let Finding::Stale { reasons, .. } = &f else { panic!("{f:?}") };
    assert!(matches!(reasons.as_slice(), [DirtyReason::ParamChanged { name, .. }] if name == "lr"), "{reasons:?}");
    assert!(f.to_string().contains("param `lr` 0.1 → 0.2"), "{f}");
}

#[test]
fn the_lock_round_trips_sorted_with_nan_metrics_as_null() {
    let lock = recorded(&[(&ki(0.1, env("AVX2", "none")), b"a")]);
    let text = String::from_utf8(lock.to_bytes()).unwrap();
    assert!(text.contains("\"loss\": null") && text.ends_with("}\n"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    let none = OnDisk::read(&path).unwrap();
    assert!(!none.exists() && none.lock().unwrap().is_none());
    assert!(none.write(&lock).unwrap());
    let back = OnDisk::read(&path).unwrap();
    assert_eq!(back.lock().unwrap().as_ref(), Some(&lock));
    assert!(!back.write(&lock).unwrap(), "the same lock is not written again");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left beside it");
    let ki = ki(0.1, env("AVX2", "none"));
    assert!(back.holds(&|_| true, &report(&ki, b"a")), "a no-op run");
    assert!(!back.holds(&|_| true, &report(&ki, b"b")), "another output");
    assert!(!back.holds(&|s| s != "train", &report(&ki, b"a")), "a stage gone from the pipeline");
}

#[test]
fn a_run_read_from_disk_is_held_by_an_entry_of_any_class_with_its_key_and_outputs() {
    let (avx512, avx2) = (ki(0.1, env("AVX512", "avx512_bf16")), ki(0.1, env("AVX2", "none")));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    OnDisk::read(&path).unwrap().write(&recorded(&[(&avx512, b"a"), (&avx2, b"b")])).unwrap();
    let on_disk = OnDisk::read(&path).unwrap();
    assert!(on_disk.holds(&|_| true, &report(&avx512, b"a")) && on_disk.holds(&|_| true, &report(&avx2, b"b")));
    assert!(!on_disk.holds(&|_| true, &report(&avx512, b"b")), "one class's key with another's outputs");
    let mut renamed = report(&avx2, b"b");
    renamed.stages[0].stage = "train2".into();
    assert!(!on_disk.holds(&|_| true, &renamed), "the same entry under another stage");
    let mut resized = report(&avx2, b"b");
    resized.stages[0].outputs.get_mut("model").unwrap().size += 1;
    assert!(!on_disk.holds(&|_| true, &resized), "another size");
    let mut failed = report(&avx2, b"zzz");
    failed.stages[0].outcome = Outcome::Failed { error: "x".into() };
    assert!(on_disk.holds(&|_| true, &failed), "a stage that did not finish changes no entry");
}

#[test]
fn a_lock_deleted_during_a_run_is_written_anew() {
    let lock = recorded(&[(&ki(0.1, env("AVX2", "none")), b"a")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    OnDisk::read(&path).unwrap().write(&lock).unwrap();
    let on_disk = OnDisk::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(on_disk.lock().unwrap(), None);
    assert!(on_disk.write(&lock).unwrap());
    assert_eq!(Lock::read(&path).unwrap().as_ref(), Some(&lock));
}

#[test]
fn a_corrupt_lock_names_the_file_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE);
    std::fs::write(&path, "{\n  \"lock_schema\": 1,\n<<<<<<< HEAD\n").unwrap();
    let e = OnDisk::read(&path).err().expect("refused").to_string();
    assert!(e.contains(&format!("{}:3:", path.display())) && e.contains("cairn run"), "{e}");
    std::fs::write(&path, "{\"lock_schema\": 99, \"stages\": {}}").unwrap();
    let e = OnDisk::read(&path).err().expect("refused").to_string();
    assert!(e.contains("lock_schema 99"), "{e}");
}
