//! Reading `pipeline.toml` into a [`RawSpec`]: the file's structure with
//! every value's source span kept, before any kind has looked at params.
//!
//! Parsing is total: malformed input becomes [`Diagnostic`]s, never a
//! panic. Names are restricted to a safe charset because they become
//! directory names under `artifacts/`.

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::{Map, Value};
use toml::de::{DeInteger, DeTable, DeValue};
use toml::Spanned;

use super::diag::{Diagnostic, PathHash, Problem, SourceMap, Spans};
use crate::kind::InputRef;

/// The deepest nesting accepted in params; deeper is hostile or a mistake.
const MAX_DEPTH: usize = 32;

/// A stage as written in the file.
#[derive(Clone, Debug)]
pub struct RawStage {
    pub name: String,
    pub kind: String,
    /// Slot → references, in the order written.
    pub inputs: BTreeMap<String, Vec<InputRef>>,
    /// Every key of the stage table except `kind` and `inputs`.
    pub params: Map<String, Value>,
}

/// A named set of overrides; `extends` names another profile.
#[derive(Clone, Debug, Default)]
pub struct RawProfile {
    pub extends: Option<String>,
    /// `"stage.param.sub"` → value, in file order.
    pub sets: Vec<(String, Value)>,
}

/// The whole file, with spans.
#[derive(Clone, Debug)]
pub struct RawSpec {
    pub name: String,
    pub seed: u64,
    pub stages: Vec<RawStage>,
    pub profiles: BTreeMap<String, RawProfile>,
    /// The `[remote]` table, when present.
    pub remote: Option<super::remote::RemoteSpec>,
    /// The `[executors.NAME]` tables.
    pub executors: BTreeMap<String, super::executors::ExecutorSpec>,
    pub source: SourceMap,
    /// Span of every value, by path from the document root.
    pub spans: Spans,
}

impl RawSpec {
    /// The best span for a path: the value itself or its nearest parent.
    pub fn span_of(&self, path: &[String]) -> Option<Range<usize>> {
        self.spans.nearest(path)
    }
}

/// Whether `name` is usable as a stage, output, slot or profile name.
pub use cairn_kind::is_safe_name;

pub const NAME_HELP: &str =
    "names start with a letter or `_` and use only letters, digits, `_` and `-` (at most 64)";

struct Ctx {
    source: SourceMap,
    spans: Spans,
    diags: Vec<Diagnostic>,
}

impl Ctx {
    fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>, help: Option<String>) {
        self.diags.push(Diagnostic { origin: self.source.origin(span), message: message.into(), help });
    }

    /// Records the problems a table's parser found and passes on what it parsed.
    fn take_problems<T>(&mut self, (parsed, problems): (T, Vec<Problem>)) -> T {
        for (span, message, help) in problems {
            self.error(span, message, help);
        }
        parsed
    }
}

/// A value of the document with its place in the text.
pub type Item<'i> = Spanned<DeValue<'i>>;

/// The table `item` holds, if it is one.
pub fn table<'a, 'i>(item: &'a Item<'i>) -> Option<&'a DeTable<'i>> {
    item.get_ref().as_table()
}

/// The integer `item` holds, if it is one that fits in 64 bits.
pub fn integer(item: &Item) -> Option<i64> {
    item.get_ref().as_integer().and_then(int64)
}

/// The parser keeps an integer's digits; they are read only here.
fn int64(i: &DeInteger) -> Option<i64> {
    i64::from_str_radix(i.as_str(), i.radix()).ok()
}

