//! Terminal output: per-stage lines, progress, warnings, and tracing setup.
//!
//! On a terminal each running stage gets an indicatif bar ([`super::bars`]):
//! a spinner with its elapsed time once it has run a second, then, once it
//! reports a count, its position, ETA and latest status (e.g. loss and
//! img/s), while per-epoch lines scroll above the bars. When stderr is not
//! a terminal (CI logs) there are no
//! bars: each per-epoch message is printed as its own line, and every
//! running stage gets a heartbeat line ([`super::heartbeat`]), so a log
//! never goes quiet for long while a slow epoch runs. Either way a stage's
//! status says so while the machine is short of memory. `--quiet` and
//! `--json` silence everything but errors.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};

use indicatif::ProgressDrawTarget;

use super::bars::Bars;
use super::heartbeat::{self, Heartbeats};
use crate::cli::Cli;
use cairn::key::DirtyReason;
use cairn::kind::{Progress, Reporter};
use cairn::runner::{Observer, Outcome, StageReport};

pub fn init_tracing(cli: &Cli) {
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if cli.log_format == "json" {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.without_time().try_init();
    }
}

pub struct Console {
    quiet: bool,
    verbose: bool,
    /// The running stages' bars, drawn on stderr when it is a terminal
    /// (hidden otherwise).
    bars: Arc<Bars>,
    /// Every running stage's start and latest progress: heartbeats,
    /// printed by their own thread when there are no bars, and the bars'
    /// keeper. Either thread starts with the first stage that runs, so a
    /// no-op never pays for it.
    beats: Arc<Heartbeats>,
    ticking: Once,
}

/// `CAIRN_HEARTBEAT`'s interval, read (and a bad value warned of) once
/// however many consoles a command makes.
fn heartbeat_interval() -> Duration {
    static EVERY: OnceLock<Duration> = OnceLock::new();
    *EVERY.get_or_init(|| {
        Heartbeats::interval_from_env().unwrap_or_else(|why| {
            eprintln!("warning: {why}");
            heartbeat::HEARTBEAT
        })
    })
}

impl Console {
    pub fn new(quiet: bool, verbose: bool) -> Self {
        let target = if quiet || !std::io::stderr().is_terminal() { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() };
        Self::drawing_to(target, quiet, verbose, cairn::memory::pressure_note)
    }

    /// A console whose bars go to `target`, their memory note read by
    /// `read_pressure`.
    fn drawing_to(target: ProgressDrawTarget, quiet: bool, verbose: bool, read_pressure: fn() -> Option<String>) -> Self {
        let every = heartbeat_interval();
        Self {
            quiet,
            verbose,
            bars: Arc::new(Bars::new(target, read_pressure)),
            beats: Arc::new(Heartbeats::new(every)),
            ticking: Once::new(),
        }
    }

    pub fn line(&self, text: &str) {
        if !self.quiet {
            self.print(text);
        }
    }

    pub fn error(&self, text: &str) {
        self.print(text);
    }

    /// A permanent line above any bars (plainly, when they are hidden).
    fn print(&self, text: &str) {
        if self.bars.is_hidden() {
            let _ = writeln!(std::io::stderr().lock(), "{text}");
        } else {
            self.bars.println(text);
        }
    }

    pub fn finish_bar(&self, stage: &str) {
        self.bars.finish(stage, &self.beats);
    }
}

pub fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Cached => "cached",
        Outcome::Pulled => "pulled",
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
    fn progress(&self, stage: &str, p: &Progress) {
        if self.quiet {
            return;
        }
        if !p.transient {
            self.print(&format!("  {stage:<12} {}", p.message));
        }
        self.beats.update(stage, p, !p.transient, Instant::now());
        if self.bars.is_hidden() {
            return;
        }
        let bar = self.bars.bar(stage, self.beats.start_of(stage).unwrap_or_else(Instant::now));
        if let (Some(done), Some(total)) = (p.done, p.total) {
            self.bars.count(&bar, total);
            bar.set_position(done.min(total));
        }
        bar.set_message(p.message.clone());
    }

    fn log(&self, stage: &str, line: &str) {
        if self.wants_log() {
            self.line(&format!("  {stage:<12} | {line}"));
        }
    }

    fn wants_log(&self) -> bool {
        self.verbose && !self.quiet
    }
}

impl Observer for Console {
    fn started(&self, stage: &str, reasons: &[DirtyReason]) {
        self.beats.started(stage, Instant::now());
        if !self.quiet {
            self.ticking.call_once(|| {
                if self.bars.is_hidden() {
                    self.beats.tick(|l| {
                        let _ = writeln!(std::io::stderr().lock(), "{l}");
                    })
                } else {
                    self.bars.keep(Arc::downgrade(&self.beats))
                }
            });
        }
        self.line(&format!("  {stage:<12} running ({})", reasons_text(reasons)));
    }

