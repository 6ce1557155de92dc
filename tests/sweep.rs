//! `cairn run --sweep` through the binary, with `command` stages: the grid
//! runs as one run that shares what the points agree on, each point's
//! stages are keyed as a plain `--set` run of that point (so such a run
//! afterwards executes nothing), targets name the declared stages, and
//! `runs` and `diff` show the points as one table. Bad flags fail before
//! anything runs.

mod common;

use std::collections::BTreeMap;

use common::{statuses, Project};

/// `gen` feeds `scale` (swept through its env, whose values are TOML
/// strings: `--sweep 'scale.env.K="1","2"'`) which feeds `fmt`; `side`
/// reads nothing.
const PIPELINE: &str = r#"
[pipeline]
name = "sweep"

[stages.gen]
kind = "command"
cmd = "seq 1 100 > {out.n}"
outputs = { n = "n.txt" }

[stages.scale]
kind = "command"
cmd = "awk -v k=$K '{ s += $1 * k } END { print s }' {in.n} > {out.s}"
env = { K = "1" }
inputs = { n = "gen.n" }
outputs = { s = "s.txt" }

[stages.fmt]
kind = "command"
cmd = "echo total $(cat {in.s}) > {out.t}"
inputs = { s = "scale.s" }
outputs = { t = "t.txt" }

[stages.side]
kind = "command"
cmd = "echo side > {out.x}"
outputs = { x = "x.txt" }
"#;

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn a_sweep_shares_upstream_stages_and_keys_each_point_as_a_plain_run() {
    let p = Project::new(PIPELINE);
    let r = p.cairn(&["run", "--json", "--sweep", r#"scale.env.K="1","2","3""#]);
    assert_eq!(r.code, 0, "{}", r.all());
    let want = [("gen", "ran"), ("side", "ran"), ("scale@1", "ran"), ("scale@2", "ran"), ("scale@3", "ran"), ("fmt@1", "ran"), ("fmt@2", "ran"), ("fmt@3", "ran")];
    assert_eq!(statuses(&r), expect(&want), "{}", r.all());
    assert_eq!(p.read_artifact("fmt@2", "t.txt"), "total 10100\n");
    assert_eq!(p.read_artifact("fmt@3", "t.txt"), "total 15150\n");

    // Each point is the pipeline with that point's --set: nothing re-runs.
    let r = p.cairn(&["run", "--json", "--set", r#"scale.env.K="2""#]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(statuses(&r).values().all(|s| s == "cached"), "{}", r.all());

    // A second sweep re-runs only its new point.
    let r = p.cairn(&["run", "--json", "--sweep", r#"scale.env.K="3","4""#]);
    assert_eq!(r.code, 0, "{}", r.all());
    let want = [("gen", "cached"), ("side", "cached"), ("scale@1", "cached"), ("scale@2", "ran"), ("fmt@1", "cached"), ("fmt@2", "ran")];
    assert_eq!(statuses(&r), expect(&want), "{}", r.all());
}

#[test]
fn runs_and_diff_show_the_points_as_one_table() {
    let p = Project::new(PIPELINE);
    let r = p.cairn(&["run", "--sweep", r#"scale.env.K="1","2""#, "--sweep", r#"fmt.env.X="a","b""#]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("sweep: 4 points, 2 stages shared"), "{}", r.stderr);
    // The grid varies the last flag fastest; fmt differs in every point,
    // scale only between K values.
    for (stage, text) in [("fmt@1", "total 5050\n"), ("fmt@4", "total 10100\n")] {
        assert_eq!(p.read_artifact(stage, "t.txt"), text, "{stage}");
    }
    let table_rows = |text: &str| -> Vec<Vec<String>> {
        let cells = text.lines().map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>());
        cells.filter(|c| c.len() == 4 && c[0].parse::<usize>().is_ok()).collect()
    };
    let want = vec![vec!["1", "\"1\"", "\"a\"", "ran"], vec!["2", "\"1\"", "\"b\"", "ran"], vec!["3", "\"2\"", "\"a\"", "ran"], vec!["4", "\"2\"", "\"b\"", "ran"]];
    assert_eq!(table_rows(&r.stderr), want, "the run ends with the table:\n{}", r.stderr);

    let runs = p.cairn(&["runs"]);
    assert!(runs.stdout.contains("point  scale.env.K  fmt.env.X  status"), "{}", runs.stdout);
    let diff = p.cairn(&["diff"]);
    assert_eq!(diff.code, 0, "{}", diff.all());
    assert_eq!(table_rows(&diff.stdout), want, "{}", diff.stdout);
    let md = p.cairn(&["diff", "--format", "markdown"]);
    assert!(md.stdout.starts_with("| point | scale.env.K | fmt.env.X | status |\n| --- |"), "{}", md.stdout);
    let json = p.cairn(&["runs", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v[0]["sweep"][3], serde_json::json!([["scale.env.K", "\"2\""], ["fmt.env.X", "\"b\""]]));

    // The same sweep again: every stage hits, no run is recorded, and the
    // table is still printed.
    let again = p.cairn(&["run", "--sweep", r#"scale.env.K="1","2""#, "--sweep", r#"fmt.env.X="a","b""#]);
    assert_eq!(again.code, 0, "{}", again.all());
    let cached: Vec<Vec<String>> = want.iter().map(|r| r.iter().map(|c| c.replace("ran", "cached")).collect()).collect();
    assert_eq!(table_rows(&again.stderr), cached, "an all-cached sweep ends with its table too:\n{}", again.stderr);
    assert_eq!(p.cairn(&["runs", "--json"]).stdout, json.stdout, "and records no run");
}

#[test]
fn targets_and_force_name_declared_stages() {
    let p = Project::new(PIPELINE);
    let r = p.cairn(&["run", "--json", "fmt", "--sweep", r#"scale.env.K="5","6""#]);
    assert_eq!(r.code, 0, "{}", r.all());
    let want = [("gen", "ran"), ("scale@1", "ran"), ("scale@2", "ran"), ("fmt@1", "ran"), ("fmt@2", "ran")];
    assert_eq!(statuses(&r), expect(&want), "`side` is not an ancestor of fmt:\n{}", r.all());
    let r = p.cairn(&["run", "--json", "--force", "scale", "--sweep", r#"scale.env.K="5","6""#, "-j", "1"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let s = statuses(&r);
    assert_eq!((s["scale@1"].as_str(), s["scale@2"].as_str(), s["gen"].as_str()), ("ran", "ran", "cached"), "{}", r.all());
}

#[test]
fn bad_sweeps_fail_before_anything_runs() {
    let p = Project::new(PIPELINE);
    let cases: [(&[&str], &str); 5] = [
        (&["--sweep", "scale.env.K=1,,2"], "empty value"),
        (&["--sweep", "K=1,2"], "does not name `<stage>.<param>`"),
        (&["--sweep", "scale.nosuch=1,2"], "in sweep point 1 (scale.nosuch=1)"),
        (&["--sweep", "scale.env.K=1", "--sweep", r#"scale.env.K="2""#], "given twice"),
        (&["--sweep", "scale.env.K=1", "--locked"], "cannot be used with"),
    ];
    for (args, says) in cases {
        let r = p.cairn(&[&["run"], args].concat());
        assert_eq!(r.code, 2, "{args:?}: {}", r.all());
        assert!(r.stderr.contains(says), "{args:?} should say {says:?}:\n{}", r.stderr);
    }
    assert!(!p.cache().join("runs").exists(), "nothing ran");
}
