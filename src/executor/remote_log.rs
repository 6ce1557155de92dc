//! `-v` for a job of the remote data plane: its node uploads the tail of
//! its log while it runs ([`super::node_log`]), and while the engine waits
//! for the job a [`LogMirror`] fetches that tail, at most every
//! [`FETCH_EVERY`], and appends the lines it had not seen to a local copy
//! in the stage's job directory, which `super::submitted`'s follower reads
//! as it reads a shared job's log. Only whole lines are copied, each once:
//! a tail that starts with [`DROPPED`] (the log outgrew what is uploaded)
//! is placed after the lines already copied by their longest overlap, and
//! a log that does not continue the last one (a requeued job starts a new
//! one) is copied whole. The remote's text is copied without control
//! characters.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::node_log::DROPPED;
use super::remote_submit::RemoteJob;

/// How often a followed job's log is fetched (its node uploads it every
/// second at first, then every ten).
pub const FETCH_EVERY: Duration = Duration::from_secs(3);

/// A local copy of a remote job's log.
pub struct LogMirror<'a> {
    job: &'a RemoteJob,
    pub path: PathBuf,
    /// The whole lines of the tail fetched last.
    seen: RefCell<Vec<u8>>,
    fetched: Cell<Option<Instant>>,
}

impl<'a> LogMirror<'a> {
    pub fn new(job: &'a RemoteJob, path: PathBuf) -> Self {
        Self { job, path, seen: RefCell::new(Vec::new()), fetched: Cell::new(None) }
    }

    /// Appends what the job's log gained to the copy, if [`FETCH_EVERY`]
    /// passed since the last fetch, or at once with `now` (the job ended).
    pub fn update(&self, now: bool) {
        if !now && self.fetched.get().is_some_and(|t| t.elapsed() < FETCH_EVERY) {
            return;
        }
        self.fetched.set(Some(Instant::now()));
        // Not there yet, or not readable now: the next fetch tries again.
        let Ok(Some(text)) = self.job.log_text() else { return };
        let fresh = news(&mut self.seen.borrow_mut(), text.as_bytes());
        if fresh.is_empty() {
            return;
        }
        let appended = self.path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
            std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?.write_all(&fresh)
        });
        if let Err(e) = appended {
            tracing::debug!(path = %self.path.display(), error = %e, "cannot copy a job's log");
        }
    }
}

/// What the uploaded `tail` of a log adds to `seen` (the whole lines of
/// the tail before), which it then replaces.
fn news(seen: &mut Vec<u8>, tail: &[u8]) -> Vec<u8> {
    let (dropped, body) = match tail.strip_prefix(DROPPED.as_bytes()) {
        Some(rest) => (true, rest),
        None => (false, tail),
    };
    // A partial last line is read again, whole, from a later tail.
    let whole = &body[..body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)];
    let from = match (dropped, whole.starts_with(seen)) {
        (true, _) => overlap(seen, whole),
        (false, true) => seen.len(),
        // Not a continuation: a requeued job started its log again.
        (false, false) => 0,
    };
    // Lines were lost between two fetches: say so where they were.
    let lost = dropped && from == 0 && !whole.is_empty();
    let mut fresh = if lost { DROPPED.as_bytes().to_vec() } else { Vec::new() };
    fresh.extend_from_slice(&whole[from..]);
    *seen = whole.to_vec();
    fresh
}

/// The length of the longest run of whole lines that ends `seen` (whole
/// lines) and begins `next`: the longest prefix of `next` that is a
/// suffix of `seen` (Knuth-Morris-Pratt), shortened until it starts a line.
fn overlap(seen: &[u8], next: &[u8]) -> usize {
    if next.is_empty() {
        return 0;
    }
    let fail = prefix_function(next);
    let mut k = 0;
    for &b in seen {
        while k > 0 && (k == next.len() || next[k] != b) {
            k = fail[k - 1];
        }
        if next[k] == b {
            k += 1;
        }
    }
    while k > 0 && k < seen.len() && seen[seen.len() - k - 1] != b'\n' {
        k = fail[k - 1];
    }
    k
}

/// For each prefix of `s`, the length of its longest proper prefix that
/// is also its suffix.
fn prefix_function(s: &[u8]) -> Vec<usize> {
    let mut p = vec![0; s.len()];
    for i in 1..s.len() {
        let mut k = p[i - 1];
        while k > 0 && s[i] != s[k] {
            k = p[k - 1];
        }
        if s[i] == s[k] {
            k += 1;
        }
        p[i] = k;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds each tail in turn; what each added, as text.
    fn follow(tails: &[&str]) -> Vec<String> {
        let mut seen = Vec::new();
        tails.iter().map(|t| String::from_utf8(news(&mut seen, t.as_bytes())).unwrap()).collect()
    }

    fn dropped(lines: &str) -> String {
        format!("{DROPPED}{lines}")
    }

    #[test]
    fn a_growing_log_gives_each_whole_line_once() {
        let got = follow(&["a\nb", "a\nb\nc\n", "a\nb\nc\n", "a\nb\nc\nd\n"]);
        assert_eq!(got, ["a\n", "b\nc\n", "", "d\n"]);
    }

    #[test]
    fn a_tail_that_dropped_lines_continues_after_the_last_line_seen() {
        let got = follow(&["1\n2\n3\n", &dropped("2\n3\n4\n5"), &dropped("4\n5\n6\n"), &dropped("9\n10\n")]);
        assert_eq!(got, ["1\n2\n3\n", "4\n", "5\n6\n", &dropped("9\n10\n")]);
    }

    #[test]
    fn an_overlap_starts_at_a_line_s_start_and_repeated_lines_are_not_repeated() {
        // "b" ends `seen` only inside the line "xb": not an overlap.
        assert_eq!(follow(&["a\nxb\n", &dropped("b\nc\n")]), ["a\nxb\n", &dropped("b\nc\n")]);
        assert_eq!(follow(&["e\ne\n", &dropped("e\ne\ne\n")]), ["e\ne\n", "e\n"]);
        assert_eq!(overlap(b"a\nb\n", b"a\nb\nc\n"), 4);
        assert_eq!(overlap(b"b\nc\nb\n", b"b\nc\nd\n"), 2);
    }

    #[test]
    fn a_requeued_job_s_new_log_is_followed_whole() {
        let got = follow(&["start 1\nepoch 1\nepoch 2\n", "start 2\nresuming\n", "start 2\nresuming\nepoch 3\n"]);
        assert_eq!(got, ["start 1\nepoch 1\nepoch 2\n", "start 2\nresuming\n", "epoch 3\n"]);
    }

    #[test]
    fn the_copy_gets_the_new_lines_without_control_characters() {
        let t = tempfile::tempdir().unwrap();
        let job = RemoteJob::on_file_remote(t.path(), "run/s-1");
        let mirror = LogMirror::new(&job, t.path().join("stage/job/job.log"));
        mirror.update(true);
        assert!(!mirror.path.exists(), "no log on the remote yet");
        job.put_log(b"[s] epoch 1\x1b[2J\n[s] epo");
        mirror.update(true);
        job.put_log(b"[s] epoch 1\x1b[2J\n[s] epoch 2\n");
        mirror.update(false);
        assert_eq!(std::fs::read_to_string(&mirror.path).unwrap(), "[s] epoch 1[2J\n", "fetched again only after a while");
        mirror.update(true);
        assert_eq!(std::fs::read_to_string(&mirror.path).unwrap(), "[s] epoch 1[2J\n[s] epoch 2\n");
    }
}
