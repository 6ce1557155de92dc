//! Shared helpers for the report and Grad-CAM stage tests: a job for a kind
//! with its params checked by the kind's declaration (so tests run with the
//! canonical params the engine would hand the worker), output paths in a
//! temporary directory, and PNG decoding.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

use cairn_kind::protocol::Job;
use cairn_stages::ctx::WorkerCtx;
use serde_json::Value;

/// A worker context for `kind` with `raw` params, `inputs` by slot, and
/// every declared output placed in `dir`.
pub fn ctx(kind: &str, raw: &Value, inputs: &[(&str, Vec<PathBuf>)], dir: &Path) -> WorkerCtx {
    let decl = cairn_kinds::find(kind).expect("kind is declared");
    let plan = decl.check(raw).expect("params check");
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut job = Job::new(decl.info(), format!("test_{kind}"), plan.params, scratch).with_seed(7).with_outputs_in(dir, &plan.outputs);
    for (slot, paths) in inputs {
        job = job.with_input(slot, paths.iter().cloned());
    }
    WorkerCtx::new(job)
}

/// Decodes a PNG file into (width, height, RGB or RGBA bytes, channels).
pub fn decode_png(path: &Path) -> (u32, u32, Vec<u8>, usize) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().expect("valid PNG");
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, info.color_type.samples())
}

/// A small deterministic generator (xorshift), so tests need no `rand`.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The `cairn` binary next to the `cairn-worker` these tests were built
/// with (`CAIRN_BIN` overrides it), for tests that drive `cairn run`.
pub fn cairn_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_BIN") {
        return PathBuf::from(p);
    }
    let worker = PathBuf::from(env!("CARGO_BIN_EXE_cairn-worker"));
    let cairn = worker.with_file_name("cairn");
    assert!(
        cairn.is_file(),
        "{} is missing: build the workspace first (`cargo build --release --workspace`; `make test` does)",
        cairn.display()
    );
    cairn
}