/// Parses the text of a pipeline file.
pub fn parse(source: SourceMap, text: &str) -> Result<RawSpec, Vec<Diagnostic>> {
    // The document borrows its strings from `text`: a pipeline of thousands
    // of stages is parsed without a copy of each.
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let msg = e.message().trim().to_string();
            // The parser's own limit, met before cairn's (`MAX_DEPTH`); a
            // dotted key's is reported without a place.
            let help = if msg.contains("recurs") {
                format!("arrays, inline tables or dotted keys nest too deeply to parse here; params may nest {MAX_DEPTH} levels")
            } else {
                "see https://toml.io for the syntax".into()
            };
            return Err(vec![Diagnostic { origin: source.origin(e.span()), message: format!("invalid TOML: {msg}"), help: Some(help) }]);
        }
    };
    let mut cx = Ctx { source, spans: Spans::default(), diags: Vec::new() };
    let root = doc.get_ref();
    if might_hold_nul(text) {
        refuse_nul_strings(&mut cx, root);
        if !cx.diags.is_empty() {
            return Err(cx.diags);
        }
    }
    check_top_keys(&mut cx, root);
    let (name, seed) = parse_header(&mut cx, root);
    let stages = parse_stages(&mut cx, root.get("stages"));
    let profiles = match root.get("profiles") {
        None => BTreeMap::new(),
        Some(item) => parse_profiles(&mut cx, item),
    };
    let remote = root.get("remote").map(|item| cx.take_problems(super::remote::parse(item)));
    let executors = root.get("executors").map_or_else(BTreeMap::new, |item| cx.take_problems(super::executors::parse(item)));
    if cx.diags.is_empty() {
        Ok(RawSpec { name, seed, stages, profiles, remote, executors, source: cx.source, spans: cx.spans })
    } else {
        Err(cx.diags)
    }
}

/// Whether `text` could hold a string with a NUL: only a NUL byte or an
/// escape of one makes it (searched for so that a file without them, every
/// real one, is not walked twice).
fn might_hold_nul(text: &str) -> bool {
    ["\0", "\\u0000", "\\x00", "\\U00000000"].iter().any(|p| text.contains(p))
}

/// Refuses every key and string of the document that holds a NUL, which no
/// command line, path, URL or environment variable can carry, wherever it
/// stands (a param, a stage name, `[remote]`, `sbatch_args`).
fn refuse_nul_strings(cx: &mut Ctx, table: &DeTable) {
    for (key, value) in table.iter() {
        if key.get_ref().contains('\0') {
            refuse_nul_at(cx, key.span());
        }
        refuse_nul_in(cx, value);
    }
}

fn refuse_nul_at(cx: &mut Ctx, span: Range<usize>) {
    cx.error(Some(span), NotParam::Nul.message(), Some(NotParam::Nul.help().into()));
}

fn refuse_nul_in(cx: &mut Ctx, item: &Item) {
    match item.get_ref() {
        DeValue::String(s) if s.contains('\0') => refuse_nul_at(cx, item.span()),
        DeValue::Table(t) => refuse_nul_strings(cx, t),
        DeValue::Array(a) => a.iter().for_each(|v| refuse_nul_in(cx, v)),
        _ => {}
    }
}

fn check_top_keys(cx: &mut Ctx, root: &DeTable) {
    for (key, _) in root.iter() {
        if !matches!(key.get_ref().as_ref(), "pipeline" | "stages" | "profiles" | "remote" | "executors") {
            cx.error(
                Some(key.span()),
                format!("unknown top-level key `{}`", key.get_ref()),
                Some("a pipeline has `[pipeline]`, `[stages.<name>]`, `[profiles.<name>]`, `[remote]` and `[executors.<name>]`".into()),
            );
        }
    }
}

fn parse_stages(cx: &mut Ctx, stages: Option<&Item>) -> Vec<RawStage> {
    match stages.map(|item| (item, table(item))) {
        Some((_, Some(t))) if !t.is_empty() => t.iter().filter_map(|(name, item)| parse_stage(cx, name.get_ref(), item)).collect(),
        Some((item, None)) => {
            cx.error(Some(item.span()), "`stages` must be a table of tables", None);
            Vec::new()
        }
        // Missing or empty: the same mistake.
        missing_or_empty => {
            let span = missing_or_empty.map(|(item, _)| item.span());
            cx.error(span, "the pipeline declares no stages", Some("add a `[stages.<name>]` table".into()));
            Vec::new()
        }
    }
}

fn parse_header(cx: &mut Ctx, root: &DeTable) -> (String, u64) {
    let mut name = "pipeline".to_string();
    let mut seed = 0u64;
    let Some(item) = root.get("pipeline") else { return (name, seed) };
    let Some(t) = table(item) else {
        cx.error(Some(item.span()), "`pipeline` must be a table", None);
        return (name, seed);
    };
    for (key, value) in t.iter() {
        match key.get_ref().as_ref() {
            "name" => match value.get_ref().as_str() {
                Some(s) => name = s.to_string(),
                None => cx.error(Some(value.span()), "`pipeline.name` must be a string", None),
            },
            "seed" => match integer(value) {
                Some(s) if s >= 0 => seed = s as u64,
                _ => cx.error(Some(value.span()), "`pipeline.seed` must be a non-negative integer", None),
            },
            other => cx.error(
                Some(key.span()),
                format!("unknown key `pipeline.{other}`"),
                Some("`[pipeline]` takes `name` and `seed`".into()),
            ),
        }
    }
    (name, seed)
}

