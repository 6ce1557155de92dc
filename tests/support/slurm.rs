//! A real single-node Slurm cluster for one test, on loopback only: its own
//! munge key and `munged` socket, a generated `slurm.conf` and `gres.conf`
//! in a temp dir (state, spool and logs there too), `slurmctld` and
//! `slurmd` started in the foreground as children on free ports and killed
//! when the [`Cluster`] is dropped (or when the test thread dies:
//! `PR_SET_PDEATHSIG`). Ready means `sinfo` reports the node idle, polled,
//! not slept for. Commands for the cluster get `SLURM_CONF` from
//! [`Cluster::env`]. The daemons come from Debian (scripts/setup-slurm.sh,
//! run here when they are missing); where they cannot be had, [`Cluster::start`]
//! fails the test under CI (`CI=true`) and otherwise prints a skip line.

#![allow(dead_code)]

// Every test crate that includes this file declares `mod skip` and `mod
// common` at its root.
use crate::common::free_port;
use crate::skip;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the node offers: more CPUs than this machine has (the tests'
/// jobs mostly sleep), so concurrent jobs of parallel tests still fit.
pub const NODE_CPUS: u32 = 8;
pub const DEF_MEM_PER_CPU_MB: u32 = 256;

pub struct Cluster {
    children: Vec<(String, Child)>,
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
}

const DAEMONS: [&str; 3] = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd"];

/// Whether Slurm and munge are installed (installing them once if not).
fn installed() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        let have = || DAEMONS.iter().all(|d| Path::new(d).exists());
        if !have() {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let _ = Command::new("bash").arg(root.join("scripts/setup-slurm.sh")).stderr(Stdio::inherit()).status();
        }
        have()
    })
}

impl Cluster {
    /// Starts a cluster, or says why not (see the module doc).
    pub fn start(test: &str) -> Option<Cluster> {
        if !installed() {
            skip::missing(test, "Slurm (slurmctld, slurmd, munge) is not installed and scripts/setup-slurm.sh could not install it");
            return None;
        }
        // slurmd and munged want root (SlurmUser=root, jobs as the caller).
        if unsafe { libc::geteuid() } != 0 {
            skip::unavailable(test, "the private Slurm cluster runs its daemons as root, and this test is not root");
            return None;
        }
        for attempt in 0..3 {
            match Self::try_start() {
                Ok(c) => return Some(c),
                Err(why) => eprintln!("{test}: Slurm did not come up (attempt {}): {why}", attempt + 1),
            }
        }
        panic!("{test}: the private Slurm cluster did not start; see above");
    }

    fn try_start() -> Result<Cluster, String> {
        let dir = tempfile::Builder::new().prefix("cairn-slurm-").tempdir().unwrap();
        let d = dir.path();
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let conf = d.join("slurm.conf");
        let mut c = Cluster { children: Vec::new(), conf, dir };
        c.start_munge()?;
        c.write_conf()?;
        let f = c.conf.to_string_lossy().into_owned();
        c.spawn("slurmctld", "/usr/sbin/slurmctld", &["-D", "-f", &f])?;
        c.spawn("slurmd", "/usr/sbin/slurmd", &["-D", "-N", "localhost", "-f", &f])?;
        c.wait_until(Duration::from_secs(60), "the node to be idle", |c| c.node_state().is_some_and(|s| s == "idle"))?;
        Ok(c)
    }

