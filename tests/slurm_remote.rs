//! Stages on a real Slurm cluster whose jobs share nothing with the engine
//! but the remote cache (`data = "remote"`): a private single-node cluster
//! (`support/slurm.rs`) and a real S3 server (`support/weed.rs`) per test.
//! The node is this machine, so the tests prove the node did not use the
//! engine's files by what its jobs print into their logs (which they
//! upload): every path a stage read or wrote is under the node's own
//! temporary directory. A test whose cluster or server cannot start skips
//! visibly (and fails under CI=true).

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
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{artifact, nothing_cached, stages, Project, Run};
use ml::{ml_cluster, write_cifar, ML_PIPELINE};
use object_store::{ObjectStore, ObjectStoreExt};
use slurm::Cluster;
use weed::Weed;

/// `gen` → `sum` (which also reads an external directory with an empty
/// subdirectory), and `words`, on an executor whose jobs see only the
/// remote; the `here` profile moves them to this machine. Each stage
/// prints where it read and wrote, into its job's log.
const PIPELINE: &str = r#"
[pipeline]
name = "slurm-remote-test"

[remote]
url = "s3://cairn/team"

[executors.cluster]
kind = "slurm"
cpus = 1
mem = "200M"
time = "5"
data = "remote"
sbatch_args = ["--export=ALL,TMPDIR=NODE_TMP"]

[executors.here]
kind = "local"

[stages.gen]
kind = "command"
cmd = "seq 1 5000 > {out.numbers}; echo \"wrote {out.numbers}\""
outputs = { numbers = "numbers.txt" }
executor = "cluster"

[stages.sum]
kind = "command"
cmd = "awk '{ s += $1 } END { print s }' {in.numbers} > {out.total}; cat {in.data}/a.txt {in.data}/sub/b.txt >> {out.total}; (cd {in.data} && find . | sort) >> {out.total}; echo \"read {in.numbers} {in.data} wrote {out.total}\""
inputs = { numbers = "gen.numbers", data = { file = "data" } }
outputs = { total = "total.txt" }
executor = "cluster"

[stages.words]
kind = "command"
cmd = "echo independent > {out.w}; echo \"wrote {out.w}\""
outputs = { w = "w.txt" }
executor = "cluster"

[profiles.here]
"gen.executor" = "here"
"sum.executor" = "here"
"words.executor" = "here"
"#;

fn cairn(p: &Project, c: &Cluster, w: &Weed, args: &[&str]) -> Run {
    command(p, c, w, args).output().expect("cairn runs").into()
}

fn command(p: &Project, c: &Cluster, w: &Weed, args: &[&str]) -> Command {
    let mut cmd = p.cmd(args);
    cmd.envs(c.env()).env_remove("CAIRN_REMOTE");
    w.env(&mut cmd);
    cmd
}

/// A project of `pipeline` whose jobs' temporary directory is `node_tmp`,
/// with its external directory input.
fn project(pipeline: &str, node_tmp: &Path) -> Project {
    let p = Project::new(&pipeline.replace("NODE_TMP", &node_tmp.display().to_string()));
    p.write("data/a.txt", "alpha\n");
    p.write("data/sub/b.txt", "beta\n");
    std::fs::create_dir_all(p.path().join("data/empty")).unwrap();
    p
}

/// Every object under `prefix` on the server, by path.
fn remote_files(w: &Weed, prefix: &str) -> BTreeMap<String, Vec<u8>> {
    w.block_on(async {
        use futures::TryStreamExt;
        let store = w.store();
        let list: Vec<_> = store.list(Some(&prefix.into())).try_collect().await.unwrap();
        let mut out = BTreeMap::new();
        for meta in list {
            let bytes = store.get(&meta.location).await.unwrap().bytes().await.unwrap();
            out.insert(meta.location.to_string(), bytes.to_vec());
        }
        out
    })
}

