//! The `gradcam` stage end to end on a tiny `fast` network with random
//! weights. The fast net's head is a global max-pool and a linear layer, so
//! ∂y_c/∂A_k is W[c,k] (times a constant) at the pooled position and zero
//! elsewhere, and Grad-CAM's α_k is W[c,k] up to a positive factor that the
//! [0, 1] scaling cancels: the map is ReLU(Σ_k W[c,k] A_k), which this test
//! computes by hand and compares with the stage's `heatmaps`. It also checks
//! the selection rule, the faithfulness table and the figures, and that
//! `gradcam` and `evaluate` take the architecture from the model file (a
//! stated one must agree; a file that records none needs one).

mod common;

use std::collections::BTreeMap;

use cairn_formats::table::{Column, Table};
use cairn_kinds::train::{Arch, ModelSpec, Normalize};
use cairn_stages::models::{self, Feed};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

const K: i64 = 3;
const N: i64 = 24;
const SIDE: i64 = 20;

fn spec() -> ModelSpec {
    ModelSpec { arch: Arch::Fast, num_classes: K, stem: None, widths: Some(vec![6, 8]), normalize: Normalize::None }
        .resolve("model")
        .unwrap()
}

#[test]
fn maps_equal_the_hand_computed_grad_cam_and_outputs_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let net = models::build(&vs.root(), &spec());
    cairn_stages::load::save_trained(&d.join("model.safetensors"), &vs, &spec()).unwrap();

    let images = Tensor::randint(256, [N, 3, SIDE, SIDE], (Kind::Uint8, Device::Cpu));
    let labels = Tensor::randint(K, [N], (Kind::Int64, Device::Cpu));
    cairn_stages::tensors::save(&d.join("images.arrow"), &images).unwrap();
    cairn_stages::tensors::save(&d.join("labels.arrow"), &labels).unwrap();
    let feed = Feed { normalize: Normalize::None, kind: Kind::Float, device: Device::Cpu };
    let rows = |first, count| Ok(images.narrow(0, first, count));
    let probs = models::predict(&net, images.size()[0], rows, &feed, 8, cairn_kinds::train::Tta::None, |_| {}).unwrap().softmax(1, Kind::Float);
    let (conf, pred) = probs.max_dim(1, false);
    let (label_v, pred_v): (Vec<i64>, Vec<i64>) = (Vec::try_from(&labels).unwrap(), Vec::try_from(&pred).unwrap());
    let conf_v: Vec<f32> = Vec::try_from(&conf).unwrap();
    Table::new()
        .with("index", Column::I64((0..N).collect()))
        .with("label", Column::I64(label_v.clone()))
        .with("pred", Column::I64(pred_v.clone()))
        .with("confidence", Column::F32(conf_v.clone()))
        .write(&d.join("predictions.parquet"))
        .unwrap();

    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let inputs = [
        ("model", vec![d.join("model.safetensors")]),
        ("images", vec![d.join("images.arrow")]),
        ("labels", vec![d.join("labels.arrow")]),
        ("predictions", vec![d.join("predictions.parquet")]),
    ];
    // No `model`: the architecture is the one stored in the model file.
    let raw = json!({"per_class": 2, "worst": 4, "tile": 64});
    let mut ctx = common::ctx("gradcam", &raw, &inputs, &out);
    cairn_stages::run(&mut ctx).unwrap();

    let heat = cairn_stages::tensors::load(&out.join("heatmaps.arrow")).unwrap();
    let sel = Table::read(&out.join("selection.parquet")).unwrap();
    let Some(Column::I64(index)) = sel.column("index") else { panic!("selection has no index") };
    let m = index.len() as i64;
    assert_eq!(heat.size(), [m, 2, SIDE, SIDE]);

    // Hand-computed Grad-CAM for both targets of every selected image.
    let w: Vec<f32> = Vec::try_from(vs.variables()["head.fc.weight"].flatten(0, -1)).unwrap();
    for (row, &i) in index.iter().enumerate() {
        let a = net.forward_to(&feed.input(&images.narrow(0, i, 1)), "group2", false).unwrap();
        let (c, h, ww) = (a.size()[1], a.size()[2], a.size()[3]);
        let av: Vec<f32> = Vec::try_from(a.flatten(0, -1)).unwrap();
        for (which, target) in [(0, pred_v[i as usize]), (1, label_v[i as usize])] {
            let raw: Vec<f32> = (0..(h * ww) as usize)
                .map(|p| (0..c as usize).map(|k| w[target as usize * c as usize + k] * av[k * (h * ww) as usize + p]).sum::<f32>().max(0.0))
                .collect();
            let up = Tensor::from_slice(&raw).view([1, 1, h, ww]).upsample_bilinear2d([SIDE, SIDE], false, None, None);
            let expected = &up / up.max().clamp_min(f32::MIN_POSITIVE as f64);
            let got = heat.get(row as i64).get(which);
            let diff = (got - expected.view([SIDE, SIDE])).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "image {i}, target {target}: max difference {diff}");
        }
    }

    // Selection: per class the 2 most confident mistakes, then hits.
    for class in 0..K {
        let mut wrong: Vec<i64> = (0..N).filter(|&i| label_v[i as usize] == class && pred_v[i as usize] != class).collect();
        wrong.sort_by(|&a, &b| conf_v[b as usize].total_cmp(&conf_v[a as usize]).then(a.cmp(&b)));
        for i in wrong.iter().take(2) {
            assert!(index.contains(i), "mistake {i} of class {class} should be selected");
        }
    }
    let faith = Table::read(&out.join("faithfulness.parquet")).unwrap();
    assert_eq!(faith.column("method"), Some(&Column::Str(vec!["salient".into(), "random".into()])));
    let keep = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("gradcam-check");
    std::fs::create_dir_all(&keep).unwrap();
    for fig in ["grid.png", "worst.png"] {
        let (w, h, _, _) = common::decode_png(&out.join(fig));
        assert!(w > 200 && h > 100, "{fig} is {w}×{h}");
        // Kept for a person to look at after the run.
        std::fs::copy(out.join(fig), keep.join(fig)).unwrap();
    }
}

