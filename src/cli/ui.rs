//! Terminal output: per-stage lines, progress, warnings, and tracing setup.
//!
//! Progress from a running stage overwrites one line on a terminal; when
//! stderr is not a terminal (CI logs), each progress message is printed as
//! its own line so logs show epochs as they happen. `--quiet` and `--json`
//! silence everything but errors.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use crate::cli::Cli;
use cairn::key::DirtyReason;
use cairn::kind::Reporter;
use cairn::runner::{Observer, Outcome, StageReport};

pub fn init_tracing(cli: &Cli) {
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.without_time().try_init();
    }
}

pub struct Console {
    quiet: bool,
    verbose: bool,
    tty: bool,
    /// Whether the last thing printed was an overwritable progress line.
    dangling: Mutex<bool>,
}

impl Console {
    pub fn new(quiet: bool, verbose: bool) -> Self {
        Self { quiet, verbose, tty: std::io::stderr().is_terminal(), dangling: Mutex::new(false) }
    }

    pub fn line(&self, text: &str) {
        if self.quiet {
            return;
        }
        let mut d = self.dangling.lock().unwrap();
        let mut err = std::io::stderr().lock();
        if *d {
            let _ = write!(err, "\r\x1b[2K");
            *d = false;
        }
        let _ = writeln!(err, "{text}");
    }

    pub fn error(&self, text: &str) {
        let mut d = self.dangling.lock().unwrap();
        let mut err = std::io::stderr().lock();
        if *d {
            let _ = write!(err, "\r\x1b[2K");
            *d = false;
        }
        let _ = writeln!(err, "{text}");
    }
}

pub fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Cached => "cached",
        Outcome::Ran => "ran",
        Outcome::WouldRun => "would run",
        Outcome::Failed { .. } => "FAILED",
        Outcome::Skipped { .. } => "skipped",
        Outcome::Interrupted => "interrupted",
    }
}

pub fn reasons_text(reasons: &[DirtyReason]) -> String {
    reasons.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("; ")
}

impl Reporter for Console {
    fn progress(&self, stage: &str, message: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            let mut d = self.dangling.lock().unwrap();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K  {stage:<12} {message}");
            let _ = err.flush();
            *d = true;
        } else {
            self.line(&format!("  {stage:<12} {message}"));
        }
    }

    fn log(&self, stage: &str, line: &str) {
        if self.verbose {
            self.line(&format!("  {stage:<12} | {line}"));
        }
    }
}

impl Observer for Console {
    fn started(&self, stage: &str, reasons: &[DirtyReason]) {
        self.line(&format!("  {stage:<12} running ({})", reasons_text(reasons)));
    }

    fn finished(&self, r: &StageReport) {
        let label = outcome_label(&r.outcome);
        let detail = match &r.outcome {
            Outcome::Ran => format!("{:.1}s", r.duration_s),
            Outcome::Cached => format!("(ran in {:.1}s before)", r.duration_s),
            Outcome::WouldRun => reasons_text(&r.reasons),
            Outcome::Failed { error } => format!("\n{}", indent(error)),
            Outcome::Skipped { because } => because.clone(),
            Outcome::Interrupted => "stopped; nothing from it was cached".into(),
        };
        let text = format!("{:<11} {:<12} {detail}", label, r.stage);
        if matches!(r.outcome, Outcome::Failed { .. }) {
            self.error(&text);
        } else {
            self.line(&text);
        }
    }

    fn warn(&self, message: &str) {
        self.error(&format!("warning: {message}"));
    }
}

pub fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
