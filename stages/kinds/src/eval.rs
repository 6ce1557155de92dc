//! The `evaluate` kind's declaration: rebuild a trained network from the
//! [`ModelSpec`] its model file stores (`train` writes it; a stated `model`
//! must agree with it, see [`crate::train::model_to_use`]) and score it on
//! a labelled image set, optionally averaging over horizontal flips and
//! shifts (test-time augmentation). Outputs
//! per-image predictions, a confusion matrix and a metrics table whose
//! `test_acc` / `test_loss` are also reported as stage metrics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::train::{ModelSpec, Precision, Tta};
use cairn_kind::{ArtifactType, Checked, EnvNeeds, InputSlot, Kind, KindInfo, OutputDecl, ParamError};

use crate::{canonical, typed, Declared};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// Optional: the architecture is read from the model file. Stated, it
    /// must be the one the file was trained as (it is needed only for a
    /// file that records none, e.g. safetensors not written by `train`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// Test-time augmentation: average the logits over the image and its
    /// mirror (`flip`), or also over one-pixel shifts (`flip_translate`).
    #[serde(default)]
    pub tta: Tta,
    #[serde(default = "batch")]
    pub batch_size: u32,
    /// `auto` (bf16 on CUDA and on CPUs with native bf16, whose
    /// `native_bf16` fact a CPU stage's key holds; fp32 elsewhere), `fp32`
    /// or `bf16`.
    #[serde(default = "auto")]
    pub precision: Precision,
}

fn auto() -> Precision {
    Precision::Auto
}

fn batch() -> u32 {
    500
}

/// 5: the model is read from the model file; `precision = "auto"`
/// computes in bf16 on CPUs with native bf16.
/// 6: fp32 inputs enter the net channels-last (float rounding differs).
/// 7: Lite0 scores with BatchNorm folded into its convs (float rounding differs).
/// 8: Lite0 runs each conv, its even padding and ReLU6 as one oneDNN
/// primitive (float rounding may differ on some CPUs).
pub const VERSION: u32 = 8;

pub struct Evaluate;

impl Declared for Evaluate {
    type Params = EvaluateParams;
}

impl Kind for Evaluate {
    fn info(&self) -> KindInfo {
        KindInfo {
            name: "evaluate",
            version: VERSION,
            summary: "score a trained model: predictions, confusion matrix, test accuracy and loss",
            env: EnvNeeds { torch: true, threads: true },
        }
    }

    fn check(&self, raw: &Value) -> Result<Checked, ParamError> {
        let mut p: EvaluateParams = typed(raw)?;
        p.model = p.model.map(|m| m.resolve("model")).transpose()?;
        if p.batch_size == 0 {
            return Err(ParamError::at(&["batch_size"], "must be at least 1"));
        }
        Ok(Checked::new(
            canonical(&p)?,
            vec![InputSlot::one("model"), InputSlot::one("images"), InputSlot::one("labels"), InputSlot::optional("classes")],
            vec![
                OutputDecl::new("predictions", ArtifactType::Table),
                OutputDecl::new("confusion", ArtifactType::Table),
                OutputDecl::new("metrics", ArtifactType::Table),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stated_model_is_resolved_like_train_s_and_none_is_needed() {
        let plan = Evaluate.check(&json!({"model": {"arch": "resnet18", "normalize": "cifar"}, "tta": "flip"})).unwrap();
        assert_eq!(plan.params["model"]["stem"], json!("imagenet"));
        assert_eq!(plan.params["model"]["normalize"], json!("cifar"));
        assert!(Evaluate.check(&json!({"model": {"arch": "fast"}, "flip": true})).is_err());
        let plan = Evaluate.check(&json!({"tta": "flip"})).unwrap();
        assert_eq!(plan.params.get("model"), None, "an unstated model is not in the key (the file's hash is)");
    }
}
