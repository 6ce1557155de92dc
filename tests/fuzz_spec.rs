//! Property-based fuzzing of the `pipeline.toml` parser and validator
//! (`cairn::spec::load_str`): whatever the text, loading returns a pipeline
//! or an error that says something — it never panics — and every
//! `file:line:col` it reports lies inside the file.
//!
//! Inputs are mutations of valid seed pipelines (the repo's own
//! `pipeline.toml` and a few small specs): byte flips, inserts, deletes and
//! truncation, plus token-level edits (huge numbers, NaN, deep nesting,
//! `../` names, unicode, duplicate keys and tables), and random structured
//! TOML built from the words pipelines use. Each input is loaded with no
//! profile, with the automatic `cpu` profile, with a named profile and with
//! random `--set` flags.
//!
//! `make test` runs a few hundred cases; `CAIRN_FUZZ_CASES=1000000` (as
//! `make fuzz` sets) runs a long campaign.

use std::path::Path;

use cairn::kinds::Registry;
use cairn::spec::{load_str, LoadOptions, Origin, ProfileChoice, SpecError};
use proptest::prelude::*;

#[path = "support/fuzz_driver.rs"]
mod fuzz_driver;
use fuzz_driver::fuzz;

/// The kinds the `cairn` binary knows: `command` and the built-in ML kinds.
fn registry() -> Registry {
    Registry::builtin().with_worker_kinds(cairn_kinds::all())
}

const REPO_PIPELINE: &str = include_str!("../pipeline.toml");

const CHAIN: &str = r#"
[pipeline]
name = "chain"
seed = 7

[stages.a]
kind = "command"
cmd = "echo hello > {out.text}"
outputs = { text = "a.txt" }

[stages.b]
kind = "command"
cmd = "cat {in.src} {in.data} > {out.text}"
inputs = { src = "a.text", data = { file = "data/x.csv", sha256 = "0000000000000000000000000000000000000000000000000000000000000000" } }
outputs = { text = "b.txt" }
env = { SUFFIX = "one" }

[profiles.base]
"b.env" = { SUFFIX = "two" }

[profiles.cpu]
extends = "base"
"a.cmd" = "echo cpu > {out.text}"
"#;

const ML: &str = r#"
[pipeline]
name = "small"

[stages.load]
kind = "load_subset"
source = "data/cifar-10-binary.tar.gz"
train_per_class = 10
val_fraction = 0.1
test = 100

[stages.train]
kind = "train"
model = { arch = "fast", widths = [8, 16, 32], normalize = "cifar" }
lr = 0.1
epochs = 1
batch_size = 32
augment = { flip = true, translate = 2 }
inputs = { train_images = "load.train_images", train_labels = "load.train_labels", val_images = "load.val_images", val_labels = "load.val_labels" }

[stages.evaluate]
kind = "evaluate"
model = { arch = "fast", widths = [8, 16, 32], normalize = "cifar" }
inputs = { model = "train.model", images = "load.test_images", labels = "load.test_labels" }

[stages.report]
kind = "report"
title = "small"
inputs = { predictions = "evaluate.predictions", classes = "load.classes", histories = ["train.history"] }

[profiles.cpu]
"train.epochs" = 2
"#;

const ARRAYS: &str = r#"
[pipeline]
name = "arrays"
seed = 0

[[stages.list]]
kind = "command"

[stages.t]
kind = "command"
cmd = "true > {out.o}"
outputs.o = "o.txt"
nested = { a = { b = { c = [1, 2.5, "x", true, 1979-05-27T07:32:00Z] } } }

[profiles.p]
extends = "p"
"#;

fn seeds() -> [&'static str; 4] {
    [REPO_PIPELINE, CHAIN, ML, ARRAYS]
}

