//! Moving single objects and manifests, streaming and verified.
//!
//! A download is written into the local cache's `tmp/` as it arrives and
//! hashed on the way; it enters the store (read-only, fsynced, renamed
//! into place) only when its size and blake3 match the name it was asked
//! under. An upload re-reads the local object, and a multipart upload is
//! aborted if the bytes read do not hash to the object's name, so a
//! damaged local object is never published.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::Duration;

use futures::{Stream, StreamExt};
use object_store::path::Path as RemotePath;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::{Fault, Remote};
use crate::cache::Cache;
use crate::digest::{ArtifactHash, StageKey};

/// Objects up to this size are uploaded in one create-only PUT (read into
/// memory); larger ones stream through a multipart upload.
pub const SINGLE_PUT_MAX: u64 = 16 << 20;
/// Part size of multipart uploads and of ranged downloads.
const PART: usize = 16 << 20;
/// Objects larger than this are downloaded as ranged GETs of [`PART`]
/// bytes, [`RANGES`] at a time: one connection's throughput is bounded by
/// its window over the round trip (tens of MB/s to a distant region),
/// and a large dataset would otherwise crawl down a single one.
pub const RANGED_MIN: u64 = 64 << 20;
/// Ranges of one object asked for ahead of the one being written.
const RANGES: usize = 4;
/// Parts of ranged downloads in memory at once, over all objects (each is
/// held from its request until it is written, in order): 128 MiB, however
/// many large objects download side by side.
pub const RANGE_SLOTS: usize = 8;
/// The largest manifest accepted from a remote.
pub const MANIFEST_MAX: u64 = 4 << 20;
/// How long a download may go without a byte before the remote is taken
/// as down.
pub const STALL: Duration = Duration::from_secs(60);

/// The longest one request that sends a body of bounded size may take (a
/// PUT or a multipart part of at most 16 MiB, a listing, a delete): past
/// it, the remote is taken as down.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(120);

/// The longest a HEAD or a GET may wait for the server's answer, its
/// status and headers (a body then streams, bounded by [`STALL`]): a live
/// server answers in a second or two, `object_store`'s retries included
/// (their backoff adds at most 1.5 s, [`super::retry_config`]), so a server
/// that takes connections and never answers costs a run this long, not
/// [`REQUEST_DEADLINE`].
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// Runs one request that sends a bounded body, giving up after
/// [`REQUEST_DEADLINE`].
pub(crate) async fn bounded<T>(request: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    within(REQUEST_DEADLINE, request).await
}

/// Runs a HEAD, or a GET up to its answer, giving up after
/// [`ANSWER_DEADLINE`].
pub(crate) async fn answered<T>(request: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    within(ANSWER_DEADLINE, request).await
}

async fn within<T>(limit: Duration, request: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    tokio::time::timeout(limit, request).await.map_err(|_| Failure::Down(format!("a request got no answer in {} s", limit.as_secs())))
}

/// Why one transfer did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Not on the remote.
    #[error("not on the remote")]
    Missing,
    /// The remote is unusable (already classified); the cause.
    #[error("{0}")]
    Down(String),
    /// The bytes are not what they claim to be, or another request failed.
    #[error("{0}")]
    Bad(String),
}

impl Remote {
    pub(super) fn failure(&self, e: &object_store::Error) -> Failure {
        match e {
            object_store::Error::NotFound { .. } if super::error_chain(e).to_ascii_lowercase().contains("nosuchbucket") => {
                Failure::Down("the bucket does not exist".into())
            }
            object_store::Error::NotFound { .. } => Failure::Missing,
            e => match self.fault(e) {
                Fault::Down(c) => Failure::Down(c),
                Fault::Other(c) => Failure::Bad(c),
            },
        }
    }

    /// Downloads the manifest of `key` (its raw bytes, at most
    /// [`MANIFEST_MAX`]).
    pub(crate) async fn get_manifest(&self, key: &StageKey) -> Result<Vec<u8>, Failure> {
        self.get_small(&self.manifest_path(key)).await
    }

    /// Downloads a manifest or a run record (at most [`MANIFEST_MAX`] bytes).
    pub(crate) async fn get_small(&self, path: &RemotePath) -> Result<Vec<u8>, Failure> {
        self.get_bounded(path, MANIFEST_MAX, "manifest").await
    }

