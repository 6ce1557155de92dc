//! Checks the spec applies to every stage after its kind has accepted the
//! params, so each rule holds for every kind, present or future.
//!
//! - Every key the user wrote must be one the kind kept. A kind's canonical
//!   params name every param it accepts (defaults filled in), so a written
//!   key missing from them was silently ignored: most often a typo under a
//!   table the kind reads loosely (e.g. an untagged `init = { ... }`). It is
//!   reported under its own name, found structurally rather than by reading
//!   serde's error text. A key the kind reads but leaves out of its
//!   canonical params at its default (so adding a param keeps old keys)
//!   is told apart by a probe: the kind refuses the key with a value no
//!   param takes, where an ignored key is accepted with anything.
//! - No two outputs of a stage may be written as the same file: one would
//!   overwrite the other, and the stage would fail only after running.

use serde_json::{Map, Value};

use super::diag::closest;
use crate::kind::Checked;

/// A param the kind did not keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ignored {
    /// From the stage table down to the key.
    pub path: Vec<String>,
    /// The keys the kind accepts at that level.
    pub known: Vec<String>,
}

impl Ignored {
    pub fn help(&self) -> String {
        let name = self.path.last().map(String::as_str).unwrap_or_default();
        match closest(name, self.known.iter().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None if self.known.is_empty() => "remove it: nothing is accepted there".into(),
            None => format!("accepted here: {}", self.known.join(", ")),
        }
    }
}

/// Keys in `raw` (the stage's params as written) that `canonical` lacks
/// and the kind does not read: `accepts` says whether the kind accepts a
/// copy of `raw` with one key's value replaced by the probe.
pub fn ignored_keys(raw: &Map<String, Value>, canonical: &Value, accepts: impl Fn(&Map<String, Value>) -> bool) -> Vec<Ignored> {
    let mut out = Vec::new();
    // A kind whose params are not a table at all cannot be compared.
    if let Value::Object(c) = canonical {
        walk(raw, c, &mut Vec::new(), &mut out);
    }
    out.retain(|ig| accepts(&with_probe(raw, &ig.path)));
    out
}

/// `raw` with the value at `path` replaced by one that no param's type
/// takes: a list holding a table with a key no kind names.
fn with_probe(raw: &Map<String, Value>, path: &[String]) -> Map<String, Value> {
    let mut copy = raw.clone();
    let mut table = &mut copy;
    for (i, key) in path.iter().enumerate() {
        if i + 1 == path.len() {
            table.insert(key.clone(), serde_json::json!([{ "\u{1}cairn probe": null }]));
            break;
        }
        match table.get_mut(key) {
            Some(Value::Object(t)) => table = t,
            _ => break,
        }
    }
    copy
}

fn walk(raw: &Map<String, Value>, canonical: &Map<String, Value>, at: &mut Vec<String>, out: &mut Vec<Ignored>) {
    for (key, value) in raw {
        at.push(key.clone());
        match (value, canonical.get(key)) {
            (_, None) => out.push(Ignored { path: at.clone(), known: canonical.keys().cloned().collect() }),
            // Only tables are compared: a list or a scalar may be
            // canonicalised into another shape (e.g. `"a+b"` → `["a", "b"]`).
            (Value::Object(r), Some(Value::Object(c))) => walk(r, c, at, out),
            _ => {}
        }
        at.pop();
    }
}

/// Two outputs of one stage written as the same file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collision {
    pub first: (String, String),
    pub second: (String, String),
    /// Whether the file names come from the params (`outputs = { .. }`),
    /// so the user can fix them, rather than from the kind.
    pub from_params: bool,
}

/// Output name → the file it is written as. A kind that lets the user name
/// output files takes them as `outputs = { <output> = "<file>" }` (the
/// `command` kind); otherwise the engine writes `<output>.<ext>`.
fn output_files(c: &Checked) -> (Vec<(String, String)>, bool) {
    let named = c.params.get("outputs").and_then(Value::as_object);
    let file_of = |name: &str| named.and_then(|m| m.get(name)).and_then(Value::as_str).map(str::to_string);
    let from_params = c.outputs.iter().any(|o| file_of(&o.name).is_some());
    let files = c.outputs.iter().map(|o| (o.name.clone(), file_of(&o.name).unwrap_or_else(|| o.file_name()))).collect();
    (files, from_params)
}

