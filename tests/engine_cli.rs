//! End-to-end behaviour of the engine through the `cairn` binary.

mod common;

use std::process::Stdio;

use common::Project;

/// a → b → c, and d alone. `b` copies a's output with a tunable suffix.
const CHAIN: &str = r#"
[pipeline]
name = "chain"
seed = 7

[stages.a]
kind = "command"
cmd = "echo hello > {out.text}"
outputs = { text = "a.txt" }

[stages.b]
kind = "command"
cmd = "cat {in.src} > {out.text}; echo $SUFFIX >> {out.text}"
inputs = { src = "a.text" }
outputs = { text = "b.txt" }
env = { SUFFIX = "one" }

[stages.c]
kind = "command"
cmd = "wc -c < {in.src} > {out.count}"
inputs = { src = "b.text" }
outputs = { count = "count.txt" }

[stages.d]
kind = "command"
cmd = "echo independent > {out.text}"
outputs = { text = "d.txt" }
"#;

#[test]
fn rerun_is_a_cache_hit() {
    let p = Project::new(CHAIN);
    let first = p.cairn(&["run"]);
    assert_eq!(first.code, 0, "{}", first.all());
    for s in ["a", "b", "c", "d"] {
        assert_eq!(first.outcome(s).as_deref(), Some("ran"), "{s}: {}", first.all());
    }
    assert_eq!(p.read_artifact("b", "text.txt"), "hello\none\n");
    let second = p.cairn(&["run"]);
    assert_eq!(second.code, 0);
    for s in ["a", "b", "c", "d"] {
        assert_eq!(second.outcome(s).as_deref(), Some("cached"), "{s}: {}", second.all());
    }
}

/// A run that changed something ends by naming where the pipeline's ends
/// (`c` and `d`: nothing reads them) put their results, or a target's,
/// not what feeds them; a no-op and a failed run do not.
#[test]
fn a_run_ends_by_naming_where_its_results_are() {
    let results = |r: &common::Run| r.all().lines().filter(|l| l.starts_with("results: ")).map(String::from).collect::<Vec<_>>();
    let p = Project::new(CHAIN);
    let first = p.cairn(&["run"]);
    assert_eq!(first.code, 0, "{}", first.all());
    assert_eq!(results(&first), ["results: artifacts/c/ (count.txt)", "results: artifacts/d/ (text.txt)"], "{}", first.all());
    assert_eq!(results(&p.cairn(&["run"])), Vec::<String>::new(), "a no-op names nothing");
    let target = p.cairn(&["run", "b", "--force", "b"]);
    assert_eq!(results(&target), ["results: artifacts/b/ (text.txt)"], "{}", target.all());
    let failed = p.cairn(&["run", "--set", "d.cmd=exit 3"]);
    assert_ne!(failed.code, 0);
    assert_eq!(results(&failed), Vec::<String>::new(), "{}", failed.all());
}

#[test]
fn param_change_reruns_exactly_the_stage_and_descendants() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let r = p.cairn(&["run", "--set", "b.env.SUFFIX=two"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.outcome("a").as_deref(), Some("cached"));
    assert_eq!(r.outcome("b").as_deref(), Some("ran"));
    assert_eq!(r.outcome("c").as_deref(), Some("ran"));
    assert_eq!(r.outcome("d").as_deref(), Some("cached"));
    assert_eq!(p.read_artifact("b", "text.txt"), "hello\ntwo\n");
}