fn parse_stage(cx: &mut Ctx, name: &str, item: &Item) -> Option<RawStage> {
    let path = Spans::child(Spans::child(Spans::ROOT, "stages"), name);
    let Some(table) = table(item) else {
        cx.error(Some(item.span()), format!("stage `{name}` must be a table"), Some(format!("write `[stages.{name}]`")));
        return None;
    };
    if !is_safe_name(name) {
        cx.error(Some(item.span()), format!("invalid stage name {name:?}"), Some(NAME_HELP.into()));
        return None;
    }
    cx.spans.insert(path, item.span());
    let mut kind = None;
    let mut inputs = BTreeMap::new();
    let mut params = Map::new();
    for (key, value) in table.iter() {
        let key = key.get_ref().as_ref();
        let p = Spans::child(path, key);
        match key {
            "kind" => match value.get_ref().as_str() {
                Some(k) => {
                    kind = Some(k.to_string());
                    cx.spans.insert(p, value.span());
                }
                None => cx.error(Some(value.span()), format!("`stages.{name}.kind` must be a string"), None),
            },
            "inputs" => inputs = parse_inputs(cx, p, value),
            _ => {
                if let Some(v) = to_json(cx, p, value, 0) {
                    params.insert(key.to_string(), v);
                }
            }
        }
    }
    let Some(kind) = kind else {
        cx.error(
            Some(item.span()),
            format!("stage `{name}` has no `kind`"),
            Some(format!("add `kind = \"...\"` under `[stages.{name}]`")),
        );
        return None;
    };
    Some(RawStage { name: name.to_string(), kind, inputs, params })
}

fn parse_inputs(cx: &mut Ctx, path: PathHash, item: &Item) -> BTreeMap<String, Vec<InputRef>> {
    let mut out = BTreeMap::new();
    let Some(t) = table(item) else {
        cx.error(Some(item.span()), "`inputs` must be a table of slot = \"stage.output\"", None);
        return out;
    };
    for (slot, value) in t.iter() {
        let slot = slot.get_ref().as_ref();
        cx.spans.insert(Spans::child(path, slot), value.span());
        if !is_safe_name(slot) {
            cx.error(Some(value.span()), format!("invalid input slot name {slot:?}"), Some(NAME_HELP.into()));
            continue;
        }
        let refs = match value.get_ref().as_array() {
            Some(arr) => arr.iter().map(|v| parse_ref(cx, Some(v.span()), &to_json_value(v.get_ref()))).collect::<Option<Vec<_>>>(),
            None => parse_ref(cx, Some(value.span()), &to_json_value(value.get_ref())).map(|r| vec![r]),
        };
        if let Some(refs) = refs {
            out.insert(slot.to_string(), refs);
        }
    }
    out
}

/// Parses one reference: `"stage.output"` or `{ file = "...", url = "...", sha256 = "...", fetch = "..." }`.
pub fn parse_ref_value(v: &Value) -> Result<InputRef, String> {
    match v {
        Value::String(s) => InputRef::parse_output(s),
        Value::Object(m) => {
            let get = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
            if let Some(bad) = m.keys().find(|k| !matches!(k.as_str(), "file" | "url" | "sha256" | "fetch")) {
                return Err(format!("unknown key `{bad}` in a file input (expected file, url, sha256, fetch)"));
            }
            let (url, sha256) = (get("url"), get("sha256"));
            if sha256.as_deref().is_some_and(|h| !cairn_kind::is_sha256_hex(h)) {
                return Err("`sha256` must be 64 hex digits (the file's SHA-256, as `sha256sum` prints it)".into());
            }
            if url.as_deref().is_some_and(|u| !cairn_kind::is_download_url(u)) {
                return Err("`url` must start with http:// or https://".into());
            }
            match get("file") {
                Some(path) if !path.is_empty() => Ok(InputRef::External { path, url, sha256, fetch: get("fetch") }),
                _ => Err("a file input needs `file = \"path\"`".into()),
            }
        }
        _ => Err("an input must be \"stage.output\" or { file = \"path\" }".into()),
    }
}

