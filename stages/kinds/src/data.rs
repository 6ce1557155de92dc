//! Declarations of the data kinds: `load_subset` (read CIFAR-10-style data
//! and draw a stratified, seeded subset) and `resize` (resample u8 image
//! tensors).
//!
//! `load_subset`'s `source` is a path relative to the pipeline file. It is
//! declared as an implied input so the engine hashes the data into the key
//! (and, for the official CIFAR-10 archive at its default path, downloads
//! and checks it when missing); the worker reads it as input slot `source`.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use cairn_kind::{ArtifactType, Checked, EnvNeeds, InputRef, InputSlot, Kind, KindInfo, OutputDecl, ParamError};

use crate::{canonical, typed, Declared};

/// Where `load_subset` looks when `source` is not given.
pub const CIFAR10_DEFAULT_SOURCE: &str = "data/cifar-10-binary.tar.gz";
/// The official CIFAR-10 binary release and its checksum.
pub const CIFAR10_URL: &str = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
pub const CIFAR10_SHA256: &str = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd";

/// How `load_subset` reads its source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceFormat {
    /// Decide from the content: CIFAR-10 batch files, else an image folder.
    #[default]
    Auto,
    /// The official binary release: `data_batch_1..5.bin`, `test_batch.bin`.
    Cifar10Binary,
    /// `<split>/<class>/*.{jpg,jpeg,png}`, as a directory, `.tar` or `.tar.gz`.
    ImageFolder,
}

/// How much of the test split to keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TestAmount {
    #[default]
    All,
    PerClass(usize),
}

impl Serialize for TestAmount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TestAmount::All => s.serialize_str("all"),
            TestAmount::PerClass(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for TestAmount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TestAmount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#""all" or a number of test images per class"#)
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<TestAmount, E> {
                usize::try_from(n).map(TestAmount::PerClass).map_err(|_| E::custom("too large"))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<TestAmount, E> {
                u64::try_from(n).map_err(|_| E::custom("must not be negative")).and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TestAmount, E> {
                if s == "all" {
                    Ok(TestAmount::All)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(s), &self))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Which training images `load_subset` also emits as the pool (`pool_*`),
/// the data a pretraining stage learns from before the subset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Pool {
    /// No pool (`false`).
    #[default]
    None,
    /// The training images left out of the subset and of validation (`true`).
    Rest,
    /// Every training image but validation's: the rest and the subset
    /// (`"with_train"`). More data to pretrain on, at the price of a
    /// pretrained net that has seen the subset it is fine-tuned on.
    WithTrain,
}

impl Serialize for Pool {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Pool::None => s.serialize_bool(false),
            Pool::Rest => s.serialize_bool(true),
            Pool::WithTrain => s.serialize_str("with_train"),
        }
    }
}

