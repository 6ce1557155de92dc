//! The cache never serves a wrong result and never touches what is not its
//! own. One regression test per way it once did (issue "The cache never
//! lies"), each through the `cairn` binary.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Project;

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every object file in the store.
fn objects(p: &Project) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for shard in fs::read_dir(p.cache().join("objects")).unwrap().flatten() {
        out.extend(fs::read_dir(shard.path()).unwrap().flatten().map(|f| f.path()));
    }
    out
}

fn object_with(p: &Project, bytes: &[u8]) -> PathBuf {
    objects(p).into_iter().find(|o| fs::read(o).unwrap() == bytes).expect("an object with these bytes")
}

/// Overwrites a file in place with same-size bytes, as root can despite 0444.
fn tamper(path: &Path, bytes: &[u8]) {
    let mut perms = fs::metadata(path).unwrap().permissions();
    perms.set_mode(0o644);
    fs::set_permissions(path, perms).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Sets a file's mtime far in the past, so its stat-cache entry is trusted.
fn age(path: &Path) {
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options().write(true).open(path).unwrap().set_modified(old).unwrap();
}

const CHAIN: &str = r#"
[stages.a]
kind = "command"
cmd = "echo hello > {out.text}"
outputs = { text = "a.txt" }

[stages.b]
kind = "command"
cmd = "cat {in.src} > {out.text}; echo world >> {out.text}"
inputs = { src = "a.text" }
outputs = { text = "b.txt" }
"#;

#[test]
fn item1_directory_inputs_hash_what_their_symlinks_point_to() {
    let spec = |snap: &str| {
        format!(
            "[stages.read]\nkind = \"command\"\ncmd = \"cat {{in.snap}}/model.bin > {{out.o}}\"\ninputs = {{ snap = {{ file = \"{snap}\" }} }}\noutputs = {{ o = \"o.txt\" }}\n"
        )
    };
    let p = Project::new(&spec("snapA"));
    p.write("blobs/one", "weights one\n");
    p.write("blobs/two", "weights two\n");
    p.write("blobs/three", "weights three\n");
    for (snap, blob) in [("snapA", "one"), ("snapB", "two")] {
        fs::create_dir(p.path().join(snap)).unwrap();
        symlink(p.path().join("blobs").join(blob), p.path().join(snap).join("model.bin")).unwrap();
    }
    assert_eq!(p.cairn(&["run"]).code, 0);
    assert_eq!(p.read_artifact("read", "o.txt"), "weights one\n");
    p.write("pipeline.toml", &spec("snapB"));
    let status = p.cairn(&["status"]);
    assert!(status.stdout.contains("stale"), "a snapshot of other blobs is other content: {}", status.all());
    let r = p.cairn(&["run"]);
    assert_eq!(r.outcome("read").as_deref(), Some("ran"), "{}", r.all());
    assert_eq!(p.read_artifact("read", "o.txt"), "weights two\n");
    // Re-pointing a link inside the same folder is seen too.
    fs::remove_file(p.path().join("snapB/model.bin")).unwrap();
    symlink(p.path().join("blobs/three"), p.path().join("snapB/model.bin")).unwrap();
    let r = p.cairn(&["run"]);
    assert_eq!(r.outcome("read").as_deref(), Some("ran"), "{}", r.all());
    assert_eq!(p.read_artifact("read", "o.txt"), "weights three\n");
}

#[test]
fn item1_dangling_links_in_a_directory_input_are_named() {
    let p = Project::new("[stages.read]\nkind = \"command\"\ncmd = \"ls {in.snap} > {out.o}\"\ninputs = { snap = { file = \"snap\" } }\noutputs = { o = \"o.txt\" }\n");
    fs::create_dir(p.path().join("snap")).unwrap();
    symlink(p.path().join("missing-blob"), p.path().join("snap/model.bin")).unwrap();
    let r = p.cairn(&["run"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("model.bin") && r.stderr.contains("does not exist"), "{}", r.all());
}

#[test]
fn item2_an_input_edited_while_its_stage_runs_is_not_cached() {
    let marks = tempfile::tempdir().unwrap();
    let (mark, go) = (marks.path().join("started"), marks.path().join("go"));
    // The stage reads its input only once the test has edited it: no
    // assumption about how long anything takes.
    let p = Project::new(&format!(
        "[stages.slow]\nkind = \"command\"\ncmd = \"touch {}; while [ ! -e {} ]; do sleep 0.02; done; cat {{in.x}} > {{out.o}}\"\ninputs = {{ x = {{ file = \"x.txt\" }} }}\noutputs = {{ o = \"o.txt\" }}\n",
        mark.display(),
        go.display()
    ));
    p.write("x.txt", "original\n");
    let run = p.cmd(&["run"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_until("the stage to start", || mark.exists());
    p.write("x.txt", "EDITED!!\n");
    fs::write(&go, "").unwrap();
    let out = run.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("changed while the stage ran"), "{stderr}");
    p.write("x.txt", "original\n");
    let r = p.cairn(&["run"]);
    assert_eq!(r.outcome("slow").as_deref(), Some("ran"), "nothing was cached for the original: {}", r.all());
    assert_eq!(p.read_artifact("slow", "o.txt"), "original\n");
}

#[test]
fn item3_symlink_and_hard_link_outputs_are_copied_and_the_users_file_untouched() {
    for how in ["ln -s", "ln"] {
        let p = Project::new("");
        let victim = p.path().join("mine.txt");
        p.write("pipeline.toml", &format!("[stages.l]\nkind = \"command\"\ncmd = \"{how} {} {{out.o}}\"\noutputs = {{ o = \"o.txt\" }}\n", victim.display()));
        p.write("mine.txt", "my notes\n");
        let mode_before = fs::metadata(&victim).unwrap().permissions().mode();
        let r = p.cairn(&["run"]);
        assert_eq!(r.code, 0, "{how}: {}", r.all());
        assert_eq!(fs::metadata(&victim).unwrap().permissions().mode(), mode_before, "{how}: the user's file keeps its mode");
        let object = object_with(&p, b"my notes\n");
        let (o, v) = (fs::symlink_metadata(&object).unwrap(), fs::metadata(&victim).unwrap());
        assert!(o.is_file(), "{how}: the object is a regular file");
        assert_ne!(o.ino(), v.ino(), "{how}: the object is a copy, not the user's file");
        // Editing the user's file changes nothing in the cache.
        p.write("mine.txt", "my notes, edited\n");
        assert_eq!(p.cairn(&["cache", "verify"]).code, 0, "{how}");
        assert_eq!(fs::read(&object).unwrap(), b"my notes\n");
    }
}

#[test]
fn item3_a_dangling_symlink_output_is_refused_clearly() {
    let p = Project::new("[stages.l]\nkind = \"command\"\ncmd = \"ln -s /nonexistent/target {out.o}\"\noutputs = { o = \"o.txt\" }\n");
    let r = p.cairn(&["run"]);
    assert_eq!(r.outcome("l").as_deref(), Some("FAILED"), "{}", r.all());
    assert!(r.stderr.contains("symbolic link") && r.stderr.contains("/nonexistent/target"), "{}", r.all());
}

#[test]
fn item4_a_stage_that_writes_its_input_is_not_cached_and_the_damage_is_undone() {
    let p = Project::new(
        r#"
[stages.a]
kind = "command"
cmd = "echo hello > {out.text}"
outputs = { text = "a.txt" }

[stages.b]
kind = "command"
cmd = "sed -i s/hello/HACKED/ {in.src}; cat {in.src} > {out.text}"
inputs = { src = "a.text" }
outputs = { text = "b.txt" }
"#,
    );
    let r = p.cairn(&["run"]);
    assert_eq!(r.outcome("b").as_deref(), Some("FAILED"), "{}", r.all());
    assert!(r.stderr.contains("input `src`") && r.stderr.contains("damaged"), "{}", r.all());
    assert_eq!(p.cairn(&["cache", "verify"]).code, 0, "the damaged object was removed");
    let status = p.cairn(&["status"]);
    assert!(!status.stdout.contains("fresh      b"), "{}", status.stdout);
    assert!(!status.stdout.contains("fresh      a"), "a's damaged output is not served: {}", status.stdout);
}

#[test]
fn item4_an_edit_through_artifacts_is_detected_and_repaired() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let artifact = p.path().join("artifacts/a/text.txt");
    tamper(&artifact, b"HELLO\n");
    let status = p.cairn(&["status"]);
    assert!(status.stderr.contains("damaged"), "{}", status.all());
    assert!(!status.stdout.contains("fresh      a"), "{}", status.stdout);
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.outcome("a").as_deref(), Some("ran"), "{}", r.all());
    assert!(!r.all().contains("--force"), "an automatic re-run is not labelled --force: {}", r.all());
    assert_eq!(r.outcome("b").as_deref(), Some("cached"), "same bytes again: early cutoff: {}", r.all());
    assert_eq!(p.read_artifact("a", "text.txt"), "hello\n");
    assert_eq!(p.cairn(&["cache", "verify"]).code, 0);
}

#[test]
fn item5_a_damaged_object_is_replaced_by_a_forced_rerun_and_verify_reports_it() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let object = object_with(&p, b"hello\n");
    tamper(&object, b"HELLO\n");
    // verify reads what it compares and names the damaged upstream object,
    // rather than blaming the downstream stage.
    let v = p.cairn(&["verify"]);
    assert_eq!(v.code, 1, "{}", v.all());
    assert!(v.all().contains("damaged"), "{}", v.all());
    assert!(!v.all().contains("DIFFERS"), "{}", v.all());
    let r = p.cairn(&["run", "--force", "a"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(fs::read(&object).unwrap(), b"hello\n", "the damaged object was replaced");
    assert_eq!(p.cairn(&["cache", "verify"]).code, 0);
    let v = p.cairn(&["verify"]);
    assert_eq!(v.code, 0, "{}", v.all());
    assert!(v.stdout.contains("identical  a") && v.stdout.contains("identical  b"), "{}", v.all());
}

#[test]
fn item5_a_directory_in_place_of_an_object_is_named_with_its_fix() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let object = object_with(&p, b"hello\n");
    fs::remove_file(&object).unwrap();
    fs::create_dir_all(object.join("inside")).unwrap();
    let name = object.file_name().unwrap().to_str().unwrap();
    for args in [&["status"][..], &["run"][..]] {
        let r = p.cairn(args);
        assert_eq!(r.code, 3, "{args:?}: {}", r.all());
        let named = r.stderr.contains(&format!("{name} should be a cached object (a regular file) but is a directory or a special file"));
        assert!(named && r.stderr.contains("rm -r "), "{args:?}: {}", r.all());
    }
    fs::remove_dir_all(&object).unwrap();
    let r = p.cairn(&["run"]);
    assert_eq!((r.code, r.outcome("a").as_deref()), (0, Some("ran")), "{}", r.all());
}

#[test]
fn item5_verify_names_a_damaged_input_object_that_status_cannot_see() {
    // Damage that leaves the stat as it was (bit rot) is found only by
    // reading: simulate it by re-recording the damaged file's stat.
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let object = object_with(&p, b"hello\n");
    tamper(&object, b"HELLO\n");
    let stat = p.cache().join("statcache.json");
    let text = fs::read_to_string(&stat).unwrap();
    let m = fs::metadata(&object).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let entry = &mut doc["entries"][object.to_str().unwrap()];
    let ctime_ns = m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128;
    entry["stat"]["mtime_ns"] = serde_json::json!(m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128);
    entry["stat"]["ctime_ns"] = serde_json::json!(ctime_ns);
    entry["stat"]["ino"] = serde_json::json!(m.ino());
    entry["hashed_at_ns"] = serde_json::json!(ctime_ns + 10_000_000_000);
    fs::write(&stat, doc.to_string()).unwrap();
    let v = p.cairn(&["verify", "b"]);
    assert_eq!(v.code, 1, "{}", v.all());
    assert!(v.stdout.contains("DAMAGED") && v.stdout.contains("a.text"), "names the upstream object: {}", v.all());
}

#[test]
fn item6_a_same_size_edit_with_the_mtime_put_back_is_seen() {
    let p = Project::new("[stages.c]\nkind = \"command\"\ncmd = \"cat {in.x} > {out.o}\"\ninputs = { x = { file = \"x.txt\" } }\noutputs = { o = \"o.txt\" }\n");
    p.write("x.txt", "aaaa\n");
    age(&p.path().join("x.txt"));
    assert_eq!(p.cairn(&["run"]).code, 0);
    assert_eq!(p.cairn(&["run"]).outcome("c").as_deref(), Some("cached"));
    p.write("x.txt", "bbbb\n");
    age(&p.path().join("x.txt"));
    let r = p.cairn(&["run"]);
    assert_eq!(r.outcome("c").as_deref(), Some("ran"), "{}", r.all());
    assert_eq!(p.read_artifact("c", "o.txt"), "bbbb\n");
}

#[test]
fn item7_a_manifest_missing_an_output_is_a_miss_with_a_warning() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    for m in fs::read_dir(p.cache().join("manifests")).unwrap().flatten() {
        let mut doc: serde_json::Value = serde_json::from_slice(&fs::read(m.path()).unwrap()).unwrap();
        doc["outputs"] = serde_json::json!({});
        fs::write(m.path(), doc.to_string()).unwrap();
    }
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("has no output `text`"), "{}", r.all());
    assert_eq!(r.outcome("a").as_deref(), Some("ran"), "{}", r.all());
}