    /// Downloads a small entry (`what`: a manifest, a job's record...),
    /// refusing one of more than `max` bytes whatever the server claims.
    pub(crate) async fn get_bounded(&self, path: &RemotePath, max: u64, what: &str) -> Result<Vec<u8>, Failure> {
        let got = answered(self.c().store.get(path)).await?.map_err(|e| self.failure(&e))?;
        if got.meta.size > max {
            return Err(Failure::Bad(format!("its {what} is {} bytes, more than any {what} ({max})", got.meta.size)));
        }
        let mut out = Vec::new();
        let mut stream = got.into_stream();
        while let Some(chunk) = self.next_chunk(&mut stream).await? {
            if (out.len() + chunk.len()) as u64 > max {
                return Err(Failure::Bad(format!("its {what} is larger than any {what} ({max} bytes)")));
            }
            out.extend_from_slice(&chunk);
        }
        self.count(out.len() as u64, 0);
        Ok(out)
    }

    /// Downloads object `h` of `size` bytes into the local store, checked.
    pub(crate) async fn fetch_object(&self, cache: &Cache, h: ArtifactHash, size: u64) -> Result<(), Failure> {
        let (file, tmp_path) = self.download_checked(h, size, &cache.root().join("tmp")).await?;
        // The fsyncs block: off the task that drives the other downloads.
        let dest = cache.object_path(&h);
        let installed = dest.clone();
        tokio::task::spawn_blocking(move || install(file, tmp_path, &installed))
            .await
            .map_err(|e| Failure::Bad(format!("installing object {} failed: {e}", h.short())))?
            .map_err(Failure::Bad)?;
        cache.stat().record_verified(&dest, h);
        Ok(())
    }

    /// Downloads object `h` of `size` bytes to `dest` (a new read-only
    /// file; its directory must exist), checked as a pull checks it: what
    /// a job's node reads its inputs from, and the engine a job's outputs.
    pub(crate) async fn fetch_to(&self, h: ArtifactHash, size: u64, dest: &std::path::Path) -> Result<(), Failure> {
        let dir = dest.parent().unwrap_or(std::path::Path::new("."));
        let (file, tmp_path) = self.download_checked(h, size, dir).await?;
        drop(file);
        fs::set_permissions(&tmp_path, fs::Permissions::from_mode(0o444)).map_err(|e| Failure::Bad(format!("cannot make {} read-only: {e}", tmp_path.display())))?;
        tmp_path.persist(dest).map_err(|e| Failure::Bad(format!("cannot move a download to {}: {}", dest.display(), e.error)))
    }

    /// Streams object `h` into a temporary file in `tmp_dir`, hashed on
    /// the way (in ranges when it is large); the file only when its size
    /// and hash are `h`'s.
    async fn download_checked(&self, h: ArtifactHash, size: u64, tmp_dir: &std::path::Path) -> Result<(fs::File, tempfile::TempPath), Failure> {
        self.whole_if_refused(size, || self.download_once(h, size, tmp_dir)).await
    }

    async fn download_once(&self, h: ArtifactHash, size: u64, tmp_dir: &std::path::Path) -> Result<(fs::File, tempfile::TempPath), Failure> {
        let mut check = Incoming::new(h, size);
        let mut feed = |chunk: &[u8]| check.feed(chunk).map_err(|why| self.damage(h, why));
        let (file, tmp_path) = self.stream_to_temp(self.object_bytes(h, size).await?, tmp_dir, &mut feed).await?;
        check.finish().map_err(|why| self.damage(h, why))?;
        Ok((file, tmp_path))
    }

    /// Runs `attempt` (which reads an object of `size` bytes), and once
    /// more when it read in ranges and the server refused them: a server
    /// that answers a ranged GET with the whole object is read whole.
    async fn whole_if_refused<T, F: std::future::Future<Output = Result<T, Failure>>>(&self, size: u64, attempt: impl Fn() -> F) -> Result<T, Failure> {
        let ranged = self.ranged(size);
        let first = attempt().await;
        if first.is_err() && ranged && !self.ranged(size) {
            return attempt().await;
        }
        first
    }

