//! The `report` kind's declaration: turn an evaluation's per-image
//! predictions, the training histories and (optionally) Grad-CAM figures into
//! something a person reads and something CI diffs. It computes per-class
//! precision / recall / F1 with macro and weighted averages, the confusion
//! matrix and the most confused class pairs, draws the confusion matrix and
//! the learning curves as PNGs, and writes one self-contained `index.html`
//! (figures embedded), a Markdown summary and a `metrics` JSON whose schema
//! (`cairn.report.metrics/1`, documented in the worker's
//! `report::metrics` module) only ever grows fields.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use cairn_kind::{ArtifactType, Checked, EnvNeeds, InputRef, InputSlot, Kind, KindInfo, OutputDecl, ParamError};

use crate::{canonical, typed, Declared};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// Heading of the HTML and Markdown reports.
    #[serde(default = "default_title")]
    pub title: String,
    /// Names of the training phases, one per `histories` input in the same
    /// order (e.g. `["frozen", "finetune"]`); empty means `phase 1`, … .
    #[serde(default)]
    pub phases: Vec<String>,
    /// How many of the most confused class pairs the reports list.
    #[serde(default = "default_top_pairs")]
    pub top_pairs: u32,
}

fn default_title() -> String {
    "Experiment report".into()
}

fn default_top_pairs() -> u32 {
    5
}

/// Bounds `top_pairs`: beyond this the list stops being a summary.
const MAX_TOP_PAIRS: u32 = 100;

/// 4: the macro and weighted averages are summed in class order (polars'
/// eager frame counts, Rust sums), which may differ from polars' lazy
/// `mean` in the last bit.
pub const VERSION: u32 = 4;

pub struct Report;

impl Declared for Report {
    type Params = ReportParams;
}

impl Kind for Report {
    fn info(&self) -> KindInfo {
        KindInfo {
            name: "report",
            version: VERSION,
            summary: "per-class metrics, confusion matrix, learning curves and one self-contained HTML report",
            env: EnvNeeds { torch: false, threads: false },
        }
    }

    fn check(&self, raw: &Value) -> Result<Checked, ParamError> {
        let p: ReportParams = typed(raw)?;
        let params = canonical(&p)?;
        if p.title.trim().is_empty() {
            return Err(ParamError::at(&["title"], "must not be empty"));
        }
        if p.top_pairs == 0 || p.top_pairs > MAX_TOP_PAIRS {
            return Err(ParamError::at(&["top_pairs"], format!("must be between 1 and {MAX_TOP_PAIRS}")));
        }
        for (i, name) in p.phases.iter().enumerate() {
            let at = i.to_string();
            if name.trim().is_empty() {
                return Err(ParamError::at(&["phases", &at], "phase names must not be empty"));
            }
            if p.phases[..i].contains(name) {
                return Err(ParamError::at(&["phases", &at], format!("phase `{name}` is named twice")));
            }
        }
        Ok(Checked::new(
            params,
            vec![
                InputSlot::one("predictions"),
                InputSlot::optional("classes"),
                // Optional and many: a report of a model trained elsewhere
                // has no histories, one of a two-phase run has two.
                InputSlot { name: "histories".into(), required: false, many: true },
                InputSlot { name: "gradcam".into(), required: false, many: true },
                InputSlot::optional("faithfulness"),
                InputSlot::optional("pipeline"),
            ],
            vec![
                OutputDecl::new("per_class", ArtifactType::Table),
                OutputDecl::new("confused_pairs", ArtifactType::Table),
                OutputDecl::new("confusion", ArtifactType::Figure),
                OutputDecl::new("curves", ArtifactType::Figure),
                OutputDecl::with_ext("metrics", ArtifactType::File, "json"),
                OutputDecl::with_ext("report", ArtifactType::Report, "md"),
                OutputDecl::with_ext("index", ArtifactType::Report, "html"),
            ],
        )
        .with_implied("pipeline", InputRef::UpstreamParams))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fills_defaults_and_declares_outputs() {
        let plan = Report.check(&json!({})).unwrap();
        assert_eq!(plan.params, json!({"title": "Experiment report", "phases": [], "top_pairs": 5}));
        let names: Vec<_> = plan.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["per_class", "confused_pairs", "confusion", "curves", "metrics", "report", "index"]);
        assert!(plan.inputs.iter().any(|s| s.name == "histories" && s.many && !s.required));
    }

    #[test]
    fn rejects_bad_params_with_their_path() {
        let err = Report.check(&json!({"phases": ["frozen", "frozen"]})).unwrap_err();
        assert_eq!(err.path, ["phases", "1"]);
        let err = Report.check(&json!({"top_pairs": 0})).unwrap_err();
        assert_eq!(err.path, ["top_pairs"]);
        let err = Report.check(&json!({"titel": "typo"})).unwrap_err();
        assert!(err.message.contains("titel"), "{}", err.message);
    }
}