/// A quick stage's manifest is renamed into place unsynced, after the
/// objects it names are durable: a crash can leave it empty or cut short,
/// which must read as a miss, its stage run again and the entry rewritten.
#[test]
fn a_manifest_a_crash_left_empty_or_cut_short_is_a_miss_and_rewritten() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    for cut in [0, 40] {
        for m in fs::read_dir(p.cache().join("manifests")).unwrap().flatten() {
            let bytes = fs::read(m.path()).unwrap();
            fs::write(m.path(), &bytes[..cut.min(bytes.len())]).unwrap();
        }
        let r = p.cairn(&["run"]);
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(r.stderr.contains("is damaged") && r.stderr.contains("treating it as a miss"), "{}", r.all());
        assert_eq!(r.outcome("a").as_deref(), Some("ran"), "{}", r.all());
        let again = p.cairn(&["run"]);
        assert_eq!(again.outcome("a").as_deref(), Some("cached"), "the entry was rewritten: {}", again.all());
        assert!(!again.stderr.contains("damaged"), "{}", again.all());
    }
}

#[test]
fn item9_cleanup_never_follows_a_symlink_into_someone_elses_files() {
    let p = Project::new(CHAIN);
    p.write("victim/keep.txt", "precious\n");
    assert_eq!(p.cairn(&["run"]).code, 0);
    symlink(p.path().join("victim"), p.path().join("artifacts/mylink")).unwrap();
    let r = p.cairn(&["run", "--set", "b.cmd=cat {in.src} > {out.text}"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(fs::read_to_string(p.path().join("victim/keep.txt")).unwrap(), "precious\n");
    assert!(fs::symlink_metadata(p.path().join("artifacts/mylink")).is_ok(), "a link cairn did not make is left alone");
}

#[test]
fn item9_a_foreign_artifacts_directory_is_refused_and_left_intact() {
    let p = Project::new(CHAIN);
    p.write("fakehome/.ssh/id_ed25519", "secret key\n");
    p.write("fakehome/a/text.txt", "not cairn's\n");
    let r = p.cmd(&["run"]).env("CAIRN_ARTIFACTS_DIR", p.path().join("fakehome")).output().unwrap();
    let r: common::Run = r.into();
    assert_eq!(r.code, 0, "the run itself succeeds: {}", r.all());
    assert!(r.stderr.contains("not a cairn artifacts directory"), "{}", r.all());
    assert_eq!(fs::read_to_string(p.path().join("fakehome/.ssh/id_ed25519")).unwrap(), "secret key\n");
    assert_eq!(fs::read_to_string(p.path().join("fakehome/a/text.txt")).unwrap(), "not cairn's\n");
}

#[test]
fn item9_a_symlinked_cache_subdirectory_is_refused_and_its_target_kept() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    p.write("victim/file.txt", "keep me\n");
    fs::remove_dir_all(p.cache().join("tmp")).unwrap();
    symlink(p.path().join("victim"), p.cache().join("tmp")).unwrap();
    let r = p.cairn(&["run"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("symbolic link"), "{}", r.all());
    assert_eq!(fs::read_to_string(p.path().join("victim/file.txt")).unwrap(), "keep me\n");
}

#[test]
fn item9_a_symlinked_projects_directory_is_neither_written_nor_cleaned_through() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    // A record of a project that is gone, as `gc` would forget it.
    let gone = serde_json::json!({"pipeline": "/nonexistent/pipeline.toml", "stages": {}}).to_string();
    p.write("victim/gone.json", &gone);
    fs::remove_dir_all(p.cache().join("projects")).unwrap();
    symlink(p.path().join("victim"), p.cache().join("projects")).unwrap();
    let gc = p.cairn(&["gc"]);
    assert_eq!(gc.code, 0, "{}", gc.all());
    assert!(!gc.stdout.contains("forgot"), "{}", gc.all());
    let r = p.cairn(&["run", "--set", "b.env.SUFFIX=two"]);
    assert_ne!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("symbolic link"), "{}", r.all());
    assert_eq!(fs::read_dir(p.path().join("victim")).unwrap().count(), 1);
    assert_eq!(fs::read_to_string(p.path().join("victim/gone.json")).unwrap(), gone);
}