#[test]
fn identical_outputs_cut_off_downstream() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    // A different command with byte-identical output: b re-runs, c does not.
    let r = p.cairn(&["run", "--set", "b.cmd=cat {in.src} > {out.text} && echo $SUFFIX >> {out.text}"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(r.outcome("b").as_deref(), Some("ran"));
    assert_eq!(r.outcome("c").as_deref(), Some("cached"), "{}", r.all());
}

#[test]
fn force_and_dry_run() {
    let p = Project::new(CHAIN);
    let dry = p.cairn(&["run", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}", dry.all());
    assert_eq!(dry.outcome("a").as_deref(), Some("would run"));
    // b's key is not known yet, but it would run after a.
    assert_eq!(dry.outcome("b").as_deref(), Some("would run"));
    assert!(!p.cache().join("manifests").read_dir().map(|mut d| d.next().is_some()).unwrap_or(false), "dry run wrote a manifest");
    assert_eq!(p.cairn(&["run"]).code, 0);
    let forced = p.cairn(&["run", "--force", "a"]);
    assert_eq!(forced.outcome("a").as_deref(), Some("ran"));
    // a's output is identical, so b stays cached.
    assert_eq!(forced.outcome("b").as_deref(), Some("cached"));
    let json = p.cairn(&["run", "--dry-run", "--json", "--set", "d.cmd=echo x > {out.text}"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json summary");
    let d = v["stages"].as_array().unwrap().iter().find(|s| s["stage"] == "d").unwrap();
    assert_eq!(d["status"], "would_run");
}

#[test]
fn explain_names_each_changed_field() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let e = p.cairn(&["explain", "b", "--set", "b.env.SUFFIX=two"]);
    assert_eq!(e.code, 0, "{}", e.all());
    assert!(e.stdout.contains("param `env.SUFFIX` \"one\" → \"two\""), "{}", e.stdout);
    let c = p.cairn(&["explain", "c", "--set", "b.env.SUFFIX=two"]);
    assert!(c.stdout.contains("upstream stage `b` is stale"), "{}", c.stdout);
    let fresh = p.cairn(&["explain", "c"]);
    assert!(fresh.stdout.contains("is fresh"), "{}", fresh.stdout);
    let status = p.cairn(&["status", "--set", "b.env.SUFFIX=two"]);
    assert!(status.stdout.contains("stale      b"), "{}", status.stdout);
    assert!(status.stdout.contains("fresh      a"), "{}", status.stdout);
}

#[test]
fn cycle_is_reported_with_location() {
    let p = Project::new(
        r#"
[stages.x]
kind = "command"
cmd = "cat {in.i} > {out.o}"
inputs = { i = "y.o" }
outputs = { o = "o" }

[stages.y]
kind = "command"
cmd = "cat {in.i} > {out.o}"
inputs = { i = "x.o" }
outputs = { o = "o" }
"#,
    );
    let r = p.cairn(&["status"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("cycle"), "{}", r.stderr);
    assert!(r.stderr.contains("x → y → x") || r.stderr.contains("y → x → y"), "{}", r.stderr);
    assert!(r.stderr.contains("pipeline.toml:"), "{}", r.stderr);
}

#[test]
fn type_errors_point_at_file_line_col() {
    let p = Project::new("[stages.a]\nkind = \"command\"\ncmd = 42\noutputs = { o = \"o\" }\n");
    let r = p.cairn(&["status"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("pipeline.toml:3:7"), "{}", r.stderr);
    assert!(r.stderr.contains("invalid type"), "{}", r.stderr);

    let p = Project::new("[stages.a]\nkind = \"comand\"\n");
    let r = p.cairn(&["status"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("pipeline.toml:2:8"), "{}", r.stderr);
    assert!(r.stderr.contains("did you mean `command`"), "{}", r.stderr);

    let p = Project::new("[stages.a]\nkind = \"command\"\ncmd = \"true\"\noutputs = { o = \"o\" }\nbogus = 1\n");
    let r = p.cairn(&["status"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("pipeline.toml:5:9"), "{}", r.stderr);

    let p = Project::new("[stages.a]\nkind = \"command\"\ncmd = \"cat {in.x} > {out.o}\"\ninputs = { x = \"nope.o\" }\noutputs = { o = \"o\" }\n");
    let r = p.cairn(&["status"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("`nope`, which is not a stage"), "{}", r.stderr);

    let r = Project::new(CHAIN).cairn(&["status", "--set", "b.env=3"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--set b.env=3"), "{}", r.stderr);
}

#[test]
fn concurrent_runs_wait_or_fail_cleanly() {
    let gate = common::Gate::new();
    let p = Project::new(&format!(
        r#"
[stages.slow]
kind = "command"
cmd = "{}; echo done > {{out.o}}"
outputs = {{ o = "o.txt" }}
"#,
        gate.hold()
    ));
    let mut first = p.cmd(&["run"]).stderr(Stdio::null()).spawn().unwrap();
    gate.wait_started();
    let refused = p.cairn(&["run", "--no-wait"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("locked by another cairn process"), "{}", refused.stderr);
    // status and inspect read without the lock.
    assert_eq!(p.cairn(&["status"]).code, 0);
    let (mut waiter, log) = gate.spawn_waiting(&p, &["run"]);
    gate.open();
    assert!(first.wait().unwrap().success());
    let code = waiter.wait().unwrap().code().unwrap_or(-1);
    let waited = common::Run { code, stdout: String::new(), stderr: std::fs::read_to_string(&log).unwrap() };
    assert_eq!(waited.code, 0, "{}", waited.stderr);
    assert_eq!(waited.outcome("slow").as_deref(), Some("cached"), "{}", waited.stderr);
}

#[test]
fn gc_keeps_what_is_referenced() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    assert_eq!(p.cairn(&["run", "--set", "b.env.SUFFIX=two"]).code, 0);
    let dry = p.cairn(&["gc", "--dry-run", "--keep-runs", "0"]);
    // Only b's "two" output is unreferenced: c counts the same bytes either way.
    assert!(dry.stdout.contains("would delete 1 object(s)"), "{}", dry.all());
    let gc = p.cairn(&["gc", "--keep-runs", "0"]);
    assert_eq!(gc.code, 0, "{}", gc.all());
    assert!(gc.stdout.contains("deleted 1 object(s)"), "{}", gc.stdout);
    let again = p.cairn(&["run"]);
    for s in ["a", "b", "c", "d"] {
        assert_eq!(again.outcome(s).as_deref(), Some("cached"), "{s}: {}", again.all());
    }
    // Keeping the last run keeps the superseded outputs too.
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run", "--set", "b.env.SUFFIX=two"]).code, 0);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let kept = p.cairn(&["gc", "--dry-run", "--keep-runs", "2"]);
    assert!(kept.stdout.contains("would delete 0 object(s)"), "{}", kept.stdout);
}

#[test]
fn the_default_cache_sits_beside_the_pipeline_file_wherever_cairn_runs() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    let sub = p.path().join("notebooks");
    std::fs::create_dir(&sub).unwrap();
    let run = |args: &[&str]| -> common::Run { p.cmd(args).current_dir(&sub).output().unwrap().into() };
    let again = run(&["-f", "../pipeline.toml", "run", "--json"]);
    assert!(common::statuses(&again).values().all(|s| s == "cached"), "{}", again.all());
    assert!(!sub.join("cache").exists(), "no second cache in the working directory");
    // A cache named on the command line is where it says, from the working directory.
    let own = run(&["-f", "../pipeline.toml", "--cache-dir", "scratch-cache", "run", "--json"]);
    assert!(common::statuses(&own).values().all(|s| s == "ran"), "{}", own.all());
    assert!(sub.join("scratch-cache").is_dir());
}

#[test]
fn a_stage_stale_for_want_of_the_last_run_s_flags_names_them() {
    let p = Project::new(CHAIN);
    let flag = r#"b.env.SUFFIX="a b""#;
    assert_eq!(p.cairn(&["run", "--set", flag]).code, 0);
    let hint = r#"ran with `--set 'b.env.SUFFIX="a b"'`, which this command lacks"#;
    let status = p.cairn(&["status"]);
    assert!(status.stderr.contains(hint), "{}", status.all());
    assert!(status.stderr.contains(r#"`cairn run --save-overrides --set 'b.env.SUFFIX="a b"'`"#), "{}", status.all());
    let inspect = p.cairn(&["inspect", "b"]);
    assert!(inspect.code != 0 && inspect.stderr.contains(hint), "{}", inspect.all());
    assert!(p.cairn(&["explain", "c"]).stderr.contains(hint));
    // With the flags, or once they are saved, all is fresh and nothing is said.
    let with = p.cairn(&["status", "--set", flag]);
    assert!(!with.all().contains("note:"), "{}", with.all());
    assert_eq!(p.cairn(&["run", "--save-overrides", "--set", flag]).code, 0);
    let saved = p.cairn(&["status"]);
    assert!(!saved.all().contains("note:") && !saved.stdout.contains("stale"), "{}", saved.all());
}

/// `cairn` in `p` against the cache at `cache`.
fn cairn_with(p: &Project, cache: &std::path::Path, args: &[&str]) -> common::Run {
    let mut all = vec!["--cache-dir", cache.to_str().unwrap()];
    all.extend_from_slice(args);
    p.cairn(&all)
}

/// A directory for a shared cache (`cache` in it), and two projects whose
/// stage `b` differs.
fn two_projects() -> (tempfile::TempDir, Project, Project) {
    let b = Project::new(&CHAIN.replace("SUFFIX = \"one\"", "SUFFIX = \"bee\""));
    (tempfile::tempdir().unwrap(), Project::new(CHAIN), b)
}

/// [`two_projects`], each run once on the shared cache (its path second).
fn two_projects_that_ran() -> (tempfile::TempDir, std::path::PathBuf, Project, Project) {
    let (shared, a, b) = two_projects();
    let cache = shared.path().join("cache");
    assert_eq!(cairn_with(&a, &cache, &["run"]).code, 0);
    assert_eq!(cairn_with(&b, &cache, &["run"]).code, 0);
    (shared, cache, a, b)
}

#[test]
fn projects_sharing_a_cache_keep_their_own_results_history_and_refs() {
    let (shared, a, b) = two_projects();
    let cache = shared.path().join("cache");
    assert_eq!(cairn_with(&a, &cache, &["run"]).code, 0);
    let first_b = cairn_with(&b, &cache, &["run"]);
    assert_eq!(first_b.outcome("a").as_deref(), Some("cached"), "a's result is b's hit: {}", first_b.all());
    assert_eq!(first_b.outcome("b").as_deref(), Some("ran"), "{}", first_b.all());
    assert_eq!(cairn_with(&a, &cache, &["run", "--set", "b.env.SUFFIX=two"]).code, 0);

    // Each project's history and `explain` are its own.
    assert_eq!(cairn_with(&a, &cache, &["runs"]).stdout.lines().count(), 2);
    assert_eq!(cairn_with(&b, &cache, &["runs"]).stdout.lines().count(), 1);
    let all = cairn_with(&b, &cache, &["runs", "--all-projects"]).stdout;
    let a_file = a.path().join("pipeline.toml").canonicalize().unwrap();
    assert_eq!(all.matches(&format!("    of {}", a_file.display())).count(), 2, "a's two runs, named: {all}");
    assert_eq!(all.lines().count(), 5, "{all}");
    let why = cairn_with(&b, &cache, &["explain", "b", "--set", "b.env.SUFFIX=three"]);
    assert!(why.stdout.contains("bee") && !why.stdout.contains("two"), "b compares with its own last run: {}", why.all());

    // gc in `a` keeps what `b` last ran, even without any run kept.
    let gc = cairn_with(&a, &cache, &["gc", "--keep-runs", "0"]);
    let b_file = b.path().join("pipeline.toml").canonicalize().unwrap();
    assert!(gc.stdout.contains("kept what 1 other project(s)") && gc.stdout.contains(b_file.to_str().unwrap()), "{}", gc.all());
    // Only a's "two" output goes: c counts the same bytes in every variant.
    assert!(gc.stdout.contains("deleted 1 object(s)"), "{}", gc.all());
    let again = cairn_with(&b, &cache, &["run", "--json"]);
    assert!(common::statuses(&again).values().all(|s| s == "cached"), "{}", again.all());

    // A project whose pipeline file is gone is kept for a while (see the
    // next test), then forgotten, and its results are no longer kept.
    drop(b);
    let gc = cairn_with(&a, &cache, &["gc", "--keep-runs", "0"]);
    assert!(gc.stdout.contains("deleted 0 object(s)") && gc.stdout.contains("kept what 1 project(s) whose pipeline file is gone"), "{}", gc.all());
    let gc = cairn_with(&a, &cache, &["gc", "--keep-runs", "0", "--forget-gone-after", "0"]);
    assert!(gc.stdout.contains("forgot 1 project(s) whose pipeline file is gone"), "{}", gc.all());
    assert!(gc.stdout.contains("deleted 1 object(s)"), "b's \"bee\" output goes: {}", gc.all());
    assert_eq!(std::fs::read_dir(cache.join("projects")).unwrap().count(), 1);

    // A project another machine recorded (a cache on a network
    // filesystem) cannot be looked for from here: it is kept.
    let three = cairn_with(&a, &cache, &["run", "--json", "--set", "b.env.SUFFIX=three"]);
    let keys = common::stages(&three);
    assert_eq!(cairn_with(&a, &cache, &["run"]).code, 0);
    let stages = serde_json::json!({"b": {"key": keys["b"].1}, "c": {"key": keys["c"].1}});
    let record = serde_json::json!({"pipeline": "/home/elsewhere/pipeline.toml", "host": "another-machine", "stages": stages});
    std::fs::write(cache.join("projects/elsewhere.json"), record.to_string()).unwrap();
    let gc = cairn_with(&a, &cache, &["gc", "--keep-runs", "0"]);
    assert!(gc.stdout.contains("deleted 0 object(s)") && gc.stdout.contains("/home/elsewhere/pipeline.toml (on another-machine, not checked from here)"), "{}", gc.all());

    // Until it is named: `--forget` drops its record and what was kept for it.
    let wrong = cairn_with(&a, &cache, &["gc", "--forget", "/home/nowhere/pipeline.toml"]);
    assert_eq!(wrong.code, 2, "{}", wrong.all());
    assert!(wrong.stderr.contains("no project sharing this cache has that pipeline file") && wrong.stderr.contains("/home/elsewhere/pipeline.toml"), "{}", wrong.all());
    let mine = cairn_with(&a, &cache, &["gc", "--forget", "pipeline.toml"]);
    assert!(mine.code == 2 && mine.stderr.contains("names this project"), "{}", mine.all());
    let gc = cairn_with(&a, &cache, &["gc", "--keep-runs", "0", "--forget", "/home/elsewhere/pipeline.toml"]);
    // Its b and c ("three" is longer than "one", so c's count differs).
    assert!(gc.stdout.contains("deleted 2 object(s)") && gc.stdout.contains("forgot 1 project(s) whose pipeline file is gone or that --forget named"), "{}", gc.all());
    assert!(!cache.join("projects/elsewhere.json").exists());
}

/// The record `cache/projects/*.json` of the project at `pipeline`.
fn project_record(cache: &std::path::Path, pipeline: &std::path::Path) -> (std::path::PathBuf, serde_json::Value) {
    for e in std::fs::read_dir(cache.join("projects")).unwrap().flatten() {
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        if record["pipeline"] == pipeline.to_str().unwrap() {
            return (e.path(), record);
        }
    }
    panic!("no record of {}", pipeline.display())
}

#[test]
fn a_project_whose_pipeline_file_is_gone_is_kept_for_a_grace_period() {
    let (_shared, cache, a, b) = two_projects_that_ran();
    let b_file = b.path().join("pipeline.toml").canonicalize().unwrap();
    let away = b.path().join("moved.toml");
    let gc = || cairn_with(&a, &cache, &["gc", "--keep-runs", "0"]);
    let kept = "kept what 1 project(s) whose pipeline file is gone";

    // Moved away: a dry run says it is kept, and notes nothing.
    std::fs::rename(&b_file, &away).unwrap();
    let dry = cairn_with(&a, &cache, &["gc", "--dry-run", "--keep-runs", "0"]);
    assert!(dry.stdout.contains("would delete 0 object(s)") && dry.stdout.contains(kept), "{}", dry.all());
    assert!(project_record(&cache, &b_file).1.get("gone_since").is_none());
    // The first gc that finds it gone keeps its results and notes when;
    // the next keeps that date.
    let first = gc();
    assert!(first.stdout.contains("deleted 0 object(s)") && first.stdout.contains(kept), "{}", first.all());
    let since = project_record(&cache, &b_file).1["gone_since"].as_str().expect("gone_since noted").to_string();
    assert!(first.stdout.contains(&format!("{} (gone since {since}; kept until ", b_file.display())), "{}", first.all());
    assert!(gc().stdout.contains(&format!("gone since {since};")));
    assert_eq!(project_record(&cache, &b_file).1["gone_since"], since.as_str());

    // Found back: live again, the note cleared.
    std::fs::rename(&away, &b_file).unwrap();
    let back = gc();
    assert!(back.stdout.contains("kept what 1 other project(s)") && !back.stdout.contains(kept), "{}", back.all());
    assert!(project_record(&cache, &b_file).1.get("gone_since").is_none());
    assert!(common::statuses(&cairn_with(&b, &cache, &["run", "--json"])).values().all(|s| s == "cached"));

    // Gone again, with a date no grace period can be added to, or a grace
    // period past the calendar's end: kept, no panic.
    std::fs::rename(&b_file, &away).unwrap();
    let (path, mut record) = project_record(&cache, &b_file);
    record["gone_since"] = "9999-12-31T23:59:59Z".into();
    std::fs::write(&path, record.to_string()).unwrap();
    let far = gc();
    assert!(far.code == 0 && far.stdout.contains(kept), "{}", far.all());
    record["gone_since"] = since.as_str().into();
    std::fs::write(&path, record.to_string()).unwrap();
    let far = cairn_with(&a, &cache, &["gc", "--keep-runs", "0", "--forget-gone-after", "4294967295"]);
    assert!(far.code == 0 && far.stdout.contains(kept), "{}", far.all());

    // Past its grace period: forgotten, its results collected.
    let (path, mut record) = project_record(&cache, &b_file);
    record["gone_since"] = "2026-01-01T00:00:00Z".into();
    std::fs::write(path, record.to_string()).unwrap();
    let late = gc();
    assert!(late.stdout.contains("forgot 1 project(s) whose pipeline file is gone") && late.stdout.contains("deleted 1 object(s)"), "{}", late.all());
    assert_eq!(std::fs::read_dir(cache.join("projects")).unwrap().count(), 1);
}

/// How many objects the store under `cache` holds.
fn object_count(cache: &std::path::Path) -> usize {
    std::fs::read_dir(cache.join("objects")).unwrap().flatten().map(|shard| std::fs::read_dir(shard.path()).unwrap().count()).sum()
}

#[test]
fn gc_deletes_nothing_while_a_record_it_cannot_read_may_name_what_to_keep() {
    let (_shared, cache, a, b) = two_projects_that_ran();
    // a's "two" output is then named only by a's second run record.
    assert_eq!(cairn_with(&a, &cache, &["run", "--set", "b.env.SUFFIX=two"]).code, 0);
    assert_eq!(cairn_with(&a, &cache, &["run"]).code, 0);
    let objects = object_count(&cache);
    let refused = |what: &std::path::Path| {
        for args in [&["gc", "--dry-run", "--keep-runs", "0"][..], &["gc"][..]] {
            let gc = cairn_with(&a, &cache, args);
            assert_eq!(gc.code, 3, "{args:?}: {}", gc.all());
            let named = gc.stderr.contains(&format!("gc cannot read 1 record(s) in the cache, so it cannot know what they keep, and deletes nothing:\n  {}: ", what.display()));
            assert!(named && gc.stderr.contains("move it out of the cache"), "{args:?}: {}", gc.all());
        }
        assert_eq!(object_count(&cache), objects, "nothing deleted");
    };

    // b's record cut short: whose it was cannot be known, so b's "bee"
    // output is not collected as if b had never run.
    let (record, _) = project_record(&cache, &b.path().join("pipeline.toml").canonicalize().unwrap());
    let whole = std::fs::read(&record).unwrap();
    std::fs::write(&record, &whole[..whole.len() / 2]).unwrap();
    refused(&record);
    // `cache verify` lists it with the rest of the cache's damage.
    let v = cairn_with(&a, &cache, &["cache", "verify"]);
    assert_eq!(v.code, 1, "{}", v.all());
    assert!(v.stdout.contains(&format!("damaged   record {}: ", record.display())) && v.stdout.contains("1 project or run record(s) damaged"), "{}", v.all());
    std::fs::write(&record, &whole).unwrap();

    // A run record that does not parse may be one of the newest runs.
    // (Its columns are stored uncompressed: the run's params are in it.)
    let set = b"b.env.SUFFIX=two";
    let named_two = |p: &std::path::PathBuf| std::fs::read(p).unwrap().windows(set.len()).any(|w| w == set);
    let two = std::fs::read_dir(cache.join("runs")).unwrap().flatten().map(|e| e.path()).find(named_two).expect("the run with SUFFIX=two");
    std::fs::write(&two, b"not parquet").unwrap();
    refused(&two);

    // Moved out of the cache, as the help says: gc goes on, and what only
    // that record named goes.
    std::fs::remove_file(&two).unwrap();
    let gc = cairn_with(&a, &cache, &["gc"]);
    assert!(gc.code == 0 && gc.stdout.contains("deleted 1 object(s)"), "{}", gc.all());

    // The project's own record is known by its name: damaged, it holds
    // nothing gc needs (a run rewrites it).
    let (mine, _) = project_record(&cache, &a.path().join("pipeline.toml").canonicalize().unwrap());
    std::fs::write(&mine, b"{").unwrap();
    let gc = cairn_with(&a, &cache, &["gc", "--dry-run"]);
    assert!(gc.code == 0 && gc.stdout.contains("would delete 0 object(s)"), "{}", gc.all());
}

#[test]
fn refs_of_a_cache_made_before_projects_were_recorded_are_read_then_replaced() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    // What cairn wrote before: the refs alone, in `refs.json`.
    let projects = p.cache().join("projects");
    let record = std::fs::read_dir(&projects).unwrap().next().unwrap().unwrap().path();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    std::fs::write(p.cache().join("refs.json"), v["stages"].to_string()).unwrap();
    std::fs::remove_dir_all(&projects).unwrap();
    let why = p.cairn(&["explain", "b", "--set", "b.env.SUFFIX=two"]);
    assert!(why.stdout.contains("one") && why.stdout.contains("two"), "{}", why.all());
    assert_eq!(p.cairn(&["run", "--set", "b.env.SUFFIX=two"]).code, 0);
    assert!(!p.cache().join("refs.json").exists() && projects.is_dir());
}

#[test]
fn verify_catches_nondeterminism() {
    let p = Project::new(
        r#"
[stages.stable]
kind = "command"
cmd = "echo same > {out.o}"
outputs = { o = "o.txt" }

[stages.noisy]
kind = "command"
cmd = "date +%s%N > {out.o}"
outputs = { o = "o.txt" }
"#,
    );
    assert_eq!(p.cairn(&["run"]).code, 0);
    let ok = p.cairn(&["verify", "stable"]);
    assert_eq!(ok.code, 0, "{}", ok.all());
    assert!(ok.stdout.contains("identical  stable"));
    let bad = p.cairn(&["verify"]);
    assert_eq!(bad.code, 1, "{}", bad.all());
    assert!(bad.stdout.contains("DIFFERS    noisy"), "{}", bad.stdout);
}

#[test]
fn failing_and_incomplete_stages_are_never_cached() {
    let p = Project::new(
        r#"
[stages.bad]
kind = "command"
cmd = "echo partial > {out.o}; echo 'boom: disk on fire' >&2; exit 3"
outputs = { o = "o.txt" }

[stages.lazy]
kind = "command"
cmd = "true"
outputs = { o = "o.txt" }

[stages.after]
kind = "command"
cmd = "cat {in.i} > {out.o}"
inputs = { i = "bad.o" }
outputs = { o = "o.txt" }
"#,
    );
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("boom: disk on fire"), "{}", r.stderr);
    assert!(r.stderr.contains("did not write declared output `o`"), "{}", r.stderr);
    assert_eq!(r.outcome("after").as_deref(), Some("skipped"));
    let again = p.cairn(&["run"]);
    assert_eq!(again.outcome("bad").as_deref(), Some("FAILED"), "{}", again.all());
}

/// SIGKILL from outside, as the kernel's out-of-memory killer sends it (to
/// the command itself, or to a program under it, which `sh` reports as
/// exit status 137), but sent by `kill`: the failure says the killer did
/// not send it (or, where the kernel's count cannot be read, names it as
/// the likely cause), with the peak memory and this machine's limit.
#[test]
fn a_stage_killed_from_outside_says_whether_the_out_of_memory_killer_did_it() {
    let p = Project::new(
        r#"
[stages.direct]
kind = "command"
cmd = "kill -9 $$"
outputs = { o = "o.txt" }

[stages.child]
kind = "command"
cmd = "sh -c 'kill -9 $$'; exit $?"
outputs = { o = "o.txt" }
"#,
    );
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("signal: 9 (SIGKILL)") && r.stderr.contains("exit status: 137"), "{}", r.stderr);
    // Where the kernel counts its kills, the hint knows this was not one.
    let said = match cairn::memory::oom_kills() == Default::default() {
        true => "help: SIGKILL came from outside cairn, most often from the kernel's out-of-memory killer",
        false => "help: SIGKILL came from outside cairn, and not from the kernel's out-of-memory killer, which killed nothing",
    };
    assert_eq!(r.stderr.matches(said).count(), 2, "{}", r.stderr);
    assert_eq!(r.stderr.matches("and this machine allows").count(), 2, "{}", r.stderr);
}

#[test]
fn a_failed_command_that_names_a_project_file_says_to_declare_it() {
    let p = Project::new(
        r#"
[stages.train]
kind = "command"
cmd = "sh scripts/train.sh data configs > {out.o}"
outputs = { o = "o.txt" }
"#,
    );
    p.write("scripts/train.sh", "echo trained\n");
    p.write("configs/a.toml", "");
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("help: the command runs in a scratch directory, without the project's `scripts/train.sh`, `configs`: declare each"), "{}", r.stderr);
    assert!(r.stderr.contains(r#"script = { file = "scripts/train.sh" }"#), "{}", r.stderr);
    // `data` names nothing in the project: no hint for a word that only looks like one.
    assert!(!r.stderr.contains("`data`"), "{}", r.stderr);
    // Run from elsewhere with `-f`, the files are still looked for beside the pipeline file.
    let elsewhere = tempfile::tempdir().unwrap();
    let file = p.path().join("pipeline.toml");
    let r: common::Run = p.cmd(&["-f", file.to_str().unwrap(), "run"]).current_dir(elsewhere.path()).output().unwrap().into();
    assert!(r.code == 1 && r.stderr.contains(r#"script = { file = "scripts/train.sh" }"#), "{}", r.all());
}

/// A project whose one stage, `read`, copies the file input written as
/// `data` (a TOML inline table) to its output.
fn reading(data: &str) -> Project {
    Project::new(&format!(
        "[stages.read]\nkind = \"command\"\ncmd = \"cat {{in.data}} > {{out.o}}\"\ninputs = {{ data = {data} }}\noutputs = {{ o = \"o.txt\" }}\n"
    ))
}

#[test]
fn external_inputs_are_hashed_by_content() {
    let p = reading(r#"{ file = "data/input.txt" }"#);
    let missing = p.cairn(&["run"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("data/input.txt does not exist"), "{}", missing.stderr);
    p.write("data/input.txt", "v1\n");
    assert_eq!(p.cairn(&["run"]).outcome("read").as_deref(), Some("ran"));
    assert_eq!(p.cairn(&["run"]).outcome("read").as_deref(), Some("cached"));
    p.write("data/input.txt", "v2\n");
    let r = p.cairn(&["explain", "read"]);
    assert!(r.stdout.contains("input `data` changed"), "{}", r.stdout);
    assert!(r.stdout.contains("(reads file data/input.txt)"), "explain says where the new bytes come from:\n{}", r.stdout);
    assert_eq!(p.cairn(&["run"]).outcome("read").as_deref(), Some("ran"));
}

#[test]
fn a_missing_file_names_its_fetch_command_and_cairn_does_not_run_it() {
    let p = reading(r#"{ file = "data/w.bin", fetch = "touch data/fetched && bash get-w.sh" }"#);
    let missing = p.cairn(&["run"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("data/w.bin does not exist"), "{}", missing.stderr);
    assert!(missing.stderr.contains("run `touch data/fetched && bash get-w.sh`"), "{}", missing.stderr);
    assert!(!p.path().join("data/fetched").exists(), "cairn ran the fetch command");
    let status = p.cairn(&["status"]);
    assert!(status.all().contains("get-w.sh"), "{}", status.all());
    p.write("data/w.bin", "w\n");
    assert_eq!(p.cairn(&["run"]).outcome("read").as_deref(), Some("ran"));
}

/// A directory written as an output is refused by its name, with a tar
/// command whose bytes depend only on the files: following it, a producer
/// that re-runs over the same files (their times changed) keeps the stage
/// after it cached.
#[test]
fn a_directory_output_is_refused_with_a_tar_command_that_keeps_early_cutoff() {
    let spec = |make: &str, n: u32| {
        format!(
            "[stages.d]\nkind = \"command\"\ncmd = \"mkdir -p dir && echo a > dir/a && touch -d @$N dir/a && {make}\"\nenv = {{ N = \"{n}\" }}\noutputs = {{ x = \"x\" }}\n\n\
             [stages.u]\nkind = \"command\"\ncmd = \"wc -c < {{in.t}} > {{out.o}}\"\ninputs = {{ t = \"d.x\" }}\noutputs = {{ o = \"o.txt\" }}\n"
        )
    };
    let p = Project::new(&spec("cp -r dir {out.x}", 1000));
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("declared output `x` is a directory, and an output must be a file"), "{}", r.all());
    let tar = "tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf {out.x} -C DIR .";
    assert!(r.stderr.contains(tar), "{}", r.all());
    p.write("pipeline.toml", &spec(&tar.replace("DIR", "dir"), 1000));
    assert_eq!(p.cairn(&["run"]).outcome("u").as_deref(), Some("ran"));
    p.write("pipeline.toml", &spec(&tar.replace("DIR", "dir"), 2000));
    let r = p.cairn(&["run"]);
    assert_eq!((r.outcome("d").as_deref(), r.outcome("u").as_deref()), (Some("ran"), Some("cached")), "{}", r.all());
}

/// Input files that no run can fetch are all named before anything runs,
/// each once: an upstream stage (minutes of training, in a real pipeline)
/// is not spent before the first stage that reads one fails.
#[test]
fn missing_input_files_are_all_named_before_anything_runs() {
    let p = Project::new(
        r#"
[stages.up]
kind = "command"
cmd = "echo up > {out.o}"
outputs = { o = "o.txt" }

[stages.a]
kind = "command"
cmd = "cat {in.u} {in.w} > {out.o}"
inputs = { u = "up.o", w = { file = "w.bin", fetch = "bash get-w.sh" } }
outputs = { o = "o.txt" }

[stages.b]
kind = "command"
cmd = "cat {in.d} {in.w} > {out.o}"
inputs = { d = { file = "data/d.txt" }, w = { file = "w.bin", fetch = "bash get-w.sh" } }
outputs = { o = "o.txt" }
"#,
    );
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stderr.contains("2 input files do not exist, so nothing ran"), "{}", r.all());
    assert!(r.stderr.contains("stage `a`: input file") && r.stderr.contains("run `bash get-w.sh`"), "{}", r.all());
    assert!(r.stderr.contains("stage `b`: input file") && r.stderr.contains("data/d.txt does not exist"), "{}", r.all());
    assert_eq!(r.stderr.matches("w.bin does not exist").count(), 1, "{}", r.all());
    assert_eq!(r.outcome("up"), None, "nothing ran:\n{}", r.all());
    // A dry run still says what would run and what is blocked.
    assert_eq!(p.cairn(&["run", "--dry-run"]).outcome("up").as_deref(), Some("would run"));
    // Targets that need none of the files run.
    assert_eq!(p.cairn(&["run", "up"]).outcome("up").as_deref(), Some("ran"));
    p.write("w.bin", "w\n");
    p.write("data/d.txt", "d\n");
    let r = p.cairn(&["run"]);
    assert_eq!((r.outcome("a").as_deref(), r.outcome("b").as_deref()), (Some("ran"), Some("ran")), "{}", r.all());
}

#[test]
fn independent_stages_run_in_parallel_with_jobs() {
    // Each of a and b marks that it started and finishes only once the
    // other has started too (or fails after 30 s): both must run at once.
    let sig = tempfile::tempdir().unwrap();
    let mark = |s: &str| sig.path().join(s).display().to_string();
    let meet = |me: &str, other: &str| {
        format!(
            "touch {}; i=0; while [ ! -e {} ] && [ $i -lt 1500 ]; do sleep 0.02; i=$((i+1)); done; [ -e {} ] && echo {me} > {{out.o}}",
            mark(me),
            mark(other),
            mark(other)
        )
    };
    let p = Project::new(&format!(
        r#"
[stages.a]
kind = "command"
cmd = "{}"
outputs = {{ o = "o.txt" }}

[stages.b]
kind = "command"
cmd = "{}"
outputs = {{ o = "o.txt" }}

[stages.c]
kind = "command"
cmd = "cat {{in.x}} {{in.y}} > {{out.o}}"
inputs = {{ x = "a.o", y = "b.o" }}
outputs = {{ o = "o.txt" }}
"#,
        meet("a", "b"),
        meet("b", "a")
    ));
    let r = p.cairn(&["run", "-j", "2"]);
    assert_eq!(r.code, 0, "a and b did not run at the same time: {}", r.all());
    assert_eq!(p.read_artifact("c", "o.txt"), "a\nb\n");
}

#[test]
fn a_stage_waiting_for_a_slot_is_served_by_a_twin_that_ran_meanwhile() {
    // `x` and `y` are the same computation (a key leaves the stage's name
    // out): with one job `y` waits while `x` runs, then finds its entry.
    let twin = "kind = \"command\"\ncmd = \"sleep 0.2; echo same > {out.o}\"\noutputs = { o = \"o.txt\" }\n";
    let p = Project::new(&format!("[stages.x]\n{twin}\n[stages.y]\n{twin}"));
    let r = p.cairn(&["run", "-j", "1"]);
    assert_eq!((r.outcome("x").as_deref(), r.outcome("y").as_deref()), (Some("ran"), Some("cached")), "{}", r.all());
    assert_eq!(p.read_artifact("y", "o.txt"), "same\n");
}

#[test]
fn an_input_damaged_after_its_producer_was_served_sends_the_producer_back_first() {
    // `spoil` overwrites a's object in the cache once `a` has run; `c`
    // reads a's output after `spoil`, finds it damaged as it starts, and
    // waits for `a` to run again rather than read damaged bytes.
    let p = Project::new("");
    let cache = p.cache().display().to_string();
    p.write(
        "pipeline.toml",
        &format!(
            r#"
[stages.a]
kind = "command"
cmd = "echo apple > {{out.o}}"
outputs = {{ o = "o.txt" }}

[stages.spoil]
kind = "command"
cmd = "grep -rlx apple {cache}/objects | while read f; do chmod u+w $f; echo rotten > $f; done; echo spoilt > {{out.o}}"
outputs = {{ o = "o.txt" }}

[stages.c]
kind = "command"
cmd = "cat {{in.x}} {{in.y}} > {{out.o}}"
inputs = {{ x = "a.o", y = "spoil.o" }}
outputs = {{ o = "o.txt" }}
"#
        ),
    );
    let r = p.cairn(&["run", "-j", "1"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("output `a.o` in the cache is damaged; re-running `a`"), "{}", r.all());
    assert_eq!(r.outcome("c").as_deref(), Some("ran"));
    assert_eq!(p.read_artifact("c", "o.txt"), "apple\nspoilt\n");
    let again = p.cairn(&["run"]);
    assert!(["a", "spoil", "c"].iter().all(|s| again.outcome(s).as_deref() == Some("cached")), "{}", again.all());
}

#[test]
fn checksum_mismatch_is_a_clear_error() {
    let p = reading(&format!(r#"{{ file = "data.bin", sha256 = "{}" }}"#, "0".repeat(64)));
    p.write("data.bin", "not what was published\n");
    let r = p.cairn(&["run"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("checksum mismatch for"), "{}", r.stderr);
    assert!(r.stderr.contains("data.bin"), "{}", r.stderr);
    // Still refused the second time: a bad file is never remembered as good.
    assert!(p.cairn(&["run"]).stderr.contains("checksum mismatch"));
}

#[test]
fn saved_overrides_apply_to_later_commands() {
    let p = Project::new(CHAIN);
    let r = p.cairn(&["run", "--save-overrides", "--set", "b.env.SUFFIX=two"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("saved --set b.env.SUFFIX=two to"), "{}", r.all());
    assert_eq!(p.read_artifact("b", "text.txt"), "hello\ntwo\n");
    // The same flags again (`make run` twice): nothing new to save or say.
    let again = p.cairn(&["run", "--save-overrides", "--set", "b.env.SUFFIX=two"]);
    assert!(!again.stderr.contains("saved") && again.stderr.contains("using cairn.local.toml"), "{}", again.all());
    // status sees the pipeline the last run used, and says why.
    let s = p.cairn(&["status"]);
    assert!(s.stdout.contains("fresh      b"), "{}", s.all());
    assert!(s.stderr.contains("cairn.local.toml") && s.stderr.contains("b.env.SUFFIX=two"), "{}", s.all());
    // A flag on the command line wins over the saved one.
    let e = p.cairn(&["explain", "b", "--set", "b.env.SUFFIX=three"]);
    assert!(e.stdout.contains("SUFFIX"), "{}", e.all());
    // A plain run keeps using them; saving nothing clears them.
    assert_eq!(p.cairn(&["run"]).outcome("b").as_deref(), Some("cached"));
    assert_eq!(p.cairn(&["run", "--save-overrides"]).outcome("b").as_deref(), Some("ran"));
    assert_eq!(p.read_artifact("b", "text.txt"), "hello\none\n");
    // A damaged file is named, with the way out.
    std::fs::write(p.path().join("cairn.local.toml"), b"set = [\xff]").unwrap();
    let bad = p.cairn(&["status"]);
    assert_eq!(bad.code, 2, "{}", bad.all());
    assert!(bad.stderr.contains("cairn.local.toml is not valid: not UTF-8 text") && bad.stderr.contains("delete it"), "{}", bad.all());
}

/// A run with `--save-overrides --set X` applies X from the command line
/// and from the file it has just written: the run records it once.
#[test]
fn a_saved_flag_given_again_is_recorded_once() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run", "--save-overrides", "--set", "b.env.SUFFIX=two"]).code, 0);
    std::fs::remove_file(p.path().join("cairn.local.toml")).unwrap();
    let s = p.cairn(&["status"]);
    assert!(s.stderr.contains("ran with `--set b.env.SUFFIX=two`, which"), "{}", s.all());
}

/// `build.rs` links `cairn` at a fixed address on Linux (no start-up
/// relocations; BENCHMARKS.md, "Startup") unless built with `CAIRN_PIE=1`.
#[cfg(target_os = "linux")]
#[test]
fn the_binary_is_linked_position_dependent() {
    use std::io::Read;
    let mut header = [0u8; 18];
    std::fs::File::open(env!("CARGO_BIN_EXE_cairn")).and_then(|mut f| f.read_exact(&mut header)).expect("the cairn binary");
    assert_eq!(&header[..4], b"\x7fELF");
    let e_type = u16::from_le_bytes([header[16], header[17]]);
    let (want, what) = match option_env!("CAIRN_PIE") {
        Some("1") => (3, "a PIE (ET_DYN), as CAIRN_PIE=1 asks"),
        _ => (2, "position-dependent (ET_EXEC)"),
    };
    assert_eq!(e_type, want, "cairn should be {what}");
}

/// A log (stderr not a terminal) hears from a stage that reports nothing,
/// at the interval `CAIRN_HEARTBEAT` sets; a bad interval is named.
#[test]
fn a_silent_stage_gets_heartbeats_in_a_log() {
    let p = Project::new("[stages.quiet]\nkind = \"command\"\ncmd = \"sleep 1.2; echo done > {out.o}\"\noutputs = { o = \"o.txt\" }\n");
    let r: common::Run = p.cmd(&["run"]).env("CAIRN_HEARTBEAT", "0.25").output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    let beats = r.stderr.lines().filter(|l| l.starts_with("  quiet        running for ") && l.ends_with("no progress reported yet")).count();
    assert!((2..=6).contains(&beats), "one line every 0.25 s of a 1.2 s stage:\n{}", r.stderr);

    let r: common::Run = p.cmd(&["run", "--force", "quiet"]).env("CAIRN_HEARTBEAT", "soon").output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("warning: CAIRN_HEARTBEAT=soon is not a positive number of seconds; heartbeats come every 30s"), "{}", r.stderr);
    assert_eq!(r.stderr.matches("CAIRN_HEARTBEAT=soon").count(), 1, "warned once:\n{}", r.stderr);
    assert!(!r.stderr.contains("running for"), "30 s never pass in 1.2 s:\n{}", r.stderr);
}

/// `cairn inspect` of a text output shows its first lines (`--rows` of
/// them), of a binary one its size.
#[test]
fn inspect_shows_the_first_lines_of_a_text_output() {
    let p = Project::new(
        r#"
[stages.t]
kind = "command"
cmd = "seq 1 100 > {out.csv}; printf 'a\\000b' > {out.bin}"
outputs = { csv = "n.csv", bin = "x.bin" }
"#,
    );
    assert_eq!(p.cairn(&["run"]).code, 0);
    let text = p.cairn(&["inspect", "t.csv", "--rows", "3"]);
    assert!(text.stdout.contains("file (text)") && text.stdout.contains("  | 1\n  | 2\n  | 3\n  … (--rows N"), "{}", text.all());
    assert!(!text.stdout.contains("| 4"), "{}", text.all());
    assert!(p.cairn(&["inspect", "t.bin"]).stdout.contains("file (binary)  (3 B,"));
    let json: serde_json::Value = serde_json::from_str(&p.cairn(&["inspect", "t.csv", "--json", "--rows", "2"]).stdout).unwrap();
    assert_eq!(json["text"], serde_json::json!({"first_lines": ["1", "2"], "more": true}));
}

/// `cairn inspect` of a model output: its header's metadata, counts and
/// tensors without libtorch; a damaged one is named; `--grid` is refused
/// for anything but a tensor.
#[test]
fn inspect_shows_a_model_from_its_header_and_names_a_damaged_one() {
    let p = Project::new(
        r#"
[stages.m]
kind = "command"
cmd = "cp {in.w} {out.model}"
inputs = { w = { file = "w.safetensors" } }
outputs = { model = "model.safetensors" }

[stages.bad]
kind = "command"
cmd = "echo junk > {out.model}"
outputs = { model = "model.safetensors" }
"#,
    );
    let head = r#"{"__metadata__":{"cairn.model":"{\"arch\":\"fast\"}"},"fc.bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"fc.weight":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]}}"#;
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(head.as_bytes());
    bytes.extend_from_slice(&[0; 20]);
    std::fs::write(p.path().join("w.safetensors"), &bytes).unwrap();
    assert_eq!(p.cairn(&["run"]).code, 0);

    let shown = p.cairn(&["inspect", "m.model"]);
    assert_eq!(shown.code, 0, "{}", shown.all());
    assert!(shown.stdout.starts_with("model (safetensors): 2 tensors, 8 values (BF16 6, F32 2)"), "{}", shown.all());
    assert!(shown.stdout.contains(r#"cairn.model = {"arch":"fast"}"#), "{}", shown.all());
    assert!(shown.stdout.contains("fc.weight") && shown.stdout.contains("[2, 3]"), "{}", shown.all());
    let first = p.cairn(&["inspect", "m.model", "--rows", "1"]);
    assert!(first.stdout.contains("fc.bias") && !first.stdout.contains("fc.weight ") && first.stdout.contains("… 1 more"), "{}", first.all());
    let json: serde_json::Value = serde_json::from_str(&p.cairn(&["inspect", "m.model", "--json"]).stdout).unwrap();
    assert_eq!((json["type"].as_str(), json["values"].as_u64()), (Some("model"), Some(8)));
    assert_eq!(json["tensors"]["fc.weight"]["shape"], serde_json::json!([2, 3]));

    let damaged = p.cairn(&["inspect", "bad.model"]);
    assert_eq!(damaged.code, 1, "{}", damaged.all());
    assert!(damaged.stderr.contains("not a valid safetensors file"), "{}", damaged.all());
    let grid = p.cairn(&["inspect", "m.model", "--grid", "g.png"]);
    assert_eq!(grid.code, 2, "{}", grid.all());
    assert!(grid.stderr.contains("is a model, not a tensor"), "{}", grid.all());
    assert!(!p.path().join("g.png").exists());
}
