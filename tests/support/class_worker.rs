//! A stand-in `cairn-worker` for a machine of another class, for tests
//! that need libtorch stages without libtorch: its probe reports the class
//! (`cpu_capability`, or a CUDA device), and a job writes the class into
//! every output, as a result computed there would differ.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A pipeline with a data stage, `make`, and a stage keyed on the CPU
/// class, `evaluate`, which the stand-in worker runs.
pub const CLASSED: &str = r#"
[stages.make]
kind = "command"
cmd = "printf m > {out.model}; printf i > {out.images}; printf l > {out.labels}"
outputs = { model = "model.pt", images = "images.arrow", labels = "labels.arrow" }

[stages.evaluate]
kind = "evaluate"
model = { arch = "resnet18" }
inputs = { model = "make.model", images = "make.images", labels = "make.labels" }
"#;

/// Writes the stand-in worker for `cpu_capability` on `device` into `dir`
/// and returns its path (for `CAIRN_WORKER`).
pub fn class_worker(dir: &Path, cpu_capability: &str, device: &str) -> PathBuf {
    let probe = cairn::worker::Probe {
        protocol: cairn::worker::PROTOCOL_VERSION,
        libtorch: cairn::env::TORCH_VERSION.into(),
        libtorch_path: None,
        cuda: device != "cpu",
        device: device.into(),
        cpu_capability: cpu_capability.into(),
        native_bf16: "none".into(),
        kinds: cairn_kinds::all().iter().map(|k| (k.info().name.to_string(), k.info().version)).collect(),
    };
    let path = dir.join(format!("worker-{cpu_capability}-{}", device.replace([':', ' '], "_")));
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --probe ]; then echo '{json}'; exit 0; fi\n\
         sed -n '/\"outputs\": {{/,/}}/p' \"$2\" | grep -o '\": \"[^\"]*\"' | sed 's/^\": \"//; s/\"$//' | \
         while read -r p; do echo '{cpu_capability} {device}' > \"$p\"; done\n",
        json = serde_json::to_string(&probe).unwrap()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}
