//! Run records on the remote: `v1/runs/<time>-<id>.json`, one per run that
//! pushed (`cairn run --push`, `push = true`, `cairn push`), listing the
//! stage keys that run produced or used. They are the remote's only
//! history, and what `cairn remote gc --keep-runs N` keeps results for.
//! Written create-only under a unique name; never read by a pull.

use std::collections::BTreeMap;

use object_store::PutPayload;
use serde::{Deserialize, Serialize};

use super::transfer::Failure;
use super::{Remote, RemoteError};
use crate::digest::StageKey;

/// One run, as recorded on the remote.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    /// The remote schema it was written under.
    pub schema: u32,
    pub run_id: String,
    pub pipeline: String,
    pub finished_at: String,
    pub cairn_version: String,
    /// Stage name → the key whose entry the run produced or used.
    pub keys: BTreeMap<String, StageKey>,
}

impl RunRecord {
    pub fn new(run_id: &str, pipeline: &str, keys: BTreeMap<String, StageKey>) -> Self {
        Self {
            schema: super::REMOTE_SCHEMA,
            run_id: run_id.to_string(),
            pipeline: pipeline.to_string(),
            finished_at: crate::timestamp::now(),
            cairn_version: env!("CARGO_PKG_VERSION").to_string(),
            keys,
        }
    }

    /// `<finished_at, compact>-<16 hex digits>.json`: sorts by time, and two
    /// machines recording in the same second do not collide.
    fn file_name(&self) -> String {
        let time: String = self.finished_at.chars().filter(char::is_ascii_alphanumeric).take(15).collect();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let salt = blake3::hash(format!("{}{nanos}{}", self.run_id, std::process::id()).as_bytes()).to_hex();
        format!("{time}-{}.json", &salt[..16])
    }
}

impl Remote {
    /// Records a run that pushed. A failure is the caller's warning: the
    /// results are on the remote, only `remote gc`'s view of them is not.
    pub fn push_run_record(&self, record: &RunRecord) -> Result<(), RemoteError> {
        if record.keys.is_empty() || !self.ready()? {
            return Ok(());
        }
        let path = self.c().base.clone().join("runs").join(record.file_name().as_str());
        let bytes = serde_json::to_vec_pretty(record).expect("run records serialise");
        let n = bytes.len() as u64;
        match self.block_on(self.put_create(&path, PutPayload::from(bytes))) {
            Ok(()) => {
                self.count(0, n);
                Ok(())
            }
            Err(Failure::Down(cause)) => self.mark_down(cause).map_or(Ok(()), Err),
            Err(f) => Err(RemoteError::Transfer { url: self.display.clone(), what: "cannot record the run".into(), cause: f.to_string() }),
        }
    }

    /// Every run record, oldest first, with its path; a record that does
    /// not parse is `None` (kept by gc, reported by the caller).
    pub(crate) fn run_records(&self) -> Result<Vec<(object_store::ObjectMeta, Option<RunRecord>)>, RemoteError> {
        let mut metas = self.list_meta("runs")?;
        metas.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas {
            let record = match self.block_on(self.get_small(&meta.location)) {
                Ok(bytes) => serde_json::from_slice::<RunRecord>(&bytes).ok(),
                Err(Failure::Missing) => continue,
                Err(Failure::Down(cause)) => return Err(self.mark_down(cause).unwrap_or_else(|| self.unusable())),
                Err(Failure::Bad(_)) => None,
            };
            out.push((meta, record));
        }
        Ok(out)
    }
}
