//! Slurm: `sbatch --parsable` to submit, one `squeue` call for all of a
//! run's jobs to poll, `scancel` to cancel. The job's shape comes from its
//! `[executors.NAME]` table ([`SlurmShape::sbatch_options`]); `SLURM_CONF`
//! and the rest of Slurm's environment are passed through untouched.
//!
//! `squeue --states=all` still lists a job for `MinJobAge` seconds after
//! it ended (300 by default), with its final state; later it is `Gone`
//! and the result record alone decides. A transient failure (the
//! controller busy, restarting or unreachable) is retried with backoff;
//! a refusal (an unknown partition, a shape the cluster cannot satisfy)
//! fails the stage at once with Slurm's words.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use super::{Executor, ExecutorError, JobId, JobState, Prepared};
use crate::spec::executors::SlurmShape;
use crate::shell;

/// Attempts for a command that fails transiently, and the first pause.
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

pub struct Slurm {
    shape: SlurmShape,
}

impl Slurm {
    pub fn new(shape: SlurmShape) -> Self {
        Self { shape }
    }

    /// Runs `<worker> --probe` as a job of this executor's shape, waits
    /// for it (`sbatch --wait`) and returns what it printed, from `out`.
    pub fn probe(&self, worker: &Path, out: &Path) -> Result<String, String> {
        self.probe_with(&[worker.to_string_lossy().into_owned(), "--probe".into()], &out.to_string_lossy())?;
        std::fs::read_to_string(out).map_err(|e| format!("the probe job's output {}: {e}", out.display()))
    }

    /// Runs `argv` as a probe job of this executor's shape, its output
    /// to `out` (a path on the node), and waits for it.
    pub fn probe_with(&self, argv: &[String], out: &str) -> Result<(), String> {
        run("sbatch", &self.probe_args(argv, out)).map(drop).map_err(|e| e.to_string())
    }

    fn probe_args(&self, argv: &[String], out: &str) -> Vec<String> {
        let mut args = vec![
            "--parsable".to_string(),
            "--wait".into(),
            "--job-name=cairn-probe".into(),
            format!("--output={out}"),
        ];
        args.extend(self.shape.sbatch_options());
        args.push(wrap(&BTreeMap::from([("CAIRN_LOG".to_string(), "error".to_string())]), argv));
        args
    }
}

/// `--wrap` for `argv` (run under /bin/sh, each word quoted), with `env`
/// set by `env(1)` in the command rather than by `--export`: an
/// `--export` that names variables made slurmctld 22.05 hold each job's
/// launch about a second (BENCHMARKS "Stages on Slurm"), and the user's
/// own `--export=NONE` in `sbatch_args` would drop them.
fn wrap(env: &BTreeMap<String, String>, argv: &[String]) -> String {
    let vars = env.iter().map(|(k, v)| format!("{k}={}", shell::quote(v)));
    let words: Vec<String> = vars.chain(argv.iter().map(|a| shell::quote(a))).collect();
    let env = if env.is_empty() { "" } else { "env " };
    format!("--wrap=exec {env}{}", words.join(" "))
}

/// Whether Slurm's complaint means "try again later".
fn transient(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    ["timed out", "unable to contact", "connection refused", "try again", "temporarily", "resource temporarily", "slurm_persist", "communication"]
        .iter()
        .any(|w| s.contains(w))
}

/// Whether Slurm's client said it has no controller to ask: no
/// configuration found (no `slurm.conf`, no DNS SRV record), or none
/// answering.
fn no_controller(stderr: &str) -> bool {
    let s = stderr.to_ascii_lowercase();
    ["could not establish a configuration source", "unable to contact slurm controller", "fetch_config"].iter().any(|w| s.contains(w))
}