impl<'de> Deserialize<'de> for Pool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Pool;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"true (the training images outside the subset and val), false, or "with_train" (the subset too)"#)
            }
            fn visit_bool<E: de::Error>(self, b: bool) -> Result<Pool, E> {
                Ok(if b { Pool::Rest } else { Pool::None })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Pool, E> {
                match s {
                    "with_train" => Ok(Pool::WithTrain),
                    _ => Err(E::invalid_value(de::Unexpected::Str(s), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

fn default_source() -> String {
    CIFAR10_DEFAULT_SOURCE.to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSubsetParams {
    /// Data set path, relative to the pipeline file.
    #[serde(default = "default_source")]
    pub source: String,
    #[serde(default)]
    pub format: SourceFormat,
    /// Training images drawn per class.
    pub train_per_class: usize,
    /// Validation images per class, drawn from the official training split
    /// in addition to (and disjoint from) the training images.
    #[serde(default)]
    pub val_per_class: Option<usize>,
    /// Alternative to `val_per_class`: validation images per class as a
    /// fraction of `train_per_class` (0.1 with 500 → 50 per class).
    #[serde(default)]
    pub val_fraction: Option<f64>,
    #[serde(default)]
    pub test: TestAmount,
    /// Also emit a pool of training images (`pool_*`); see [`Pool`].
    #[serde(default)]
    pub pool: Pool,
    /// Scale each image as it loads to a `size`×`size` square: its shorter
    /// side to `size` (antialiased bilinear), then the centre square. For
    /// image folders of mixed sizes; absent, every image must share the
    /// first one's size and is kept as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
}

impl LoadSubsetParams {
    /// Validation images per class, whichever way they were asked for.
    pub fn val_count(&self) -> usize {
        match (self.val_per_class, self.val_fraction) {
            (Some(n), _) => n,
            (None, Some(f)) => (f * self.train_per_class as f64).round() as usize,
            (None, None) => 0,
        }
    }
}

pub struct LoadSubset;

impl Declared for LoadSubset {
    type Params = LoadSubsetParams;
}

impl LoadSubset {
    /// 2: a truncated JPEG is refused, not decoded with its missing part
    /// grey; every other image's bytes are as in 1.
    pub const VERSION: u32 = 2;
}

impl Kind for LoadSubset {
    fn info(&self) -> KindInfo {
        KindInfo {
            name: "load_subset",
            version: Self::VERSION,
            summary: "read CIFAR-10 (binary or image folder) and draw a stratified, seeded subset",
            env: EnvNeeds { torch: false, threads: false },
        }
    }

    fn check(&self, raw: &Value) -> Result<Checked, ParamError> {
        let p: LoadSubsetParams = typed(raw)?;
        let params = canonical(&p)?;
        if p.train_per_class == 0 {
            return Err(ParamError::at(&["train_per_class"], "must be at least 1"));
        }
        if p.val_per_class.is_some() && p.val_fraction.is_some() {
            return Err(ParamError::at(&["val_fraction"], "give either `val_per_class` or `val_fraction`, not both"));
        }
        if let Some(f) = p.val_fraction {
            if !(0.0..1.0).contains(&f) {
                return Err(ParamError::at(&["val_fraction"], format!("{f} is not in [0, 1)"))
                    .with_help("e.g. `val_fraction = 0.1` holds out 10% as many images as `train_per_class`"));
            }
        }
        if p.size.is_some_and(|s| !(1..=4096).contains(&s)) {
            return Err(ParamError::at(&["size"], "must be 1 to 4096 pixels").with_help("e.g. `size = 224`"));
        }
        if p.source.trim().is_empty() {
            return Err(ParamError::at(&["source"], "must name a file or directory"));
        }
        let official = p.source == CIFAR10_DEFAULT_SOURCE && p.format != SourceFormat::ImageFolder;
        let source = InputRef::External {
            path: p.source.clone(),
            url: official.then(|| CIFAR10_URL.to_string()),
            sha256: official.then(|| CIFAR10_SHA256.to_string()),
            fetch: None,
        };
        let mut outputs = Vec::new();
        let mut splits = vec!["train", "test"];
        if p.val_count() > 0 {
            splits.insert(1, "val");
        }
        if p.pool != Pool::None {
            splits.push("pool");
        }
        for split in splits {
            outputs.push(OutputDecl::new(format!("{split}_images"), ArtifactType::Tensor));
            outputs.push(OutputDecl::new(format!("{split}_labels"), ArtifactType::Tensor));
        }
        outputs.push(OutputDecl::new("index", ArtifactType::Table));
        outputs.push(OutputDecl::new("classes", ArtifactType::Table));
        Ok(Checked::new(params, vec![], outputs).with_implied("source", source))
    }
}

/// Resampling filter for `resize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    #[default]
    Bilinear,
    Bicubic,
    Nearest,
    /// Box averaging (for shrinking by integer-ish factors).
    Area,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeParams {
    /// Output height and width in pixels.
    pub size: usize,
    #[serde(default)]
    pub mode: ResizeMode,
    /// Low-pass filter when shrinking (bilinear and bicubic only; it has no
    /// effect when enlarging). Defaults to on where it applies; the checked
    /// params always hold the concrete value.
    #[serde(default)]
    pub antialias: Option<bool>,
    /// The image tensors to resize, each an input slot and an output of the
    /// same name (e.g. `["train", "val", "test"]`), so one stage resizes
    /// every split with one set of params.
    #[serde(default = "default_splits")]
    pub splits: Vec<String>,
}

fn default_splits() -> Vec<String> {
    vec!["images".to_string()]
}

impl ResizeParams {
    pub fn antialias(&self) -> bool {
        self.antialias.unwrap_or(matches!(self.mode, ResizeMode::Bilinear | ResizeMode::Bicubic))
    }
}

pub struct Resize;

impl Declared for Resize {
    type Params = ResizeParams;
}

impl Resize {
    pub const VERSION: u32 = 2;
}

impl Kind for Resize {
    fn info(&self) -> KindInfo {
        KindInfo {
            name: "resize",
            version: Self::VERSION,
            summary: "resample u8 N×C×H×W images to size×size",
            env: EnvNeeds { torch: true, threads: false },
        }
    }

    fn check(&self, raw: &Value) -> Result<Checked, ParamError> {
        let mut p: ResizeParams = typed(raw)?;
        if !(1..=8192).contains(&p.size) {
            return Err(ParamError::at(&["size"], format!("{} is not in 1..=8192", p.size)));
        }
        if p.antialias() && matches!(p.mode, ResizeMode::Nearest | ResizeMode::Area) {
            return Err(ParamError::at(&["antialias"], format!("`antialias` does not apply to mode `{}`", format!("{:?}", p.mode).to_lowercase()))
                .with_help("drop `antialias`, or use mode \"bilinear\" or \"bicubic\""));
        }
        // Canonical params name the effective value, so leaving the default
        // implicit or spelling it out gives the same key.
        p.antialias = Some(p.antialias());
        let params = canonical(&p)?;
        if p.splits.is_empty() {
            return Err(ParamError::at(&["splits"], "name at least one split to resize"));
        }
        let mut seen = std::collections::BTreeSet::new();
        for s in &p.splits {
            if !seen.insert(s) {
                return Err(ParamError::at(&["splits"], format!("`{s}` is listed twice")));
            }
        }
        Ok(Checked::new(
            params,
            p.splits.iter().map(|s| InputSlot::one(s)).collect(),
            p.splits.iter().map(|s| OutputDecl::new(s.clone(), ArtifactType::Tensor)).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn load_subset_fills_defaults_and_implies_the_official_archive() {
        let plan = LoadSubset.check(&json!({"train_per_class": 100})).unwrap();
        assert_eq!(plan.params["source"], CIFAR10_DEFAULT_SOURCE);
        assert_eq!(plan.params["test"], "all");
        assert_eq!(plan.params["format"], "auto");
        let (slot, InputRef::External { url, sha256, .. }) = &plan.implied_inputs[0] else { panic!("not a file") };
        assert_eq!(slot, "source");
        assert_eq!(url.as_deref(), Some(CIFAR10_URL));
        assert_eq!(sha256.as_deref(), Some(CIFAR10_SHA256));
        let names: Vec<_> = plan.outputs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["train_images", "train_labels", "test_images", "test_labels", "index", "classes"]);
        assert!(plan.params.get("size").is_none(), "no `size` unless given: keys made before it stay");
        let sized = LoadSubset.check(&json!({"train_per_class": 100, "size": 64})).unwrap();
        assert_eq!(sized.params["size"], 64);
    }

    #[test]
    fn load_subset_declares_val_and_pool_only_when_asked() {
        let plan = LoadSubset
            .check(&json!({"source": "x.tar.gz", "train_per_class": 10, "val_fraction": 0.2, "test": 5, "pool": true}))
            .unwrap();
        let names: Vec<_> = plan.outputs.iter().map(|o| o.name.as_str()).collect();
        assert!(names.contains(&"val_images") && names.contains(&"pool_labels"), "{names:?}");
        let InputRef::External { url, .. } = &plan.implied_inputs[0].1 else { panic!() };
        assert_eq!(url, &None, "only the default path is downloadable");
        let p: LoadSubsetParams = serde_json::from_value(plan.params).unwrap();
        assert_eq!((p.val_count(), p.test), (2, TestAmount::PerClass(5)));
    }

    #[test]
    fn load_subset_rejects_bad_params_with_their_path() {
        let err = LoadSubset.check(&json!({"train_per_class": 10, "tset": 5})).unwrap_err();
        assert!(err.message.contains("unknown field `tset`"), "{err:?}");
        let err = LoadSubset.check(&json!({"train_per_class": 10, "test": "some"})).unwrap_err();
        assert_eq!(err.path, ["test"]);
        let err = LoadSubset.check(&json!({"train_per_class": 10, "val_per_class": 1, "val_fraction": 0.1})).unwrap_err();
        assert_eq!(err.path, ["val_fraction"]);
        let err = LoadSubset.check(&json!({"train_per_class": 10, "format": "cifar100"})).unwrap_err();
        assert_eq!(err.path, ["format"]);
        let err = LoadSubset.check(&json!({"train_per_class": 10, "pool": "everything"})).unwrap_err();
        assert_eq!(err.path, ["pool"]);
        assert!(err.message.contains("with_train"), "{err:?}");
        for size in [0, 5000] {
            assert_eq!(LoadSubset.check(&json!({"train_per_class": 10, "size": size})).unwrap_err().path, ["size"]);
        }
    }

    #[test]
    fn load_subset_pool_keeps_its_canonical_form() {
        // `true` and `false` canonicalise as before `with_train` existed, so
        // no pipeline's key moved when it was added.
        let canon = |pool: Value| LoadSubset.check(&json!({"train_per_class": 10, "pool": pool})).unwrap().params["pool"].clone();
        assert_eq!(canon(json!(true)), json!(true));
        assert_eq!(canon(json!(false)), json!(false));
        assert_eq!(canon(json!("with_train")), json!("with_train"));
        let absent = LoadSubset.check(&json!({"train_per_class": 10})).unwrap();
        assert_eq!(absent.params["pool"], json!(false));
        assert!(!absent.outputs.iter().any(|o| o.name.starts_with("pool")));
    }

    #[test]
    fn resize_checks_mode_and_antialias() {
        let plan = Resize.check(&json!({"size": 224})).unwrap();
        assert_eq!(plan.params, json!({"size": 224, "mode": "bilinear", "antialias": true, "splits": ["images"]}));
        let nearest = Resize.check(&json!({"size": 224, "mode": "nearest"})).unwrap();
        assert_eq!(nearest.params["antialias"], false);
        let explicit = Resize.check(&json!({"size": 224, "antialias": true})).unwrap();
        assert_eq!(explicit.params, plan.params, "default and explicit value give one key");
        let err = Resize.check(&json!({"size": 224, "mode": "nearest", "antialias": true})).unwrap_err();
        assert_eq!(err.path, ["antialias"]);
        assert!(Resize.check(&json!({"size": 0})).is_err());
        assert!(Resize.check(&json!({"size": 64, "mode": "area", "antialias": false})).is_ok());
        let multi = Resize.check(&json!({"size": 32, "splits": ["train", "test"]})).unwrap();
        assert_eq!(multi.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["train", "test"]);
        assert!(Resize.check(&json!({"size": 32, "splits": ["train", "train"]})).is_err());
    }
}
