//! What this CPU can do at the instruction set the CPU code runs at (its
//! widest, or the `NEMESIS_CPU_ISA` cap): the set's name, and the
//! measured f32 FMA peak (independent FMA chains on every thread, as many
//! as hide the latency), the ceiling GEMM rates are judged against.

use std::time::Instant;

use rayon::prelude::*;

/// The vector instruction set the CPU code runs at, for naming beside a
/// figure: the level the dispatched loops use (`simd::isa`), and the CPU's
/// own when `NEMESIS_CPU_ISA` caps it lower.
pub fn instruction_set() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let (used, has) = (crate::simd::isa(), crate::simd::detected());
        if used == has {
            used.name().to_string()
        } else {
            format!("{} (NEMESIS_CPU_ISA; the CPU has {})", used.name(), has.name())
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH.to_string()
    }
}

/// Independent accumulators per thread (the asm below writes twelve):
/// enough to cover four cycles of FMA latency on two ports.
const CHAINS: usize = 12;

/// `CHAINS` independent chains of `W`-wide FMAs, `iters` rounds, on the
/// scalar unit: a floor for CPUs without a vector FMA.
fn scalar_chains(iters: u64) -> f32 {
    // A start value the compiler cannot see, so the chains are not folded.
    let seed = std::hint::black_box(0.5f32);
    let mut acc = [seed; CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(0.999_9, 1e-4);
        }
    }
    acc.iter().sum()
}

/// `iters` rounds of twelve independent 512-bit FMAs (registers zeroed
/// first: zeros keep every FMA on its fast path).
#[cfg(target_arch = "x86_64")]
fn fma_avx512(iters: u64) {
    // SAFETY: called only where the CPU has AVX-512F; the asm touches only
    // the registers it declares, no memory and no stack.
    unsafe {
        std::arch::asm!(
            "vxorps zmm0, zmm0, zmm0", "vxorps zmm1, zmm1, zmm1", "vxorps zmm2, zmm2, zmm2",
            "vxorps zmm3, zmm3, zmm3", "vxorps zmm4, zmm4, zmm4", "vxorps zmm5, zmm5, zmm5",
            "vxorps zmm6, zmm6, zmm6", "vxorps zmm7, zmm7, zmm7", "vxorps zmm8, zmm8, zmm8",
            "vxorps zmm9, zmm9, zmm9", "vxorps zmm10, zmm10, zmm10", "vxorps zmm11, zmm11, zmm11",
            "vxorps zmm12, zmm12, zmm12", "vxorps zmm13, zmm13, zmm13",
            "2:",
            "vfmadd231ps zmm0, zmm12, zmm13", "vfmadd231ps zmm1, zmm12, zmm13",
            "vfmadd231ps zmm2, zmm12, zmm13", "vfmadd231ps zmm3, zmm12, zmm13",
            "vfmadd231ps zmm4, zmm12, zmm13", "vfmadd231ps zmm5, zmm12, zmm13",
            "vfmadd231ps zmm6, zmm12, zmm13", "vfmadd231ps zmm7, zmm12, zmm13",
            "vfmadd231ps zmm8, zmm12, zmm13", "vfmadd231ps zmm9, zmm12, zmm13",
            "vfmadd231ps zmm10, zmm12, zmm13", "vfmadd231ps zmm11, zmm12, zmm13",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters.max(1) => _,
            out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
            out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
            out("zmm10") _, out("zmm11") _, out("zmm12") _, out("zmm13") _,
            options(nomem, nostack),
        );
    }
}

/// The same with 256-bit FMAs (AVX2 + FMA).
#[cfg(target_arch = "x86_64")]
fn fma_avx2(iters: u64) {
    // SAFETY: called only where the CPU has AVX2 and FMA; the asm touches
    // only the registers it declares, no memory and no stack.
    unsafe {
        std::arch::asm!(
            "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1", "vxorps ymm2, ymm2, ymm2",
            "vxorps ymm3, ymm3, ymm3", "vxorps ymm4, ymm4, ymm4", "vxorps ymm5, ymm5, ymm5",
            "vxorps ymm6, ymm6, ymm6", "vxorps ymm7, ymm7, ymm7", "vxorps ymm8, ymm8, ymm8",
            "vxorps ymm9, ymm9, ymm9", "vxorps ymm10, ymm10, ymm10", "vxorps ymm11, ymm11, ymm11",
            "vxorps ymm12, ymm12, ymm12", "vxorps ymm13, ymm13, ymm13",
            "2:",
            "vfmadd231ps ymm0, ymm12, ymm13", "vfmadd231ps ymm1, ymm12, ymm13",
            "vfmadd231ps ymm2, ymm12, ymm13", "vfmadd231ps ymm3, ymm12, ymm13",
            "vfmadd231ps ymm4, ymm12, ymm13", "vfmadd231ps ymm5, ymm12, ymm13",
            "vfmadd231ps ymm6, ymm12, ymm13", "vfmadd231ps ymm7, ymm12, ymm13",
            "vfmadd231ps ymm8, ymm12, ymm13", "vfmadd231ps ymm9, ymm12, ymm13",
            "vfmadd231ps ymm10, ymm12, ymm13", "vfmadd231ps ymm11, ymm12, ymm13",
            "dec {n}",
            "jnz 2b",
            n = inout(reg) iters.max(1) => _,
            out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _,
            out("ymm5") _, out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _,
            out("ymm10") _, out("ymm11") _, out("ymm12") _, out("ymm13") _,
            options(nomem, nostack),
        );
    }
}

/// `iters` rounds of the FMA chains on one thread: (FLOPs, a value that
/// keeps scalar work from being optimised away).
fn one_thread(iters: u64) -> (f64, f32) {
    let iters = iters.max(1);
    #[cfg(target_arch = "x86_64")]
    match crate::simd::isa() {
        crate::simd::Isa::Avx512 => {
            fma_avx512(iters);
            return ((iters * CHAINS as u64 * 16 * 2) as f64, 0.0);
        }
        crate::simd::Isa::Avx2Fma => {
            fma_avx2(iters);
            return ((iters * CHAINS as u64 * 8 * 2) as f64, 0.0);
        }
        crate::simd::Isa::Baseline => {}
    }
    // Without a vector FMA: a floor, not a peak.
    ((iters * CHAINS as u64 * 2) as f64, scalar_chains(iters))
}

/// The f32 FMA rate of every thread of the current rayon pool together,
/// FLOP/s: the best of three rounds of about `seconds` / 3 each.
pub fn fma_peak(seconds: f64) -> f64 {
    let threads = rayon::current_num_threads();
    // Calibrate the rounds on one thread.
    let t0 = Instant::now();
    let (f, v) = one_thread(1 << 20);
    std::hint::black_box(v);
    let rate = f / t0.elapsed().as_secs_f64().max(1e-9);
    let per_round = seconds / 3.0;
    let iters = ((rate * per_round) / (CHAINS as f64 * 32.0)).max(1.0) as u64;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        let flops: f64 = (0..threads)
            .into_par_iter()
            .map(|_| {
                let (f, v) = one_thread(iters);
                std::hint::black_box(v);
                f
            })
            .sum();
        best = best.max(flops / t0.elapsed().as_secs_f64());
    }
    best
}
