//! The torch venv's python, found where `scripts/setup-torch.sh` puts it:
//! `$CAIRN_TORCH_PYTHON`, else `$CAIRN_TORCH_HOME/bin/python`, else
//! `~/.cache/cairn/torch-<TORCH_VERSION>/bin/python` with the version read
//! from that script, so no test names a home directory or a version.
//! Included by `#[path]` from the crates whose tests call into Python.

use std::path::{Path, PathBuf};

pub fn venv_python() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_TORCH_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("CAIRN_TORCH_HOME").map(PathBuf::from).unwrap_or_else(|| {
        let user_home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
        user_home.join(format!(".cache/cairn/torch-{}", torch_version()))
    });
    home.join("bin/python")
}

/// `TORCH_VERSION=` of `scripts/setup-torch.sh`, found above this crate.
fn torch_version() -> String {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest
        .ancestors()
        .map(|dir| dir.join("scripts/setup-torch.sh"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no scripts/setup-torch.sh above {}", manifest.display()));
    let text = std::fs::read_to_string(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("TORCH_VERSION="))
        .unwrap_or_else(|| panic!("{} sets no TORCH_VERSION", script.display()))
        .trim()
        .to_string()
}
