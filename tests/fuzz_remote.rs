//! Property-based fuzzing of the remote's settings at the boundary with
//! object_store: whatever a bucket, prefix, endpoint or region holds, cairn
//! either refuses the setting with a message or asks the server, and never
//! panics. object_store panics on a URL its HTTP stack cannot parse
//! (`request must be valid`, an `InvalidPort` in its connector), which
//! cairn must catch first; three such panics were found by hand.
//!
//! Each case resolves `--remote s3://BUCKET/PREFIX` with `endpoint` and
//! `region` as `[remote]` would give them, opens it and asks for one
//! manifest (`Remote::verify` of one key), against a loopback server that
//! answers every request `404 Not Found`. Strings are built from pieces
//! that break URLs and headers: spaces, control characters, NUL, brackets,
//! `%`, ports past 65535, non-ASCII. Credentials cannot be varied here
//! (they come from the process's environment, which tests share); their
//! check has its own unit test in `remote::config`.
//!
//! `make test` runs a few hundred cases; `CAIRN_FUZZ_CASES=1000000` (as
//! `make fuzz` sets) runs a long campaign.

use std::io::{Read, Write};
use std::net::TcpListener;

use cairn::digest::StageKey;
use cairn::remote::{Remote, RemoteConfig};
use cairn::spec::remote::RemoteSpec;
use proptest::prelude::*;

#[path = "support/fuzz_driver.rs"]
mod fuzz_driver;
use fuzz_driver::fuzz;

const PIECES: &[&str] = &[
    "a", "b", "z9", "0", "-", ".", "_", "~", " ", "\t", "\n", "\r", "\0", "\x7f", "é", "€", "%", "%zz", "%2e", ":", "/", "//", "@", "[", "]",
    "{", "}", "\\", "^", "|", "\"", "<", ">", "`", "?", "#", "99999", "::1", "localhost", "http://", "https://", "s3://", "..",
];

fn text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(PIECES), 0..max).prop_map(|p| p.concat())
}

/// A server on loopback that answers every request `404 Not Found`.
fn not_found_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 8192];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            });
        }
    });
    port
}

#[test]
fn fuzz_remote_settings_never_panic() {
    let port = not_found_server();
    let base = format!("http://127.0.0.1:{port}");
    let endpoint = prop_oneof![
        1 => Just(None),
        4 => text(4).prop_map({
            let base = base.clone();
            move |s| Some(format!("{base}{s}"))
        }),
        1 => text(6).prop_map(|s| Some(format!("http://{s}"))),
        1 => text(6).prop_map(Some),
    ];
    let region = prop_oneof![3 => Just(None), 1 => text(4).prop_map(Some)];
    // Mostly a bucket S3 accepts, so that the rest reaches the server.
    let bucket = prop_oneof![3 => prop::sample::select(&["cairn", "b-1", "my.bucket"][..]).prop_map(String::from), 1 => text(5)];
    let strategy = (bucket, text(5), endpoint, region);
    let key = StageKey([7; 32]);
    fuzz("remote settings", 200, strategy, |(bucket, prefix, endpoint, region)| {
        let url = format!("s3://{bucket}/{prefix}");
        let spec = RemoteSpec { url: None, endpoint, region, allow_http: Some(true), push: false };
        let Ok(Some(cfg)) = RemoteConfig::resolve(Some(&url), Some(&spec)) else { return Ok(false) };
        let Ok(remote) = Remote::open(&cfg) else { return Ok(false) };
        // Either answer will do: the server's 404, or a setting refused.
        Ok(remote.verify(Some(&[key]), false, &|_| {}).is_ok())
    });
}
