//! Robustness of the `cairn` command line at its edges: a closed stdout,
//! pipelines that are wrong in small ways, a damaged run history, and
//! what `--dry-run` promises. Each test runs the real binary.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use common::Project;

/// a → b → c: every stage reads the one before.
const CHAIN: &str = r#"
[stages.a]
kind = "command"
cmd = "echo hello > {out.text}"
outputs = { text = "a.txt" }

[stages.b]
kind = "command"
cmd = "cat {in.src} > {out.text}"
inputs = { src = "a.text" }
outputs = { text = "b.txt" }

[stages.c]
kind = "command"
cmd = "wc -c < {in.src} > {out.count}"
inputs = { src = "b.text" }
outputs = { count = "count.txt" }
"#;

/// `cairn <args> | head -0`: the reader is gone before cairn writes a byte.
/// cairn must end quietly (by SIGPIPE, as `cat` does), not panic.
#[test]
fn closed_stdout_pipe_ends_every_subcommand_quietly() {
    let p = Project::new(CHAIN);
    assert_eq!(p.cairn(&["run"]).code, 0);
    assert_eq!(p.cairn(&["run", "--force", "a"]).code, 0);
    let commands: [&[&str]; 9] = [
        &["status"],
        &["status", "--json"],
        &["dag"],
        &["explain", "b"],
        &["runs"],
        &["diff"],
        &["inspect", "a"],
        &["run", "--dry-run", "--json"],
        &["run", "--json"],
    ];
    for args in commands {
        let mut child = p.cmd(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("cairn starts");
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("cairn ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "cairn {args:?} panicked on a closed pipe:\n{stderr}");
        assert!(
            out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
            "cairn {args:?} ended with {:?}:\n{stderr}",
            out.status
        );
    }
}

#[test]
fn duplicate_output_file_names_are_refused_at_load() {
    let p = Project::new(
        r#"
[stages.dup]
kind = "command"
cmd = "echo one > {out.a}; echo two > {out.b}"
outputs = { a = "x.txt", b = "x.txt" }
"#,
    );
    for args in [&["status"][..], &["run"]] {
        let r = p.cairn(args);
        assert_eq!(r.code, 2, "cairn {args:?}: {}", r.all());
        for want in ["pipeline.toml:5:", "stage `dup`", "`a`", "`b`", "`x.txt`", "help: give each output its own file name"] {
            assert!(r.stderr.contains(want), "cairn {args:?}: wanted {want:?} in:\n{}", r.stderr);
        }
    }
    assert!(!p.path().join("artifacts").exists(), "nothing ran");
    // Names that differ only in case are one file on macOS and Windows.
    let p = Project::new(&CHAIN.replace("outputs = { text = \"a.txt\" }", "outputs = { text = \"a.txt\", other = \"A.TXT\" }"));
    let r = p.cairn(&["status"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("differ only in case"), "{}", r.stderr);
}

/// Stages of the `train` kind are only checked here (loading a pipeline
/// needs no libtorch), fed by a command stage.
const TRAIN: &str = r#"
[stages.data]
kind = "command"
cmd = "true > {out.x}"
outputs = { x = "x.arrow" }

[stages.pre]
kind = "train"
model = { arch = "fast" }
inputs = { train_images = "data.x", train_labels = "data.x", val_images = "data.x", val_labels = "data.x" }

[stages.ft]
kind = "train"
model = { arch = "fast" }
init = { stage = "pre.model" }
inputs = { train_images = "data.x", train_labels = "data.x", val_images = "data.x", val_labels = "data.x" }
"#;

/// Loads `text`, expects it refused, and checks the error names `shown`
/// (not a parent, not the key twice) at the line holding `line_of`.
fn refused_naming(text: &str, extra: &[&str], shown: &str, line_of: &str) {
    let p = Project::new(text);
    let mut args = vec!["dag"];
    args.extend_from_slice(extra);
    let r = p.cairn(&args);
    assert_eq!(r.code, 2, "{shown}: {}", r.all());
    assert!(r.stderr.contains(&format!("`{shown}`")), "wanted `{shown}` in:\n{}", r.stderr);
    let last = shown.rsplit('.').next().unwrap();
    assert!(!r.stderr.contains(&format!("{last}.{last}")), "`{last}` named twice:\n{}", r.stderr);
    let at = if line_of.starts_with("--set") {
        line_of.to_string()
    } else {
        let line = text.lines().position(|l| l.contains(line_of)).expect("marker line") + 1;
        format!("pipeline.toml:{line}:")
    };
    assert!(r.stderr.contains(&at), "{shown}: wanted it at {at} in:\n{}", r.stderr);
}

#[test]
fn unknown_key_is_reported_under_its_own_name() {
    // Top level and `[pipeline]`.
    refused_naming(&format!("bogus = 1\n{CHAIN}"), &[], "bogus", "bogus");
    refused_naming(&format!("[pipeline]\nname = \"x\"\nnmae = \"y\"\n{CHAIN}"), &[], "pipeline.nmae", "nmae");
    // A stage table, directly and through `--set`.
    refused_naming(&CHAIN.replace("[stages.b]\n", "[stages.b]\ncmdd = \"x\"\n"), &[], "cmdd", "cmdd");
    refused_naming(CHAIN, &["--set", "b.cmdd=1"], "cmdd", "--set b.cmdd=1");
    // A file input table.
    let file_input = CHAIN.replace("inputs = { src = \"a.text\" }", "inputs = { src = { file = \"in.txt\", sah256 = \"00\" } }");
    refused_naming(&file_input, &[], "sah256", "sah256");
    // Nested params: a strict table, and one the kind reads loosely (an
    // untagged `init`), where the key used to be dropped without a word.
    let nested = TRAIN.replace("model = { arch = \"fast\" }\ninit", "model = { arch = \"fast\", nmu_classes = 10 }\ninit");
    refused_naming(&nested, &[], "model.nmu_classes", "nmu_classes");
    let loose = TRAIN.replace("init = { stage = \"pre.model\" }", "init = { stage = \"pre.model\", sha265 = \"00\" }");
    refused_naming(&loose, &[], "init.sha265", "sha265");
}

#[test]
fn a_param_written_at_its_default_is_accepted() {
    // `keep`, `freeze_bn` and `augment.crop` are left out of the canonical
    // params at their defaults (so adding them kept old keys); writing
    // the default out is still a param the kind reads, not an unknown one.
    for (at, line) in [("init = { stage = \"pre.model\" }\n", "keep = \"best\""), ("init = { stage = \"pre.model\" }\n", "freeze_bn = false"), ("init = { stage = \"pre.model\" }\n", "augment = { flip = true, crop = 0 }")] {
        let text = TRAIN.replace(at, &format!("{at}{line}\n"));
        let r = Project::new(&text).cairn(&["dag"]);
        assert_eq!(r.code, 0, "{line}: {}", r.all());
    }
    refused_naming(&TRAIN.replace("init = { stage = \"pre.model\" }\n", "init = { stage = \"pre.model\" }\nkepp = \"best\"\n"), &[], "kepp", "kepp");
}

/// Runs that record history: the first, then two more forced ones.
fn project_with_runs(n: usize) -> (Project, Vec<String>) {
    let p = Project::new(CHAIN);
    for i in 0..n {
        let args: &[&str] = if i == 0 { &["run"] } else { &["run", "--force", "a"] };
        assert_eq!(p.cairn(args).code, 0);
    }
    let mut ids: Vec<String> = std::fs::read_dir(p.cache().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".parquet").to_string())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), n, "each run is recorded");
    (p, ids)
}