fn parse_ref(cx: &mut Ctx, span: Option<Range<usize>>, v: &Result<Value, NotParam>) -> Option<InputRef> {
    let v = match v {
        Ok(v) => v,
        Err(e) => {
            cx.error(span, format!("this value cannot be an input reference: {}", e.message()), None);
            return None;
        }
    };
    match parse_ref_value(v) {
        Ok(r) => Some(r),
        Err(msg) => {
            // A file input's own keys are explained by their message.
            let help = match v {
                Value::Object(_) => "e.g. `weights = { file = \"data/w.pth\", url = \"https://host/w.pth\", sha256 = \"<64 hex digits>\" }`",
                _ => "write e.g. `images = \"load.train_images\"`",
            };
            cx.error(span, msg, Some(help.into()));
            None
        }
    }
}

fn parse_profiles(cx: &mut Ctx, item: &Item) -> BTreeMap<String, RawProfile> {
    let mut out = BTreeMap::new();
    let Some(t) = table(item) else {
        cx.error(Some(item.span()), "`profiles` must be a table of tables", None);
        return out;
    };
    for (name, item) in t.iter() {
        let name = name.get_ref().as_ref();
        let Some(pt) = table(item) else {
            cx.error(Some(item.span()), format!("profile `{name}` must be a table"), None);
            continue;
        };
        if !is_safe_name(name) {
            cx.error(Some(item.span()), format!("invalid profile name {name:?}"), Some(NAME_HELP.into()));
            continue;
        }
        let mut profile = RawProfile::default();
        for (key, value) in pt.iter() {
            let key = key.get_ref().as_ref();
            let p = Spans::child(Spans::child(Spans::child(Spans::ROOT, "profiles"), name), key);
            if key == "extends" {
                match value.get_ref().as_str() {
                    Some(s) => profile.extends = Some(s.to_string()),
                    None => cx.error(Some(value.span()), "`extends` must name a profile", None),
                }
                cx.spans.insert(p, value.span());
                continue;
            }
            if let Some(v) = to_json(cx, p, value, 0) {
                profile.sets.push((key.to_string(), v));
            }
        }
        out.insert(name.to_string(), profile);
    }
    out
}

/// Converts a TOML item to JSON, recording spans and rejecting what params
/// cannot hold (NaN and infinities, integers beyond 64 bits, absurd
/// nesting).
fn to_json(cx: &mut Ctx, path: PathHash, item: &Item, depth: usize) -> Option<Value> {
    cx.spans.insert(path, item.span());
    if depth > MAX_DEPTH {
        cx.error(Some(item.span()), format!("params nest deeper than {MAX_DEPTH} levels"), None);
        return None;
    }
    match item.get_ref() {
        DeValue::Table(t) => {
            let mut m = Map::new();
            for (k, v) in t.iter() {
                let k = k.get_ref().as_ref();
                m.insert(k.to_string(), to_json(cx, Spans::child(path, k), v, depth + 1)?);
            }
            Some(Value::Object(m))
        }
        DeValue::Array(arr) => {
            let mut out = Vec::with_capacity(arr.len());
            for (i, v) in arr.iter().enumerate() {
                out.push(to_json(cx, Spans::child(path, &i.to_string()), v, depth + 1)?);
            }
            Some(Value::Array(out))
        }
        scalar => match to_json_value(scalar) {
            Ok(v) => Some(v),
            Err(e) => {
                cx.error(Some(item.span()), e.message(), Some(e.help().into()));
                None
            }
        },
    }
}

/// Why a TOML value cannot be a param.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NotParam {
    NotFinite,
    TooLarge,
    /// No command line, path or environment variable can carry a NUL.
    Nul,
}

impl NotParam {
    pub fn message(self) -> &'static str {
        match self {
            NotParam::NotFinite => "NaN and infinite numbers are not allowed in params",
            NotParam::TooLarge => "this integer does not fit in 64 bits",
            NotParam::Nul => "this string holds a NUL character, which no command, path or environment variable can carry",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            NotParam::NotFinite => "use a finite number",
            NotParam::TooLarge => "use a number from -2^63 to 2^63-1, or a float",
            NotParam::Nul => "remove the `\\u0000` (or `\\x00`) escape",
        }
    }
}

