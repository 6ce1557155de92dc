//! The `cairn-worker` binary as the engine drives it: a job file in, Event
//! JSON lines on stdout, and the exit status (0 success, 1 failure or a
//! refused job, 2 unknown kind or kind version); `--probe` and the facts it
//! reads from libtorch. Also checks the binary starts without
//! LD_LIBRARY_PATH, which is what the rpath from build.rs is for.

#[path = "../../tests/support/skip.rs"]
mod skip;
#[path = "../../tests/support/tmpfs.rs"]
mod tmpfs;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_formats::{write_tensor, DType, TensorFile};
use cairn_kind::protocol::{Event, Job, Probe, MKL_VARS, ONEDNN_ISA_VARS, PROTOCOL_VERSION};
use serde_json::{json, Value};

fn worker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-worker"));
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

fn run_job(dir: &Path, job: Value) -> (Output, Vec<Event>) {
    run_job_env(dir, job, &[])
}

fn run_job_env(dir: &Path, job: Value, env: &[(&str, &str)]) -> (Output, Vec<Event>) {
    let path = dir.join("job.json");
    std::fs::write(&path, job.to_string()).unwrap();
    let out = worker().envs(env.iter().copied()).arg("run").arg(&path).output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event: {l}: {e}")))
        .collect();
    (out, events)
}

/// A CPU job keyed on nothing, at the kind's own version (an undeclared
/// kind at version 1), as the JSON the worker reads.
fn job(kind: &str, params: Value, inputs: Value, outputs: Value, dir: &Path) -> Value {
    let info = cairn_kinds::find(kind).map_or(cairn_kinds::KindId::Resize.info(), |k| k.info());
    let mut j = Job::new(info, "s", params, dir).with_seed(3);
    if cairn_kinds::find(kind).is_none() {
        (j.kind, j.version) = (kind.to_string(), 1);
    }
    let inputs: BTreeMap<String, Vec<PathBuf>> = serde_json::from_value(inputs).unwrap();
    for (slot, paths) in inputs {
        j = j.with_input(&slot, paths);
    }
    let outputs: BTreeMap<String, PathBuf> = serde_json::from_value(outputs).unwrap();
    for (name, path) in outputs {
        j = j.with_output(&name, path);
    }
    serde_json::to_value(j).unwrap()
}

fn probe(extra_env: &[(&str, &str)]) -> Probe {
    let mut cmd = worker();
    for var in ONEDNN_ISA_VARS.iter().chain(&MKL_VARS) {
        cmd.env_remove(var);
    }
    let out = cmd.arg("--probe").envs(extra_env.iter().copied()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "one JSON object on one line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a probe: {text}: {e}"))
}

/// A one-image resize job keyed on `keyed`, at `version`.
fn keyed_resize(dir: &Path, version: u32, device: &str, keyed: Value) -> (Value, std::path::PathBuf) {
    let input = dir.join("in.arrow");
    write_tensor(&input, DType::U8, &[1, 3, 4, 4], &[7u8; 48]).unwrap();
    let output = dir.join("out.arrow");
    let params = json!({"size": 8, "mode": "bilinear", "antialias": true, "splits": ["images"]});
    let mut j = job("resize", params, json!({"images": [input]}), json!({"images": output}), dir);
    j["version"] = json!(version);
    j["env"] = json!({"device": device, "threads": 1, "keyed": keyed});
    (j, output)
}

fn error_of(events: &[Event]) -> &str {
    match events.last() {
        Some(Event::Error { message }) => message,
        other => panic!("last event is not an error: {other:?}"),
    }
}

#[test]
fn version_reports_libtorch_and_cuda() {
    let out = worker().arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("libtorch {}", cairn_kind::protocol::TORCH_VERSION)) && text.contains("CUDA "), "{text}");
}

