//! Local overrides: `cairn.local.toml` beside the pipeline file, the
//! `--set` flags and `--profile` of this checkout (like `dvc config
//! --local`). `cairn run --save-overrides` writes it (as `make run` does);
//! every command then loads the pipeline with it, so `status`, `explain`,
//! `inspect` and `verify` see the pipeline the last run used without
//! retyping flags. Flags given on the command line come after it and win.
//! It is git-ignored: it holds paths that are true on one machine only.

use std::path::{Path, PathBuf};

/// The file name, beside `pipeline.toml`.
pub const FILE: &str = "cairn.local.toml";

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Overrides {
    /// `STAGE.PARAM=VALUE`, as `--set` takes them.
    pub set: Vec<String>,
    pub profile: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{} is not valid: {message}\n  help: fix it, or delete it and run `cairn run --save-overrides ...` again", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where the overrides of the pipeline at `pipeline_file` live.
pub fn path_for(pipeline_file: &Path) -> PathBuf {
    cairn::spec::beside(pipeline_file, FILE)
}

impl Overrides {
    /// The overrides beside `pipeline_file`; none when there is no file.
    pub fn read(pipeline_file: &Path) -> Result<Self, LocalError> {
        let path = path_for(pipeline_file);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            // Bytes that are not text are a damaged file, not a read error.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => return Err(LocalError::Parse { path, message: "not UTF-8 text".into() }),
            Err(source) => return Err(LocalError::Read { path, source }),
        };
        parse(&text).map_err(|message| LocalError::Parse { path, message })
    }

    /// Replaces the file beside `pipeline_file` with these overrides, and
    /// returns its path; `None` when it already held them, so that a
    /// `make run` with nothing new writes nothing.
    pub fn save(&self, pipeline_file: &Path) -> Result<Option<PathBuf>, LocalError> {
        let path = path_for(pipeline_file);
        let body = self.to_toml();
        let text = format!("# Local overrides for this checkout, written by `cairn run --save-overrides`.\n# Every cairn command applies them; flags on the command line win. Not committed.\n{body}");
        if std::fs::read_to_string(&path).is_ok_and(|old| old == text) {
            return Ok(None);
        }
        std::fs::write(&path, text).map_err(|source| LocalError::Write { path: path.clone(), source })?;
        Ok(Some(path))
    }

    fn to_toml(&self) -> String {
        let mut doc = toml_edit::DocumentMut::new();
        doc["set"] = toml_edit::value(self.set.iter().collect::<toml_edit::Array>());
        if let Some(p) = &self.profile {
            doc["profile"] = toml_edit::value(p.as_str());
        }
        doc.to_string()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.profile.is_none()
    }

    /// One line for humans: `--profile cpu --set a.b=1`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.profile.iter().map(|p| format!("--profile {p}")).collect();
        parts.extend(self.set.iter().map(|s| format!("--set {s}")));
        parts.join(" ")
    }
}

fn parse(text: &str) -> Result<Overrides, String> {
    let doc: toml_edit::DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| e.to_string())?;
    let mut out = Overrides::default();
    for (key, item) in doc.iter() {
        match key {
            "set" => {
                let arr = item.as_array().ok_or("`set` must be an array of \"STAGE.PARAM=VALUE\" strings")?;
                for v in arr {
                    out.set.push(v.as_str().ok_or("`set` must hold strings")?.to_string());
                }
            }
            "profile" => out.profile = Some(item.as_str().ok_or("`profile` must be a string")?.to_string()),
            other => return Err(format!("unknown key `{other}` (expected `set` and `profile`)")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_round_trip_beside_the_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        assert!(Overrides::read(&file).unwrap().is_empty(), "no file, no overrides");
        let o = Overrides { set: vec!["load.source=\"../data/x.tar.gz\"".into()], profile: Some("cpu".into()) };
        assert_eq!(o.save(&file).unwrap(), Some(dir.path().join(FILE)));
        assert_eq!(Overrides::read(&file).unwrap(), o);
        assert_eq!(o.describe(), "--profile cpu --set load.source=\"../data/x.tar.gz\"");
    }

    #[test]
    fn saving_the_same_overrides_again_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        let local = dir.path().join(FILE);
        let o = Overrides { set: vec!["a.b=1".into()], profile: None };
        assert!(o.save(&file).unwrap().is_some());
        // An old mtime that any write would replace.
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options().write(true).open(&local).unwrap().set_modified(old).unwrap();
        let modified = || std::fs::metadata(&local).unwrap().modified().unwrap();
        assert_eq!(o.save(&file).unwrap(), None);
        assert_eq!(modified(), old, "the same overrides were written again");
        let other = Overrides { set: vec!["a.b=2".into()], profile: None };
        assert_eq!(other.save(&file).unwrap(), Some(local.clone()));
        assert_eq!(Overrides::read(&file).unwrap(), other);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "set = 3\nbogus = true\n").unwrap();
        let e = Overrides::read(&dir.path().join("pipeline.toml")).unwrap_err().to_string();
        assert!(e.contains(FILE) && e.contains("help"), "{e}");
    }
}
