//! Tests for the data kinds on fixtures written here: CIFAR-10 binary
//! batches (directory and `.tar.gz`), image folders (PNG and JPEG, as a
//! directory, `.tar` and `.tar.gz`), every kind of bad input the readers
//! must refuse, hostile archives, and both stages end to end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_formats::{Column, DType, Table, TensorFile};
use cairn_kind::protocol::{Job, JobEnv};
use cairn_kinds::data::SourceFormat;
use serde_json::{json, Value};

use super::catalog::Catalog;
use super::DataError;
use crate::ctx::WorkerCtx;

const CLASSES: [&str; 3] = ["bird", "cat", "dog"];

/// Pixel value of image `i`, channel `c`, position `p` in the fixtures.
fn px(i: usize, c: usize, p: usize) -> u8 {
    (i * 7 + c * 50 + p) as u8
}

fn cifar_record(i: usize, label: u8) -> Vec<u8> {
    let mut rec = vec![label];
    for c in 0..3 {
        rec.extend((0..1024).map(|p| px(i, c, p)));
    }
    rec
}

/// CIFAR batches with `per_file` records each; record labels cycle 0..10.
fn write_cifar(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let names = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"];
    for (f, name) in names.iter().enumerate() {
        let bytes: Vec<u8> = (0..per_file).flat_map(|r| cifar_record(f * per_file + r, (r % 10) as u8)).collect();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

fn png_bytes(i: usize, h: usize, w: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
    enc.set_color(png::ColorType::Rgb);
    let mut writer = enc.write_header().unwrap();
    let data: Vec<u8> = (0..h * w).flat_map(|p| [px(i, 0, p), px(i, 1, p), px(i, 2, p)]).collect();
    writer.write_image_data(&data).unwrap();
    writer.finish().unwrap();
    out
}

fn jpeg_bytes(h: usize, w: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let data = vec![90u8; h * w * 3];
    jpeg_encoder::Encoder::new(&mut out, 95).encode(&data, w as u16, h as u16, jpeg_encoder::ColorType::Rgb).unwrap();
    out
}

/// `(relative path, bytes)` of an image folder: `top/{train,test}/<class>/`,
/// `train_n` and `test_n` 4×4 PNGs per class, plus one JPEG in train/cat.
fn folder_files(top: &str, train_n: usize, test_n: usize) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut i = 0;
    for (split, n) in [("train", train_n), ("test", test_n)] {
        for class in CLASSES {
            for k in 0..n {
                files.push((format!("{top}{split}/{class}/{k:04}.png"), png_bytes(i, 4, 4)));
                i += 1;
            }
        }
    }
    files.push((format!("{top}train/cat/extra.jpg"), jpeg_bytes(4, 4)));
    files.push((format!("{top}README.md"), b"not an image".to_vec()));
    files
}

fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

use super::fuzz_tests::tar_bytes;

/// `load_subset`'s reader, a compressed archive spilled beside the source.
pub(super) fn read_catalog(source: &Path, format: SourceFormat) -> Result<Catalog, DataError> {
    super::load_subset::read_catalog(source, format, source.parent().expect("a source inside a folder"))
}

fn write_tar(path: &Path, files: &[(String, Vec<u8>)], gzip: bool) {
    let raw = tar_bytes(files);
    std::fs::write(path, if gzip { super::fuzz_tests::gzip(&raw) } else { raw }).unwrap();
}

fn err_of(source: &Path, format: SourceFormat) -> String {
    match read_catalog(source, format) {
        Ok(_) => panic!("{} was accepted", source.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn reads_cifar_binary_from_a_folder_and_an_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cifar-10-batches-bin");
    write_cifar(&dir, 20);
    std::fs::write(dir.join("batches.meta.txt"), CLASSES.repeat(4)[..10].join("\n")).unwrap();
    let files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (format!("cifar-10-batches-bin/{}", e.file_name().to_string_lossy()), std::fs::read(e.path()).unwrap())
        })
        .collect();
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    write_tar(&archive, &files, true);
    let plain = tmp.path().join("cifar-10-binary.tar");
    write_tar(&plain, &files, false);

    for source in [&dir, &archive, &plain] {
        let cat = read_catalog(source, SourceFormat::Auto).unwrap();
        assert_eq!((cat.train.len(), cat.test.len(), cat.classes.len()), (100, 20, 10));
        assert_eq!(cat.classes[3], "bird");
        assert_eq!(cat.image_shape(), [3, 32, 32]);
        // Record 5 of data_batch_2 is fixture image 25 with label 5.
        let item = &cat.train[25];
        assert_eq!((item.label, item.source.as_str()), (5, "data_batch_2.bin#5"));
        let pixels = cat.images(&[item]).unwrap();
        assert_eq!(pixels, cifar_record(25, 5)[1..]);
        // Scaled to its own size the record comes back as it was: planes
        // stay planes through the interleaved scaler.
        let mut cat = cat;
        cat.square = Some(32);
        assert_eq!(cat.images(&[&cat.train[25]]).unwrap(), cifar_record(25, 5)[1..]);
    }
}

#[test]
fn refuses_truncated_and_wrongly_sized_cifar_files() {
    let tmp = tempfile::tempdir().unwrap();
    write_cifar(tmp.path(), 3);
    let batch = tmp.path().join("data_batch_3.bin");
    let good = std::fs::read(&batch).unwrap();

    std::fs::write(&batch, &good[..good.len() - 100]).unwrap();
    let err = err_of(tmp.path(), SourceFormat::Cifar10Binary);
    assert!(err.contains("data_batch_3.bin") && err.contains("record 2 is cut short"), "{err}");

    // CIFAR-100 style 3,074-byte records.
    let wide: Vec<u8> = (0..3).flat_map(|_| vec![1u8; 3074]).collect();
    std::fs::write(&batch, wide).unwrap();
    let err = err_of(tmp.path(), SourceFormat::Cifar10Binary);
    assert!(err.contains("not a whole number of 3073-byte") && err.contains("3074"), "{err}");

    let mut bad_label = good.clone();
    bad_label[2 * 3073] = 12;
    std::fs::write(&batch, bad_label).unwrap();
    let err = err_of(tmp.path(), SourceFormat::Auto);
    assert!(err.contains("data_batch_3.bin") && err.contains("record 2 has label 12"), "{err}");

    std::fs::remove_file(&batch).unwrap();
    let err = err_of(tmp.path(), SourceFormat::Cifar10Binary);
    assert!(err.contains("data_batch_3.bin missing"), "{err}");
}

#[test]
fn reads_image_folders_from_a_directory_a_tar_and_a_tar_gz() {
    let tmp = tempfile::tempdir().unwrap();
    let files = folder_files("cifar10-jpg/", 3, 2);
    let dir = tmp.path().join("dir");
    write_dir(&dir, &files);
    let tar = tmp.path().join("data.tar");
    write_tar(&tar, &files, false);
    let tgz = tmp.path().join("data.tar.gz");
    write_tar(&tgz, &files, true);
    for source in [&dir, &tar, &tgz] {
        let cat = read_catalog(source, SourceFormat::Auto).unwrap();
        assert_eq!(cat.classes, CLASSES);
        assert_eq!((cat.train.len(), cat.test.len()), (10, 6));
        assert_eq!(cat.image_shape(), [3, 4, 4]);
        // Sorted by path: train/bird/0000..0002, then train/cat/0000.png (fixture image 3).
        let item = &cat.train[3];
        assert_eq!((item.label, item.source.as_str()), (1, "cifar10-jpg/train/cat/0000.png"));
        let pixels = cat.images(&[item]).unwrap();
        let want: Vec<u8> = (0..3).flat_map(|c| (0..16).map(move |p| px(3, c, p))).collect();
        assert_eq!(pixels, want, "PNG pixels come back exactly, planar");
        let jpeg = cat.train.iter().find(|it| it.source.ends_with("extra.jpg")).unwrap();
        let decoded = cat.images(&[jpeg]).unwrap();
        assert!(decoded.iter().all(|&v| v.abs_diff(90) <= 2), "JPEG decodes near its colour: {decoded:?}");
    }
    // Cut short, either archive is refused when it is read, not when an
    // image it no longer holds is decoded.
    for archive in [&tar, &tgz] {
        let bytes = std::fs::read(archive).unwrap();
        std::fs::write(archive, &bytes[..bytes.len() / 2]).unwrap();
        let err = err_of(archive, SourceFormat::Auto);
        assert!(err.contains("corrupt or truncated archive"), "{err}");
    }
    // A file that is no archive at all: its bytes stay out of the message.
    std::fs::write(&tar, "user:secret-xyzzy:0:0:/root\n".repeat(40)).unwrap();
    let err = err_of(&tar, SourceFormat::Auto);
    assert!(err.contains("its first header does not parse") && !err.contains("secret-xyzzy"), "{err}");
}

#[test]
fn a_tar_gz_is_read_through_a_spill_file_that_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let files = folder_files("", 3, 2);
    let tgz = tmp.path().join("data.tar.gz");
    write_tar(&tgz, &files, true);
    let spill = tmp.path().join("scratch");
    std::fs::create_dir(&spill).unwrap();
    let cat = super::load_subset::read_catalog(&tgz, SourceFormat::Auto, &spill).unwrap();
    assert_eq!(std::fs::read_dir(&spill).unwrap().count(), 0, "the spill file is unlinked as soon as it is made");
    let dir = tmp.path().join("dir");
    write_dir(&dir, &files);
    let from_dir = read_catalog(&dir, SourceFormat::Auto).unwrap();
    let all = |c: &Catalog| c.images(&c.train.iter().chain(&c.test).collect::<Vec<_>>()).unwrap();
    assert_eq!(all(&cat), all(&from_dir), "every image reads back from the spill as from a directory");

    let gone = tmp.path().join("no-such-scratch");
    let err = match super::load_subset::read_catalog(&tgz, SourceFormat::Auto, &gone) {
        Ok(_) => panic!("a missing spill directory was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no-such-scratch"), "the error names where it could not write: {err}");
}

