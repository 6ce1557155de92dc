//! The lines after a run that say where its results are: the outputs of
//! the stages that nothing else in the run reads (a pipeline's ends, such
//! as the flagship's `report`), as placed in `artifacts/`. A newcomer's
//! first run ends there, so the end of its log names what to open.

use std::collections::HashSet;
use std::path::Path;

use cairn::runner::{Outcome, RunReport};
use cairn::spec::Pipeline;

/// At most this many stages, and files of each, are named.
const MAX_STAGES: usize = 4;
const MAX_FILES: usize = 8;

/// One line per end stage of `report`, or none where the run failed or
/// changed nothing (a no-op says nothing new).
pub(super) fn lines(pipeline: &Pipeline, report: &RunReport, artifacts: &Path) -> Vec<String> {
    // `./artifacts` (a pipeline file named without a directory) reads as `artifacts`.
    let artifacts = artifacts.strip_prefix(".").unwrap_or(artifacts);
    let changed = report.count(|o| matches!(o, Outcome::Ran | Outcome::Pulled)) > 0;
    if !changed || report.failed() || report.interrupted {
        return Vec::new();
    }
    let done: HashSet<&str> = report
        .stages
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Ran | Outcome::Cached | Outcome::Pulled))
        .map(|r| r.stage.as_str())
        .collect();
    let in_run: Vec<bool> = pipeline.stages.iter().map(|s| done.contains(s.name.as_str())).collect();
    let users = pipeline.graph.users(|i| in_run[i]);
    let ends: Vec<&str> = (0..in_run.len()).filter(|&i| in_run[i] && users[i].is_empty()).map(|i| pipeline.stages[i].name.as_str()).collect();
    let mut out: Vec<String> = ends.iter().take(MAX_STAGES).filter_map(|stage| stage_line(report, artifacts, stage)).collect();
    if ends.len() > MAX_STAGES {
        out.push(format!("results: +{} more stages in {}/", ends.len() - MAX_STAGES, artifacts.display()));
    }
    out
}

fn stage_line(report: &RunReport, artifacts: &Path, stage: &str) -> Option<String> {
    let outputs = &report.stages.iter().find(|r| r.stage == stage)?.outputs;
    if outputs.is_empty() {
        return None;
    }
    let mut files: Vec<String> = outputs.iter().take(MAX_FILES).map(|(name, rec)| format!("{name}.{}", rec.ext)).collect();
    if outputs.len() > MAX_FILES {
        files.push(format!("+{} more", outputs.len() - MAX_FILES));
    }
    Some(format!("results: {}/ ({})", artifacts.join(stage).display(), files.join(", ")))
}
