//! What this CPU can do: its widest vector instruction set, and its
//! measured f32 FMA peak (independent FMA chains on every thread, as many
//! as hide the latency), the ceiling GEMM rates are judged against.

use std::time::Instant;

use rayon::prelude::*;

/// The widest vector instruction set this CPU has, for naming beside a figure.
pub fn instruction_set() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "AVX2+FMA";
        }
        "x86-64 without AVX2"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}

/// Independent accumulators per thread: enough to cover four cycles of FMA
/// latency on two ports.
const CHAINS: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_avx512(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    // Start values the compiler cannot see, so the chains are not folded.
    let seed = std::hint::black_box(0.5f32);
    let (a, b) = (_mm512_set1_ps(0.999_9), _mm512_set1_ps(1e-4));
    let mut acc = [_mm512_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    acc.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_avx2(iters: u64) -> f32 {
    use std::arch::x86_64::*;
    let seed = std::hint::black_box(0.5f32);
    let (a, b) = (_mm256_set1_ps(0.999_9), _mm256_set1_ps(1e-4));
    let mut acc = [_mm256_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    let mut lanes = [0f32; 8];
    let mut s = 0.0;
    for v in acc {
        // SAFETY: `lanes` holds the eight floats the store writes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        s += lanes.iter().sum::<f32>();
    }
    s
}

/// `iters` rounds of the FMA chains on one thread: (FLOPs, a value that
/// keeps the work from being optimised away).
fn one_thread(iters: u64) -> (f64, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            let v = unsafe { fma_avx512(iters) };
            return ((iters * CHAINS as u64 * 16 * 2) as f64, v);
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            let v = unsafe { fma_avx2(iters) };
            return ((iters * CHAINS as u64 * 8 * 2) as f64, v);
        }
    }
    // A scalar fallback: a floor, not a peak.
    let mut acc = [std::hint::black_box(0.5f32); CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = v.mul_add(0.999_9, 1e-4);
        }
    }
    ((iters * CHAINS as u64 * 2) as f64, acc.iter().sum())
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
