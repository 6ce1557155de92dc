//! Keys take their environment facts from `cairn-worker --probe`, through
//! the real `cairn` binary: pipelines of `command` stages never start the
//! worker, the probe is cached so `status` does not start it twice, and a
//! missing or stale worker fails the stages that need it with the fix. The
//! worker here is a shell script standing in for `cairn-worker`, so these
//! tests need no libtorch; one takes a copy of the real worker whose
//! libtorch is gone.

mod common;
#[path = "support/skip.rs"]
mod skip;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cairn::worker::{Probe, PROTOCOL_VERSION};
use common::Project;

/// A `command` stage making a file that a `resize` stage reads, and an
/// unrelated `command` stage.
const MIXED: &str = r#"
[stages.make]
kind = "command"
cmd = "printf x > {out.images}"
outputs = { images = "images.arrow" }

[stages.small]
kind = "resize"
size = 8
inputs = { images = "make.images" }

[stages.other]
kind = "command"
cmd = "echo hi > {out.o}"
outputs = { o = "o.txt" }
"#;

fn probe(kinds_offset: u32) -> Probe {
    Probe {
        protocol: PROTOCOL_VERSION,
        libtorch: cairn::env::TORCH_VERSION.into(),
        libtorch_path: None,
        cuda: false,
        device: "cpu".into(),
        cpu_capability: "AVX2".into(),
        native_bf16: "none".into(),
        kinds: cairn_kinds::all().iter().map(|k| (k.info().name.to_string(), k.info().version + kinds_offset)).collect(),
    }
}