#[test]
fn probe_reports_facts_from_libtorch() {
    let p = probe(&[]);
    assert_eq!(p.protocol, PROTOCOL_VERSION);
    assert_eq!(p.libtorch, cairn_kind::protocol::TORCH_VERSION, "the loaded library's version");
    assert!(p.libtorch_path.as_ref().is_some_and(|l| l.is_file()), "{:?}", p.libtorch_path);
    assert_eq!(p.cuda, p.device.starts_with("cuda:"), "{p:?}");
    assert!(p.cuda || p.device == "cpu", "{p:?}");
    // ATen's class, then the vendor where it is not Intel.
    let aten = p.cpu_capability.split(", on ").next().unwrap_or_default();
    assert!(["DEFAULT", "AVX2", "AVX512", "ZVECTOR", "SVE256"].contains(&aten), "{p:?}");
    let amd = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default().contains("AuthenticAMD");
    assert_eq!(p.cpu_capability.ends_with(", on AuthenticAMD"), amd, "{p:?}");
    assert!(!p.native_bf16.is_empty(), "{p:?}");
    for k in cairn_kinds::all() {
        assert_eq!(p.kinds.get(k.info().name), Some(&k.info().version), "{p:?}");
    }
    // The capability is the one libtorch dispatches to, so it follows
    // libtorch's own override.
    let vendor = &p.cpu_capability[aten.len()..];
    assert_eq!(probe(&[("ATEN_CPU_CAPABILITY", "default")]).cpu_capability, format!("DEFAULT{vendor}"));
    // oneDNN picks its convolution kernels on its own: a cap on it is part
    // of the fact.
    let capped = probe(&[("DNNL_MAX_CPU_ISA", "avx2")]);
    assert_eq!(capped.cpu_capability, format!("{}, oneDNN capped at AVX2", p.cpu_capability));
    // Below its bf16 ISAs oneDNN emulates bf16, whatever the CPU has, so
    // `auto` must see none; a cap below AMX hides AMX, leaving an Intel
    // CPU's AVX512-BF16 (every CPU with AMX is one); a cap at AMX changes
    // nothing.
    assert_eq!(capped.native_bf16, "none");
    let below_amx = if p.native_bf16 == "amx_bf16" { "avx512_bf16_intel" } else { p.native_bf16.as_str() };
    assert_eq!(probe(&[("ONEDNN_MAX_CPU_ISA", "avx512_core_bf16")]).native_bf16, below_amx);
    assert_eq!(probe(&[("ONEDNN_MAX_CPU_ISA", "avx512_core_amx")]).native_bf16, p.native_bf16);
    // So does MKL for matrix products (Lite0's 1×1 convs in training, every
    // classifier): its settings are part of the fact, after oneDNN's cap.
    let both = probe(&[("DNNL_MAX_CPU_ISA", "avx2"), ("MKL_ENABLE_INSTRUCTIONS", "AVX2"), ("MKL_CBWR", " COMPATIBLE ")]);
    assert_eq!(both.cpu_capability, format!("{}, oneDNN capped at AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2, MKL_CBWR=COMPATIBLE", p.cpu_capability));
    assert_eq!(both.native_bf16, "none");
}

#[test]
fn a_job_keyed_on_this_workers_facts_runs() {
    let dir = tempfile::tempdir().unwrap();
    let p = probe(&[]);
    let keyed = json!({"libtorch": p.libtorch, "device": "cpu", "cpu_capability": p.cpu_capability, "native_bf16": p.native_bf16});
    let (j, output) = keyed_resize(dir.path(), cairn_kinds::data::Resize::VERSION, "cpu", keyed);
    let (out, events) = run_job(dir.path(), j);
    assert!(out.status.success(), "{events:?} {}", String::from_utf8_lossy(&out.stderr));
    assert!(output.is_file());
}

#[test]
fn refuses_a_job_keyed_with_another_kind_version() {
    let dir = tempfile::tempdir().unwrap();
    let (j, output) = keyed_resize(dir.path(), cairn_kinds::data::Resize::VERSION + 1, "cpu", json!({}));
    let (out, events) = run_job(dir.path(), j);
    assert_eq!(out.status.code(), Some(2));
    let e = error_of(&events);
    assert!(e.contains("kind `resize` version") && e.contains("make setup") && e.contains("same checkout"), "{e}");
    assert!(!output.exists(), "a refused job must not run");
}

#[test]
fn refuses_a_cuda_job_without_cuda() {
    // Hide any GPU this machine has, so the test runs everywhere.
    let no_gpu = [("CUDA_VISIBLE_DEVICES", "")];
    assert!(!probe(&no_gpu).cuda, "CUDA_VISIBLE_DEVICES=\"\" hides every GPU");
    let dir = tempfile::tempdir().unwrap();
    let gpu = "cuda:NVIDIA H200";
    let keyed = json!({"libtorch": cairn_kind::protocol::TORCH_VERSION, "device": gpu});
    let (j, output) = keyed_resize(dir.path(), cairn_kinds::data::Resize::VERSION, gpu, keyed);
    let (out, events) = run_job_env(dir.path(), j, &no_gpu);
    assert_eq!(out.status.code(), Some(1));
    let e = error_of(&events);
    assert!(e.contains(gpu) && e.contains("no usable CUDA device") && e.contains("refusing"), "{e}");
    assert!(!output.exists(), "a refused job must not run");
}