/// Runs `program args`, retrying transient failures with backoff.
fn run(program: &str, args: &[String]) -> Result<Output, ExecutorError> {
    let command = format!("{program} {}", args.join(" "));
    let mut pause = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let out = Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| ExecutorError::Spawn { program: program.to_string(), source })?;
        if out.status.success() {
            return Ok(out);
        }
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let transient = transient(&stderr);
        if no_controller(&stderr) {
            stderr.push_str("\n  help: this machine reaches no Slurm controller (`sinfo` should list the cluster's partitions here; check SLURM_CONF and munge), or run the stage here: `--set STAGE.executor=\"local\"`");
        }
        let err = ExecutorError::Command { command: command.clone(), status: out.status.to_string(), transient, stderr };
        if !err.is_transient() || attempt == ATTEMPTS {
            return Err(err);
        }
        tracing::warn!(%command, attempt, error = %err, "transient Slurm failure; retrying");
        std::thread::sleep(pause);
        pause *= 2;
    }
    unreachable!("the last attempt returns")
}

/// Slurm's job state words → [`JobState`].
fn parse_state(word: &str) -> JobState {
    // squeue may add a reason ("CANCELLED by 0").
    let word = word.split_whitespace().next().unwrap_or_default();
    match word {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "RESV_DEL_HOLD" | "SUSPENDED" | "STOPPED" => JobState::Queued,
        "RUNNING" | "COMPLETING" | "SIGNALING" | "STAGE_OUT" | "RESIZING" => JobState::Running,
        "COMPLETED" => JobState::Completed,
        other => JobState::Ended { state: other.to_string() },
    }
}

/// `squeue --format=%i|%T` lines → states.
fn parse_squeue(stdout: &str) -> BTreeMap<JobId, JobState> {
    stdout
        .lines()
        .filter_map(|l| l.trim().split_once('|'))
        .map(|(id, state)| (id.trim().to_string(), parse_state(state.trim())))
        .collect()
}

impl Slurm {
    /// `sbatch`'s arguments for `job`: name, log, directory, the variables
    /// the job needs, the executor's shape (the user's `sbatch_args` last,
    /// so they win), and the command.
    fn sbatch_args(&self, job: &Prepared) -> Vec<String> {
        let mut args = vec![
            "--parsable".to_string(),
            format!("--job-name={}", job.name),
            format!("--output={}", job.log.display()),
            // A requeued job continues the log the engine is following.
            "--open-mode=append".to_string(),
            format!("--chdir={}", job.dir.display()),
        ];
        args.extend(self.shape.sbatch_options());
        args.push(wrap(&job.env, &job.argv));
        args
    }
}

impl Executor for Slurm {
    fn label(&self) -> &str {
        "Slurm"
    }

