//! What the kernel says about memory, for messages about a stage that ran
//! short of it: the most this process and its children may use (the
//! machine's `MemTotal`, or less where the cgroup it runs in, or one of
//! that cgroup's parents, sets a limit: v2 `memory.max`, v1
//! `memory.limit_in_bytes`, as containers and CI runners do), and how much
//! of the last 10 seconds some task spent stalled waiting for memory
//! (pressure stall information: the cgroup's `memory.pressure` under v2,
//! else the machine's `/proc/pressure/memory`). A machine that short of
//! memory is reclaiming or swapping: work goes on, slower and slower,
//! rather than failing, so a log must say so, and name the cgroup's bound
//! where one binds before the machine's memory: its limit, or v2's
//! `memory.high`, above which the kernel throttles the cgroup's tasks
//! without killing any. And how many processes the kernel's out-of-memory
//! killer has killed ([`oom_kills`]), so that a stage's SIGKILL can be told
//! to be its work or not. Everything here is read when asked and is `None`
//! where the kernel does not offer it.

use std::path::{Path, PathBuf};

/// A memory limit and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    /// `the machine's memory`, or `its cgroup's limit`.
    pub source: &'static str,
}

/// Stall shares at or above this (percent of the last 10 s with some task
/// waiting for memory) mean a machine short of memory; an idle or busy one
/// with room reads 0-1.
pub const PRESSURE_SHOWN: f64 = 10.0;

/// The limit this process lives under (see the module docs).
pub fn limit() -> Option<Limit> {
    let machine = meminfo_total(&std::fs::read_to_string("/proc/meminfo").ok()?);
    let cgroup = in_own_cgroup(cgroup_limit);
    match (machine, cgroup) {
        (Some(m), Some(c)) if c < m => Some(Limit { bytes: c, source: "its cgroup's limit" }),
        (Some(m), _) => Some(Limit { bytes: m, source: "the machine's memory" }),
        (None, c) => c.map(|bytes| Limit { bytes, source: "its cgroup's limit" }),
    }
}

/// The percent of the last 10 s in which some task waited for memory.
pub fn pressure() -> Option<f64> {
    let own = in_own_cgroup(unified_dir);
    let text = own
        .and_then(|d| std::fs::read_to_string(d.join("memory.pressure")).ok())
        .or_else(|| std::fs::read_to_string("/proc/pressure/memory").ok())?;
    some_avg10(&text)
}

/// A heartbeat's note on memory pressure, when there is enough to matter.
pub fn pressure_note() -> Option<String> {
    let p = pressure().filter(|p| *p >= PRESSURE_SHOWN)?;
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| meminfo_total(&m));
    let bound = in_own_cgroup(cgroup_bound);
    Some(note(p, binding(bound, machine)))
}

/// `bound` where it binds before the machine's memory, `machine` bytes.
fn binding(bound: Option<Bound>, machine: Option<u64>) -> Option<Bound> {
    bound.filter(|b| machine.is_none_or(|m| b.bytes() < m))
}

/// What a cgroup sets that makes its tasks short of memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bound {
    /// A limit (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    Limit(u64),
    /// v2 `memory.high`, below the limit.
    High(u64),
}

impl Bound {
    fn bytes(self) -> u64 {
        match self {
            Bound::Limit(b) | Bound::High(b) => b,
        }
    }
}

fn note(pressure: f64, bound: Option<Bound>) -> String {
    let under = match bound {
        Some(Bound::Limit(b)) => format!(" under its cgroup's limit of {}", show_bytes(b)),
        Some(Bound::High(b)) => format!(" above its cgroup's `memory.high` of {}, where the kernel throttles it", show_bytes(b)),
        None => String::new(),
    };
    format!("short of memory{under}: tasks waited for it {pressure:.0}% of the last 10 s, so work slows (reclaiming or swapping)")
}

/// The tighter of the cgroup's limit and its `memory.high`.
fn cgroup_bound(proc_cgroup: &str, sys: &Path) -> Option<Bound> {
    let high = unified_dir(proc_cgroup, sys).and_then(|dir| smallest(ancestors(&dir, sys).map(|d| d.join("memory.high"))));
    match (cgroup_limit(proc_cgroup, sys), high) {
        (Some(l), Some(h)) if h < l => Some(Bound::High(h)),
        (None, Some(h)) => Some(Bound::High(h)),
        (l, _) => l.map(Bound::Limit),
    }
}

