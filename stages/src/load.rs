//! Reading what the ML kinds consume: labelled image sets, and trained
//! models with the architecture `train` stores beside their weights.
//!
//! A model file written by `train` carries its [`ModelSpec`] as JSON in the
//! safetensors metadata under [`MODEL_META`]; `evaluate` and `gradcam`
//! rebuild the network from it, so a pipeline states each model once, in
//! its training stage. A stage may still state `model` (needed for a file
//! that records none); one that contradicts the stored spec is refused with
//! both shown, since a different normalisation or width silently ruins
//! accuracy (the seed sprint's 10%).

use std::collections::BTreeMap;
use std::path::Path;

use cairn_formats::tensor::{DType, TensorFile};
use cairn_kinds::train::{model_to_use, ModelChoiceError, ModelSpec};
use tch::{nn, Kind, Tensor};

use crate::ctx::{StageError, StageResult, WorkerCtx};
use crate::models::{self, Net};
use crate::{tensors, weights};

/// Metadata key under which `train` stores the model spec in the safetensors.
pub const MODEL_META: &str = "cairn.model";

/// Loads an image/label pair and checks they fit a `num_classes` model.
pub fn labelled(ctx: &WorkerCtx, images: &str, labels: &str, num_classes: i64) -> StageResult<(Tensor, Tensor)> {
    let (x, y) = labelled_file(ctx, images, labels, num_classes)?;
    Ok((tensors::load_file(&x)?, y))
}

/// [`labelled`] with the images left in their file, for a stage that
/// reads them a slice at a time ([`tensors::load_rows`]).
pub fn labelled_file(ctx: &WorkerCtx, images: &str, labels: &str, num_classes: i64) -> StageResult<(TensorFile, Tensor)> {
    let x = TensorFile::open(ctx.input(images)?)?;
    let s = x.shape();
    if x.dtype() != DType::U8 || s.len() != 4 || s[1] != 3 {
        return Err(StageError::new(format!("`{images}` must be u8 images [N, 3, H, W], got {} {s:?}", x.dtype())));
    }
    let y = tensors::load(ctx.input(labels)?)?;
    if y.kind() != Kind::Int64 || y.size() != [s[0] as i64] {
        return Err(StageError::new(format!("`{labels}` must be i64 [{}] to match `{images}`, got {:?} {:?}", s[0], y.kind(), y.size())));
    }
    if s[0] > 0 && (y.min().int64_value(&[]) < 0 || y.max().int64_value(&[]) >= num_classes) {
        return Err(StageError::new(format!("`{labels}` holds labels outside 0..{num_classes} (model.num_classes)")));
    }
    Ok((x, y))
}

/// Writes a trained model: its weights and, as metadata, its spec.
pub fn save_trained(path: &Path, vs: &nn::VarStore, spec: &ModelSpec) -> StageResult {
    let spec = serde_json::to_string(spec).map_err(|e| StageError::new(e.to_string()))?;
    weights::save(path, &weights::state_dict(vs), &BTreeMap::from([(MODEL_META.to_string(), spec)]))
}

/// A trained network rebuilt from the `model` input, with its spec.
pub struct Trained {
    pub vs: nn::VarStore,
    pub net: Net,
    pub spec: ModelSpec,
}

/// Initial weights for a `train` stage from its `init` input. A model file
/// written by `train` records the model it was trained as; the stage's
/// stated model must be that one (the head's class count may differ when
/// `reinit_head` replaces it), or the weights would be copied into a net
/// that reads them differently: a different normalisation gives no shape
/// error, just a ruined accuracy. Files that record nothing (torchvision
/// `.pth` and `.safetensors` imports) are checked by name and shape only.
pub fn init_weights(ctx: &WorkerCtx, model: &ModelSpec, reinit_head: bool) -> StageResult<BTreeMap<String, Tensor>> {
    let path = ctx.input("init")?;
    let file = weights::read_any(path)?;
    if let Some(json) = file.metadata.get(MODEL_META) {
        let mut stored = stored_spec(path, json)?;
        if reinit_head {
            stored.num_classes = model.num_classes;
        }
        if &stored != model {
            let show = |s: &ModelSpec| serde_json::to_string(s).unwrap_or_default();
            return Err(StageError::new(format!(
                "stage `{stage}` states model {} but its init model file {} was trained as {}; make `model` in \
                 [stages.{stage}] match the model it starts from",
                show(model),
                path.display(),
                show(&stored),
                stage = ctx.job.stage
            )));
        }
    }
    Ok(file.tensors)
}

/// Rebuilds the network in the `model` input from the spec the file stores,
/// or from `stated` (the stage's `model` param) for a file that stores
/// none; a stated spec that contradicts the stored one is an error naming
/// both, the stage and the fix.
pub fn trained(ctx: &WorkerCtx, stated: Option<&ModelSpec>) -> StageResult<Trained> {
    let path = ctx.input("model")?;
    let file = weights::read_safetensors(path)?;
    let stored = file.metadata.get(MODEL_META).map(|json| stored_spec(path, json)).transpose()?;
    let spec = model_to_use(stored, stated).map_err(|e| choice_error(e, &ctx.job.stage, path))?;
    let vs = nn::VarStore::new(ctx.device);
    let net = models::build(&vs.root(), &spec);
    weights::load_into(&vs, &file.tensors, |_| false)?;
    Ok(Trained { vs, net, spec })
}

/// The spec in a model file's metadata, checked like a stated one (the
/// file may come from anywhere).
fn stored_spec(path: &Path, json: &str) -> StageResult<ModelSpec> {
    let bad = |e: String| StageError::new(format!("{}: its `{MODEL_META}` metadata is not a valid model spec: {e}", path.display()));
    let spec: ModelSpec = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    spec.resolve("model").map_err(|e| bad(e.to_string()))
}

fn choice_error(e: ModelChoiceError, stage: &str, path: &Path) -> StageError {
    let show = |s: &ModelSpec| serde_json::to_string(s).unwrap_or_default();
    StageError::new(match e {
        ModelChoiceError::Contradiction { stored, stated } => format!(
            "stage `{stage}` states model {} but its model file {} was trained as {}; remove `model` from \
             [stages.{stage}] (the architecture is read from the model file) or make it match",
            show(&stated),
            path.display(),
            show(&stored)
        ),
        ModelChoiceError::Unknown => format!(
            "the model file {} of stage `{stage}` does not record its architecture (no `{MODEL_META}` metadata: \
             it was not written by `train`); state it in [stages.{stage}], e.g. \
             model = {{ arch = \"resnet50\", normalize = \"imagenet\" }}",
            path.display()
        ),
    })
}
