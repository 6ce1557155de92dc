//! Whole entries: pulling a stage's manifest and objects into the local
//! cache (validated against what this machine computed for the stage),
//! and pushing a local entry (objects first, manifest last). A pull is two
//! steps, so that a run can stop after the first: [`Remote::peek_entries`]
//! reads and checks the manifests only (enough to know the stages' output
//! hashes, hence their descendants' keys), [`Remote::fetch_entries`] brings
//! the objects and installs each manifest last.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};

use super::transfer::Failure;
use super::{by_size, Remote, RemoteError, SizeGate, CONCURRENCY, PUSHERS, SMALL_CONCURRENCY};
use crate::cache::{Cache, Manifest};
use crate::digest::{ArtifactHash, StageKey};
use crate::key::KeyInputs;
use crate::spec::Stage;

/// A pulled entry.
#[derive(Debug)]
pub struct Pulled {
    pub manifest: Manifest,
    /// Bytes downloaded for it (objects already present locally are not).
    pub bytes: u64,
}

/// What a push did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PushStats {
    pub objects_sent: usize,
    pub bytes_sent: u64,
    /// The remote had the manifest already.
    pub already: bool,
}

/// What pushing one entry did, or why it failed.
pub type PushResult = Result<PushStats, RemoteError>;

impl Remote {
    /// Downloads the objects of `manifests` (remote entries already
    /// validated by [`Remote::peek_entries`]) that the local cache lacks,
    /// then installs each manifest whose objects all arrived: what makes a
    /// stage's bytes local. The objects any of them lacks are downloaded
    /// together, each once ([`by_size`]: small ones do not wait in line
    /// behind a large one, nor for each other's round trips); then each
    /// manifest whose objects all arrived is installed, in the order
    /// given. One result per entry, in that order.
    pub fn fetch_entries(&self, cache: &Cache, manifests: Vec<Manifest>, warn: &dyn Fn(String), progress: &dyn Fn(u64, u64)) -> Result<Vec<Option<Pulled>>, RemoteError> {
        if !self.ready()? {
            return Ok(manifests.iter().map(|_| None).collect());
        }
        let mut wanted: BTreeMap<ArtifactHash, u64> = BTreeMap::new();
        for o in manifests.iter().flat_map(|m| m.outputs.values()) {
            if !wanted.contains_key(&o.hash) && !cache.object_intact(&o.hash)? {
                wanted.insert(o.hash, o.size);
            }
        }
        let total: u64 = wanted.values().sum();
        let fetch = |h: ArtifactHash, size: u64| async move { (h, self.fetch_object(cache, h, size).await) };
        let results: Vec<(ArtifactHash, Result<(), Failure>)> = self.metered(
            by_size(wanted.iter().map(|(&h, &size)| (h, size)), &fetch).collect(),
            &self.bytes_down,
            &|done| progress(done, total),
        );
        // Why each object failed: `None` for a plain miss.
        let mut failed: BTreeMap<ArtifactHash, Option<String>> = BTreeMap::new();
        for (h, r) in results {
            match r {
                Ok(()) => {}
                Err(Failure::Down(cause)) => {
                    return self.mark_down(cause).map_or_else(|| Ok(manifests.iter().map(|_| None).collect()), Err);
                }
                Err(Failure::Missing) => drop(failed.insert(h, None)),
                Err(Failure::Bad(why)) => drop(failed.insert(h, Some(why))),
            }
        }
        let mut out = Vec::with_capacity(manifests.len());
        for manifest in manifests {
            if let Some(why) = manifest.outputs.values().find_map(|o| failed.get(&o.hash)) {
                if let Some(why) = why {
                    warn(format!(
                        "the remote entry of `{}` (key {}) on {} is unusable: {why}; not installed, the stage will be computed here",
                        manifest.stage,
                        manifest.key.short(),
                        self.display
                    ));
                }
                out.push(None);
                continue;
            }
            // Objects are in place and verified; the manifest goes last.
            cache.write_manifest(&manifest)?;
            // Each object's bytes count for the first entry that wanted it.
            let bytes = manifest.outputs.values().filter_map(|o| wanted.remove(&o.hash)).sum();
            out.push(Some(Pulled { manifest, bytes }));
        }
        Ok(out)
    }