#[test]
fn a_split_written_a_row_at_a_time_is_the_file_written_whole() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(&tmp.path().join("src"), &folder_files("", 5, 1));
    let cat = read_catalog(&tmp.path().join("src"), SourceFormat::Auto).unwrap();
    let rows: Vec<_> = cat.train.iter().collect();
    let written = |name: &str, chunk_bytes| {
        let (images, labels) = (tmp.path().join(format!("{name}.arrow")), tmp.path().join(format!("{name}-labels.arrow")));
        super::load_subset::write_split(&cat, &rows, &images, &labels, chunk_bytes).unwrap();
        std::fs::read(images).unwrap()
    };
    assert_eq!(written("rows", 1), written("whole", usize::MAX));
}

#[test]
fn refuses_missing_and_empty_class_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = folder_files("", 2, 1);
    files.retain(|(n, _)| !n.starts_with("test/dog/"));
    write_dir(tmp.path(), &files);
    let err = err_of(tmp.path(), SourceFormat::ImageFolder);
    assert!(err.contains("`test/dog` is missing"), "{err}");

    std::fs::create_dir_all(tmp.path().join("test/dog")).unwrap();
    let err = err_of(tmp.path(), SourceFormat::ImageFolder);
    assert!(err.contains("`test/dog` has no images"), "{err}");
}

