//! What a run asks of the remote cache. The stages that missed locally in
//! one wave of the frontier are asked about together: their manifests at
//! once, then the bytes of the wanted ones at once, so a wide graph waits
//! a few round trips per wave, not a few per stage (BENCHMARKS.md "A
//! remote across a network"). A stage found there that is not wanted is
//! served by its manifest alone; its bytes come only if a stage that
//! executes reads them ([`Scheduler::fetch_lazy`]). With `--push`, the
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

    /// Serves each asked stage that the remote has (wanted ones with their
    /// bytes) and queues the others, in index order.
    pub(super) fn ask_remote(&mut self, asks: Vec<Ask>) -> Result<(), RunError> {
        let remote = self.opts.remote.clone().expect("stages are asked of the remote only when there is one");
        let observer = self.observer;
        let warn = |m: String| observer.warn(&m);
        let entries: Vec<_> = asks.iter().map(|a| (&self.pipeline.stages[a.i], &a.key_inputs)).collect();
        let found = self.remote_result(remote.peek_entries(&entries, &warn).map(Some))?.unwrap_or_else(|| asks.iter().map(|_| None).collect());
        let wanted: Vec<Manifest> = asks.iter().zip(&found).filter(|(a, _)| self.wanted.contains(&a.i)).filter_map(|(_, m)| m.clone()).collect();
        let mut fetched = self.fetch(&remote, wanted)?.into_iter();
        for (ask, manifest) in asks.into_iter().zip(found) {
            let Some(m) = manifest else {
                self.stale(ask.i, ask.key_inputs);
                continue;
            };
            if !self.wanted.contains(&ask.i) {
                self.lazy.insert(ask.i, m.clone());
            } else if fetched.next() != Some(true) {
                self.stale(ask.i, ask.key_inputs);
                continue;
            }
            self.serve_hit(ask.i, ask.key_inputs, m, Outcome::Pulled);
        }
        Ok(())
    }

    /// Downloads the objects of `manifests` the local cache lacks, at once,
    /// and installs each manifest whose objects arrived; whether each was,
    /// in order (`false`: it could not be had, said already).
    fn fetch(&self, remote: &Remote, manifests: Vec<Manifest>) -> Result<Vec<bool>, RunError> {
        let Some(first) = manifests.first() else { return Ok(Vec::new()) };
        let n = manifests.len();
        let (bar, what) = (first.stage.clone(), if n == 1 { "pulling".to_string() } else { format!("pulling {n} stages,") });
        let (observer, t0) = (self.observer, Instant::now());
        let warn = |m: String| observer.warn(&m);
        let progress = |done: u64, total: u64| observer.progress(&bar, &transfer_progress(&what, done, total, t0));
        let pulled = self.remote_result(remote.fetch_entries(self.cache, manifests, &warn, &progress).map(Some))?;
        Ok(pulled.map_or_else(|| vec![false; n], |p| p.iter().map(Option::is_some).collect()))
    }

    /// Downloads the bytes of a stage served lazily (its manifest `m`),
    /// because a stage that executes reads them. `false`: they could not be
    /// had (said already); the stage is then computed here.
    pub(super) fn fetch_lazy(&self, m: Manifest) -> Result<bool, RunError> {
        let Some(remote) = self.opts.remote.as_deref() else { return Ok(false) };
        Ok(self.fetch(remote, vec![m])?.pop() == Some(true))
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
