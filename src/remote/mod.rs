//! The shared remote cache: the local cache's entries, mirrored on
//! S3-compatible storage or a shared directory, so that a teammate's clone
//! or a CI job never computes a stage someone already computed.
//!
//! # Layout (remote schema 1)
//!
//! Under the remote URL (`s3://bucket/prefix` or `file:///path`):
//!
//! ```text
//! v1/objects/<blake3>          an output's bytes; the name is the blake3 of
//!                              the bytes (64 hex digits), as in the local store
//! v1/manifests/<key>.json      the local manifest of one stage key (JSON,
//!                              `crate::cache::Manifest`), 64 hex digits
//! v1/runs/<time>-<id>.json     one run that pushed: the stage keys it
//!                              produced or used (`runs::RunRecord`); what
//!                              `cairn remote gc --keep-runs N` keeps
//! v1/jobs/<run>/<stage>-<nonce>/
//!     job.json                 a job of a `data = "remote"` executor: its
//!                              description, inputs named by hash (written
//!                              by the engine, create-only; `jobs`)
//!     result.json              its result record, written by the node
//!     job.log                  the tail of its log, written by the node
//!     checkpoints/<file>       its stage's checkpoint files, written by
//!                              the node as they change, read by the job
//!                              when it is requeued and runs again,
//!                              deleted by the node when its stage succeeds
//! v1/jobs/probes/<nonce>/
//!     probe.out                what a probe job of such an executor's
//!                              nodes answered (`cairn-worker --probe`)
//! ```
//!
//! `v1` is [`REMOTE_SCHEMA`]; a change to this layout or to how manifests
//! are read bumps it, and a new schema lives beside the old one instead of
//! misreading it. Both kinds of entry are written create-only (`PutMode::Create`,
//! S3's `If-None-Match: *`): "already exists" is success, so the first
//! writer of a manifest wins and two CI jobs racing to push the same key
//! lose nothing. A stage's objects are written before its manifest, so a
//! manifest is never visible before the bytes it names (an interrupted push
//! leaves, at worst, unreferenced objects).
//!
//! # What is never trusted
//!
//! Nothing that comes from a remote is installed unchecked: a manifest
//! must parse, be small, name the key asked for, carry exactly the key
//! inputs this machine computed (so a result computed under another
//! libtorch, device or CPU class is never served: those facts are in the
//! key), and record exactly the outputs the stage declares, with no control
//! characters in any text. Every object is streamed into the local cache's
//! `tmp/`, hashed as it arrives, and moved into the store only when its
//! size and blake3 match its name; the local manifest is written last. Any
//! failure is a warning and a miss: the stage is computed locally. A job's
//! result record (`v1/jobs/`) is read with a size bound and must parse,
//! and each output it claims is downloaded with the same checks before
//! the stage's result is stored; otherwise the stage fails.
//!
//! Credentials come only from the standard AWS environment
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`); cairn never prints,
//! logs or stores them.
//!
//! The engine is synchronous; this module owns a small tokio runtime and
//! blocks on it. Transfers stream (no object is ever whole in memory
//! beyond [`transfer::SINGLE_PUT_MAX`]; larger ones use multipart uploads),
//! run a few at a time, and are retried with backoff by `object_store`. A
//! HEAD or GET gets [`transfer::ANSWER_DEADLINE`] to be answered, a request
//! sending a body of bounded size [`transfer::REQUEST_DEADLINE`], and a
//! download may go [`transfer::STALL`] without a byte; past any, the
//! remote is taken as down, said once, and the run goes on locally.
//!
//! Nothing here ever deletes from the remote except `cairn remote gc
//! --delete` ([`gc`]); the local `cairn gc` does not open the remote.

pub mod config;
pub mod gc;
pub mod jobs;
mod plain_http;
pub mod runs;
pub mod sync;
pub mod transfer;
pub mod verify;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::path::Path as RemotePath;
use object_store::{ObjectStore, ObjectStoreExt};

