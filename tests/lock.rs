//! `cairn.lock` and `cairn run --locked` end to end, through the `cairn`
//! binary: `command` stages (environment class `any`), and an `evaluate`
//! stage run by a stand-in worker that reports a CPU class
//! (`support/class_worker.rs`), so no libtorch is needed. One test pulls
//! from a real SeaweedFS remote (`support/weed.rs`).

#[path = "support/class_worker.rs"]
mod class_worker;
mod common;
#[path = "support/skip.rs"]
mod skip;
#[path = "support/weed.rs"]
mod weed;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Project, Run};
use weed::Weed;

/// `a` copies a file that is not a declared input (`{hidden}` is replaced
/// by its absolute path), so editing it changes `a`'s output without
/// changing its key: what a non-hermetic stage looks like to the lock.
const PIPELINE: &str = r#"
[stages.b]
kind = "command"
cmd = "cat {in.x} {in.x} > {out.y}"
inputs = { x = "a.x" }
outputs = { y = "y.txt" }

[stages.a]
kind = "command"
cmd = "cat {hidden} > {out.x}"
outputs = { x = "x.txt" }
"#;

fn project() -> Project {
    let dir = tempfile::tempdir().unwrap();
    let hidden = dir.path().join("hidden.txt");
    std::fs::write(&hidden, "one\n").unwrap();
    std::fs::write(dir.path().join("pipeline.toml"), PIPELINE.replace("{hidden}", &hidden.display().to_string())).unwrap();
    Project { dir }
}

fn lock_path(p: &Project) -> std::path::PathBuf {
    p.path().join("cairn.lock")
}

fn lock_text(p: &Project) -> String {
    std::fs::read_to_string(lock_path(p)).unwrap_or_else(|e| panic!("cairn.lock: {e}"))
}

fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "{}", r.all());
    r
}

/// A fresh start: no cache, no artifacts, the lock kept.
fn forget_results(p: &Project) {
    std::fs::remove_dir_all(p.cache()).unwrap();
    std::fs::remove_dir_all(p.path().join("artifacts")).unwrap();
}

fn identity(path: &Path) -> (u64, i64, i64) {
    let m = std::fs::metadata(path).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[test]
fn the_lock_is_written_sorted_and_a_no_op_run_leaves_it_alone() {
    let p = project();
    ok(p.cairn(&["run"]));
    let text = lock_text(&p);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["lock_schema"], 1, "{text}");
    let x = &v["stages"]["a"]["any"];
    assert_eq!(x["outputs"]["x"]["hash"], blake3::hash(b"one\n").to_hex().as_str(), "{text}");
    assert_eq!(x["outputs"]["x"]["size"], 4);
    assert_eq!(x["key_inputs"]["kind"], "command");
    assert!(x["key"].as_str().is_some_and(|k| k.len() == 64), "{text}");
    assert!(text.find("\"a\"").unwrap() < text.find("\"b\"").unwrap(), "stages sorted by name, not pipeline order: {text}");
    assert!(text.lines().count() > 20 && text.ends_with("}\n"), "one fact a line: {text}");

    let before = identity(&lock_path(&p));
    std::thread::sleep(std::time::Duration::from_millis(20));
    ok(p.cairn(&["run"]));
    assert_eq!(identity(&lock_path(&p)), before, "a no-op run must not rewrite the lock");

    forget_results(&p);
    let r = ok(p.cairn(&["run"]));
    assert_eq!(r.outcome("a").as_deref(), Some("ran"), "{}", r.all());
    assert_eq!(lock_text(&p), text, "the same results give the same lock");
}

#[test]
fn locked_passes_on_a_faithful_rerun_from_an_empty_cache() {
    let p = project();
    ok(p.cairn(&["run"]));
    let text = lock_text(&p);
    forget_results(&p);
    let r = ok(p.cairn(&["run", "--locked"]));
    assert_eq!(r.outcome("a").as_deref(), Some("ran"), "{}", r.all());
    assert!(r.stderr.contains("2 stage(s) match"), "{}", r.all());
    assert_eq!(lock_text(&p), text);
    ok(p.cairn(&["run", "--locked=strict"]));
}

