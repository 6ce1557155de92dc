//! `cairn-worker`: runs one libtorch stage job for the cairn engine.
//!
//! `cairn-worker run <job.json>` reads a [`Job`] (see `cairn_kind::protocol`
//! for the protocol), checks its protocol version, checks that the job was
//! keyed for this worker (see [`refusal`]), and runs it with
//! `cairn_stages::run` (which fixes libtorch's thread count and seed from
//! the job, so results depend only on the key's inputs). Success is exit 0. A stage error, a
//! refused job or a panic is reported as one [`Event::Error`] line on stdout
//! and exit 1; a kind this worker does not know or implements at another
//! version is exit 2 (the worker is older or newer than the engine).
//! `cairn-worker --probe` prints the facts the engine keys stages on, as one
//! JSON object ([`Probe`]); `cairn-worker --version` prints the versions a
//! bug report needs. Logs go to stderr through `tracing`, filtered by
//! `CAIRN_LOG` (the engine passes its own level): the job runs in a
//! `stage` span, training epochs in `epoch` spans whose close lines carry
//! their durations.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cairn_kind::protocol::{Event, Job, Probe, PROTOCOL_VERSION};
use cairn_stages::ctx::{emit, WorkerCtx};

/// Exit status for a failed stage or an unreadable job.
const EXIT_FAILED: u8 = 1;
/// Exit status for a kind this worker does not implement, or implements at
/// another version than the job was keyed with.
const EXIT_UNKNOWN_KIND: u8 = 2;

#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("cannot read job file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("job file {path} is not a valid cairn job: {source}")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error(
        "job file {path} speaks worker protocol {found}, this cairn-worker speaks {PROTOCOL_VERSION}; \
         rebuild both with `make setup` so they come from the same checkout"
    )]
    Protocol { path: PathBuf, found: u32 },
}

fn main() -> ExitCode {
    cairn_stages::alloc::keep_freed_memory();
    // cuBLAS reads this when its first handle is made, so it must be set
    // before any CUDA work (see `cairn_stages::determinism`). A value the
    // user set wins.
    if std::env::var_os("CUBLAS_WORKSPACE_CONFIG").is_none() {
        std::env::set_var("CUBLAS_WORKSPACE_CONFIG", cairn_stages::determinism::CUBLAS_WORKSPACE_CONFIG);
    }
    init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["--version"] | ["-V"] => {
            print_version();
            ExitCode::SUCCESS
        }
        ["--probe"] => print_probe(),
        ["run", job] => run(Path::new(job)),
        _ => {
            eprintln!(
                "usage: cairn-worker run <job.json>\n       cairn-worker --probe\n       cairn-worker --version\n\
                 cairn-worker is started by `cairn run`; it is not meant to be run by hand."
            );
            ExitCode::from(EXIT_UNKNOWN_KIND)
        }
    }
}

/// stderr logging at the engine's level (`cairn_kind::protocol::LOG_ENV`),
/// warnings only when run by hand.
fn init_tracing() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let filter = std::env::var(cairn_kind::protocol::LOG_ENV).unwrap_or_else(|_| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        // Uptime, not wall time: the engine's lines carry the clock; and
        // without a timer the close lines would lose their durations.
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .with_span_events(FmtSpan::CLOSE)
        .try_init();
}

fn print_version() {
    let cuda = if tch::Cuda::is_available() {
        format!("available ({} device(s), cuDNN {})", tch::Cuda::device_count(), tch::Cuda::cudnn_is_available())
    } else {
        "not available".to_string()
    };
    println!("cairn-worker {}", env!("CARGO_PKG_VERSION"));
    println!("protocol {PROTOCOL_VERSION}");
    println!("libtorch {}", facts::libtorch_version().unwrap_or_else(|e| e));
    println!("CUDA {cuda}");
}