    fn start_munge(&mut self) -> Result<(), String> {
        let m = self.dir.path().join("munge");
        let mut key = vec![0u8; 1024];
        std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key)).map_err(|e| e.to_string())?;
        let key_file = m.join("munge.key");
        std::fs::write(&key_file, key).unwrap();
        set_mode(&key_file, 0o400);
        set_mode(&m, 0o711);
        let arg = |flag: &str, name: &str| format!("--{flag}={}", m.join(name).display());
        let args = [arg("socket", "socket"), arg("key-file", "munge.key"), arg("pid-file", "munged.pid"), arg("seed-file", "seed"), arg("log-file", "munged.log")];
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--foreground", "--force"]);
        self.spawn("munged", "/usr/sbin/munged", &all)?;
        self.wait_until(Duration::from_secs(20), "munged's socket", |c| c.dir.path().join("munge/socket").exists())
    }

    fn write_conf(&self) -> Result<(), String> {
        let d = self.dir.path();
        let p = |s: &str| d.join(s).display().to_string();
        // A character device as the placeholder GPU (what gres.conf
        // expects); a plain file where mknod is refused still schedules.
        let gpu = d.join("gpu0");
        let made = Command::new("mknod").arg(&gpu).args(["c", "1", "3"]).status().is_ok_and(|s| s.success());
        if !made {
            std::fs::write(&gpu, "").map_err(|e| e.to_string())?;
        }
        let mem = NODE_CPUS * 1024;
        let text = format!(
            "# Generated by cairn's tests (tests/support/slurm.rs): one node on loopback.\n\
             ClusterName=cairntest\nSlurmctldHost=localhost(127.0.0.1)\n\
             SlurmctldPort={ctld}\nSlurmdPort={slurmd}\nSlurmUser=root\nSlurmdUser=root\n\
             AuthType=auth/munge\nCredType=cred/munge\nAuthInfo=socket={munge},cred_expire=5\n\
             # A requeued job may start again after cred_expire, not 120 s.\n\
             StateSaveLocation={state}\nSlurmdSpoolDir={spool}\n\
             SlurmctldPidFile={ctld_pid}\nSlurmdPidFile={slurmd_pid}\n\
             SlurmctldLogFile={ctld_log}\nSlurmdLogFile={slurmd_log}\n\
             # No cgroups in a container: track processes by /proc, bind nothing.\n\
             ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nJobAcctGatherType=jobacct_gather/linux\n\
             SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\nDefMemPerCPU={def_mem}\n\
             GresTypes=gpu\nMpiDefault=none\nReturnToService=2\n\
             # The node is what this file says, not what this machine has.\n\
             SlurmdParameters=config_overrides\n\
             # Schedule and reap fast: the tests wait on these.\n\
             SchedulerParameters=sched_interval=1\nMinJobAge=300\nKillWait=2\nOverTimeLimit=0\nInactiveLimit=0\nMessageTimeout=10\n\
             NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} Gres=gpu:1 State=UNKNOWN\n\
             PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
            ctld = free_port(),
            slurmd = free_port(),
            munge = p("munge/socket"),
            state = p("state"),
            spool = p("spool"),
            ctld_pid = p("slurmctld.pid"),
            slurmd_pid = p("slurmd.pid"),
            ctld_log = p("log/slurmctld.log"),
            slurmd_log = p("log/slurmd.log"),
            def_mem = DEF_MEM_PER_CPU_MB,
            cpus = NODE_CPUS,
        );
        std::fs::write(&self.conf, text).map_err(|e| e.to_string())?;
        std::fs::write(d.join("gres.conf"), format!("NodeName=localhost Name=gpu File={}\n", gpu.display())).map_err(|e| e.to_string())
    }

    fn spawn(&mut self, name: &str, program: &str, args: &[&str]) -> Result<(), String> {
        let log = std::fs::File::create(self.dir.path().join(format!("log/{name}.out"))).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args).env("SLURM_CONF", &self.conf).stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        // SAFETY: prctl is async-signal-safe; the daemon dies with this thread.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("{program}: {e}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    fn wait_until(&mut self, limit: Duration, what: &str, ready: impl Fn(&Cluster) -> bool) -> Result<(), String> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if ready(self) {
                return Ok(());
            }
            let exited = self.children.iter_mut().find_map(|(name, child)| child.try_wait().ok().flatten().map(|st| format!("{name} exited ({st})")));
            if let Some(exited) = exited {
                return Err(format!("{exited} while waiting for {what}:\n{}", self.logs()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!("no {what} after {limit:?}:\n{}", self.logs()))
    }

    /// Stops `slurmctld` (SIGTERM: it saves its state), leaves the cluster
    /// without a controller for `down_for`, and starts it again, as an
    /// operator's restart would. Jobs go on running on the node meanwhile.
    pub fn restart_controller(&mut self, down_for: Duration) {
        let i = self.children.iter().position(|(name, _)| name == "slurmctld").expect("slurmctld runs");
        let (_, mut child) = self.children.remove(i);
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
        std::thread::sleep(down_for);
        let f = self.conf.to_string_lossy().into_owned();
        self.spawn("slurmctld", "/usr/sbin/slurmctld", &["-D", "-f", &f]).unwrap();
    }

    /// `sinfo`'s word for the node (idle, mixed, allocated, down...).
    pub fn node_state(&self) -> Option<String> {
        let out = self.command("sinfo").args(["--noheader", "--format=%T"]).output().ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    /// A command talking to this cluster.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// The environment a process needs to use this cluster.
    pub fn env(&self) -> [(&'static str, &Path); 1] {
        [("SLURM_CONF", self.conf.as_path())]
    }

    /// The tail of every daemon log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for f in ["log/munged.out", "munge/munged.log", "log/slurmctld.out", "log/slurmctld.log", "log/slurmd.out", "log/slurmd.log"] {
            let text = std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {f}\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n"));
        }
        out
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs run under slurmstepd, which is slurmd's child, not ours:
        // end them through the controller before the daemons go.
        if self.command("scancel").args(["--full", "--signal=KILL", "--user=root"]).status().is_ok_and(|s| s.success()) {
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) && self.active_jobs() > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // munged was started first and goes last.
        for (_, child) in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// Waits until a job whose name ends with `suffix` (`-<stage>`) runs;
    /// its id.
    pub fn running_job(&self, suffix: &str) -> String {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            let out = self.command("squeue").args(["--noheader", "--states=RUNNING", "--format=%i|%j"]).output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some((id, _)) = text.lines().filter_map(|l| l.split_once('|')).find(|(_, name)| name.starts_with("cairn-") && name.ends_with(suffix)) {
                return id.to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no job `*{suffix}` ever ran:\n{}", self.logs());
    }

    /// Jobs queued, running or being cleaned up.
    pub fn active_jobs(&self) -> usize {
        let out = self.command("squeue").args(["--noheader", "--format=%i"]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).lines().count()).unwrap_or(0)
    }
}

/// The overhead benchmarks' pipeline: `head` (the `[pipeline]` and
/// executor tables), then a chain of five one-line `command` stages on
/// executor `cluster`, and a `here` profile that moves them to executor
/// `here`.
pub fn overhead_chain(head: &str) -> String {
    let mut text = head.to_string();
    for i in 0..5 {
        let input = if i == 0 { String::new() } else { format!("inputs = {{ x = \"s{}.y\" }}\n", i - 1) };
        let cmd = if i == 0 { "echo 0 > {out.y}".to_string() } else { format!("cat {{in.x}} > {{out.y}}; echo {i} >> {{out.y}}") };
        text += &format!("[stages.s{i}]\nkind = \"command\"\ncmd = \"{cmd}\"\n{input}outputs = {{ y = \"y.txt\" }}\nexecutor = \"cluster\"\n");
    }
    text += "[profiles.here]\n";
    for i in 0..5 {
        text += &format!("\"s{i}.executor\" = \"here\"\n");
    }
    text
}

/// The median of five timings of `run(profile)` here (`Some("here")`) and
/// on the cluster (`None`), printed with the overhead per stage.
pub fn report_overhead(what: &str, mut run: impl FnMut(Option<&str>) -> f64) {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let here = median((0..5).map(|_| run(Some("here"))).collect());
    let slurm = median((0..5).map(|_| run(None)).collect());
    eprintln!("5-stage chain{what}, median of 5: here {here:.2} s, on Slurm {slurm:.2} s: {:.2} s more per stage", (slurm - here) / 5.0);
}