    /// Whether an object of `size` bytes is read in ranges: it is over
    /// [`RANGED_MIN`], and the server has not refused a ranged GET.
    fn ranged(&self, size: u64) -> bool {
        size > RANGED_MIN && !self.c().no_ranges.load(Ordering::Relaxed)
    }

    /// The bytes of object `h`, refused at once when the remote holds
    /// another size than `size`: in ranges when [`Remote::ranged`], else as
    /// one GET's chunks.
    async fn object_bytes(&self, h: ArtifactHash, size: u64) -> Result<impl Stream<Item = Result<Chunk<'_>, Failure>> + '_, Failure> {
        use futures::future::Either;
        use futures::TryStreamExt;
        Ok(if self.ranged(size) {
            Either::Left(self.ranges(h, size).map_ok(Chunk::Range))
        } else {
            Either::Right(self.chunks(self.get_object(h, size).await?).map_ok(Chunk::Whole))
        })
    }

    /// Object `h` of `size` bytes as ranged GETs of [`PART`] bytes, up to
    /// [`RANGES`] at a time, yielded in order.
    fn ranges(&self, h: ArtifactHash, size: u64) -> impl Stream<Item = Result<Part<'_>, Failure>> + '_ {
        let starts = (0..size).step_by(PART);
        futures::stream::iter(starts.map(move |start| self.get_range(h, size, start..(start + PART as u64).min(size)))).buffered(RANGES)
    }