#[test]
fn stages_whose_jobs_share_only_the_remote_match_a_local_run() {
    let test = "stages_whose_jobs_share_only_the_remote_match_a_local_run";
    let Some(c) = Cluster::start(test) else { return };
    let Some(w) = Weed::start(test) else { return };
    let node_tmp = tempfile::Builder::new().prefix("cairn-node-tmp-").tempdir().unwrap();
    let on_slurm = project(PIPELINE, node_tmp.path());
    let r = cairn(&on_slurm, &c, &w, &["run", "--json", "-j", "3"]);
    assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
    let remote = stages(&r);
    assert!(remote.values().all(|(s, _)| s == "ran"), "{remote:?}");

    // What the jobs printed reached the remote with their records; every
    // path a stage read or wrote was in the node's own directory.
    let jobs = remote_files(&w, "team/v1/jobs");
    let logs: Vec<String> = jobs.iter().filter(|(k, _)| k.ends_with("/job.log")).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).collect();
    assert_eq!(logs.len(), 3, "one log per job: {:?}", jobs.keys().collect::<Vec<_>>());
    assert_eq!(jobs.keys().filter(|k| k.ends_with("/result.json")).count(), 3);
    let project_dir = on_slurm.path().display().to_string();
    let node_dir = node_tmp.path().display().to_string();
    let sum_log = logs.iter().find(|l| l.contains("] read ")).unwrap_or_else(|| panic!("no log of `sum`: {logs:?}"));
    for log in &logs {
        assert!(log.contains(&format!("working in {node_dir}/cairn-jobdir-")), "{log}");
        assert!(!log.contains(&project_dir), "a job touched the engine's files: {log}");
    }
    let paths: Vec<&str> = sum_log.lines().find(|l| l.contains("] read ")).unwrap().split_whitespace().map(|w| w.trim_matches('\'')).filter(|w| w.starts_with('/')).collect();
    assert_eq!(paths.len(), 3, "{sum_log}");
    assert!(paths.iter().all(|p| p.starts_with(&node_dir)), "`sum` read and wrote outside the node's directory: {paths:?}");
    assert_eq!(std::fs::read_dir(node_tmp.path()).unwrap().count(), 0, "the jobs' directories are removed");
    assert!(!std::fs::read_dir(on_slurm.cache().join("tmp")).unwrap().flatten().any(|e| e.path().join("job").exists()), "no job directory in the cache");

    // The same pipeline here: the same keys and the same bytes.
    let local = project(PIPELINE, node_tmp.path());
    let r = cairn(&local, &c, &w, &["run", "--json", "--profile", "here", "--remote", "none"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let here = stages(&r);
    for stage in ["gen", "sum", "words"] {
        assert_eq!(remote[stage].1, here[stage].1, "`{stage}`: where it ran must not change its key");
    }
    for rel in ["gen/numbers.txt", "sum/total.txt", "words/w.txt"] {
        assert!(artifact(&on_slurm, rel) == artifact(&local, rel), "{rel} differs");
    }
    // The directory arrived whole, its empty subdirectory included.
    assert_eq!(String::from_utf8(artifact(&on_slurm, "sum/total.txt")).unwrap(), "12502500\nalpha\nbeta\n.\n./a.txt\n./empty\n./sub\n./sub/b.txt\n");

    // Back on this machine, nothing runs again.
    let r = cairn(&on_slurm, &c, &w, &["run", "--json", "--profile", "here"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(stages(&r).values().all(|(s, _)| s == "cached"), "{}", r.all());

    // The jobs' files go with `remote gc` once past its grace period.
    let r = cairn(&on_slurm, &c, &w, &["remote", "gc", "--keep-runs", "1", "--grace-hours", "0", "--delete"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains(&format!("deleted {} file(s) of finished jobs", jobs.len())), "{}", r.all());
    assert!(remote_files(&w, "team/v1/jobs").is_empty());
}

/// One stage writing known bytes.
const ONE: &str = r#"
[pipeline]
name = "slurm-remote-damage"

[remote]
url = "s3://cairn/team"

[executors.cluster]
kind = "slurm"
cpus = 1
time = "TIME"
data = "remote"
sbatch_args = ["--export=ALL,TMPDIR=NODE_TMP"]

[stages.one]
kind = "command"
cmd = "CMD"
outputs = { x = "x.txt" }
executor = "cluster"
"#;

/// A project of [`ONE`] running `cmd` with time limit `time`, its jobs'
/// temporary directory `node_tmp`.
fn one(node_tmp: &Path, time: &str, cmd: &str) -> Project {
    Project::new(&ONE.replace("NODE_TMP", &node_tmp.display().to_string()).replace("TIME", time).replace("CMD", cmd))
}

#[test]
fn a_damaged_output_object_on_the_remote_fails_the_stage_and_caches_nothing() {
    let test = "a_damaged_output_object_on_the_remote_fails_the_stage_and_caches_nothing";
    let Some(c) = Cluster::start(test) else { return };
    let Some(w) = Weed::start(test) else { return };
    // Other bytes of the same size already under the output's name: the
    // job's create-only upload keeps them, and the engine must refuse them.
    let bytes = b"hello remote\n";
    let name = format!("team/v1/objects/{}", blake3::hash(bytes).to_hex());
    w.block_on(async { w.store().put(&name.as_str().into(), b"jello remote\n".to_vec().into()).await }).unwrap();
    let node_tmp = tempfile::tempdir().unwrap();
    let p = one(node_tmp.path(), "5", "echo hello remote > {out.x}");
    let r = cairn(&p, &c, &w, &["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("its outputs cannot be had from the remote, so nothing was cached") && r.stderr.contains("its bytes are damaged"), "{}", r.all());
    assert!(r.stderr.contains("help: `cairn remote verify --all` lists damaged objects"), "{}", r.all());
    nothing_cached(&p);
    assert!(!p.path().join("artifacts/one/x.txt").exists());
}

/// A running `cairn` whose stderr is read as it comes.
struct Watched {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Watched {
    fn start(mut cmd: Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (lines, into) = (BufReader::new(child.stderr.take().unwrap()).lines(), stderr.clone());
        let reader = std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| *into.lock().unwrap() += &format!("{l}\n")));
        Self { child, stderr, reader }
    }

    /// Waits until the stderr so far holds `text`.
    fn wait_for(&self, text: &str, c: &Cluster) {
        let t0 = Instant::now();
        while !self.stderr.lock().unwrap().contains(text) {
            assert!(t0.elapsed() < Duration::from_secs(90), "no {text:?} in cairn's output:\n{}\n{}", self.stderr.lock().unwrap(), c.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn finish(self) -> Run {
        let out = self.child.wait_with_output().unwrap();
        self.reader.join().unwrap();
        let stderr = std::mem::take(&mut *self.stderr.lock().unwrap());
        Run { code: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into_owned(), stderr }
    }
}

#[test]
fn a_scancelled_remote_job_fails_its_stage_naming_its_state_and_log() {
    let test = "a_scancelled_remote_job_fails_its_stage_naming_its_state_and_log";
    let Some(c) = Cluster::start(test) else { return };
    let Some(w) = Weed::start(test) else { return };
    // Killed outright, the job leaves its directory: in this one, not /tmp.
    let node_tmp = tempfile::tempdir().unwrap();
    let p = one(node_tmp.path(), "5", "echo started; sleep 300; echo done > {out.x}");
    let run = Watched::start(command(&p, &c, &w, &["run", "-v"]));
    let id = c.running_job("-one");
    // Cancel once the stage has started and its first line, which the job
    // uploads in its log while it runs, has reached `-v`.
    run.wait_for("| started", &c);
    assert!(c.command("scancel").arg(&id).status().unwrap().success());
    let r = run.finish();
    assert_eq!(r.code, 1, "{}", r.all());
    assert_eq!(r.stderr.matches("| started").count(), 1, "each line of the log once: {}", r.all());
    assert!(r.stderr.contains(&format!("Slurm job {id} ended in state CANCELLED")), "{}", r.all());
    assert!(r.stderr.contains("the end of its log") && r.stderr.contains("started"), "the message should quote the job's uploaded log: {}\n{}", r.all(), c.logs());
    nothing_cached(&p);
}

/// A `train` job whose executor shares only the remote, requeued once a
/// checkpoint of it reached the remote: Slurm runs the same job again, in
/// a new directory with nothing of the first run's, and it resumes from
/// that checkpoint (which `-v` shows, from the log it uploads) to an
/// uninterrupted run's bytes. The first attempt outlives the test
/// cluster's 2 s `KillWait` (it uploads its checkpoint), so it is killed
/// with its directory in place; the second removes it when it starts.
#[test]
fn a_requeued_remote_train_job_resumes_from_its_checkpoint_on_the_remote() {
    let test = "a_requeued_remote_train_job_resumes_from_its_checkpoint_on_the_remote";
    let Some(c) = ml_cluster(test) else { return };
    let Some(w) = Weed::start(test) else { return };
    // About 20 ms an epoch here: long enough to requeue it mid-training.
    let long = ML_PIPELINE.replace("epochs = 1", "epochs = 400");
    let node_tmp = tempfile::Builder::new().prefix("cairn-node-tmp-").tempdir().unwrap();
    let on_node_tmp = format!("data = \"remote\"\nsbatch_args = [\"--export=ALL,TMPDIR={}\"]", node_tmp.path().display());
    let p = Project::new(&ml::with_remote_data(&long, "s3://cairn/ml").replace("data = \"remote\"", &on_node_tmp));
    write_cifar(&p);
    let run = Watched::start(command(&p, &c, &w, &["run", "-v"]));
    let t0 = Instant::now();
    let checkpointed = || remote_files(&w, "ml/v1/jobs").into_iter().find(|(k, _)| k.ends_with("/checkpoints/checkpoint.safetensors")).and_then(|(_, v)| ml::epochs_done(&v));
    while checkpointed().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint reached the remote after 2 minutes:\n{}\n{}", run.stderr.lock().unwrap(), c.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let id = c.running_job("-train");
    let requeue = c.command("scontrol").args(["requeue", &id]).output().unwrap();
    assert!(requeue.status.success(), "scontrol requeue: {}", String::from_utf8_lossy(&requeue.stderr));
    let r = run.finish();
    assert_eq!(r.code, 0, "{}\n{}", r.all(), c.logs());
    let once = |text: &str| r.stderr.matches(&format!("train        | {text}")).count() == 1;
    assert!(once("cairn exec-job: restored checkpoint checkpoint.safetensors ("), "the requeued job found no checkpoint:\n{}", r.stderr);
    assert!(once("resuming train from epoch"), "the requeued job did not resume:\n{}", r.stderr);
    assert!(once("epoch 400/400 "), "the job's epoch lines reach -v, each once:\n{}", r.stderr);
    eprintln!("{}", r.stderr.lines().find(|l| l.contains("resuming train")).unwrap_or_default());
    let left: Vec<_> = std::fs::read_dir(node_tmp.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "the killed attempt's directory and the finished one's are removed: {left:?}");

    let local = Project::new(&long);
    write_cifar(&local);
    let here = cairn(&local, &c, &w, &["run", "--profile", "here", "--remote", "none"]);
    assert_eq!(here.code, 0, "{}", here.all());
    assert!(ml::train_artifacts(&p) == ml::train_artifacts(&local), "a resumed job must write an uninterrupted run's bytes");

    // The finished job deleted its checkpoint; `remote gc` removes the
    // job's other files.
    assert!(checkpointed().is_none(), "a finished job's checkpoint is gone from the remote");
    assert!(!remote_files(&w, "ml/v1/jobs").is_empty());
    let r = cairn(&p, &c, &w, &["remote", "gc", "--keep-runs", "1", "--grace-hours", "0", "--delete"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(remote_files(&w, "ml/v1/jobs").is_empty());
}

/// Slurm's smallest time limit is a minute: this test takes one or two,
/// beside the others.
#[test]
fn a_remote_job_past_its_time_limit_fails_naming_its_state_and_log() {
    let test = "a_remote_job_past_its_time_limit_fails_naming_its_state_and_log";
    let Some(c) = Cluster::start(test) else { return };
    let Some(w) = Weed::start(test) else { return };
    let node_tmp = tempfile::tempdir().unwrap();
    let p = one(node_tmp.path(), "1", "echo started; sleep 300; echo done > {out.x}");
    let r = cairn(&p, &c, &w, &["run"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("ended in state TIMEOUT (it ran past its time limit: raise `time` in its executor)"), "{}", r.all());
    assert!(r.stderr.contains("the end of its log") && r.stderr.contains("started"), "{}\n{}", r.all(), c.logs());
    // A time limit is SIGTERM first, and the job uploads its last words if
    // Slurm gives it the time (not always within the test cluster's KillWait
    // of 2 s); the log it uploaded while it ran is there either way.
    eprintln!("the job's last words reached the remote: {}", r.stderr.contains("cairn exec-job: stage `one` failed"));
    nothing_cached(&p);
}

/// Needs no cluster: `data = "remote"` without a remote cache is refused
/// before anything is submitted, naming the place; a bad value too.
#[test]
fn remote_data_without_a_remote_is_an_error_naming_the_executor() {
    let p = Project::new(&ONE.replace("TIME", "5").replace("CMD", "true").replace("[remote]\nurl = \"s3://cairn/team\"\n", ""));
    let r = p.cairn(&["run"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("`executors.cluster.data = \"remote\"`") && r.stderr.contains("no remote cache"), "{}", r.all());
    let p = Project::new(&ONE.replace("TIME", "5").replace("CMD", "true").replace("data = \"remote\"", "data = \"nfs\""));
    let r = p.cairn(&["status"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stderr.contains("`executors.cluster.data` must be \"shared\" or \"remote\""), "{}", r.all());
}

/// The overhead of a small stage with `data = "remote"`, against the same
/// chain run here (BENCHMARKS "Stages on Slurm"): a chain of five one-line
/// stages, each a job that pulls its input from the S3 server and pushes
/// its output, median of five runs each way, a fresh project (and a fresh
/// prefix on the server) each time. A benchmark: run it by hand with
/// `--ignored --nocapture` on a quiet machine.
#[test]
#[ignore]
fn overhead_of_a_small_stage_with_remote_data() {
    let Some(c) = Cluster::start("overhead_of_a_small_stage_with_remote_data") else { return };
    let Some(w) = Weed::start("overhead_of_a_small_stage_with_remote_data") else { return };
    // The node works in /tmp: an `--export=ALL,TMPDIR=...` costs a second a job.
    let text = slurm::overhead_chain(
        "[pipeline]\nname = \"overhead\"\n[remote]\nurl = \"URL\"\n[executors.cluster]\nkind = \"slurm\"\ncpus = 1\nmem = \"100M\"\ndata = \"remote\"\n[executors.here]\nkind = \"local\"\n",
    );
    let mut round = 0;
    slurm::report_overhead(", remote data", |profile| {
        round += 1;
        let p = Project::new(&text.replace("URL", &format!("s3://cairn/overhead-{round}")));
        let mut args = vec!["run"];
        args.extend(profile.iter().flat_map(|pr| ["--profile", pr]));
        let t0 = std::time::Instant::now();
        let r = cairn(&p, &c, &w, &args);
        assert_eq!(r.code, 0, "{}", r.all());
        t0.elapsed().as_secs_f64()
    });
}