pub use config::{RemoteConfig, RemoteKind};
pub use sync::{Pulled, PushResult, PushStats};

use crate::digest::{ArtifactHash, StageKey};

/// The version of the remote layout (the `v1/` prefix).
pub const REMOTE_SCHEMA: u32 = 1;

/// Objects transferred at once.
pub const CONCURRENCY: usize = 4;

/// Entries of more than [`SMALL_OBJECT`] bytes pushed at once (smaller
/// ones go [`SMALL_CONCURRENCY`] at a time beside them, through a
/// [`SizeGate`]): a push is a few round trips (the manifest's check, the
/// objects', their uploads, the manifest's) whatever its size.
pub const PUSHERS: usize = 4;

/// Manifests, and objects of at most [`SMALL_OBJECT`] bytes, asked for at
/// once: each is a small request whose time is the round trip, so more of
/// them share one wait.
pub const SMALL_CONCURRENCY: usize = 32;

/// The size up to which an object's transfer takes about a round trip (a
/// MiB at 100 MB/s is 10 ms), so it goes with the small requests.
pub const SMALL_OBJECT: u64 = 1 << 20;

/// Admits transfers by size, side by side: a few large ones at a time
/// (a large transfer waits on bandwidth) and [`SMALL_CONCURRENCY`] small
/// ones (a small one waits on the round trip), so that neither kind
/// waits in line behind the other.
pub(crate) struct SizeGate {
    small: tokio::sync::Semaphore,
    large: tokio::sync::Semaphore,
}

impl SizeGate {
    /// A gate that lets `large` transfers of more than [`SMALL_OBJECT`]
    /// bytes through at once.
    pub fn new(large: usize) -> Self {
        Self { small: tokio::sync::Semaphore::new(SMALL_CONCURRENCY), large: tokio::sync::Semaphore::new(large) }
    }

    /// Runs `work`, which moves `size` bytes, once its kind has room.
    pub async fn run<F: std::future::Future>(&self, size: u64, work: F) -> F::Output {
        let kind = if size <= SMALL_OBJECT { &self.small } else { &self.large };
        let _room = kind.acquire().await.expect("the gate's semaphores are never closed");
        work.await
    }
}

/// `work` over objects given with their sizes, through a [`SizeGate`]
/// ([`CONCURRENCY`] large ones at a time), the largest first: the
/// transfers end together, not with the largest one started last (the
/// flagship's 1.3 GB pool is most of its 2.5 GB). Results in the order
/// they finish.
pub(crate) fn by_size<'a, T, Fut: std::future::Future + 'a>(
    items: impl IntoIterator<Item = (T, u64)>,
    work: &'a impl Fn(T, u64) -> Fut,
) -> impl futures::Stream<Item = Fut::Output> + 'a
where
    T: 'a,
{
    let gate = Arc::new(SizeGate::new(CONCURRENCY));
    let mut items: Vec<(T, u64)> = items.into_iter().collect();
    items.sort_by_key(|(_, size)| std::cmp::Reverse(*size));
    // The gate lets them through in the order they first ask, which is
    // this order: the futures are first polled in the order collected.
    let gated = items.into_iter().map(|(t, size)| {
        let gate = gate.clone();
        async move { gate.run(size, work(t, size)).await }
    });
    gated.collect::<futures::stream::FuturesUnordered<_>>()
}

/// Remote failures. A remote *miss* is never an error.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URL or settings cannot describe a remote (exit 2).
    #[error("remote `{url}`: {message}")]
    Config { url: String, message: String },
    /// The remote cannot be used at all: server down, access denied.
    #[error("remote {url}: {cause}")]
    Unavailable { url: String, cause: String },
    /// One transfer failed for a reason other than the remote being down.
    #[error("remote {url}: {what}: {cause}")]
    Transfer { url: String, what: String, cause: String },
    /// The local cache could not be read or written.
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    /// Run records `remote gc` would keep do not parse, so what they keep
    /// is not known (exit 3).
    #[error("remote {url}: {} run record(s) among those gc keeps do not parse, so it cannot know what they keep, and deletes nothing:{}\n  help: a record that does not parse cannot be repaired: delete it from the remote (it lists only what a past run pushed), then run `cairn remote gc` again", records.len(), records.iter().map(|r| format!("\n  {r}")).collect::<String>())]
    UnreadableRuns { url: String, records: Vec<String> },
}

