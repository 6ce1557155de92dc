//! The facts about this machine that can change a stage's results.
//!
//! Facts about libtorch come from the worker itself, never from a guess:
//! `cairn-worker --probe` loads the libtorch its stages run on and prints a
//! [`Probe`] — the libtorch version actually loaded, whether CUDA is usable
//! and the device's name, the CPU kernels libtorch dispatches to
//! (`DEFAULT`/`AVX2`/`AVX512`, with the vendor of a CPU not Intel's) and
//! the CPU's native bf16 instructions — and the version of every kind it
//! implements. A probe from a worker of another
//! checkout (other protocol or kind versions) is refused. When the worker is
//! missing or its probe fails, the stages that need these facts fail with
//! the reason and the fix (`make setup`), and their keys hold `unknown`, so
//! they can match nothing cached.
//!
//! Probing loads libtorch (most of a second), so it is lazy: only a key that
//! needs a fact asks for it, and a pipeline of `command` stages never starts
//! the worker. Its answer is cached in `<cache>/probe/<id>.json`, where
//! `<id>` hashes what could change it: the worker binary's identity (path,
//! size, mtime, ctime, inode), the NVIDIA driver version, the CPU's model
//! and flags, and the variables libtorch reads at start-up
//! (`CUDA_VISIBLE_DEVICES`, `ATEN_CPU_CAPABILITY`, `ONEDNN_MAX_CPU_ISA`,
//! `DNNL_MAX_CPU_ISA`, `MKL_ENABLE_INSTRUCTIONS`, `MKL_CBWR`,
//! `LD_LIBRARY_PATH`, `LD_PRELOAD`). An entry is also dropped when the libtorch library file it
//! names changed (a reinstall). So rebuilding the worker, updating the
//! driver or using the cache from another machine probes again, and
//! `cairn status` stays fast otherwise. Entries are written atomically
//! (temporary file, then rename) and only into a directory tagged as a cairn
//! cache; a read-only cache only means probing once per invocation.
//!
//! Since the id holds nothing of the project, the command line also keeps
//! this machine's answers in a per-user directory
//! ([`Environment::with_user_probe_cache`]: `$XDG_CACHE_HOME/cairn/probe`,
//! else `~/.cache/cairn/probe`), read after the project's: a fresh clone's
//! first `status`, `pull` or `run` does not load libtorch again. Entries
//! there whose worker binary is gone are dropped whenever one is written.
//!
//! A stage that runs on a scheduler's node is keyed with that node's facts,
//! not this machine's: each executor of the pipeline that submits jobs has
//! its own [`Environment`] ([`Environment::for_executor`]) whose probe is a
//! job of the executor's shape running `cairn-worker --probe` on a node
//! ([`RemoteProbe`], made in `crate::executor`). Its answer is cached like a
//! local one, under an id that also hashes the executor's configuration.
//! The job re-checks its own node's facts before it runs, so a cluster
//! whose nodes changed since is refused, never mislabelled, and the
//! engine then forgets the cached answer ([`Environment::forget_probe`]).
//!
//! The thread count comes from `CAIRN_THREADS` or the number of CPUs.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use crate::kind::EnvNeeds;
use crate::worker::{threads_from_env, Probe, MKL_VARS, ONEDNN_ISA_VARS, PROTOCOL_VERSION};

pub use crate::worker::TORCH_VERSION;

/// The value of a key entry whose fact could not be learned.
pub const UNKNOWN: &str = "unknown (cairn-worker --probe failed)";

/// The sub-directory of the cache holding probe answers.
pub const PROBE_DIR: &str = "probe";

/// Variables libtorch reads at start-up that change what it reports.
const PROBE_ENV_VARS: [&str; 8] = [
    "CUDA_VISIBLE_DEVICES",
    "ATEN_CPU_CAPABILITY",
    ONEDNN_ISA_VARS[0],
    ONEDNN_ISA_VARS[1],
    MKL_VARS[0],
    MKL_VARS[1],
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
];