fn print_probe() -> ExitCode {
    match facts::probe() {
        Ok(probe) => {
            println!("{}", serde_json::to_string(&probe).expect("a probe always serialises"));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cairn-worker --probe: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn load_job(path: &Path) -> Result<Job, JobError> {
    let text = fs::read_to_string(path).map_err(|source| JobError::Read { path: path.into(), source })?;
    // A job from another protocol gets the "rebuild" message, not a
    // confusing missing-field error; the text is parsed twice only then.
    match serde_json::from_str::<Job>(&text) {
        Ok(job) if job.protocol == PROTOCOL_VERSION => Ok(job),
        Ok(job) => Err(JobError::Protocol { path: path.into(), found: job.protocol }),
        Err(source) => {
            // JSON that is not a job of this protocol: which protocol is it?
            let raw: serde_json::Value = serde_json::from_str(&text).map_err(|source| JobError::Parse { path: path.into(), source })?;
            match raw.get("protocol").and_then(|v| v.as_u64()).unwrap_or(0) as u32 {
                PROTOCOL_VERSION => Err(JobError::Parse { path: path.into(), source }),
                found => Err(JobError::Protocol { path: path.into(), found }),
            }
        }
    }
}

/// Why this worker must not run `job`, if it must not: an output is cached
/// under its job's key, so the job must have been keyed with this worker's
/// kind version, and on the libtorch, device and CPU class it would run on.
/// Nothing has run yet, so nothing is cached.
fn refusal(job: &Job) -> Option<(String, u8)> {
    let ours = cairn_kinds::find(&job.kind).map(|k| k.info().version);
    if ours != Some(job.version) {
        let ours = ours.map_or_else(|| "no version".into(), |v| format!("version {v}"));
        return Some((
            format!(
                "stage `{}`: the job was keyed with kind `{}` version {}, but this cairn-worker implements {ours}; \
                 rebuild with `make setup` (cairn-worker and cairn must come from the same checkout)",
                job.stage, job.kind, job.version
            ),
            EXIT_UNKNOWN_KIND,
        ));
    }
    let mismatch = |what: &str, keyed: &str, own: &str| {
        Some((
            format!(
                "stage `{}` was keyed on {what} `{keyed}`, but this cairn-worker runs on `{own}`; \
                 refusing to run it (its output would be cached under a key that does not describe it). \
                 Run cairn where the stage was keyed, or rebuild with `make setup` so that cairn and \
                 cairn-worker come from the same checkout",
                job.stage
            ),
            EXIT_FAILED,
        ))
    };
    if job.env.is_cuda() && !tch::Cuda::is_available() {
        return mismatch("CUDA device", &job.env.device, "cpu (libtorch sees no usable CUDA device)");
    }
    for (name, keyed) in &job.env.keyed {
        let own = match name.as_str() {
            "libtorch" => facts::libtorch_version(),
            // Any worker can run a CPU job; a CUDA job needs this device.
            "device" if keyed != "cpu" => Ok(facts::device()),
            "cpu_capability" => facts::cpu_capability(),
            "native_bf16" => Ok(facts::native_bf16()),
            _ => continue,
        };
        match own {
            Ok(own) if own == *keyed => {}
            Ok(own) => return mismatch(name, keyed, &own),
            Err(e) => return Some((format!("stage `{}`: cannot check `{name}`: {e}", job.stage), EXIT_FAILED)),
        }
    }
    None
}

fn fail(message: String, code: u8) -> ExitCode {
    eprintln!("cairn-worker: {message}");
    emit(&Event::Error { message });
    ExitCode::from(code)
}

fn run(job_path: &Path) -> ExitCode {
    let job = match load_job(job_path) {
        Ok(job) => job,
        Err(e) => return fail(e.to_string(), EXIT_FAILED),
    };
    if cairn_kinds::KindId::from_name(&job.kind).is_none() {
        return fail(
            format!(
                "stage `{}`: this cairn-worker has no kind `{}`; rebuild it with `make setup` \
                 (it must come from the same checkout as `cairn`)",
                job.stage, job.kind
            ),
            EXIT_UNKNOWN_KIND,
        );
    }
    if let Some((message, code)) = refusal(&job) {
        return fail(message, code);
    }

    let _stage = tracing::info_span!("stage", stage = %job.stage, kind = %job.kind).entered();
    let mut ctx = WorkerCtx::new(job);
    // A panic in a stage (or in tch, which panics on libtorch errors in its
    // non-`f_` API) must still reach the engine as a readable Error event.
    // The default hook has already printed the location to stderr.
    match panic::catch_unwind(AssertUnwindSafe(|| cairn_stages::run(&mut ctx))) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => fail(e.to_string(), EXIT_FAILED),
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            fail(format!("internal error in kind `{}` (a bug; please report it): {what}", ctx.job.kind), EXIT_FAILED)
        }
    }
}

/// The facts `--probe` reports, read from libtorch through the C++ shim
/// (`csrc/probe.cpp`).
mod facts {
    use std::ffi::{c_char, c_int, CString};
    use std::path::PathBuf;

    use cairn_kind::protocol::{kind_versions, AVX512_BF16_INTEL, AVX_NE_CONVERT_ONLY};

    use super::{Probe, PROTOCOL_VERSION};

    extern "C" {
        fn cairn_probe_cpu_capability(out: *mut c_char, len: c_int) -> c_int;
        fn cairn_probe_show_config(out: *mut c_char, len: c_int) -> c_int;
        fn cairn_probe_cpu_flag(name: *const c_char) -> c_int;
        fn cairn_probe_cuda_device_name(out: *mut c_char, len: c_int) -> c_int;
    }

    type ShimString = unsafe extern "C" fn(*mut c_char, c_int) -> c_int;

    /// The CPU's native bf16 instruction sets as libtorch's cpuinfo names
    /// them, best first: the first present one is reported.
    const BF16_FLAGS: [&str; 5] = ["amx_bf16", "avx512_bf16", "avx_ne_convert", "sve_bf16", "bf16"];

    /// oneDNN's `ONEDNN_MAX_CPU_ISA` values below its first bf16 ISAs
    /// (`AVX2_VNNI_2`, `AVX512_CORE_BF16`), from its CPU dispatcher docs.
    const ONEDNN_ISAS_WITHOUT_BF16: [&str; 6] = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI"];

    pub fn probe() -> Result<Probe, String> {
        let cuda = tch::Cuda::is_available();
        Ok(Probe {
            protocol: PROTOCOL_VERSION,
            libtorch: libtorch_version()?,
            libtorch_path: libtorch_path(),
            cuda,
            device: device(),
            cpu_capability: cpu_capability()?,
            native_bf16: native_bf16(),
            kinds: kind_versions(cairn_kinds::KindId::ALL.map(cairn_kinds::KindId::info)),
        })
    }

    /// A string from the shim, growing the buffer to its full length.
    fn shim_string(f: ShimString) -> Option<String> {
        let mut buf = vec![0u8; 256];
        loop {
            // SAFETY: the shim writes at most `len` bytes (NUL included).
            let n = usize::try_from(unsafe { f(buf.as_mut_ptr().cast(), buf.len() as c_int) }).ok()?;
            if n < buf.len() {
                buf.truncate(n);
                return String::from_utf8(buf).ok();
            }
            buf = vec![0; n + 1];
        }
    }

    /// The loaded library's version, from its build settings
    /// (`TORCH_VERSION=2.11.0,`): headers could be from another install.
    pub fn libtorch_version() -> Result<String, String> {
        let config = shim_string(cairn_probe_show_config).ok_or("libtorch's show_config failed")?;
        config
            .split([',', '\n'])
            .find_map(|s| s.trim().strip_prefix("TORCH_VERSION="))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| "libtorch's build settings name no TORCH_VERSION".to_string())
    }

    /// ATen's kernel class (`DEFAULT`/`AVX2`/`AVX512`), the CPU's vendor
    /// where it is not Intel, oneDNN's instruction-set cap where one is
    /// set, and MKL's settings where set: oneDNN and MKL pick their
    /// convolution and matrix-product kernels on their own, and capping
    /// them (`ONEDNN_MAX_CPU_ISA=AVX2`, `MKL_ENABLE_INSTRUCTIONS=AVX2`, as
    /// one does to stand in for an older CPU) changes the numbers and makes
    /// training 1.8x slower on an AVX512 CPU (BENCHMARKS). MKL also picks
    /// its kernels by vendor (its own `_zen` matrix products on AMD), so an
    /// AVX2 Intel CPU and an AVX2 AMD one, alike to ATen, are told apart.
    pub fn cpu_capability() -> Result<String, String> {
        let aten = shim_string(cairn_probe_cpu_capability).ok_or_else(|| "libtorch cannot say its CPU capability".to_string())?;
        let mkl: Vec<(&str, String)> = cairn_kind::protocol::MKL_VARS.iter().filter_map(|&var| Some((var, setting(var)?))).collect();
        Ok(capability_fact(&aten, vendor().as_deref(), onednn_cap().as_deref(), &mkl))
    }

    /// The `cpu_capability` fact of ATen's class `aten` on a CPU of
    /// `vendor` (x86 CPUID's string), oneDNN capped at `onednn`, MKL's
    /// settings `mkl`: the rule alone, without libtorch.
    pub(super) fn capability_fact(aten: &str, vendor: Option<&str>, onednn: Option<&str>, mkl: &[(&str, String)]) -> String {
        let mut fact = aten.to_string();
        if let Some(v) = vendor.filter(|v| *v != INTEL) {
            fact += &format!(", on {v}");
        }
        if let Some(isa) = onednn {
            fact += &format!(", oneDNN capped at {isa}");
        }
        for (var, value) in mkl {
            fact += &format!(", {var}={value}");
        }
        fact
    }

    /// A library setting from the environment, trimmed; unset or blank is
    /// none.
    fn setting(var: &str) -> Option<String> {
        std::env::var(var).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
    }

    /// oneDNN's instruction-set cap from the environment, upper-cased.
    fn onednn_cap() -> Option<String> {
        cairn_kind::protocol::ONEDNN_ISA_VARS.iter().find_map(|v| setting(v)).map(|isa| isa.to_ascii_uppercase())
    }

    /// The first of [`BF16_FLAGS`] the CPU has, or `none`; `avx512_bf16` on
    /// an Intel CPU is [`AVX512_BF16_INTEL`] (no faster than fp32 there),
    /// `avx_ne_convert` is [`AVX_NE_CONVERT_ONLY`] (conversions only).
    /// Also `none` when oneDNN is capped below its bf16 kernels, since the
    /// convolutions, most of a step, would then emulate bf16 (and
    /// `precision = "auto"` must pick fp32), and not `amx_bf16` when it is
    /// capped below AMX (every oneDNN ISA with AMX has it in its name), so
    /// a capped Xeon stands in for one without AMX.
    pub fn native_bf16() -> String {
        let has = |flag: &str| {
            let name = CString::new(flag).expect("flag names have no NUL");
            // SAFETY: a NUL-terminated name the shim only reads.
            unsafe { cairn_probe_cpu_flag(name.as_ptr()) == 1 }
        };
        native_bf16_of(onednn_cap().as_deref(), has, intel())
    }

    /// [`native_bf16`] of a CPU with flags `has` and oneDNN capped at `cap`,
    /// Intel's or not: the rule alone, without libtorch.
    pub(super) fn native_bf16_of(cap: Option<&str>, has: impl Fn(&str) -> bool, intel: bool) -> String {
        if cap.is_some_and(|isa| ONEDNN_ISAS_WITHOUT_BF16.contains(&isa)) {
            return "none".into();
        }
        let amx_capped = cap.is_some_and(|isa| isa != "DEFAULT" && !isa.contains("AMX"));
        let usable = |flag: &&&str| !(amx_capped && **flag == "amx_bf16") && has(flag);
        match BF16_FLAGS.iter().find(usable).map_or("none", |f| f) {
            "avx512_bf16" if intel => AVX512_BF16_INTEL.to_string(),
            "avx_ne_convert" => AVX_NE_CONVERT_ONLY.to_string(),
            best => best.to_string(),
        }
    }

    /// CPUID's vendor string of an Intel CPU.
    const INTEL: &str = "GenuineIntel";

    /// Whether the CPU is Intel's.
    fn intel() -> bool {
        vendor().as_deref() == Some(INTEL)
    }

    /// The CPU's vendor string from CPUID (`GenuineIntel`, `AuthenticAMD`,
    /// `HygonGenuine`…); `None` off x86-64.
    fn vendor() -> Option<String> {
        #[cfg(target_arch = "x86_64")]
        {
            // CPUID leaf 0 exists on every x86-64 CPU; its vendor string
            // is in EBX, EDX, ECX.
            let r = std::arch::x86_64::__cpuid(0);
            let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx].iter().flat_map(|w| w.to_le_bytes()).collect();
            Some(String::from_utf8_lossy(&bytes).trim().to_string())
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// `cuda:<name of device 0>` when libtorch can use CUDA, else `cpu`.
    pub fn device() -> String {
        if !tch::Cuda::is_available() {
            return "cpu".into();
        }
        let name = shim_string(cairn_probe_cuda_device_name).unwrap_or_else(|| "unknown".into());
        format!("cuda:{name}")
    }

    /// The libtorch CPU library this process mapped.
    fn libtorch_path() -> Option<PathBuf> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        maps.lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.ends_with("/libtorch_cpu.so"))
            .map(PathBuf::from)
    }
}

