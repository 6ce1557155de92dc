//! What a run asks of the remote cache. The stages that missed locally in
//! one wave of the frontier are asked about together, their manifests at
//! once, so a wide graph waits a round trip per wave, not one per stage
//! (BENCHMARKS.md "A remote across a network"). A stage found there is
//! served by its manifest, which makes its users' keys known; its bytes
//! come when a stage that executes reads them, or, when it is wanted, with
//! every other wanted stage's at the end of the run. With `--push`, the
//! stages are pushed in the background ([`Pusher`]).

use std::thread::Scope;
use std::time::Instant;

use futures::channel::mpsc::UnboundedSender;
use futures::StreamExt;

use super::{Observer, Outcome, RunError, Scheduler};
use crate::cache::{Cache, Manifest};
use crate::digest::StageKey;
use crate::key::KeyInputs;
use crate::remote::{Remote, RemoteError};

/// A stage that missed locally, to ask the remote about.
pub(super) struct Ask {
    pub i: usize,
    pub key_inputs: KeyInputs,
}

impl Scheduler<'_> {
    /// Whether stage `i`, missed locally, is to be asked of the remote: not
    /// in a dry run, nor when it was forced, found damaged, or could not be
    /// had from there already.
    pub(super) fn may_pull(&self, i: usize) -> bool {
        self.opts.remote.is_some() && !self.opts.dry_run && !self.forced.contains(&i) && !self.damaged.contains_key(&i) && !self.unfetched.contains(&i)
    }

    /// Serves each asked stage that the remote has by its manifest, which
    /// is all its users' keys need, and queues the others, in index order.
    /// Its bytes come later: when a stage that executes reads them
    /// ([`Scheduler::fetch_served`]), or at the end of the run when the
    /// stage is wanted ([`Scheduler::fetch_wanted`]).
    pub(super) fn ask_remote(&mut self, asks: Vec<Ask>) -> Result<(), RunError> {
        let remote = self.opts.remote.clone().expect("stages are asked of the remote only when there is one");
        let observer = self.observer;
        let warn = |m: String| observer.warn(&m);
        let entries: Vec<_> = asks.iter().map(|a| (&self.pipeline.stages[a.i], &a.key_inputs)).collect();
        let found = self.remote_result(remote.peek_entries(&entries, &warn).map(Some))?.unwrap_or_else(|| asks.iter().map(|_| None).collect());
        for (ask, manifest) in asks.into_iter().zip(found) {
            match manifest {
                Some(m) => {
                    self.lazy.insert(ask.i, m.clone());
                    self.serve_hit(ask.i, ask.key_inputs, m, Outcome::Pulled);
                }
                None => self.stale(ask.i, ask.key_inputs),
            }
        }
        Ok(())
    }

    /// Downloads, in one batch, the bytes of the wanted stages served by
    /// their remote manifests, once everything else has settled: the
    /// waves above wait for manifests only, so a chain of stages on the
    /// remote costs one round trip a stage and one download for all.
    /// Whether any could not be had, and was sent back to be computed
    /// here (the run goes on). An interrupted run downloads nothing, and
    /// those stages are reported as interrupted.
    pub(super) fn fetch_wanted(&mut self) -> Result<bool, RunError> {
        let wanted: Vec<usize> = self.lazy.keys().filter(|i| self.wanted.contains(i)).copied().collect();
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            wanted.iter().for_each(|i| drop(self.reports.remove(i)));
            return Ok(false);
        }
        Ok(!self.fetch_served(wanted)?)
    }

    /// Downloads the bytes of `stages`, served by their remote manifests,
    /// at once, and installs each entry whose objects arrived. Whether all
    /// did: one that could not be had (said already) is sent back, with
    /// its users, to be computed here.
    pub(super) fn fetch_served(&mut self, stages: Vec<usize>) -> Result<bool, RunError> {
        let Some(&first) = stages.first() else { return Ok(true) };
        let Some(remote) = self.opts.remote.clone() else { return Ok(false) };
        let manifests: Vec<Manifest> = stages.iter().map(|i| self.lazy.remove(i).expect("served stages have a manifest")).collect();
        let keys: Vec<StageKey> = manifests.iter().map(|m| m.key).collect();
        let n = manifests.len();
        let bar = self.pipeline.stages[first].name.clone();
        let what = if n == 1 { "pulling".to_string() } else { format!("pulling {n} stages,") };
        let (observer, t0) = (self.observer, Instant::now());
        let warn = |m: String| observer.warn(&m);
        let progress = |done: u64, total: u64| observer.progress(&bar, &transfer_progress(&what, done, total, t0));
        let pulled = self.remote_result(remote.fetch_entries(self.cache, manifests, &warn, &progress).map(Some))?;
        observer.transfer_done(&bar);
        let arrived = pulled.map_or_else(|| vec![false; n], |p| p.iter().map(Option::is_some).collect());
        for ((&i, key), &ok) in stages.iter().zip(keys).zip(&arrived) {
            if ok {
                self.pulled.insert(key);
            } else {
                self.reset_from(i);
                self.unfetched.insert(i);
            }
        }
        Ok(arrived.iter().all(|&ok| ok))
    }

    /// A remote answer for the run: the first sign that the remote is
    /// unusable is reported once (or, with `remote_required`, stops the
    /// run); then the run goes on locally.
    fn remote_result<T>(&self, r: Result<Option<T>, RemoteError>) -> Result<Option<T>, RunError> {
        match r {
            Ok(p) => Ok(p),
            Err(e @ RemoteError::Unavailable { .. }) if !self.opts.remote_required => {
                self.observer.warn(&format!("{e}; continuing with the local cache only"));
                Ok(None)
            }
            Err(RemoteError::Transfer { .. }) if !self.opts.remote_required => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Pushes with `--push`, off the stages' job slots: each stage that ran
/// (or hit, and the remote may lack) is queued here as it settles, and a
/// thread of its own pushes the queue ([`Remote::push_each`]: many small
/// entries at once, a few large ones), so a push over a slow network
/// overlaps the stages that follow instead of holding up the next one. A
/// failed push is a warning: the run's results are safe locally.
/// Dropping the pusher closes the queue; the run's thread scope then
/// waits for what is queued.
pub(super) struct Pusher {
    queue: UnboundedSender<(StageKey, String)>,
}

impl Pusher {
    pub fn start<'scope, 'env>(scope: &'scope Scope<'scope, 'env>, remote: &'env Remote, cache: &'env Cache, observer: &'env dyn Observer) -> Self {
        let (queue, rx) = futures::channel::mpsc::unbounded::<(StageKey, String)>();
        scope.spawn(move || {
            let warn = |m: String| observer.warn(&m);
            let entries = rx.filter_map(|(key, stage)| futures::future::ready(cache.manifest(&key, &warn).ok().flatten().map(|m| (stage, m))));
            let progress = |stage: &str, done: u64, total: u64, since: Instant| observer.progress(stage, &transfer_progress("pushing", done, total, since));
            remote.push_each(cache, entries, &progress, &mut |_, stage, pushed| {
                if let Err(e) = pushed {
                    observer.warn(&format!("{e}; the result stays in the local cache only"));
                }
                observer.transfer_done(stage);
            });
        });
        Self { queue }
    }

    pub fn push(&self, key: StageKey, stage: &str) {
        let _ = self.queue.unbounded_send((key, stage.to_string()));
    }
}

/// A transfer's position and rate since `since`, for the stage's progress bar.
pub fn transfer_progress(what: &str, done: u64, total: u64, since: Instant) -> crate::kind::Progress {
    let mib = |n: u64| n as f64 / (1 << 20) as f64;
    let rate = mib(done) / since.elapsed().as_secs_f64().max(1e-3);
    crate::kind::Progress {
        message: format!("{what} {:.1} of {:.1} MiB at {rate:.0} MiB/s (remote cache)", mib(done), mib(total)),
        done: Some(done),
        total: Some(total),
        transient: true,
    }
}