/// Why the worker's facts are not known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    NoWorker(String),
    #[error("cannot run `{} --probe`: {reason}\n  help: rebuild it with `make setup`, or set CAIRN_WORKER", path.display())]
    Spawn { path: PathBuf, reason: String },
    #[error("`{} --probe` failed ({status}){stderr}\n  help: rebuild it with `make setup`; cairn and cairn-worker must come from the same checkout", path.display())]
    Failed { path: PathBuf, status: String, stderr: String },
    #[error("`{} --probe` printed no probe ({reason}); it is older than this cairn\n  help: rebuild it with `make setup`", path.display())]
    Parse { path: PathBuf, reason: String },
    #[error("{} comes from another checkout than this cairn: {what}\n  help: rebuild it with `make setup` so that cairn and cairn-worker come from the same checkout", path.display())]
    Stale { path: PathBuf, what: String },
    #[error("cannot learn the facts of the nodes of {label}: {reason}\n  help: the nodes need cairn-worker and libtorch at the paths this machine uses; `sbatch` must accept the executor's job shape")]
    Remote { label: String, reason: String },
}

/// How to probe the nodes of a scheduler executor: `run(worker, out)`
/// submits a job that runs `<worker> --probe` with its output in `out` (a
/// file on the shared cache), waits for it, and returns that output.
#[derive(Clone)]
pub struct RemoteProbe {
    /// Says where it ran, in errors (`executor `gpu` (Slurm)`).
    pub label: String,
    /// The executor's configuration, hashed into the probe cache's id.
    pub config: String,
    pub run: ProbeRun,
}

/// Runs a probe job for a worker path, its output to a file (see [`RemoteProbe`]).
pub type ProbeRun = Arc<dyn Fn(&Path, &Path) -> Result<String, String> + Send + Sync>;

impl std::fmt::Debug for RemoteProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteProbe").field("label", &self.label).field("config", &self.config).finish()
    }
}

/// The engine's view of the machine. Cheap to make; the worker's facts are
/// probed on first use (see the module docs).
#[derive(Debug)]
pub struct Environment {
    /// Intra-op threads for CPU compute.
    pub threads: usize,
    /// `--cpu`: key and run on the CPU even when CUDA is usable.
    force_cpu: bool,
    /// The worker to probe; `None` finds it with [`crate::worker::locate`].
    worker: Option<PathBuf>,
    /// The cache directory whose `probe/` holds probe answers.
    cache_root: Option<PathBuf>,
    /// The per-user directory whose `probe/` also holds this machine's.
    user_root: Option<PathBuf>,
    /// The worker kinds this cairn runs, name → version: a probe listing
    /// others comes from another checkout. `None` checks no kinds.
    worker_kinds: Option<BTreeMap<String, u32>>,
    probe: OnceLock<Result<Probe, ProbeError>>,
    /// Where the probe runs: `None` here, else on a scheduler's node.
    remote: Option<RemoteProbe>,
    /// The environments of the scheduler executors, by executor name.
    executors: BTreeMap<String, Environment>,
}

impl Environment {
    pub fn detect(force_cpu: bool) -> Self {
        Self {
            threads: threads_from_env(),
            force_cpu,
            worker: None,
            cache_root: None,
            user_root: None,
            worker_kinds: None,
            probe: OnceLock::new(),
            remote: None,
            executors: BTreeMap::new(),
        }
    }

    /// Gives each named scheduler executor an environment probed on its
    /// nodes; call it last, the executors copy the rest of the settings.
    pub fn with_executors(mut self, probes: BTreeMap<String, RemoteProbe>) -> Self {
        let like = |remote: RemoteProbe| Environment {
            threads: self.threads,
            force_cpu: self.force_cpu,
            worker: self.worker.clone(),
            cache_root: self.cache_root.clone(),
            // A cluster's nodes change without this machine knowing.
            user_root: None,
            worker_kinds: self.worker_kinds.clone(),
            probe: OnceLock::new(),
            remote: Some(remote),
            executors: BTreeMap::new(),
        };
        self.executors = probes.into_iter().map(|(name, p)| (name, like(p))).collect();
        self
    }