#[cfg(test)]
mod tests {
    use super::facts::{capability_fact, native_bf16_of};

    /// The probe's `cpu_capability`: an Intel CPU's is ATen's class, any
    /// other vendor's names it (MKL's kernels differ), then the caps.
    #[test]
    fn cpu_capability_names_a_vendor_other_than_intel_then_the_caps() {
        assert_eq!(capability_fact("AVX2", Some("GenuineIntel"), None, &[]), "AVX2");
        assert_eq!(capability_fact("AVX2", Some("AuthenticAMD"), None, &[]), "AVX2, on AuthenticAMD");
        assert_eq!(capability_fact("SVE256", None, None, &[]), "SVE256");
        let mkl = [("MKL_ENABLE_INSTRUCTIONS", "AVX2".to_string())];
        assert_eq!(capability_fact("AVX512", Some("AuthenticAMD"), Some("AVX2"), &mkl), "AVX512, on AuthenticAMD, oneDNN capped at AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2");
        assert_eq!(capability_fact("AVX512", Some("GenuineIntel"), Some("AVX2"), &[]), "AVX512, oneDNN capped at AVX2");
    }

    /// The probe's `native_bf16` on CPUs CI may never run on: the best flag,
    /// an Intel CPU's AVX512-BF16 told apart (no faster than fp32 there),
    /// and oneDNN's caps.
    #[test]
    fn native_bf16_names_the_best_flag_and_intels_avx512_bf16_apart() {
        let cpu = |flags: &'static [&'static str]| move |f: &str| flags.contains(&f);
        let amx = cpu(&["amx_bf16", "avx512_bf16"]);
        assert_eq!(native_bf16_of(None, amx, true), "amx_bf16");
        assert_eq!(native_bf16_of(Some("AVX512_CORE_AMX"), amx, true), "amx_bf16");
        assert_eq!(native_bf16_of(Some("AVX512_CORE_BF16"), amx, true), "avx512_bf16_intel");
        assert_eq!(native_bf16_of(Some("AVX2"), amx, true), "none");
        let avx512_bf16 = cpu(&["avx512_bf16"]);
        assert_eq!(native_bf16_of(None, avx512_bf16, false), "avx512_bf16", "AMD's (Zen 4, Zen 5)");
        assert_eq!(native_bf16_of(None, avx512_bf16, true), "avx512_bf16_intel");
        assert_eq!(native_bf16_of(None, cpu(&["avx_ne_convert"]), true), "avx_ne_convert_only");
        assert_eq!(native_bf16_of(None, cpu(&["avx512_bf16", "avx_ne_convert"]), false), "avx512_bf16", "the best first");
        assert_eq!(native_bf16_of(None, cpu(&["avx2"]), false), "none");
    }
}
