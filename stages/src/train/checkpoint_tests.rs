//! Checkpoints in-process: a resumed execution makes the bytes of an
//! uninterrupted one (for each optimizer, with lookahead and early-stopping
//! bookkeeping in the state), and a checkpoint that cannot be used is
//! ignored — training starts over — never a panic or a half-restored run.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::checkpoint::{FILE, META};
use super::tests::{params, train_job};
use crate::weights;

/// Three epochs, so the checkpoint after epoch 2 is one a run resumes
/// from; lookahead has begun averaging by then (after 30% of 9 steps).
fn raw(optimizer: &str) -> Value {
    let mut p = params(0.01);
    p["epochs"] = 3.into();
    p["optimizer"] = optimizer.into();
    p["lookahead"] = true.into();
    p["patience"] = 2.into();
    p
}

/// Weights every compared run starts from, made once: a net built from
/// scratch draws from libtorch's generator, which tests running in
/// parallel share.
fn start(d: &Path) -> PathBuf {
    train_job(&d.join("start"), params(0.01), None, None).unwrap()
}

/// Trains `raw` from `init` into `out`, checkpointing in `ckpt` if given.
fn train(out: &Path, mut raw: Value, init: &Path, ckpt: Option<&Path>) {
    raw["init"] = serde_json::json!({"stage": "start.model"});
    train_job(out, raw, Some(init), ckpt).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}

/// Every output a run wrote in `dir`.
fn outputs(dir: &Path) -> Vec<Vec<u8>> {
    ["model", "history", "summary"].iter().map(|o| std::fs::read(dir.join(o)).unwrap_or_else(|e| panic!("{o}: {e}"))).collect()
}

fn meta(ckpt: &Path) -> Value {
    let file = weights::read_safetensors(&ckpt.join(FILE)).unwrap();
    serde_json::from_str(&file.metadata[META]).unwrap()
}

/// Rewrites the checkpoint's metadata with `edit`.
fn edit_meta(ckpt: &Path, edit: impl FnOnce(&mut Value)) {
    let file = weights::read_safetensors(&ckpt.join(FILE)).unwrap();
    let mut m = meta(ckpt);
    edit(&mut m);
    let metadata = [(META.to_string(), m.to_string())].into();
    weights::save(&ckpt.join(FILE), &file.tensors, &metadata).unwrap();
}

#[test]
fn a_resumed_execution_makes_the_bytes_of_an_uninterrupted_one() {
    for optimizer in ["sgd", "adamw", "muon"] {
        let d = tempfile::tempdir().unwrap();
        let (init, plain, ckpt) = (start(d.path()), d.path().join("plain"), d.path().join("ckpt"));
        train(&plain, raw(optimizer), &init, None);
        let first = d.path().join("first");
        train(&first, raw(optimizer), &init, Some(&ckpt));
        assert_eq!(outputs(&first), outputs(&plain), "{optimizer}: checkpointing changes no output");
        assert_eq!(meta(&ckpt)["epochs_done"], 2, "{optimizer}: the last checkpoint is after epoch 2 of 3");
        let names: Vec<String> = weights::read_safetensors(&ckpt.join(FILE)).unwrap().tensors.into_keys().collect();
        for part in ["model/", "best/", "optim/0.0.m", "lookahead/"] {
            assert!(names.iter().any(|n| n.starts_with(part)), "{optimizer}: no `{part}` in the checkpoint: {names:?}");
        }
        assert_eq!(names.iter().any(|n| n.ends_with(".v")), optimizer == "adamw", "{optimizer}: Adam's second moments");

        let resumed = d.path().join("resumed");
        train(&resumed, raw(optimizer), &init, Some(&ckpt));
        assert_eq!(outputs(&resumed), outputs(&plain), "{optimizer}: a resumed run makes the same bytes");
        // It did resume from the checkpoint: another data-generator state
        // there gives another last epoch.
        edit_meta(&ckpt, |m| m["rng"] = (m["rng"].as_u64().unwrap() ^ 1).into());
        let altered = d.path().join("altered");
        train(&altered, raw(optimizer), &init, Some(&ckpt));
        assert_ne!(outputs(&altered), outputs(&plain), "{optimizer}: the checkpoint was not read");
    }
}

