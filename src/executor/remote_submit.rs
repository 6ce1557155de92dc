//! The engine side of a job of a `data = "remote"` executor (the node
//! side is `super::remote_job`): before submitting, every input is put on
//! the remote by its hash (create-only; a directory as its files, listed
//! in the description) and the description is written under the job's
//! name; the job's command carries only the address. Afterwards the
//! remote's word is taken as hostile: the record is read with a size
//! bound and must parse, every output it claims is downloaded into the
//! stage's output path with the size and hash checks of a pull, and only
//! then does `crate::exec` store the outputs. Its text (error, host, log)
//! is shown without control characters.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::job::{ResultRecord, JOB_FILE, LOG_FILE, RESULT_FILE};
use super::remote_job::{is_plain_name, JobAddress, RemoteInput, RemoteJobSpec, TreeEntry, LOG_MAX, NODE_LOG, PROBE_FILE, RECORD_MAX, SCHEMA};
use super::Prepared;
use crate::cache::statcache::StatCache;
use crate::kind::{EnvNeeds, StageCtx, StageFailure};
use crate::remote::jobs::LocalObject;
use crate::remote::Remote;

/// The remote data plane of one executor: the remote, and the stat cache
/// that spares re-hashing the files of a directory input each time.
pub struct RemoteData {
    pub remote: Arc<Remote>,
    pub stat: Arc<StatCache>,
}

/// A submitted job's files on the remote.
pub struct RemoteJob {
    remote: Arc<Remote>,
    /// `<run>/<stage>-<nonce>` under `v1/jobs/`.
    pub job: String,
}

/// What `prepare` needs besides the stage's context.
pub struct JobFacts<'a> {
    pub kind: &'a str,
    pub needs: EnvNeeds,
    pub run_id: &'a str,
    pub exe: PathBuf,
    pub env: BTreeMap<String, String>,
}

/// Puts the stage's inputs and description on the remote; the job to submit.
pub fn prepare(data: &RemoteData, facts: JobFacts<'_>, ctx: &StageCtx<'_>) -> Result<(Prepared, RemoteJob), StageFailure> {
    let remote = &data.remote;
    let mut objects = Vec::new();
    let mut inputs = BTreeMap::new();
    for (slot, paths) in &ctx.inputs {
        let described = paths.iter().zip(&ctx.input_hashes[slot]).map(|(p, h)| describe(&data.stat, p, *h, &mut objects)).collect::<Result<Vec<_>, _>>()?;
        inputs.insert(slot.clone(), described);
    }
    remote
        .push_files(&objects)
        .map_err(|e| StageFailure::new(format!("cannot put its inputs on the remote for the job: {e}; nothing was submitted")))?;
    let file_name = |p: &PathBuf| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let spec = RemoteJobSpec {
        schema: SCHEMA,
        stage: ctx.stage.to_string(),
        kind: facts.kind.to_string(),
        params: ctx.params.clone(),
        seed: ctx.seed,
        inputs,
        outputs: ctx.outputs.iter().map(|(n, p)| (n.clone(), file_name(p))).collect(),
        keyed_env: ctx.env.key_entries(facts.needs),
        needs_torch: facts.needs.torch,
        needs_threads: facts.needs.threads,
    };
    let job = format!("{}/{}-{}", facts.run_id, ctx.stage, nonce(ctx.stage));
    let bytes = serde_json::to_vec(&spec).expect("job descriptions serialise");
    remote.put_job_file(&job, JOB_FILE, bytes, true).map_err(|e| StageFailure::new(format!("cannot write the job's description: {e}")))?;
    let address = serde_json::to_string(&JobAddress::new(remote.config(), &job)).expect("addresses serialise");
    let prepared = Prepared {
        name: format!("cairn-{}-{}", facts.run_id, ctx.stage),
        // Nothing of the engine's is on the node: start where every node has a directory.
        dir: "/tmp".into(),
        log: NODE_LOG.into(),
        argv: vec![facts.exe.to_string_lossy().into_owned(), "exec-job".into(), "--remote-job".into(), address],
        env: facts.env,
    };
    Ok((prepared, RemoteJob { remote: remote.clone(), job }))
}

/// An input as the job names it, with the files to upload for it: a file
/// is one object; a directory is its tree, links followed as its hash
/// follows them.
fn describe(stat: &StatCache, path: &Path, hash: crate::digest::ArtifactHash, objects: &mut Vec<LocalObject>) -> Result<RemoteInput, StageFailure> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).filter(|n| is_plain_name(n)).unwrap_or_else(|| "input".into());
    let meta = std::fs::metadata(path).map_err(|e| StageFailure::new(format!("input {}: {e}", path.display())))?;
    if !meta.is_dir() {
        objects.push((path.to_path_buf(), hash, meta.len()));
        return Ok(RemoteInput { hash, name, size: meta.len(), tree: None });
    }
    let mut tree = Vec::new();
    walk(stat, path, "", &mut vec![(meta.dev(), meta.ino())], &mut tree, objects)?;
    Ok(RemoteInput { hash, name, size: 0, tree: Some(tree) })
}

