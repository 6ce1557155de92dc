//! The optional `[executors.NAME]` tables of `pipeline.toml`: where a
//! stage executes (see `crate::executor` for how).
//!
//! ```toml
//! [executors.gpu]
//! kind = "slurm"              # or "local" (the default: this machine)
//! partition = "gpu"           # the rest is the job's shape, all optional
//! gpus = 1                    # --gres=gpu:1
//! cpus = 8                    # --cpus-per-task=8
//! mem = "32G"                 # --mem=32G
//! time = "2:00:00"            # --time=2:00:00
//! account = "ml"
//! qos = "normal"
//! sbatch_args = ["--constraint=h200"]
//! data = "shared"             # or "remote": see [`DataPlane`]
//!
//! [stages.train]
//! executor = "gpu"            # profiles may switch it: `train.executor = "..."`
//! ```
//!
//! Where a stage runs, and how its data reaches the node, do not change
//! what it means, so neither the executor nor its `data` is ever part of a
//! stage key; the stage's `executor` key is taken out of
//! its params before the kind checks them ([`take_choice`]).

use std::collections::BTreeMap;
use std::ops::Range;

use serde_json::Value;
use super::parse::{integer, table, Item};

use super::diag::{closest, Problem};
use super::parse::is_safe_name;

/// One `[executors.NAME]` table.
#[derive(Clone, Debug, PartialEq)]
pub enum ExecutorSpec {
    /// This machine, in process (today's behaviour).
    Local,
    Slurm { shape: SlurmShape, data: DataPlane },
}

/// How a job's inputs and outputs reach the compute node (`data`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataPlane {
    /// The cache directory is on a filesystem the nodes see at the same
    /// path (a single-node cluster, NFS, Lustre).
    #[default]
    Shared,
    /// Nothing is shared but the remote cache: inputs, outputs, the job
    /// description, its result record and log go through it (see
    /// `crate::executor::remote_job`). Needs a `[remote]` (or `--remote`).
    Remote,
}

/// The shape of a Slurm job, as `sbatch` options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlurmShape {
    pub partition: Option<String>,
    pub gpus: Option<u32>,
    pub cpus: Option<u32>,
    pub mem: Option<String>,
    pub time: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub sbatch_args: Vec<String>,
}

impl SlurmShape {
    /// The `sbatch` options of this shape, in a fixed order.
    pub fn sbatch_options(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut opt = |flag: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push(format!("--{flag}={v}"));
            }
        };
        opt("partition", &self.partition);
        opt("gres", &self.gpus.filter(|&n| n > 0).map(|n| format!("gpu:{n}")));
        opt("cpus-per-task", &self.cpus.map(|n| n.to_string()));
        opt("mem", &self.mem);
        opt("time", &self.time);
        opt("account", &self.account);
        opt("qos", &self.qos);
        out.extend(self.sbatch_args.iter().cloned());
        out
    }
}

const SLURM_KEYS: &[&str] = &["kind", "partition", "gpus", "cpus", "mem", "time", "account", "qos", "sbatch_args", "data"];

/// Parses the `[executors]` table; problems come back as (span, message, help).
pub fn parse(item: &Item) -> (BTreeMap<String, ExecutorSpec>, Vec<Problem>) {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    let Some(t) = table(item) else {
        errors.push((Some(item.span()), "`executors` must be a table of tables".to_string(), Some("write `[executors.<name>]`".into())));
        return (out, errors);
    };
    for (name, item) in t.iter() {
        let name = name.get_ref().as_ref();
        if !is_safe_name(name) {
            errors.push((Some(item.span()), format!("invalid executor name {name:?}"), Some(super::parse::NAME_HELP.into())));
            continue;
        }
        if let Some(spec) = parse_one(name, item, &mut errors) {
            out.insert(name.to_string(), spec);
        }
    }
    (out, errors)
}

