//! The `cairn-worker` binary as the engine drives it: a job file in, Event
//! JSON lines on stdout, and the exit status (0 success, 1 failure, 2
//! unknown kind). Also checks the binary starts without LD_LIBRARY_PATH,
//! which is what the rpath from build.rs is for.

use std::path::Path;
use std::process::{Command, Output};

use cairn::formats::{write_tensor, DType, TensorFile};
use cairn::worker::{Event, PROTOCOL_VERSION};
use serde_json::{json, Value};

fn worker() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-worker"));
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

fn run_job(dir: &Path, job: Value) -> (Output, Vec<Event>) {
    let path = dir.join("job.json");
    std::fs::write(&path, job.to_string()).unwrap();
    let out = worker().arg("run").arg(&path).output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an event: {l}: {e}")))
        .collect();
    (out, events)
}

fn job(kind: &str, params: Value, inputs: Value, outputs: Value, dir: &Path) -> Value {
    json!({
        "protocol": PROTOCOL_VERSION, "kind": kind, "stage": "s", "params": params,
        "inputs": inputs, "outputs": outputs, "scratch": dir, "seed": 3, "interactive": false,
        "env": {"torch_version": "2.11.0", "device": "cpu", "threads": 1}
    })
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
    assert!(text.contains("libtorch 2.11.0") && text.contains("CUDA "), "{text}");
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
    std::fs::write(&path, job("train", params, inputs, outputs, dir).to_string()).unwrap();
    let mut cmd = worker();
    cmd.env_remove(cairn::worker::LOG_ENV);
    if let Some(filter) = log {
        cmd.env(cairn::worker::LOG_ENV, filter);
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
    assert!(w.metadata[cairn_stages::train::MODEL_META].contains("\"fast\""));
    assert!(w.tensors.contains_key("group2.bn2.running_var"));
}