#[test]
fn damaged_run_record_is_skipped_by_runs_and_diff() {
    let (p, ids) = project_with_runs(4);
    let file = |id: &str| p.cache().join("runs").join(format!("{id}.parquet"));
    // Garbage, a torn file, and an empty one.
    std::fs::write(file(&ids[3]), b"this is not parquet").unwrap();
    let bytes = std::fs::read(file(&ids[2])).unwrap();
    std::fs::write(file(&ids[2]), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(file(&ids[1]), b"").unwrap();

    let runs = p.cairn(&["runs"]);
    assert_eq!(runs.code, 0, "{}", runs.all());
    assert!(runs.stdout.contains(&ids[0]), "the readable run is listed:\n{}", runs.stdout);
    for id in &ids[1..] {
        assert!(runs.stderr.contains(&format!("warning: skipping damaged run record {id}")), "{}", runs.stderr);
        assert!(!runs.stdout.contains(id.as_str()), "{}", runs.stdout);
    }

    // Three damaged, one readable: nothing to compare, said plainly.
    let diff = p.cairn(&["diff"]);
    assert_eq!(diff.code, 2, "{}", diff.all());
    assert!(diff.stderr.contains("need two readable recorded runs"), "{}", diff.stderr);
    assert!(!diff.stderr.contains("panicked"), "{}", diff.stderr);

    // Readable runs around damaged ones are compared, the damaged skipped.
    let (p, ids) = project_with_runs(3);
    std::fs::write(p.cache().join("runs").join(format!("{}.parquet", ids[2])), b"garbage").unwrap();
    let diff = p.cairn(&["diff"]);
    assert_eq!(diff.code, 0, "{}", diff.all());
    assert!(diff.stderr.contains(&format!("warning: skipping damaged run record {}", ids[2])), "{}", diff.stderr);
    let header = diff.stdout.lines().next().unwrap_or_default();
    assert!(header.contains(&ids[0]) && header.contains(&ids[1]), "compares the two readable runs: {header}");
    // A damaged run asked for by name cannot be compared: an I/O error.
    let named = p.cairn(&["diff", &ids[2], &ids[0]]);
    assert_eq!(named.code, 3, "{}", named.all());
    assert!(named.stderr.contains("is damaged"), "{}", named.stderr);
}

#[test]
fn dry_run_on_a_chain_counts_every_stage_that_would_run() {
    let p = Project::new(CHAIN);
    let r = p.cairn(&["run", "--dry-run"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("dry run: 3 would run, 0 cached"), "{}", r.stderr);
    for s in ["a", "b", "c"] {
        assert_eq!(r.outcome(s).as_deref(), Some("would run"), "{s}: {}", r.stderr);
    }
    let j = p.cairn(&["run", "--dry-run", "--json"]);
    assert_eq!(j.code, 0, "{}", j.all());
    let report: serde_json::Value = serde_json::from_str(&j.stdout).expect("JSON on stdout");
    let statuses: Vec<(&str, &str)> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("a", "would_run"), ("b", "would_run"), ("c", "would_run")]);
    assert!(!p.path().join("artifacts").exists(), "a dry run runs nothing");
    // Once `a` is cached, the rest would still run: 2 would run, 1 cached.
    assert_eq!(p.cairn(&["run", "a"]).code, 0);
    let r = p.cairn(&["run", "--dry-run"]);
    assert!(r.stderr.contains("dry run: 2 would run, 1 cached"), "{}", r.stderr);
}

