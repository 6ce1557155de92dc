//! Throughput benchmarks for the artifact path, run by `make bench` (see
//! scripts/bench.sh, which records the figures in BENCHMARKS.md):
//!
//! - `read <tensor.arrow>`: opening a tensor artifact and reading every
//!   byte through the zero-copy chunks, and loading it into a `tch::Tensor`;
//! - `resize <images.arrow> <size> <threads>`: the `resize` stage's work
//!   (slice, resample bilinear+antialias on u8, write) without the worker
//!   process around it.
//!
//! A plain binary (harness = false) so it runs on stable Rust and prints one
//! `name value unit` line per figure for the script to pick up.

use std::path::Path;
use std::time::Instant;

use cairn_formats::{DType, TensorFile, TensorWriter};
use cairn_stages::tensors;

fn read(path: &Path) {
    // Best of three: the first pass also faults the page cache in.
    let mut best_touch = f64::MAX;
    let mut best_load = f64::MAX;
    let mut bytes = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let file = TensorFile::open(path).expect("open");
        // Sum one byte per cache line so every page is really read.
        let mut sum = 0u64;
        for chunk in file.chunks() {
            sum += chunk.iter().step_by(64).map(|&b| b as u64).sum::<u64>();
        }
        std::hint::black_box(sum);
        best_touch = best_touch.min(t.elapsed().as_secs_f64());
        bytes = file.byte_len();

        let t = Instant::now();
        let tensor = tensors::load(path).expect("load");
        std::hint::black_box(tensor.size());
        best_load = best_load.min(t.elapsed().as_secs_f64());
    }
    let gb = bytes as f64 / 1e9;
    println!("tensor_bytes {gb:.3} GB");
    println!("tensor_read_scan {:.2} GB/s", gb / best_touch);
    println!("tensor_load_tch {:.2} GB/s", gb / best_load);
}

fn resize(path: &Path, size: usize, threads: i32) {
    tch::set_num_threads(threads);
    let input = TensorFile::open(path).expect("open");
    let [n, c, ..] = *input.shape() else { panic!("need N×C×H×W") };
    let params = serde_json::from_value(serde_json::json!({"size": size, "mode": "bilinear", "antialias": true})).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let mut writer = TensorWriter::create(&dir.path().join("out.arrow"), DType::U8, &[c, size, size]).unwrap();
    let slice = 512;
    let mut compute = 0.0;
    for first in (0..n).step_by(slice) {
        let batch = tensors::load_rows(&input, first, slice.min(n - first)).unwrap();
        let tc = Instant::now();
        let out = cairn_stages::data::resample(&batch, &params).unwrap();
        compute += tc.elapsed().as_secs_f64();
        tensors::write_rows(&mut writer, &out).unwrap();
    }
    writer.finish().unwrap();
    let total = t.elapsed().as_secs_f64();
    println!("resize_images {n}");
    println!("resize_compute {:.0} images/s", n as f64 / compute);
    println!("resize_with_io {:.0} images/s", n as f64 / total);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["read", path] => read(Path::new(path)),
        ["resize", path, size, threads] => resize(Path::new(path), size.parse().unwrap(), threads.parse().unwrap()),
        _ => eprintln!("usage: formats read <tensor.arrow> | formats resize <images.arrow> <size> <threads>"),
    }
}