#[test]
fn an_unusable_checkpoint_is_ignored_and_training_starts_over() {
    let d = tempfile::tempdir().unwrap();
    let (init, plain, ckpt) = (start(d.path()), d.path().join("plain"), d.path().join("ckpt"));
    train(&plain, raw("sgd"), &init, None);
    train(&d.path().join("first"), raw("sgd"), &init, Some(&ckpt));
    let good = std::fs::read(ckpt.join(FILE)).unwrap();
    let mut wider = raw("sgd");
    wider["model"]["widths"] = serde_json::json!([4, 16]);
    let other_ckpt = d.path().join("other-ckpt");
    train_job(&d.path().join("other"), wider, None, Some(&other_ckpt)).unwrap();
    let other = std::fs::read(other_ckpt.join(FILE)).unwrap();
    let cases: [(&str, &[u8]); 4] =
        [("truncated", &good[..good.len() / 2]), ("garbage", b"not a checkpoint at all"), ("empty", b""), ("another model's", &other)];
    for (what, bytes) in cases {
        std::fs::write(ckpt.join(FILE), bytes).unwrap();
        let out = d.path().join(what);
        train(&out, raw("sgd"), &init, Some(&ckpt));
        assert_eq!(outputs(&out), outputs(&plain), "a {what} checkpoint is ignored: training starts over");
    }
    // Metadata that contradicts itself is no better.
    std::fs::write(ckpt.join(FILE), &good).unwrap();
    edit_meta(&ckpt, |m| m["epochs_done"] = 7.into());
    let out = d.path().join("inconsistent");
    train(&out, raw("sgd"), &init, Some(&ckpt));
    assert_eq!(outputs(&out), outputs(&plain), "an inconsistent checkpoint is ignored");
}

/// `stem_epochs = 2` of 3: the final stem bias is the one the checkpoint
/// after epoch 2 holds, while the groups trained on; without it the bias
/// moves in epoch 3 too. A run resumed from that checkpoint fixes the stem
/// as well: the same bytes.
#[test]
fn stem_epochs_fixes_the_stem_after_its_epochs_in_a_resumed_run_too() {
    let d = tempfile::tempdir().unwrap();
    let init = start(d.path());
    let mut fixed = raw("sgd");
    fixed["lookahead"] = false.into(); // its averaging would move the fixed bias
    fixed.as_object_mut().unwrap().remove("patience");
    fixed["keep"] = "last".into();
    let free = fixed.clone();
    fixed["stem_epochs"] = 2.into();
    let ckpt = d.path().join("ckpt");
    let (fixed_dir, free_dir) = (d.path().join("fixed"), d.path().join("free"));
    train(&fixed_dir, fixed.clone(), &init, Some(&ckpt));
    train(&free_dir, free, &init, None);
    let after2 = weights::read_safetensors(&ckpt.join(FILE)).unwrap().tensors;
    let model = |dir: &Path| weights::read_safetensors(&dir.join("model")).unwrap().tensors;
    let (fixed_model, free_model) = (model(&fixed_dir), model(&free_dir));
    let at2 = |name: &str| &after2[&format!("model/{name}")];
    assert!(fixed_model["stem.conv.bias"].equal(at2("stem.conv.bias")), "the stem is fixed in epoch 3");
    assert!(!fixed_model["group1.conv1.weight"].equal(at2("group1.conv1.weight")), "the groups train on");
    assert!(!free_model["stem.conv.bias"].equal(at2("stem.conv.bias")), "without stem_epochs the stem trains in epoch 3");
    let resumed = d.path().join("resumed");
    train(&resumed, fixed, &init, Some(&ckpt));
    assert_eq!(outputs(&resumed), outputs(&fixed_dir), "a resumed run fixes the stem too");
}
