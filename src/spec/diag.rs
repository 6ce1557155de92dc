//! Diagnostics for bad pipelines: where (file:line:col, or the command-line
//! flag), what is wrong, and what would fix it.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hasher;
use std::ops::Range;
use std::path::PathBuf;

/// One problem a table of the pipeline has (`[remote]`, `[executors]`):
/// where in the text, what, and a hint.
pub type Problem = (Option<Range<usize>>, String, Option<String>);

/// Where a piece of configuration came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    File { path: PathBuf, line: usize, col: usize },
    /// A `--set` flag, as the user typed it.
    Flag(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, col } => write!(f, "{}:{line}:{col}", path.display()),
            Origin::Flag(flag) => write!(f, "--set {flag}"),
        }
    }
}

/// One problem with a pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub origin: Origin,
    pub message: String,
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: error: {}", self.origin, self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Where in the file each value is, by its path from the document root
/// (e.g. `["stages", "train", "lr"]`). A path is held as a hash of its
/// segments, extended one segment at a time as the parser descends: the
/// parser records a span for every value of a pipeline with thousands of
/// stages, and owned paths as map keys cost more than the parse. A
/// collision could only misplace an error message's location.
#[derive(Clone, Debug, Default)]
pub struct Spans(HashMap<u64, Range<usize>>);

/// A path, hashed (see [`Spans`]).
pub type PathHash = u64;

impl Spans {
    /// The document root's path.
    pub const ROOT: PathHash = 0;

    /// The path of `segment` under `parent`.
    pub fn child(parent: PathHash, segment: &str) -> PathHash {
        let mut h = std::hash::DefaultHasher::new();
        h.write_u64(parent);
        h.write(segment.as_bytes());
        h.finish()
    }

    pub fn insert(&mut self, at: PathHash, span: Range<usize>) {
        self.0.insert(at, span);
    }

    /// The span of `path`, or of its nearest parent that has one.
    pub fn nearest(&self, path: &[String]) -> Option<Range<usize>> {
        let prefixes: Vec<PathHash> = std::iter::once(Self::ROOT).chain(path.iter().scan(Self::ROOT, |h, s| {
            *h = Self::child(*h, s);
            Some(*h)
        })).collect();
        prefixes.iter().rev().find_map(|h| self.0.get(h).cloned())
    }
}

/// Maps byte offsets in a source file to 1-based line and column.
#[derive(Clone, Debug)]
pub struct SourceMap {
    pub path: PathBuf,
    line_starts: Vec<usize>,
    text: String,
}

impl SourceMap {
    pub fn new(path: PathBuf, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { path, line_starts, text: text.to_string() }
    }

    pub fn origin(&self, span: Option<Range<usize>>) -> Origin {
        let offset = span.map(|s| s.start).unwrap_or(0).min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        // Columns count characters, not bytes, so they match editors.
        let col = self.text[start..offset].chars().count() + 1;
        Origin::File { path: self.path.clone(), line, col }
    }
}

/// Suggests the closest known name, for "did you mean" hints.
pub fn closest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (edit_distance(name, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = if ca == *cb { 0 } else { 1 };
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let sm = SourceMap::new("p.toml".into(), "a = 1\nbé = 2\n");
        assert_eq!(sm.origin(Some(0..1)).to_string(), "p.toml:1:1");
        // 'é' is two bytes but one column.
        assert_eq!(sm.origin(Some(10..11)).to_string(), "p.toml:2:4");
    }

    #[test]
    fn a_path_without_a_span_takes_its_nearest_parents() {
        let path = |segments: &[&str]| segments.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let at = |segments: &[&str]| segments.iter().fold(Spans::ROOT, |h, s| Spans::child(h, s));
        let mut spans = Spans::default();
        spans.insert(at(&["stages", "a"]), 0..5);
        spans.insert(at(&["stages", "a", "lr"]), 6..8);
        spans.insert(at(&["stages", "ab"]), 9..10);
        assert_eq!(spans.nearest(&path(&["stages", "a", "lr"])), Some(6..8));
        assert_eq!(spans.nearest(&path(&["stages", "a", "lr", "x"])), Some(6..8));
        assert_eq!(spans.nearest(&path(&["stages", "a", "epochs"])), Some(0..5));
        assert_eq!(spans.nearest(&path(&["stages", "c"])), None, "no span recorded");
        assert_eq!(spans.nearest(&path(&["stages", "a", "b"])), Some(0..5), "segments are not concatenated");
        assert_eq!(spans.nearest(&path(&["stages"])), None);
    }

    #[test]
    fn suggestions() {
        assert_eq!(closest("lrr", ["lr", "epochs"]), Some("lr"));
        assert_eq!(closest("zzzzzz", ["lr", "epochs"]), None);
    }
}