#[test]
fn locked_fails_naming_the_stage_and_output_that_changed_and_keeps_the_lock() {
    let p = project();
    ok(p.cairn(&["run"]));
    let text = lock_text(&p);
    forget_results(&p);
    std::fs::write(p.path().join("hidden.txt"), "two\n").unwrap();
    let r = p.cairn(&["run", "--locked"]);
    assert_eq!(r.code, 1, "{}", r.all());
    let line = r.stderr.lines().find(|l| l.starts_with("DIFFERS") && l.contains(" a:")).unwrap_or_else(|| panic!("{}", r.all()));
    assert!(line.contains("output `x`"), "{line}");
    // `b` read other bytes, so its key moved: the lock says which input.
    let line = r.stderr.lines().find(|l| l.starts_with("STALE") && l.contains(" b:")).unwrap_or_else(|| panic!("{}", r.all()));
    assert!(line.contains("input `x` changed"), "{line}");
    assert_eq!(lock_text(&p), text, "--locked never rewrites the lock");
}

#[test]
fn an_edited_hash_in_the_lock_is_a_difference() {
    let p = project();
    ok(p.cairn(&["run"]));
    let good = blake3::hash(b"one\n").to_hex().to_string();
    let bad = blake3::hash(b"not it").to_hex().to_string();
    std::fs::write(lock_path(&p), lock_text(&p).replace(&good, &bad)).unwrap();
    let r = p.cairn(&["run", "--locked"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("DIFFERS      a: output `x` is"), "{}", r.all());
    assert!(!r.stderr.contains(" b:"), "b matches: {}", r.all());
}

#[test]
fn locked_fails_when_the_lock_is_missing_or_stale() {
    let p = project();
    let r = p.cairn(&["run", "--locked"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("no lock at") && r.stderr.contains("cairn run"), "{}", r.all());
    assert_eq!(r.outcome("a"), None, "nothing runs without a lock: {}", r.all());
    assert!(!lock_path(&p).exists());

    ok(p.cairn(&["run"]));
    let pipeline = std::fs::read_to_string(p.path().join("pipeline.toml")).unwrap();
    let edited = pipeline.replace("cat {in.x} {in.x}", "cat {in.x}").replace("[stages.a]", "[stages.c]\nkind = \"command\"\ncmd = \"echo c > {out.c}\"\noutputs = { c = \"c.txt\" }\n\n[stages.a]");
    std::fs::write(p.path().join("pipeline.toml"), edited).unwrap();
    let r = p.cairn(&["run", "--locked"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("STALE        b: the lock is stale: param `cmd`"), "{}", r.all());
    assert!(r.stderr.contains("MISSING      c: not in the lock"), "{}", r.all());

    // A stage gone from the pipeline is stale in the lock too.
    std::fs::write(p.path().join("pipeline.toml"), pipeline.split("[stages.a]").next().unwrap().replace("a.x", "c.x").replace("[stages.b]", "[stages.c]\nkind = \"command\"\ncmd = \"echo c > {out.x}\"\noutputs = { x = \"x.txt\" }\n\n[stages.b]")).unwrap();
    let r = p.cairn(&["run", "--locked"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("REMOVED      a: in the lock but not in the pipeline"), "{}", r.all());
}

#[test]
fn a_stage_of_another_cpu_class_is_reported_not_compared_and_each_class_keeps_its_entry() {
    let p = Project::new(class_worker::CLASSED);
    let tools = tempfile::tempdir().unwrap();
    let (avx512, avx2) = (class_worker::class_worker(tools.path(), "AVX512", "cpu"), class_worker::class_worker(tools.path(), "AVX2", "cpu"));
    let run = |worker: &Path, args: &[&str]| -> Run { p.cmd(args).env("CAIRN_WORKER", worker).output().unwrap().into() };
    ok(run(&avx512, &["run"]));

    let r = ok(run(&avx2, &["run", "--locked"]));
    let line = r.stderr.lines().find(|l| l.starts_with("not compared evaluate:")).unwrap_or_else(|| panic!("{}", r.all()));
    assert!(line.ends_with("computed under cpu_capability=AVX512, this machine is cpu_capability=AVX2: not comparable"), "{line}");
    assert!(r.stderr.contains("1 stage(s) match, 1 of another environment class not compared"), "make, a data stage, is compared: {}", r.all());
    let r = run(&avx2, &["run", "--locked=strict"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("NOT COMPARED evaluate:"), "{}", r.all());

    // The AVX2 machine adds its entry and keeps the AVX512 one: both compare.
    ok(run(&avx2, &["run"]));
    let v: serde_json::Value = serde_json::from_str(&lock_text(&p)).unwrap();
    let classes: Vec<&String> = v["stages"]["evaluate"].as_object().unwrap().keys().collect();
    assert_eq!(classes.len(), 2, "{classes:?}");
    assert!(classes.iter().any(|c| c.contains("cpu_capability=AVX512")) && classes.iter().any(|c| c.contains("cpu_capability=AVX2")), "{classes:?}");
    for worker in [&avx512, &avx2] {
        let r = ok(run(worker, &["run", "--locked=strict"]));
        assert!(r.stderr.contains("2 stage(s) match"), "{}", r.all());
    }
}

#[test]
fn a_corrupt_lock_is_an_error_naming_the_file_line_and_fix() {
    let p = project();
    ok(p.cairn(&["run"]));
    let text = lock_text(&p);
    let conflicted = text.replacen("\n", "\n<<<<<<< HEAD\n", 3);
    std::fs::write(lock_path(&p), &conflicted).unwrap();
    for args in [&["run"][..], &["run", "--locked"]] {
        let r = p.cairn(args);
        assert_eq!(r.code, 2, "{args:?}: {}", r.all());
        assert!(r.stderr.contains("cairn.lock:2:") && r.stderr.contains("git checkout cairn.lock"), "{}", r.all());
    }
    assert_eq!(std::fs::read_to_string(lock_path(&p)).unwrap(), conflicted, "a lock that cannot be read is left for the user to fix");
}

#[test]
fn a_fresh_clone_pulls_from_the_remote_and_locked_passes() {
    let Some(w) = Weed::start("a_fresh_clone_pulls_from_the_remote_and_locked_passes") else { return };
    let url = "s3://cairn/lock-test";
    let a = project();
    let cairn = |p: &Project, args: &[&str]| -> Run {
        let mut c = p.cmd(args);
        w.env(&mut c);
        c.env("CAIRN_REMOTE", url).output().unwrap().into()
    };
    ok(cairn(&a, &["run", "--push"]));
    let b = Project::new(&std::fs::read_to_string(a.path().join("pipeline.toml")).unwrap());
    std::fs::copy(lock_path(&a), lock_path(&b)).unwrap();
    // Had the clone executed `a`, it would have read these other bytes.
    std::fs::write(a.path().join("hidden.txt"), "two\n").unwrap();
    let r = ok(cairn(&b, &["run", "--locked", "--push"]));
    assert!(r.stderr.contains("0 ran") && r.stderr.contains("2 pulled"), "{}", r.all());
    assert!(r.stderr.contains("2 stage(s) match"), "{}", r.all());

    // A clone without a lock writes the same lock from what it pulled,
    // also for a stage whose bytes stayed on the remote (not a target).
    let c = Project::new(&std::fs::read_to_string(a.path().join("pipeline.toml")).unwrap());
    let r = ok(cairn(&c, &["run", "b"]));
    assert!(r.stderr.contains("2 pulled"), "{}", r.all());
    assert_eq!(lock_text(&c), lock_text(&a));
}

/// The Markdown cells of the table rows of `cairn diff --format markdown`
/// whose first cell is `stage`.
fn markdown_rows(out: &str, stage: &str) -> Vec<Vec<String>> {
    let split = |l: &str| -> Vec<String> {
        let inner = l.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split(" | ").map(|c| c.trim().to_string()).collect()
    };
    out.lines().filter(|l| l.starts_with(&format!("| `{stage}` |"))).map(split).collect()
}

#[test]
fn diff_as_markdown_of_two_runs_and_of_the_working_tree_against_the_lock() {
    let p = project();
    ok(p.cairn(&["run"]));
    ok(p.cairn(&["run", "--set", "b.cmd=\"cat {in.x} | cat > {out.y}\""]));
    let text = ok(p.cairn(&["diff"])).stdout;
    assert!(text.lines().any(|l| l.trim_start().starts_with("param cmd")), "the text format stays the default: {text}");

    let md = ok(p.cairn(&["diff", "--format", "markdown"])).stdout;
    let lines: Vec<&str> = md.lines().collect();
    assert!(lines[0].starts_with("### cairn diff: `") && lines[1].is_empty(), "{md}");
    assert!(lines[2].starts_with("| stage | | name |") && lines[3] == "| --- | --- | --- | ---: | ---: | ---: |", "{md}");
    let b = markdown_rows(&md, "b");
    let cmd = b.iter().find(|r| r[1] == "param").unwrap_or_else(|| panic!("{md}"));
    assert_eq!((cmd[2].as_str(), cmd.len()), ("`cmd`", 6), "{md}");
    assert!(cmd[4].contains("\\| cat"), "a pipe in a value is escaped: {md}");
    assert!(b.iter().any(|r| r[1] == "metric"), "{md}");
    assert!(markdown_rows(&md, "a").iter().all(|r| r[1] == "metric"), "a's params did not change: {md}");

    // The working tree against the lock: an edited, not yet run, param.
    let pipeline = std::fs::read_to_string(p.path().join("pipeline.toml")).unwrap();
    std::fs::write(p.path().join("pipeline.toml"), pipeline.replace("cat {in.x} {in.x}", "tac {in.x}")).unwrap();
    let md = ok(p.cairn(&["diff", "--lock", "--format", "markdown"])).stdout;
    assert!(md.starts_with("### cairn diff: `./cairn.lock` → `working tree`"), "{md}");
    let b = markdown_rows(&md, "b");
    let cmd = b.iter().find(|r| r[1] == "param").unwrap_or_else(|| panic!("{md}"));
    assert!(cmd[3].contains("cat {in.x} \\| cat") && cmd[4].contains("tac {in.x}"), "{md}");
    assert!(b.iter().filter(|r| r[1] == "metric").all(|r| r[4] == "-"), "b is stale: no metrics yet: {md}");
    let r = p.cairn(&["diff", "--lock=missing.lock"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("no lock at missing.lock"), "{}", r.all());
}

/// A run that waited for another to release the cache reads the lock that
/// run left: here the other run moved the entry to `X=2`, and the waiting
/// run, whose results are those of `X=1` (the lock as it was when the
/// waiting run started), writes them back instead of taking the lock for
/// already holding them.
#[test]
fn a_run_that_waited_for_the_cache_records_against_the_lock_the_other_run_left() {
    let gate = common::Gate::new();
    let armed = gate.path("armed");
    let p = Project::new(&format!(
        r#"
[stages.s]
kind = "command"
cmd = "if [ -e {armed} ]; then {hold}; fi; echo $X > {{out.o}}"
env = {{ X = "1" }}
outputs = {{ o = "o.txt" }}
"#,
        armed = armed.display(),
        hold = gate.hold()
    ));
    ok(p.cairn(&["run"]));
    let x1 = lock_text(&p);
    std::fs::write(&armed, "").unwrap();
    let mut other = p.cmd(&["run", "--set", "s.env.X=\"2\""]).stderr(std::process::Stdio::null()).spawn().unwrap();
    gate.wait_started();
    let (mut waiter, log) = gate.spawn_waiting(&p, &["run"]);
    gate.open();
    assert!(other.wait().unwrap().success());
    assert!(waiter.wait().unwrap().success(), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(std::fs::read_to_string(&log).unwrap().contains("cached"), "X=1 is served from the cache");
    assert_eq!(lock_text(&p), x1, "the lock records the last run, X=1");
}