    /// The remote's manifests for several stages, each under the key of
    /// its key inputs, validated like a pull's, without downloading any
    /// object (for `status`: what a run would pull, and the output hashes
    /// that make the next stages' keys known). They are asked for together,
    /// [`SMALL_CONCURRENCY`] at a time, so stages that do not depend on each
    /// other wait one round trip between them, not one each. One result
    /// per stage, in order: `None` for a miss, or an entry rejected with a
    /// warning through `warn`, or when the remote is down (the first time,
    /// that is the error instead, for the caller to report once).
    pub fn peek_entries<K: Borrow<KeyInputs>>(&self, entries: &[(&Stage, K)], warn: &dyn Fn(String)) -> Result<Vec<Option<Manifest>>, RemoteError> {
        // Nothing to ask: the remote is not even opened (a wave of local
        // hits, or `status` with every stage fresh).
        if entries.is_empty() || !self.ready()? {
            return Ok(entries.iter().map(|_| None).collect());
        }
        let keys: Vec<StageKey> = entries.iter().map(|(_, ki)| ki.borrow().key()).collect();
        let got: Vec<_> = self.block_on(futures::stream::iter(keys.iter().map(|key| self.get_manifest(key))).buffered(SMALL_CONCURRENCY).collect());
        let mut out = Vec::with_capacity(entries.len());
        for (((stage, ki), key), got) in entries.iter().zip(&keys).zip(got) {
            let reject = |why: String| warn(format!("the remote entry of `{}` (key {}) on {} {why}; it will not be used", stage.name, key.short(), self.display));
            out.push(match got.map(|bytes| validate(stage, ki.borrow(), key, &bytes)) {
                Ok(Ok(m)) => Some(m),
                Ok(Err(why)) => {
                    reject(why);
                    None
                }
                Err(f) => {
                    self.settle(f, &reject)?;
                    None
                }
            });
        }
        Ok(out)
    }

    /// Pushes each entry `entries` yields, as it comes (`cairn push`'s
    /// list, or a run's stages as they settle with `--push`), each given
    /// with the stage name its progress goes under: entries of more than
    /// [`SMALL_OBJECT`](super::SMALL_OBJECT) bytes [`PUSHERS`] at a time and smaller ones
    /// [`SMALL_CONCURRENCY`] at a time beside them (a [`SizeGate`]), since
    /// a small entry's push is a few round trips whatever it holds.
    /// `progress(stage, sent, total, since)` while one moves bytes,
    /// `done(i, stage, result)` as each ends, `i` its place in `entries`.
    /// Returns once `entries` has ended and every push with it.
    pub fn push_each<M: Borrow<Manifest>>(
        &self,
        cache: &Cache,
        entries: impl Stream<Item = (String, M)>,
        progress: &dyn Fn(&str, u64, u64, Instant),
        done: &mut dyn FnMut(usize, &str, PushResult),
    ) {
        let entries = entries.enumerate();
        match self.ready() {
            Ok(true) => {}
            // Nothing can be pushed: each entry ends at once, the first
            // with the error when there is one.
            not_ready => {
                let mut error = not_ready.err();
                let end = |(i, (stage, _)): (usize, (String, M))| {
                    done(i, &stage, error.take().map_or(Ok(PushStats::default()), Err));
                    futures::future::ready(())
                };
                return futures::executor::block_on(entries.for_each(end));
            }
        }
        let gate = SizeGate::new(PUSHERS);
        let push = |i: usize, stage: String, m: M| {
            let size = m.borrow().outputs.values().map(|o| o.size).sum();
            let gate = &gate;
            async move {
                let pushed = gate.run(size, async {
                    let since = Instant::now();
                    self.push_entry(cache, m.borrow(), &|sent, total| progress(&stage, sent, total, since)).await
                });
                let r = pushed.await;
                (i, stage, r)
            }
        };
        self.block_on(async {
            let mut entries = std::pin::pin!(entries.fuse());
            let mut pushing = FuturesUnordered::new();
            loop {
                futures::select! {
                    next = entries.next() => if let Some((i, (stage, m))) = next {
                        pushing.push(push(i, stage, m));
                    },
                    (i, stage, r) = pushing.select_next_some() => done(i, &stage, r),
                    complete => break,
                }
            }
        })
    }