/// An open remote. Cheap requests happen only when something is asked.
pub struct Remote {
    /// For messages: the URL and, for S3, the endpoint (never credentials).
    display: String,
    cfg: RemoteConfig,
    /// The client and runtime, made on first use (a run that needs nothing
    /// from the remote does not pay for them), or why they could not be.
    client: OnceLock<Result<Client, String>>,
    /// Set once the remote was found unusable: the cause, already reported.
    down: Mutex<Option<String>>,
    /// Objects found damaged on the remote in this process: a push
    /// overwrites them with the (verified) local bytes of the same name.
    damaged: Mutex<std::collections::BTreeSet<ArtifactHash>>,
    /// Bytes moved, for the summary line.
    pub bytes_down: AtomicU64,
    pub bytes_up: AtomicU64,
}

/// What talking to the remote takes.
struct Client {
    store: Arc<dyn ObjectStore>,
    /// `<prefix>/v1`.
    base: RemotePath,
    rt: tokio::runtime::Runtime,
    /// Parts of ranged downloads held at once, downloading or waiting to
    /// be written, over all objects (`transfer::RANGE_SLOTS`).
    range_slots: tokio::sync::Semaphore,
    /// Set once the server answered a ranged GET with the whole object:
    /// large objects are then read whole.
    no_ranges: std::sync::atomic::AtomicBool,
}

impl Client {
    fn new(cfg: &RemoteConfig) -> Result<Self, String> {
        let (store, base) = config::build_store(cfg).map_err(|e| match e {
            RemoteError::Config { message, .. } => message,
            e => e.to_string(),
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cairn-remote")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the transfer runtime: {e}"))?;
        let range_slots = tokio::sync::Semaphore::new(transfer::RANGE_SLOTS);
        let no_ranges = Default::default();
        Ok(Self { store, base: base.join(format!("v{REMOTE_SCHEMA}").as_str()), rt, range_slots, no_ranges })
    }
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.display).finish()
    }
}

impl Remote {
    /// Opens the remote `cfg` describes. Nothing is built or asked until
    /// the remote is first needed; a share that is not there is an error
    /// now.
    pub fn open(cfg: &RemoteConfig) -> Result<Self, RemoteError> {
        if let RemoteKind::File { dir } = &cfg.kind {
            if !dir.is_dir() {
                return Err(RemoteError::Config {
                    url: cfg.url.clone(),
                    message: format!("{} is not an existing directory (is the share mounted?)", dir.display()),
                });
            }
        }
        Ok(Self {
            display: cfg.display(),
            cfg: cfg.clone(),
            client: OnceLock::new(),
            down: Mutex::new(None),
            damaged: Mutex::new(Default::default()),
            bytes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
        })
    }

    /// The URL (and endpoint) for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Why the remote was found unusable in this process, if it was.
    pub fn down(&self) -> Option<String> {
        self.down.lock().unwrap().clone()
    }

    /// Records that the remote is unusable; returns the error the first
    /// time (to be reported once), `None` after.
    fn mark_down(&self, cause: String) -> Option<RemoteError> {
        let mut down = self.down.lock().unwrap();
        if down.is_some() {
            return None;
        }
        *down = Some(cause.clone());
        Some(RemoteError::Unavailable { url: self.display.clone(), cause })
    }

