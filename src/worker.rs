//! The protocol between the engine and the `cairn-worker` process.
//!
//! Kinds that need libtorch run in a separate binary so that the `cairn`
//! binary never loads libtorch (most of a second at start-up) and so that a
//! crash inside libtorch kills a worker, not the engine holding the cache
//! lock. The engine writes a [`Job`] as JSON to a file in the stage's
//! scratch directory and runs `cairn-worker run <job.json>`. The worker
//! writes each declared output to the path given in `outputs`, prints
//! [`Event`]s as JSON lines on stdout, writes human-readable logs to stderr,
//! and exits 0 on success. Any other exit fails the stage; nothing it wrote
//! is cached.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::env::Environment;

/// The environment variable that hands the worker its log filter (an
/// `EnvFilter` string: `warn`, `info`, `cairn_stages=debug`…).
pub const LOG_ENV: &str = "CAIRN_LOG";

/// Bumped when [`Job`] or [`Event`] change incompatibly.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub protocol: u32,
    pub kind: String,
    /// The stage's name, for messages only.
    pub stage: String,
    /// Canonical params, as checked by the kind's declaration.
    pub params: Value,
    /// Slot → artifact paths (read-only files in the cache).
    pub inputs: BTreeMap<String, Vec<PathBuf>>,
    /// Output name → path to write.
    pub outputs: BTreeMap<String, PathBuf>,
    /// Private scratch directory, removed after the stage.
    pub scratch: PathBuf,
    pub seed: u64,
    pub env: Environment,
    /// Whether a human is watching a terminal (progress bars on stderr).
    pub interactive: bool,
}

/// One line of the worker's stdout.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A status line, optionally with a bar position.
    Progress(crate::kind::Progress),
    /// A summary metric for the manifest and run history.
    Metric { name: String, value: f64 },
    /// A log line worth keeping.
    Log { line: String },
    /// The reason for a failure, sent just before a non-zero exit.
    Error { message: String },
}

impl Event {
    /// Serialises the event as one line (for the worker side).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).expect("events always serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::Progress;

    #[test]
    fn progress_events_carry_an_optional_bar_position() {
        let plain = Event::Progress(Progress::line("epoch 1/3"));
        assert_eq!(plain.to_line(), r#"{"event":"progress","message":"epoch 1/3"}"#);
        let at = Event::Progress(Progress { message: "step".into(), done: Some(5), total: Some(10), transient: true });
        let back: Event = serde_json::from_str(&at.to_line()).unwrap();
        assert_eq!(back, at);
    }
}