/// Replacement tokens: hostile values and the words the validator knows.
const TOKENS: &[&str] = &[
    "0",
    "-1",
    "99999999999999999999999",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "1e309",
    "-1e-400",
    "nan",
    "+inf",
    "-inf",
    "0x7fffffffffffffff",
    "0o777",
    "0b101",
    "1_000",
    "true",
    "false",
    "\"\"",
    "''",
    "\"../../etc/passwd\"",
    "\"..\"",
    "\"/abs/path\"",
    "\"a.b\"",
    "\"a.b.c\"",
    "\".x\"",
    "\"x.\"",
    "\"load.train_images\"",
    "\"évaluer\"",
    "\"🦀\"",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "'''multi\nline'''",
    "\"\"\"\n\"\"\"",
    "[]",
    "{}",
    "[1, \"a\", [], {}]",
    "{ file = \"\" }",
    "{ file = \"x\", url = 1 }",
    "{ bogus = 1 }",
    "{ stage = \"load.train_images\" }",
    "{ weights = \"w.pth\", sha256 = \"00\" }",
    "1979-05-27",
    "07:32:00",
    "1979-05-27T07:32:00.999999-07:00",
    "stages",
    "kind",
    "inputs",
    "outputs",
    "profiles",
    "pipeline",
    "extends",
    "command",
    "train",
    "report",
    "load_subset",
    "resize",
    "evaluate",
    "gradcam",
    "\"{in.x}\"",
    "\"{out.nope}\"",
    "\"{in.\"",
    "=",
    ".",
    "[",
    "]",
    "[[",
    "]]",
    "#",
    "\\",
    "\n",
    "\r\n",
    "\t",
    "\u{feff}",
    "\u{0}",
];

/// Whole lines to insert: duplicate tables and keys, odd table headers.
const LINES: &[&str] = &[
    "[pipeline]",
    "[stages]",
    "[profiles]",
    "[stages.load]",
    "[stages.a]",
    "[stages.\"../evil\"]",
    "[stages.\"\"]",
    "[stages.\"🦀\"]",
    "[stages.x.y.z]",
    "[[stages.a]]",
    "[[profiles.cpu]]",
    "[profiles.cpu]",
    "[profiles.loop]\nextends = \"loop2\"\n[profiles.loop2]\nextends = \"loop\"",
    "[profiles.cpu]\nextends = \"cpu\"",
    "[profiles.cpu]\n\"nostage.x\" = 1",
    "[profiles.cpu]\n\"a\" = 1",
    "[profiles.cpu]\n\"a.kind\" = \"report\"",
    "[profiles.cpu]\n\"a.inputs\" = 1",
    "[profiles.cpu]\n\"a..b\" = 1",
    "kind = \"command\"",
    "kind = \"nope\"",
    "kind = 5",
    "kind = \"train\"",
    "inputs = 5",
    "inputs = { \"../x\" = \"a.b\" }",
    "inputs = { src = [\"a.text\", \"a.text\"] }",
    "inputs = { src = \"src.self\" }",
    "inputs = { pipeline = \"a.text\" }",
    "outputs = { \"../../x\" = \"../x.txt\" }",
    "outputs = {}",
    "seed = -5",
    "seed = 18446744073709551615",
    "name = 3",
    "lr = nan",
    "lr = inf",
    "epochs = 99999999999",
    "epochs = -1",
    "batch_size = 0",
    "size = 0",
    "size = 4294967297",
    "widths = []",
    "unknown_param = 1",
    "a.b.c.d.e = 1",
    "x = 1\nx = 2",
    "model = { arch = \"fast\", widths = [64, 128, 256], normalize = \"cifar\", widths = [1] }",
    "\"quoted key\" = 1",
    "'literal key' = 1",
];

