//! `cairn inspect`: what a cached intermediate holds, without libtorch.
//! Tensors show dtype, shape and statistics; tables show their schema and
//! first rows (through polars); models (safetensors) their metadata (the
//! network's spec), size and first tensors, from the header alone; other
//! files their first lines or a PNG's size (`inspect_file`); anything can
//! be rendered as JSON.

use std::collections::BTreeMap;
use std::path::Path;

use cairn::cache::{Cache, OutputRecord};
use cairn::env::Environment;
use cairn::formats::safetensors;
use cairn::formats::tensor::{DType, TensorFile};
use cairn::kind::ArtifactType;
use cairn::plan::StageState;
use cairn::spec::Pipeline;

use super::commands::{fail, CmdResult};
use super::exit;
use super::ui::{human_bytes, when, Console};
use super::Cli;

#[allow(clippy::too_many_arguments)]
pub fn run(
    cli: &Cli,
    pipeline: &Pipeline,
    env: &Environment,
    target: &str,
    json: bool,
    grid: Option<&Path>,
    rows: usize,
    console: &Console,
) -> CmdResult {
    let (stage, output) = match target.split_once('.') {
        Some((s, o)) => (s, Some(o)),
        None => (target, None),
    };
    if pipeline.stage(stage).is_none() {
        let names: Vec<&str> = pipeline.names().collect();
        return Err(fail(console, exit::USAGE, format!("no stage named `{stage}` (stages: {})", names.join(", "))));
    }
    let cache = Cache::open_read(&cli.cache_dir);
    let states = super::commands::stage_states(pipeline, &cache, env, console)?;
    let (_, st) = states.iter().find(|(n, _)| n == stage).expect("stage exists");
    let StageState::Fresh { manifest, .. } = st else {
        let note = super::history::missing_flags_note(cli, pipeline).map(|n| format!("\n{n}")).unwrap_or_default();
        return Err(fail(console, exit::FAILED, format!("`{stage}` has no current outputs in the cache; run `cairn run {stage}` first (see `cairn explain {stage}`){note}")));
    };
    let Some(output) = output else {
        if json {
            println!("{}", serde_json::to_string_pretty(&manifest.outputs).unwrap_or_default());
        } else {
            println!("{stage}: {} output(s), ran {} in {:.1}s", manifest.outputs.len(), when(&manifest.finished_at), manifest.duration_s);
            for (name, rec) in &manifest.outputs {
                println!("  {name:<16} {:<7} {:>10}  {}  {}", rec.ty, human_bytes(rec.size), rec.hash.short(), cache.object_path(&rec.hash).display());
            }
            for (k, v) in &manifest.metrics {
                println!("  metric {k} = {v}");
            }
        }
        return Ok(exit::OK);
    };
    let Some(rec) = manifest.outputs.get(output) else {
        let names: Vec<&String> = manifest.outputs.keys().collect();
        return Err(fail(console, exit::USAGE, format!("`{stage}` has no output `{output}` (outputs: {})", names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "))));
    };
    let path = cache.object_path(&rec.hash);
    if grid.is_some() && rec.ty != ArtifactType::Tensor {
        return Err(fail(console, exit::USAGE, format!("`{target}` is a {}, not a tensor: --grid draws a tensor of images (N×C×H×W)", rec.ty)));
    }
    if let Some(grid_path) = grid {
        let info = cairn::formats::grid::render_grid(&path, &Default::default(), grid_path).map_err(|e| fail(console, exit::FAILED, e))?;
        console.line(&format!("wrote {} ({} images, {}×{} px)", grid_path.display(), info.images, info.width, info.height));
    }
    match rec.ty {
        ArtifactType::Tensor => show_tensor(&path, rec, json, console),
        ArtifactType::Table => show_table(&path, rec, json, rows, console),
        ArtifactType::Model => show_model(&path, rec, json, rows, console),
        ArtifactType::Figure | ArtifactType::Report | ArtifactType::File => super::inspect_file::show(&path, rec, json, rows, console),
    }
}

/// Min, max and mean over every element, in one pass over the mapped file.
fn stats(file: &TensorFile) -> Option<(f64, f64, f64)> {
    let (mut min, mut max, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, 0u64);
    let mut add = |v: f64| {
        min = min.min(v);
        max = max.max(v);
        sum += v;
        n += 1;
    };
    for chunk in file.chunks() {
        match file.dtype() {
            DType::U8 => chunk.iter().for_each(|&b| add(b as f64)),
            DType::I32 => chunk.chunks_exact(4).for_each(|b| add(i32::from_le_bytes(b.try_into().unwrap()) as f64)),
            DType::I64 => chunk.chunks_exact(8).for_each(|b| add(i64::from_le_bytes(b.try_into().unwrap()) as f64)),
            DType::F32 => chunk.chunks_exact(4).for_each(|b| add(f32::from_le_bytes(b.try_into().unwrap()) as f64)),
            DType::F64 => chunk.chunks_exact(8).for_each(|b| add(f64::from_le_bytes(b.try_into().unwrap()))),
            DType::F16 => return None,
        }
    }
    (n > 0).then(|| (min, max, sum / n as f64))
}

fn show_tensor(path: &Path, rec: &OutputRecord, json: bool, console: &Console) -> CmdResult {
    let file = TensorFile::open(path).map_err(|e| fail(console, exit::FAILED, e))?;
    let st = stats(&file);
    if json {
        let mut v = serde_json::json!({"type": "tensor", "dtype": file.dtype().name(), "shape": file.shape(), "size": rec.size, "hash": rec.hash, "path": path});
        if let Some((min, max, mean)) = st {
            v["min"] = min.into();
            v["max"] = max.into();
            v["mean"] = mean.into();
        }
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("tensor {} {:?}  ({}, {})", file.dtype().name(), file.shape(), human_bytes(rec.size), rec.hash.short());
        if let Some((min, max, mean)) = st {
            println!("  min {min}  max {max}  mean {mean:.4}");
        }
        println!("  {}", path.display());
    }
    Ok(exit::OK)
}

fn show_table(path: &Path, rec: &OutputRecord, json: bool, rows: usize, console: &Console) -> CmdResult {
    let table = cairn::formats::table::Table::read(path).map_err(|e| fail(console, exit::FAILED, e))?;
    if json {
        let schema: Vec<serde_json::Value> =
            table.columns.iter().map(|(n, c)| serde_json::json!({"name": n, "type": c.type_name()})).collect();
        println!("{}", serde_json::json!({"type": "table", "rows": table.num_rows(), "schema": schema, "size": rec.size, "hash": rec.hash, "path": path}));
        return Ok(exit::OK);
    }
    let df = cairn::formats::bridge::table_to_polars(&table).map_err(|e| fail(console, exit::FAILED, e))?;
    println!("table: {} rows × {} columns  ({}, {})", table.num_rows(), table.columns.len(), human_bytes(rec.size), rec.hash.short());
    println!("{}", df.head(Some(rows)));
    println!("  {}", path.display());
    Ok(exit::OK)
}

fn show_model(path: &Path, rec: &OutputRecord, json: bool, rows: usize, console: &Console) -> CmdResult {
    let header = safetensors::read_header(path).map_err(|e| fail(console, exit::FAILED, format!("{}: not a valid safetensors file: {e}", path.display())))?;
    let mut dtypes = BTreeMap::<&str, u64>::new();
    for e in header.tensors.values() {
        *dtypes.entry(&e.dtype).or_default() += e.numel();
    }
    let values: u64 = dtypes.values().sum();
    if json {
        let tensors: serde_json::Map<String, serde_json::Value> =
            header.tensors.iter().map(|(n, e)| (n.clone(), serde_json::json!({"dtype": e.dtype, "shape": e.shape}))).collect();
        let v = serde_json::json!({"type": "model", "metadata": header.metadata, "values": values, "tensors": tensors, "size": rec.size, "hash": rec.hash, "path": path});
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(exit::OK);
    }
    let by_dtype: Vec<String> = dtypes.iter().map(|(d, n)| format!("{d} {}", thousands(*n))).collect();
    println!("model (safetensors): {} tensors, {} values ({})  ({}, {})", header.tensors.len(), thousands(values), by_dtype.join(", "), human_bytes(rec.size), rec.hash.short());
    for (k, v) in &header.metadata {
        println!("  {k} = {v}");
    }
    for (name, e) in header.tensors.iter().take(rows) {
        println!("  {name:<40} {:<5} {:?}", e.dtype, e.shape);
    }
    if header.tensors.len() > rows {
        println!("  … {} more (--rows N shows more)", header.tensors.len() - rows);
    }
    println!("  {}", path.display());
    Ok(exit::OK)
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