#[test]
fn refuses_corrupt_images_and_mixed_sizes_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = folder_files("", 2, 1);
    let jpeg = files.iter_mut().find(|(n, _)| n.ends_with("extra.jpg")).unwrap();
    jpeg.1.truncate(40);
    write_dir(tmp.path(), &files);
    let cat = read_catalog(tmp.path(), SourceFormat::Auto).unwrap();
    let all: Vec<_> = cat.train.iter().collect();
    let err = cat.images(&all).unwrap_err().to_string();
    assert!(err.contains("extra.jpg") && err.contains("corrupt JPEG"), "{err}");
    assert!(!err.contains('\n'), "one line: {err:?}");

    // Cut inside its scan: the headers read, the pixels would be part grey.
    let whole = jpeg_bytes(40, 60);
    std::fs::write(tmp.path().join("train/cat/extra.jpg"), &whole[..whole.len() - 20]).unwrap();
    let mut cat = read_catalog(tmp.path(), SourceFormat::Auto).unwrap();
    cat.square = Some(4);
    let all: Vec<_> = cat.train.iter().collect();
    let err = cat.images(&all).unwrap_err().to_string();
    assert!(err.contains("extra.jpg: truncated JPEG image"), "{err}");

    std::fs::write(tmp.path().join("train/cat/extra.jpg"), jpeg_bytes(4, 4)).unwrap();
    std::fs::write(tmp.path().join("train/dog/0001.png"), png_bytes(0, 5, 4)).unwrap();
    let cat = read_catalog(tmp.path(), SourceFormat::Auto).unwrap();
    let all: Vec<_> = cat.train.iter().collect();
    let err = cat.images(&all).unwrap_err().to_string();
    assert!(err.contains("train/dog/0001.png") && err.contains("image is 4×5"), "{err}");
    assert!(err.contains("set the stage's `size = N`"), "{err}");

    // Scaled as they load, mixed sizes make one tensor; a flat image stays
    // flat whatever its size.
    std::fs::write(tmp.path().join("train/cat/extra.jpg"), jpeg_bytes(40, 60)).unwrap();
    let mut cat = read_catalog(tmp.path(), SourceFormat::Auto).unwrap();
    cat.square = Some(6);
    let all: Vec<_> = cat.train.iter().collect();
    let pixels = cat.images(&all).unwrap();
    assert_eq!((cat.image_shape(), pixels.len()), ([3, 6, 6], all.len() * 3 * 36));
    let extra = all.iter().position(|it| it.source.ends_with("extra.jpg")).unwrap();
    assert!(pixels[extra * 108..(extra + 1) * 108].iter().all(|&v| v.abs_diff(90) <= 2), "{:?}", &pixels[extra * 108..extra * 108 + 12]);
}