/// One edit to the text.
#[derive(Clone, Debug)]
enum Edit {
    FlipByte { at: usize, mask: u8 },
    Insert { at: usize, bytes: Vec<u8> },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    /// Replaces the token (run of non-space characters) at `at`.
    Token { at: usize, token: usize },
    /// Inserts a line at the line boundary at or before `at`.
    Line { at: usize, line: usize },
    /// Copies the line at `at` (often a duplicate key).
    DupLine { at: usize },
    /// Swaps the line at `at` with the next one.
    SwapLines { at: usize },
    /// Wraps the value on the line at `at` in `depth` arrays or inline tables.
    Nest { at: usize, depth: usize, table: bool },
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        3 => (at, 1..=255u8).prop_map(|(at, mask)| Edit::FlipByte { at, mask }),
        2 => (at, prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| Edit::Insert { at, bytes }),
        2 => (at, 1..64usize).prop_map(|(at, len)| Edit::Delete { at, len }),
        1 => at.prop_map(|at| Edit::Truncate { at }),
        6 => (at, 0..TOKENS.len()).prop_map(|(at, token)| Edit::Token { at, token }),
        4 => (at, 0..LINES.len()).prop_map(|(at, line)| Edit::Line { at, line }),
        2 => at.prop_map(|at| Edit::DupLine { at }),
        1 => at.prop_map(|at| Edit::SwapLines { at }),
        1 => (at, prop_oneof![3 => 1..80usize, 1 => 80..5000usize], any::<bool>()).prop_map(|(at, depth, table)| Edit::Nest { at, depth, table }),
    ]
}

fn line_bounds(text: &[u8], at: usize) -> (usize, usize) {
    let start = text[..at].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let end = text[at..].iter().position(|&b| b == b'\n').map_or(text.len(), |i| at + i + 1);
    (start, end)
}

fn apply(text: &mut Vec<u8>, e: &Edit) {
    let len = text.len();
    let pos = |at: usize| if len == 0 { 0 } else { at % (len + 1) };
    match e {
        Edit::FlipByte { at, mask } => {
            if len > 0 {
                text[at % len] ^= mask;
            }
        }
        Edit::Insert { at, bytes } => {
            let at = pos(*at);
            text.splice(at..at, bytes.iter().copied());
        }
        Edit::Delete { at, len: n } => {
            let at = pos(*at);
            text.drain(at..(at + n).min(len));
        }
        Edit::Truncate { at } => text.truncate(pos(*at)),
        Edit::Token { at, token } => {
            let at = pos(*at).min(len);
            let is_tok = |b: &u8| !b" \t\r\n=,[]{}".contains(b);
            let start = text[..at].iter().rposition(|b| !is_tok(b)).map_or(0, |i| i + 1);
            let end = text[at..].iter().position(|b| !is_tok(b)).map_or(len, |i| at + i);
            text.splice(start..end, TOKENS[*token].bytes());
        }
        Edit::Line { at, line } => {
            let (start, _) = line_bounds(text, pos(*at).min(len));
            let mut l = LINES[*line].as_bytes().to_vec();
            l.push(b'\n');
            text.splice(start..start, l);
        }
        Edit::DupLine { at } => {
            let (start, end) = line_bounds(text, pos(*at).min(len));
            let mut l = text[start..end].to_vec();
            if l.last() != Some(&b'\n') {
                l.insert(0, b'\n');
            }
            text.splice(end..end, l);
        }
        Edit::SwapLines { at } => {
            let (s1, e1) = line_bounds(text, pos(*at).min(len));
            if e1 < len {
                let (s2, e2) = line_bounds(text, e1);
                let (a, b) = (text[s1..e1].to_vec(), text[s2..e2].to_vec());
                let mut swapped = b;
                if swapped.last() != Some(&b'\n') {
                    swapped.push(b'\n');
                }
                swapped.extend(a);
                text.splice(s1..e2, swapped);
            }
        }
        Edit::Nest { at, depth, table } => {
            let (start, end) = line_bounds(text, pos(*at).min(len));
            let line = &text[start..end];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                let value_start = start + eq + 1;
                let value_end = if text[end - 1] == b'\n' { end - 1 } else { end };
                let value = text[value_start..value_end].to_vec();
                let (open, close): (&[u8], &[u8]) = if *table { (b"{ k = ", b" }") } else { (b"[", b"]") };
                let mut nested = open.repeat(*depth);
                nested.extend(value);
                nested.extend(close.repeat(*depth));
                text.splice(value_start..value_end, nested);
            }
        }
    }
}