#[test]
fn predictions_of_other_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = models::build(&vs.root(), &spec());
    cairn_stages::weights::save(&d.join("model.safetensors"), &cairn_stages::weights::state_dict(&vs), &BTreeMap::new()).unwrap();
    cairn_stages::tensors::save(&d.join("images.arrow"), &Tensor::zeros([2, 3, SIDE, SIDE], (Kind::Uint8, Device::Cpu))).unwrap();
    cairn_stages::tensors::save(&d.join("labels.arrow"), &Tensor::from_slice(&[0i64, 1])).unwrap();
    Table::new()
        .with("index", Column::I64(vec![0, 5]))
        .with("label", Column::I64(vec![0, 1]))
        .with("pred", Column::I64(vec![0, 0]))
        .with("confidence", Column::F32(vec![0.9, 0.8]))
        .write(&d.join("predictions.parquet"))
        .unwrap();
    let inputs = [
        ("model", vec![d.join("model.safetensors")]),
        ("images", vec![d.join("images.arrow")]),
        ("labels", vec![d.join("labels.arrow")]),
        ("predictions", vec![d.join("predictions.parquet")]),
    ];
    // The file records no architecture (saved without metadata), so the
    // stage states it.
    let raw = json!({"model": {"arch": "fast", "num_classes": K, "widths": [6, 8], "normalize": "none"}});
    let mut ctx = common::ctx("gradcam", &raw, &inputs, &d.join("out"));
    let err = cairn_stages::run(&mut ctx).unwrap_err().to_string();
    assert!(err.contains("image 5") && err.contains("only 2 images"), "{err}");
}

/// Runs `kind` with `raw` params on a model file (with or without its
/// stored spec) and a few images; returns the error, if any.
fn run_on_model(kind: &str, raw: serde_json::Value, stored: bool) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vs = nn::VarStore::new(Device::Cpu);
    let _net = models::build(&vs.root(), &spec());
    let model = d.join("model.safetensors");
    if stored {
        cairn_stages::load::save_trained(&model, &vs, &spec()).unwrap();
    } else {
        cairn_stages::weights::save(&model, &cairn_stages::weights::state_dict(&vs), &BTreeMap::new()).unwrap();
    }
    cairn_stages::tensors::save(&d.join("images.arrow"), &Tensor::zeros([4, 3, SIDE, SIDE], (Kind::Uint8, Device::Cpu))).unwrap();
    cairn_stages::tensors::save(&d.join("labels.arrow"), &Tensor::from_slice(&[0i64, 1, 2, 0])).unwrap();
    Table::new()
        .with("index", Column::I64(vec![0, 1, 2, 3]))
        .with("label", Column::I64(vec![0, 1, 2, 0]))
        .with("pred", Column::I64(vec![0, 0, 0, 0]))
        .with("confidence", Column::F32(vec![0.9, 0.8, 0.7, 0.6]))
        .write(&d.join("predictions.parquet"))
        .unwrap();
    let mut inputs = vec![("model", vec![model]), ("images", vec![d.join("images.arrow")]), ("labels", vec![d.join("labels.arrow")])];
    if kind == "gradcam" {
        inputs.push(("predictions", vec![d.join("predictions.parquet")]));
    }
    let mut ctx = common::ctx(kind, &raw, &inputs, &d.join("out"));
    cairn_stages::run(&mut ctx).map_err(|e| e.to_string())
}

#[test]
fn evaluate_and_gradcam_read_the_architecture_from_the_model_file() {
    run_on_model("evaluate", json!({}), true).unwrap();
    run_on_model("gradcam", json!({"per_class": 1, "worst": 2, "tile": 32}), true).unwrap();
    // A stated model that agrees with the stored one is accepted.
    run_on_model("evaluate", json!({"model": {"arch": "fast", "num_classes": K, "widths": [6, 8], "normalize": "none"}}), true).unwrap();
}

#[test]
fn a_stated_model_that_contradicts_the_stored_one_is_refused_naming_both() {
    for kind in ["evaluate", "gradcam"] {
        let stated = json!({"model": {"arch": "fast", "num_classes": K, "widths": [6, 16], "normalize": "none"}});
        let err = run_on_model(kind, stated, true).unwrap_err();
        assert!(err.contains(&format!("stage `test_{kind}` states model")), "{err}");
        assert!(err.contains("[6,16]") && err.contains("[6,8]"), "both specs are shown: {err}");
        assert!(err.contains(&format!("remove `model` from [stages.test_{kind}]")), "the fix is named: {err}");
    }
}

#[test]
fn a_model_file_without_its_architecture_needs_a_stated_one() {
    let err = run_on_model("evaluate", json!({}), false).unwrap_err();
    assert!(err.contains("does not record its architecture") && err.contains("[stages.test_evaluate]"), "{err}");
    // A layer checked once the model is known, with the choices.
    let err = run_on_model("gradcam", json!({"layer": "layer4"}), true).unwrap_err();
    assert!(err.contains("`layer4` is not a spatial block") && err.contains("group2"), "{err}");
}