/// A tar whose single entry has a raw, unchecked name (as an attacker
/// would write it).
fn hostile_tar(path: &Path, name: &[u8], kind: tar::EntryType, link: Option<&str>) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_mode(0o644);
    if let Some(target) = link {
        header.set_link_name(target).unwrap();
    }
    let data = if kind.is_file() { png_bytes(0, 4, 4) } else { Vec::new() };
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data.as_slice()).unwrap();
    std::fs::write(path, builder.into_inner().unwrap()).unwrap();
}

#[test]
fn refuses_hostile_archives_without_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let archive = data.join("evil.tar");
    let cases: [(&[u8], tar::EntryType, Option<&str>, &str); 3] = [
        (b"../../train/cat/evil.png", tar::EntryType::Regular, None, "`..` path"),
        (b"/tmp/train/cat/evil.png", tar::EntryType::Regular, None, "absolute"),
        (b"train/cat/link.png", tar::EntryType::Symlink, Some("/etc/passwd"), "is a link"),
    ];
    for (name, kind, link, expect) in cases {
        hostile_tar(&archive, name, kind, link);
        let err = err_of(&archive, SourceFormat::Auto);
        assert!(err.contains(expect) && err.contains("evil.tar"), "{err}");
    }
    assert!(!tmp.path().join("train").exists(), "nothing may be written outside the data folder");
    let listed: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
    assert_eq!(listed.len(), 1, "nothing may be extracted next to the archive");
}