/// The kernel's count of processes its out-of-memory killer has killed
/// (kernel 4.13 and later): in this process's cgroup and the cgroups under
/// it (v2 `memory.events`, v1 `memory.oom_control`; none for the root
/// cgroup, which the kernel does not count), or where that is not kept, on
/// the whole machine (`/proc/vmstat`). The kernel counts a kill before it
/// sends the SIGKILL, so counts taken before a stage starts and after it
/// ends tell whether the killer struck in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomKills {
    pub cgroup: Option<u64>,
    pub machine: Option<u64>,
}

/// What the out-of-memory killer did between two [`OomKills`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OomSince {
    /// It killed this many processes in this process's cgroup: a stage's
    /// process, which shares the engine's cgroup, among them if it died of
    /// SIGKILL then.
    InCgroup(u64),
    /// It killed this many processes on the machine (where the cgroup's
    /// count cannot be read).
    OnMachine(u64),
    /// It killed none: in the cgroup where that count is read, else on the
    /// machine. `where_` names the count.
    Nothing { where_: &'static str },
    /// Neither count can be read.
    Unknown,
}

/// Now's [`OomKills`]: the cgroup's count where the kernel keeps one (its
/// file found once per process: a process does not change cgroups under
/// cairn), else the machine's. One small file a call, since every stage
/// takes two.
pub fn oom_kills() -> OomKills {
    static CGROUP_FILE: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let file = CGROUP_FILE.get_or_init(|| in_own_cgroup(cgroup_oom_file));
    let read = |f: &Path| field(&std::fs::read_to_string(f).ok()?, "oom_kill");
    let cgroup = file.as_deref().and_then(read);
    let machine = if cgroup.is_none() { read(Path::new("/proc/vmstat")) } else { None };
    OomKills { cgroup, machine }
}

impl OomKills {
    /// What the killer did from `before` to `self`. The cgroup's count
    /// rules where both ends have it: a kill elsewhere on the machine was
    /// not of a stage in this cgroup.
    pub fn since(&self, before: &OomKills) -> OomSince {
        let delta = |now: Option<u64>, then: Option<u64>| Some(now?.saturating_sub(then?));
        match (delta(self.cgroup, before.cgroup), delta(self.machine, before.machine)) {
            (Some(0), _) => OomSince::Nothing { where_: "in its cgroup" },
            (Some(n), _) => OomSince::InCgroup(n),
            (None, Some(0)) => OomSince::Nothing { where_: "on this machine" },
            (None, Some(n)) => OomSince::OnMachine(n),
            (None, None) => OomSince::Unknown,
        }
    }
}

/// The file where the kernel counts out-of-memory kills for the cgroup
/// named in `proc_cgroup` under `sys`; `None` in the root cgroup, which it
/// does not count, or where no such file exists (kernels before 4.13).
fn cgroup_oom_file(proc_cgroup: &str, sys: &Path) -> Option<PathBuf> {
    let v2 = unified_dir(proc_cgroup, sys).filter(|d| d != sys && d != &sys.join("unified"));
    let v1 = v1_memory_path(proc_cgroup).filter(|rel| !rel.is_empty());
    let file = match (v2, v1) {
        (_, Some(rel)) => sys.join("memory").join(rel).join("memory.oom_control"),
        (Some(dir), None) => dir.join("memory.events"),
        (None, None) => return None,
    };
    field(&std::fs::read_to_string(&file).ok()?, "oom_kill").map(|_| file)
}

/// `f` of this process's cgroups (the text of `/proc/self/cgroup`) under
/// the cgroup file systems' mount point.
fn in_own_cgroup<T>(f: impl FnOnce(&str, &Path) -> Option<T>) -> Option<T> {
    f(&std::fs::read_to_string("/proc/self/cgroup").ok()?, Path::new("/sys/fs/cgroup"))
}

