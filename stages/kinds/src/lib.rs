//! Declarations of cairn's built-in ML stage kinds: typed params, input
//! slots, outputs and implementation versions — and nothing that computes.
//!
//! This crate links no libtorch, so the `cairn` binary can validate a whole
//! pipeline, compute keys and answer `status` without loading it. The
//! computing half of each kind lives in `cairn-stages` (the worker), whose
//! implementation functions receive the same param structs ([`Declared`]),
//! deserialised once from the canonical JSON the engine hands it. Keeping
//! both halves on one struct is what makes "the params the key was computed
//! from" and "the params the stage ran with" the same thing.
//!
//! Params take four serde steps from `pipeline.toml` to the optimizer: the
//! engine turns the stage's TOML table into JSON (`spec`); [`typed`]
//! deserialises that into the kind's struct (borrowing it, no copy); `check`
//! serialises the checked struct once to its canonical JSON ([`canonical`]),
//! which enters the key and the job file; and `cairn_stages::run`
//! deserialises that once (borrowing again) into the struct the
//! implementation takes. (Before issue 13, `check` serialised twice, both
//! deserialisations copied the JSON first, and the worker parsed its job
//! file into a JSON value before converting it to a `Job`; now the job file
//! is parsed once, straight into a `Job`.)
//!
//! Versions live here, next to the params: bump a kind's `VERSION` whenever
//! its worker code, or a method of its declaration the worker computes
//! with, changes results. `tests/kind_fingerprints.rs` pins a fingerprint
//! of each kind's worker sources and declarations to its version
//! (`stages/kinds/fingerprints.toml`), so a change without a bump fails
//! `make test`; the worker refuses jobs keyed with another version.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use cairn_kind::{Kind, KindInfo, ParamError};

pub mod data;
pub mod eval;
pub mod gradcam;
pub mod report;
pub mod train;

/// Every built-in ML kind, by name in code. This list drives both sides:
/// [`all`] (what the engine registers, keys and checks a worker's probe
/// against) is derived from it, and the worker's `cairn_stages::run` is an
/// exhaustive `match` over it, so a kind declared here but not implemented
/// there does not compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KindId {
    LoadSubset,
    Resize,
    Train,
    Evaluate,
    Report,
    GradCam,
}

impl KindId {
    pub const ALL: [KindId; 6] =
        [KindId::LoadSubset, KindId::Resize, KindId::Train, KindId::Evaluate, KindId::Report, KindId::GradCam];

    /// The kind's declaration.
    pub fn decl(self) -> &'static dyn Kind {
        match self {
            KindId::LoadSubset => &data::LoadSubset,
            KindId::Resize => &data::Resize,
            KindId::Train => &train::Train,
            KindId::Evaluate => &eval::Evaluate,
            KindId::Report => &report::Report,
            KindId::GradCam => &gradcam::GradCam,
        }
    }

    pub fn info(self) -> KindInfo {
        self.decl().info()
    }

    /// The kind named `name` in `kind = "…"`.
    pub fn from_name(name: &str) -> Option<KindId> {
        Self::ALL.into_iter().find(|k| k.info().name == name)
    }
}

/// Every built-in ML kind's declaration.
pub fn all() -> Vec<&'static dyn Kind> {
    KindId::ALL.into_iter().map(KindId::decl).collect()
}

pub fn find(name: &str) -> Option<&'static dyn Kind> {
    KindId::from_name(name).map(KindId::decl)
}

/// A declaration with its typed params: the struct its [`Kind::check`]
/// canonicalises, and the one the worker's implementation receives
/// (`cairn_stages::run` deserialises it once from the job's canonical JSON,
/// with the kind named by [`KindId`], so the two sides cannot disagree on
/// the type).
pub trait Declared: Kind {
    type Params: Serialize + DeserializeOwned;
}

/// Deserialises raw params into `P` (which should use
/// `#[serde(deny_unknown_fields)]` and defaults), reporting the failing
/// path.
pub fn typed<P: DeserializeOwned>(raw: &Value) -> Result<P, ParamError> {
    serde_path_to_error::deserialize(raw).map_err(|e| {
        let path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|seg| match seg {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        let message = e.into_inner().to_string();
        // serde names a missing field in the message, at its parent's path:
        // the user looks for the field itself.
        match message.strip_prefix("missing field `").and_then(|m| m.strip_suffix('`')) {
            Some(field) => ParamError::new([path, vec![field.to_string()]].concat(), "is required and has no default".to_string()),
            None => match quoted(&message) {
                Some(help) => ParamError::new(path, message).with_help(help),
                None => ParamError::new(path, message),
            },
        }
    })
}

/// For a number or boolean where a string is wanted (an `env` value, a
/// name), the same value as a TOML string: `X = 1` reads as an integer.
fn quoted(message: &str) -> Option<String> {
    let rest = message.strip_prefix("invalid type: ")?;
    let (_, value) = rest.split_once('`')?;
    let (value, wanted) = value.split_once('`')?;
    (wanted == ", expected a string" && !rest.starts_with("string")).then(|| format!("write it as a string: `\"{value}\"` (in a `--set` flag, quoted for the shell: `'...=\"{value}\"'`)"))
}

/// The canonical JSON form of checked params: what enters the stage key
/// and what the worker deserialises.
pub fn canonical<P: Serialize>(params: &P) -> Result<Value, ParamError> {
    serde_json::to_value(params).map_err(|e| ParamError::at(&[], e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_param_is_named_at_its_own_path() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            size: u32,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct P {
            inner: Inner,
        }
        let e = typed::<P>(&serde_json::json!({"inner": {}})).unwrap_err();
        assert_eq!(e.to_string(), "inner.size: is required and has no default");
        let e = typed::<P>(&serde_json::json!({"inner": {"size": "x"}})).unwrap_err();
        assert!(e.to_string().starts_with("inner.size: invalid type"), "{e}");
    }

    #[test]
    fn a_number_where_a_string_is_wanted_gets_the_string_to_write() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct P {
            env: std::collections::BTreeMap<String, String>,
        }
        let e = typed::<P>(&serde_json::json!({"env": {"X": 1}})).unwrap_err();
        assert_eq!(e.path, ["env", "X"]);
        assert_eq!(e.help.as_deref(), Some("write it as a string: `\"1\"` (in a `--set` flag, quoted for the shell: `'...=\"1\"'`)"));
        let e = typed::<P>(&serde_json::json!({"env": {"X": true}})).unwrap_err();
        assert!(e.help.is_some_and(|h| h.contains("`\"true\"`")));
        let e = typed::<P>(&serde_json::json!({"env": [1]})).unwrap_err();
        assert_eq!(e.help, None, "a list for a table is no quoting matter");
    }

    #[test]
    fn every_kind_id_has_a_distinct_name_that_finds_it() {
        let names: std::collections::BTreeSet<_> = KindId::ALL.iter().map(|k| k.info().name).collect();
        assert_eq!(names.len(), KindId::ALL.len());
        for id in KindId::ALL {
            assert_eq!(KindId::from_name(id.info().name), Some(id));
            assert_eq!(find(id.info().name).map(|k| k.info()), Some(id.info()));
        }
        assert_eq!(all().len(), KindId::ALL.len());
        assert!(KindId::from_name("command").is_none());
    }
}