#[test]
fn refuses_a_job_keyed_on_another_cpu_class_or_libtorch() {
    let dir = tempfile::tempdir().unwrap();
    let p = probe(&[]);
    let other = if p.cpu_capability == "DEFAULT" { "AVX2" } else { "DEFAULT" };
    for (name, keyed) in [("cpu_capability", other), ("native_bf16", "made_up_bf16"), ("libtorch", "1.0.0")] {
        let (j, output) = keyed_resize(dir.path(), cairn_kinds::data::Resize::VERSION, "cpu", json!({ name: keyed }));
        let (out, events) = run_job(dir.path(), j);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let e = error_of(&events);
        assert!(e.contains(&format!("keyed on {name} `{keyed}`")) && e.contains("refusing"), "{e}");
        assert!(!output.exists(), "a refused job must not run");
    }
}

#[test]
fn runs_a_job_and_writes_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.arrow");
    write_tensor(&input, DType::U8, &[2, 3, 4, 4], &[7u8; 96]).unwrap();
    let output = dir.path().join("out.arrow");
    let params = json!({"size": 8, "mode": "bilinear", "antialias": true});
    let (out, events) =
        run_job(dir.path(), job("resize", params, json!({"images": [input]}), json!({"images": output}), dir.path()));
    assert!(out.status.success(), "{events:?} {}", String::from_utf8_lossy(&out.stderr));
    assert!(events.iter().any(|e| matches!(e, Event::Metric { name, value } if name == "images" && *value == 2.0)));
    let t = TensorFile::open(&output).unwrap();
    assert_eq!(t.shape(), &[2, 3, 8, 8]);
    assert!(t.to_vec().iter().all(|&v| v == 7), "a flat image stays flat");
}

/// A disk that fills while `resize` writes (a thread of its own writes
/// each slice while the next is resampled): the job fails with an error
/// naming the output and the full disk, without a panic or a hang, whether
/// the writer stops before the next slice is handed over or after.
#[test]
fn a_full_disk_while_resizing_is_an_error_naming_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_disk) = tmpfs::Tmpfs::mount(&dir.path().join("disk"), "4m") else {
        skip::unavailable(
            "a_full_disk_while_resizing_is_an_error_naming_the_output",
            "cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN)",
        );
        return;
    };
    let input = dir.path().join("in.arrow");
    write_tensor(&input, DType::U8, &[64, 3, 4, 4], &[7u8; 64 * 48]).unwrap();
    let output = dir.path().join("disk/out.arrow");
    // 64 images of 3×640×640 bytes: two slices of output (52 images in the
    // first 64 MB), 79 MB for a 4 MB disk.
    let params = json!({"size": 640, "mode": "bilinear", "antialias": true});
    let (out, events) = run_job(dir.path(), job("resize", params, json!({"images": [input]}), json!({"images": output}), dir.path()));
    assert_eq!(out.status.code(), Some(1), "{events:?} {}", String::from_utf8_lossy(&out.stderr));
    let error = error_of(&events);
    assert!(error.contains("out.arrow") && error.contains("No space left on device"), "{error}");
}

#[test]
fn stage_errors_become_an_error_event_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let params = json!({"size": 8, "mode": "bilinear", "antialias": true});
    let missing = dir.path().join("missing.arrow");
    let (out, events) = run_job(
        dir.path(),
        job("resize", params, json!({"images": [missing]}), json!({"images": dir.path().join("o.arrow")}), dir.path()),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(error_of(&events).contains("missing.arrow"), "{events:?}");
}

#[test]
fn unknown_kinds_exit_2_and_bad_jobs_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (out, events) = run_job(dir.path(), job("frobnicate", json!({}), json!({}), json!({}), dir.path()));
    assert_eq!(out.status.code(), Some(2));
    assert!(error_of(&events).contains("no kind `frobnicate`"), "{events:?}");

    let mut old = job("resize", json!({}), json!({}), json!({}), dir.path());
    old["protocol"] = json!(PROTOCOL_VERSION + 1);
    let (out, events) = run_job(dir.path(), old);
    assert_eq!(out.status.code(), Some(1));
    assert!(error_of(&events).contains("protocol"), "{events:?}");

    std::fs::write(dir.path().join("job.json"), "{not json").unwrap();
    let out = worker().arg("run").arg(dir.path().join("job.json")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("not a valid cairn job"));
}

