//! The shared remote cache end to end, through the `cairn` binary, against
//! a real S3 server (SeaweedFS on loopback, see `support/weed.rs`) and a
//! `file://` remote. Only `command` stages: no libtorch.

mod common;
#[path = "support/class_worker.rs"]
mod class_worker;
#[path = "support/skip.rs"]
mod skip;
#[path = "support/weed.rs"]
mod weed;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{artifact, statuses, Project, Run};
use object_store::{ObjectStore, ObjectStoreExt};
use weed::Weed;

/// `gen` writes a 24 MiB random object (multipart on push) and a small
/// one; `count` and `tag` read them; `tag` has an env param to change.
const PIPELINE: &str = r#"
[pipeline]
name = "remote-test"

[remote]
url = "s3://cairn/team"

[stages.gen]
kind = "command"
cmd = "head -c 25165824 /dev/urandom > {out.big}; echo small > {out.small}"
outputs = { big = "big.bin", small = "small.txt" }

[stages.count]
kind = "command"
cmd = "wc -c < {in.big} > {out.n}; cat {in.small} >> {out.n}"
inputs = { big = "gen.big", small = "gen.small" }
outputs = { n = "n.txt" }

[stages.tag]
kind = "command"
cmd = "cat {in.n} > {out.t}; echo \"N=$N\" >> {out.t}"
inputs = { n = "count.n" }
outputs = { t = "t.txt" }
env = { N = "1" }

[stages.last]
kind = "command"
cmd = "cat {in.t} {in.t} > {out.x}"
inputs = { t = "tag.t" }
outputs = { x = "x.txt" }
"#;

fn cairn(p: &Project, w: &Weed, args: &[&str]) -> Run {
    let mut c = p.cmd(args);
    w.env(&mut c);
    c.env_remove("CAIRN_REMOTE");
    c.output().expect("cairn runs").into()
}

fn all(outcome: &str) -> BTreeMap<String, String> {
    ["gen", "count", "tag", "last"].iter().map(|s| (s.to_string(), outcome.to_string())).collect()
}

fn same_outputs(a: &Project, b: &Project) {
    for rel in ["gen/big.bin", "gen/small.txt", "count/n.txt", "tag/t.txt", "last/x.txt"] {
        assert!(artifact(a, rel) == artifact(b, rel), "{rel} differs between the clones");
    }
}

