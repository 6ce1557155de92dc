//! A real S3 server for the remote-cache tests: SeaweedFS (`weed mini`)
//! on free loopback ports, with one access key from a config file and one
//! bucket, killed when dropped. Everything it writes stays in the test's
//! temporary directory: its logs (`-logdir`), its S3 and filer sockets
//! (their flags), and the gRPC sockets it always puts in `/tmp`, which
//! [`Weed::stop`] removes. `weed` is found through `CAIRN_WEED`, the
//! venv `scripts/setup-seaweedfs.sh` installs (running the script when it
//! is missing), or `PATH`. Where it cannot be had, [`Weed::start`] fails
//! the test under CI (`CI=true`) and otherwise prints a skip line and
//! returns `None`.

#![allow(dead_code)]

// Every test crate that includes this file declares `mod skip` and `mod
// common` at its root.
use crate::common::free_port;
use crate::skip;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "cairntestkey";
pub const SECRET_KEY: &str = "cairntestsecret-not-a-real-one";
pub const BUCKET: &str = "cairn";

pub struct Weed {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub s3_port: u16,
    /// The gRPC sockets `weed` makes in `/tmp` for the ports it was given.
    sockets: Vec<PathBuf>,
}

/// `weed`'s path, looked up (and installed) once per test process.
fn find_weed() -> Option<PathBuf> {
    static WEED: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    WEED.get_or_init(locate_weed).clone()
}

fn locate_weed() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CAIRN_WEED") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash").arg(root.join("scripts/setup-seaweedfs.sh")).arg("--print").stderr(Stdio::inherit()).output().ok()?;
    if out.status.success() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("weed")).find(|p| p.is_file()))
}

/// The free space where `weed` keeps its volumes: with too little it
/// cannot assign one and never comes up (its log says only "assign
/// volume: context deadline exceeded").
fn free_space_note() -> String {
    let tmp = std::env::temp_dir();
    let path = std::ffi::CString::new(tmp.as_os_str().as_encoded_bytes()).unwrap_or_default();
    // SAFETY: statvfs writes only into `st`, a zeroed struct of its type.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return format!("free space in {} unknown", tmp.display());
    }
    let gib = st.f_bavail as f64 * st.f_frsize as f64 / (1u64 << 30) as f64;
    format!("{gib:.1} GiB free in {}; weed needs a few GiB for its volumes", tmp.display())
}

impl Weed {
    /// Starts a server, or says why not (see the module doc).
    pub fn start(test: &str) -> Option<Weed> {
        let Some(weed) = find_weed() else {
            skip::missing(test, "SeaweedFS (`weed`) is not installed and scripts/setup-seaweedfs.sh could not install it");
            return None;
        };
        for attempt in 0..3 {
            if let Some(w) = Self::try_start(&weed) {
                return Some(w);
            }
            eprintln!("{test}: weed did not come up (attempt {}), retrying on other ports", attempt + 1);
        }
        panic!("{test}: weed mini did not start; see its log above ({})", free_space_note());
    }

    fn try_start(weed: &Path) -> Option<Weed> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"cairn","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let s3_port = free_port();
        let names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc"];
        let ports: Vec<(&str, u16)> = names.iter().map(|n| (*n, free_port())).collect();
        let sockets = ports.iter().filter_map(|(n, p)| n.strip_suffix(".port.grpc").map(|svc| PathBuf::from(format!("/tmp/seaweedfs-{svc}-grpc-{p}.sock")))).collect();
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let child = Command::new(weed)
            .arg(format!("-logdir={}", dir.path().display()))
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .args(ports.iter().map(|(n, p)| format!("-{n}={p}")))
            .arg(format!("-s3.localSocket={}", dir.path().join("s3.sock").display()))
            .arg(format!("-filer.localSocket={}", dir.path().join("filer.sock").display()))
            .arg(format!("-s3.port={s3_port}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false", "-master.telemetry=false"])
            .arg(format!("-s3.config={}", config.display()))
            .arg(format!("-bucket={BUCKET}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("weed starts");
        let mut w = Weed { child: Some(child), dir, s3_port, sockets };
        // Up when a signed request on the bucket succeeds.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            if let Some(c) = w.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
            }
            if w.block_on(async { object_store::ObjectStoreExt::put(&w.store(), &"probe".into(), "ok".into()).await }).is_ok() {
                return Some(w);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        eprintln!("weed log:\n{}", std::fs::read_to_string(w.dir.path().join("weed.log")).unwrap_or_default());
        None
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// A client with the test credentials, for tampering with the remote.
    pub fn store(&self) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_retry(object_store::RetryConfig { max_retries: 0, ..Default::default() })
            .build()
            .unwrap()
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
    }

    /// The environment `cairn` needs to reach this server.
    pub fn env(&self, cmd: &mut Command) {
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("AWS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .env("AWS_ENDPOINT_URL", self.endpoint())
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_REGION", "us-east-1");
    }

    /// Stops the server now.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            for socket in &self.sockets {
                let _ = std::fs::remove_file(socket);
            }
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
    }
}
