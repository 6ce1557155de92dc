//! The generic `command` kind: run a shell command over input files and
//! capture the files it writes as outputs.
//!
//! ```toml
//! [stages.export]
//! kind = "command"
//! cmd = "python {in.script} {in.model} {out.onnx}"
//! inputs = { model = "finetune.model", script = { file = "scripts/export.py" } }
//! outputs = { onnx = "model.onnx" }   # output name = file name it is written as
//! ```
//!
//! `{in.<slot>}` expands to the (read-only) path of the input artifact,
//! `{out.<name>}` to the path the output must be written to. The command
//! runs with `sh -c` in a private scratch directory, so files it writes
//! there by relative name are found too. Scripts the command runs are only
//! part of the key if they are declared as inputs (as `script` above).
//! A non-zero exit or a missing output fails the stage; neither is cached.

use std::collections::BTreeMap;
use std::process::{Command as Proc, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kind::{
    ArtifactType, Checked, EnvNeeds, InputSlot, OutputDecl, ParamError, StageCtx, StageFailure, StageKind,
};
use super::exit_hint::Process;

pub struct Command;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    cmd: String,
    /// Output name → file name.
    outputs: BTreeMap<String, String>,
    /// Environment variables for the command (part of the key).
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// A piece of a command template: literal text, or `{ns.name}`.
enum Piece<'a> {
    Text(&'a str),
    Slot { ns: &'a str, name: &'a str },
}

/// Splits a template into pieces, in one pass. Braces that do not hold a
/// `ns.name` pair stay literal text.
fn pieces(cmd: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = cmd;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else { break };
        let inner = &rest[start + 1..start + len];
        match inner.split_once('.') {
            Some((ns, name)) => {
                out.push(Piece::Text(&rest[..start]));
                out.push(Piece::Slot { ns, name });
            }
            None => out.push(Piece::Text(&rest[..start + len + 1])),
        }
        rest = &rest[start + len + 1..];
    }
    out.push(Piece::Text(rest));
    out
}

fn placeholders(cmd: &str) -> impl Iterator<Item = (&str, &str)> {
    pieces(cmd).into_iter().filter_map(|p| match p {
        Piece::Slot { ns, name } => Some((ns, name)),
        Piece::Text(_) => None,
    })
}

/// Fills a template in one pass: substituted paths are never scanned for
/// placeholders again, so a file name holding `{out.x}` or `$(…)` stays
/// inert (it is also shell-quoted).
fn substitute(cmd: &str, mut path_of: impl FnMut(&str, &str) -> Result<Option<String>, StageFailure>) -> Result<String, StageFailure> {
    let mut out = String::with_capacity(cmd.len());
    for piece in pieces(cmd) {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Slot { ns, name } => match path_of(ns, name)? {
                Some(path) => out.push_str(&shell_quote(&path)),
                None => {
                    out.push('{');
                    out.push_str(ns);
                    out.push('.');
                    out.push_str(name);
                    out.push('}');
                }
            },
        }
    }
    Ok(out)
}

fn artifact_type(file_name: &str) -> (ArtifactType, String) {
    let ext = file_name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_else(|| "bin".into());
    let ty = match ext.as_str() {
        "arrow" => ArtifactType::Tensor,
        "parquet" => ArtifactType::Table,
        "safetensors" => ArtifactType::Model,
        "png" => ArtifactType::Figure,
        "html" | "md" => ArtifactType::Report,
        _ => ArtifactType::File,
    };
    (ty, ext)
}

impl StageKind for Command {
    fn name(&self) -> &str {
        "command"
    }

    fn version(&self) -> u32 {
        1
    }

    fn summary(&self) -> &str {
        "run a shell command over input files; capture its output files"
    }

    fn check(&self, raw: &Value) -> Result<Checked, ParamError> {
        let p: Params = cairn_kinds::typed(raw)?;
        if p.outputs.is_empty() {
            return Err(ParamError::new(vec!["outputs".into()], "a command stage must declare at least one output")
                .with_help("e.g. `outputs = { result = \"result.csv\" }`"));
        }
        let mut inputs: Vec<InputSlot> = Vec::new();
        for (ns, name) in placeholders(&p.cmd) {
            match ns {
                "in" if !inputs.iter().any(|s| s.name == name) => inputs.push(InputSlot::one(name)),
                "in" => {}
                "out" if p.outputs.contains_key(name) => {}
                "out" => {
                    return Err(ParamError::new(vec!["cmd".into()], format!("`{{out.{name}}}` names no declared output"))
                        .with_help(format!("add `{name} = \"<file name>\"` to `outputs`")))
                }
                _ => {}
            }
        }
        let mut outputs = Vec::new();
        for (name, file) in &p.outputs {
            if file.contains('/') || file.starts_with('.') || file.is_empty() {
                return Err(ParamError::new(vec!["outputs".into(), name.clone()], format!("`{file}` must be a plain file name")));
            }
            let (ty, ext) = artifact_type(file);
            outputs.push(OutputDecl { name: name.clone(), ty, ext });
        }
        let params = serde_json::to_value(&p).map_err(|e| ParamError::new(vec![], e.to_string()))?;
        Ok(Checked { params, inputs, outputs, implied_inputs: Vec::new(), env: EnvNeeds::default() })
    }