#[test]
fn clone_b_pulls_everything_a_pushed_then_runs_only_what_a_param_changed() {
    let Some(w) = Weed::start("clone_b_pulls_everything") else { return };
    let a = Project::new(PIPELINE);
    let t = Instant::now();
    let r = cairn(&a, &w, &["run", "--push", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(statuses(&r), all("ran"));
    eprintln!("A: run --push in {:.2}s; {}", t.elapsed().as_secs_f64(), r.stderr.lines().filter(|l| l.contains("uploaded")).collect::<String>());

    let b = Project::new(PIPELINE);
    let s = cairn(&b, &w, &["status"]);
    assert_eq!(s.stdout.matches("on remote: will be pulled").count(), 4, "every stage, keys known from the remote's manifests: {}", s.all());
    let e = cairn(&b, &w, &["explain", "gen"]);
    assert!(e.stdout.contains("stale, on remote: will be pulled"), "{}", e.all());

    let t = Instant::now();
    let r = cairn(&b, &w, &["run", "--json"]);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(statuses(&r), all("pulled"), "{}", r.all());
    eprintln!("B: pulled {:.1} MB in {secs:.2}s ({:.0} MB/s, whole run)", 25.2, 25.2 / secs);
    same_outputs(&a, &b);
    let v = b.cairn(&["cache", "verify"]);
    assert_eq!(v.code, 0, "{}", v.all());
    let runs = b.cairn(&["runs"]);
    assert!(runs.all().contains("pulled"), "{}", runs.all());

    // Nothing executes again, and the pulled entries are plain local hits.
    let r = cairn(&b, &w, &["run", "--json"]);
    assert_eq!(statuses(&r), all("cached"), "{}", r.all());

    // A param change: only `tag` and what follows it run.
    let r = cairn(&b, &w, &["run", "--json", "--set", "tag.env={ N = \"2\" }"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let o = statuses(&r);
    assert_eq!((o["gen"].as_str(), o["count"].as_str(), o["tag"].as_str(), o["last"].as_str()), ("cached", "cached", "ran", "ran"), "{}", r.all());
}

#[test]
fn pull_command_and_push_command_move_everything() {
    let Some(w) = Weed::start("pull_command") else { return };
    let a = Project::new(PIPELINE);
    assert_eq!(cairn(&a, &w, &["run"]).code, 0);
    let t = Instant::now();
    let p = cairn(&a, &w, &["push"]);
    assert_eq!(p.code, 0, "{}", p.all());
    assert!(p.stderr.contains("4 pushed"), "{}", p.all());
    eprintln!("push: {:.2}s: {}", t.elapsed().as_secs_f64(), p.stderr.lines().last().unwrap_or(""));
    let again = cairn(&a, &w, &["push"]);
    assert!(again.stderr.contains("0 pushed, 4 already there"), "{}", again.all());

    let b = Project::new(PIPELINE);
    let t = Instant::now();
    let r = cairn(&b, &w, &["pull", "count"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("2 pulled"), "{}", r.all());
    eprintln!("pull: {:.2}s: {}", t.elapsed().as_secs_f64(), r.stderr.lines().last().unwrap_or(""));
    let r = cairn(&b, &w, &["run", "--json", "--remote", "none"]);
    let o = statuses(&r);
    assert_eq!((o["gen"].as_str(), o["count"].as_str(), o["tag"].as_str()), ("cached", "cached", "ran"), "{}", r.all());
}

/// [`PIPELINE`] and `n` independent one-line stages `s0`.. beside it.
fn with_small_stages(n: usize) -> String {
    let small: String = (0..n).map(|i| format!("\n[stages.s{i}]\nkind = \"command\"\ncmd = \"echo {i} > {{out.o}}\"\noutputs = {{ o = \"o.txt\" }}\n")).collect();
    format!("{PIPELINE}{small}")
}

#[test]
fn many_small_entries_pushed_at_once_beside_a_large_one_each_arrive_once() {
    let Some(w) = Weed::start("many_small_entries") else { return };
    let spec = with_small_stages(60);
    let a = Project::new(&spec);
    let r = cairn(&a, &w, &["run", "--push", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(statuses(&r).values().all(|o| o == "ran") && statuses(&r).len() == 64, "{}", r.all());
    let b = Project::new(&spec);
    let r = cairn(&b, &w, &["run", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(statuses(&r).values().all(|o| o == "pulled") && statuses(&r).len() == 64, "every entry pushed by the run: {}", r.all());
    assert!(artifact(&b, "s59/o.txt") == b"59\n" && artifact(&b, "s0/o.txt") == b"0\n");
    same_outputs(&a, &b);

    // `cairn push` of the same cache to another prefix: one line per
    // stage as each push ends, each stage once.
    let p = cairn(&a, &w, &["push", "--remote", "s3://cairn/second"]);
    assert_eq!(p.code, 0, "{}", p.all());
    assert!(p.stderr.contains("64 pushed, 0 already there"), "{}", p.all());
    for stage in ["gen", "count", "tag", "last", "s0", "s59"] {
        assert_eq!(p.stderr.lines().filter(|l| l.split_whitespace().take(2).eq(["pushed", stage])).count(), 1, "{stage}: {}", p.all());
    }
    let again = cairn(&a, &w, &["push", "--remote", "s3://cairn/second"]);
    assert!(again.stderr.contains("0 pushed, 64 already there"), "{}", again.all());
    let c = Project::new(&spec);
    let r = cairn(&c, &w, &["run", "--json", "--remote", "s3://cairn/second"]);
    assert!(statuses(&r).values().all(|o| o == "pulled") && statuses(&r).len() == 64, "{}", r.all());
    same_outputs(&a, &c);
}

/// One stage writing a random object of 70 MiB: over `RANGED_MIN`, so
/// pulled in ranges.
const RANGED: &str = r#"
[pipeline]
name = "ranged"

[remote]
url = "s3://cairn/team"

[stages.gen]
kind = "command"
cmd = "head -c 73400333 /dev/urandom > {out.big}"
outputs = { big = "big.bin" }
"#;

#[test]
fn an_object_over_64_mib_is_pulled_in_ranges_and_a_damaged_range_is_caught() {
    let Some(w) = Weed::start("ranged_pull") else { return };
    let spec = RANGED;
    let a = Project::new(spec);
    assert_eq!(cairn(&a, &w, &["run", "--push"]).code, 0);
    let big = artifact(&a, "gen/big.bin");
    let b = Project::new(spec);
    let r = cairn(&b, &w, &["run", "--json"]);
    assert_eq!(statuses(&r)["gen"], "pulled", "{}", r.all());
    assert!(artifact(&b, "gen/big.bin") == big, "the ranges make up the object");

    // One byte flipped in the fifth range (past 64 MiB).
    let hash = blake3::hash(&big).to_hex().to_string();
    let path = object_store::path::Path::from(format!("team/v1/objects/{hash}"));
    let mut bad = big.clone();
    bad[(68 << 20) + 5] ^= 1;
    w.block_on(async { w.store().put(&path, bad.into()).await }).unwrap();
    let c = Project::new(spec);
    let r = cairn(&c, &w, &["run", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(statuses(&r)["gen"], "ran", "{}", r.all());
    assert!(r.stderr.contains("damaged") && r.stderr.contains("not installed"), "{}", r.all());
    assert_eq!(c.cairn(&["cache", "verify"]).code, 0);
}

/// An S3 endpoint that serves `dir` (the layout a `file://` remote
/// writes, under `/cairn/team/`) read-only and ignores `Range`, answering
/// every GET with the whole object, as a server without range support
/// would. Its port.
fn serve_without_ranges(dir: std::path::PathBuf) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let mut parts = first.split_whitespace();
                let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let rel = target.split('?').next().unwrap_or("").trim_start_matches("/cairn/team/");
                let mut out = conn;
                let Ok(body) = std::fs::read(dir.join(rel)) else {
                    let _ = out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                    return;
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"e\"\r\nLast-Modified: Sat, 05 Dec 2026 00:00:00 GMT\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = out.write_all(head.as_bytes());
                if method == "GET" {
                    let _ = out.write_all(&body);
                }
            });
        }
    });
    port
}

#[test]
fn a_server_that_answers_ranges_with_whole_objects_is_read_whole() {
    let spec = RANGED;
    let shared = tempfile::tempdir().unwrap();
    let a = Project::new(spec);
    let mut c = a.cmd(&["run", "--push"]);
    c.env("CAIRN_REMOTE", format!("file://{}", shared.path().display()));
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());

    let port = serve_without_ranges(shared.path().to_path_buf());
    let b = Project::new(spec);
    let mut c = b.cmd(&["run", "--json"]);
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().starts_with("AWS_")) {
        c.env_remove(k);
    }
    c.env("CAIRN_REMOTE", "s3://cairn/team").env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")).env("AWS_ALLOW_HTTP", "true");
    c.env("AWS_ACCESS_KEY_ID", "k").env("AWS_SECRET_ACCESS_KEY", "s").env("AWS_REGION", "us-east-1");
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(statuses(&r)["gen"], "pulled", "read whole after the ranges were refused: {}", r.all());
    assert!(artifact(&b, "gen/big.bin") == artifact(&a, "gen/big.bin"));
    assert_eq!(b.cairn(&["cache", "verify"]).code, 0);
}

#[test]
fn two_concurrent_pushes_of_the_same_results_both_succeed() {
    let Some(w) = Weed::start("two_concurrent_pushes") else { return };
    let a = Project::new(PIPELINE);
    assert_eq!(cairn(&a, &w, &["run"]).code, 0);
    // A second clone with the very same results: a copy of A's cache.
    let a2 = Project::new(PIPELINE);
    let st = Command::new("cp").arg("-a").arg(a.cache()).arg(a2.path()).status().unwrap();
    assert!(st.success());
    let spawn = |p: &Project| {
        let mut c = p.cmd(&["push"]);
        w.env(&mut c);
        c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let (c1, c2) = (spawn(&a), spawn(&a2));
    let (o1, o2) = (c1.wait_with_output().unwrap(), c2.wait_with_output().unwrap());
    for o in [&o1, &o2] {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // Manifests are create-only on the server too: a second writer of an
    // existing key is told so (cairn takes that as success), and the first
    // writer's manifest stays.
    let list: Vec<_> = w.block_on(async {
        use futures::TryStreamExt;
        w.store().list(Some(&"team/v1/manifests".into())).try_collect::<Vec<_>>().await
    })
    .unwrap();
    assert_eq!(list.len(), 4);
    let first = w.block_on(async { w.store().get(&list[0].location).await.unwrap().bytes().await }).unwrap();
    let opts = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
    let again = w.block_on(async { w.store().put_opts(&list[0].location, "{}".into(), opts).await });
    assert!(
        matches!(again, Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. })),
        "{again:?}"
    );
    let now = w.block_on(async { w.store().get(&list[0].location).await.unwrap().bytes().await }).unwrap();
    assert_eq!(first, now);

    // One consistent entry: the remote verifies whole, and a third clone
    // pulls everything.
    let v = cairn(&a, &w, &["remote", "verify", "--all"]);
    assert_eq!(v.code, 0, "{}", v.all());
    assert!(v.stdout.contains("4 manifest(s), 5 object(s) checked") && v.stdout.contains(": 0 problem(s)"), "{}", v.all());
    let b = Project::new(PIPELINE);
    let r = cairn(&b, &w, &["run", "--json"]);
    assert_eq!(statuses(&r), all("pulled"), "{}", r.all());
    same_outputs(&a, &b);
}

#[test]
fn a_flipped_byte_on_the_remote_is_detected_and_the_stage_recomputed() {
    let Some(w) = Weed::start("flipped_byte") else { return };
    let a = Project::new(PIPELINE);
    assert_eq!(cairn(&a, &w, &["run", "--push"]).code, 0);
    // Flip one byte of `gen.small` on the remote.
    let small = artifact(&a, "gen/small.txt");
    let hash = blake3::hash(&small).to_hex().to_string();
    let mut bad = small.clone();
    bad[0] ^= 1;
    let path = object_store::path::Path::from(format!("team/v1/objects/{hash}"));
    w.block_on(async { w.store().put(&path, bad.into()).await }).unwrap();
    let v = cairn(&a, &w, &["remote", "verify"]);
    assert_eq!(v.code, 1, "{}", v.all());
    let line = v.stdout.lines().find(|l| l.contains(&hash)).unwrap_or_else(|| panic!("the damaged object is named: {}", v.all()));
    assert!(line.starts_with("damaged") && line.contains("`gen.small`") && line.contains("damaged"), "{line}");
    assert_eq!(v.stdout.lines().filter(|l| l.starts_with("damaged") || l.starts_with("missing")).count(), 1, "{}", v.all());

    // `cairn pull` installs every entry whose objects are intact, and
    // only those (the others' keys are known from `gen`'s manifest).
    let p = Project::new(PIPELINE);
    let r = cairn(&p, &w, &["pull"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stderr.contains("damaged") && r.stderr.contains("not installed"), "{}", r.all());
    assert!(r.stderr.contains("not there  gen          its objects could not be had"), "{}", r.all());
    assert!(r.stderr.contains("3 pulled, 0 already local, 1 not available"), "{}", r.all());
    assert_eq!(p.cairn(&["cache", "verify"]).code, 0);

    // B pushes what it computes (as CI does).
    let b = Project::new(PIPELINE);
    let r = cairn(&b, &w, &["run", "--json", "--push"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let o = statuses(&r);
    assert_eq!(o["gen"], "ran", "{}", r.all());
    // gen's big output is random, so `count` runs again; its output is
    // the same bytes, so the remote's entries of the rest still serve.
    assert_eq!((o["count"].as_str(), o["tag"].as_str(), o["last"].as_str()), ("ran", "pulled", "pulled"), "{}", r.all());
    assert!(r.stderr.contains("damaged") && r.stderr.contains("not installed"), "{}", r.all());
    assert_eq!(b.cairn(&["cache", "verify"]).code, 0);
    assert_eq!(artifact(&b, "gen/small.txt"), small);

    // Pushing, B repaired the damaged object with its verified bytes of
    // the same name (A's manifest stays: create-only); the next clone
    // pulls A's entry whole.
    let fixed = w.block_on(async { w.store().get(&path).await.unwrap().bytes().await }).unwrap();
    assert_eq!(fixed.as_ref(), small.as_slice());
    let v = cairn(&a, &w, &["remote", "verify", "--all"]);
    assert_eq!(v.code, 0, "repaired: {}", v.all());
    let c = Project::new(PIPELINE);
    let r = cairn(&c, &w, &["run", "--json"]);
    assert_eq!(statuses(&r)["gen"], "pulled", "{}", r.all());
}

#[test]
fn a_hostile_manifest_is_refused() {
    let Some(w) = Weed::start("hostile_manifest") else { return };
    let a = Project::new(PIPELINE);
    assert_eq!(cairn(&a, &w, &["run", "--push"]).code, 0);
    // Rewrite `count`'s manifest to record an extra, undeclared output.
    let list: Vec<_> = w.block_on(async {
        use futures::TryStreamExt;
        w.store().list(Some(&"team/v1/manifests".into())).try_collect::<Vec<_>>().await
    })
    .unwrap();
    let mut rewritten = 0;
    for meta in list {
        let bytes = w.block_on(async { w.store().get(&meta.location).await.unwrap().bytes().await }).unwrap();
        let mut m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        if m["stage"] == "count" {
            m["outputs"]["evil"] = m["outputs"]["n"].clone();
            w.block_on(async { w.store().put(&meta.location, serde_json::to_vec(&m).unwrap().into()).await }).unwrap();
            rewritten += 1;
        }
    }
    assert_eq!(rewritten, 1);
    let b = Project::new(PIPELINE);
    let r = cairn(&b, &w, &["run", "--json"]);
    let o = statuses(&r);
    assert_eq!((o["gen"].as_str(), o["count"].as_str()), ("pulled", "ran"), "{}", r.all());
    assert!(r.stderr.contains("undeclared output `evil`"), "{}", r.all());
}

/// `cairn run --json` of [`PIPELINE`] in a fresh project whose remote's
/// endpoint is a server of the test's own on loopback `port`.
fn run_against(port: u16) -> Run {
    let with_endpoint = format!("url = \"s3://cairn/team\"\nendpoint = \"http://127.0.0.1:{port}\"\nallow_http = true");
    let p = Project::new(&PIPELINE.replace("url = \"s3://cairn/team\"", &with_endpoint));
    let mut c = p.cmd(&["run", "--json"]);
    c.env("AWS_ACCESS_KEY_ID", "k").env("AWS_SECRET_ACCESS_KEY", "s").env_remove("AWS_ENDPOINT_URL").env_remove("CAIRN_REMOTE");
    c.output().unwrap().into()
}

/// A server that takes connections and never answers (a hung proxy) is
/// given up on after 30 s, once, and the run finishes here; it once held
/// every run for 120 s. Needs no S3 server: a bare listener will do.
#[test]
fn a_server_that_never_answers_is_given_up_on_within_a_minute() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection, answering nothing.
    std::thread::spawn(move || listener.incoming().flatten().for_each(std::mem::forget));
    let t = Instant::now();
    let r = run_against(port);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(statuses(&r), all("ran"));
    assert!(r.stderr.contains("a request got no answer in 30 s; continuing with the local cache only"), "{}", r.all());
    assert_eq!(r.stderr.matches("got no answer").count(), 1, "said once, not once per stage: {}", r.all());
    assert!(t.elapsed().as_secs() < 60, "given up on after {:?}", t.elapsed());
}

/// A server that answers every request with a redirect to itself is
/// reported once as down, not once per stage as a bad entry.
#[test]
fn a_server_that_redirects_in_a_loop_is_reported_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let _ = conn.read(&mut [0u8; 8192]);
            let _ = conn.write_all(b"HTTP/1.1 301 Moved Permanently\r\nLocation: /again\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    let r = run_against(port);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(statuses(&r), all("ran"));
    assert_eq!(r.stderr.matches("redirects every request in a loop").count(), 1, "{}", r.all());
}

#[test]
fn wrong_credentials_and_a_stopped_server_give_one_clear_error_and_the_run_completes_locally() {
    let Some(mut w) = Weed::start("wrong_credentials") else { return };
    let b = Project::new(PIPELINE);
    let mut c = b.cmd(&["run", "--json"]);
    w.env(&mut c);
    c.env("AWS_SECRET_ACCESS_KEY", "wrong-secret-xyzzy");
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(statuses(&r), all("ran"));
    assert!(r.stderr.contains("access denied") && r.stderr.contains("s3://cairn/team"), "{}", r.all());
    assert_eq!(r.stderr.matches("access denied").count(), 1, "one error line, not one per stage: {}", r.all());
    assert!(!r.all().contains("wrong-secret-xyzzy"), "credentials are never printed");

    // No credentials at all: anonymous requests, refused the same way.
    let anon = Project::new(PIPELINE);
    let mut c = anon.cmd(&["run", "--json"]);
    w.env(&mut c);
    c.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(statuses(&r), all("ran"));
    assert!(r.stderr.contains("access denied"), "{}", r.all());

    let fresh = Project::new(PIPELINE);
    let mut c = fresh.cmd(&["run", "--remote-required"]);
    w.env(&mut c);
    c.env("AWS_SECRET_ACCESS_KEY", "wrong-secret-xyzzy");
    let r: Run = c.output().unwrap().into();
    assert_eq!(r.code, 3, "{}", r.all());
    assert!(r.stderr.contains("access denied"), "{}", r.all());

    w.stop();
    let d = Project::new(PIPELINE);
    let t = Instant::now();
    let r = cairn(&d, &w, &["run", "--json", "--push"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(statuses(&r), all("ran"));
    assert!(r.stderr.contains("connection refused") && r.stderr.contains("127.0.0.1"), "{}", r.all());
    assert!(r.stderr.contains("continuing with the local cache only"), "{}", r.all());
    assert!(t.elapsed().as_secs() < 30, "a stopped server is reported within seconds");
    let r = cairn(&Project::new(PIPELINE), &w, &["run", "--remote-required"]);
    assert_eq!(r.code, 3, "{}", r.all());
    assert_eq!(r.stderr.lines().filter(|l| l.contains("connection refused")).count(), 1, "{}", r.all());
    let v = cairn(&d, &w, &["remote", "verify"]);
    assert_eq!(v.code, 3, "{}", v.all());
    assert_eq!(v.stderr.lines().filter(|l| l.contains("connection refused")).count(), 1, "{}", v.all());
}

#[test]
fn a_file_remote_works_too() {
    // No S3 server needed.
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let run = |p: &Project, args: &[&str]| -> Run {
        let mut c = p.cmd(args);
        c.env("CAIRN_REMOTE", &url);
        c.output().unwrap().into()
    };
    let a = Project::new(PIPELINE);
    let r = run(&a, &["run", "--push", "--json"]);
    assert_eq!(statuses(&r), all("ran"), "{}", r.all());
    assert!(shared.path().join("v1/manifests").read_dir().unwrap().count() == 4);
    let b = Project::new(PIPELINE);
    let r = run(&b, &["run", "--json"]);
    assert_eq!(statuses(&r), all("pulled"), "{}", r.all());
    same_outputs(&a, &b);

    // Truncate an object on the share: refused, recomputed.
    let small = artifact(&a, "gen/small.txt");
    let obj = shared.path().join("v1/objects").join(blake3::hash(&small).to_hex().as_str());
    std::fs::write(&obj, &small[..2]).unwrap();
    let c = Project::new(PIPELINE);
    let r = run(&c, &["run", "--json"]);
    assert_eq!(statuses(&r)["gen"], "ran", "{}", r.all());
    assert!(r.stderr.contains("bytes on the remote"), "{}", r.all());
    assert!(Path::new(&obj).exists());
}

#[test]
fn sigkill_during_a_push_and_during_a_pull_leaves_both_caches_valid() {
    let Some(w) = Weed::start("sigkill") else { return };
    let a = Project::new(PIPELINE);
    assert_eq!(cairn(&a, &w, &["run"]).code, 0);
    let kill_after = |p: &Project, args: &[&str], ms: u64| {
        let mut c = p.cmd(args);
        w.env(&mut c);
        let mut child = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    };
    for ms in [30, 120] {
        kill_after(&a, &["push"], ms);
        // What a killed push left is valid: whatever manifest is there
        // names whole objects (an unfinished multipart upload is no object).
        let v = cairn(&a, &w, &["remote", "verify", "--all"]);
        assert_eq!(v.code, 0, "the remote stays valid: {}", v.all());
        assert_eq!(a.cairn(&["cache", "verify"]).code, 0);
    }
    let p = cairn(&a, &w, &["push"]);
    assert_eq!(p.code, 0, "{}", p.all());

    let b = Project::new(PIPELINE);
    for ms in [30, 120] {
        kill_after(&b, &["run"], ms);
        // Killed before the cache existed, there is nothing to check.
        if b.cache().join("CACHEDIR.TAG").exists() {
            let v = b.cairn(&["cache", "verify"]);
            assert_eq!(v.code, 0, "the local cache stays valid: {}", v.all());
        }
        let v = cairn(&b, &w, &["remote", "verify", "--all"]);
        assert_eq!(v.code, 0, "a pull never writes to the remote: {}", v.all());
    }
    let r = cairn(&b, &w, &["run", "--json"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(statuses(&r).values().all(|o| o == "pulled" || o == "cached"), "{}", r.all());
    same_outputs(&a, &b);
}

#[test]
fn a_manifest_filed_under_another_key_is_refused() {
    // A result must never be served for a key it was not computed under
    // (another CPU class, device or libtorch is another key): a manifest
    // copied under a different key's name is refused and the stage runs.
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let run = |p: &Project, args: &[&str]| -> Run {
        let mut c = p.cmd(args);
        c.env("CAIRN_REMOTE", &url);
        c.output().unwrap().into()
    };
    let a = Project::new(PIPELINE);
    assert_eq!(run(&a, &["run", "--push"]).code, 0);
    let manifests = shared.path().join("v1/manifests");
    let by_stage = |stage: &str| {
        std::fs::read_dir(&manifests)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| serde_json::from_slice::<serde_json::Value>(&std::fs::read(p).unwrap()).unwrap()["stage"] == stage)
            .unwrap()
    };
    let (tag, last) = (by_stage("tag"), by_stage("last"));
    std::fs::remove_file(&last).unwrap();
    std::fs::copy(&tag, &last).unwrap();
    let b = Project::new(PIPELINE);
    let r = run(&b, &["run", "--json"]);
    let o = statuses(&r);
    assert_eq!((o["tag"].as_str(), o["last"].as_str()), ("pulled", "ran"), "{}", r.all());
    assert!(r.stderr.contains("has a manifest for another key"), "{}", r.all());
    same_outputs(&a, &b);
}

#[test]
fn remote_settings_are_checked_and_credentials_refused_in_the_pipeline_file() {
    let p = Project::new(PIPELINE);
    let r = p.cairn(&["run", "--remote", "http://example.invalid/x"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("is not a remote URL"), "{}", r.all());
    let r = p.cairn(&["run", "--remote", "file:///nonexistent/cairn-share"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("is not an existing directory"), "{}", r.all());

    let p = Project::new(&PIPELINE.replace("url = \"s3://cairn/team\"", "url = \"s3://cairn/team\"\nsecret_access_key = \"hunter2\""));
    let r = p.cairn(&["status"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("credentials do not belong in pipeline.toml"), "{}", r.all());
    assert!(!r.all().contains("hunter2"));
    let p = Project::new(&PIPELINE.replace("url = \"s3://cairn/team\"", "url = \"s3://cairn/team\"\npush = \"yes\""));
    let r = p.cairn(&["status"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("`remote.push` must be true or false"), "{}", r.all());

    // `--remote none` turns a configured remote off: nothing is asked.
    let p = Project::new(PIPELINE);
    let r = p.cairn(&["run", "--remote", "none"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(!r.stderr.contains("remote"), "{}", r.all());
}

/// Every file under `dir` (a `file://` remote), relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn remote_gc_keeps_what_the_last_runs_need_and_is_a_dry_run_unless_asked() {
    let Some(w) = Weed::start("remote_gc") else { return };
    let a = Project::new(PIPELINE);
    let n2 = ["--set", "tag.env={ N = \"2\" }"];
    assert_eq!(cairn(&a, &w, &["run", "--push"]).code, 0);
    std::thread::sleep(std::time::Duration::from_millis(1100)); // run records sort by the second
    assert_eq!(cairn(&a, &w, &[&["run", "--push"][..], &n2].concat()).code, 0);
    let listed = |dir: &str| -> Vec<String> {
        let list: Vec<_> = w.block_on(async {
            use futures::TryStreamExt;
            w.store().list(Some(&format!("team/v1/{dir}").as_str().into())).try_collect::<Vec<_>>().await
        })
        .unwrap();
        list.into_iter().map(|m| m.location.to_string()).collect()
    };
    assert_eq!((listed("manifests").len(), listed("runs").len()), (6, 2), "two runs, tag and last twice");

    // `cairn gc` is local only: even keeping no run, the remote is untouched.
    let before = (listed("manifests"), listed("objects"), listed("runs"));
    let g = cairn(&a, &w, &["gc", "--keep-runs", "0"]);
    assert_eq!(g.code, 0, "{}", g.all());
    assert_eq!((listed("manifests"), listed("objects"), listed("runs")), before);

    // The grace period keeps everything this young; `--keep-runs` is required.
    let r = cairn(&a, &w, &["remote", "gc", "--keep-runs", "1"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("would delete 0 manifest(s), 0 object(s)"), "{}", r.all());
    assert_eq!(cairn(&a, &w, &["remote", "gc"]).code, 2);

    // A dry run names what would go and deletes nothing.
    let r = cairn(&a, &w, &["remote", "gc", "--keep-runs", "1", "--grace-hours", "0"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("would delete 2 manifest(s), 2 object(s)") && r.stdout.contains("1 run record(s)"), "{}", r.all());
    assert!(r.stdout.contains("add --delete"), "{}", r.all());
    assert_eq!((listed("manifests"), listed("objects"), listed("runs")), before);

    // A newest run record that does not parse could name anything kept.
    let bad = object_store::path::Path::from("team/v1/runs/99991231T235959-0000000000000000.json");
    w.block_on(async { w.store().put(&bad, "{\"keys\":".into()).await }).unwrap();
    let with_bad = (listed("manifests"), listed("objects"), listed("runs"));
    for delete in [false, true] {
        let args = [&["remote", "gc", "--keep-runs", "1", "--grace-hours", "0"][..], if delete { &["--delete"][..] } else { &[][..] }].concat();
        let r = cairn(&a, &w, &args);
        assert_eq!(r.code, 3, "{}", r.all());
        let named = r.stderr.contains("1 run record(s) among those gc keeps do not parse") && r.stderr.contains(&format!("\n  {bad}\n"));
        assert!(named && r.stderr.contains("deletes nothing"), "{}", r.all());
        assert_eq!((listed("manifests"), listed("objects"), listed("runs")), with_bad);
    }
    w.block_on(async { w.store().delete(&bad).await }).unwrap();

    let r = cairn(&a, &w, &["remote", "gc", "--keep-runs", "1", "--grace-hours", "0", "--delete"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("deleted 2 manifest(s), 2 object(s)"), "{}", r.all());
    assert_eq!((listed("manifests").len(), listed("objects").len(), listed("runs").len()), (4, 5, 1));
    let v = cairn(&a, &w, &["remote", "verify", "--all"]);
    assert_eq!(v.code, 0, "what is left is whole: {}", v.all());

    // The kept run is served whole; the collected one is computed again.
    let b = Project::new(PIPELINE);
    let r = cairn(&b, &w, &[&["run", "--json"][..], &n2].concat());
    assert_eq!(statuses(&r), all("pulled"), "{}", r.all());
    let r = cairn(&b, &w, &["run", "--json"]);
    let o = statuses(&r);
    assert_eq!((o["gen"].as_str(), o["count"].as_str(), o["tag"].as_str(), o["last"].as_str()), ("cached", "cached", "ran", "ran"), "{}", r.all());
}

#[test]
fn a_remote_never_serves_a_result_computed_on_another_cpu_or_gpu_class() {
    let shared = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let run = |worker: &Path, push: bool| -> (Project, Run) {
        let p = Project::new(class_worker::CLASSED);
        let args: &[&str] = if push { &["run", "--json", "--push"] } else { &["run", "--json"] };
        let r: Run = p.cmd(args).env("CAIRN_REMOTE", &url).env("CAIRN_WORKER", worker).output().unwrap().into();
        assert_eq!(r.code, 0, "{}", r.all());
        (p, r)
    };
    let evaluated = |p: &Project| std::fs::read_to_string(p.path().join("artifacts/evaluate/metrics.parquet")).unwrap_or_else(|e| panic!("{e}"));

    let avx512 = class_worker::class_worker(tools.path(), "AVX512", "cpu");
    let (_, r) = run(&avx512, true);
    assert_eq!(statuses(&r)["evaluate"], "ran", "{}", r.all());

    // Same class: served. Another CPU class, or a GPU: computed there.
    let (p, r) = run(&avx512, false);
    assert_eq!((statuses(&r)["make"].as_str(), statuses(&r)["evaluate"].as_str()), ("pulled", "pulled"), "{}", r.all());
    assert_eq!(evaluated(&p).trim(), "AVX512 cpu");
    for (cpu, device) in [("AVX2", "cpu"), ("AVX512", "cuda:NVIDIA H200")] {
        let (p, r) = run(&class_worker::class_worker(tools.path(), cpu, device), true);
        let o = statuses(&r);
        assert_eq!((o["make"].as_str(), o["evaluate"].as_str()), ("pulled", "ran"), "{cpu} {device}: {}", r.all());
        assert_eq!(evaluated(&p).trim(), format!("{cpu} {device}"));
    }
    // Each class has its own entry; the first GPU class is not another's.
    let (p, r) = run(&class_worker::class_worker(tools.path(), "AVX512", "cuda:NVIDIA A100"), false);
    assert_eq!(statuses(&r)["evaluate"], "ran", "{}", r.all());
    assert_eq!(evaluated(&p).trim(), "AVX512 cuda:NVIDIA A100");
    assert_eq!(std::fs::read_dir(shared.path().join("v1/manifests")).unwrap().count(), 4, "{:?}", files(shared.path()));
}

#[test]
fn a_run_downloads_only_the_bytes_its_targets_and_executing_stages_need() {
    let Some(w) = Weed::start("lazy_download") else { return };
    let a = Project::new(PIPELINE);
    assert_eq!(cairn(&a, &w, &["run", "--push"]).code, 0);
    let big = blake3::hash(&artifact(&a, "gen/big.bin")).to_hex().to_string();
    let has_big = |p: &Project| p.cache().join("objects").join(&big[..2]).join(&big[2..]).exists();

    // B asks for `last`: only its bytes come; its ancestors are served
    // from their remote manifests, and nothing of theirs is installed.
    let b = Project::new(PIPELINE);
    let r = cairn(&b, &w, &["run", "last", "--json"]);
    assert_eq!(statuses(&r), all("pulled"), "{}", r.all());
    assert!(!has_big(&b), "gen's 24 MiB were downloaded though nothing needed them");
    assert_eq!(artifact(&b, "last/x.txt"), artifact(&a, "last/x.txt"));
    assert!(!b.path().join("artifacts/gen").exists());
    let v = b.cairn(&["cache", "verify"]);
    assert_eq!(v.code, 0, "no local manifest names an absent object: {}", v.all());
    let s = cairn(&b, &w, &["status"]);
    assert_eq!(s.stdout.matches("on remote: will be pulled").count(), 3, "where the bytes are: {}", s.all());
    assert!(s.stdout.contains("fresh      last"), "{}", s.all());

    // A stage that must execute gets the bytes it reads (count's), and
    // no more (gen's stay on the remote).
    let r = cairn(&b, &w, &["run", "last", "--json", "--set", "tag.env={ N = \"2\" }"]);
    let o = statuses(&r);
    assert_eq!((o["count"].as_str(), o["tag"].as_str(), o["last"].as_str()), ("pulled", "ran", "ran"), "{}", r.all());
    assert!(!has_big(&b));
    assert_eq!(b.cairn(&["cache", "verify"]).code, 0);

    // `cairn pull` materialises everything; then the run is all local.
    let p = cairn(&b, &w, &["pull"]);
    assert_eq!(p.code, 0, "{}", p.all());
    assert!(has_big(&b));
    let r = cairn(&b, &w, &["run", "--json"]);
    assert_eq!(statuses(&r), all("cached"), "{}", r.all());
    same_outputs(&a, &b);
}

#[test]
fn lazily_served_bytes_that_turn_out_damaged_are_computed_here() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("file://{}", shared.path().display());
    let run = |p: &Project, args: &[&str]| -> Run {
        let r: Run = p.cmd(args).env("CAIRN_REMOTE", &url).output().unwrap().into();
        assert_eq!(r.code, 0, "{}", r.all());
        r
    };
    let a = Project::new(PIPELINE);
    run(&a, &["run", "--push"]);
    let small = artifact(&a, "gen/small.txt");
    std::fs::write(shared.path().join("v1/objects").join(blake3::hash(&small).to_hex().as_str()), b"smalL\n").unwrap();

    // `count` must execute (its command changed) and reads gen's outputs,
    // which were served lazily; one of them is damaged on the remote, so
    // `gen` is computed here instead, and nothing damaged is installed.
    let b = Project::new(&PIPELINE.replace("wc -c < {in.big}", "wc -c < {in.big} | tr -d ' '"));
    let r = run(&b, &["run", "count", "--json"]);
    let o = statuses(&r);
    assert_eq!((o["gen"].as_str(), o["count"].as_str()), ("ran", "ran"), "{}", r.all());
    assert!(r.stderr.contains("damaged") && r.stderr.contains("not installed"), "{}", r.all());
    assert_eq!(artifact(&b, "gen/small.txt"), small);
    assert_eq!(b.cairn(&["cache", "verify"]).code, 0);
}

#[test]
fn a_server_stopped_in_the_middle_of_a_download_leaves_the_run_to_finish_locally() {
    const BIG: &str = r#"
[remote]
url = "s3://cairn/team"

[stages.gen]
kind = "command"
cmd = "head -c 268435456 /dev/zero > {out.big}"
outputs = { big = "big.bin" }

[stages.count]
kind = "command"
cmd = "wc -c < {in.big} > {out.n}"
inputs = { big = "gen.big" }
outputs = { n = "n.txt" }
"#;
    let Some(mut w) = Weed::start("stopped_mid_download") else { return };
    let a = Project::new(BIG);
    assert_eq!(cairn(&a, &w, &["run", "--push"]).code, 0);
    let b = Project::new(BIG);
    let mut c = b.cmd(&["run", "--json"]);
    w.env(&mut c);
    let child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Stop the server once part of the object has arrived.
    let tmp = b.cache().join("tmp");
    let t0 = Instant::now();
    let arriving = || std::fs::read_dir(&tmp).into_iter().flatten().flatten().any(|e| e.metadata().is_ok_and(|m| m.len() > 0));
    while !arriving() {
        assert!(t0.elapsed().as_secs() < 60, "the download never started");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    w.stop();
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    let o = statuses(&r);
    assert_eq!((o["gen"].as_str(), o["count"].as_str()), ("ran", "ran"), "{}", r.all());
    assert!(r.stderr.contains("continuing with the local cache only"), "{}", r.all());
    assert_eq!(r.stderr.matches("127.0.0.1").count(), 1, "one error line naming the server: {}", r.all());
    assert_eq!(b.cairn(&["cache", "verify"]).code, 0);
    let left = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "the partial download is not left behind");
}