/// A mutated seed: the seed's index and the edits applied to it.
fn mutated() -> impl Strategy<Value = String> {
    (0..seeds().len(), prop::collection::vec(edit(), 1..5)).prop_map(|(seed, edits)| {
        let mut text = seeds()[seed].as_bytes().to_vec();
        for e in &edits {
            apply(&mut text, e);
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

// ---- random structured TOML ---------------------------------------------

const KEYS: &[&str] = &[
    "kind", "inputs", "outputs", "cmd", "env", "name", "seed", "extends", "model", "arch", "lr", "epochs",
    "batch_size", "size", "source", "train_per_class", "test", "pool", "title", "predictions", "histories",
    "file", "url", "sha256", "stage", "weights", "a", "b", "text", "src", "x", "..", "../x", "", "é", "a.b",
    "stages", "pipeline", "profiles",
];

const KINDS: &[&str] = &["command", "train", "evaluate", "report", "load_subset", "resize", "gradcam", "nope"];

#[derive(Clone, Debug)]
enum Toml {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Toml>),
    Table(Vec<(String, Toml)>),
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_string),
        1 => "[a-z_][a-z0-9_-]{0,8}",
        1 => any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn scalar() -> impl Strategy<Value = Toml> {
    prop_oneof![
        any::<i64>().prop_map(Toml::Int),
        prop_oneof![Just(0i64), Just(-1), Just(1), Just(i64::MAX), Just(i64::MIN), 0..300i64].prop_map(Toml::Int),
        any::<f64>().prop_map(Toml::Float),
        any::<bool>().prop_map(Toml::Bool),
        prop::sample::select(KINDS).prop_map(|s| Toml::Str(s.into())),
        "[a-z_]{1,6}\\.[a-z_]{1,8}".prop_map(Toml::Str),
        "\\{(in|out)\\.[a-z]{1,4}\\}".prop_map(Toml::Str),
        any::<String>().prop_map(|s| Toml::Str(s.chars().take(16).collect())),
    ]
}

fn value() -> impl Strategy<Value = Toml> {
    scalar().prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Toml::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|kv| Toml::Table(dedup(kv))),
        ]
    })
}

fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn render_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        quote(k)
    }
}