#[test]
fn item9_a_cache_dir_that_is_not_a_cache_is_refused() {
    let p = Project::new(CHAIN);
    p.write("home/.ssh/id_ed25519", "secret key\n");
    for args in [vec!["--cache-dir", "home", "run"], vec!["--cache-dir", "home", "cache", "verify"], vec!["--cache-dir", "home", "gc"]] {
        let r = p.cairn(&args);
        assert_ne!(r.code, 0, "{args:?}: {}", r.all());
        assert!(r.stderr.contains("is not a cairn cache"), "{args:?}: {}", r.all());
    }
    assert_eq!(fs::read_to_string(p.path().join("home/.ssh/id_ed25519")).unwrap(), "secret key\n");
    assert!(!p.path().join("home/objects").exists(), "nothing was written into it");
}

/// A run killed before it tagged the cache directory it had just made
/// (or before making it) leaves an empty or no directory: an empty cache,
/// which `cache verify` reports as such and the next run takes over.
#[test]
fn item9_a_missing_or_empty_cache_dir_is_an_empty_cache() {
    let p = Project::new(CHAIN);
    for made in [false, true] {
        if made {
            fs::create_dir(p.cache()).unwrap();
        }
        let v = p.cairn(&["cache", "verify"]);
        assert_eq!(v.code, 0, "made={made}: {}", v.all());
        assert!(v.stderr.contains("nothing to verify"), "made={made}: {}", v.all());
        assert!(v.stdout.contains("0 object(s) checked"), "made={made}: {}", v.all());
    }
    assert_eq!(p.cairn(&["run"]).code, 0);
    let v = p.cairn(&["cache", "verify"]);
    assert_eq!(v.code, 0, "{}", v.all());
    assert!(!v.stderr.contains("nothing to verify"), "{}", v.all());
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) == 0 };
    exists
        && fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| !s.contains(") Z ")).unwrap_or(false)
}