/// The number after `name` on its own line of a kernel `key value` file.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Bytes as `1.9 GiB` or `700 MiB`.
pub fn show_bytes(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

fn meminfo_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The smallest limit set on the cgroup named in `proc_cgroup` (the text
/// of `/proc/self/cgroup`) or on any of its parents, under `sys` (where
/// the cgroup file systems are mounted). A value this large or `max` is
/// no limit.
fn cgroup_limit(proc_cgroup: &str, sys: &Path) -> Option<u64> {
    let mut files = Vec::new();
    if let Some(dir) = unified_dir(proc_cgroup, sys) {
        files.extend(ancestors(&dir, sys).map(|d| d.join("memory.max")));
    }
    if let Some(rel) = v1_memory_path(proc_cgroup) {
        let root = sys.join("memory");
        files.extend(ancestors(&root.join(rel), &root).map(|d| d.join("memory.limit_in_bytes")));
    }
    smallest(files.into_iter())
}

/// The smallest byte count in `files`; `max`, a value this large, or a
/// file that is missing is none.
fn smallest(files: impl Iterator<Item = PathBuf>) -> Option<u64> {
    const UNLIMITED: u64 = 1 << 62;
    files.filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse::<u64>().ok()).filter(|b| *b < UNLIMITED).min()
}

/// The v2 (unified) cgroup directory of this process, if one is mounted:
/// at `sys` itself, or at `sys/unified` beside v1 controllers.
fn unified_dir(proc_cgroup: &str, sys: &Path) -> Option<PathBuf> {
    let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/');
    [sys.to_path_buf(), sys.join("unified")].into_iter().find(|m| m.join("cgroup.controllers").is_file()).map(|m| m.join(rel))
}

/// The path of this process's v1 memory cgroup (`N:memory:/path`, the
/// controller possibly listed with others), relative to its hierarchy.
fn v1_memory_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers.split(',').any(|c| c == "memory").then(|| path.trim_start_matches('/'))
    })
}

/// `dir` and each of its parents up to and including `root`.
fn ancestors<'a>(dir: &'a Path, root: &'a Path) -> impl Iterator<Item = &'a Path> {
    dir.ancestors().take_while(move |d| d.starts_with(root))
}