fn render(v: &Toml) -> String {
    match v {
        Toml::Int(i) => i.to_string(),
        Toml::Float(f) if f.is_nan() => "nan".into(),
        Toml::Float(f) if f.is_infinite() => if *f > 0.0 { "inf" } else { "-inf" }.into(),
        Toml::Float(f) => format!("{f:?}"),
        Toml::Bool(b) => b.to_string(),
        Toml::Str(s) => quote(s),
        Toml::Array(xs) => format!("[{}]", xs.iter().map(render).collect::<Vec<_>>().join(", ")),
        Toml::Table(kv) => format!(
            "{{ {} }}",
            kv.iter().map(|(k, v)| format!("{} = {}", render_key(k), render(v))).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// Keeps the first of each key: TOML refuses duplicates outright, which
/// would stop most documents at the syntax check.
fn dedup(kv: Vec<(String, Toml)>) -> Vec<(String, Toml)> {
    let mut seen = std::collections::BTreeSet::new();
    kv.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect()
}

/// A stage of a random kind with random params.
fn random_stage() -> impl Strategy<Value = String> {
    (
        prop_oneof![4 => "[a-e]", 1 => key()],
        prop::option::weighted(0.9, prop::sample::select(KINDS)),
        prop::collection::vec((key(), value()), 0..6),
    )
        .prop_map(|(name, kind, params)| {
            let mut s = format!("\n[stages.{}]\n", render_key(&name));
            if let Some(k) = kind {
                s += &format!("kind = {}\n", quote(k));
            }
            for (k, v) in dedup(params) {
                s += &format!("{} = {}\n", render_key(&k), render(&v));
            }
            s
        })
}

/// A `command` stage that is well-formed on its own: its inputs and
/// outputs match its placeholders, and its inputs refer to stages `a`..`e`
/// and outputs `o`/`p`, so documents of these form random graphs (with
/// cycles, self-references and dangling references now and then).
fn command_stage() -> impl Strategy<Value = String> {
    let reference = prop_oneof![
        8 => ("[a-e]", "[op]").prop_map(|(s, o)| format!("{s}.{o}")),
        1 => Just("{ file = \"data/x.csv\" }".to_string()),
        1 => Just("[\"a.o\", \"b.p\"]".to_string()),
    ];
    (
        "[a-e]",
        prop::collection::btree_map("[xy]", reference, 0..3),
        prop::collection::btree_set("[op]", 1..3),
        prop::option::weighted(0.1, (key(), value())),
    )
        .prop_map(|(name, inputs, outputs, extra)| {
            let mut cmd = String::from("cat");
            for slot in inputs.keys() {
                cmd += &format!(" {{in.{slot}}}");
            }
            for o in &outputs {
                cmd += &format!(" > {{out.{o}}}");
            }
            let ins: Vec<String> = inputs.iter().map(|(k, r)| {
                let r = if r.starts_with('{') || r.starts_with('[') { r.clone() } else { quote(r) };
                format!("{k} = {r}")
            }).collect();
            let outs: Vec<String> = outputs.iter().map(|o| format!("{o} = \"{o}.txt\"")).collect();
            let mut s = format!("\n[stages.{name}]\nkind = \"command\"\ncmd = {}\noutputs = {{ {} }}\n", quote(&cmd), outs.join(", "));
            if !ins.is_empty() {
                s += &format!("inputs = {{ {} }}\n", ins.join(", "));
            }
            if let Some((k, v)) = extra {
                if !matches!(k.as_str(), "kind" | "cmd" | "outputs" | "inputs") {
                    s += &format!("{} = {}\n", render_key(&k), render(&v));
                }
            }
            s
        })
}

/// A whole document from the pipeline vocabulary, rendered as TOML text.
fn structured() -> impl Strategy<Value = String> {
    (
        prop::option::of((prop::option::of(prop_oneof![3 => "[a-z ]{0,8}".prop_map(Toml::Str), 1 => scalar()]), prop::option::of(prop_oneof![3 => (0..1000i64).prop_map(Toml::Int), 1 => scalar()]))),
        prop::collection::vec(prop_oneof![3 => command_stage(), 1 => random_stage()], 0..6),
        prop::collection::vec((prop_oneof!["cpu", "cpu-fp32", key()], prop::option::of("[a-z]{1,3}|cpu|cpu-fp32"), prop::collection::vec((prop_oneof![3 => ("[a-e]", "[a-z]{1,4}").prop_map(|(s, p)| format!("{s}.{p}")), 1 => key()], value()), 0..4)), 0..3),
        prop::collection::vec((key(), value()), 0..2),
        prop::bool::weighted(0.1),
    )
        .prop_map(|(header, stages, profiles, top, with_top)| {
            let mut s = String::new();
            if with_top {
                for (k, v) in &top {
                    s += &format!("{} = {}\n", render_key(k), render(v));
                }
            }
            if let Some((name, seed)) = header {
                s += "[pipeline]\n";
                if let Some(n) = name {
                    s += &format!("name = {}\n", render(&n));
                }
                if let Some(v) = seed {
                    s += &format!("seed = {}\n", render(&v));
                }
            }
            // A stage name may come up twice; TOML refuses a table defined twice.
            let mut names = std::collections::BTreeSet::new();
            for stage in &stages {
                let header = stage.lines().nth(1).unwrap_or_default().to_string();
                if names.insert(header) {
                    s += stage;
                }
            }
            let mut seen = std::collections::BTreeSet::new();
            for (name, extends, sets) in profiles {
                if !seen.insert(name.clone()) {
                    continue;
                }
                s += &format!("\n[profiles.{}]\n", render_key(&name));
                if let Some(e) = extends {
                    s += &format!("extends = {}\n", quote(&e));
                }
                for (k, v) in dedup(sets) {
                    if k != "extends" {
                        s += &format!("{} = {}\n", quote(&k), render(&v));
                    }
                }
            }
            s
        })
}

fn options() -> impl Strategy<Value = LoadOptions<'static>> {
    let profile = prop_oneof![
        4 => Just(ProfileChoice::None),
        2 => any::<bool>().prop_map(|cuda| ProfileChoice::Auto { cuda }),
        1 => prop::sample::select(&["cpu", "cpu-fp32", "imagenet", "base", "p", "loop", "nope", ""][..])
            .prop_map(ProfileChoice::Named),
    ];
    let flag = prop_oneof![
        (
            prop::sample::select(&["load", "train", "a", "b", "c", "pretrain", "nope", ""][..]),
            prop::sample::select(&["lr", "epochs", "source", "model.arch", "kind", "inputs", "cmd", "", "x.y.z"][..]),
            prop::sample::select(TOKENS),
        )
            .prop_map(|(s, p, v)| format!("{s}.{p}={v}")),
        any::<String>().prop_map(|s| s.chars().take(24).collect()),
    ];
    (profile, prop::collection::vec(flag, 0..3)).prop_map(|(profile, sets)| LoadOptions { profile, sets })
}

/// The property: no panic; an error says something; file positions point
/// inside the text; a loaded pipeline answers its own queries.
fn check(text: &str, opts: &LoadOptions) -> Result<bool, TestCaseError> {
    match load_str(Path::new("pipeline.toml"), text, opts, &registry()) {
        Ok(p) => {
            prop_assert!(!p.stages.is_empty(), "a pipeline without stages loaded");
            for i in 0..p.stages.len() {
                let doc = p.upstream_params(i);
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&doc).is_ok());
            }
            Ok(true)
        }
        Err(e) => {
            let shown = e.to_string();
            prop_assert!(!shown.trim().is_empty(), "empty error for {text:?}");
            if let SpecError::Invalid(diags) = &e {
                prop_assert!(!diags.is_empty());
                let lines = text.split('\n').count();
                for d in diags {
                    prop_assert!(!d.message.trim().is_empty(), "empty diagnostic message: {d:?}");
                    if let Origin::File { line, col, .. } = &d.origin {
                        prop_assert!(*line >= 1 && *line <= lines && *col >= 1, "{d} is outside the {lines}-line text");
                    }
                }
            }
            Ok(false)
        }
    }
}

#[test]
fn fuzz_spec_seeds_load() {
    // The seeds the mutations start from are themselves good pipelines
    // (ARRAYS is deliberately bad: an array of stage tables).
    for seed in [REPO_PIPELINE, CHAIN, ML] {
        load_str(Path::new("p.toml"), seed, &LoadOptions::default(), &registry()).unwrap();
    }
    // So do they on a machine without CUDA, where the repo's gets `cpu-fp32`.
    let auto = LoadOptions { profile: ProfileChoice::Auto { cuda: false }, sets: vec![] };
    for seed in [REPO_PIPELINE, CHAIN] {
        load_str(Path::new("p.toml"), seed, &auto, &registry()).unwrap();
    }
}

#[test]
fn fuzz_spec_mutated_seeds() {
    fuzz("fuzz_spec_mutated_seeds", 2000, (mutated(), options()), |(text, opts)| check(&text, &opts));
}

#[test]
fn fuzz_spec_structured_toml() {
    fuzz("fuzz_spec_structured_toml", 2000, (structured(), options()), |(text, opts)| check(&text, &opts));
}
