//! Pins a fingerprint of each built-in kind's implementation sources, so
//! that code which can change a kind's results cannot land without a
//! version bump: the version is part of every stage key, and without a bump
//! the cache serves results of the old code as if the new code had made
//! them (as `models/fast.rs` once did to `gradcam`).
//!
//! A kind's sources are its root modules in `stages/src` ([`KINDS`]), every
//! module they reach through `crate::<module>` paths, transitively, and the
//! C++ shims in `stages/csrc` defining the `cairn_*` functions those modules
//! call, with the headers of that folder they include, and the modules of
//! `crates/cairn-formats` they use (`cairn_formats::<module>`, or an item
//! its `lib.rs` re-exports from one; the files read and written through
//! them are the kinds' inputs and outputs), with what those reach through
//! `crate::` in that crate. Also its declaration in `stages/kinds/src` and
//! the declarations the worker files name (`cairn_kinds::<module>`), with
//! what those reach through `crate::`: besides params, they hold methods the
//! worker computes with (normalisation constants, the trainable blocks,
//! crops by epoch); each `const VERSION` line is left out, so a bump keeps
//! the fingerprint. Every kind's include `lib.rs`, which seeds
//! libtorch and sets its thread count for a job, and `ctx.rs`, through
//! which a kind reads its job (seed, threads, the keyed `native_bf16`
//! fact), and every kind that resolves a `precision` (`precision.rs`)
//! includes the rule it applies to that fact (`crates/cairn-kind/src/bf16.rs`:
//! the fact is keyed, what `auto` makes of it is this code). Left out: test
//! files (`tests.rs`, `*_tests.rs`; a declaration's inline tests are in),
//! the declarations' `lib.rs` (canonical params, which enter the key
//! themselves), and the process around a job (`main.rs`: it reads the job
//! and refuses one keyed for other facts; `alloc.rs`: the heap).
//! The fingerprint is blake3 over each file's path and bytes (line endings
//! normalised), in path order. The pins live in
//! `stages/kinds/fingerprints.toml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each kind: its declaration file in `stages/kinds/src` and its root
/// sources in `stages/src` (a directory stands for every file below it).
const KINDS: [(&str, &str, &[&str]); 6] = [
    (
        "load_subset",
        "data.rs",
        &[
            "data.rs",
            "data/catalog.rs",
            "data/cifar.rs",
            "data/decode.rs",
            "data/folder.rs",
            "data/load_subset.rs",
            "data/scale.rs",
            "data/source.rs",
            "data/subset.rs",
        ],
    ),
    ("resize", "data.rs", &["data.rs", "data/resize.rs"]),
    ("train", "train.rs", &["train"]),
    ("evaluate", "eval.rs", &["evaluate.rs"]),
    ("report", "report.rs", &["report"]),
    ("gradcam", "gradcam.rs", &["gradcam"]),
];

/// Worker files every kind runs through that compute nothing a result
/// depends on (`alloc.rs` tunes the heap; libtorch aligns every tensor to
/// 64 bytes whatever the allocator does).
const PLUMBING: [&str; 2] = ["main.rs", "alloc.rs"];
/// Worker files every job runs through that decide what it computes with.
const JOB: [&str; 2] = ["lib.rs", "ctx.rs"];
const PINS: &str = "stages/kinds/fingerprints.toml";
/// The rule `precision = "auto"` follows, outside the worker's crate.
const PRECISION_RULE: &str = "crates/cairn-kind/src/bf16.rs";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn src() -> PathBuf {
    root().join("stages/src")
}

/// The artifact-format crate the worker reads and writes through.
fn formats_src() -> PathBuf {
    root().join("crates/cairn-formats/src")
}