/// `avg10` of the `some` line of a pressure file.
fn some_avg10(text: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace().find_map(|f| f.strip_prefix("avg10="))?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn a_v1_limit_is_the_smallest_of_the_cgroup_and_its_parents() {
        let sys = tempfile::tempdir().unwrap();
        let mem = sys.path().join("memory");
        write(&mem.join("memory.limit_in_bytes"), "9223372036854771712\n");
        write(&mem.join("ci/memory.limit_in_bytes"), "734003200\n");
        write(&mem.join("ci/job/memory.limit_in_bytes"), "9223372036854771712\n");
        let proc = "5:cpu,cpuacct:/\n4:memory:/ci/job\n0::/\n";
        assert_eq!(cgroup_limit(proc, sys.path()), Some(734_003_200));
        assert_eq!(cgroup_limit("4:memory:/\n", sys.path()), None, "the root's huge value is no limit");
    }

    #[test]
    fn a_v2_limit_reads_memory_max_and_max_is_none() {
        let sys = tempfile::tempdir().unwrap();
        write(&sys.path().join("cgroup.controllers"), "cpu memory\n");
        write(&sys.path().join("user.slice/memory.max"), "2147483648\n");
        write(&sys.path().join("user.slice/run.scope/memory.max"), "max\n");
        assert_eq!(cgroup_limit("0::/user.slice/run.scope\n", sys.path()), Some(2 << 30));
        assert_eq!(cgroup_limit("0::/other\n", sys.path()), None);
    }

    #[test]
    fn the_note_names_the_cgroups_tighter_bound() {
        let sys = tempfile::tempdir().unwrap();
        write(&sys.path().join("cgroup.controllers"), "cpu memory\n");
        write(&sys.path().join("ci/memory.max"), "1073741824\n");
        write(&sys.path().join("ci/memory.high"), "max\n");
        write(&sys.path().join("ci/job/memory.max"), "max\n");
        write(&sys.path().join("ci/job/memory.high"), "41943040\n");
        assert_eq!(cgroup_bound("0::/ci/job\n", sys.path()), Some(Bound::High(40 << 20)));
        assert_eq!(cgroup_bound("0::/ci\n", sys.path()), Some(Bound::Limit(1 << 30)));
        write(&sys.path().join("ci/job/memory.high"), "2147483648\n");
        assert_eq!(cgroup_bound("0::/ci/job\n", sys.path()), Some(Bound::Limit(1 << 30)), "a memory.high above the limit never acts");
        assert_eq!(cgroup_bound("0::/\n", sys.path()), None);
        assert_eq!(binding(Some(Bound::Limit(1 << 30)), Some(24 << 30)), Some(Bound::Limit(1 << 30)));
        assert_eq!(binding(Some(Bound::Limit(64 << 30)), Some(24 << 30)), None, "a limit above the machine's memory never binds");
        assert_eq!(
            note(94.4, Some(Bound::High(40 << 20))),
            "short of memory above its cgroup's `memory.high` of 40 MiB, where the kernel throttles it: tasks waited for it 94% of the last 10 s, so work slows (reclaiming or swapping)"
        );
        assert!(note(12.0, Some(Bound::Limit(1 << 30))).starts_with("short of memory under its cgroup's limit of 1.0 GiB: tasks waited for it 12%"));
        assert!(note(12.0, None).starts_with("short of memory: tasks waited"));
    }

    #[test]
    fn pressure_and_meminfo_parse_the_kernels_text() {
        let psi = "some avg10=36.65 avg60=17.82 avg300=13.62 total=95488561\nfull avg10=33.19 avg60=16.13 avg300=12.51 total=88403806\n";
        assert_eq!(some_avg10(psi), Some(36.65));
        assert_eq!(meminfo_total("MemTotal:       24683772 kB\nMemFree: 1 kB\n"), Some(24_683_772 * 1024));
        assert_eq!(show_bytes(700 << 20), "700 MiB");
        assert_eq!(show_bytes(2 << 30), "2.0 GiB");
    }

    #[test]
    fn oom_kills_are_read_from_the_cgroup_and_the_machine() {
        let sys = tempfile::tempdir().unwrap();
        write(&sys.path().join("memory/ci/job/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n");
        let kills = |proc: &str| cgroup_oom_file(proc, sys.path()).and_then(|f| field(&std::fs::read_to_string(f).unwrap(), "oom_kill"));
        assert_eq!(kills("4:memory:/ci/job\n0::/\n"), Some(3));
        assert_eq!(kills("4:memory:/\n0::/\n"), None, "the root cgroup counts nothing");
        write(&sys.path().join("memory/old/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\n");
        assert_eq!(kills("4:memory:/old\n"), None, "a kernel before 4.13 counts nothing");
        write(&sys.path().join("cgroup.controllers"), "memory\n");
        write(&sys.path().join("user.slice/memory.events"), "low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(kills("0::/user.slice\n"), Some(1), "`oom_kill`, not `oom_group_kill`");
        assert_eq!(kills("0::/\n"), None);
        assert_eq!(field("pgfault 10\noom_kill 4\n", "oom_kill"), Some(4));
    }

    #[test]
    fn the_cgroups_count_rules_over_the_machines() {
        let at = |cgroup, machine| OomKills { cgroup, machine };
        assert_eq!(at(Some(2), Some(9)).since(&at(Some(1), Some(5))), OomSince::InCgroup(1));
        assert_eq!(at(Some(1), Some(9)).since(&at(Some(1), Some(5))), OomSince::Nothing { where_: "in its cgroup" });
        assert_eq!(at(None, Some(9)).since(&at(None, Some(5))), OomSince::OnMachine(4));
        assert_eq!(at(None, Some(5)).since(&at(None, Some(5))), OomSince::Nothing { where_: "on this machine" });
        assert_eq!(at(None, None).since(&at(None, None)), OomSince::Unknown);
        let now = oom_kills();
        assert_eq!(now.since(&now) == OomSince::Unknown, now == OomKills::default());
    }

    #[test]
    fn this_machines_limit_is_read() {
        let l = limit().expect("/proc/meminfo is readable on Linux");
        assert!(l.bytes > 64 << 20, "{l:?}");
    }
}