fn parse_one(name: &str, item: &Item, errors: &mut Vec<Problem>) -> Option<ExecutorSpec> {
    let Some(t) = table(item) else {
        errors.push((Some(item.span()), format!("`executors.{name}` must be a table"), Some(format!("write `[executors.{name}]`"))));
        return None;
    };
    let slurm = match t.get("kind") {
        None => false,
        Some(v) => match v.get_ref().as_str() {
            Some("local") => false,
            Some("slurm") => true,
            _ => {
                errors.push((Some(v.span()), format!("`executors.{name}.kind` must be \"local\" or \"slurm\""), None));
                return None;
            }
        },
    };
    let mut shape = SlurmShape::default();
    let mut data = DataPlane::default();
    for (key_item, value) in t.iter() {
        let key = key_item.get_ref().as_ref();
        if key == "kind" {
            continue;
        }
        let at = format!("executors.{name}.{key}");
        if !slurm {
            errors.push((
                Some(key_item.span()),
                format!("`{at}`: a local executor takes no job shape"),
                Some(format!("add `kind = \"slurm\"` to `[executors.{name}]`, or remove `{key}`")),
            ));
            continue;
        }
        set_slurm_key(&at, (key, key_item.span()), value, &mut shape, &mut data, errors);
    }
    Some(if slurm { ExecutorSpec::Slurm { shape, data } } else { ExecutorSpec::Local })
}

/// Reads one key of a slurm executor's table (`at` is its dotted path,
/// `key` the key and where it is) into its job shape or data plane; a bad
/// value or unknown key is added to `errors`.
fn set_slurm_key(at: &str, key: (&str, Range<usize>), value: &Item, shape: &mut SlurmShape, data: &mut DataPlane, errors: &mut Vec<Problem>) {
    let span = Some(value.span());
    let string = |errors: &mut Vec<Problem>, check: fn(&str) -> bool, form: &str| match value.get_ref().as_str() {
        Some(s) if check(s) => Some(s.to_string()),
        _ => {
            errors.push((span.clone(), format!("`{at}` must be {form}"), None));
            None
        }
    };
    let count = |errors: &mut Vec<Problem>, min: i64| match integer(value) {
        Some(n) if n >= min && n <= u32::MAX as i64 => Some(n as u32),
        _ => {
            errors.push((span.clone(), format!("`{at}` must be a whole number of at least {min}"), None));
            None
        }
    };
    match key.0 {
        "partition" => shape.partition = string(errors, is_word, "a partition name"),
        "account" => shape.account = string(errors, is_word, "an account name"),
        "qos" => shape.qos = string(errors, is_word, "a QOS name"),
        "gpus" => shape.gpus = count(errors, 0),
        "cpus" => shape.cpus = count(errors, 1),
        "mem" => shape.mem = string(errors, is_mem, "a size such as \"4G\" or \"500M\""),
        "time" => shape.time = string(errors, is_time, "a Slurm time such as \"30\" (minutes), \"2:00:00\" or \"1-12:00:00\""),
        "sbatch_args" => shape.sbatch_args = sbatch_args(at, value, errors),
        "data" => match value.get_ref().as_str() {
            Some("shared") => *data = DataPlane::Shared,
            Some("remote") => *data = DataPlane::Remote,
            _ => errors.push((
                span,
                format!("`{at}` must be \"shared\" or \"remote\""),
                Some("\"shared\": the nodes see the cache directory; \"remote\": inputs and outputs move through the remote cache".into()),
            )),
        },
        other => errors.push((
            Some(key.1),
            format!("unknown key `{at}`"),
            Some(match closest(other, SLURM_KEYS.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("a slurm executor takes {}", SLURM_KEYS.join(", ")),
            }),
        )),
    }
}

fn sbatch_args(at: &str, value: &Item, errors: &mut Vec<Problem>) -> Vec<String> {
    let strings = value.get_ref().as_array().and_then(|a| a.iter().map(|v| v.get_ref().as_str().map(str::to_string)).collect::<Option<Vec<_>>>());
    if let Some((arg, why)) = strings.iter().flatten().find_map(|a| reserved_option(a).map(|why| (a, why))) {
        errors.push((Some(value.span()), format!("`{at}`: `{arg}` is cairn's to set: {why}"), Some("remove it from `sbatch_args`".into())));
        return Vec::new();
    }
    match strings {
        Some(args) if args.iter().all(|a| a.starts_with('-')) => args,
        _ => {
            errors.push((
                Some(value.span()),
                format!("`{at}` must be a list of sbatch options"),
                Some("write e.g. `sbatch_args = [\"--constraint=h200\", \"--exclusive\"]`".into()),
            ));
            Vec::new()
        }
    }
}