    /// Deletes the cached probe answer this environment was keyed with,
    /// so the next invocation probes again; whether there was one.
    pub fn forget_probe(&self) -> bool {
        let Ok(worker) = self.worker.clone().map_or_else(crate::worker::locate, Ok) else { return false };
        self.probe_caches(&worker).iter().filter(|c| std::fs::remove_file(&c.file).is_ok()).count() > 0
    }

    /// Where this environment's probe answer for `worker` is cached: the
    /// project's cache, then the user's, the faster first.
    fn probe_caches(&self, worker: &Path) -> Vec<ProbeCache> {
        let config = self.remote.as_ref().map_or("", |r| r.config.as_str());
        let project = self.cache_root.as_deref().and_then(|root| ProbeCache::new(root, worker, config, false));
        let user = self.user_root.as_deref().and_then(|root| ProbeCache::new(root, worker, config, true));
        project.into_iter().chain(user).collect()
    }

    /// The environment a stage on `executor` is keyed with and runs in:
    /// its nodes' for a scheduler executor, else this machine's.
    pub fn for_executor(&self, executor: Option<&str>) -> &Environment {
        executor.and_then(|e| self.executors.get(e)).unwrap_or(self)
    }

    /// Caches probe answers under `<cache_root>/probe/`.
    pub fn with_probe_cache(mut self, cache_root: impl Into<PathBuf>) -> Self {
        self.cache_root = Some(cache_root.into());
        self
    }

    /// Also caches this machine's probe answers under `<dir>/probe/`
    /// (created if need be); `dir` is per user, shared by projects.
    pub fn with_user_probe_cache(mut self, dir: Option<PathBuf>) -> Self {
        self.user_root = dir;
        self
    }

    /// Refuses a worker whose probe lists other kinds or versions than
    /// these (see [`crate::kinds::Registry::worker_kinds`]).
    pub fn with_worker_kinds(mut self, kinds: BTreeMap<String, u32>) -> Self {
        self.worker_kinds = Some(kinds);
        self
    }

    /// Probes this worker instead of the one [`crate::worker::locate`] finds.
    pub fn with_worker(mut self, worker: impl Into<PathBuf>) -> Self {
        self.worker = Some(worker.into());
        self
    }

    /// Whether an NVIDIA GPU is present, from the driver's `/proc` entries
    /// without loading libtorch: a hint for choosing a pipeline profile,
    /// never a key entry.
    pub fn cuda_hint(&self) -> bool {
        !self.force_cpu && cuda_device_name().is_some()
    }

    /// The worker's facts, probing it (or reading the probe cache) the
    /// first time.
    pub fn facts(&self) -> Result<&Probe, &ProbeError> {
        self.probe.get_or_init(|| self.probe_now()).as_ref()
    }

    /// The device torch stages are keyed on and run on.
    pub fn device(&self) -> Result<String, &ProbeError> {
        let probe = self.facts()?;
        Ok(if self.force_cpu { "cpu".into() } else { probe.device.clone() })
    }

    /// The environment entries a kind's key includes. Thread count, CPU
    /// kernel class and native bf16 matter only on CPU: CUDA kernels'
    /// reduction order follows none of them. A kind that needs nothing
    /// never probes.
    pub fn key_entries(&self, needs: EnvNeeds) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        if !needs.torch && !needs.threads {
            return m;
        }
        let (probe, device) = match (self.facts(), self.device()) {
            (Ok(p), Ok(d)) => (p, d),
            _ => return unknown_entries(needs),
        };
        if needs.torch {
            m.insert("libtorch".into(), probe.libtorch.clone());
            m.insert("device".into(), device.clone());
        }
        if needs.threads && device == "cpu" {
            m.insert("threads".into(), self.threads.to_string());
            m.insert("cpu_capability".into(), probe.cpu_capability.clone());
            m.insert("native_bf16".into(), probe.native_bf16.clone());
        }
        m
    }

    fn probe_now(&self) -> Result<Probe, ProbeError> {
        let worker = match &self.worker {
            Some(w) => w.clone(),
            None => crate::worker::locate().map_err(ProbeError::NoWorker)?,
        };
        let caches = self.probe_caches(&worker);
        if let Some((i, probe)) = caches.iter().enumerate().find_map(|(i, c)| c.read().map(|p| (i, p))) {
            // Checked again: this cairn may be newer than the cached answer.
            check_probe(&worker, &probe, self.worker_kinds.as_ref())?;
            caches[..i].iter().for_each(|c| c.write(&probe, &worker));
            return Ok(probe);
        }
        let probe = match &self.remote {
            None => run_probe(&worker)?,
            Some(remote) => self.run_remote_probe(remote, &worker)?,
        };
        check_probe(&worker, &probe, self.worker_kinds.as_ref())?;
        caches.iter().for_each(|c| c.write(&probe, &worker));
        Ok(probe)
    }
}

