//! Runtime instruction-set dispatch for the CPU's elementwise loops.
//!
//! The binary is built for baseline x86-64 (SSE2), so one build runs on any
//! x86 machine. The hot loops that are not GEMMs (Philox draws, GELU,
//! dropout) are written as plain lane-by-lane Rust and compiled three times
//! by [`dispatched!`](crate::dispatched): for AVX-512, for AVX2 with FMA, and
//! for the baseline; the first call picks the widest the CPU has. The three
//! copies run the same operations in the same order on each element, so
//! their results are the same bits (the test below checks one loop).
//!
//! `NEMESIS_CPU_ISA=baseline|avx2|avx512` caps the choice (to time the
//! narrower paths on a wider machine); a level the CPU lacks is never taken.

use std::sync::OnceLock;

/// The vector level a dispatched loop runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Baseline,
    Avx2Fma,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Baseline => "x86-64 without AVX2",
            Isa::Avx2Fma => "AVX2+FMA",
            Isa::Avx512 => "AVX-512",
        }
    }
}

/// What this CPU supports, before any cap.
pub fn detected() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl") && has!("avx2") && has!("fma") {
            return Isa::Avx512;
        }
        if has!("avx2") && has!("fma") {
            return Isa::Avx2Fma;
        }
    }
    Isa::Baseline
}

/// The level dispatched loops use: the detected one, capped by
/// `NEMESIS_CPU_ISA` when that is set (read once).
pub fn isa() -> Isa {
    static CHOSEN: OnceLock<Isa> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let cap = match std::env::var("NEMESIS_CPU_ISA").ok().as_deref() {
            Some("baseline") | Some("sse2") => Isa::Baseline,
            Some("avx2") => Isa::Avx2Fma,
            _ => Isa::Avx512,
        };
        detected().min(cap)
    })
}

/// Defines a function whose body is compiled for AVX-512, for AVX2+FMA and
/// for baseline x86-64, and run at [`isa()`]'s level. The body should be
/// straight loops over slices (what the compiler vectorises); rayon and
/// other calls through function pointers lose the wider features, so
/// dispatch per chunk, inside the parallel loop. Small helpers the body
/// uses should be `#[inline(always)]` so they are compiled at its level.
#[macro_export]
macro_rules! dispatched {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? $body
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? $body
                match $crate::simd::isa() {
                    // SAFETY: `isa()` returns a level only when the CPU has
                    // every feature the copy was compiled for.
                    $crate::simd::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::simd::Isa::Avx2Fma => return unsafe { avx2($($arg),*) },
                    $crate::simd::Isa::Baseline => {}
                }
            }
            $body
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::dispatched! {
        /// A loop with a multiply-add: FMA contraction would change its bits,
        /// which Rust never does on its own.
        fn axpy_sum(a: f32, x: &[f32], y: &[f32]) -> f32 {
            let mut s = 0.0f32;
            for (x, y) in x.iter().zip(y) {
                s += a * x + y;
            }
            s
        }
    }

    #[test]
    fn detected_level_is_capped_never_raised() {
        assert!(isa() <= detected());
    }

    #[test]
    fn every_level_gives_the_same_bits() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let y: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.11).cos()).collect();
        let mut plain = 0.0f32;
        for (x, y) in x.iter().zip(&y) {
            plain += 1.7 * x + y;
        }
        assert_eq!(axpy_sum(1.7, &x, &y).to_bits(), plain.to_bits());
    }
}