    /// Pushes a local entry: its objects (each verified as read), then its
    /// manifest. Nothing is sent when the remote already has the manifest,
    /// or once it is down.
    async fn push_entry(&self, cache: &Cache, manifest: &Manifest, progress: &dyn Fn(u64, u64)) -> Result<PushStats, RemoteError> {
        let mut stats = PushStats::default();
        let repair = {
            let damaged = self.damaged.lock().unwrap();
            manifest.outputs.values().any(|o| damaged.contains(&o.hash))
        };
        if self.has_manifest(&manifest.key).await? && !repair {
            stats.already = true;
            return Ok(stats);
        }
        if self.down().is_some() {
            return Ok(stats);
        }
        let mut objects: Vec<_> = manifest.outputs.values().map(|o| (o.hash, o.size)).collect();
        objects.sort();
        objects.dedup();
        let total: u64 = objects.iter().map(|(_, size)| size).sum();
        let sent = AtomicU64::new(0);
        let uploads = futures::stream::iter(objects.into_iter().map(|(h, size)| self.push_object(cache, h, size, &sent)));
        let results: Vec<Result<u64, Failure>> = meter(uploads.buffer_unordered(CONCURRENCY).collect(), &sent, &|done| progress(done, total)).await;
        for r in results {
            match r {
                Ok(0) => {}
                Ok(n) => {
                    stats.objects_sent += 1;
                    stats.bytes_sent += n;
                }
                Err(f) => return self.push_failure(f, &manifest.stage).map(|_| stats),
            }
        }
        let bytes = serde_json::to_vec_pretty(manifest).expect("manifests serialise");
        if let Err(f) = self.put_manifest(&manifest.key, bytes).await {
            return self.push_failure(f, &manifest.stage).map(|_| stats);
        }
        Ok(stats)
    }

    /// Runs `fut` to its end, telling `progress` the bytes `counter` grew
    /// by every quarter second while it runs.
    pub(super) fn metered<F: std::future::Future>(&self, fut: F, counter: &AtomicU64, progress: &dyn Fn(u64)) -> F::Output {
        self.block_on(meter(fut, counter, progress))
    }

    fn push_failure(&self, f: Failure, stage: &str) -> Result<(), RemoteError> {
        match f {
            Failure::Down(cause) => self.mark_down(cause).map_or(Ok(()), Err),
            Failure::Missing => Ok(()),
            Failure::Bad(cause) => Err(RemoteError::Transfer { url: self.display.clone(), what: format!("cannot push `{stage}`"), cause }),
        }
    }

    /// A failed pull: a miss, with a warning when something was wrong,
    /// or the one report that the remote is down.
    fn settle(&self, f: Failure, reject: &dyn Fn(String)) -> Result<(), RemoteError> {
        match f {
            Failure::Missing => Ok(()),
            Failure::Down(cause) => self.mark_down(cause).map_or(Ok(()), Err),
            Failure::Bad(why) => {
                reject(why);
                Ok(())
            }
        }
    }
}

/// Awaits `fut`, telling `progress` the bytes `counter` grew by every
/// quarter second until it ends.
async fn meter<F: std::future::Future>(fut: F, counter: &AtomicU64, progress: &dyn Fn(u64)) -> F::Output {
    let before = counter.load(Ordering::Relaxed);
    let tick = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            progress(counter.load(Ordering::Relaxed) - before);
        }
    };
    let out = match futures::future::select(std::pin::pin!(fut), std::pin::pin!(tick)).await {
        futures::future::Either::Left((out, _)) => out,
        futures::future::Either::Right((never, _)) => never,
    };
    out
}

/// Checks a manifest from the remote against what this machine computed
/// for the stage; the manifest to install, or why it is refused.
pub fn validate(stage: &Stage, ki: &KeyInputs, key: &StageKey, bytes: &[u8]) -> Result<Manifest, String> {
    let mut m: Manifest = serde_json::from_slice(bytes).map_err(|e| format!("has a malformed manifest ({e})"))?;
    if m.key != *key {
        return Err(format!("has a manifest for another key ({})", m.key.short()));
    }
    if m.key_inputs != *ki || m.key_inputs.key() != *key {
        return Err("has a manifest whose key inputs are not this stage's".into());
    }
    if let Some(problem) = crate::plan::outputs_mismatch(stage, &m.outputs) {
        return Err(problem);
    }
    let texts = [&m.stage, &m.started_at, &m.finished_at, &m.cairn_version];
    let bad_text = |s: &str| s.len() > 256 || s.chars().any(char::is_control);
    if texts.iter().any(|s| bad_text(s.as_str())) || m.metrics.keys().any(|k| bad_text(k.as_str())) || m.outputs.values().any(|o| bad_text(o.ext.as_str())) {
        return Err("has a manifest with control characters or oversized text".into());
    }
    if !m.duration_s.is_finite() || m.duration_s < 0.0 {
        m.duration_s = 0.0;
    }
    Ok(m)
}
