//! `bench_train`: measures training throughput and runs whole recipes
//! through the real `train` / `evaluate` kinds, outside the engine.
//!
//! `bench_train throughput <fast|resnet18|resnet50|efficientnet_lite0> <res> <batch> <steps> [fp32|bf16] [cifar]`
//! times forward + backward + SGD steps on random data (the first step is a
//! warm-up and not counted) and prints images/s from the median step — the Rust half of
//! `scripts/bench_train.py`. `CAIRN_BENCH_FROM=<block>` (e.g. `stage5`)
//! trains only that block and the ones after it, on the frozen blocks'
//! output computed once in eval mode, as `train` does with cached features
//! (`cpu-lite0`'s `pretrain`). `CAIRN_BENCH_DEVICE=cuda` runs it on the first
//! GPU (default `cpu`), synchronising after each phase so the phase times
//! are the GPU's. `bench_train infer <model> <res> <batch> <images> [fp32|bf16]`
//! times eval-mode scoring (what `evaluate` does) of random images in
//! batches of `<batch>`. `bench_train recipe <data-dir> <train.json>
//! [eval.json] [ntrain]` loads raw CIFAR arrays (`{train,test}_x.u8` N×3×32×32 and
//! `{train,test}_y.i64`, as `scripts/bench_train.py dump` writes them),
//! stores them as tensor artifacts, and runs one `train` job (val = 2000
//! held-out training images; `[ntrain]` caps the training set) and
//! optionally one `evaluate` job on the test set, printing wall times.
//! `bench_train job <kind> <params> <inputs> <outputs> <dir>` writes
//! `<dir>/job.json` for `cairn-worker run`, built like every job
//! ([`Job::new`]), its params checked by the kind's declaration; inputs are
//! JSON `{"slot": ["path", …]}`, outputs `{"name": "path"}`, threads from
//! `CAIRN_THREADS` (`scripts/bench.sh` uses it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use cairn_kind::protocol::{threads_from_env, Job, JobEnv};
use cairn_kinds::train::{Arch, ModelSpec, Normalize, Optimizer, Stem, Tta};
use cairn_stages::ctx::WorkerCtx;
use cairn_stages::models::{self, Feed};
use cairn_stages::train::batches::Rng;
use cairn_stages::train::freeze;
use cairn_stages::train::optim::Optim;
use cairn_stages::tensors;
use tch::{nn, Device, Kind, Tensor};

/// What `throughput` and `infer` share: `<model> <res> <batch> <n>
/// [fp32|bf16] [cifar]`, the thread count and the device.
struct Setup {
    arch: Arch,
    res: i64,
    batch: i64,
    n: usize,
    kind: Kind,
    stem: Option<Stem>,
    threads: usize,
    device: Device,
}

impl Setup {
    fn parse(args: &[String], n_default: &str) -> Result<Self, String> {
        let arg = |i: usize, d: &str| args.get(i).cloned().unwrap_or_else(|| d.to_string());
        let arch: Arch = serde_json::from_value(serde_json::json!(arg(0, "fast"))).map_err(|e| e.to_string())?;
        let num = |i: usize, d: &str| arg(i, d).parse::<i64>().map_err(|e| format!("argument {}: {e}", i + 2));
        let kind = if arg(4, "fp32") == "bf16" { Kind::BFloat16 } else { Kind::Float };
        let stem = matches!(arch, Arch::Resnet18 | Arch::Resnet50).then(|| if arg(5, "imagenet") == "cifar" { Stem::Cifar } else { Stem::Imagenet });
        let device = match std::env::var("CAIRN_BENCH_DEVICE").as_deref() {
            Ok("cuda") if tch::Cuda::is_available() => Device::Cuda(0),
            Ok("cuda") => return Err("CAIRN_BENCH_DEVICE=cuda but libtorch sees no CUDA device".into()),
            Ok("cpu") | Err(_) => Device::Cpu,
            Ok(other) => return Err(format!("CAIRN_BENCH_DEVICE={other}: expected cpu or cuda")),
        };
        let threads = threads_from_env();
        tch::set_num_threads(threads as i32);
        tch::manual_seed(0);
        Ok(Setup { arch, res: num(1, "32")?, batch: num(2, "256")?, n: num(3, n_default)? as usize, kind, stem, threads, device })
    }

    fn net(&self, vs: &nn::VarStore) -> Result<models::Net, String> {
        let spec = ModelSpec { arch: self.arch, num_classes: 10, stem: self.stem, widths: None, normalize: Normalize::Cifar };
        Ok(models::build(&vs.root(), &spec.resolve("model").map_err(|e| e.message)?))
    }
}

