//! Shared helpers for the report and Grad-CAM stage tests: a job for a kind
//! with its params checked by the kind's declaration (so tests run with the
//! canonical params the engine would hand the worker), output paths in a
//! temporary directory, and PNG decoding.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn::worker::{Job, JobEnv, PROTOCOL_VERSION};
use cairn_stages::ctx::WorkerCtx;
use serde_json::Value;

/// A worker context for `kind` with `raw` params, `inputs` by slot, and
/// every declared output placed in `dir`.
pub fn ctx(kind: &str, raw: &Value, inputs: &[(&str, Vec<PathBuf>)], dir: &Path) -> WorkerCtx {
    let plan = cairn_kinds::find(kind).expect("kind is declared").check(raw).expect("params check");
    let outputs: BTreeMap<String, PathBuf> = plan
        .outputs
        .iter()
        .map(|o| {
            let ext = o.ext.unwrap_or(match o.ty {
                "tensor" => "arrow",
                "table" => "parquet",
                "figure" => "png",
                "report" => "html",
                "model" => "safetensors",
                _ => "bin",
            });
            (o.name.clone(), dir.join(format!("{}.{ext}", o.name)))
        })
        .collect();
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let job = Job {
        protocol: PROTOCOL_VERSION,
        kind: kind.into(),
        version: cairn_kinds::find(kind).map_or(0, |k| k.info().version),
        stage: format!("test_{kind}"),
        params: plan.params,
        inputs: inputs.iter().map(|(s, p)| (s.to_string(), p.clone())).collect(),
        outputs,
        scratch,
        seed: 7,
        env: JobEnv::cpu(1),
        interactive: false,
    };
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
