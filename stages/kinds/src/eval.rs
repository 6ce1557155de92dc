//! The `evaluate` kind's declaration: rebuild a trained network from the
//! shared [`ModelSpec`] and score it on a labelled image set, optionally
//! averaging over horizontal flips (test-time augmentation). Outputs
//! per-image predictions, a confusion matrix and a metrics table whose
//! `test_acc` / `test_loss` are also reported as stage metrics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::train::{ModelSpec, Precision, Tta};
use cairn_kind::{ArtifactType, Checked, EnvNeeds, InputSlot, Kind, KindInfo, OutputDecl, ParamError};

use crate::typed;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluateParams {
    /// The same model section the training stage used.
    pub model: ModelSpec,
    /// Test-time augmentation: average the logits over the image and its
    /// mirror (`flip`), or also over one-pixel shifts (`flip_translate`).
    #[serde(default)]
    pub tta: Tta,
    #[serde(default = "batch")]
    pub batch_size: u32,
    /// `auto` (bf16 on CUDA, fp32 on CPU), `fp32` or `bf16`.
    #[serde(default = "auto")]
    pub precision: Precision,
}

fn auto() -> Precision {
    Precision::Auto
}

fn batch() -> u32 {
    500
}

pub const VERSION: u32 = 4;

pub struct Evaluate;

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
        let (mut p, _) = typed::<EvaluateParams>(raw)?;
        p.model = p.model.resolve("model")?;
        if p.batch_size == 0 {
            return Err(ParamError::at(&["batch_size"], "must be at least 1"));
        }
        let params = serde_json::to_value(&p).map_err(|e| ParamError::at(&[], e.to_string()))?;
        Ok(Checked::new(
            params,
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
    fn shares_model_section_with_train() {
        let plan = Evaluate.check(&json!({"model": {"arch": "resnet18", "normalize": "cifar"}, "tta": "flip"})).unwrap();
        assert_eq!(plan.params["model"]["stem"], json!("imagenet"));
        assert_eq!(plan.params["model"]["normalize"], json!("cifar"));
        assert!(Evaluate.check(&json!({"model": {"arch": "fast"}, "flip": true})).is_err());
        assert!(Evaluate.check(&json!({"tta": "flip"})).is_err());
    }
}
