//! Which kernels this CPU runs: the AVX-512 ones where it has them, and the whole fused set unless
//! it is switched off (`CHATFORGE_NO_FUSED`, [`set_fused`]).

use candle_core::{DType, Tensor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Whether this CPU runs the AVX-512 kernels (avx512f, and `CHATFORGE_NO_AVX512` unset).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx512() -> bool {
    super::sgemm::available()
}

/// Whether this CPU has AVX2 and FMA (the AVX2 forms of the kernels). Elsewhere than x86_64 these
/// checks do not exist: the x86 kernels are not compiled in at all.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// [`avx2`] and F16C (kernels that read f16 weights or block scales). AVX-512 CPUs have all three.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_f16c() -> bool {
    avx2() && is_x86_feature_detected!("f16c")
}

/// Whether the fused kernels apply: f32 on the CPU, unless they are switched off.
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && fused_switch().load(Ordering::Relaxed)
}

/// On unless `CHATFORGE_NO_FUSED` is set at start or [`set_fused`] turned it off.
fn fused_switch() -> &'static AtomicBool {
    static ON: OnceLock<AtomicBool> = OnceLock::new();
    ON.get_or_init(|| AtomicBool::new(std::env::var_os("CHATFORGE_NO_FUSED").is_none()))
}

/// Switches the fused CPU kernels on or off for the whole process. Off, the CPU runs every op as a
/// GPU does (`ops`' portable formulation and candle's own ops): the tests check that path against
/// transformers without a GPU, and `CHATFORGE_NO_FUSED=1` does the same from the command line.
pub fn set_fused(on: bool) {
    fused_switch().store(on, Ordering::Relaxed);
}