/// The kinds' declarations (`cairn-kinds`): params, and the methods on them
/// the worker computes with (normalisation constants, trainable blocks,
/// crops by epoch…).
fn decls_src() -> PathBuf {
    root().join("stages/kinds/src")
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// A root's `.rs` files: the file itself, or every file below a directory.
fn files_of(rel: &str) -> Vec<PathBuf> {
    let path = src().join(rel);
    if path.is_dir() {
        rs_files_below(&path)
    } else {
        vec![path]
    }
}

/// A module's files in the crate whose sources are in `tree`: `m.rs` and
/// every file below `m/`.
fn module_files(tree: &Path, module: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = vec![tree.join(format!("{module}.rs"))].into_iter().filter(|f| f.is_file()).collect();
    if tree.join(module).is_dir() {
        files.extend(rs_files_below(&tree.join(module)));
    }
    files
}

fn rs_files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rs_files_below(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Top-level modules named by `crate::m` or `crate::{m, n::…}` in `text`.
fn crate_modules(text: &str) -> BTreeSet<String> {
    path_heads(text, "crate::")
}

/// The `cairn-formats` modules a worker file uses: named in a path
/// (`cairn_formats::tensor::…`) or holding an item it takes from the crate
/// root, where `lib.rs` re-exports it (`cairn_formats::{DType, Table}`).
fn formats_modules(text: &str) -> BTreeSet<String> {
    let lib = read(&formats_src().join("lib.rs"));
    let module_of = |item: &str| -> Option<String> {
        lib.lines()
            .filter_map(|l| l.trim().strip_prefix("pub use ")?.split_once("::"))
            .find(|(_, items)| path_heads(&format!("x::{items}"), "x::").contains(item))
            .map(|(m, _)| m.to_string())
    };
    path_heads(text, "cairn_formats::")
        .into_iter()
        .filter_map(|head| if formats_src().join(format!("{head}.rs")).is_file() { Some(head) } else { module_of(&head) })
        .collect()
}

/// The first names after each `prefix` in `text`: `prefix m` or
/// `prefix {m, n::…}`.
fn path_heads(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices(prefix) {
        let rest = &text[at + prefix.len()..];
        let names: Vec<&str> = match rest.strip_prefix('{') {
            Some(list) => list[..list.find('}').unwrap_or(0)].split(',').collect(),
            None => vec![rest],
        };
        for name in names {
            let ident: String = name.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !ident.is_empty() {
                out.insert(ident);
            }
        }
    }
    out
}

/// `cairn_*` functions a C++ shim defines (its `extern "C"` lines).
fn shim_functions(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains("extern \"C\""))
        .filter_map(|l| l.split(|c: char| !(c.is_alphanumeric() || c == '_')).find(|w| w.starts_with("cairn_")))
        .map(str::to_string)
        .collect()
}

/// The headers of `stages/csrc` a shim includes (`#include "name.h"`).
fn local_includes(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.trim().strip_prefix("#include \"")?.split('"').next().map(str::to_string)).collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).replace("\r\n", "\n")
}

/// Every source file of a kind declared in `decl`, by path relative to the
/// repository.
fn sources(decl: &str, roots: &[&str]) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    let mut todo: Vec<PathBuf> = roots.iter().chain(&JOB).flat_map(|r| files_of(r)).collect();
    todo.push(decls_src().join(decl));
    while let Some(file) = todo.pop() {
        let plumbing = file.strip_prefix(src()).is_ok_and(|rel| PLUMBING.iter().any(|p| rel == Path::new(p)));
        if is_test_file(&file) || plumbing || !files.insert(file.clone()) {
            continue;
        }
        let text = read(&file);
        let tree = [formats_src(), decls_src()].into_iter().find(|t| file.starts_with(t)).unwrap_or_else(src);
        for module in crate_modules(&text) {
            todo.extend(module_files(&tree, &module));
        }
        if tree == src() {
            for module in formats_modules(&text) {
                todo.extend(module_files(&formats_src(), &module));
            }
            for module in path_heads(&text, "cairn_kinds::") {
                todo.extend(module_files(&decls_src(), &module));
            }
        }
    }
    // What `auto` precision computes with is a rule over a keyed fact,
    // applied by `precision.rs`: its kinds' results follow the rule.
    if files.contains(&src().join("precision.rs")) {
        files.insert(root().join(PRECISION_RULE));
    }
    let rust: Vec<String> = files.iter().map(|f| read(f)).collect();
    for entry in std::fs::read_dir(root().join("stages/csrc")).unwrap() {
        let cpp = entry.unwrap().path();
        let called = shim_functions(&read(&cpp)).iter().any(|f| rust.iter().any(|r| r.contains(&format!("fn {f}("))));
        if called {
            files.extend(local_includes(&read(&cpp)).into_iter().map(|h| root().join("stages/csrc").join(h)));
            files.insert(cpp);
        }
    }
    files.into_iter().map(|f| f.strip_prefix(root()).unwrap().to_path_buf()).collect()
}