    fn finished(&self, r: &StageReport) {
        self.finish_bar(&r.stage);
        let failed = matches!(r.outcome, Outcome::Failed { .. });
        if self.quiet && !failed {
            return;
        }
        let label = outcome_label(&r.outcome);
        let detail = match &r.outcome {
            Outcome::Ran => format!("{:.1}s", r.duration_s),
            Outcome::Cached => format!("(ran in {:.1}s before)", r.duration_s),
            Outcome::Pulled => {
                format!("from the remote ({}; ran in {:.1}s there)", human_bytes(r.outputs.values().map(|o| o.size).sum()), r.duration_s)
            }
            Outcome::WouldRun => reasons_text(&r.reasons),
            Outcome::Failed { error } => format!("\n{}", indent(error)),
            Outcome::Skipped { because } => because.clone(),
            Outcome::Interrupted => "stopped; nothing from it was cached".into(),
        };
        let text = format!("{:<11} {:<12} {detail}", label, r.stage);
        if failed {
            self.error(&text);
        } else {
            self.line(&text);
        }
    }

    fn transfer_done(&self, stage: &str) {
        self.finish_bar(stage);
    }

    fn warn(&self, message: &str) {
        self.error(&format!("warning: {message}"));
    }
}

/// A recorded RFC 3339 UTC time (`2026-12-03T11:52:46.231376935Z`) as a
/// person reads it: `2026-12-03 11:52:46 UTC`. Anything else is shown as
/// it was recorded. `--json` output keeps the full value.
pub fn when(rfc3339: &str) -> String {
    let b = rfc3339.as_bytes();
    let shaped = b.len() >= 20 && b[10] == b'T' && matches!(b[19], b'.' | b'Z') && rfc3339.ends_with('Z');
    match (shaped, rfc3339.get(..10), rfc3339.get(11..19)) {
        (true, Some(day), Some(time)) => format!("{day} {time} UTC"),
        _ => rfc3339.to_string(),
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

#[cfg(test)]
mod tests {
    use super::super::bars::tests::{drawn, Screen, MS};
    use super::super::bars::SILENT;
    use super::*;

    fn short() -> Option<String> {
        Some("short of memory: tasks waited for it 42% of the last 10 s".into())
    }

    fn console(screen: &Screen, read_pressure: fn() -> Option<String>) -> Console {
        Console::drawing_to(ProgressDrawTarget::term_like(Box::new(screen.clone())), false, false, read_pressure)
    }

    /// A stage that reports nothing (a long shell command) gets a bar once
    /// it has run a second, so a terminal shows it is alive and, when
    /// memory is short, that it waits for memory; its first count turns
    /// the spinner into a bar.
    #[test]
    fn a_stage_silent_for_a_second_gets_a_bar_that_carries_the_memory_note() {
        let screen = Screen::default();
        let console = console(&screen, short);
        console.started("hog", &[]);
        let line = drawn(&screen, "hog ", 300 * MS);
        assert!(line.ends_with("running ()"), "no bar yet: {line:?}");
        let line = drawn(&screen, "hog ", 2500 * MS);
        assert!(line.contains("no progress reported yet; short of memory: tasks waited for it 42%"), "{line:?}");
        console.progress("hog", &Progress { message: "step 3/10".into(), done: Some(3), total: Some(10), transient: true });
        let line = drawn(&screen, "hog ", 300 * MS);
        assert!(line.contains("30%") && line.contains("step 3/10; short of memory"), "{line:?}");
    }

    /// A thousand stages of a few milliseconds each must not each flash a
    /// bar (it cost about 1.5 ms a stage on a terminal).
    #[test]
    fn a_stage_that_ends_within_the_second_gets_no_bar() {
        let screen = Screen::default();
        let console = console(&screen, short);
        console.started("quick", &[]);
        std::thread::sleep(100 * MS);
        console.finish_bar("quick");
        let all = drawn(&screen, "quick", 1500 * MS);
        assert!(!all.contains(SILENT) && !all.contains("short of memory"), "{all:?}");
    }

    #[test]
    fn a_bar_says_nothing_of_memory_while_there_is_enough() {
        let screen = Screen::default();
        let console = console(&screen, || None);
        console.started("calm", &[]);
        let line = drawn(&screen, "calm ", 2500 * MS);
        assert!(line.contains("calm") && line.ends_with(SILENT), "{line:?}");
    }

    #[test]
    fn recorded_times_read_to_the_second_in_utc() {
        assert_eq!(when("2026-12-03T11:52:46.231376935Z"), "2026-12-03 11:52:46 UTC");
        assert_eq!(when("2026-12-03T11:52:46Z"), "2026-12-03 11:52:46 UTC");
        assert_eq!(when(""), "");
        assert_eq!(when("2026-12-03T11:52:46+01:00"), "2026-12-03T11:52:46+01:00");
        assert_eq!(when("2026-12-03 11:52Z"), "2026-12-03 11:52Z");
    }
}
