//! `scripts/setup-torch.sh` on an install that was complete once and is
//! damaged now (its marker says done, a library the worker links is gone or
//! cut short): `make setup`, which a worker that cannot load libtorch asks
//! for, must see the damage and install again, not trust the marker; an
//! intact one is left alone. The venv here is a stand-in with pip's RECORD,
//! the script a copy in a scratch checkout (whose `.cargo/config.toml` it
//! writes), and an install it starts fails at once (`PYTHON=false`).
//! `--verify` (`make verify-torch`) also hashes each library: one damaged
//! at its full size is found only so.

use std::path::Path;
use std::process::Command;

const VERSION_LINE: &str = "TORCH_VERSION=";

fn torch_version() -> String {
    let script = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-torch.sh")).unwrap();
    script.lines().find_map(|l| l.strip_prefix(VERSION_LINE)).expect("the script sets TORCH_VERSION").trim().to_string()
}

/// A venv that `setup-torch.sh` took as complete, with `torch/lib/libc10.so`
/// at `size` bytes (zeros) where RECORD (CRLF lines, as pip writes it)
/// says 1,000 zeros.
fn stand_in_venv(dir: &Path, size: Option<usize>) {
    let version = torch_version();
    let site = dir.join("lib/python3.11/site-packages");
    std::fs::create_dir_all(site.join("torch/lib")).unwrap();
    std::fs::create_dir_all(site.join(format!("torch-{version}.dist-info"))).unwrap();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/true", dir.join("bin/python")).unwrap();
    std::fs::write(dir.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    std::fs::write(dir.join(".cairn-ok"), format!("{version}\n")).unwrap();
    // sha256 of 1,000 zero bytes, as RECORD writes it (urlsafe base64, unpadded).
    let zeros = "VBs-naoJsgv4X6Jz5cvT6AGFqk7CmOdl24d0K3ATilM";
    let record = format!("torch/__init__.py,sha256=x,10\r\ntorch/lib/libc10.so,sha256={zeros},1000\r\n");
    std::fs::write(site.join(format!("torch-{version}.dist-info/RECORD")), record).unwrap();
    if let Some(n) = size {
        std::fs::write(site.join("torch/lib/libc10.so"), vec![0u8; n]).unwrap();
    }
}

/// Runs a copy of the script from a scratch checkout in `root`.
fn setup(root: &Path, venv: &Path) -> (bool, String) {
    setup_with(root, venv, &[])
}

/// [`setup`] with the script's arguments `args`.
fn setup_with(root: &Path, venv: &Path, args: &[&str]) -> (bool, String) {
    let script = root.join("scripts/setup-torch.sh");
    std::fs::create_dir_all(script.parent().unwrap()).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/setup-torch.sh"), &script).unwrap();
    let out = Command::new("bash")
        .arg(&script)
        .args(args)
        .env("CAIRN_TORCH_HOME", venv)
        .env("PYTHON", "false")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_missing_or_cut_short_library_is_installed_again() {
    for size in [None, Some(999)] {
        let tmp = tempfile::tempdir().unwrap();
        let venv = tmp.path().join("torch");
        stand_in_venv(&venv, size);
        let (ok, stderr) = setup(tmp.path(), &venv);
        assert!(!ok, "the stand-in install was meant to fail: {stderr}");
        assert!(stderr.contains("is damaged (torch/lib/libc10.so is missing or cut short); installing it again"), "{size:?}: {stderr}");
        assert!(stderr.contains("installing torch=="), "{stderr}");
    }
}

#[test]
fn an_intact_install_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let venv = tmp.path().join("torch");
    stand_in_venv(&venv, Some(1000));
    let (ok, stderr) = setup(tmp.path(), &venv);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("damaged") && !stderr.contains("installing torch=="), "{stderr}");
    assert!(venv.join(".cairn-ok").exists());
}

/// A library at its full size but with other bytes: a plain `make setup`
/// does not hash (it would read 4.5 GB each time), `--verify` finds it and
/// installs again, and leaves an intact one alone.
#[test]
fn verify_finds_a_library_damaged_at_its_full_size() {
    let tmp = tempfile::tempdir().unwrap();
    let venv = tmp.path().join("torch");
    stand_in_venv(&venv, Some(1000));
    let (ok, stderr) = setup_with(tmp.path(), &venv, &["--verify"]);
    assert!(ok && stderr.contains("every library matches its sha256"), "{stderr}");
    let lib = venv.join("lib/python3.11/site-packages/torch/lib/libc10.so");
    let mut bytes = std::fs::read(&lib).unwrap();
    bytes[500] = 1;
    std::fs::write(&lib, bytes).unwrap();
    let (ok, stderr) = setup(tmp.path(), &venv);
    assert!(ok && !stderr.contains("damaged"), "sizes alone cannot see it: {stderr}");
    let (ok, stderr) = setup_with(tmp.path(), &venv, &["--verify"]);
    assert!(!ok, "the stand-in install was meant to fail: {stderr}");
    assert!(stderr.contains("is damaged (torch/lib/libc10.so does not match its sha256 in pip's RECORD); installing it again"), "{stderr}");
    let (ok, stderr) = setup_with(tmp.path(), &venv, &["--frobnicate"]);
    assert!(!ok && stderr.contains("usage:"), "{stderr}");
}
