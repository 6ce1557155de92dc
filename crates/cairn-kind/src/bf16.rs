//! What `precision = "auto"` computes with: which `native_bf16` probe
//! facts name native bf16, and on which bf16 outruns fp32. The facts are
//! keyed, this rule is not: a stage keyed on a fact computes with what the
//! rule says for it, so the rule is pinned with the sources of every kind
//! that applies it (`tests/kind_fingerprints.rs`), and a change to it that
//! changes a result needs a version bump of those kinds, like their code.

/// Whether the probe fact `native_bf16` names a native bf16 instruction set
/// (anything but `none`, or an `unknown` when the engine could not probe).
pub fn has_native_bf16(fact: &str) -> bool {
    !(fact.is_empty() || fact == "none" || fact.starts_with("unknown"))
}

/// The `native_bf16` fact of an Intel CPU whose best bf16 instructions are
/// AVX512-BF16 (no AMX). Native, but no faster than fp32, most likely
/// because an Intel server core issues fp32 FMAs on two 512-bit ports and
/// bf16 dot products on one, so the doubled multiply-adds per instruction
/// buy nothing and the conversions cost. Measured on two such Xeons, a training step of the
/// fast net in bf16 ran at 0.74x and 0.86x its fp32 speed, where AMD's Zen
/// 4 and Zen 5 (plain `avx512_bf16`) ran it at 1.67–1.78x (BENCHMARKS.md).
pub const AVX512_BF16_INTEL: &str = "avx512_bf16_intel";

/// The `native_bf16` fact of a CPU whose best bf16 instructions are
/// AVX-NE-CONVERT's (Intel's Arrow Lake and Lunar Lake laptop and desktop
/// CPUs, Sierra Forest): conversions between bf16 and fp32 and no bf16
/// multiply-add, so oneDNN computes bf16 as fp32 FMAs on converted values
/// and bf16 cannot outrun fp32 in the convolutions and matrix products
/// that are most of a step. Not measured: the rule follows from the
/// instruction set, and from [`AVX512_BF16_INTEL`], whose real bf16 dot
/// products already lost to fp32. Named apart from the flag
/// (`avx_ne_convert`, the fact before) so that stages keyed on it, whose
/// `auto` meant bf16, are not served as fp32 results.
pub const AVX_NE_CONVERT_ONLY: &str = "avx_ne_convert_only";

/// Whether bf16 convolutions and matrix products outrun fp32 ones on a CPU
/// whose probe fact `native_bf16` is `fact`: native bf16, except
/// [`AVX512_BF16_INTEL`] and [`AVX_NE_CONVERT_ONLY`].
pub fn bf16_outruns_fp32(fact: &str) -> bool {
    has_native_bf16(fact) && fact != AVX512_BF16_INTEL && fact != AVX_NE_CONVERT_ONLY
}

/// Whether `precision = "auto"` computes in bf16 on CUDA (`cuda`) or on a
/// CPU whose probe fact `native_bf16` is `fact`: always on CUDA, and on a
/// CPU where bf16 outruns fp32.
pub fn auto_uses_bf16(cuda: bool, fact: &str) -> bool {
    cuda || bf16_outruns_fp32(fact)
}