impl Environment {
    /// Probes a node through `remote`, its output in a file of the shared
    /// cache's `tmp/` (the system's temporary directory without a cache).
    fn run_remote_probe(&self, remote: &RemoteProbe, worker: &Path) -> Result<Probe, ProbeError> {
        let dir = self.cache_root.as_ref().map(|r| r.join("tmp")).filter(|d| d.is_dir()).unwrap_or_else(std::env::temp_dir);
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let out = dir.join(format!("probe-{}-{}.out", std::process::id(), &blake3::hash(remote.config.as_bytes()).to_hex()[..8]));
        let answer = (remote.run)(worker, &out);
        let _ = std::fs::remove_file(&out);
        let fail = |reason: String| ProbeError::Remote { label: remote.label.clone(), reason };
        parse_probe(&answer.map_err(fail)?).map_err(|e| fail(format!("its output holds no probe ({e})")))
    }
}

/// Entries for a kind whose facts are unknown: [`UNKNOWN`] equals no
/// recorded value, so nothing cached is served, and the stage itself fails
/// with the probe's error before it starts.
fn unknown_entries(needs: EnvNeeds) -> BTreeMap<String, String> {
    let names: &[&str] = if needs.torch { &["libtorch", "device"] } else { &["device"] };
    names.iter().map(|n| (n.to_string(), UNKNOWN.to_string())).collect()
}

/// Runs `<worker> --probe` and parses its answer.
fn run_probe(worker: &Path) -> Result<Probe, ProbeError> {
    let spawn = || Command::new(worker).arg("--probe").env(crate::worker::LOG_ENV, "error").stdin(Stdio::null()).output();
    let mut attempt = spawn();
    // A binary still open for writing somewhere (a build finishing, or a
    // forked process that has not exec'd yet holding the descriptor) is
    // busy for a moment.
    for _ in 0..5 {
        match &attempt {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(std::time::Duration::from_millis(50));
                attempt = spawn();
            }
            _ => break,
        }
    }
    let out = attempt.map_err(|e| ProbeError::Spawn { path: worker.into(), reason: e.to_string() })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect::<Vec<_>>().into_iter().rev().collect();
        let stderr = if tail.is_empty() { String::new() } else { format!(":\n    {}", tail.join("\n    ")) };
        return Err(ProbeError::Failed { path: worker.into(), status: out.status.to_string(), stderr });
    }
    parse_probe(&String::from_utf8_lossy(&out.stdout)).map_err(|reason| ProbeError::Parse { path: worker.into(), reason })
}

/// The probe is the last line of stdout that is a JSON object (libtorch may
/// print warnings before it).
fn parse_probe(stdout: &str) -> Result<Probe, String> {
    let line = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')).ok_or("no JSON object on stdout")?;
    serde_json::from_str(line).map_err(|e| e.to_string())
}

