//! A memory cgroup with a limit, for tests of the kernel's out-of-memory
//! killer, shared by every crate's tests (included with `#[path]`). Making
//! one needs root and a writable cgroup file system (v1's `memory`
//! hierarchy, or v2 with the memory controller enabled at its root); where
//! either is missing, [`MemCgroup::create`] gives `None` and the test skips
//! visibly (`skip::unavailable`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A cgroup under the root of the memory hierarchy, removed on drop.
pub struct MemCgroup {
    dir: PathBuf,
}

impl MemCgroup {
    /// A new cgroup `name` whose processes may use at most `limit` bytes
    /// and no swap; `None` where one cannot be made here.
    pub fn create(name: &str, limit: u64) -> Option<MemCgroup> {
        let sys = Path::new("/sys/fs/cgroup");
        let v1 = sys.join("memory");
        let (dir, files) = if v1.join("memory.limit_in_bytes").is_file() {
            (v1.join(name), [("memory.limit_in_bytes", limit.to_string()), ("memory.memsw.limit_in_bytes", limit.to_string())])
        } else if std::fs::read_to_string(sys.join("cgroup.subtree_control")).ok()?.split_whitespace().any(|c| c == "memory") {
            (sys.join(name), [("memory.max", limit.to_string()), ("memory.swap.max", "0".to_string())])
        } else {
            return None;
        };
        std::fs::create_dir(&dir).ok()?;
        let cgroup = MemCgroup { dir };
        // The limit must hold; the swap limit exists only where the kernel
        // accounts swap, and without swap it does not matter.
        std::fs::write(cgroup.dir.join(files[0].0), &files[0].1).ok()?;
        let _ = std::fs::write(cgroup.dir.join(files[1].0), &files[1].1);
        // A process must be able to join it (v2 refuses one where the
        // parent's rules forbid it): a `true` that joins first tells.
        cgroup.command("true").status().ok()?.success().then_some(cgroup)
    }

    /// `program args…` run inside the cgroup: `sh` joins it and execs.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(r#"echo $$ > "$0" && exec "$@""#).arg(self.dir.join("cgroup.procs")).arg(program);
        c
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // A cgroup is removed once its last process is gone; a killed one
        // may take a moment to be reaped.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