    /// Bytes `range` of object `h`, which must be `size` bytes long, once
    /// one of the [`RANGE_SLOTS`] is free. An object's parts ask for their
    /// slots in order (FIFO), so the part it waits for always has one.
    async fn get_range(&self, h: ArtifactHash, size: u64, range: std::ops::Range<u64>) -> Result<Part<'_>, Failure> {
        let slot = self.c().range_slots.acquire().await.expect("the slots are never closed");
        let opts = object_store::GetOptions::default().with_range(Some(range.clone()));
        let got = match answered(self.c().store.get_opts(&self.object_path(&h), opts)).await? {
            Ok(got) => got,
            Err(e) if super::error_chain(&e).contains("non-partial response") => {
                self.c().no_ranges.store(true, Ordering::Relaxed);
                return Err(Failure::Bad("the server answers a ranged GET with the whole object".into()));
            }
            Err(e) => return Err(self.failure(&e)),
        };
        self.same_size(h, size, &got)?;
        let want = (range.end - range.start) as usize;
        let mut out = bytes::BytesMut::with_capacity(want);
        let mut stream = got.into_stream();
        while let Some(chunk) = self.next_chunk(&mut stream).await? {
            if out.len() + chunk.len() > want {
                return Err(self.damage(h, format!("object {}: the remote sent more than bytes {}..{}", h.short(), range.start, range.end)));
            }
            out.extend_from_slice(&chunk);
        }
        if out.len() != want {
            return Err(self.damage(h, format!("object {} arrived truncated (bytes {}..{}: {} of {want})", h.short(), range.start, range.end, out.len())));
        }
        Ok(Part { bytes: out.freeze(), _slot: slot })
    }

    /// A download's chunks; a server that sends nothing for [`STALL`]
    /// ends them with the remote taken as down.
    fn chunks(&self, got: object_store::GetResult) -> impl Stream<Item = Result<bytes::Bytes, Failure>> + '_ {
        futures::stream::unfold(Some(got.into_stream()), move |stream| async move {
            let mut stream = stream?;
            match self.next_chunk(&mut stream).await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(stream))),
                Ok(None) => None,
                Err(f) => Some((Err(f), None)),
            }
        })
    }

    /// Writes `chunks` into a new temporary file in `tmp_dir`, handing
    /// each to `check` first (which stops it with an error).
    async fn stream_to_temp<B: AsRef<[u8]>>(
        &self,
        chunks: impl Stream<Item = Result<B, Failure>>,
        tmp_dir: &std::path::Path,
        check: &mut dyn FnMut(&[u8]) -> Result<(), Failure>,
    ) -> Result<(fs::File, tempfile::TempPath), Failure> {
        let mut chunks = std::pin::pin!(chunks);
        let tmp = tempfile::NamedTempFile::new_in(tmp_dir).map_err(|e| Failure::Bad(format!("cannot create a temp file in {}: {e}", tmp_dir.display())))?;
        let (mut file, tmp_path) = tmp.into_parts();
        // Each chunk goes to the page cache from this task: that takes
        // microseconds (the writeback below keeps dirty pages few), where
        // tokio's File would copy it twice more and hop to its blocking
        // pool (twelve paired pulls of the flagship cache: median 0.25 s
        // that way, 0.22 s this way).
        let write_error = |e: std::io::Error| Failure::Bad(format!("cannot write {}: {e}", tmp_path.display()));
        let mut writeback = Writeback::default();
        while let Some(chunk) = chunks.next().await.transpose()? {
            let chunk = chunk.as_ref();
            check(chunk)?;
            file.write_all(chunk).map_err(write_error)?;
            self.count(chunk.len() as u64, 0);
            if writeback.due(chunk.len()) {
                writeback.start(&file);
            }
        }
        Ok((file, tmp_path))
    }

    /// Downloads the entry at `path` (a job's checkpoint) into the new
    /// file `dest`, refusing one of more than `max` bytes whatever the
    /// server claims: nothing but its size is known to check.
    pub(crate) async fn download_bounded(&self, path: &RemotePath, max: u64, dest: &std::path::Path) -> Result<(), Failure> {
        let got = answered(self.c().store.get(path)).await?.map_err(|e| self.failure(&e))?;
        let too_large = || Failure::Bad(format!("it is larger than the {max} bytes allowed"));
        if got.meta.size > max {
            return Err(too_large());
        }
        let mut n = 0u64;
        let dir = dest.parent().unwrap_or(std::path::Path::new("."));
        let mut bound = |chunk: &[u8]| {
            n += chunk.len() as u64;
            if n > max { Err(too_large()) } else { Ok(()) }
        };
        let (file, tmp_path) = self.stream_to_temp(self.chunks(got), dir, &mut bound).await?;
        drop(file);
        tmp_path.persist(dest).map_err(|e| Failure::Bad(format!("cannot move a download to {}: {}", dest.display(), e.error)))
    }

    /// Re-hashes object `h` of `size` bytes on the remote without keeping
    /// it (for `cairn remote verify`).
    pub(crate) async fn check_object(&self, h: ArtifactHash, size: u64) -> Result<(), Failure> {
        self.whole_if_refused(size, || self.check_once(h, size)).await
    }

    async fn check_once(&self, h: ArtifactHash, size: u64) -> Result<(), Failure> {
        let mut check = Incoming::new(h, size);
        let mut chunks = std::pin::pin!(self.object_bytes(h, size).await?);
        while let Some(chunk) = chunks.next().await.transpose()? {
            check.feed(chunk.as_ref()).map_err(|why| self.damage(h, why))?;
            self.count(chunk.as_ref().len() as u64, 0);
        }
        check.finish().map_err(|why| self.damage(h, why))
    }

    /// An error unless the remote's object `h` (of which `got` is an
    /// answer) is `size` bytes long, as its manifest says.
    fn same_size(&self, h: ArtifactHash, size: u64, got: &object_store::GetResult) -> Result<(), Failure> {
        if got.meta.size == size {
            return Ok(());
        }
        Err(self.damage(h, format!("object {} is {} bytes on the remote, the manifest says {size}", h.short(), got.meta.size)))
    }

    /// Starts the download of object `h`, refused at once when the remote
    /// holds another size than `size`.
    async fn get_object(&self, h: ArtifactHash, size: u64) -> Result<object_store::GetResult, Failure> {
        let path = self.object_path(&h);
        let got = answered(self.c().store.get(&path)).await?.map_err(|e| self.failure(&e))?;
        self.same_size(h, size, &got)?;
        Ok(got)
    }

    /// The next chunk of a download; a server that sends nothing for
    /// [`STALL`] is taken as down (a large object streams for as long as
    /// it takes, so there is no deadline on the whole request).
    async fn next_chunk<S, B>(&self, stream: &mut S) -> Result<Option<B>, Failure>
    where
        S: Stream<Item = object_store::Result<B>> + Unpin,
    {
        match tokio::time::timeout(STALL, stream.next()).await {
            Err(_) => Err(Failure::Down(format!("the transfer stalled: nothing arrived for {} s", STALL.as_secs()))),
            Ok(None) => Ok(None),
            Ok(Some(chunk)) => chunk.map(Some).map_err(|e| self.failure(&e)),
        }
    }

    /// Remembers that the remote's object `h` is damaged (a push repairs
    /// it) and says why.
    fn damage(&self, h: ArtifactHash, why: String) -> Failure {
        self.damaged.lock().unwrap().insert(h);
        Failure::Bad(why)
    }

    /// Uploads local object `h` unless the remote has it, adding the bytes
    /// to `sent` as they go. Returns the bytes sent (0 when it was already
    /// there).
    pub(crate) async fn push_object(&self, cache: &Cache, h: ArtifactHash, size: u64, sent: &AtomicU64) -> Result<u64, Failure> {
        self.push_file(&cache.object_path(&h), h, size, sent).await
    }

    /// Uploads the file `local`, whose bytes must hash to `h`, as object
    /// `h` unless the remote has it (a cache object, an external input, a
    /// job's output), adding the bytes to `sent` as they go (the progress
    /// of the entry or the job it is part of). Returns the bytes sent (0
    /// when it was already there).
    pub(crate) async fn push_file(&self, local: &std::path::Path, h: ArtifactHash, size: u64, sent: &AtomicU64) -> Result<u64, Failure> {
        let path = self.object_path(&h);
        let repair = self.damaged.lock().unwrap().contains(&h);
        match answered(self.c().store.head(&path)).await? {
            Ok(meta) if meta.size == size && !repair => return Ok(0),
            // A wrong-sized object under this name is damage; the
            // multipart path below overwrites it with the right bytes.
            Ok(_) => return self.upload_multipart(local, Some(h), &path, sent).await,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.failure(&e)),
        }
        if size > SINGLE_PUT_MAX {
            return self.upload_multipart(local, Some(h), &path, sent).await;
        }
        let bytes = tokio::fs::read(local).await.map_err(|e| Failure::Bad(format!("cannot read {}: {e}", local.display())))?;
        if ArtifactHash::of_bytes(&bytes) != h {
            return Err(Failure::Bad(not_hashing(local, h)));
        }
        let n = bytes.len() as u64;
        if repair {
            // The remote's bytes under this name are damaged: these are
            // the right ones (just checked), so overwriting is safe.
            bounded(self.c().store.put(&path, PutPayload::from(bytes))).await?.map_err(|e| self.failure(&e))?;
            self.damaged.lock().unwrap().remove(&h);
        } else {
            self.put_create(&path, PutPayload::from(bytes)).await?;
        }
        self.count(0, n);
        sent.fetch_add(n, Ordering::Relaxed);
        Ok(n)
    }

    /// Streams the file `local` to `path` in parts, replacing what is
    /// there, adding the bytes to `sent` as they go; with `expect`,
    /// aborted unless its bytes hash to it.
    pub(crate) async fn upload_multipart(&self, local: &std::path::Path, expect: Option<ArtifactHash>, path: &RemotePath, sent: &AtomicU64) -> Result<u64, Failure> {
        let mut file = tokio::fs::File::open(local).await.map_err(|e| Failure::Bad(format!("cannot read {}: {e}", local.display())))?;
        let upload = bounded(self.c().store.put_multipart(path)).await?.map_err(|e| self.failure(&e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        // Only bytes that must be an object's are hashed on the way.
        let mut hasher = expect.map(|_| blake3::Hasher::new());
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let got = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) => {
                    let _ = w.abort().await;
                    return Err(Failure::Bad(format!("cannot read {}: {e}", local.display())));
                }
            };
            bounded(w.wait_for_capacity(super::CONCURRENCY)).await?.map_err(|e| self.failure(&e))?;
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&buf[..got]);
            }
            w.write(&buf[..got]);
            n += got as u64;
            self.count(0, got as u64);
            sent.fetch_add(got as u64, Ordering::Relaxed);
        }
        if let (Some(h), Some(hasher)) = (expect, hasher) {
            if ArtifactHash::from_blake3(hasher.finalize()) != h {
                let _ = w.abort().await;
                return Err(Failure::Bad(not_hashing(local, h)));
            }
        }
        bounded(w.finish()).await?.map_err(|e| self.failure(&e))?;
        if let Some(h) = expect {
            self.damaged.lock().unwrap().remove(&h);
        }
        Ok(n)
    }

    /// A create-only PUT; "already exists" is success.
    pub(super) async fn put_create(&self, path: &RemotePath, payload: PutPayload) -> Result<(), Failure> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match bounded(self.c().store.put_opts(path, payload, opts)).await? {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => Ok(()),
            // A PUT cannot miss: the bucket (or the share) is not there.
            Err(e) => Err(match self.failure(&e) {
                Failure::Missing => Failure::Down("the bucket does not exist".into()),
                f => f,
            }),
        }
    }

    /// Publishes a manifest, create-only: the first writer wins.
    pub(crate) async fn put_manifest(&self, key: &StageKey, bytes: Vec<u8>) -> Result<(), Failure> {
        let n = bytes.len() as u64;
        self.put_create(&self.manifest_path(key), PutPayload::from(bytes)).await?;
        self.count(0, n);
        Ok(())
    }
}