/// Refuses a probe from a worker built from other sources than this cairn.
fn check_probe(worker: &Path, probe: &Probe, ours: Option<&BTreeMap<String, u32>>) -> Result<(), ProbeError> {
    let stale = |what: String| Err(ProbeError::Stale { path: worker.into(), what });
    if probe.protocol != PROTOCOL_VERSION {
        return stale(format!("it speaks worker protocol {}, cairn speaks {PROTOCOL_VERSION}", probe.protocol));
    }
    let Some(ours) = ours else { return Ok(()) };
    if probe.kinds != *ours {
        let show = |m: &BTreeMap<String, u32>| m.iter().map(|(k, v)| format!("{k} v{v}")).collect::<Vec<_>>().join(", ");
        return stale(format!("its kinds are [{}], cairn's are [{}]", show(&probe.kinds), show(ours)));
    }
    Ok(())
}

/// One cached probe answer: the probe and the identity of the libtorch
/// file it was read from.
#[derive(Serialize, Deserialize)]
struct CachedProbe {
    probe: Probe,
    libtorch_file: Option<FileId>,
    /// The worker probed, so that a per-user entry can be dropped once
    /// it is gone.
    #[serde(default)]
    worker: Option<PathBuf>,
}

/// What changes when a file is replaced or rewritten.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileId {
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        Some(Self { dev: m.dev(), ino: m.ino(), size: m.size(), mtime_ns: ns(m.mtime(), m.mtime_nsec()), ctime_ns: ns(m.ctime(), m.ctime_nsec()) })
    }
}

/// The probe cache entry for one worker on this machine.
struct ProbeCache {
    /// The cache root. Keys are computed after the cache is opened (and
    /// claimed as cairn's), so an existing root is ours; a missing one is
    /// created only for the per-user cache.
    root: PathBuf,
    file: PathBuf,
    /// The per-user cache: made when missing, pruned of the gone workers.
    user: bool,
}

impl ProbeCache {
    /// `None` when the worker cannot be stat'ed (probing will say why).
    fn new(root: &Path, worker: &Path, executor: &str, user: bool) -> Option<Self> {
        let id = probe_id(worker, executor)?;
        Some(Self { root: root.into(), file: root.join(PROBE_DIR).join(format!("{id}.json")), user })
    }

    fn read(&self) -> Option<Probe> {
        let cached: CachedProbe = serde_json::from_slice(&std::fs::read(&self.file).ok()?).ok()?;
        let lib_now = cached.probe.libtorch_path.as_deref().and_then(FileId::of);
        (lib_now == cached.libtorch_file).then_some(cached.probe)
    }

    /// Best effort: a cache we may not write to only costs a probe per
    /// invocation.
    fn write(&self, probe: &Probe, worker: &Path) {
        if let Err(e) = self.try_write(probe, worker) {
            tracing::debug!("not caching the worker probe in {}: {e}", self.file.display());
        }
    }

    fn try_write(&self, probe: &Probe, worker: &Path) -> std::io::Result<()> {
        if self.user {
            std::fs::create_dir_all(&self.root)?;
            self.prune();
        }
        if !self.root.is_dir() {
            return Ok(());
        }
        let dir = self.file.parent().expect("probe file has a parent");
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        let worker = Some(std::fs::canonicalize(worker).unwrap_or_else(|_| worker.into()));
        let cached = CachedProbe { probe: probe.clone(), libtorch_file: probe.libtorch_path.as_deref().and_then(FileId::of), worker };
        let tmp = dir.join(format!(".{}.{}.tmp", std::process::id(), self.file.file_name().unwrap().to_string_lossy()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&cached)?)?;
        std::fs::rename(&tmp, &self.file).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }

    /// Drops the entries of workers that no longer exist (temporary ones,
    /// old checkouts), so the per-user directory does not only grow.
    fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join(PROBE_DIR)) else { return };
        for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
            let gone = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice::<CachedProbe>(&b).ok()).and_then(|c| c.worker).is_some_and(|w| !w.exists());
            if gone {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// This machine's name (empty where the kernel does not say).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The per-user directory for machine-wide answers:
/// `$XDG_CACHE_HOME/cairn`, else `$HOME/.cache/cairn`.
pub fn user_cache_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()).map(PathBuf::from);
    let base = xdg.or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))?;
    base.is_absolute().then(|| base.join("cairn"))
}

