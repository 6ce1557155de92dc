//! Which profile a pipeline gets when none is named.
//!
//! Without a CUDA device, a pipeline that declares `[profiles.cpu]` gets
//! it, so the same file runs on a laptop. CPUs differ several-fold in how
//! fast they train in bf16, so a recipe sized for one misses its budget on
//! another: a pipeline may also declare `[profiles.cpu-fp32]`, applied
//! instead where the CPU has no AMX. With AMX the flagship's bf16 recipe
//! trains its net at 800-1,500 img/s on two cores of a Xeon; with oneDNN
//! capped below AMX the same step ran at 226 img/s there (AVX512-BF16 no
//! faster than fp32, as on an Intel Xeon without AMX),
//! while an fp32 recipe runs at the speed of the CPU's FMA units, which
//! every x86 CPU has (BENCHMARKS.md, "An Emerald Rapids with AMX").
//! Whether CUDA is present is a cheap hint read from the driver; whether
//! the CPU has AMX is the worker's probe fact (`native_bf16` is
//! `amx_bf16`), asked only when a `cpu-fp32` profile would be chosen by it.
//! Either choice is a hint, never a key entry: the profile changes params,
//! and the facts that change results are keyed anyway.

use std::fmt;

use super::parse::RawSpec;

/// The profile chosen on a machine without CUDA.
pub const CPU: &str = "cpu";
/// The profile chosen instead of [`CPU`] where the CPU has no AMX.
pub const CPU_FP32: &str = "cpu-fp32";

/// What the automatic choice asks of the machine it runs on.
pub trait Machine {
    /// Whether a CUDA device is present (and not set aside with `--cpu`).
    fn has_cuda(&self) -> bool;
    /// Whether libtorch has AMX for bf16 on this CPU; `None` when that
    /// cannot be learned (no worker to probe).
    fn amx(&self) -> Option<bool>;
}

/// A machine whose answers are given, for tests and tools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Known {
    pub cuda: bool,
    pub amx: Option<bool>,
}

impl Machine for Known {
    fn has_cuda(&self) -> bool {
        self.cuda
    }

    fn amx(&self) -> Option<bool> {
        self.amx
    }
}

/// Which profile to apply.
#[derive(Clone, Copy)]
pub enum ProfileChoice<'a> {
    /// The one this machine calls for (see the module doc), if declared.
    Auto(&'a dyn Machine),
    None,
    Named(&'a str),
}

impl fmt::Debug for ProfileChoice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileChoice::Auto(m) => write!(f, "Auto(cuda: {})", m.has_cuda()),
            ProfileChoice::None => f.write_str("None"),
            ProfileChoice::Named(n) => write!(f, "Named({n:?})"),
        }
    }
}

/// Why a profile was applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chosen {
    /// Named with `--profile` or in the saved overrides.
    Named,
    /// No CUDA device.
    NoCuda,
    /// No CUDA device and no AMX on the CPU.
    NoCudaNoAmx,
}

impl Chosen {
    /// What a run says when it applies profile `name` for this reason;
    /// `None` when the user named it.
    pub fn announce(&self, name: &str) -> Option<String> {
        let why = match self {
            Chosen::Named => return None,
            Chosen::NoCuda => "no CUDA device found",
            Chosen::NoCudaNoAmx => "no CUDA device found and this CPU has no AMX",
        };
        Some(format!("{why}: using profile `{name}` (override with --profile)"))
    }
}

/// The profile `choice` applies to `raw`, and why.
pub(super) fn choose(raw: &RawSpec, choice: ProfileChoice) -> Option<(String, Chosen)> {
    match choice {
        ProfileChoice::None => None,
        ProfileChoice::Named(n) => Some((n.to_string(), Chosen::Named)),
        ProfileChoice::Auto(m) if m.has_cuda() => None,
        ProfileChoice::Auto(m) => {
            let declared = |name: &str| raw.profiles.contains_key(name);
            if declared(CPU_FP32) && m.amx() == Some(false) {
                Some((CPU_FP32.to_string(), Chosen::NoCudaNoAmx))
            } else {
                declared(CPU).then(|| (CPU.to_string(), Chosen::NoCuda))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::path::Path;

    use super::*;
    use crate::kinds::Registry;
    use crate::spec::{load_str, LoadOptions};

    const STAGE: &str = "[stages.s]\nkind = \"command\"\ncmd = \"echo base > {out.o}\"\noutputs = { o = \"o\" }\n";
    const CPU_ONLY: &str = "[profiles.cpu]\n\"s.cmd\" = \"echo cpu > {out.o}\"\n";
    const FP32: &str = "[profiles.cpu-fp32]\n\"s.cmd\" = \"echo fp32 > {out.o}\"\n";

    /// A machine that counts how often its AMX is asked.
    struct Counting {
        known: Known,
        asked: Cell<u32>,
    }

    impl Machine for Counting {
        fn has_cuda(&self) -> bool {
            self.known.cuda
        }

        fn amx(&self) -> Option<bool> {
            self.asked.set(self.asked.get() + 1);
            self.known.amx
        }
    }

    /// The profile chosen for `profiles` on `machine`, and whether AMX was asked.
    fn chosen(profiles: &str, cuda: bool, amx: Option<bool>) -> (Option<(String, Chosen)>, bool) {
        let m = Counting { known: Known { cuda, amx }, asked: Cell::new(0) };
        let opts = LoadOptions { profile: ProfileChoice::Auto(&m), sets: Vec::new() };
        let p = load_str(Path::new("p.toml"), &format!("{STAGE}{profiles}"), &opts, &Registry::builtin()).unwrap();
        (p.profile, m.asked.get() > 0)
    }

    fn named(name: &str, why: Chosen) -> Option<(String, Chosen)> {
        Some((name.to_string(), why))
    }

    #[test]
    fn a_cpu_without_amx_gets_cpu_fp32_where_declared() {
        let both = format!("{CPU_ONLY}{FP32}");
        assert_eq!(chosen(&both, false, Some(false)).0, named(CPU_FP32, Chosen::NoCudaNoAmx));
        assert_eq!(chosen(&both, false, Some(true)).0, named(CPU, Chosen::NoCuda));
        // Unknown AMX (no worker): the plain CPU profile, whose stages then say why they fail.
        assert_eq!(chosen(&both, false, None).0, named(CPU, Chosen::NoCuda));
        assert_eq!(chosen(FP32, false, Some(false)).0, named(CPU_FP32, Chosen::NoCudaNoAmx));
        assert_eq!(chosen(FP32, false, Some(true)).0, None);
    }

    #[test]
    fn amx_is_asked_only_where_the_choice_depends_on_it() {
        assert_eq!(chosen(CPU_ONLY, false, Some(false)), (named(CPU, Chosen::NoCuda), false));
        assert_eq!(chosen("", false, Some(false)), (None, false));
        assert_eq!(chosen(&format!("{CPU_ONLY}{FP32}"), true, Some(false)), (None, false));
    }

    #[test]
    fn a_named_profile_is_not_announced_and_a_chosen_one_says_why() {
        assert_eq!(Chosen::Named.announce(CPU), None);
        let line = Chosen::NoCudaNoAmx.announce(CPU_FP32).unwrap();
        assert!(line.contains("no AMX") && line.contains("`cpu-fp32`") && line.contains("--profile"), "{line}");
    }
}