fn fingerprint(files: &BTreeSet<PathBuf>) -> String {
    let mut h = blake3::Hasher::new();
    for rel in files {
        let text = without_versions(&read(&root().join(rel)));
        for part in [rel.to_string_lossy().as_bytes(), text.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
    }
    h.finalize().to_hex()[..32].to_string()
}

/// `text` with each `const VERSION: u32 = N;` made `= _`: a declaration's
/// version is pinned on its own, so bumping it leaves the fingerprint.
fn without_versions(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|l| match l.split_once("const VERSION: u32 = ") {
            Some((head, rest)) => format!("{head}const VERSION: u32 = _;{}", if rest.ends_with('\n') { "\n" } else { "" }),
            None => l.to_string(),
        })
        .collect()
}

/// `[kind] version = N, fingerprint = "…"` from the pin file.
fn pins() -> BTreeMap<String, (i64, String)> {
    let doc: toml_edit::DocumentMut = read(&root().join(PINS)).parse().unwrap_or_else(|e| panic!("{PINS}: {e}"));
    doc.iter()
        .map(|(kind, item)| {
            let version = item.get("version").and_then(|v| v.as_integer()).unwrap_or(-1);
            let fp = item.get("fingerprint").and_then(|v| v.as_str()).unwrap_or_default().to_string();
            (kind.to_string(), (version, fp))
        })
        .collect()
}

#[test]
fn kind_sources_match_their_pinned_versions() {
    let pins = pins();
    let mut problems = Vec::new();
    for decl in cairn_kinds::all() {
        let (name, version) = (decl.info().name, decl.info().version);
        let Some((_, decl_file, roots)) = KINDS.iter().find(|k| k.0 == name) else {
            problems.push(format!("kind `{name}` has no sources listed: add it to KINDS in tests/kind_fingerprints.rs"));
            continue;
        };
        let fp = fingerprint(&sources(decl_file, roots));
        let set = format!("set `[{name}]` to `version = {version}` and `fingerprint = \"{fp}\"` in {PINS}");
        match pins.get(name) {
            Some((v, f)) if *v == version as i64 && *f == fp => {}
            Some((v, _)) if *v == version as i64 => problems.push(format!(
                "the implementation sources of kind `{name}` changed, but its version is still {version}.\n  \
                 If results can change: bump `VERSION` for `{name}` in stages/kinds/src/{decl_file} to {next}, then set \
                 `[{name}]` to `version = {next}` and `fingerprint = \"{fp}\"` in {PINS} (its `VERSION` line is not \
                 fingerprinted, so the value stays).\n  If they cannot (a refactor, comments): set only `fingerprint = \"{fp}\"`.",
                next = version + 1
            )),
            Some((v, _)) => problems.push(format!("kind `{name}` is now version {version} (pinned: {v}): {set}")),
            None => problems.push(format!("kind `{name}` has no pin: {set}")),
        }
    }
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n\n"));
}

/// The engine's own `command` kind: its outputs are mostly its user's
/// command's, but how the command is expanded (`{in.…}`, `{out.…}`), run
/// and where its outputs are collected from is `src/kinds/command.rs`, so
/// that file is pinned with the kind's version like the worker kinds'
/// sources (the process supervision around it, `supervise.rs`, moves
/// lines and signals, not bytes).
#[test]
fn the_command_kind_is_pinned_to_its_code() {
    use cairn::kind::StageKind;
    let version = cairn::kinds::command::Command.version();
    let fp = fingerprint(&BTreeSet::from([PathBuf::from("src/kinds/command.rs")]));
    let (pinned, pinned_fp) = pins().remove("command").unwrap_or((-1, String::new()));
    assert!(
        pinned == version as i64 && pinned_fp == fp,
        "src/kinds/command.rs or the `command` kind's version changed (pinned: version {pinned}, fingerprint {pinned_fp:?}).\n  \
         If results can change, return {next} from `Command::version` and set `[command]` to `version = {next}` and `fingerprint = \"{fp}\"` in {PINS}; \
         if they cannot, set `[command]` to `version = {version}` and `fingerprint = \"{fp}\"`.",
        next = version + 1
    );
}