/// A stage whose shell starts a background child and records its pid.
fn orphan_maker(pidfile: &Path) -> Project {
    Project::new(&format!(
        "[stages.bg]\nkind = \"command\"\ncmd = \"sleep 60 & echo $! > {}; wait\"\noutputs = {{ o = \"o.txt\" }}\n",
        pidfile.display()
    ))
}

fn read_pid(pidfile: &Path) -> i32 {
    let mut pid = 0;
    wait_until("the stage's child pid", || {
        pid = fs::read_to_string(pidfile).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        pid > 0
    });
    pid
}

#[test]
fn item10_ctrl_c_kills_the_stages_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let p = orphan_maker(&pidfile);
    let child = p.cmd(&["run"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let pid = read_pid(&pidfile);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    wait_until("the stage's background child to die", || !pid_alive(pid));
}

#[test]
fn item10_a_stage_dies_with_a_sigkilled_engine() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let p = orphan_maker(&pidfile);
    let mut child = p.cmd(&["run"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    let pid = read_pid(&pidfile);
    child.kill().unwrap(); // SIGKILL: the engine gets no chance to clean up
    child.wait().unwrap();
    wait_until("the orphaned stage to die", || !pid_alive(pid));
}

#[test]
fn robustness_substitution_is_one_pass_and_never_runs_a_file_name() {
    let p = Project::new(
        "[stages.s]\nkind = \"command\"\ncmd = \"cat {in.x} > {out.o}\"\ninputs = { x = { file = \"in{out.o}\" } }\noutputs = { o = \"$(echo INJECTED >&2).bin\" }\n",
    );
    p.write("in{out.o}", "data\n");
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.all().contains("INJECTED"), "{}", r.all());
    assert_eq!(p.read_artifact("s", "o.bin"), "data\n");
}

#[test]
fn robustness_a_failure_with_multibyte_stderr_reports_its_tail() {
    let p = Project::new("[stages.s]\nkind = \"command\"\ncmd = \"for i in $(seq 2000); do printf 'é'; done >&2; echo ' CUDA out of memory' >&2; exit 1\"\noutputs = { o = \"o.txt\" }\n");
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("CUDA out of memory"), "{}", r.all());
    assert!(!r.stderr.contains("panicked"), "{}", r.all());
}