/// Every file cairn keeps for a project, relative to it: the cache's, the
/// lock and the artifacts' record (the artifacts themselves are the
/// cache's objects, hard-linked).
fn kept_files(p: &Project) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut out = vec![p.path().join("cairn.lock"), p.path().join("artifacts/.cairn-artifacts.json")];
    walk(&p.cache(), &mut out);
    out.into_iter().map(|f| f.strip_prefix(p.path()).unwrap().to_path_buf()).collect()
}

/// One way of damaging a file.
type Harm = dyn Fn(&std::path::Path);

#[test]
fn any_kept_file_damaged_any_way_is_an_error_or_a_repair_never_a_panic() {
    let base = Project::new(CHAIN);
    assert_eq!(base.cairn(&["run"]).code, 0);
    assert_eq!(base.cairn(&["run", "--force", "a"]).code, 0);
    let files = kept_files(&base);
    assert!(files.iter().any(|f| f.starts_with("cache/runs")) && files.iter().any(|f| f.starts_with("cache/projects")), "{files:?}");
    let cut_short = |f: &std::path::Path| {
        let bytes = std::fs::read(f).unwrap();
        std::fs::write(f, &bytes[..bytes.len() / 2]).unwrap();
    };
    let replaced_by_a_directory = |f: &std::path::Path| {
        std::fs::remove_file(f).unwrap();
        std::fs::create_dir_all(f.join("inside")).unwrap();
    };
    let damage: [(&str, &Harm); 5] = [
        ("emptied", &|f| std::fs::write(f, b"").unwrap()),
        ("cut short", &cut_short),
        ("overwritten with garbage", &|f| std::fs::write(f, b"\x00\xff{[not what it was").unwrap()),
        ("overwritten with JSON null", &|f| std::fs::write(f, b"null").unwrap()),
        ("replaced by a directory", &replaced_by_a_directory),
    ];
    let commands: [&[&str]; 9] = [&["run"], &["status"], &["explain", "c"], &["inspect", "c"], &["runs"], &["diff"], &["gc", "--dry-run"], &["gc"], &["cache", "verify"]];
    for rel in &files {
        for (how, harm) in &damage {
            let p = Project::new(CHAIN);
            let copied = std::process::Command::new("cp").arg("-a").arg(base.path().join(".")).arg(p.path()).status().unwrap();
            assert!(copied.success());
            harm(&p.path().join(rel));
            for args in commands {
                let r = p.cairn(args);
                let clean = (0..=3).contains(&r.code) && !r.stderr.contains("panicked");
                assert!(clean, "{} {how}: `cairn {}` exited {}:\n{}", rel.display(), args.join(" "), r.code, r.all());
            }
        }
    }
}