    /// Whether the remote can be asked: `Ok(false)` once it is down; the
    /// first time its client cannot be made, that is the error.
    fn ready(&self) -> Result<bool, RemoteError> {
        if self.down().is_some() {
            return Ok(false);
        }
        match self.client.get_or_init(|| Client::new(&self.cfg)) {
            Ok(_) => Ok(true),
            Err(cause) => self.mark_down(cause.clone()).map_or(Ok(false), Err),
        }
    }

    /// The client; only after [`Remote::ready`] said yes.
    fn c(&self) -> &Client {
        match self.client.get() {
            Some(Ok(c)) => c,
            _ => unreachable!("the remote is used only after ready() said so"),
        }
    }

    fn object_path(&self, h: &ArtifactHash) -> RemotePath {
        self.c().base.clone().join("objects").join(h.to_hex().as_str())
    }

    fn manifest_path(&self, key: &StageKey) -> RemotePath {
        self.c().base.clone().join("manifests").join(format!("{}.json", key.to_hex()).as_str())
    }

    /// Whether the remote has a manifest for `key` (one HEAD). `Ok(false)`
    /// once the remote is down; the first failure is the error.
    pub(crate) async fn has_manifest(&self, key: &StageKey) -> Result<bool, RemoteError> {
        if !self.ready()? {
            return Ok(false);
        }
        let path = self.manifest_path(key);
        let head = match transfer::answered(self.c().store.head(&path)).await {
            Ok(head) => head,
            Err(f) => return self.mark_down(f.to_string()).map_or(Ok(false), Err),
        };
        match head {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => match self.fault(&e) {
                Fault::Down(cause) => self.mark_down(cause).map_or(Ok(false), Err),
                Fault::Other(cause) => Err(RemoteError::Transfer { url: self.display.clone(), what: format!("cannot look up {path}"), cause }),
            },
        }
    }

    /// Sorts an `object_store` error into "the remote is unusable" (server
    /// down, access denied: say it once and stop asking) or a failure of
    /// this one request.
    fn fault(&self, e: &object_store::Error) -> Fault {
        use object_store::Error as E;
        match e {
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => Fault::Down(
                "access denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and that the bucket exists)".into(),
            ),
            _ => {
                let chain = error_chain(e);
                let lower = chain.to_ascii_lowercase();
                if lower.contains("connection refused") {
                    Fault::Down("cannot connect: connection refused (is the server running? check the endpoint)".into())
                } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
                    Fault::Down("cannot connect: the host name does not resolve".into())
                } else if lower.contains("timed out") || http_kind(e) == Some(object_store::client::HttpErrorKind::Timeout) {
                    // Not the word "timeout": every retried error's text
                    // holds object_store's `retry_timeout` setting.
                    Fault::Down("cannot connect: timed out".into())
                } else if ["invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "403 forbidden", "401 unauthorized"]
                    .iter()
                    .any(|s| lower.contains(s))
                {
                    Fault::Down("access denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and that the bucket exists)".into())
                } else if lower.contains("nosuchbucket") {
                    Fault::Down("the bucket does not exist".into())
                } else if lower.contains("error sending request") || lower.contains("connection reset") || lower.contains("connection closed") {
                    Fault::Down(format!("cannot connect: {}", innermost(e)))
                } else if lower.contains("too many redirects") {
                    Fault::Down("the server redirects every request in a loop: check the endpoint".into())
                } else if lower.contains("header missing from response") || lower.contains("failed to convert header") {
                    // Every answer lacks what S3's carry: the server, not one entry.
                    Fault::Down(format!("the server's answers are not S3's ({}): check the endpoint", innermost(e)))
                } else if let Some(status) = server_error(&chain) {
                    Fault::Down(format!("the server answers every try with {status}"))
                } else {
                    Fault::Other(innermost(e))
                }
            }
        }
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.c().rt.block_on(f)
    }

    /// Counts transferred bytes (for the summary).
    pub(crate) fn count(&self, down: u64, up: u64) {
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
    }
}

/// How one failed request is to be taken.
pub(crate) enum Fault {
    /// The remote is unusable; the cause, for one clear line.
    Down(String),
    /// This request failed.
    Other(String),
}