/// Outputs whose files collide. Case is ignored, so a pipeline that loads
/// here also works on a case-insensitive file system (macOS, Windows).
pub fn output_collisions(c: &Checked) -> Vec<Collision> {
    let (files, from_params) = output_files(c);
    let mut out = Vec::new();
    for (j, second) in files.iter().enumerate() {
        if let Some(first) = files[..j].iter().find(|f| f.1.to_lowercase() == second.1.to_lowercase()) {
            out.push(Collision { first: first.clone(), second: second.clone(), from_params });
        }
    }
    out
}

impl Collision {
    pub fn message(&self) -> String {
        let ((a, fa), (b, fb)) = (&self.first, &self.second);
        if fa == fb {
            format!("outputs `{a}` and `{b}` are both written as `{fa}`")
        } else {
            format!("outputs `{a}` and `{b}` are written as `{fa}` and `{fb}`, which differ only in case")
        }
    }

    pub fn help(&self, kind: &str) -> String {
        if self.from_params {
            let (b, fb) = &self.second;
            let ext = fb.rsplit_once('.').map(|(_, e)| e).unwrap_or("bin");
            format!("give each output its own file name, e.g. `{b} = \"{b}.{ext}\"`")
        } else {
            format!("kind `{kind}` declares both; this is a bug in the kind")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::{ArtifactType, EnvNeeds, OutputDecl};
    use serde_json::json;

    fn checked(params: Value, outputs: &[&str]) -> Checked {
        Checked {
            params,
            inputs: vec![],
            outputs: outputs.iter().map(|n| OutputDecl::new(*n, ArtifactType::File)).collect(),
            implied_inputs: vec![],
            env: EnvNeeds::default(),
        }
    }

    fn raw(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn keys_the_kind_dropped_are_found_at_any_depth() {
        let canonical = json!({"lr": 0.1, "init": {"stage": "a.model"}, "trainable": ["head"]});
        let found = ignored_keys(&raw(json!({"lr": 1, "init": {"stage": "a.model", "sha265": "x"}, "trainable": "head", "lrr": 2})), &canonical, |_| true);
        let paths: Vec<Vec<String>> = found.iter().map(|i| i.path.clone()).collect();
        assert_eq!(paths, [vec!["init".to_string(), "sha265".into()], vec!["lrr".into()]]);
        assert_eq!(found[1].help(), "did you mean `lr`?");
        assert!(ignored_keys(&raw(json!({"lr": 1})), &canonical, |_| true).is_empty());
        assert!(ignored_keys(&raw(json!({"x": 1})), &Value::Null, |_| true).is_empty(), "nothing to compare with");
    }

    #[test]
    fn a_key_the_kind_reads_but_omits_at_its_default_is_not_ignored() {
        let canonical = json!({"lr": 0.1, "augment": {"flip": true}});
        let written = raw(json!({"lr": 0.1, "keep": "best", "augment": {"flip": true, "crop": 0}, "kepp": "best"}));
        // The kind refuses the probe where it reads the key: `keep` and `augment.crop`.
        let reads = |m: &Map<String, Value>| {
            let probed = |v: Option<&Value>| v.is_some_and(Value::is_array);
            !(probed(m.get("keep")) || probed(m["augment"].get("crop")))
        };
        let found = ignored_keys(&written, &canonical, reads);
        let paths: Vec<Vec<String>> = found.iter().map(|i| i.path.clone()).collect();
        assert_eq!(paths, [vec!["kepp".to_string()]]);
        let probe = with_probe(&written, &["augment".to_string(), "crop".to_string()]);
        assert!(probe["augment"]["crop"].is_array() && probe["augment"]["flip"] == json!(true) && probe["keep"] == json!("best"));
    }

    #[test]
    fn output_files_collide_by_param_or_by_case() {
        let c = checked(json!({"outputs": {"a": "x.txt", "b": "x.txt", "c": "X.TXT", "d": "d.txt"}}), &["a", "b", "c", "d"]);
        let found = output_collisions(&c);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].message(), "outputs `a` and `b` are both written as `x.txt`");
        assert!(found[1].message().contains("differ only in case"), "{}", found[1].message());
        assert_eq!(found[0].help("command"), "give each output its own file name, e.g. `b = \"b.txt\"`");
        assert!(output_collisions(&checked(json!({}), &["a", "b"])).is_empty());
        let dup = output_collisions(&checked(json!({}), &["a", "a"]));
        assert!(dup.len() == 1 && !dup[0].from_params && dup[0].help("k").contains("bug"));
    }
}
