//! A terminal's progress bars: one per running stage that has reported a
//! count or has run for [`BAR_AFTER`] (a long shell command gets one too,
//! a stage of a few milliseconds never flashes one), each ending in the
//! memory-pressure note while memory is short. A keeper thread, started
//! with the first stage, gives silent stages their bars; it stops when the
//! stages' [`Heartbeats`] are dropped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::heartbeat::Heartbeats;

/// How long a silent stage runs before it gets a bar.
pub const BAR_AFTER: Duration = Duration::from_secs(1);
/// What a bar whose stage has reported nothing says.
pub const SILENT: &str = "no progress reported yet";
const SPINNER: &str = "  {prefix} {spinner} {elapsed:>4} {msg}{note}";
const COUNT: &str = "  {prefix} [{bar:28.cyan/blue}] {percent:>3}% {elapsed:>4}<{eta:<4} {msg}{note}";

pub struct Bars {
    multi: MultiProgress,
    running: Mutex<BTreeMap<String, ProgressBar>>,
    /// The note, read at most once a second by whichever bar redraws.
    pressure: Arc<PressureNote>,
    read_pressure: fn() -> Option<String>,
}

impl Bars {
    /// Bars drawn on `target` (hidden: none), their memory note read by
    /// `read_pressure`.
    pub fn new(target: ProgressDrawTarget, read_pressure: fn() -> Option<String>) -> Self {
        Self { multi: MultiProgress::with_draw_target(target), running: Mutex::default(), pressure: Arc::default(), read_pressure }
    }

    pub fn is_hidden(&self) -> bool {
        self.multi.is_hidden()
    }

    /// A permanent line above the bars.
    pub fn println(&self, text: &str) {
        let _ = self.multi.println(text);
    }

    /// `stage`'s bar, made now if it has none; its clock counts from
    /// `started`.
    pub fn bar(&self, stage: &str, started: Instant) -> ProgressBar {
        let mut running = self.running.lock().unwrap();
        self.bar_in(&mut running, stage, started)
    }

    fn bar_in(&self, running: &mut BTreeMap<String, ProgressBar>, stage: &str, started: Instant) -> ProgressBar {
        // Found without a new key string: this runs on every progress
        // report and every keeper tick.
        if let Some(bar) = running.get(stage) {
            return bar.clone();
        }
        let bar = self.multi.add(ProgressBar::new_spinner().with_elapsed(started.elapsed()));
        bar.set_prefix(format!("{stage:<12}"));
        bar.set_style(self.style(SPINNER));
        bar.set_message(SILENT);
        bar.enable_steady_tick(Duration::from_millis(200));
        running.insert(stage.to_string(), bar.clone());
        bar
    }

    /// Turns `bar` into a count of `total`, once.
    pub fn count(&self, bar: &ProgressBar, total: u64) {
        if bar.length() != Some(total) {
            bar.set_length(total);
            bar.set_style(self.style(COUNT).progress_chars("=> "));
        }
    }

    /// A bar's style from `template`, whose `{note}` is the memory note
    /// (read at each redraw: the spinner's tick keeps it current while the
    /// stage is silent).
    fn style(&self, template: &str) -> ProgressStyle {
        let (note, read) = (self.pressure.clone(), self.read_pressure);
        ProgressStyle::with_template(template).expect("valid template").with_key("note", move |_: &ProgressState, w: &mut dyn std::fmt::Write| {
            if let Some(n) = note.get(Instant::now(), read) {
                let _ = w.write_str("; ").and_then(|()| w.write_str(&n));
            }
        })
    }

    /// `stage` ended: its heartbeat and bar go. The bars' lock is taken
    /// first, as the keeper does, so the keeper never makes a bar for a
    /// stage that has just ended.
    pub fn finish(&self, stage: &str, beats: &Heartbeats) {
        let mut running = self.running.lock().unwrap();
        beats.finished(stage);
        if let Some(bar) = running.remove(stage) {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }

    /// Gives each stage that has run for [`BAR_AFTER`] its bar, from a
    /// thread, until `beats` is dropped.
    pub fn keep(self: &Arc<Self>, beats: Weak<Heartbeats>) {
        let bars = self.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(BAR_AFTER / 4);
            let Some(beats) = beats.upgrade() else { return };
            let Some(before) = Instant::now().checked_sub(BAR_AFTER) else { continue };
            let mut running = bars.running.lock().unwrap();
            for (stage, started) in beats.running_since(before) {
                bars.bar_in(&mut running, &stage, started);
            }
        });
    }
}

/// The memory-pressure note for progress bars, which update many times a
/// second: the kernel's figure is read at most once per [`Self::EVERY`].
#[derive(Default)]
pub struct PressureNote(Mutex<Option<(Instant, Option<String>)>>);

impl PressureNote {
    pub const EVERY: Duration = Duration::from_secs(1);

    /// The note as of `now`, from `read` when the last is older than
    /// [`Self::EVERY`].
    pub fn get(&self, now: Instant, read: impl FnOnce() -> Option<String>) -> Option<String> {
        let mut last = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((at, note)) if now.duration_since(*at) < Self::EVERY => note.clone(),
            _ => {
                let note = read();
                *last = Some((now, note.clone()));
                note
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use indicatif::TermLike;

    pub const MS: Duration = Duration::from_millis(1);

    /// A terminal that keeps what is drawn on it.
    #[derive(Clone, Debug, Default)]
    pub struct Screen(Arc<Mutex<String>>);

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            200
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(&format!("{s}\n"))
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What was last drawn of `stage`'s bar after `wait` (frames are
    /// padded to the width, not ended by newlines).
    pub fn drawn(screen: &Screen, stage: &str, wait: Duration) -> String {
        std::thread::sleep(wait);
        let all = screen.0.lock().unwrap();
        all.rfind(stage).map(|i| all[i..].trim_end().to_string()).unwrap_or_default()
    }

    #[test]
    fn a_bars_clock_counts_from_its_stages_start() {
        let screen = Screen::default();
        let bars = Bars::new(ProgressDrawTarget::term_like(Box::new(screen.clone())), || None);
        bars.bar("train", Instant::now() - 10 * 1000 * MS);
        let line = drawn(&screen, "train ", 300 * MS);
        assert!(line.contains(" 10s no progress reported yet"), "{line:?}");
    }


    #[test]
    fn the_bars_pressure_note_is_read_at_most_once_a_second() {
        let note = PressureNote::default();
        let t0 = Instant::now();
        let reads = std::cell::Cell::new(0);
        let read = |v: &str| {
            reads.set(reads.get() + 1);
            Some(v.to_string())
        };
        assert_eq!(note.get(t0, || read("a")).as_deref(), Some("a"));
        assert_eq!(note.get(t0 + Duration::from_millis(900), || read("b")).as_deref(), Some("a"), "within a second: the last note");
        assert_eq!(note.get(t0 + PressureNote::EVERY, || read("c")).as_deref(), Some("c"));
        assert_eq!(reads.get(), 2);
    }
}