/// Why a file meant to be uploaded as object `h` was not.
fn not_hashing(local: &std::path::Path, h: ArtifactHash) -> String {
    format!(
        "{} no longer hashes to {} (damaged or changed since it was hashed; for a cache object run `cairn cache verify`); not pushed",
        local.display(),
        h.short()
    )
}

/// Starts the disk writes of a download while it goes on, every
/// [`Writeback::EVERY`] bytes (`sync_file_range`, as RocksDB's
/// `bytes_per_sync`), so that the fsync before its rename finds little
/// left to write instead of the whole file: the rename still waits for
/// that fsync, so what is durable is unchanged.
#[derive(Default)]
struct Writeback {
    /// Bytes written, and where the last range started.
    written: u64,
    started: u64,
}

impl Writeback {
    const EVERY: u64 = 8 << 20;

    /// Counts `n` more bytes; whether a range is due.
    fn due(&mut self, n: usize) -> bool {
        self.written += n as u64;
        self.written - self.started >= Self::EVERY
    }

    /// Asks the kernel to start writing the bytes since the last range
    /// (written to `file`); a failure only loses the head start.
    fn start(&mut self, file: &fs::File) {
        use std::os::fd::AsRawFd;
        let (offset, len) = (self.started as libc::off64_t, (self.written - self.started) as libc::off64_t);
        // SAFETY: a descriptor the file owns, for the duration of the call.
        unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
        self.started = self.written;
    }
}

