//! Heartbeats for logs: when stderr is not a terminal (CI, `make run > log
//! 2>&1`), every running stage gets a line at least every [`Heartbeats::every`]
//! (30 s; `CAIRN_HEARTBEAT=SECONDS` changes it), whether or not it reports
//! progress. A stage that reports steps gets its position, status and ETA;
//! one that is silent (a kind's set-up phase, a long shell command) gets how
//! long it has run, so a log never looks hung while work goes on. While
//! the machine is short of memory ([`cairn::memory::pressure_note`]) each
//! line says so, since a stage that outgrows its memory slows down rather
//! than fails (a terminal's bars carry the same note: [`super::bars`]). A
//! ticker thread prints them; it stops when the console is dropped. On a
//! terminal the same record of when each stage started tells the bars'
//! keeper which stages have run long enough for a bar.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn::kind::Progress;

/// The default interval between a stage's lines in a log.
pub const HEARTBEAT: Duration = Duration::from_secs(30);

struct Beat {
    started: Instant,
    /// When a line about the stage was last printed.
    last_line: Instant,
    /// Its latest progress, and when that came.
    latest: Option<(Progress, Instant)>,
    /// The total of the current count, and when and at which value that
    /// count began. A stage can count one thing and then another (images
    /// through a frozen prefix, then optimizer steps); each ETA comes from
    /// the rate of its own count. The first began with the stage, at zero;
    /// a later one at its first report.
    total: Option<u64>,
    count_began: (Instant, u64),
}

pub struct Heartbeats {
    every: Duration,
    beats: Mutex<BTreeMap<String, Beat>>,
}

impl Heartbeats {
    pub fn new(every: Duration) -> Self {
        Self { every, beats: Mutex::new(BTreeMap::new()) }
    }

    /// The interval `CAIRN_HEARTBEAT` sets, or why its value is not one.
    pub fn interval_from_env() -> Result<Duration, String> {
        match std::env::var("CAIRN_HEARTBEAT") {
            Err(_) => Ok(HEARTBEAT),
            Ok(v) => match v.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => Ok(Duration::from_secs_f64(s)),
                _ => Err(format!("CAIRN_HEARTBEAT={v} is not a positive number of seconds; heartbeats come every {}s", HEARTBEAT.as_secs())),
            },
        }
    }

    pub fn started(&self, stage: &str, now: Instant) {
        self.beats.lock().unwrap().insert(stage.into(), Beat { started: now, last_line: now, latest: None, total: None, count_began: (now, 0) });
    }

    /// Records `p`; `printed` says a line about the stage just went out.
    pub fn update(&self, stage: &str, p: &Progress, printed: bool, now: Instant) {
        if let Some(b) = self.beats.lock().unwrap().get_mut(stage) {
            b.latest = Some((p.clone(), now));
            if p.total.is_some() && p.total != b.total {
                if b.total.is_some() {
                    b.count_began = (now, p.done.unwrap_or(0));
                }
                b.total = p.total;
            }
            if printed {
                b.last_line = now;
            }
        }
    }

    /// The running stages that started at `before` or earlier, with when.
    pub fn running_since(&self, before: Instant) -> Vec<(String, Instant)> {
        self.beats.lock().unwrap().iter().filter(|(_, b)| b.started <= before).map(|(s, b)| (s.clone(), b.started)).collect()
    }

    /// When `stage` started, if it is running.
    pub fn start_of(&self, stage: &str) -> Option<Instant> {
        self.beats.lock().unwrap().get(stage).map(|b| b.started)
    }

    pub fn finished(&self, stage: &str) {
        self.beats.lock().unwrap().remove(stage);
    }

    /// The lines due at `now`: one for each stage that has had none for
    /// the interval. Marks them printed.
    pub fn due(&self, now: Instant) -> Vec<String> {
        let mut beats = self.beats.lock().unwrap();
        let mut lines = Vec::new();
        for (stage, b) in beats.iter_mut().filter(|(_, b)| now.duration_since(b.last_line) >= self.every) {
            b.last_line = now;
            lines.push(line(stage, b, now, self.every));
        }
        lines
    }

    /// Prints due lines with `print` from a thread until `self` is dropped.
    pub fn tick(self: &Arc<Self>, print: fn(&str)) {
        let weak = Arc::downgrade(self);
        let nap = (self.every / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        std::thread::spawn(move || loop {
            std::thread::sleep(nap);
            let Some(beats) = weak.upgrade() else { return };
            let lines = beats.due(Instant::now());
            let note = if lines.is_empty() { None } else { cairn::memory::pressure_note() };
            for l in lines {
                match &note {
                    Some(note) => print(&format!("{l}; {note}")),
                    None => print(&l),
                }
            }
        });
    }
}