/// A new source file must belong to some kind (or be plumbing or a test),
/// or changes to it would go unnoticed.
#[test]
fn every_stage_source_belongs_to_a_kind() {
    let covered: BTreeSet<PathBuf> = KINDS.iter().flat_map(|(_, decl, roots)| sources(decl, roots)).collect();
    let missing: Vec<String> = rs_files_below(&src())
        .into_iter()
        .filter(|f| !is_test_file(f))
        .map(|f| f.strip_prefix(root()).unwrap().to_path_buf())
        .filter(|rel| !covered.contains(rel))
        .filter(|rel| !PLUMBING.iter().any(|p| rel == &Path::new("stages/src").join(p)) && !rel.starts_with("stages/src/bin"))
        .map(|rel| rel.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "these files are in no kind's sources: {missing:?}\n  add each to the roots of the kinds that use it in KINDS (tests/kind_fingerprints.rs)"
    );
}

#[test]
fn sources_follow_crate_paths_and_shims() {
    let train = sources("train.rs", &["train"]);
    for f in [
        "stages/src/train/mod.rs",
        "stages/src/models/fast.rs",
        "stages/src/determinism.rs",
        "stages/csrc/optim.cpp",
        "stages/csrc/determinism.cpp",
        "stages/csrc/depthwise.cpp",
        "stages/csrc/guarded.h",
        "crates/cairn-formats/src/tensor.rs",
        "crates/cairn-formats/src/table.rs",
        "crates/cairn-formats/src/safetensors.rs",
        PRECISION_RULE,
    ] {
        assert!(train.contains(Path::new(f)), "{f} missing from {train:?}");
    }
    assert!(train.contains(Path::new("stages/kinds/src/train.rs")), "the declaration's methods are the kind's code");
    let evaluate = sources("eval.rs", &["evaluate.rs"]);
    assert!(evaluate.contains(Path::new(PRECISION_RULE)), "evaluate's auto precision follows the rule");
    assert!(evaluate.contains(Path::new("stages/kinds/src/train.rs")), "evaluate's model spec is train's declaration");
    assert!(!sources("data.rs", &["data/resize.rs"]).contains(Path::new(PRECISION_RULE)), "resize has no precision");
    assert_eq!(without_versions("a\n    pub const VERSION: u32 = 16;\nb"), "a\n    pub const VERSION: u32 = _;\nb");
    assert!(train.contains(Path::new("stages/src/lib.rs")) && train.contains(Path::new("stages/src/ctx.rs")), "{train:?}");
    assert!(!train.iter().any(|f| f.ends_with("main.rs") || f.ends_with("interop_tests.rs")), "{train:?}");
    let load = sources("data.rs", &["data/load_subset.rs"]);
    assert!(!load.contains(Path::new("stages/src/train/mod.rs")), "the job files pull in no kind's code: {load:?}");
    let gradcam = sources("gradcam.rs", &["gradcam"]);
    assert!(gradcam.contains(Path::new("stages/src/models/fast.rs")), "a shared model change must reach gradcam");
    assert_eq!(crate_modules("use crate::{tensors, weights::X};\nuse crate::ctx::Y;"), BTreeSet::from(["ctx".into(), "tensors".into(), "weights".into()]));
    let used = formats_modules("use cairn_formats::{write_tensor, Column};\nuse cairn_formats::safetensors;\n/// cairn_formats::NotAnItem");
    assert_eq!(used, BTreeSet::from(["safetensors".into(), "table".into(), "tensor".into()]));
}