/// sbatch options cairn gives every job itself (the user's come after
/// them and would override them), or that would not run the job once, in
/// the background: long name, short letter, why.
const RESERVED: [(&str, Option<char>, &str); 5] = [
    ("output", Some('o'), "cairn reads the job's result from the log it names"),
    ("error", Some('e'), "cairn reads the job's result from one log of both streams"),
    ("chdir", Some('D'), "the job runs in the directory cairn made for it"),
    ("wrap", None, "the job's command is cairn's"),
    ("wait", Some('W'), "cairn submits every job and polls them all at once"),
];

/// Why `arg` (`--output=x`, `-o`, or a long option shortened as sbatch
/// allows, `--out=x`) is not the user's to give, if it is not. `--array`
/// is refused too: it would run the stage many times.
fn reserved_option(arg: &str) -> Option<&'static str> {
    const ARRAY: &str = "an array job would run the stage several times";
    if let Some(long) = arg.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        let hits = |full: &str| name == full || (name.len() >= 3 && full.starts_with(name));
        return RESERVED.iter().find(|(full, ..)| hits(full)).map(|r| r.2).or_else(|| hits("array").then_some(ARRAY));
    }
    let letter = arg.strip_prefix('-')?.chars().next()?;
    RESERVED.iter().find(|r| r.1 == Some(letter)).map(|r| r.2).or_else(|| (letter == 'a').then_some(ARRAY))
}