/// The kind object_store gave the HTTP failure behind `e`, if one is.
fn http_kind(e: &(dyn std::error::Error + 'static)) -> Option<object_store::client::HttpErrorKind> {
    std::iter::successors(Some(e), |c| c.source()).find_map(|c| c.downcast_ref::<object_store::client::HttpError>()).map(|h| h.kind())
}

/// The 5xx status in an error's text, as object_store words it once its
/// retries are spent (`non-2xx status code: 503 Service Unavailable`).
fn server_error(chain: &str) -> Option<String> {
    let after = chain.split("non-2xx status code: ").nth(1)?;
    let status: String = after.chars().take_while(|&c| c != ':').collect();
    status.starts_with('5').then(|| format!("HTTP {}", status.trim()))
}

/// Every message in an error's source chain, joined.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The innermost cause, usually the informative one, on one line.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(c) = cur.source() {
        cur = c;
    }
    let s = cur.to_string();
    s.lines().next().unwrap_or("").chars().take(300).collect()
}

/// The retry policy: a few quick retries with exponential backoff, so a
/// transient error is ridden out and a server that is down is reported
/// within seconds, not minutes.
pub(crate) fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5), base: 2.0 },
        max_retries: 4,
        retry_timeout: Duration::from_secs(30),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::AtomicUsize;

    /// A server answering 500 to every try was reported as "timed out":
    /// the retried error's text holds object_store's `retry_timeout`.
    #[test]
    fn a_server_error_is_named_by_its_status() {
        let chain = "Generic S3 error: Error performing HEAD http://h/b/k in 1.6s, after 4 retries, max_retries: 4, retry_timeout: 30s  - Server returned non-2xx status code: 503 Service Unavailable: ";
        assert_eq!(server_error(chain).as_deref(), Some("HTTP 503 Service Unavailable"));
        assert_eq!(server_error("Server returned non-2xx status code: 404 Not Found: "), None);
        assert_eq!(server_error("retry_timeout: 30s - error sending request"), None);
    }

    #[test]
    fn small_and_large_objects_go_side_by_side_each_at_its_own_concurrency() {
        let (in_flight, most) = ([AtomicUsize::new(0), AtomicUsize::new(0)], [AtomicUsize::new(0), AtomicUsize::new(0)]);
        let work = |id: usize, size: u64| {
            let kind = usize::from(size > SMALL_OBJECT);
            let (in_flight, most) = (&in_flight[kind], &most[kind]);
            async move {
                most.fetch_max(in_flight.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                (id, size)
            }
        };
        let items: Vec<(usize, u64)> = (0..100).map(|i| (i, if i % 10 == 0 { SMALL_OBJECT + 1 } else { SMALL_OBJECT })).collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let mut done: Vec<(usize, u64)> = rt.block_on(by_size(items.clone(), &work).collect());
        done.sort();
        assert_eq!(done, items, "every item once, with its size");
        assert_eq!(most[0].load(Ordering::SeqCst), SMALL_CONCURRENCY, "small ones (a MiB or less) 32 at a time");
        assert_eq!(most[1].load(Ordering::SeqCst), CONCURRENCY, "large ones 4 at a time");
    }

    #[test]
    fn large_objects_start_largest_first() {
        let started = std::sync::Mutex::new(Vec::new());
        let work = |id: usize, size: u64| {
            let started = &started;
            async move {
                started.lock().unwrap().push(size);
                tokio::task::yield_now().await;
                id
            }
        };
        let sizes = [3u64, 9, 1, 7, 5, 8, 2, 6].map(|mib| mib * SMALL_OBJECT + 1);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _: Vec<usize> = rt.block_on(by_size(sizes.iter().copied().enumerate(), &work).collect());
        let mut largest_first = sizes.to_vec();
        largest_first.sort_by(|a, b| b.cmp(a));
        assert_eq!(*started.lock().unwrap(), largest_first);
    }
}