/// One range of a large object, holding its slot until it is written.
struct Part<'a> {
    bytes: bytes::Bytes,
    _slot: tokio::sync::SemaphorePermit<'a>,
}

/// A piece of an object as it arrives: a chunk of one GET, or a range.
enum Chunk<'a> {
    Whole(bytes::Bytes),
    Range(Part<'a>),
}

impl AsRef<[u8]> for Chunk<'_> {
    fn as_ref(&self) -> &[u8] {
        match self {
            Chunk::Whole(b) => b,
            Chunk::Range(p) => &p.bytes,
        }
    }
}

/// An object's bytes as they arrive, checked against its name: never
/// longer than its size, and hashing to it at the end.
struct Incoming {
    h: ArtifactHash,
    size: u64,
    n: u64,
    hasher: blake3::Hasher,
}

impl Incoming {
    fn new(h: ArtifactHash, size: u64) -> Self {
        Self { h, size, n: 0, hasher: blake3::Hasher::new() }
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.n += chunk.len() as u64;
        if self.n > self.size {
            return Err(format!("object {} is longer than its manifest says", self.h.short()));
        }
        self.hasher.update(chunk);
        Ok(())
    }

    fn finish(self) -> Result<(), String> {
        if self.n != self.size {
            return Err(format!("object {} arrived truncated ({} of {} bytes)", self.h.short(), self.n, self.size));
        }
        let actual = ArtifactHash::from_blake3(self.hasher.finalize());
        if actual != self.h {
            return Err(format!("object {} on the remote hashes to {}: its bytes are damaged", self.h.short(), actual.short()));
        }
        Ok(())
    }
}