/// A heartbeat: where the stage is, its latest status, and when it should
/// end; for a stage that has reported nothing (or nothing lately), how long
/// it has been quiet.
fn line(stage: &str, b: &Beat, now: Instant, every: Duration) -> String {
    let elapsed = now.duration_since(b.started);
    let Some((p, at)) = &b.latest else {
        return format!("  {stage:<12} running for {}, no progress reported yet", clock(elapsed.as_secs_f64()));
    };
    let quiet = now.duration_since(*at);
    let position = match (p.done, p.total) {
        (Some(done), Some(total)) if total > 0 => {
            let done = done.min(total);
            // The rate since the count began, up to the last report (so a
            // quiet spell does not shrink the ETA).
            let (from, base) = b.count_began;
            let so_far = at.duration_since(from).as_secs_f64();
            let eta = (done > base).then(|| format!("ETA {}, ", clock(so_far * (total - done) as f64 / (done - base) as f64)));
            format!("{done}/{total} ({:.0}%), {}", 100.0 * done as f64 / total as f64, eta.unwrap_or_default())
        }
        _ => String::new(),
    };
    let stale = if quiet >= every { format!(" (nothing new for {})", clock(quiet.as_secs_f64())) } else { String::new() };
    format!("  {stage:<12} {position}{}{stale}", p.message)
}

/// Seconds as `42s`, `3m07s` or `2h03m`.
fn clock(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_stage_that_reports_steps_gets_its_position_and_eta() {
        let (h, t0) = (Heartbeats::new(S(30)), Instant::now());
        h.started("pretrain", t0);
        let p = Progress { message: "loss 1.93 8.1 img/s".into(), done: Some(120), total: Some(1600), transient: true };
        h.update("pretrain", &p, false, t0 + S(600));
        assert_eq!(h.due(t0 + S(600)), ["  pretrain     120/1600 (8%), ETA 2h03m, loss 1.93 8.1 img/s"]);
        assert!(h.due(t0 + S(629)).is_empty(), "at most one line per interval");
    }

    #[test]
    fn a_new_count_gets_an_eta_from_its_own_rate() {
        let (h, t0) = (Heartbeats::new(S(30)), Instant::now());
        h.started("pretrain", t0);
        let at = |done, total| Progress { message: "m".into(), done: Some(done), total: Some(total), transient: true };
        h.update("pretrain", &at(50_000, 100_000), false, t0 + S(60));
        h.update("pretrain", &at(100_000, 100_000), false, t0 + S(120));
        // Two minutes of caching, then steps: 100 in the first 30 s, 200 by 90 s.
        h.update("pretrain", &at(100, 1000), false, t0 + S(150));
        h.update("pretrain", &at(200, 1000), false, t0 + S(210));
        assert_eq!(h.due(t0 + S(210)), ["  pretrain     200/1000 (20%), ETA 8m00s, m"], "100 steps a minute, not 200 in 3.5 minutes");
        h.update("pretrain", &at(1, 50), false, t0 + S(240));
        assert_eq!(h.due(t0 + S(240)), ["  pretrain     1/50 (2%), m"], "no rate yet for a count that has just begun");
    }

    #[test]
    fn a_silent_stage_still_gets_a_line_every_interval() {
        let (h, t0) = (Heartbeats::new(S(30)), Instant::now());
        h.started("pretrain", t0);
        assert!(h.due(t0 + S(29)).is_empty());
        assert_eq!(h.due(t0 + S(31)), ["  pretrain     running for 31s, no progress reported yet"]);
        assert!(h.due(t0 + S(45)).is_empty());
        assert_eq!(h.due(t0 + S(62)), ["  pretrain     running for 1m02s, no progress reported yet"]);
        h.finished("pretrain");
        assert!(h.due(t0 + S(200)).is_empty(), "a finished stage is forgotten");
    }

    #[test]
    fn a_printed_line_resets_the_interval_and_an_old_status_says_so() {
        let (h, t0) = (Heartbeats::new(S(30)), Instant::now());
        h.started("load", t0);
        h.update("load", &Progress::line("decoding"), true, t0 + S(20));
        assert!(h.due(t0 + S(40)).is_empty(), "the printed line counts");
        assert_eq!(h.due(t0 + S(50)), ["  load         decoding (nothing new for 30s)"]);
        h.update("load", &Progress::line("indexing"), false, t0 + S(70));
        assert_eq!(h.due(t0 + S(81)), ["  load         indexing"], "a fresh status is shown as it is");
    }
}
