//! Crashes, interrupts, corruption and hostile pipelines must never lose a
//! finished result nor produce a wrong one.

mod common;
#[path = "support/cgroup.rs"]
mod cgroup;
#[path = "support/skip.rs"]
mod skip;
#[path = "support/tmpfs.rs"]
mod tmpfs;

use std::time::Duration;

use cgroup::MemCgroup;
use common::Project;
use tmpfs::Tmpfs;

const SLOW_CHAIN: &str = r#"
[stages.fast]
kind = "command"
cmd = "echo first > {out.o}"
outputs = { o = "o.txt" }

[stages.slow]
kind = "command"
cmd = "cat {in.i} > {out.o}; sleep 3; echo done >> {out.o}"
inputs = { i = "fast.o" }
outputs = { o = "o.txt" }
"#;

fn wait_for(p: &Project, pattern: &str) {
    for _ in 0..200 {
        if std::fs::read_dir(p.cache().join("tmp")).map(|d| d.flatten().any(|e| e.file_name().to_string_lossy().starts_with(pattern))).unwrap_or(false) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("stage {pattern} never started");
}

#[test]
fn sigkill_mid_stage_loses_nothing_finished() {
    let p = Project::new(SLOW_CHAIN);
    let mut child = p.cmd(&["run"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_for(&p, "slow-");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let status = p.cairn(&["status"]);
    assert!(status.stdout.contains("fresh      fast"), "{}", status.stdout);
    assert!(status.stdout.contains("never run  slow"), "{}", status.stdout);
    let resumed = p.cairn(&["run"]);
    assert_eq!(resumed.code, 0, "{}", resumed.all());
    assert_eq!(resumed.outcome("fast").as_deref(), Some("cached"));
    assert_eq!(resumed.outcome("slow").as_deref(), Some("ran"));
    // The killed run's scratch files are gone.
    let leftovers: Vec<_> = std::fs::read_dir(p.cache().join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn sigint_abandons_the_running_stage_and_says_what_was_kept() {
    let p = Project::new(SLOW_CHAIN);
    let child = p.cmd(&["run"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
    wait_for(&p, "slow-");
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(stderr.contains("1 finished stage(s) are cached"), "{stderr}");
    let status = p.cairn(&["status"]);
    assert!(status.stdout.contains("never run  slow"), "{}", status.stdout);
}

#[test]
fn corrupt_objects_are_detected_and_recomputed() {
    let p = Project::new(SLOW_CHAIN.replace("sleep 3; ", "").as_str());
    assert_eq!(p.cairn(&["run"]).code, 0);
    // Damage fast's output object (objects are read-only; force it).
    let manifests: Vec<_> = std::fs::read_dir(p.cache().join("objects")).unwrap().flatten().collect();
    assert!(!manifests.is_empty());
    let fast_out = p.path().join("artifacts/fast/o.txt");
    let object = std::fs::canonicalize(&fast_out).unwrap();
    let target = find_object_with(&p, &std::fs::read(&object).unwrap());
    let mut perms = std::fs::metadata(&target).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&target, perms).unwrap();
    std::fs::write(&target, b"tampered\n").unwrap();

    let verify = p.cairn(&["cache", "verify"]);
    assert_eq!(verify.code, 1, "{}", verify.all());
    assert!(verify.stdout.contains("damaged"), "{}", verify.stdout);

    // `slow` must re-run (forced) and must not read the tampered bytes.
    let r = p.cairn(&["run", "--force", "slow"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("damaged"), "{}", r.stderr);
    assert_eq!(p.read_artifact("slow", "o.txt"), "first\ndone\n");
    assert_eq!(p.cairn(&["cache", "verify"]).code, 0);
}

fn find_object_with(p: &Project, bytes: &[u8]) -> std::path::PathBuf {
    for shard in std::fs::read_dir(p.cache().join("objects")).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if std::fs::read(f.path()).unwrap() == bytes {
                return f.path();
            }
        }
    }
    panic!("object not found");
}

#[test]
fn damaged_manifest_is_a_miss_with_a_warning() {
    let p = Project::new(SLOW_CHAIN.replace("sleep 3; ", "").as_str());
    assert_eq!(p.cairn(&["run"]).code, 0);
    for m in std::fs::read_dir(p.cache().join("manifests")).unwrap().flatten() {
        std::fs::write(m.path(), b"{ not json").unwrap();
    }
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("is damaged"), "{}", r.stderr);
    assert_eq!(r.outcome("fast").as_deref(), Some("ran"));
}

#[test]
fn unwritable_cache_fails_clearly_and_keeps_results() {
    // Tests run as root, which ignores permission bits; a file where the
    // cache directory must be fails the same way a read-only mount does.
    let p = Project::new(SLOW_CHAIN.replace("sleep 3; ", "").as_str());
    assert_eq!(p.cairn(&["run"]).code, 0);
    std::fs::write(p.path().join("notadir"), b"").unwrap();
    let r = p.cairn(&["--cache-dir", "notadir/cache", "run"]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stderr.contains("notadir/cache"), "{}", r.stderr);
    // The real cache is untouched and still serves hits.
    assert_eq!(p.cairn(&["run"]).outcome("slow").as_deref(), Some("cached"));
}

fn hostile(toml: &str) -> common::Run {
    Project::new(toml).cairn(&["status"])
}

#[test]
fn hostile_pipelines_get_exit_2_and_a_location() {
    let cases = [
        ("[stages.\"../../etc\"]\nkind = \"command\"\n", "invalid stage name"),
        ("[stages.a]\nkind = \"command\"\ncmd = \"true\"\noutputs = { \"../x\" = \"o\" }\n", "pipeline.toml:"),
        ("[stages.a]\nkind = \"command\"\ncmd = \"true\"\noutputs = { o = \"../../etc/passwd\" }\n", "plain file name"),
        ("[stages.a]\nkind = \"command\"\ncmd = \"true\"\noutputs = { o = \"o\" }\nx = nan\n", "NaN"),
        ("[stages.a]\nkind = \"command\"\ncmd = 99999999999999999999\n", "pipeline.toml:3"),
        ("[stages.a]\nkind = \"resize\"\nsize = 1e308\n", "pipeline.toml:"),
        ("[stages.é]\nkind = \"command\"\n", "invalid TOML"),
        ("[stages.\"é\"]\nkind = \"command\"\n", "invalid stage name"),
        ("[stages.a]\nkind = \"command\"\noutputs = { o = \"o\" }\n", "param `cmd`: is required and has no default"),
        ("[stages.a]\nkind = \"train\"\n", "param `model`: is required and has no default"),
        ("[profiles.a]\nextends = \"b\"\n[profiles.b]\nextends = \"a\"\n[stages.s]\nkind = \"command\"\ncmd = \"true\"\noutputs = { o = \"o\" }\n", "cycle"),
    ];
    for (toml, want) in cases {
        let r = if toml.contains("profiles") { Project::new(toml).cairn(&["status", "--profile", "a"]) } else { hostile(toml) };
        assert_eq!(r.code, 2, "{toml}\n{}", r.all());
        assert!(r.stderr.contains(want), "{toml}\nwanted {want:?} in\n{}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    let deep = format!("[stages.a]\nkind = \"command\"\nx = {}1{}\n", "[".repeat(200), "]".repeat(200));
    let r = hostile(&deep);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(!r.stderr.contains("panicked"));
}

#[test]
fn thousands_of_stages_load_quickly() {
    let mut toml = String::new();
    for i in 0..3000 {
        if i == 0 {
            toml.push_str("[stages.s0]\nkind = \"command\"\ncmd = \"echo 0 > {out.o}\"\noutputs = { o = \"o\" }\n");
        } else {
            toml.push_str(&format!(
                "[stages.s{i}]\nkind = \"command\"\ncmd = \"cat {{in.i}} > {{out.o}}\"\noutputs = {{ o = \"o\" }}\ninputs = {{ i = \"s{}.o\" }}\n",
                i - 1
            ));
        }
    }
    let p = Project::new(&toml);
    let r = p.cairn(&["dag"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.stdout.lines().count(), 3000);
}

/// A stage that writes a large artifact, so that a kill can land while the
/// stage writes it, while the engine hashes it, or while it is moved into
/// the store.
const BIG: &str = r#"
[stages.small]
kind = "command"
cmd = "echo small > {out.o}"
outputs = { o = "o.txt" }

[stages.big]
kind = "command"
cmd = "cat {in.i} > {out.o}; head -c 150000000 /dev/zero >> {out.o}"
inputs = { i = "small.o" }
outputs = { o = "o.bin" }
"#;

/// Every object in the store hashes to its name, and nothing is left in
/// the cache's scratch area once a run has started again.
fn assert_store_intact(p: &Project) {
    let v = p.cairn(&["cache", "verify"]);
    assert_eq!(v.code, 0, "cache verify after a kill: {}", v.all());
}

#[test]
fn sigkill_at_many_points_of_a_large_write_leaves_no_partial_result() {
    // How long one clean run takes on this machine, to spread kill points
    // over it: from the stage's first bytes to the engine's ingest.
    let probe = Project::new(BIG);
    let t0 = std::time::Instant::now();
    assert_eq!(probe.cairn(&["run"]).code, 0);
    let total = t0.elapsed();
    for pct in [5u32, 15, 30, 45, 60, 75, 90, 100] {
        let p = Project::new(BIG);
        let mut child = p.cmd(&["run"]).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(total * pct / 100);
        let _ = child.kill(); // SIGKILL (a no-op if it already finished)
        child.wait().unwrap();
        assert_store_intact(&p);
        let status = p.cairn(&["status"]);
        assert_eq!(status.code, 0, "{}", status.all());
        let big_fresh = status.stdout.contains("fresh      big");
        eprintln!("killed at {pct}% of {total:?}: big {}", if big_fresh { "had finished" } else { "had not finished" });
        let resumed = p.cairn(&["run"]);
        assert_eq!(resumed.code, 0, "at {pct}%: {}", resumed.all());
        let want = if big_fresh { "cached" } else { "ran" };
        assert_eq!(resumed.outcome("big").as_deref(), Some(want), "at {pct}%: {}", resumed.all());
        // A manifest is only ever written after its objects: a stage that was
        // fresh after the kill is served whole. (artifacts/ is placed at the
        // end of a run, so a kill between the manifest and that step leaves
        // it to the next run.)
        let out = p.path().join("artifacts/big/o.bin");
        assert_eq!(std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0), 150_000_006, "at {pct}%");
        assert_store_intact(&p);
        let leftovers: Vec<_> = std::fs::read_dir(p.cache().join("tmp")).unwrap().collect();
        assert!(leftovers.is_empty(), "at {pct}%: {leftovers:?}");
    }
}

#[test]
fn gc_during_a_run_waits_and_keeps_what_the_run_made() {
    let p = Project::new(SLOW_CHAIN);
    let run = p.cmd(&["run"]).stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_for(&p, "slow-");
    let gc = p.cairn(&["gc", "--keep-runs", "0"]);
    let run = run.wait_with_output().unwrap();
    assert!(run.status.success());
    assert_eq!(gc.code, 0, "{}", gc.all());
    assert!(gc.stderr.contains("waiting for another cairn process"), "gc must not run beside a run: {}", gc.all());
    let again = p.cairn(&["run"]);
    assert_eq!(again.outcome("fast").as_deref(), Some("cached"), "{}", again.all());
    assert_eq!(again.outcome("slow").as_deref(), Some("cached"), "{}", again.all());
}

#[test]
fn disk_full_fails_clearly_and_keeps_earlier_results() {
    let p = Project::new(
        r#"
[stages.small]
kind = "command"
cmd = "echo small > {out.o}"
outputs = { o = "o.txt" }

[stages.huge]
kind = "command"
cmd = "cat {in.i} > {out.o} && head -c 20000000 /dev/zero >> {out.o}"
inputs = { i = "small.o" }
outputs = { o = "o.bin" }
"#,
    );
    let Some(_fs) = Tmpfs::mount(&p.path().join("disk"), "8m") else {
        skip::unavailable(
            "disk_full_fails_clearly_and_keeps_earlier_results",
            "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); `unwritable_cache_fails_clearly_and_keeps_results` covers failing writes",
        );
        return;
    };
    let cache = "disk/cache";
    let first = p.cairn(&["--cache-dir", cache, "run", "small"]);
    assert_eq!(first.code, 0, "{}", first.all());
    let full = p.cairn(&["--cache-dir", cache, "run"]);
    assert_eq!(full.code, 3, "a full disk is a cache I/O error: {}", full.all());
    assert_eq!(full.outcome("huge").as_deref(), Some("FAILED"), "{}", full.all());
    assert!(full.stderr.contains("No space left on device"), "the error says why: {}", full.all());
    assert!(full.stderr.contains("the disk is full"), "the hint reaches the user: {}", full.all());
    // Nothing half-written stays behind, and the earlier result still serves.
    let leftovers: Vec<_> = std::fs::read_dir(p.path().join("disk/cache/tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let v = p.cairn(&["--cache-dir", cache, "cache", "verify"]);
    assert_eq!(v.code, 0, "{}", v.all());
    let again = p.cairn(&["--cache-dir", cache, "run", "small"]);
    assert_eq!(again.outcome("small").as_deref(), Some("cached"), "{}", again.all());
}

#[test]
fn a_fully_cached_run_and_a_dry_run_work_on_a_read_only_cache() {
    let p = Project::new(SLOW_CHAIN.replace("sleep 3; ", "").as_str());
    let Some(fs) = Tmpfs::mount(&p.path().join("disk"), "8m") else {
        skip::unavailable(
            "a_fully_cached_run_and_a_dry_run_work_on_a_read_only_cache",
            "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)",
        );
        return;
    };
    let cache = "disk/cache";
    assert_eq!(p.cairn(&["--cache-dir", cache, "run"]).code, 0);
    let ro = std::process::Command::new("mount").args(["-o", "remount,ro"]).arg(&fs.0).status().unwrap();
    assert!(ro.success());
    let again = p.cairn(&["--cache-dir", cache, "run"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(again.outcome("slow").as_deref(), Some("cached"), "{}", again.all());
    let dry = p.cairn(&["--cache-dir", cache, "run", "--dry-run", "--set", "slow.cmd=cat {in.i} > {out.o}"]);
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert!(dry.stderr.contains("1 would run"), "{}", dry.all());
    let write = p.cairn(&["--cache-dir", cache, "run", "--set", "slow.cmd=cat {in.i} > {out.o}"]);
    assert_eq!(write.code, 3, "{}", write.all());
    assert!(write.stderr.contains("read-only"), "{}", write.all());
}

/// `hog`: a shell that reads 400 MB into a variable.
const HOG: &str = r#"
[stages.hog]
kind = "command"
cmd = "x=$(head -c 400000000 /dev/zero | tr '\\0' a); echo ${#x} > {out.o}"
outputs = { o = "o.txt" }
"#;

/// `cairn ARGS` in `p`, inside a memory cgroup of its own limited to 96
/// MiB (named with `tag`), or `None` where none can be made: then `test`
/// skips visibly, `covered` saying what covers it.
fn in_96_mib_cgroup(p: &Project, tag: &str, test: &str, covered: &str, args: &[&str]) -> Option<common::Run> {
    let Some(cgroup) = MemCgroup::create(&format!("cairn-test-{tag}-{}", std::process::id()), 96 << 20) else {
        skip::unavailable(test, &format!("cannot make a memory cgroup here (needs root and a writable cgroup file system){covered}"));
        return None;
    };
    let mut run = cgroup.command(env!("CARGO_BIN_EXE_cairn"));
    run.args(args).current_dir(p.path()).env_remove("CAIRN_CACHE_DIR");
    Some(run.output().expect("cairn runs").into())
}

/// A stage the kernel's out-of-memory killer kills, in a real memory
/// cgroup with a 96 MiB limit: the failure says so from the kernel's own
/// count, beside the peak and the limit, nothing is cached, and the same
/// stage outside the cgroup then runs.
#[test]
fn a_stage_the_out_of_memory_killer_kills_is_named_so() {
    let p = Project::new(HOG);
    let covered = "; `a_stage_killed_from_outside_says_whether_the_out_of_memory_killer_did_it` covers a SIGKILL from elsewhere";
    let Some(r) = in_96_mib_cgroup(&p, "oom", "a_stage_the_out_of_memory_killer_kills_is_named_so", covered, &["run"]) else { return };
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("command exited with signal: 9 (SIGKILL)"), "the largest process, `sh`, is the one killed: {}", r.stderr);
    assert!(r.stderr.contains("help: SIGKILL came from the kernel's out-of-memory killer, which killed"), "{}", r.stderr);
    assert!(r.stderr.contains("in cairn's cgroup") && r.stderr.contains("this machine allows 96 MiB (its cgroup's limit)"), "{}", r.stderr);
    common::nothing_cached(&p);
    let again = p.cairn(&["run"]);
    assert_eq!(again.code, 0, "{}", again.all());
    assert_eq!(p.read_artifact("hog", "o.txt"), "400000000\n");
}

/// Two stages at once in that cgroup: `hog` is killed by the out-of-memory
/// killer, `victim` by a SIGKILL of its own after that. The kernel's count
/// rose while each ran, but it cannot say whose process it killed, so
/// neither failure claims the kill for sure: each says another stage ran
/// beside it.
#[test]
fn a_kill_counted_while_two_stages_ran_is_not_claimed_by_either() {
    let victim = "\n[stages.victim]\nkind = \"command\"\ncmd = \"sleep 3; kill -9 $$\"\noutputs = { o = \"o.txt\" }\n";
    let p = Project::new(&format!("{HOG}{victim}"));
    let test = "a_kill_counted_while_two_stages_ran_is_not_claimed_by_either";
    let Some(r) = in_96_mib_cgroup(&p, "oom2", test, "", &["run", "-j", "2"]) else { return };
    assert_eq!(r.code, 1, "{}", r.all());
    for said in [
        "help: SIGKILL came from outside cairn, most likely from the kernel's out-of-memory killer, which killed ",
        " in cairn's cgroup while the stage ran (`oom_kill` in the cgroup's memory counters); another stage ran beside this one, and the killer may have struck its process instead",
    ] {
        assert_eq!(r.stderr.matches(said).count(), 2, "{said}: {}", r.stderr);
    }
    common::nothing_cached(&p);
}