/// A TOML value as JSON.
pub fn to_json_value(v: &DeValue) -> Result<Value, NotParam> {
    Ok(match v {
        DeValue::String(s) if s.contains('\0') => return Err(NotParam::Nul),
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => Value::from(int64(i).ok_or(NotParam::TooLarge)?),
        DeValue::Float(f) => {
            let x: f64 = f.as_str().parse().map_err(|_| NotParam::NotFinite)?;
            Value::Number(serde_json::Number::from_f64(x).ok_or(NotParam::NotFinite)?)
        }
        DeValue::Boolean(b) => Value::Bool(*b),
        DeValue::Datetime(d) => Value::String(d.to_string()),
        DeValue::Array(a) => Value::Array(a.iter().map(|v| to_json_value(v.get_ref())).collect::<Result<_, _>>()?),
        DeValue::Table(t) => Value::Object(t.iter().map(|(k, v)| Ok((k.get_ref().to_string(), to_json_value(v.get_ref())?))).collect::<Result<_, _>>()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let source = SourceMap::new("p.toml".into(), text);
        parse(source, text).err().unwrap_or_default().iter().map(|d| d.to_string()).collect()
    }

    /// Found by fuzzing (tests/fuzz_spec.rs): an empty `[stages]` table
    /// loaded as a pipeline with no stages, while a missing one was refused.
    #[test]
    fn empty_stages_table_is_an_error() {
        for text in ["[stages]\n", "stages = {}\n", "[pipeline]\nname = \"x\"\n[stages]\n"] {
            let errs = errors(text);
            assert!(errs.len() == 1 && errs[0].contains("declares no stages"), "{text:?}: {errs:?}");
        }
        assert!(errors("[pipeline]\n")[0].contains("declares no stages"));
    }

    /// Nesting past the TOML parser's own limit (arrays, inline tables,
    /// dotted keys) is refused with cairn's limit in the help, not a bare
    /// pointer to the TOML syntax.
    #[test]
    fn nesting_past_the_parsers_limit_says_how_deep_params_may_go() {
        let head = "[stages.a]\nkind = \"command\"\ncmd = \"true\"\n[stages.a.params]\n";
        for body in ["v = ".to_string() + &"[".repeat(5000) + &"]".repeat(5000), "v = ".to_string() + &"{ a = ".repeat(300) + "1" + &" }".repeat(300), vec!["k"; 300].join(".") + " = 1"] {
            let errs = errors(&format!("{head}{body}\n"));
            assert!(errs.len() == 1 && errs[0].contains("params may nest 32 levels"), "{}: {errs:?}", &body[..12]);
        }
        assert!(errors(&format!("{head}v = [[[1]]]\n")).is_empty());
    }

    /// A malformed `sha256` was only found after the download, and a `url`
    /// starting with `-` reached curl as an option.
    #[test]
    fn a_file_inputs_url_and_sha256_are_checked_where_they_stand() {
        let spec = |extra: &str| format!("[stages.a]\nkind = \"command\"\ncmd = \"cat {{in.x}} > {{out.o}}\"\ninputs = {{ x = {{ file = \"d/x\", {extra} }} }}\noutputs = {{ o = \"o.txt\" }}\n");
        let sha = "ab".repeat(32);
        for (extra, want) in [
            ("sha256 = \"zz\"".to_string(), "`sha256` must be 64 hex digits"),
            (format!("url = \"-o/tmp/x\", sha256 = \"{sha}\""), "`url` must start with http:// or https://"),
        ] {
            let errs = errors(&spec(&extra));
            assert!(errs.len() == 1 && errs[0].contains(want) && errs[0].contains("p.toml:4:"), "{extra}: {errs:?}");
        }
        assert!(errors(&spec(&format!("url = \"https://h/x\", sha256 = \"{sha}\""))).is_empty());
    }

    /// A NUL reached `sh` and failed the stage at run time as "nul byte
    /// found in provided data", naming neither the field nor the fix.
    #[test]
    fn a_nul_in_a_string_is_refused_where_it_stands() {
        let text = "[stages.a]\nkind = \"command\"\ncmd = \"printf '\\u0000' > {out.o}\"\noutputs = { o = \"o.txt\" }\n";
        let errs = errors(text);
        assert!(errs.len() == 1 && errs[0].contains("p.toml:3:7") && errs[0].contains("NUL character") && errs[0].contains("remove the"), "{errs:?}");
    }
}
