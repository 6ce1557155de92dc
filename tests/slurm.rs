//! Stages on a real Slurm cluster, through the `cairn` binary: a private
//! single-node cluster per test (see `support/slurm.rs`), the cache on the
//! shared filesystem (the node is this machine). Only `command` stages: no
//! libtorch. A test whose cluster cannot start skips visibly (and fails
//! under CI=true, where `.ci/run` installs Slurm).

mod common;
#[path = "support/skip.rs"]
mod skip;
#[path = "support/ml_slurm.rs"]
mod ml;
#[path = "support/slurm.rs"]
mod slurm;
#[path = "support/weed.rs"]
mod weed;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{artifact, stages, Project, Run};
use ml::{ml_cluster, write_cifar, ML_PIPELINE};
use slurm::Cluster;

/// Three stages, two of them independent, on two executors (one asks for a
/// GPU, which the placeholder gres satisfies); the `here` profile moves
/// them all back to this machine.
const PIPELINE: &str = r#"
[pipeline]
name = "slurm-test"

[executors.cluster]
kind = "slurm"
cpus = 1
mem = "200M"
time = "5"

[executors.gpu]
kind = "slurm"
gpus = 1
sbatch_args = ["--comment=cairn-test"]

[executors.here]
kind = "local"

[stages.gen]
kind = "command"
cmd = "seq 1 5000 > {out.numbers}; echo $SLURM_JOB_ID > {out.job}"
outputs = { numbers = "numbers.txt", job = "job.txt" }
executor = "cluster"

[stages.sum]
kind = "command"
cmd = "awk '{ s += $1 } END { print s }' {in.numbers} > {out.total}"
inputs = { numbers = "gen.numbers" }
outputs = { total = "total.txt" }
executor = "gpu"

[stages.words]
kind = "command"
cmd = "echo independent > {out.w}"
outputs = { w = "w.txt" }
executor = "cluster"

[profiles.here]
"gen.executor" = "here"
"sum.executor" = "here"
"words.executor" = "here"
"#;

fn cairn(p: &Project, c: &Cluster, args: &[&str]) -> Run {
    p.cmd(args).envs(c.env()).output().expect("cairn runs").into()
}

