//! Which profile a pipeline gets when none is named.
//!
//! Without a CUDA device, a pipeline gets `[profiles.cpu-fp32]` where it
//! declares one, else `[profiles.cpu]`, so the same file runs on a laptop.
//! The flagship declares both: `cpu-fp32` (ImageNet transfer with
//! EfficientNet-Lite0, fp32) and `cpu` (a small net from scratch, bf16
//! where the CPU runs it faster than fp32, nothing to download).
//! `cpu-fp32` is the one chosen on every CPU: fp32 runs at the speed of the
//! FMA units every x86 CPU has, and where bf16 is fastest, on a Xeon with
//! AMX, it still finished first and more accurate in each of five
//! back-to-back pairs (BENCHMARKS.md, "Lite0 on AMX too"). Whether CUDA is
//! present is a cheap hint read from the driver, never a key entry: the
//! profile changes params, and the facts that change results are keyed
//! anyway.

use super::parse::RawSpec;

/// The profile chosen on a machine without CUDA where no [`CPU_FP32`] is
/// declared.
pub const CPU: &str = "cpu";
/// The profile chosen on a machine without CUDA where declared.
pub const CPU_FP32: &str = "cpu-fp32";

/// Which profile to apply.
#[derive(Clone, Copy, Debug)]
pub enum ProfileChoice<'a> {
    /// The one a machine with or without a CUDA device calls for (see the
    /// module doc), if declared.
    Auto { cuda: bool },
    None,
    Named(&'a str),
}

/// Why a profile was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// Named with `--profile` or in the saved overrides.
    Named,
    /// No CUDA device.
    NoCuda,
}

impl Chosen {
    /// What a run says when it applies profile `name` for this reason;
    /// `None` when the user named it.
    pub fn announce(&self, name: &str) -> Option<String> {
        match self {
            Chosen::Named => None,
            Chosen::NoCuda => Some(format!("no CUDA device found: using profile `{name}` (override with --profile)")),
        }
    }
}

/// The profile `choice` applies to `raw`, and why.
pub(super) fn choose(raw: &RawSpec, choice: ProfileChoice) -> Option<(String, Chosen)> {
    match choice {
        ProfileChoice::None => None,
        ProfileChoice::Named(n) => Some((n.to_string(), Chosen::Named)),
        ProfileChoice::Auto { cuda: true } => None,
        ProfileChoice::Auto { cuda: false } => {
            let name = [CPU_FP32, CPU].into_iter().find(|name| raw.profiles.contains_key(*name))?;
            Some((name.to_string(), Chosen::NoCuda))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::kinds::Registry;
    use crate::spec::{load_str, LoadOptions};

    const STAGE: &str = "[stages.s]\nkind = \"command\"\ncmd = \"echo base > {out.o}\"\noutputs = { o = \"o\" }\n";
    const CPU_ONLY: &str = "[profiles.cpu]\n\"s.cmd\" = \"echo cpu > {out.o}\"\n";
    const FP32: &str = "[profiles.cpu-fp32]\n\"s.cmd\" = \"echo fp32 > {out.o}\"\n";

    /// The profile chosen for `profiles` on a machine with or without CUDA.
    fn chosen(profiles: &str, cuda: bool) -> Option<(String, Chosen)> {
        let opts = LoadOptions { profile: ProfileChoice::Auto { cuda }, sets: Vec::new() };
        load_str(Path::new("p.toml"), &format!("{STAGE}{profiles}"), &opts, &Registry::builtin()).unwrap().profile
    }

    fn named(name: &str, why: Chosen) -> Option<(String, Chosen)> {
        Some((name.to_string(), why))
    }

    #[test]
    fn without_cuda_cpu_fp32_is_preferred_where_declared() {
        assert_eq!(chosen(&format!("{CPU_ONLY}{FP32}"), false), named(CPU_FP32, Chosen::NoCuda));
        assert_eq!(chosen(FP32, false), named(CPU_FP32, Chosen::NoCuda));
        assert_eq!(chosen(CPU_ONLY, false), named(CPU, Chosen::NoCuda));
        assert_eq!(chosen("", false), None);
    }

    #[test]
    fn with_cuda_no_profile_is_applied() {
        assert_eq!(chosen(&format!("{CPU_ONLY}{FP32}"), true), None);
        assert_eq!(chosen(CPU_ONLY, true), None);
    }

    #[test]
    fn a_named_profile_is_not_announced_and_a_chosen_one_says_why() {
        assert_eq!(Chosen::Named.announce(CPU), None);
        let line = Chosen::NoCuda.announce(CPU_FP32).unwrap();
        assert!(line.contains("no CUDA") && line.contains("`cpu-fp32`") && line.contains("--profile"), "{line}");
    }
}