/// A stand-in worker that logs each call to `<dir>/calls` and answers
/// `--probe` with `probe`; it runs no jobs.
fn fake_worker(dir: &Path, probe: &Probe) -> PathBuf {
    let path = dir.join("fake-worker");
    let script = format!(
        "#!/bin/sh\necho \"$1\" >> '{calls}'\n[ \"$1\" = --probe ] || exit 2\necho '{json}'\n",
        calls = dir.join("calls").display(),
        json = serde_json::to_string(probe).unwrap()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls")).unwrap_or_default().lines().map(str::to_string).collect()
}

#[test]
fn command_pipelines_never_start_the_worker() {
    let p = Project::new(
        "[stages.a]\nkind = \"command\"\ncmd = \"echo a > {out.o}\"\noutputs = { o = \"o.txt\" }\n",
    );
    let tools = tempfile::tempdir().unwrap();
    let worker = fake_worker(tools.path(), &probe(0));
    for args in [&["run"][..], &["status"], &["run"]] {
        let r = p.cmd(args).env("CAIRN_WORKER", &worker).output().unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
    assert!(calls(tools.path()).is_empty(), "the worker was started: {:?}", calls(tools.path()));
    assert!(!p.cache().join(cairn::env::PROBE_DIR).exists());
}

#[test]
fn a_missing_worker_fails_only_the_stages_that_need_it() {
    let p = Project::new(MIXED);
    let r: common::Run = p.cmd(&["run"]).env("CAIRN_WORKER", "/nonexistent/cairn-worker").output().unwrap().into();
    assert_ne!(r.code, 0, "{}", r.all());
    assert_eq!(r.outcome("small").as_deref(), Some("FAILED"), "{}", r.all());
    assert_eq!(r.outcome("other").as_deref(), Some("ran"), "{}", r.all());
    assert!(r.all().contains("/nonexistent/cairn-worker") && r.all().contains("make setup"), "{}", r.all());
}

#[test]
fn the_probe_is_cached_so_status_stays_fast() {
    let p = Project::new(MIXED);
    let tools = tempfile::tempdir().unwrap();
    let worker = fake_worker(tools.path(), &probe(0));
    let run = |args: &[&str]| -> common::Run { p.cmd(args).env("CAIRN_WORKER", &worker).output().unwrap().into() };
    assert_eq!(run(&["run", "make"]).code, 0);
    for _ in 0..2 {
        let r = run(&["status"]);
        assert_eq!(r.code, 0, "{}", r.all());
    }
    assert_eq!(calls(tools.path()), ["--probe"], "one probe, then the cache");
    let cached: Vec<_> = std::fs::read_dir(p.cache().join(cairn::env::PROBE_DIR)).unwrap().collect();
    assert_eq!(cached.len(), 1);
}

#[test]
fn a_worker_from_another_checkout_is_named_with_the_fix() {
    let p = Project::new(MIXED);
    let tools = tempfile::tempdir().unwrap();
    let worker = fake_worker(tools.path(), &probe(1));
    let r: common::Run = p.cmd(&["run"]).env("CAIRN_WORKER", &worker).output().unwrap().into();
    assert_eq!(r.outcome("small").as_deref(), Some("FAILED"), "{}", r.all());
    let all = r.all();
    assert!(all.contains("another checkout") && all.contains("make setup") && all.contains(&worker.display().to_string()), "{all}");
    assert!(!calls(tools.path()).iter().any(|c| c == "run"), "a stale worker must not be given jobs");
}

/// A stand-in worker that answers `--probe` with `probe` and, given a job,
/// keeps a copy of it as `<dir>/job.json` and fails.
fn job_keeping_worker(dir: &Path, probe: &Probe) -> PathBuf {
    let path = dir.join("fake-worker");
    let script = format!(
        "#!/bin/sh\nif [ \"$1\" = --probe ]; then echo '{json}'; exit 0; fi\ncp \"$2\" '{kept}'\nexit 1\n",
        json = serde_json::to_string(probe).unwrap(),
        kept = dir.join("job.json").display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The job a worker gets names each input by its local path and by the
/// content hash it was keyed with, so a remote worker could fetch it by
/// digest.
#[test]
fn jobs_name_inputs_by_path_and_content_hash() {
    let p = Project::new(MIXED);
    let tools = tempfile::tempdir().unwrap();
    let worker = job_keeping_worker(tools.path(), &probe(0));
    let r: common::Run = p.cmd(&["run", "small"]).env("CAIRN_WORKER", &worker).output().unwrap().into();
    assert_eq!(r.outcome("small").as_deref(), Some("FAILED"), "{}", r.all());
    let job: cairn::worker::Job = serde_json::from_slice(&std::fs::read(tools.path().join("job.json")).unwrap()).unwrap();
    assert_eq!((job.protocol, job.kind.as_str(), job.stage.as_str()), (PROTOCOL_VERSION, "resize", "small"));
    assert_eq!(job.version, cairn_kinds::find("resize").unwrap().info().version);
    let [input] = job.inputs["images"].as_slice() else { panic!("one input: {:?}", job.inputs) };
    assert_eq!(input.hash.as_deref(), Some(cairn::digest::ArtifactHash::of_bytes(b"x").to_hex().as_str()));
    assert_eq!(std::fs::read(&input.path).unwrap(), b"x", "the path is the object holding those bytes");
    assert!(job.outputs.contains_key("images"), "{:?}", job.outputs);
}

/// A `command` stage whose output names the profile applied.
const PROFILED: &str = r#"
[stages.s]
kind = "command"
cmd = "echo none > {out.o}"
outputs = { o = "o.txt" }

[profiles.cpu]
"s.cmd" = "echo cpu > {out.o}"

[profiles.cpu-fp32]
"s.cmd" = "echo cpu-fp32 > {out.o}"
"#;

/// AMX included: the choice does not start the worker to ask.
#[test]
fn every_cpu_gets_the_cpu_fp32_profile_without_the_worker_and_says_so() {
    let p = Project::new(PROFILED);
    let tools = tempfile::tempdir().unwrap();
    let worker = fake_worker(tools.path(), &Probe { native_bf16: "amx_bf16".into(), ..probe(0) });
    let r: common::Run = p.cmd(&["run", "--cpu"]).env("CAIRN_WORKER", &worker).output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(p.read_artifact("s", "o.txt"), "cpu-fp32\n", "{}", r.all());
    assert!(r.all().contains("no CUDA device found: using profile `cpu-fp32`"), "{}", r.all());
    assert!(calls(tools.path()).is_empty(), "the worker was started: {:?}", calls(tools.path()));
    let named: common::Run = p.cmd(&["status", "--cpu", "--profile", "cpu"]).env("CAIRN_WORKER", &worker).output().unwrap().into();
    assert!(!named.all().contains("using profile"), "a named profile is not announced: {}", named.all());
}

#[test]
fn a_pipeline_without_a_cpu_fp32_profile_chooses_without_the_worker() {
    let p = Project::new(&PROFILED.replace("[profiles.cpu-fp32]", "[profiles.other]"));
    let tools = tempfile::tempdir().unwrap();
    let worker = fake_worker(tools.path(), &probe(0));
    let r: common::Run = p.cmd(&["run", "--cpu"]).env("CAIRN_WORKER", &worker).output().unwrap().into();
    assert_eq!(r.code, 0, "{}", r.all());
    assert_eq!(p.read_artifact("s", "o.txt"), "cpu\n");
    assert!(calls(tools.path()).is_empty(), "the worker was started: {:?}", calls(tools.path()));
}

/// A copy of the real `cairn-worker` whose libtorch is gone (its RUNPATH,
/// `…/torch/lib`, bent to a folder that does not exist): the dynamic loader
/// refuses to start it, and the stage's error sends the user to `make
/// setup`, which installs libtorch again.
#[test]
fn a_worker_whose_libtorch_is_gone_is_sent_to_make_setup() {
    let test = "a_worker_whose_libtorch_is_gone_is_sent_to_make_setup";
    let built = Path::new(env!("CARGO_BIN_EXE_cairn")).with_file_name("cairn-worker");
    let Ok(mut bytes) = std::fs::read(&built) else {
        return skip::missing(test, "cairn-worker is not built (`cargo build --release --workspace`)");
    };
    let (from, to) = (b"/torch/lib\0", b"/torch/gon\0");
    let at: Vec<usize> = bytes.windows(from.len()).enumerate().filter(|(_, w)| w == from).map(|(i, _)| i).collect();
    if at.is_empty() {
        return skip::unavailable(test, "this cairn-worker finds libtorch elsewhere than a RUNPATH ending in torch/lib");
    }
    for i in at {
        bytes[i..i + to.len()].copy_from_slice(to);
    }
    let tools = tempfile::tempdir().unwrap();
    let worker = tools.path().join("cairn-worker");
    std::fs::write(&worker, bytes).unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = Project::new("[stages.load]\nkind = \"load_subset\"\nsource = \"data.tar.gz\"\ntrain_per_class = 1\n");
    p.write("data.tar.gz", "not read: the worker never starts");
    let r: common::Run = p.cmd(&["run"]).env("CAIRN_WORKER", &worker).output().unwrap().into();
    assert_eq!(r.outcome("load").as_deref(), Some("FAILED"), "{}", r.all());
    assert!(r.stderr.contains("error while loading shared libraries"), "{}", r.stderr);
    assert!(r.stderr.contains("help: cairn-worker cannot load a library") && r.stderr.contains("run `make setup`"), "{}", r.stderr);
}