fn walk(stat: &StatCache, dir: &Path, rel: &str, seen: &mut Vec<(u64, u64)>, tree: &mut Vec<TreeEntry>, objects: &mut Vec<LocalObject>) -> Result<(), StageFailure> {
    let fail = |p: &Path, e: &dyn std::fmt::Display| StageFailure::new(format!("input {}: {e}", p.display()));
    let mut names: Vec<_> = std::fs::read_dir(dir).map_err(|e| fail(dir, &e))?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>().map_err(|e| fail(dir, &e))?;
    names.sort();
    for name in names {
        let p = dir.join(&name);
        let Some(name) = name.to_str() else { return Err(fail(&p, &"a name that is not UTF-8 cannot be sent to a job")) };
        let rel = if rel.is_empty() { name.to_string() } else { format!("{rel}/{name}") };
        let meta = std::fs::metadata(&p).map_err(|e| fail(&p, &e))?;
        if meta.is_dir() {
            if seen.contains(&(meta.dev(), meta.ino())) {
                return Err(fail(&p, &"a link cycle"));
            }
            tree.push(TreeEntry { path: rel.clone(), object: None });
            seen.push((meta.dev(), meta.ino()));
            walk(stat, &p, &rel, seen, tree, objects)?;
            seen.pop();
        } else {
            let h = stat.hash(&p).map_err(|e| fail(&p, &e))?;
            tree.push(TreeEntry { path: rel, object: Some((h, meta.len())) });
            objects.push((p, h, meta.len()));
        }
    }
    Ok(())
}

/// A short name no other job of any engine has: a run id is unique per
/// machine, not across the machines sharing the remote.
fn nonce(stage: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let seed = format!("{now} {} {stage} {:?} {}", std::process::id(), std::thread::current().id(), crate::env::hostname());
    blake3::hash(seed.as_bytes()).to_hex()[..12].to_string()
}

