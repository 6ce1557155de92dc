//! The shipped `pipeline.toml`, loaded as `cairn run` loads it, per
//! profile: which recipe each one runs where a choice was measured.

use std::path::Path;

use cairn::kinds::Registry;
use cairn::spec::{load, LoadOptions, ProfileChoice};

fn finetune_params(profile: ProfileChoice) -> serde_json::Value {
    let registry = Registry::builtin().with_worker_kinds(cairn_kinds::all());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml");
    let p = load(&path, &LoadOptions { profile, sets: vec![] }, &registry).unwrap_or_else(|e| panic!("{profile:?}: {e}"));
    p.stage("finetune").unwrap().checked.params.clone()
}

#[test]
fn the_gpu_recipes_freeze_layer4_batchnorm_and_the_measured_cpu_profiles_do_not() {
    // Without it the default recipe's layer4 fine-tune collapsed on an H200
    // (val 10-33%, test 32.4%; BENCHMARKS "GPU (H200)").
    for p in [ProfileChoice::None, ProfileChoice::Named("gpu-smoke"), ProfileChoice::Named("imagenet")] {
        assert_eq!(finetune_params(p)["freeze_bn"], true, "{p:?}");
    }
    // Their 90% figures were measured without it, and their keys stay.
    for name in ["cpu", "cpu-long", "cpu-lite0", "cpu-fp32", "scratch", "gpu-smoke-cpu"] {
        assert!(finetune_params(ProfileChoice::Named(name)).get("freeze_bn").is_none(), "{name}");
    }
}
