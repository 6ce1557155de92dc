//! The `gradcam` kind's declaration: class-activation maps by Grad-CAM
//! (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
//! Gradient-based Localization", arXiv 1610.02391) for a deterministic
//! selection of test images — per true class, the most confident mistakes
//! and the most confident correct predictions — each explained for both its
//! predicted and its true class. Outputs the maps as a tensor, the selection
//! as a table, a montage with one row per class, a grid of the worst
//! mistakes overall, and a faithfulness check (confidence drop when the most
//! salient pixels are blurred, against as many random pixels).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::train::ModelSpec;
use cairn_kind::{ArtifactType, Checked, EnvNeeds, InputSlot, Kind, KindInfo, OutputDecl, ParamError};

use crate::{canonical, typed, Declared};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradCamParams {
    /// Optional: the architecture is read from the model file, as for
    /// `evaluate` (a stated one must agree with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// The block whose output activations are explained; defaults to the
    /// last block before `head` (`layer4` for ResNets, the fast net's last
    /// group): the deepest, most class-specific spatial features. Checked
    /// against the model here when `model` is stated, else by the worker
    /// once it has read the model file ([`GradCamParams::layer_in`]).
    #[serde(default)]
    pub layer: Option<String>,
    /// Mistakes and correct predictions shown per true class (each).
    #[serde(default = "three")]
    pub per_class: u32,
    /// Mistakes in the `worst` grid: the most confident ones overall.
    #[serde(default = "sixteen")]
    pub worst: u32,
    /// Share of pixels blurred by the faithfulness check.
    #[serde(default = "fifth")]
    pub faithfulness_fraction: f64,
    /// Gaussian blur sigma in input pixels used by the faithfulness check.
    #[serde(default = "sigma")]
    pub blur_sigma: f64,
    /// Side of one image tile in the figures, in pixels.
    #[serde(default = "tile")]
    pub tile: u32,
}

fn three() -> u32 {
    3
}
fn sixteen() -> u32 {
    16
}
fn fifth() -> f64 {
    0.2
}
fn sigma() -> f64 {
    3.0
}
fn tile() -> u32 {
    112
}

impl GradCamParams {
    /// The explained block of `model`: `layer`, or by default the last
    /// spatial block; an error if `layer` is not a spatial block of it.
    pub fn layer_in(&self, model: &ModelSpec) -> Result<String, ParamError> {
        let blocks = model.blocks();
        // Blocks before the head; `head` itself has no spatial map.
        let spatial = &blocks[..blocks.len() - 1];
        let layer = self.layer.clone().unwrap_or_else(|| spatial[spatial.len() - 1].clone());
        if !spatial.contains(&layer) {
            return Err(ParamError::at(&["layer"], format!("`{layer}` is not a spatial block of this model"))
                .with_help(format!("choose one of: {}", spatial.join(", "))));
        }
        Ok(layer)
    }
}

/// 3: the random baseline of the faithfulness check comes from a private
/// generator (libtorch's global one could be drawn from between reseed and use).
/// 4: the model is read from the model file.
/// 5: fp32 inputs enter the net channels-last (float rounding differs).
/// 6: Lite0 runs with BatchNorm folded into its convs (float rounding differs).
/// 7: Lite0's feature pass runs each conv, its even padding and ReLU6 as
/// one oneDNN primitive (float rounding may differ on some CPUs).
pub const VERSION: u32 = 7;

pub struct GradCam;

impl Declared for GradCam {
    type Params = GradCamParams;
}

impl Kind for GradCam {
    fn info(&self) -> KindInfo {
        KindInfo {
            name: "gradcam",
            version: VERSION,
            summary: "Grad-CAM maps of the most confident mistakes and hits per class, with a faithfulness check",
            env: EnvNeeds { torch: true, threads: true },
        }
    }

    fn check(&self, raw: &Value) -> Result<Checked, ParamError> {
        let mut p: GradCamParams = typed(raw)?;
        p.model = p.model.map(|m| m.resolve("model")).transpose()?;
        if let Some(model) = &p.model {
            p.layer = Some(p.layer_in(model)?);
        }
        if !(1..=100).contains(&p.per_class) {
            return Err(ParamError::at(&["per_class"], "must be between 1 and 100"));
        }
        if !(1..=256).contains(&p.worst) {
            return Err(ParamError::at(&["worst"], "must be between 1 and 256"));
        }
        if !(p.faithfulness_fraction > 0.0 && p.faithfulness_fraction < 1.0) {
            return Err(ParamError::at(&["faithfulness_fraction"], "must be strictly between 0 and 1"));
        }
        if !(p.blur_sigma > 0.0 && p.blur_sigma <= 64.0) {
            return Err(ParamError::at(&["blur_sigma"], "must be in (0, 64]"));
        }
        if !(32..=512).contains(&p.tile) {
            return Err(ParamError::at(&["tile"], "must be between 32 and 512 pixels"));
        }
        Ok(Checked::new(
            canonical(&p)?,
            vec![
                InputSlot::one("model"),
                InputSlot::one("images"),
                InputSlot::one("labels"),
                InputSlot::one("predictions"),
                InputSlot::optional("classes"),
            ],
            vec![
                OutputDecl::new("heatmaps", ArtifactType::Tensor),
                OutputDecl::new("selection", ArtifactType::Table),
                OutputDecl::new("grid", ArtifactType::Figure),
                OutputDecl::new("worst", ArtifactType::Figure),
                OutputDecl::new("faithfulness", ArtifactType::Table),
            ],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_to_the_last_spatial_block() {
        let plan = GradCam.check(&json!({"model": {"arch": "resnet18"}})).unwrap();
        assert_eq!(plan.params["layer"], json!("layer4"));
        let plan = GradCam.check(&json!({"model": {"arch": "fast", "widths": [8, 16]}})).unwrap();
        assert_eq!(plan.params["layer"], json!("group2"));
        assert_eq!(plan.params["per_class"], json!(3));
        let unstated = GradCam.check(&json!({})).unwrap();
        assert_eq!((unstated.params.get("model"), &unstated.params["layer"]), (None, &Value::Null), "resolved by the worker from the model file");
    }

    #[test]
    fn rejects_unknown_layers_and_bad_numbers() {
        let err = GradCam.check(&json!({"model": {"arch": "resnet18"}, "layer": "head"})).unwrap_err();
        assert_eq!(err.path, ["layer"]);
        assert!(err.help.unwrap().contains("layer4"));
        let err = GradCam.check(&json!({"model": {"arch": "fast"}, "faithfulness_fraction": 1.0})).unwrap_err();
        assert_eq!(err.path, ["faithfulness_fraction"]);
        assert!(GradCam.check(&json!({"model": {"arch": "fast"}, "per_class": 0})).is_err());
    }
}