/// A two-epoch `fast` net job on 32 fixed pseudo-random images, with
/// `extra` params on top; `CAIRN_LOG` as given. Writes `m.safetensors`.
fn tiny_train(dir: &Path, log: Option<&str>, extra: Value) -> Output {
    tiny_train_keyed(dir, log, extra, json!({}))
}

/// [`tiny_train`] keyed on the environment entries `keyed`.
fn tiny_train_keyed(dir: &Path, log: Option<&str>, extra: Value, keyed: Value) -> Output {
    std::fs::create_dir_all(dir).unwrap();
    let (x, y) = (dir.join("x.arrow"), dir.join("y.arrow"));
    let pixels: Vec<u8> = (0..32 * 3 * 32 * 32).map(|i| (i * 7 % 251) as u8).collect();
    write_tensor(&x, DType::U8, &[32, 3, 32, 32], &pixels).unwrap();
    let labels: Vec<u8> = (0..32i64).flat_map(|i| (i % 2).to_le_bytes()).collect();
    write_tensor(&y, DType::I64, &[32], &labels).unwrap();
    let mut raw = json!({"model": {"arch": "fast", "num_classes": 2, "widths": [8, 8, 8]}, "epochs": 2, "batch_size": 16});
    raw.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let params = cairn_kinds::find("train").unwrap().check(&raw).map_err(|e| e.message).unwrap().params;
    let inputs = json!({"train_images": [x], "train_labels": [y], "val_images": [x], "val_labels": [y]});
    let outputs = json!({"model": dir.join("m.safetensors"), "history": dir.join("h.parquet"), "summary": dir.join("s.parquet")});
    let path = dir.join("job.json");
    let mut j = job("train", params, inputs, outputs, dir);
    j["env"]["keyed"] = keyed;
    std::fs::write(&path, j.to_string()).unwrap();
    let mut cmd = worker();
    cmd.env_remove(cairn_kind::protocol::LOG_ENV);
    if let Some(filter) = log {
        cmd.env(cairn_kind::protocol::LOG_ENV, filter);
    }
    let out = cmd.arg("run").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn tracing_spans_cover_the_stage_and_each_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let log = String::from_utf8(tiny_train(dir.path(), Some("info"), json!({})).stderr).unwrap();
    for n in 1..=2 {
        let close = format!("stage{{stage=s kind=train}}:epoch{{n={n}}}: close time.busy=");
        assert!(log.contains(&close), "no `{close}` in:\n{log}");
    }
    assert!(log.contains("epoch done train_loss="), "{log}");
    assert!(log.contains("stage{stage=s kind=train}: close time.busy="), "{log}");
    // At the default level (warnings) the worker says nothing.
    let quiet = tiny_train(dir.path(), None, json!({})).stderr;
    assert!(!String::from_utf8_lossy(&quiet).contains("epoch{"), "{}", String::from_utf8_lossy(&quiet));
}

/// Same seed and thread count, bit-identical weights. Run in worker
/// processes, as the engine runs jobs: libtorch's global generator (weight
/// init) is then the job's alone, where test threads in one process would
/// draw from it concurrently.
#[test]
fn same_seed_gives_identical_model_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let params = json!({"lr": 0.05, "augment": {"flip": true, "translate": 1}});
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    tiny_train(&a, None, params.clone());
    tiny_train(&b, None, params);
    let (a, b) = (a.join("m.safetensors"), b.join("m.safetensors"));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(), "two runs with one seed wrote different weights");
    let w = cairn_stages::weights::read_safetensors(&a).unwrap();
    assert!(w.metadata[cairn_stages::load::MODEL_META].contains("\"fast\""));
    assert!(w.tensors.contains_key("group2.bn2.running_var"));
}

#[test]
fn auto_precision_follows_the_keyed_native_bf16_fact() {
    let dir = tempfile::tempdir().unwrap();
    let native = probe(&[]).native_bf16;
    let model = |precision: &str| {
        let d = dir.path().join(precision);
        tiny_train_keyed(&d, None, json!({"precision": precision}), json!({"native_bf16": native}));
        std::fs::read(d.join("m.safetensors")).unwrap()
    };
    let (fp32, bf16, auto) = (model("fp32"), model("bf16"), model("auto"));
    assert_ne!(fp32, bf16, "the two precisions give different weights");
    let (expected, name) = if cairn_kinds::train::bf16_outruns_fp32(&native) { (&bf16, "bf16") } else { (&fp32, "fp32") };
    assert!(&auto == expected, "auto must compute in {name} on a CPU whose native_bf16 is `{native}`");
}