fn is_word(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn is_mem(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.chars().all(|c| c.is_ascii_digit())
}

fn is_time(s: &str) -> bool {
    let (days, rest) = s.split_once('-').unwrap_or(("0", s));
    let parts: Vec<&str> = rest.split(':').collect();
    let number = |p: &&str| !p.is_empty() && p.len() <= 4 && p.chars().all(|c| c.is_ascii_digit());
    number(&days) && parts.len() <= 3 && parts.iter().all(number)
}

/// The executor a stage chose with `executor = "NAME"`, taken out of its
/// params (so it never reaches the kind or the key); `None` is this
/// machine, which is also what an undeclared `"local"` names.
/// `Err` is (message, help).
pub fn take_choice(
    params: &mut serde_json::Map<String, Value>,
    executors: &BTreeMap<String, ExecutorSpec>,
) -> Result<Option<String>, (String, String)> {
    let Some(value) = params.remove("executor") else { return Ok(None) };
    let known = || {
        if executors.is_empty() {
            "declare one in `[executors.<name>]` (e.g. `kind = \"slurm\"`)".to_string()
        } else {
            format!("declared executors: {}", executors.keys().cloned().collect::<Vec<_>>().join(", "))
        }
    };
    match value {
        Value::String(name) if executors.contains_key(&name) => Ok(Some(name)),
        Value::String(name) if name == crate::executor::local::DEFAULT => Ok(None),
        Value::String(name) => Err((
            format!("no executor named `{name}`"),
            match closest(&name, executors.keys().map(String::as_str)) {
                Some(s) => format!("did you mean `{s}`?"),
                None => known(),
            },
        )),
        _ => Err(("`executor` must be the name of an executor".into(), known())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (BTreeMap<String, ExecutorSpec>, Vec<String>) {
        let doc = toml::de::DeTable::parse(text).unwrap();
        let (specs, errors) = parse(doc.get_ref().get("executors").unwrap());
        (specs, errors.into_iter().map(|(_, m, h)| format!("{m} / {}", h.unwrap_or_default())).collect())
    }

    #[test]
    fn a_slurm_table_becomes_sbatch_options() {
        let (specs, errors) = parse_text(
            "[executors.gpu]\nkind = \"slurm\"\npartition = \"gpu\"\ngpus = 2\ncpus = 4\nmem = \"8G\"\ntime = \"1:30:00\"\naccount = \"ml\"\nqos = \"hi\"\nsbatch_args = [\"--exclusive\"]\n[executors.here]\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(specs["here"], ExecutorSpec::Local);
        let ExecutorSpec::Slurm { shape, data } = &specs["gpu"] else { panic!("not slurm: {specs:?}") };
        assert_eq!(*data, DataPlane::Shared, "the default");
        let (specs, errors) = parse_text("[executors.far]\nkind = \"slurm\"\ndata = \"remote\"\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert!(matches!(specs["far"], ExecutorSpec::Slurm { data: DataPlane::Remote, .. }), "{specs:?}");
        assert_eq!(
            shape.sbatch_options(),
            ["--partition=gpu", "--gres=gpu:2", "--cpus-per-task=4", "--mem=8G", "--time=1:30:00", "--account=ml", "--qos=hi", "--exclusive"]
        );
    }

    #[test]
    fn mistakes_are_named_with_a_fix() {
        let (_, errors) = parse_text(
            "[executors.a]\nkind = \"slurm\"\npartiton = \"x\"\nmem = \"lots\"\ntime = \"soon\"\ncpus = 0\nsbatch_args = \"--exclusive\"\ndata = \"s3\"\n[executors.b]\ngpus = 1\n[executors.c]\nkind = \"k8s\"\n",
        );
        let all = errors.join("\n");
        for needle in [
            "unknown key `executors.a.partiton` / did you mean `partition`?",
            "`executors.a.mem` must be a size",
            "`executors.a.time` must be a Slurm time",
            "`executors.a.cpus` must be a whole number of at least 1",
            "`executors.a.sbatch_args` must be a list",
            "`executors.b.gpus`: a local executor takes no job shape / add `kind = \"slurm\"`",
            "`executors.c.kind` must be \"local\" or \"slurm\"",
            "`executors.a.data` must be \"shared\" or \"remote\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(errors.len(), 8, "{all}");
    }

    /// cairn's own options come first, so a user's `--output` would win
    /// and cairn would wait for a log that never fills.
    #[test]
    fn options_cairn_sets_are_refused_in_sbatch_args() {
        for arg in ["--output=/tmp/x", "-o", "-ox.log", "--out=x", "--error=e", "--chdir=/", "-D", "--wrap=hostname", "--wait", "-W", "--array=0-3", "-a"] {
            let (_, errors) = parse_text(&format!("[executors.a]\nkind = \"slurm\"\nsbatch_args = [\"--exclusive\", \"{arg}\"]\n"));
            assert!(errors.len() == 1 && errors[0].contains(&format!("`{arg}` is cairn's to set")), "{arg}: {errors:?}");
        }
        for arg in ["--exclusive", "--export=NONE", "--constraint=h200", "--wckey=x", "-C", "--partition=x", "--open-mode=truncate"] {
            let (_, errors) = parse_text(&format!("[executors.a]\nkind = \"slurm\"\nsbatch_args = [\"{arg}\"]\n"));
            assert!(errors.is_empty(), "{arg}: {errors:?}");
        }
    }

    #[test]
    fn times_and_sizes_in_slurm_forms() {
        for ok in ["30", "0:30", "2:00:00", "1-12", "1-12:00:00"] {
            assert!(is_time(ok), "{ok}");
        }
        for bad in ["", "1h", "1::2", "a-1", "1:2:3:4"] {
            assert!(!is_time(bad), "{bad}");
        }
        for ok in ["500M", "4G", "1024"] {
            assert!(is_mem(ok), "{ok}");
        }
        for bad in ["", "G", "4GB", "4 G"] {
            assert!(!is_mem(bad), "{bad}");
        }
    }

    #[test]
    fn a_stage_choice_is_taken_out_of_its_params() {
        let specs = BTreeMap::from([("gpu".to_string(), ExecutorSpec::Local)]);
        let mut params = serde_json::json!({"cmd": "true", "executor": "gpu"}).as_object().unwrap().clone();
        assert_eq!(take_choice(&mut params, &specs), Ok(Some("gpu".into())));
        assert!(!params.contains_key("executor"));
        let mut params = serde_json::json!({"executor": "gpus"}).as_object().unwrap().clone();
        assert_eq!(take_choice(&mut params, &specs), Err(("no executor named `gpus`".into(), "did you mean `gpu`?".into())));
        let mut params = serde_json::json!({"executor": "local"}).as_object().unwrap().clone();
        assert_eq!(take_choice(&mut params, &BTreeMap::new()), Ok(None), "`local` needs no declaration");
    }
}