/// Hex blake3 of everything that could change a worker's probe answer on
/// this machine, and of the executor's configuration (empty here); see the
/// module docs.
fn probe_id(worker: &Path, executor: &str) -> Option<String> {
    let path = std::fs::canonicalize(worker).ok()?;
    let id = FileId::of(&path)?;
    let mut h = blake3::Hasher::new();
    let mut field = |name: &str, value: &[u8]| {
        h.update(name.as_bytes());
        h.update(&(value.len() as u64).to_le_bytes());
        h.update(value);
    };
    field("worker", path.as_os_str().as_encoded_bytes());
    field("worker_id", serde_json::to_string(&id).ok()?.as_bytes());
    field("driver", &std::fs::read("/proc/driver/nvidia/version").unwrap_or_default());
    field("cpu", cpu_identity().as_bytes());
    for var in PROBE_ENV_VARS {
        field(var, std::env::var_os(var).unwrap_or_default().as_encoded_bytes());
    }
    if !executor.is_empty() {
        field("executor", executor.as_bytes());
    }
    Some(h.finalize().to_hex()[..32].to_string())
}

/// The first CPU's model and feature flags from `/proc/cpuinfo` (empty
/// where there is none).
fn cpu_identity() -> String {
    let Ok(file) = std::fs::File::open("/proc/cpuinfo") else { return String::new() };
    let wanted = ["vendor_id", "model name", "flags", "CPU implementer", "CPU part", "Features"];
    BufReader::new(file)
        .lines()
        .map_while(Result::ok)
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The model name of the first NVIDIA GPU, if the driver is loaded.
/// `CUDA_VISIBLE_DEVICES=""` hides it, as it does from libtorch.
pub fn cuda_device_name() -> Option<String> {
    if std::env::var("CUDA_VISIBLE_DEVICES").map(|v| v.trim().is_empty() || v == "-1").unwrap_or(false) {
        return None;
    }
    let dir = std::fs::read_dir("/proc/driver/nvidia/gpus").ok()?;
    let mut gpus: Vec<_> = dir.flatten().map(|e| e.path()).collect();
    gpus.sort();
    let info = std::fs::read_to_string(gpus.first()?.join("information")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Model:"))
        .map(|m| m.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample_probe() -> Probe {
        Probe {
            protocol: PROTOCOL_VERSION,
            libtorch: TORCH_VERSION.into(),
            libtorch_path: None,
            cuda: false,
            device: "cpu".into(),
            cpu_capability: "AVX2".into(),
            native_bf16: "none".into(),
            kinds: sample_kinds(),
        }
    }

    fn sample_kinds() -> BTreeMap<String, u32> {
        BTreeMap::from([("resize".into(), 1), ("train".into(), 5)])
    }

    /// A stand-in worker: counts its probes in `<dir>/probes` and prints
    /// `probe` (after a libtorch-style warning line).
    fn fake_worker(dir: &Path, probe: &Probe) -> PathBuf {
        let path = dir.join("cairn-worker");
        let json = serde_json::to_string(probe).unwrap();
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = --probe ] || exit 2\necho x >> '{}'\necho '[W warning from libtorch]'\necho '{json}'\n",
            dir.join("probes").display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn probes_run(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join("probes")).map(|s| s.lines().count()).unwrap_or(0)
    }

    const TORCH: EnvNeeds = EnvNeeds { torch: true, threads: false };
    const THREADED: EnvNeeds = EnvNeeds { torch: true, threads: true };

    #[test]
    fn the_probe_is_the_last_json_line() {
        let json = serde_json::to_string(&sample_probe()).unwrap();
        assert_eq!(parse_probe(&format!("[W something]\n{json}\n")).unwrap(), sample_probe());
        assert!(parse_probe("usage: cairn-worker run <job.json>\n").is_err());
        assert!(parse_probe("{\"protocol\": 1}").unwrap_err().contains("missing field"));
    }

    #[test]
    fn key_entries_come_from_the_probe() {
        let t = tempfile::tempdir().unwrap();
        let env = Environment::detect(false).with_worker(fake_worker(t.path(), &sample_probe()));
        let torch = env.key_entries(TORCH);
        assert_eq!(torch, BTreeMap::from([("device".into(), "cpu".into()), ("libtorch".into(), TORCH_VERSION.into())]));
        let threaded = env.key_entries(THREADED);
        assert_eq!(threaded["cpu_capability"], "AVX2");
        assert_eq!(threaded["native_bf16"], "none");
        assert_eq!(threaded["threads"], env.threads.to_string());
        assert_eq!(probes_run(t.path()), 1, "one probe per invocation");

        let cuda = Probe { cuda: true, device: "cuda:NVIDIA H200".into(), ..sample_probe() };
        let t = tempfile::tempdir().unwrap();
        let env = Environment::detect(false).with_worker(fake_worker(t.path(), &cuda));
        let keyed = env.key_entries(THREADED);
        assert_eq!(keyed["device"], "cuda:NVIDIA H200");
        assert!(!keyed.contains_key("cpu_capability") && !keyed.contains_key("threads"), "{keyed:?}");
        // `--cpu` keys on the CPU, with its class.
        let env = Environment::detect(true).with_worker(fake_worker(t.path(), &cuda));
        assert_eq!(env.key_entries(THREADED)["device"], "cpu");
        assert_eq!(env.key_entries(THREADED)["cpu_capability"], "AVX2");
    }

    #[test]
    fn kinds_that_need_nothing_never_probe() {
        let env = Environment::detect(false).with_worker("/nonexistent/cairn-worker");
        assert!(env.key_entries(EnvNeeds::default()).is_empty());
        assert!(env.probe.get().is_none(), "probed for a kind that needs no facts");
    }

    #[test]
    fn probes_are_cached_per_worker_identity() {
        let t = tempfile::tempdir().unwrap();
        let worker = fake_worker(t.path(), &sample_probe());
        let cache = t.path().join("cache");
        std::fs::create_dir(&cache).unwrap();
        let fresh = || Environment::detect(false).with_worker(&worker).with_probe_cache(&cache);
        assert_eq!(fresh().facts().unwrap(), &sample_probe());
        assert_eq!(fresh().facts().unwrap(), &sample_probe());
        assert_eq!(probes_run(t.path()), 1, "the second invocation reads the cache");
        assert_eq!(std::fs::read_dir(cache.join(PROBE_DIR)).unwrap().count(), 1, "no temporary files left");

        // A rebuilt worker (here: other facts) is probed again.
        let avx512 = Probe { cpu_capability: "AVX512".into(), ..sample_probe() };
        fake_worker(t.path(), &avx512);
        assert_eq!(fresh().facts().unwrap().cpu_capability, "AVX512");
        assert_eq!(probes_run(t.path()), 2);
    }

    #[test]
    fn a_fresh_project_reads_the_user_s_answer_and_gone_workers_are_pruned() {
        let t = tempfile::tempdir().unwrap();
        let worker = fake_worker(t.path(), &sample_probe());
        let user = t.path().join("user");
        let project = |name: &str| {
            let root = t.path().join(name);
            std::fs::create_dir_all(&root).unwrap();
            Environment::detect(false).with_worker(&worker).with_probe_cache(root).with_user_probe_cache(Some(user.clone()))
        };
        assert_eq!(project("a").facts().unwrap(), &sample_probe());
        assert_eq!(project("b").facts().unwrap(), &sample_probe());
        assert_eq!(probes_run(t.path()), 1, "the second project reads the user's answer");
        assert_eq!(std::fs::read_dir(t.path().join("b").join(PROBE_DIR)).unwrap().count(), 1, "and keeps it in its own cache");
        assert!(project("c").forget_probe());
        assert_eq!(project("c").facts().unwrap(), &sample_probe());
        assert_eq!(probes_run(t.path()), 2, "a forgotten answer is forgotten everywhere");

        let other = tempfile::tempdir().unwrap();
        let gone = fake_worker(other.path(), &sample_probe());
        Environment::detect(false).with_worker(&gone).with_user_probe_cache(Some(user.clone())).facts().unwrap();
        assert_eq!(std::fs::read_dir(user.join(PROBE_DIR)).unwrap().count(), 2);
        drop(other);
        let fresh = fake_worker(&t.path().join("user"), &sample_probe());
        Environment::detect(false).with_worker(&fresh).with_user_probe_cache(Some(user.clone())).facts().unwrap();
        let left: Vec<_> = std::fs::read_dir(user.join(PROBE_DIR)).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(left.len(), 2, "the gone worker's entry was pruned: {left:?}");
    }

    #[test]
    fn a_changed_libtorch_file_is_probed_again() {
        let t = tempfile::tempdir().unwrap();
        let lib = t.path().join("libtorch_cpu.so");
        std::fs::write(&lib, "v1").unwrap();
        let worker = fake_worker(t.path(), &Probe { libtorch_path: Some(lib.clone()), ..sample_probe() });
        let fresh = || Environment::detect(false).with_worker(&worker).with_probe_cache(t.path());
        fresh().facts().unwrap();
        fresh().facts().unwrap();
        assert_eq!(probes_run(t.path()), 1);
        std::fs::write(&lib, "version 2").unwrap();
        fresh().facts().unwrap();
        assert_eq!(probes_run(t.path()), 2);
    }

    #[test]
    fn an_unwritable_or_missing_cache_only_costs_probes() {
        let t = tempfile::tempdir().unwrap();
        let worker = fake_worker(t.path(), &sample_probe());
        // `probe` taken by a file: nothing can be written below it.
        let blocked = t.path().join("blocked");
        std::fs::create_dir(&blocked).unwrap();
        std::fs::write(blocked.join(PROBE_DIR), "").unwrap();
        let missing = t.path().join("missing");
        for root in [&blocked, &missing] {
            let env = Environment::detect(false).with_worker(&worker).with_probe_cache(root);
            assert_eq!(env.key_entries(TORCH)["libtorch"], TORCH_VERSION);
        }
        assert!(!missing.exists(), "the probe cache must not create a cache directory");
        assert_eq!(probes_run(t.path()), 2);
    }

    #[test]
    fn a_missing_or_failing_worker_is_an_error_naming_it_and_the_fix() {
        let env = Environment::detect(false).with_worker("/nonexistent/cairn-worker");
        let e = env.facts().unwrap_err().to_string();
        assert!(e.contains("/nonexistent/cairn-worker") && e.contains("make setup"), "{e}");
        assert_eq!(env.key_entries(THREADED), unknown_entries(THREADED));
        assert!(env.key_entries(TORCH).values().all(|v| v == UNKNOWN));

        let t = tempfile::tempdir().unwrap();
        let worker = t.path().join("cairn-worker");
        std::fs::write(&worker, "#!/bin/sh\necho 'libtorch_cpu.so: cannot open shared object file' >&2\nexit 127\n").unwrap();
        std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Environment::detect(false).with_worker(&worker).facts().unwrap_err().to_string();
        assert!(e.contains("--probe` failed") && e.contains("cannot open shared object") && e.contains("make setup"), "{e}");
    }

    #[test]
    fn a_worker_from_another_checkout_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let mut old = sample_probe();
        *old.kinds.get_mut("train").unwrap() += 1;
        let env = Environment::detect(false)
            .with_worker(fake_worker(t.path(), &old))
            .with_probe_cache(t.path())
            .with_worker_kinds(sample_kinds());
        let e = env.facts().unwrap_err().to_string();
        assert!(e.contains("another checkout") && e.contains("train v") && e.contains("make setup"), "{e}");
        assert!(!t.path().join(PROBE_DIR).exists(), "a refused probe is not cached");

        let t = tempfile::tempdir().unwrap();
        let other = Probe { protocol: PROTOCOL_VERSION + 1, ..sample_probe() };
        let e = Environment::detect(false).with_worker(fake_worker(t.path(), &other)).facts().unwrap_err().to_string();
        assert!(e.contains("protocol"), "{e}");
    }
}