fn job(kind: &str, params: Value, inputs: &[(&str, &Path)], outputs: &[&str], dir: &Path) -> WorkerCtx {
    let ext = |name: &str| if name == "index" || name == "classes" { "parquet" } else { "arrow" };
    let decl = cairn_kinds::find(kind).expect("kind is declared");
    let mut job = Job::new(decl.info(), "test", params, dir).with_seed(42).with_env(JobEnv::cpu(2));
    for (slot, path) in inputs {
        job = job.with_input(slot, [*path]);
    }
    for o in outputs {
        job = job.with_output(o, dir.join(format!("{o}.{}", ext(o))));
    }
    WorkerCtx::new(job)
}

fn checked(kind: &dyn cairn_kinds::Kind, raw: Value) -> (Value, Vec<String>) {
    let plan = kind.check(&raw).unwrap();
    (plan.params, plan.outputs.into_iter().map(|o| o.name).collect())
}

#[test]
fn load_subset_writes_every_split_index_and_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("data.tar.gz");
    write_tar(&source, &folder_files("cifar10-jpg/", 6, 3), true);
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let raw = json!({"source": "data.tar.gz", "train_per_class": 2, "val_per_class": 1, "test": 2, "pool": true});
    let (params, outputs) = checked(&cairn_kinds::data::LoadSubset, raw);
    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut ctx = job("load_subset", params.clone(), &[("source", &source)], &outputs, &out);
    crate::run(&mut ctx).unwrap();

    let shape = |name: &str| TensorFile::open(&out.join(format!("{name}.arrow"))).unwrap().shape().to_vec();
    assert_eq!(shape("train_images"), [6, 3, 4, 4]);
    assert_eq!(shape("val_labels"), [3]);
    assert_eq!(shape("test_images"), [6, 3, 4, 4]);
    // cat has 7 training images (6 PNGs and the JPEG): 7 + 6 + 6 - 9 picked = 10 in the pool.
    assert_eq!(shape("pool_images"), [10, 3, 4, 4]);
    let labels = TensorFile::open(&out.join("train_labels.arrow")).unwrap();
    assert_eq!(labels.dtype(), DType::I64);

    let index = Table::read(&out.join("index.parquet")).unwrap();
    assert_eq!(index.num_rows(), 6 + 3 + 6 + 10);
    let Some(Column::Str(sources)) = index.column("source") else { panic!("no source column") };
    let mut unique = sources.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), sources.len(), "no image is in two splits");
    let classes = Table::read(&out.join("classes.parquet")).unwrap();
    assert_eq!(classes.column("name"), Some(&Column::Str(CLASSES.map(String::from).to_vec())));

    // Same seed, same files: a second run is byte-identical.
    let again = tmp.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let mut ctx = job("load_subset", params, &[("source", &source)], &outputs, &again);
    crate::run(&mut ctx).unwrap();
    for name in ["train_images.arrow", "pool_labels.arrow", "index.parquet"] {
        assert_eq!(std::fs::read(out.join(name)).unwrap(), std::fs::read(again.join(name)).unwrap(), "{name}");
    }
}

#[test]
fn load_subset_says_when_a_class_is_too_small() {
    let tmp = tempfile::tempdir().unwrap();
    write_dir(tmp.path(), &folder_files("", 3, 1));
    let (params, outputs) = checked(&cairn_kinds::data::LoadSubset, json!({"source": "x", "train_per_class": 4}));
    let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
    let mut ctx = job("load_subset", params, &[("source", tmp.path())], &outputs, tmp.path());
    let err = crate::run(&mut ctx).unwrap_err().to_string();
    assert!(err.contains("class `bird` has 3 training images") && err.contains("lower train_per_class"), "{err}");
}

