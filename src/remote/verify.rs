//! `cairn remote verify`: re-reading the remote as a pull would, without
//! installing anything. Each manifest asked about must parse, be filed
//! under its own key and carry key inputs that hash to that key; each
//! object a manifest names must be there, with the size the manifest says
//! and bytes that hash to its name. With `--all`, every manifest and every
//! object under the layout is checked, named or not.

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as RemotePath;

use super::transfer::{bounded, Failure};
use super::{by_size, Remote, RemoteError};
use crate::cache::Manifest;
use crate::digest::{ArtifactHash, StageKey};

/// What `remote verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub manifests: usize,
    pub objects: usize,
    /// Bytes re-hashed.
    pub bytes: u64,
    /// One line per problem, naming the entry and what is wrong with it.
    pub problems: Vec<String>,
    /// Keys asked about that the remote has no manifest for (not a problem).
    pub absent: usize,
}

impl Remote {
    /// Checks the manifests of `keys` (or, with `None`, every manifest)
    /// and every object they name; with `all`, every object on the remote
    /// too. Per-entry problems go in the report; a remote that cannot be
    /// used is the error.
    pub fn verify(&self, keys: Option<&[StageKey]>, all: bool, progress: &dyn Fn(u64)) -> Result<VerifyReport, RemoteError> {
        let mut report = VerifyReport::default();
        if !self.ready()? {
            return Err(self.unusable());
        }
        let keys = match keys {
            Some(k) => k.to_vec(),
            None => self.listed_keys(&mut report)?,
        };
        // Each object once, with the size (and first manifest) naming it.
        let mut named: std::collections::BTreeMap<ArtifactHash, (u64, String)> = Default::default();
        for key in &keys {
            let bytes = match self.block_on(self.get_manifest(key)) {
                Ok(b) => b,
                Err(Failure::Missing) => {
                    report.absent += 1;
                    continue;
                }
                Err(f) => return Err(self.fail_verify(f, format!("manifest {}", key.to_hex()))),
            };
            report.manifests += 1;
            match check_manifest(key, &bytes) {
                Err(why) => report.problems.push(format!("damaged   manifest {}: {why}", key.to_hex())),
                Ok(m) => {
                    for (name, o) in &m.outputs {
                        named.entry(o.hash).or_insert((o.size, format!("`{}.{name}` (manifest {})", m.stage, key.short())));
                    }
                }
            }
        }
        if all {
            for (h, size) in self.listed_objects(&mut report)? {
                named.entry(h).or_insert((size, "no manifest".into()));
            }
        }
        report.objects = named.len();
        let check = |(h, by): (ArtifactHash, String), size: u64| async move { (h, by, self.check_object(h, size).await) };
        let results: Vec<(ArtifactHash, String, Result<(), Failure>)> = self.metered(
            by_size(named.into_iter().map(|(h, (size, by))| ((h, by), size)), &check).collect(),
            &self.bytes_down,
            progress,
        );
        for (h, by, r) in results {
            match r {
                Ok(()) => {}
                Err(Failure::Missing) => report.problems.push(format!("missing   object {} named by {by}", h.to_hex())),
                Err(f @ Failure::Down(_)) => return Err(self.fail_verify(f, format!("object {}", h.to_hex()))),
                Err(Failure::Bad(why)) => report.problems.push(format!("damaged   object {} named by {by}: {why}", h.to_hex())),
            }
        }
        report.bytes = self.bytes_down.load(std::sync::atomic::Ordering::Relaxed);
        Ok(report)
    }

    /// The keys of every manifest on the remote; a name that is not a key
    /// is a problem.
    fn listed_keys(&self, report: &mut VerifyReport) -> Result<Vec<StageKey>, RemoteError> {
        let mut keys = Vec::new();
        for (path, _) in self.list("manifests")? {
            let name = path.filename().unwrap_or_default();
            match name.strip_suffix(".json").and_then(|k| k.parse::<StageKey>().ok()) {
                Some(k) => keys.push(k),
                None => report.problems.push(format!("stray     manifests/{name}: not named <key>.json")),
            }
        }
        Ok(keys)
    }

    /// Every object on the remote, with its size; a name that is not a
    /// hash is a problem.
    fn listed_objects(&self, report: &mut VerifyReport) -> Result<Vec<(ArtifactHash, u64)>, RemoteError> {
        let mut out = Vec::new();
        for (path, size) in self.list("objects")? {
            let name = path.filename().unwrap_or_default();
            match name.parse::<ArtifactHash>() {
                Ok(h) => out.push((h, size)),
                Err(_) => report.problems.push(format!("stray     objects/{name}: not named by a blake3 hash")),
            }
        }
        Ok(out)
    }

    /// Everything under `v1/<dir>/`: path, size and age.
    pub(crate) fn list_meta(&self, dir: &str) -> Result<Vec<object_store::ObjectMeta>, RemoteError> {
        self.list_under(&self.c().base.clone().join(dir))
    }

    /// Everything under `prefix`, at any depth.
    pub(crate) fn list_under(&self, prefix: &RemotePath) -> Result<Vec<object_store::ObjectMeta>, RemoteError> {
        let listed = self.block_on(bounded(self.c().store.list(Some(prefix)).try_collect::<Vec<_>>()));
        match listed {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(object_store::Error::NotFound { .. })) => Ok(Vec::new()),
            Ok(Err(e)) => Err(self.fail_verify(self.failure(&e), format!("the listing of {prefix}"))),
            Err(f) => Err(self.fail_verify(f, format!("the listing of {prefix}"))),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<(RemotePath, u64)>, RemoteError> {
        Ok(self.list_meta(dir)?.into_iter().map(|m| (m.location, m.size)).collect())
    }

    /// A failure that stops a whole-remote command: the remote is down
    /// (reported once), or one request failed.
    fn fail_verify(&self, f: Failure, what: String) -> RemoteError {
        match f {
            Failure::Down(cause) => self.mark_down(cause).unwrap_or_else(|| self.unusable()),
            f => RemoteError::Transfer { url: self.display.clone(), what: format!("cannot read {what}"), cause: f.to_string() },
        }
    }

    /// The error for a remote already found unusable.
    pub(crate) fn unusable(&self) -> RemoteError {
        RemoteError::Unavailable { url: self.display.clone(), cause: self.down().unwrap_or_else(|| "unusable".into()) }
    }
}

/// A manifest read back from the remote: it parses, is filed under its
/// own key, and its key inputs hash to that key.
fn check_manifest(key: &StageKey, bytes: &[u8]) -> Result<Manifest, String> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("does not parse ({e})"))?;
    if m.key != *key {
        return Err(format!("is filed under {} but records key {}", key.short(), m.key.short()));
    }
    if m.key_inputs.key() != *key {
        return Err("its key inputs do not hash to its key".into());
    }
    Ok(m)
}