/// Moves a verified download into the store at `dest`: fsynced,
/// read-only, renamed into place.
fn install(file: fs::File, tmp_path: tempfile::TempPath, dest: &std::path::Path) -> Result<(), String> {
    file.sync_all().map_err(|e| format!("cannot sync {}: {e}", tmp_path.display()))?;
    drop(file);
    fs::set_permissions(&tmp_path, fs::Permissions::from_mode(0o444)).map_err(|e| format!("cannot make {} read-only: {e}", tmp_path.display()))?;
    let dir = dest.parent().expect("objects have a parent directory");
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    tmp_path.persist(dest).map_err(|e| format!("cannot move a download into {}: {}", dest.display(), e.error))?;
    crate::cache::store::sync_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `file://` remote holding `bytes` as an object, and an empty cache.
    fn remote_with(t: &std::path::Path, bytes: &[u8]) -> (Remote, Cache, ArtifactHash) {
        let h = ArtifactHash::of_bytes(bytes);
        let objects = t.join("remote/v1/objects");
        fs::create_dir_all(&objects).unwrap();
        fs::write(objects.join(h.to_hex().as_str()), bytes).unwrap();
        (Remote::in_dir(&t.join("remote")), Cache::open(&t.join("cache")).unwrap(), h)
    }

    /// Bytes of more than [`RANGED_MIN`] that end in a short last part.
    fn large() -> Vec<u8> {
        let n = RANGED_MIN as usize + PART + 12_345;
        (0..n).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    #[test]
    fn a_large_object_arrives_whole_through_ranges() {
        let t = tempfile::tempdir().unwrap();
        let bytes = large();
        let (r, cache, h) = remote_with(t.path(), &bytes);
        assert!(r.ready().unwrap());
        let n = bytes.len() as u64;
        let parts: Vec<bytes::Bytes> = r.block_on(r.ranges(h, n).map(|p| p.map(|p| p.bytes)).collect::<Vec<_>>()).into_iter().collect::<Result<_, _>>().unwrap();
        assert_eq!(parts.len(), bytes.len().div_ceil(PART), "one range a part");
        assert!(parts.iter().all(|p| p.len() <= PART) && parts.concat() == bytes, "in order, each at most a part");
        r.block_on(r.fetch_object(&cache, h, n)).unwrap();
        assert!(fs::read(cache.object_path(&h)).unwrap() == bytes);
        assert_eq!(r.bytes_down.load(Ordering::Relaxed), n);
        r.block_on(r.check_object(h, n)).expect("`remote verify` reads it in ranges too");
    }

    #[test]
    fn a_flipped_byte_in_a_later_range_is_refused_and_nothing_installed() {
        let t = tempfile::tempdir().unwrap();
        let bytes = large();
        let (r, cache, h) = remote_with(t.path(), &bytes);
        let on_remote = t.path().join("remote/v1/objects").join(h.to_hex().as_str());
        let mut bad = bytes.clone();
        bad[RANGED_MIN as usize + 7] ^= 1;
        fs::write(&on_remote, &bad).unwrap();
        assert!(r.ready().unwrap());
        let verified = r.block_on(r.check_object(h, bytes.len() as u64));
        assert!(matches!(&verified, Err(Failure::Bad(why)) if why.contains("damaged")), "{verified:?}");
        match r.block_on(r.fetch_object(&cache, h, bytes.len() as u64)) {
            Err(Failure::Bad(why)) => assert!(why.contains("damaged"), "{why}"),
            other => panic!("a damaged object must be refused: {other:?}"),
        }
        assert!(!cache.object_path(&h).exists());
        assert!(r.damaged.lock().unwrap().contains(&h), "a push repairs it");
        // One of another length is refused by its first range's answer.
        fs::write(&on_remote, &bytes[..bytes.len() - 1]).unwrap();
        let short = r.block_on(r.fetch_object(&cache, h, bytes.len() as u64));
        assert!(matches!(&short, Err(Failure::Bad(why)) if why.contains("bytes on the remote")), "{short:?}");
    }
}