#[test]
fn no_op_run_writes_nothing_to_the_cache() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let snapshot = |root: &Path| -> Vec<(PathBuf, i128)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                if e.file_name() == "lock" {
                    continue; // holds the pid of the last holder, by design
                }
                let m = fs::symlink_metadata(e.path()).unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                }
                out.push((e.path(), m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128));
            }
        }
        out.sort();
        out
    };
    let before = (snapshot(&p.cache()), snapshot(&p.path().join("artifacts")));
    std::thread::sleep(Duration::from_millis(20));
    let r = p.cairn(&["run"]);
    assert_eq!(r.outcome("b").as_deref(), Some("cached"));
    assert_eq!((snapshot(&p.cache()), snapshot(&p.path().join("artifacts"))), before, "a no-op run wrote something");
    // Its summary names no run id: `cairn runs` would never list it.
    assert!(r.stderr.contains("(nothing changed, no run recorded)"), "{}", r.all());
    assert!(!r.stderr.contains("(run "), "{}", r.all());
    let recorded = |args: &[&str]| -> (bool, String) {
        let j = p.cairn(args);
        let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap_or_else(|e| panic!("{e}: {}", j.all()));
        (v["recorded"].as_bool().expect("a `recorded` field"), v["run_id"].as_str().unwrap().to_string())
    };
    assert!(!recorded(&["run", "--json"]).0, "a no-op's JSON says its run is not recorded");
    let (forced, id) = recorded(&["run", "--json", "--force", "a"]);
    assert!(forced && p.cairn(&["runs"]).stdout.contains(&id), "a run that executed is recorded under its id");
}

#[test]
fn cache_verify_reports_damaged_manifests() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let m = fs::read_dir(p.cache().join("manifests")).unwrap().flatten().next().unwrap().path();
    fs::write(&m, b"{ truncated").unwrap();
    let v = p.cairn(&["cache", "verify"]);
    assert_eq!(v.code, 1, "{}", v.all());
    assert!(v.stdout.contains("damaged   manifest"), "{}", v.all());
}