    fn submit(&self, job: &Prepared) -> Result<JobId, ExecutorError> {
        let out = run("sbatch", &self.sbatch_args(job))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        // `--parsable` prints `id` or `id;cluster`.
        let id = stdout.split(';').next().unwrap_or_default().to_string();
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(ExecutorError::Output { command: "sbatch --parsable".into(), output: stdout });
        }
        Ok(id)
    }

    fn poll(&self, jobs: &[JobId]) -> Result<BTreeMap<JobId, JobState>, ExecutorError> {
        if jobs.is_empty() {
            return Ok(BTreeMap::new());
        }
        let args = vec!["--noheader".to_string(), "--states=all".into(), "--format=%i|%T".into(), format!("--jobs={}", jobs.join(","))];
        match run("squeue", &args) {
            Ok(out) => Ok(parse_squeue(&String::from_utf8_lossy(&out.stdout))),
            // When every job asked about has been purged, squeue refuses
            // the list instead of printing nothing.
            Err(ExecutorError::Command { stderr, .. }) if stderr.contains("Invalid job id") => Ok(BTreeMap::new()),
            Err(e) => Err(e),
        }
    }

    fn cancel(&self, jobs: &[JobId]) -> Result<(), ExecutorError> {
        if jobs.is_empty() {
            return Ok(());
        }
        run("scancel", jobs).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeue_lines_become_states() {
        let got = parse_squeue("12|RUNNING\n13|PENDING\n14|COMPLETED\n15|TIMEOUT\n16|CANCELLED by 0\nnoise\n");
        assert_eq!(got["12"], JobState::Running);
        assert_eq!(got["13"], JobState::Queued);
        assert_eq!(got["14"], JobState::Completed);
        assert_eq!(got["15"], JobState::Ended { state: "TIMEOUT".into() });
        assert_eq!(got["16"], JobState::Ended { state: "CANCELLED".into() });
        assert_eq!(got.len(), 5);
    }

    /// What `sbatch` printed on a machine with Slurm's client but no
    /// cluster: the stage's failure adds where to look.
    #[test]
    fn a_machine_without_a_controller_is_told_where_to_look() {
        let no_conf = "sbatch: error: resolve_ctls_from_dns_srv: res_nsearch error: Unknown host\nsbatch: error: fetch_config: DNS SRV lookup failed\nsbatch: fatal: Could not establish a configuration source";
        assert!(no_controller(no_conf));
        assert!(no_controller("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)"));
        assert!(!no_controller("sbatch: error: Batch job submission failed: Invalid partition name specified"));
    }

    #[test]
    fn only_a_busy_controller_is_retried() {
        assert!(transient("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"));
        assert!(transient("squeue: error: Unable to contact slurm controller (connect failure)"));
        assert!(!transient("sbatch: error: Batch job submission failed: Invalid partition name specified"));
    }

    /// A stand-in for `sbatch` that fails `fails` times with `complaint`,
    /// then prints a job id; returns it and the file counting its calls.
    fn flaky(dir: &std::path::Path, fails: u32, complaint: &str) -> (String, std::path::PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let (script, calls) = (dir.join("sbatch"), dir.join("calls"));
        let text = format!(
            "#!/bin/sh\necho x >> '{calls}'\nif [ $(wc -l < '{calls}') -le {fails} ]; then echo '{complaint}' >&2; exit 1; fi\necho 42\n",
            calls = calls.display()
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        (script.to_string_lossy().into_owned(), calls)
    }

    #[test]
    fn a_transient_failure_is_retried_and_a_refusal_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (sbatch, calls) = flaky(dir.path(), 2, "sbatch: error: Socket timed out on send/recv operation");
        let out = run(&sbatch, &[]).expect("the third attempt succeeds");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
        assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 3);

        let dir = tempfile::tempdir().unwrap();
        let (sbatch, calls) = flaky(dir.path(), 1, "sbatch: error: Invalid partition name specified");
        let err = run(&sbatch, &[]).unwrap_err();
        assert!(!err.is_transient() && err.to_string().contains("Invalid partition"), "{err}");
        assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 1, "a refusal is not retried");
    }

    #[test]
    fn a_job_becomes_one_sbatch_call_with_its_shape_and_environment() {
        let shape = SlurmShape { gpus: Some(1), sbatch_args: vec!["--export=NONE".into()], ..Default::default() };
        let job = Prepared {
            name: "cairn-run-train".into(),
            dir: "/c/tmp/train-x/job".into(),
            log: "/c/tmp/train-x/job/job.log".into(),
            argv: vec!["/opt/cairn".into(), "exec-job".into(), "/c/tmp/train-x/job".into()],
            env: BTreeMap::from([("CAIRN_THREADS".to_string(), "8".to_string())]),
        };
        assert_eq!(
            Slurm::new(shape).sbatch_args(&job),
            [
                "--parsable",
                "--job-name=cairn-run-train",
                "--output=/c/tmp/train-x/job/job.log",
                "--open-mode=append",
                "--chdir=/c/tmp/train-x/job",
                "--gres=gpu:1",
                "--export=NONE",
                "--wrap=exec env CAIRN_THREADS='8' '/opt/cairn' 'exec-job' '/c/tmp/train-x/job'",
            ]
        );
    }

    #[test]
    fn the_probe_job_has_the_executor_s_shape() {
        let shape = SlurmShape { partition: Some("gpu".into()), gpus: Some(2), ..Default::default() };
        let args = Slurm::new(shape).probe_args(&["/opt/cairn-worker".into(), "--probe".into()], "/c/tmp/probe.out");
        assert_eq!(args[..4], ["--parsable", "--wait", "--job-name=cairn-probe", "--output=/c/tmp/probe.out"]);
        assert!(args.contains(&"--partition=gpu".to_string()) && args.contains(&"--gres=gpu:2".to_string()), "{args:?}");
        assert_eq!(args.last().unwrap(), "--wrap=exec env CAIRN_LOG='error' '/opt/cairn-worker' '--probe'");
    }
}
