//! Profiles and `--set` flags: named or ad-hoc changes to stage params.
//!
//! Both are just edits to params before kinds check them, so they change
//! keys in the ordinary way. Each edit remembers where it came from, so an
//! error in an overridden value points at the profile line or the flag
//! rather than at the original value in `[stages]`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::diag::{closest, Diagnostic, Origin};
use super::parse::{NotParam, RawSpec};

/// One edit: set `param_path` of `stage` to `value`.
#[derive(Clone, Debug)]
pub struct Override {
    pub stage: String,
    pub param_path: Vec<String>,
    pub value: Value,
    pub origin: Origin,
}

/// Parses `stage.param[.sub]=value`. The value is read as TOML (so
/// `1e-4`, `true`, `[1, 2]` and `"text"` mean what they say); anything
/// that is not valid TOML is taken as a bare string.
pub fn parse_flag(flag: &str) -> Result<Override, Diagnostic> {
    let origin = Origin::Flag(flag.to_string());
    let err = |message: String| Diagnostic {
        origin: origin.clone(),
        message,
        help: Some("write `--set <stage>.<param>=<value>`, e.g. `--set finetune.lr=3e-4`".into()),
    };
    let (target, raw) = flag.split_once('=').ok_or_else(|| err("missing `=`".into()))?;
    let value = parse_value(raw.trim()).map_err(|e| Diagnostic { help: Some(e.help().into()), ..err(format!("`{raw}`: {}", e.message())) })?;
    split_target(target.trim(), value, origin.clone()).map_err(err)
}

fn parse_value(raw: &str) -> Result<Value, NotParam> {
    let text = format!("v = {raw}");
    match toml::de::DeTable::parse(&text) {
        Ok(doc) => match doc.get_ref().get("v") {
            Some(v) => super::parse::to_json_value(v.get_ref()),
            None => Ok(Value::String(raw.to_string())),
        },
        Err(_) => Ok(Value::String(raw.to_string())),
    }
}

fn split_target(target: &str, value: Value, origin: Origin) -> Result<Override, String> {
    let mut parts = target.split('.').map(str::to_string);
    let stage = parts.next().unwrap_or_default();
    let param_path: Vec<String> = parts.collect();
    if stage.is_empty() || param_path.is_empty() || param_path.iter().any(|p| p.is_empty()) {
        return Err(format!("`{target}` does not name `<stage>.<param>`"));
    }
    if matches!(param_path[0].as_str(), "kind" | "inputs") {
        return Err(format!("`{}` cannot be overridden; edit pipeline.toml", param_path[0]));
    }
    Ok(Override { stage, param_path, value, origin })
}

/// The overrides of profile `name`, base profiles (via `extends`) first.
pub fn profile_overrides(spec: &RawSpec, name: &str, origin_of_choice: Origin) -> Result<Vec<Override>, Diagnostic> {
    let mut chain = Vec::new();
    let mut cur = name.to_string();
    loop {
        if chain.contains(&cur) {
            chain.push(cur);
            let path = vec!["profiles".to_string(), chain[0].clone(), "extends".to_string()];
            return Err(Diagnostic {
                origin: spec.source.origin(spec.span_of(&path)),
                message: format!("profiles extend each other in a cycle: {}", chain.join(" → ")),
                help: Some("remove one of the `extends` keys".into()),
            });
        }
        let Some(profile) = spec.profiles.get(&cur) else {
            let known: Vec<&str> = spec.profiles.keys().map(String::as_str).collect();
            let origin = if chain.is_empty() {
                origin_of_choice
            } else {
                let path = vec!["profiles".to_string(), chain.last().cloned().unwrap_or_default(), "extends".into()];
                spec.source.origin(spec.span_of(&path))
            };
            return Err(Diagnostic {
                origin,
                message: format!("no profile named `{cur}`"),
                help: Some(match closest(&cur, known.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("known profiles: {}", if known.is_empty() { "(none)".into() } else { known.join(", ") }),
                }),
            });
        };
        chain.push(cur.clone());
        match &profile.extends {
            Some(parent) => cur = parent.clone(),
            None => break,
        }
    }
    let mut out = Vec::new();
    for pname in chain.iter().rev() {
        for (key, value) in &spec.profiles[pname].sets {
            let path = vec!["profiles".to_string(), pname.clone(), key.clone()];
            let origin = spec.source.origin(spec.span_of(&path));
            let o = split_target(key, value.clone(), origin.clone())
                .map_err(|message| Diagnostic { origin, message, help: None })?;
            out.push(o);
        }
    }
    Ok(out)
}

/// Applies overrides to the stages' params, returning for each stage the
/// origin of every overridden path.
pub fn apply(
    spec: &mut RawSpec,
    overrides: &[Override],
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Vec<(Vec<String>, Origin)>> {
    let mut origins: BTreeMap<String, Vec<(Vec<String>, Origin)>> = BTreeMap::new();
    for o in overrides {
        let Some(stage) = spec.stages.iter_mut().find(|s| s.name == o.stage) else {
            let names: Vec<String> = spec.stages.iter().map(|s| s.name.clone()).collect();
            diags.push(Diagnostic {
                origin: o.origin.clone(),
                message: format!("no stage named `{}`", o.stage),
                help: closest(&o.stage, names.iter().map(String::as_str)).map(|s| format!("did you mean `{s}`?")),
            });
            continue;
        };
        set_path(&mut stage.params, &o.param_path, o.value.clone());
        origins.entry(o.stage.clone()).or_default().push((o.param_path.clone(), o.origin.clone()));
    }
    origins
}

fn set_path(map: &mut Map<String, Value>, path: &[String], value: Value) {
    let (first, rest) = path.split_first().expect("override paths are non-empty");
    if rest.is_empty() {
        map.insert(first.clone(), value);
        return;
    }
    let entry = map.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    if let Value::Object(inner) = entry {
        set_path(inner, rest, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_values_are_toml() {
        let o = parse_flag("finetune.lr=1e-4").unwrap();
        assert_eq!(o.stage, "finetune");
        assert_eq!(o.param_path, vec!["lr"]);
        assert_eq!(o.value, serde_json::json!(1e-4));
        assert_eq!(parse_flag("load.source=data/x.tar.gz").unwrap().value, serde_json::json!("data/x.tar.gz"));
        assert_eq!(parse_flag("a.b.c=[1, 2]").unwrap().param_path, vec!["b", "c"]);
    }

    #[test]
    fn bad_flags_are_errors() {
        assert!(parse_flag("nolhs").is_err());
        assert!(parse_flag("stage=1").is_err());
        assert!(parse_flag("s.kind=x").is_err());
        assert!(parse_flag("s.x=nan").is_err());
    }

    /// Each refused value says why in its own words (all were once "is not
    /// a finite value").
    #[test]
    fn a_refused_value_says_why() {
        let message = |flag: &str| parse_flag(flag).unwrap_err().message;
        assert!(message("s.x=nan").contains("NaN"));
        assert!(message("s.x=99999999999999999999").contains("64 bits"));
        assert!(message(r#"s.cmd="a\u0000""#).contains("NUL character"));
    }
}