#[test]
fn a_pipeline_on_slurm_matches_a_local_run_and_then_is_cached_locally() {
    let Some(c) = Cluster::start("a_pipeline_on_slurm_matches_a_local_run_and_then_is_cached_locally") else { return };
    let on_slurm = Project::new(PIPELINE);
    let r = cairn(&on_slurm, &c, &["run", "--json", "-j", "3"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
    let remote = stages(&r);
    assert!(remote.values().all(|(s, _)| s == "ran"), "{remote:?}");
    // The stage really ran as a Slurm job.
    let job = String::from_utf8(artifact(&on_slurm, "gen/job.txt")).unwrap();
    assert!(job.trim().parse::<u64>().is_ok(), "gen did not run under Slurm: {job:?}");

    // The same pipeline run here: the same keys and the same bytes
    // (except the job id, which only a Slurm job has).
    let local = Project::new(PIPELINE);
    let r = cairn(&local, &c, &["run", "--json", "--profile", "here"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let here = stages(&r);
    let keys = |m: &BTreeMap<String, (String, String)>| m.iter().map(|(k, (_, key))| (k.clone(), key.clone())).collect::<BTreeMap<_, _>>();
    let (gen_remote, gen_here) = (&remote["gen"].1, &here["gen"].1);
    assert_eq!(gen_remote, gen_here, "the executor must not be part of a key");
    for rel in ["gen/numbers.txt", "words/w.txt"] {
        assert!(artifact(&on_slurm, rel) == artifact(&local, rel), "{rel} differs");
    }
    assert_eq!(String::from_utf8(artifact(&local, "sum/total.txt")).unwrap().trim(), "12502500");
    // `sum` reads gen's job id only through `numbers`, so it agrees too.
    assert_eq!(artifact(&on_slurm, "sum/total.txt"), artifact(&local, "sum/total.txt"));
    assert_eq!(keys(&remote)["sum"], keys(&here)["sum"]);

    // Moving the stages back to this machine changes nothing: all cached.
    let r = cairn(&on_slurm, &c, &["run", "--json", "--profile", "here"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(stages(&r).values().all(|(s, _)| s == "cached"), "{}", r.all());
    assert_eq!(keys(&stages(&r)), keys(&remote));
}

/// stage → output → hash, from `cairn run --json`.
fn output_hashes(r: &Run) -> BTreeMap<String, BTreeMap<String, String>> {
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("json ({e}): {}", r.all()));
    let hashes = |s: &serde_json::Value| s["outputs"].as_object().unwrap().iter().map(|(k, o)| (k.clone(), o["hash"].as_str().unwrap().to_string())).collect();
    v["stages"].as_array().unwrap().iter().map(|s| (s["stage"].as_str().unwrap().to_string(), hashes(s))).collect()
}

#[test]
fn ml_stages_on_slurm_match_a_local_run() {
    let Some(c) = ml_cluster("ml_stages_on_slurm_match_a_local_run") else { return };
    ml_run_matches_local(&c, ML_PIPELINE, &|p, args| cairn(p, &c, args));
}

/// The same stages on an executor whose jobs share only the remote cache
/// (a real S3 server) with the engine: the data set directory, the
/// resized tensors and the weights travel through it, the nodes' probe
/// answers through it too, and the bytes are a local run's.
#[test]
fn ml_stages_on_slurm_with_remote_data_match_a_local_run() {
    let test = "ml_stages_on_slurm_with_remote_data_match_a_local_run";
    let Some(c) = ml_cluster(test) else { return };
    let Some(w) = weed::Weed::start(test) else { return };
    let pipeline = ml::with_remote_data(ML_PIPELINE, "s3://cairn/ml");
    ml_run_matches_local(&c, &pipeline, &|p, args| {
        let mut cmd = p.cmd(args);
        cmd.envs(c.env()).env_remove("CAIRN_REMOTE");
        w.env(&mut cmd);
        cmd.output().unwrap().into()
    });
}

/// Runs `pipeline` (`run` runs cairn for it) on the cluster and the same
/// stages here: the keys and bytes agree, and the cluster's results are
/// cache hits here.
fn ml_run_matches_local(c: &Cluster, pipeline: &str, run: &dyn Fn(&Project, &[&str]) -> Run) {
    let on_slurm = Project::new(pipeline);
    write_cifar(&on_slurm);
    let r = run(&on_slurm, &["run", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
    let remote = stages(&r);
    assert!(remote.values().all(|(s, _)| s == "ran"), "{remote:?}");
    let remote_outputs = output_hashes(&r);

    let local = Project::new(ML_PIPELINE);
    write_cifar(&local);
    let r = cairn(&local, c, &["run", "--json", "--profile", "here"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let here = stages(&r);
    for stage in ["load", "resize", "train"] {
        assert_eq!(remote[stage].1, here[stage].1, "`{stage}`: the executor must not change the key");
    }
    assert_eq!(remote_outputs, output_hashes(&r), "a Slurm job and a local run must write the same bytes");

    let r = run(&on_slurm, &["run", "--json", "--profile", "here"]);
    assert!(stages(&r).values().all(|(s, _)| s == "cached"), "{}", r.all());
}

/// The epochs done in the first checkpoint under `cache/checkpoints`.
fn checkpointed_epochs(p: &Project) -> Option<u64> {
    let dir = std::fs::read_dir(p.cache().join("checkpoints")).ok()?.flatten().next()?.path();
    ml::epochs_done(&std::fs::read(dir.join("checkpoint.safetensors")).ok()?)
}

#[test]
fn a_requeued_train_job_resumes_from_its_checkpoint() {
    let Some(c) = ml_cluster("a_requeued_train_job_resumes_from_its_checkpoint") else { return };
    let long = ML_PIPELINE.replace("epochs = 1", "epochs = 60");
    let p = Project::new(&long);
    write_cifar(&p);
    let child = p.cmd(&["run", "-v"]).envs(c.env()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    while checkpointed_epochs(&p).is_none_or(|n| n < 10) {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint past epoch 10 after 2 minutes:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.command("squeue").args(["--noheader", "--format=%i|%j"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (id, _) = text.lines().filter_map(|l| l.split_once('|')).find(|(_, n)| n.ends_with("-train")).unwrap_or_else(|| panic!("no train job: {text}"));
    let requeue = c.command("scontrol").args(["requeue", id]).output().unwrap();
    assert!(requeue.status.success(), "scontrol requeue: {}", String::from_utf8_lossy(&requeue.stderr));
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
    assert!(r.stderr.contains("resuming train from epoch"), "the requeued job did not resume:\n{}", r.stderr);
    assert!(checkpointed_epochs(&p).is_none(), "the checkpoint is removed once the result is stored");

    let local = Project::new(&long);
    write_cifar(&local);
    let here = cairn(&local, &c, &["run", "--json", "--profile", "here"]);
    assert_eq!(here.code, 0, "{}", here.all());
    assert!(ml::train_artifacts(&p) == ml::train_artifacts(&local), "a resumed job must write an uninterrupted run's bytes");
}

/// The environment entries a stage was keyed with, from its manifest.
fn keyed_env(p: &Project, key: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(p.cache().join("manifests").join(format!("{key}.json"))).unwrap_or_else(|e| panic!("manifest {key}: {e}"));
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(m["key_inputs"]["env"].clone()).unwrap()
}

/// The `cpu_capability` fact of ATen's class `aten` on this machine's CPU
/// (the nodes are this machine): the vendor follows where it is not Intel.
fn capability_here(aten: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let vendor = cpuinfo.lines().find(|l| l.starts_with("vendor_id")).and_then(|l| l.split(':').nth(1)).map(str::trim);
    match vendor {
        Some(v) if v != "GenuineIntel" => format!("{aten}, on {v}"),
        _ => aten.to_string(),
    }
}

/// Probe jobs the cluster has seen.
fn probe_jobs(c: &Cluster) -> usize {
    let out = c.command("squeue").args(["--noheader", "--states=all", "--format=%j"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.trim() == "cairn-probe").count()
}

#[test]
fn a_slurm_stage_is_keyed_with_its_nodes_facts() {
    let Some(c) = ml_cluster("a_slurm_stage_is_keyed_with_its_nodes_facts") else { return };
    // Nodes unlike this machine, whatever its CPU: their libtorch
    // dispatches to its unvectorised kernels (capability DEFAULT).
    let shape = "cpus = 2\nmem = \"2G\"";
    let pipeline = ML_PIPELINE.replace(shape, &format!("{shape}\nsbatch_args = [\"--export=ALL,ATEN_CPU_CAPABILITY=default,CAIRN_THREADS=2\"]"));
    let run = |p: &Project, args: &[&str]| -> Run { p.cmd(args).envs(c.env()).env("CAIRN_THREADS", "2").output().unwrap().into() };
    let on_slurm = Project::new(&pipeline);
    write_cifar(&on_slurm);
    let r = run(&on_slurm, &["run", "--json"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
    let remote = stages(&r);
    assert_eq!(keyed_env(&on_slurm, &remote["train"].1)["cpu_capability"], capability_here("DEFAULT"), "train is keyed with the node's facts");
    assert_eq!(probe_jobs(&c), 1, "one probe job for the executor");

    let local = Project::new(&pipeline);
    write_cifar(&local);
    let r = run(&local, &["run", "--json", "--profile", "here"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let here = stages(&r);
    assert_ne!(keyed_env(&local, &here["train"].1)["cpu_capability"], capability_here("DEFAULT"));
    assert_ne!(remote["train"].1, here["train"].1, "a result of the nodes' kernels never serves this machine");
    assert_eq!(remote["load"].1, here["load"].1, "a stage keyed without the CPU class is shared");

    // The probe's answer is cached: another run on the cluster is a no-op
    // and submits nothing.
    let r = run(&on_slurm, &["run", "--json"]);
    assert!(stages(&r).values().all(|(s, _)| s == "cached"), "{}", r.all());
    assert_eq!(probe_jobs(&c), 1, "the probe is not repeated");
}

#[test]
fn nodes_unlike_their_cached_probe_are_refused_then_probed_again() {
    let Some(c) = ml_cluster("nodes_unlike_their_cached_probe_are_refused_then_probed_again") else { return };
    let p = Project::new(ML_PIPELINE);
    write_cifar(&p);
    let r = cairn(&p, &c, &["run"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
    // The executor's answer is the first written: the jobs' own checks
    // cache theirs afterwards. Make it claim other nodes.
    let mut probes: Vec<(std::time::SystemTime, std::path::PathBuf)> =
        std::fs::read_dir(p.cache().join("probe")).unwrap().flatten().map(|e| (e.metadata().unwrap().modified().unwrap(), e.path())).collect();
    probes.sort();
    let file = &probes[0].1;
    let mut answer: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let capability = &mut answer["probe"]["cpu_capability"];
    assert!(capability.is_string(), "a probe answer names its CPU capability");
    let other = if capability == "DEFAULT" { "AVX2" } else { "DEFAULT" };
    *capability = other.into();
    std::fs::write(file, serde_json::to_string_pretty(&answer).unwrap()).unwrap();

    let r = cairn(&p, &c, &["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.all().contains("this node's environment differs") && r.all().contains("probes them again"), "{}", r.all());
    assert!(!file.exists(), "the stale answer is dropped");
    let r = cairn(&p, &c, &["run"]);
    assert_eq!(r.code, 0, "the next run probes the nodes again and runs:\n{}\n{}", r.all(), c.logs());
}

/// Two stages that sleep, each writing when it started and ended.
const TWO_SLEEPERS: &str = r#"
[pipeline]
name = "concurrent"

[executors.cluster]
kind = "slurm"
cpus = 1

[stages.left]
kind = "command"
cmd = "date +%s.%N > {out.t}; sleep 3; date +%s.%N >> {out.t}"
outputs = { t = "t.txt" }
executor = "cluster"

[stages.right]
kind = "command"
cmd = "date +%s.%N > {out.t}; sleep 3; date +%s.%N >> {out.t}"
outputs = { t = "t.txt" }
executor = "cluster"
"#;

fn interval(p: &Project, stage: &str) -> (f64, f64) {
    let text = String::from_utf8(artifact(p, &format!("{stage}/t.txt"))).unwrap();
    let v: Vec<f64> = text.lines().map(|l| l.trim().parse().unwrap()).collect();
    (v[0], v[1])
}

#[test]
fn independent_stages_run_as_concurrent_jobs() {
    let Some(c) = Cluster::start("independent_stages_run_as_concurrent_jobs") else { return };
    let p = Project::new(TWO_SLEEPERS);
    let t0 = Instant::now();
    let r = cairn(&p, &c, &["run", "-j", "2"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
    let ((l0, l1), (r0, r1)) = (interval(&p, "left"), interval(&p, "right"));
    assert!(l0 < r1 && r0 < l1, "the jobs did not overlap: left {l0}..{l1}, right {r0}..{r1}");
    eprintln!("two 3 s stages as concurrent Slurm jobs: {:.1} s in all", t0.elapsed().as_secs_f64());
}

/// A shared upstream stage and a stage swept over `K`, whose job writes
/// when it ran, its job id and its `K`.
const SWEPT: &str = r#"
[pipeline]
name = "sweep"

[executors.cluster]
kind = "slurm"
cpus = 1

[stages.gen]
kind = "command"
cmd = "seq 1 10 > {out.n}"
outputs = { n = "n.txt" }
executor = "cluster"

[stages.point]
kind = "command"
cmd = "date +%s.%N > {out.t}; sleep 3; date +%s.%N >> {out.t}; echo $SLURM_JOB_ID $K $(wc -l < {in.n}) > {out.job}"
env = { K = "0" }
inputs = { n = "gen.n" }
outputs = { t = "t.txt", job = "job.txt" }
executor = "cluster"
"#;

#[test]
fn a_sweep_submits_one_job_per_point_at_once_and_shares_the_upstream_stage() {
    let Some(c) = Cluster::start("a_sweep_submits_one_job_per_point_at_once_and_shares_the_upstream_stage") else { return };
    let p = Project::new(SWEPT);
    let r = cairn(&p, &c, &["run", "--json", "--sweep", r#"point.env.K="1","2","3""#]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
    let names: Vec<String> = stages(&r).into_keys().collect();
    assert_eq!(names, ["gen", "point@1", "point@2", "point@3"], "{}", r.all());
    let mut ids = std::collections::BTreeSet::new();
    for k in 1..=3 {
        let job = String::from_utf8(artifact(&p, &format!("point@{k}/job.txt"))).unwrap();
        let fields: Vec<&str> = job.split_whitespace().collect();
        assert_eq!(fields[1..], [k.to_string().as_str(), "10"], "point {k} ran with its own K on gen's output: {job:?}");
        assert!(fields[0].parse::<u64>().is_ok(), "point {k} did not run under Slurm: {job:?}");
        ids.insert(fields[0].to_string());
    }
    assert_eq!(ids.len(), 3, "one job per point: {ids:?}");
    let spans: Vec<(f64, f64)> = (1..=3).map(|k| interval(&p, &format!("point@{k}"))).collect();
    let (latest_start, first_end) = (spans.iter().map(|s| s.0).fold(f64::MIN, f64::max), spans.iter().map(|s| s.1).fold(f64::MAX, f64::min));
    assert!(latest_start < first_end, "the three jobs did not all run at once: {spans:?}");
}

const SLEEPER: &str = r#"
[pipeline]
name = "cancel"

[executors.cluster]
kind = "slurm"
time = "TIME"

[stages.slow]
kind = "command"
cmd = "sleep 300; echo done > {out.x}"
outputs = { x = "x.txt" }
executor = "cluster"
"#;

/// Starts `cairn run` in the background and waits until the job of its
/// stage `slow` runs.
fn start_slow_run(p: &Project, c: &Cluster) -> (Child, String) {
    let child = p.cmd(&["run"]).envs(c.env()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    (child, c.running_job("-slow"))
}

fn nothing_cached(p: &Project) {
    common::nothing_cached(p);
    assert!(!p.path().join("artifacts/slow/x.txt").exists());
}

#[test]
fn a_scancelled_job_fails_its_stage_and_caches_nothing() {
    let Some(c) = Cluster::start("a_scancelled_job_fails_its_stage_and_caches_nothing") else { return };
    let p = Project::new(&SLEEPER.replace("TIME", "5"));
    let (child, id) = start_slow_run(&p, &c);
    assert!(c.command("scancel").arg(&id).status().unwrap().success());
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains(&format!("Slurm job {id} ended in state CANCELLED")), "{}", r.all());
    assert!(r.stderr.contains("CANCELLED AT"), "the message should quote the job's log: {}", r.all());
    nothing_cached(&p);
}

#[test]
fn ctrl_c_cancels_the_submitted_jobs_and_says_so() {
    let Some(c) = Cluster::start("ctrl_c_cancels_the_submitted_jobs_and_says_so") else { return };
    let p = Project::new(&SLEEPER.replace("TIME", "5"));
    let (child, id) = start_slow_run(&p, &c);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 130, "{}", r.all());
    assert!(r.stderr.contains(&format!("cancelled 1 submitted Slurm job(s): {id}")), "{}", r.all());
    let out = c.command("squeue").args(["--noheader", "--states=all", "--format=%T", &format!("--jobs={id}")]).output().unwrap();
    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(state == "CANCELLED" || state == "COMPLETING", "job {id} is {state}");
    nothing_cached(&p);
}

/// Slurm's smallest time limit is a minute, so this test takes one (and
/// up to the controller's next time-limit sweep, about 30 s, more); it
/// runs beside the others.
#[test]
fn a_job_past_its_time_limit_is_reported_as_timed_out() {
    let Some(c) = Cluster::start("a_job_past_its_time_limit_is_reported_as_timed_out") else { return };
    let (r, took) = failing_run(&c, &SLEEPER.replace("TIME", "1"));
    assert!(r.stderr.contains("ended in state TIMEOUT (it ran past its time limit: raise `time` in its executor)"), "{}", r.all());
    assert!(took >= Duration::from_secs(59), "a 1-minute job timed out after {took:?}");
}

#[test]
fn a_refused_submission_names_slurm_s_reason() {
    let Some(c) = Cluster::start("a_refused_submission_names_slurm_s_reason") else { return };
    let (r, took) = failing_run(&c, &SLEEPER.replace("time = \"TIME\"", "partition = \"nosuch\""));
    assert!(r.stderr.contains("cannot submit to Slurm") && r.stderr.contains("Invalid partition name"), "{}", r.all());
    assert!(took < Duration::from_secs(5), "a refusal is not retried: {took:?}");
}

/// Runs `pipeline` to its failure, checks nothing was cached, and says how long it took.
fn failing_run(c: &Cluster, pipeline: &str) -> (Run, Duration) {
    let p = Project::new(pipeline);
    let t0 = Instant::now();
    let r = cairn(&p, c, &["run"]);
    let took = t0.elapsed();
    assert_eq!(r.code, 1, "{}", r.all());
    nothing_cached(&p);
    (r, took)
}

/// Needs no cluster: a stage naming an executor that does not exist, in
/// the file or through `--set`, is a spec error at its place.
#[test]
fn a_misnamed_executor_is_an_error_at_its_place() {
    let text = PIPELINE.replace("executor = \"gpu\"", "executor = \"gpus\"");
    let line = 1 + text.lines().position(|l| l.contains("\"gpus\"")).unwrap();
    let r = Project::new(&text).cairn(&["status"]);
    assert_eq!(r.code, 2, "{}", r.all());
    let at = format!("pipeline.toml:{line}:12: error: stage `sum`: no executor named `gpus`");
    assert!(r.stderr.contains(&at), "wanted {at:?} in:\n{}", r.all());
    assert!(r.stderr.contains("did you mean `gpu`?"), "{}", r.all());
    let p = Project::new(PIPELINE);
    let r = p.cairn(&["status", "--set", "words.executor=nowhere"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("--set words.executor=nowhere") && r.stderr.contains("no executor named `nowhere`"), "{}", r.all());
    assert!(p.cairn(&["status", "--set", "words.executor=local"]).code == 0, "`local` is always there");
}

/// The overhead of running small stages as Slurm jobs: a chain of five
/// one-line stages, here and on the cluster, fresh each time. A
/// measurement, not a check: `cargo test --release --workspace --test slurm
/// -- --ignored --nocapture overhead` (figures in BENCHMARKS.md).
#[test]
#[ignore]
fn overhead_of_a_small_stage_on_slurm() {
    let Some(c) = Cluster::start("overhead_of_a_small_stage_on_slurm") else { return };
    let text = slurm::overhead_chain(
        "[pipeline]\nname = \"overhead\"\n[executors.cluster]\nkind = \"slurm\"\ncpus = 1\nmem = \"100M\"\n[executors.here]\nkind = \"local\"\n",
    );
    slurm::report_overhead("", |profile| {
        let p = Project::new(&text);
        let mut args = vec!["run"];
        args.extend(profile.iter().flat_map(|pr| ["--profile", pr]));
        let t0 = Instant::now();
        let r = cairn(&p, &c, &args);
        assert_eq!(r.code, 0, "{}", r.all());
        t0.elapsed().as_secs_f64()
    });
}

/// A 3-point learning-rate sweep of the flagship's `finetune` (cpu
/// profile, from scratch on a 200-image-a-class subset of the real
/// CIFAR-10, evaluated on 100 test images a class) on the cluster, against
/// the same three runs one after another; both start with `load` and
/// `resize` cached. A measurement, not a check: `cargo test --release
/// --workspace --test slurm -- --ignored --nocapture sweep_of` (needs
/// `../shared/data/cifar10-jpg.tar.gz`; figures in BENCHMARKS.md).
#[test]
#[ignore]
fn sweep_of_the_flagship_finetune_on_slurm() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/cifar10-jpg.tar.gz");
    assert!(data.is_file(), "{} is missing", data.display());
    let Some(c) = ml_cluster("sweep_of_the_flagship_finetune_on_slurm") else { return };
    let flagship = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml")).unwrap();
    let text = format!("{flagship}\n[executors.cluster]\nkind = \"slurm\"\ncpus = 2\nmem = \"3G\"\n");
    let source = format!("load.source={}", data.display());
    let sets = ["--profile", "cpu", "--set", &source, "--set", "load.train_per_class=200", "--set", "load.test=100", "--set", "finetune.init=\"scratch\"", "--set", "finetune.lr=0.05", "--set", "finetune.executor=\"cluster\"", "--set", "evaluate.executor=\"cluster\""];
    let run = |p: &Project, extra: &[&str]| -> (Run, f64) {
        let t0 = Instant::now();
        let r = cairn(p, &c, &[&["run", "evaluate", "--json"][..], &sets, extra].concat());
        assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
        (r, t0.elapsed().as_secs_f64())
    };
    let one_by_one = Project::new(&text);
    let upstream = cairn(&one_by_one, &c, &[&["run", "resize"][..], &sets].concat());
    assert_eq!(upstream.code, 0, "{}", upstream.all());
    let (swept, in_turn) = (Project::new(&text), Project::new(&text));
    for p in [&swept, &in_turn] {
        let copied = Command::new("cp").arg("-a").arg(one_by_one.cache()).arg(p.path()).status().unwrap();
        assert!(copied.success());
    }
    let lrs = ["0.05", "0.1", "0.2"];
    let mut sequential = 0.0;
    let mut keys = Vec::new();
    for lr in lrs {
        let (r, secs) = run(&one_by_one, &["--set", &format!("finetune.lr={lr}")]);
        sequential += secs;
        keys.push(stages(&r)["finetune"].1.clone());
    }
    let (_, sweep_j1) = run(&in_turn, &["--sweep", &format!("finetune.lr={}", lrs.join(",")), "-j", "1"]);
    let (r, sweep) = run(&swept, &["--sweep", &format!("finetune.lr={}", lrs.join(","))]);
    let st = stages(&r);
    let shared: Vec<&String> = st.keys().filter(|k| !k.contains('@')).collect();
    for (k, key) in keys.iter().enumerate() {
        assert_eq!(&st[&format!("finetune@{}", k + 1)].1, key, "a point is keyed as its plain run");
    }
    eprintln!(
        "3-point finetune.lr sweep on Slurm: {sweep:.1} s (jobs at once), {sweep_j1:.1} s (-j 1); the three runs one after another: {sequential:.1} s; shared stages: {shared:?}"
    );
}

/// A controller restart while a job runs: the job goes on on the node and
/// the run finishes normally. (Slurm's client itself waits about 18 s for
/// a missing controller before `squeue` fails; cairn's retries with backoff
/// for longer outages are unit-tested in `src/executor/slurm.rs`.)
#[test]
fn a_controller_restart_mid_run_is_ridden_out() {
    let Some(mut c) = Cluster::start("a_controller_restart_mid_run_is_ridden_out") else { return };
    let p = Project::new(&SLEEPER.replace("TIME", "5").replace("sleep 300", "sleep 8"));
    let (child, id) = start_slow_run(&p, &c);
    c.restart_controller(Duration::from_secs(3));
    let r: Run = child.wait_with_output().unwrap().into();
    assert_eq!(r.code, 0, "job {id}: {}\n{}", r.all(), c.logs());
    assert_eq!(String::from_utf8(artifact(&p, "slow/x.txt")).unwrap(), "done\n");
}
