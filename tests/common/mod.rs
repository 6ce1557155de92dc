//! Shared helpers for the engine's end-to-end tests: a throwaway project
//! directory and a way to run the real `cairn` binary in it. Only the
//! `command` kind is used, so these tests need no libtorch.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub struct Project {
    pub dir: tempfile::TempDir,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
    /// The status word printed for a stage in `cairn run` output.
    pub fn outcome(&self, stage: &str) -> Option<String> {
        self.stderr.lines().find_map(|l| {
            let mut parts = l.split_whitespace();
            let first = parts.next()?;
            let (word, name) = if first == "would" { ("would run".to_string(), { parts.next(); parts.next()? }) } else { (first.to_string(), parts.next()?) };
            (name == stage && matches!(word.as_str(), "ran" | "cached" | "FAILED" | "skipped" | "would run" | "interrupted")).then_some(word)
        })
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// stage → (status, key) from `cairn run --json`.
pub fn stages(r: &Run) -> BTreeMap<String, (String, String)> {
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("json ({e}): {}", r.all()));
    v["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap().to_string(), (s["status"].as_str().unwrap().to_string(), s["key"].as_str().unwrap_or("").to_string())))
        .collect()
}

/// A port on 127.0.0.1 that was free a moment ago (for a test server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// stage → status from `cairn run --json`.
pub fn statuses(r: &Run) -> BTreeMap<String, String> {
    stages(r).into_iter().map(|(stage, (status, _))| (stage, status)).collect()
}

/// The bytes of `artifacts/<rel>` in `p`.
pub fn artifact(p: &Project, rel: &str) -> Vec<u8> {
    std::fs::read(p.path().join("artifacts").join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Asserts that `p`'s cache holds no entry (after a failed run).
pub fn nothing_cached(p: &Project) {
    let manifests = std::fs::read_dir(p.cache().join("manifests")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(manifests, 0, "a failed job left a cache entry");
}

impl Project {
    pub fn new(pipeline: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pipeline.toml"), pipeline).unwrap();
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    pub fn read_artifact(&self, stage: &str, file: &str) -> String {
        std::fs::read_to_string(self.path().join("artifacts").join(stage).join(file)).unwrap_or_default()
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
        c.current_dir(self.path()).args(args).env_remove("CAIRN_CACHE_DIR").env("CUDA_VISIBLE_DEVICES", "");
        c
    }

    pub fn cairn(&self, args: &[&str]) -> Run {
        self.cmd(args).output().expect("cairn runs").into()
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join("cache")
    }
}

/// Polls `cond` every 20 ms until it holds; fails the test after a minute.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lets a test hold a run mid-stage: a stage whose command includes
/// [`Gate::hold`] says when it has started and waits until the test calls
/// [`Gate::open`], so nothing depends on how fast this machine is.
pub struct Gate {
    dir: tempfile::TempDir,
}

impl Gate {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    /// A file of the gate's own directory (for a test's other signals).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Shell that says it started and waits for the gate to open.
    pub fn hold(&self) -> String {
        format!("touch {}; while [ ! -e {} ]; do sleep 0.02; done", self.path("started").display(), self.path("open").display())
    }

    pub fn wait_started(&self) {
        wait_until("the held stage to start", || self.path("started").exists());
    }

    pub fn open(&self) {
        std::fs::write(self.path("open"), "").unwrap();
    }

    /// Starts `cairn ARGS` in `p` and returns once it says it waits for
    /// the cache, with the file its stderr goes to.
    pub fn spawn_waiting(&self, p: &Project, args: &[&str]) -> (std::process::Child, PathBuf) {
        let log = self.path("waiter.stderr");
        let child = p.cmd(args).stderr(std::fs::File::create(&log).unwrap()).spawn().unwrap();
        wait_until("the run to say it waits", || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("waiting for another cairn process")));
        (child, log)
    }
}