    fn unknown_slot_help(&self, slot: &str) -> Option<String> {
        Some(format!("a command's input slots are the `{{in.NAME}}` placeholders in its `cmd`: write `{{in.{slot}}}` where the command takes the file's path"))
    }

    fn run(&self, ctx: &mut StageCtx<'_>) -> Result<(), StageFailure> {
        let p: Params = serde_json::from_value(ctx.params.clone()).map_err(|e| StageFailure::new(e.to_string()))?;
        let cmd = substitute(&p.cmd, |ns, name| {
            Ok(match ns {
                "in" => Some(ctx.input(name)?.to_string_lossy().into_owned()),
                "out" => Some(ctx.scratch.join(&p.outputs[name]).to_string_lossy().into_owned()),
                _ => None,
            })
        })?;
        let child = super::supervise::spawn(
            Proc::new("sh")
                .arg("-c")
                .arg(&cmd)
                .current_dir(ctx.scratch)
                .envs(&p.env)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        )
        .map_err(|e| StageFailure::new(format!("cannot start `sh`: {e}")))?;
        let (stage, reporter) = (ctx.stage, ctx.reporter);
        // stderr is shown as it comes under `-v`; otherwise only a
        // failure's tail is.
        let show_err = tracing::level_filters::LevelFilter::current() >= tracing::Level::INFO;
        let ended = super::supervise::supervise(
            child,
            ctx.cancel,
            |line| reporter.log(stage, line),
            |line| {
                if show_err {
                    reporter.log(stage, line)
                }
            },
        )?;
        ctx.metrics.insert("peak_rss_mb".into(), ended.peak_rss_mb());
        let status = ended.status;
        if !status.success() {
            let stderr = String::from_utf8_lossy(&ended.stderr);
            return Err(StageFailure::new(format!(
                "command exited with {status}\n  command: {cmd}{}{}{}",
                super::supervise::stderr_tail(&stderr, "stderr"),
                super::exit_hint::hint(Process::Command, &ended, &stderr).unwrap_or_default(),
                undeclared_files_help(&p.cmd, ctx.project_dir)
            )));
        }
        for (name, file) in &p.outputs {
            let produced = ctx.scratch.join(file);
            if std::fs::symlink_metadata(&produced).is_err() {
                return Err(StageFailure::new(format!(
                    "the command exited 0 but did not write declared output `{name}` (`{file}`, i.e. `{{out.{name}}}`)"
                )));
            }
            std::fs::rename(&produced, ctx.output(name)?)?;
        }
        Ok(())
    }
}

/// A hint for a failed command that names a file or directory of the
/// project by a relative path (`python train.py`, `ls data`): it runs in a
/// scratch directory, where that name finds nothing, and an undeclared
/// script is not in the key. Only paths that exist in `project` (where a
/// `{ file = ... }` input is found) are named, so a word that merely looks
/// like a path never is.
fn undeclared_files_help(template: &str, project: &std::path::Path) -> String {
    if project.as_os_str().is_empty() {
        return String::new(); // a node without the project's files
    }
    let mut files: Vec<&str> = Vec::new();
    let words = template.split(|c: char| c.is_whitespace() || ";|&<>()'\"`=".contains(c));
    for w in words.filter(|w| !w.is_empty() && !w.contains('{') && !w.starts_with(['-', '/', '$'])) {
        if !files.contains(&w) && !matches!(w, "." | "..") && project.join(w).exists() {
            files.push(w);
        }
    }
    let Some(first) = files.first() else { return String::new() };
    let named = files.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
    let it = if files.len() == 1 { "it" } else { "each" };
    format!(
        "\n  help: the command runs in a scratch directory, without the project's {named}: \
         declare {it} as an input (`inputs = {{ script = {{ file = \"{first}\" }} }}`) and write `{{in.script}}` \
         in `cmd` (then an edit to it re-runs the stage)"
    )
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution_is_one_pass_so_paths_are_never_rescanned() {
        let cmd = "cat {in.x} > {out.o}";
        let filled = substitute(cmd, |ns, _| {
            Ok(Some(if ns == "in" { "/c/in{out.o}".to_string() } else { "/s/$(echo INJECTED >&2).bin".to_string() }))
        })
        .unwrap();
        assert_eq!(filled, "cat '/c/in{out.o}' > '/s/$(echo INJECTED >&2).bin'");
    }

    #[test]
    fn braces_that_are_not_placeholders_stay_literal() {
        let filled = substitute("awk '{print $1}' {in.x} {other}", |_, _| Ok(Some("p".into()))).unwrap();
        assert_eq!(filled, "awk '{print $1}' 'p' {other}");
    }
}