/// Eval-mode scoring of `<n>` random images through `models::predict`
/// (what `evaluate` runs, without test-time augmentation): images/s of the
/// median of five passes after a warm-up.
fn infer(args: &[String]) -> Result<(), String> {
    let s = Setup::parse(args, "2000")?;
    let vs = nn::VarStore::new(s.device);
    let net = s.net(&vs)?;
    let feed = Feed { normalize: Normalize::Cifar, kind: s.kind, device: s.device };
    let x = Tensor::randint(256, [s.n as i64, 3, s.res, s.res], (Kind::Uint8, Device::Cpu));
    let mut t: Vec<f64> = (0..6)
        .map(|_| {
            let t0 = Instant::now();
            let _ = models::predict(&net, x.size()[0], |first, count| Ok(x.narrow(0, first, count)), &feed, s.batch, Tta::None, |_| {});
            t0.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    t.sort_by(f64::total_cmp);
    let (arch, res, batch, kind, threads) = (s.arch, s.res, s.batch, s.kind, s.threads);
    println!("rust infer {arch:?} res={res} batch={batch} {kind:?} threads={threads}: {:.1} img/s (median of 5 passes over {} images)", s.n as f64 / t[2], s.n);
    Ok(())
}

fn throughput(args: &[String]) -> Result<(), String> {
    let s = Setup::parse(args, "5")?;
    let (arch, res, batch, steps, kind, threads, device) = (s.arch, s.res, s.batch, s.n, s.kind, s.threads, s.device);
    // CUDA runs asynchronously: wait for the queued kernels before reading
    // the clock, or backward's time would land in the next forward.
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let vs = nn::VarStore::new(device);
    let net = s.net(&vs)?;
    let feed = Feed { normalize: Normalize::Cifar, kind, device };
    let x = Tensor::randint(256, [batch, 3, res, res], (Kind::Uint8, device));
    let y = Tensor::randint(10, [batch], (Kind::Int64, device));
    let first = match std::env::var("CAIRN_BENCH_FROM") {
        Ok(block) => net.index(&block).map_err(|e| format!("CAIRN_BENCH_FROM: {e}"))?,
        Err(_) => 0,
    };
    let tail: Vec<String> = net.blocks[first..].iter().map(|b| b.name.clone()).collect();
    let mut opt = Optim::new(Optimizer::Sgd, freeze(&vs, &net, &tail), 0.9, true, 5e-4, 1.0);
    let prefix = (first > 0).then(|| tch::no_grad(|| models::channels_last(&net.forward_range(&feed.input(&x), 0..first, |_| false))));
    // Per step: [forward, backward, optimizer] seconds.
    let mut t = Vec::new();
    for _ in 0..=steps {
        let t0 = Instant::now();
        let input = prefix.as_ref().map_or_else(|| feed.input(&x), Tensor::shallow_clone);
        let loss = net.forward_range(&input, first..net.blocks.len(), |_| true).to_kind(Kind::Float).cross_entropy_for_logits(&y);
        let _ = loss.double_value(&[]);
        let t1 = Instant::now();
        opt.zero_grad();
        loss.backward();
        sync();
        let t2 = Instant::now();
        opt.step(0.01)?;
        sync();
        t.push([t1 - t0, t2 - t1, t2.elapsed()].map(|d| d.as_secs_f64()));
    }
    // Medians, not means: on a shared machine a stall hits a few steps
    // hard, and the median step is what the hardware does.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let part = |i: usize| median(t[1..].iter().map(|s| s[i]).collect());
    let step = median(t[1..].iter().map(|s| s.iter().sum()).collect());
    println!(
        "rust {arch:?} res={res} batch={batch} {kind:?} {device:?} threads={threads}: {:.1} img/s (median step {:.3} s of {steps}; forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms)",
        batch as f64 / step,
        step,
        part(0) * 1e3,
        part(1) * 1e3,
        part(2) * 1e3
    );
    Ok(())
}

fn load_raw(dir: &Path, split: &str) -> Result<(Tensor, Tensor), String> {
    let read = |f: String| std::fs::read(dir.join(&f)).map_err(|e| format!("{f}: {e}"));
    let x = read(format!("{split}_x.u8"))?;
    let y = read(format!("{split}_y.i64"))?;
    let n = (y.len() / 8) as i64;
    if x.len() as i64 != n * 3 * 32 * 32 {
        return Err(format!("{split}: {} image bytes for {n} labels", x.len()));
    }
    Ok((Tensor::from_data_size(&x, &[n, 3, 32, 32], Kind::Uint8), Tensor::from_data_size(&y, &[n], Kind::Int64)))
}

fn job(kind: &str, raw: &serde_json::Value, inputs: &[(&str, &Path)], outputs: &[(&str, &str)], dir: &Path) -> Result<Job, String> {
    let decl = cairn_kinds::find(kind).ok_or_else(|| format!("no kind `{kind}`"))?;
    let plan = decl.check(raw).map_err(|e| format!("{:?}: {}", e.path, e.message))?;
    let scratch = dir.join(format!("{kind}-scratch"));
    std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
    let mut job = Job::new(decl.info(), kind, plan.params, scratch).with_env(JobEnv::cpu(threads_from_env()));
    for (slot, path) in inputs {
        job = job.with_input(slot, [*path]);
    }
    for (name, file) in outputs {
        job = job.with_output(name, dir.join(file));
    }
    Ok(job)
}

fn job_file(args: &[String]) -> Result<(), String> {
    let [kind, params, inputs, outputs, dir] = args else { return Err("job needs <kind> <params> <inputs> <outputs> <dir>".into()) };
    let parse = |what: &str, s: &str| serde_json::from_str::<serde_json::Value>(s).map_err(|e| format!("{what}: {e}"));
    let inputs: std::collections::BTreeMap<String, Vec<PathBuf>> =
        serde_json::from_value(parse("inputs", inputs)?).map_err(|e| format!("inputs: {e}"))?;
    let outputs: std::collections::BTreeMap<String, PathBuf> =
        serde_json::from_value(parse("outputs", outputs)?).map_err(|e| format!("outputs: {e}"))?;
    let dir = PathBuf::from(dir);
    let mut j = job(kind, &parse("params", params)?, &[], &[], &dir)?;
    for (slot, paths) in inputs {
        j = j.with_input(&slot, paths);
    }
    for (name, path) in outputs {
        j = j.with_output(&name, path);
    }
    std::fs::write(dir.join("job.json"), serde_json::to_vec_pretty(&j).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

fn recipe(args: &[String]) -> Result<(), String> {
    let data = PathBuf::from(args.first().ok_or("recipe needs <data-dir> <train.json> [eval.json]")?);
    let read_json = |p: &String| -> Result<serde_json::Value, String> {
        serde_json::from_str(&std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"))?).map_err(|e| format!("{p}: {e}"))
    };
    let train_raw = read_json(args.get(1).ok_or("missing train.json")?)?;
    let out = std::env::temp_dir().join(format!("cairn-recipe-{}", std::process::id()));
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let (xall, yall) = load_raw(&data, "train")?;
    let (xte, yte) = load_raw(&data, "test")?;
    // Hold out 2000 shuffled training images as val, so that picking the
    // best epoch never looks at the test set.
    let n = xall.size()[0];
    let ntrain: i64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(n - 2000).min(n - 2000);
    let perm = Tensor::from_slice(&Rng::new(1).permutation(n as usize));
    let (tr, va) = (perm.narrow(0, 0, ntrain), perm.narrow(0, n - 2000, 2000));
    let art = |name: &str, t: &Tensor| -> Result<PathBuf, String> {
        let p = out.join(format!("{name}.arrow"));
        tensors::save(&p, t).map_err(|e| e.to_string())?;
        Ok(p)
    };
    let (a, b) = (art("train_x", &xall.index_select(0, &tr))?, art("train_y", &yall.index_select(0, &tr))?);
    let (va_x, va_y) = (art("val_x", &xall.index_select(0, &va))?, art("val_y", &yall.index_select(0, &va))?);
    let (c, d) = (art("test_x", &xte)?, art("test_y", &yte)?);
    let t0 = Instant::now();
    let j = job(
        "train",
        &train_raw,
        &[("train_images", &a), ("train_labels", &b), ("val_images", &va_x), ("val_labels", &va_y)],
        &[("model", "model.safetensors"), ("history", "history.parquet"), ("summary", "summary.parquet"), ("features", "features.arrow")],
        &out,
    )?;
    cairn_stages::run(&mut WorkerCtx::new(j)).map_err(|e| e.to_string())?;
    eprintln!("train: {:.1}s", t0.elapsed().as_secs_f64());
    if let Some(p) = args.get(2).filter(|s| !s.is_empty()) {
        let t1 = Instant::now();
        let model = out.join("model.safetensors");
        let j = job(
            "evaluate",
            &read_json(p)?,
            &[("model", &model), ("images", &c), ("labels", &d)],
            &[("predictions", "predictions.parquet"), ("confusion", "confusion.parquet"), ("metrics", "metrics.parquet")],
            &out,
        )?;
        cairn_stages::run(&mut WorkerCtx::new(j)).map_err(|e| e.to_string())?;
        eprintln!("evaluate: {:.1}s", t1.elapsed().as_secs_f64());
    }
    eprintln!("total: {:.1}s; artifacts in {}", t0.elapsed().as_secs_f64(), out.display());
    Ok(())
}

fn main() {
    cairn_stages::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("throughput") => throughput(&args[1..]),
        Some("infer") => infer(&args[1..]),
        Some("recipe") => recipe(&args[1..]),
        Some("job") => job_file(&args[1..]),
        _ => Err("usage: bench_train throughput <model> <res> <batch> <steps> [fp32|bf16] [cifar] | infer <model> <res> <batch> <images> [fp32|bf16] [cifar] | recipe <data-dir> <train.json> [eval.json] [ntrain] \
                  | job <kind> <params> <inputs> <outputs> <dir>"
            .into()),
    };
    if let Err(e) = r {
        eprintln!("bench_train: {e}");
        std::process::exit(1);
    }
}