/// Probes the nodes of `slurm` with a job that answers through the
/// remote `cfg` (`v1/jobs/probes/<nonce>/probe.out`); its answer.
pub fn probe(slurm: &super::slurm::Slurm, cfg: &crate::remote::RemoteConfig, worker: &Path) -> Result<String, String> {
    let remote = Remote::open(cfg).map_err(|e| e.to_string())?;
    let job = format!("probes/{}", nonce("probe"));
    let address = serde_json::to_string(&JobAddress::new(cfg, &job)).expect("addresses serialise");
    let exe = super::submitted::exe().map_err(|e| e.message)?;
    let argv = [exe.to_string_lossy().into_owned(), "exec-job".into(), "--remote-job".into(), address, "--probe-worker".into(), worker.to_string_lossy().into_owned()];
    slurm.probe_with(&argv, NODE_LOG)?;
    match remote.get_job_file(&job, PROBE_FILE, 1 << 20, true).map_err(|e| e.to_string())? {
        Some(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        None => Err(format!("the probe job left no answer on the remote (see {NODE_LOG} on the node, %j being its job id)")),
    }
}

impl RemoteJob {
    /// The job's record; `Ok(None)` when it left none; `Err` says why the
    /// one there cannot be used. `wait`: the job completed, so it wrote one.
    pub fn record(&self, wait: bool) -> Result<Option<ResultRecord>, String> {
        let Some(bytes) = self.remote.get_job_file(&self.job, RESULT_FILE, RECORD_MAX, wait).map_err(|e| e.to_string())? else { return Ok(None) };
        let mut r: ResultRecord = serde_json::from_slice(&bytes).map_err(|e| format!("its result record on the remote does not parse ({e})"))?;
        r.error = r.error.map(|e| clean(&e, 4000));
        r.host = clean(&r.host, 256);
        r.metrics.retain(|k, _| k.len() <= 256 && !k.chars().any(char::is_control));
        Ok(Some(r))
    }

    /// The job's log as it uploaded it (its tail), without control
    /// characters; `Ok(None)` while there is none.
    pub fn log_text(&self) -> Result<Option<String>, crate::remote::RemoteError> {
        let bytes = self.remote.get_job_file(&self.job, LOG_FILE, LOG_MAX + 64, false)?;
        Ok(bytes.map(|b| clean(&String::from_utf8_lossy(&b), usize::MAX)))
    }

    /// The end of the job's log, as the end of a message.
    pub fn log_tail(&self) -> String {
        match self.log_text() {
            Ok(Some(text)) => super::submitted::tail_message(&text),
            Ok(None) => "; its log never reached the remote (the job was killed before it could upload it, or `cairn` did not start on the node: see /tmp/cairn-job-<id>.log there)".into(),
            Err(e) => format!("; its log could not be read: {e}"),
        }
    }

    /// Downloads each output the record claims to its path in `outputs`,
    /// checked for the claimed size and hash.
    pub fn fetch_outputs(&self, record: &ResultRecord, outputs: &BTreeMap<String, PathBuf>) -> Result<(), String> {
        let mut files = Vec::new();
        for (name, path) in outputs {
            let o = record.outputs.get(name).ok_or_else(|| format!("its result record lacks output `{name}`; nothing was cached"))?;
            files.push((o.hash, o.size, path.clone()));
        }
        self.remote.fetch_files(&files).map_err(|e| {
            // A job's upload is create-only: damaged bytes already under an
            // output's name stay there, and the next job would meet them too.
            let help = match e {
                crate::remote::RemoteError::Transfer { .. } => "\n  help: `cairn remote verify --all` lists damaged objects; delete that object from the remote, then run again",
                _ => "",
            };
            format!("its outputs cannot be had from the remote, so nothing was cached: {e}{help}")
        })
    }
}

/// `s` without control characters other than newlines and tabs, cut to
/// `max` characters: the remote's text reaches a terminal.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control() || matches!(c, '\n' | '\t')).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::ArtifactHash;

    impl RemoteJob {
        /// Job `job` on a `file://` remote in `dir`.
        pub(in crate::executor) fn on_file_remote(dir: &Path, job: &str) -> Self {
            Self { remote: Arc::new(Remote::in_dir(dir)), job: job.into() }
        }

        /// Uploads `bytes` as the job's log, as its node does.
        pub(in crate::executor) fn put_log(&self, bytes: &[u8]) {
            self.remote.put_job_file(&self.job, LOG_FILE, bytes.to_vec(), false).unwrap();
        }
    }

    #[test]
    fn a_directory_input_is_its_tree_of_objects() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("data");
        std::fs::create_dir_all(d.join("sub/empty")).unwrap();
        std::fs::write(d.join("a.txt"), "a").unwrap();
        std::fs::write(d.join("sub/b.txt"), "bb").unwrap();
        let stat = StatCache::load(Path::new("/nonexistent"));
        let mut objects = Vec::new();
        let h = stat.hash(&d).unwrap();
        let input = describe(&stat, &d, h, &mut objects).unwrap();
        let paths: Vec<(&str, bool)> = input.tree.as_ref().unwrap().iter().map(|e| (e.path.as_str(), e.object.is_some())).collect();
        assert_eq!(paths, [("a.txt", true), ("sub", false), ("sub/b.txt", true), ("sub/empty", false)]);
        assert_eq!((input.name.as_str(), input.hash), ("data", h));
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].1, ArtifactHash::of_bytes(b"bb"));
    }

    #[test]
    fn a_hostile_record_or_missing_output_fails_clearly() {
        let t = tempfile::tempdir().unwrap();
        let r = RemoteJob::on_file_remote(t.path(), "run/s-1");
        assert!(r.record(false).unwrap().is_none(), "no record yet");
        assert!(r.log_tail().contains("never reached the remote"));
        r.remote.put_job_file(&r.job, RESULT_FILE, b"{not json".to_vec(), false).unwrap();
        assert!(r.record(true).unwrap_err().contains("does not parse"));

        let out = t.path().join("out.txt");
        let record = |hash, size| {
            let o = super::super::job::JobOutput { hash, size };
            let text = serde_json::json!({"error": null, "outputs": {"o": o}, "metrics": {"m\u{1b}[2J": 1.0, "ok": 2.0}, "peak_rss_mb": 1.0, "host": "n\u{1b}]0;x\u{7}1", "duration_s": 1.0});
            r.remote.put_job_file(&r.job, RESULT_FILE, serde_json::to_vec(&text).unwrap(), false).unwrap();
            r.record(true).unwrap().unwrap()
        };
        let h = ArtifactHash::of_bytes(b"hello");
        let rec = record(h, 5);
        assert_eq!(rec.host, "n]0;x1", "control characters are dropped");
        assert_eq!(rec.metrics.keys().collect::<Vec<_>>(), ["ok"]);
        let outputs = BTreeMap::from([("o".to_string(), out.clone())]);
        let err = r.fetch_outputs(&rec, &outputs).unwrap_err();
        assert!(err.contains("not on the remote") && err.contains(&h.short()), "{err}");
        // Bytes of another size under the claimed name, then other bytes of the same size.
        let obj = t.path().join("v1/objects").join(h.to_hex());
        std::fs::create_dir_all(obj.parent().unwrap()).unwrap();
        std::fs::write(&obj, "hello!").unwrap();
        assert!(r.fetch_outputs(&rec, &outputs).unwrap_err().contains("6 bytes on the remote"));
        std::fs::write(&obj, "jello").unwrap();
        assert!(r.fetch_outputs(&rec, &outputs).unwrap_err().contains("damaged"));
        assert!(!out.exists(), "nothing is left at the output's path");
        std::fs::write(&obj, "hello").unwrap();
        r.fetch_outputs(&rec, &outputs).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"hello");
        let missing = BTreeMap::from([("other".to_string(), out)]);
        assert!(r.fetch_outputs(&rec, &missing).unwrap_err().contains("lacks output `other`"));
    }
}