fn resize_job(dir: &Path, input: &Path, raw: Value) -> (WorkerCtx, PathBuf) {
    let (params, _) = checked(&cairn_kinds::data::Resize, raw);
    let ctx = job("resize", params, &[("images", input)], &["images"], dir);
    let out = ctx.job.outputs["images"].clone();
    (ctx, out)
}

#[test]
fn resize_matches_libtorch_for_every_mode_and_keeps_u8() {
    use tch::{Device, Kind, Tensor};
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.arrow");
    let images = Tensor::randint(256, [5, 3, 8, 8], (Kind::Uint8, Device::Cpu));
    crate::tensors::save(&input, &images).unwrap();
    let modes: BTreeMap<&str, Value> = [
        ("bilinear", json!({"size": 12})),
        ("bicubic", json!({"size": 4, "mode": "bicubic"})),
        ("nearest", json!({"size": 16, "mode": "nearest"})),
        ("area", json!({"size": 4, "mode": "area"})),
    ]
    .into();
    for (mode, raw) in modes {
        let (mut ctx, out) = resize_job(tmp.path(), &input, raw.clone());
        crate::run(&mut ctx).unwrap();
        let got = crate::tensors::load(&out).unwrap();
        let size = raw["size"].as_i64().unwrap();
        assert_eq!(got.size(), [5, 3, size, size], "{mode}");
        assert_eq!(got.kind(), Kind::Uint8);
        let params = serde_json::from_value(ctx.job.params.clone()).unwrap();
        let want = super::resize::resample(&images, &params).unwrap();
        assert!(got.equal(&want), "{mode}: staged result differs from one-shot resampling");
    }
    // The u8 kernels agree with resampling in f32 to within rounding.
    let bilinear = super::resize::resample(&images, &serde_json::from_value(json!({"size": 12, "antialias": false})).unwrap()).unwrap();
    let float = images.to_kind(Kind::Float).upsample_bilinear2d([12, 12], false, None, None);
    let diff = (bilinear.to_kind(Kind::Float) - float).abs().max().double_value(&[]);
    // One u8 step: libtorch's u8 kernel uses fixed-point weights, and the
    // f32 reference itself carries float error of order 1e-5.
    assert!(diff <= 1.0 + 1e-3, "u8 bilinear is {diff} away from f32 bilinear");
    // Area on an exact 2× shrink is the 2×2 mean, rounded.
    let area = super::resize::resample(&images, &serde_json::from_value(json!({"size": 4, "mode": "area", "antialias": false})).unwrap()).unwrap();
    let mean = images.to_kind(Kind::Float).avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>).round().to_kind(Kind::Uint8);
    assert!(area.equal(&mean));
}

/// A split resized a slice of one image at a time (its slices written on
/// their own thread while the next is resampled) is the one-shot result,
/// in order.
#[test]
fn resize_in_slices_keeps_the_images_in_order() {
    use tch::{Device, Kind, Tensor};
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in.arrow");
    let images = Tensor::randint(256, [7, 3, 8, 8], (Kind::Uint8, Device::Cpu));
    crate::tensors::save(&input, &images).unwrap();
    let (ctx, out) = resize_job(tmp.path(), &input, json!({"size": 12}));
    let params = serde_json::from_value(ctx.job.params.clone()).unwrap();
    assert_eq!(super::resize::resize_one(&ctx, &params, "images", 3 * 12 * 12).unwrap(), 7);
    let want = super::resize::resample(&images, &params).unwrap();
    assert!(crate::tensors::load(&out).unwrap().equal(&want));
}

#[test]
fn resize_refuses_non_image_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("labels.arrow");
    cairn_formats::write_tensor(&input, DType::I64, &[2], &[0u8; 16]).unwrap();
    let (mut ctx, _) = resize_job(tmp.path(), &input, json!({"size": 8}));
    let err = crate::run(&mut ctx).unwrap_err().to_string();
    assert!(err.contains("labels.arrow") && err.contains("N×C×H×W"), "{err}");
}
