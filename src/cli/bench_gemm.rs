//! `nemesis bench gemm`: the CPU's limit and our GEMM against it — the
//! detected instruction set, the measured f32 FMA peak of every thread,
//! and the GEMM's rate at a preset's shapes (the attention and FFN
//! projections at the decoder's token count, forward and the backward's
//! transposed products) as a fraction of that peak, beside matrixmultiply
//! (the baseline, timed in turns with it); tools/torch_matmul.py times
//! torch.matmul at the same shapes.

use std::time::Instant;

use clap::Args;

use crate::backend::cpu::gemm::{f32_engine, matmul, matmul_matrixmultiply, MatRef};
use crate::backend::cpu::peak::{fma_peak, instruction_set};
use crate::error::{Error, Result};
use crate::rng::RngStream;

#[derive(Args, Debug)]
pub struct GemmArgs {
    #[command(flatten)]
    pub model: super::model_source::ModelSource,
    /// Superpatches whose tokens make the rows.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed repetitions of each product (the median is shown).
    #[arg(long, default_value_t = 7)]
    pub reps: usize,
}

/// One product `C (m × n) = op(A) · op(B)` of the step.
struct Shape {
    name: String,
    m: usize,
    k: usize,
    n: usize,
    /// A is stored `k × m` (its transpose is used).
    ta: bool,
    /// B is stored `n × k`.
    tb: bool,
}

/// The step's products at `rows` tokens of width `e`, FFN width `f`: each
/// linear `y = x·Wᵀ` forward, and for the QKV and first FFN projections
/// the input gradient `dY·W` and the weight gradient `dYᵀ·X`.
fn shapes(rows: usize, e: usize, f: usize) -> Vec<Shape> {
    let s = |name: &str, m, k, n, ta, tb| Shape {
        name: name.to_string(),
        m,
        k,
        n,
        ta,
        tb,
    };
    vec![
        s("qkv  x·Wᵀ", rows, e, 3 * e, false, true),
        s("qkv  dY·W", rows, 3 * e, e, false, false),
        s("qkv  dYᵀ·X", 3 * e, rows, e, true, false),
        s("out  x·Wᵀ", rows, e, e, false, true),
        s("ffn1 x·Wᵀ", rows, e, f, false, true),
        s("ffn1 dY·W", rows, f, e, false, false),
        s("ffn1 dYᵀ·X", f, rows, e, true, false),
        s("ffn2 x·Wᵀ", rows, f, e, false, true),
    ]
}

pub fn run(a: &GemmArgs) -> Result<()> {
    if a.batch == 0 || a.reps == 0 {
        return Err(Error::invalid("bench gemm", "--batch and --reps must be at least 1"));
    }
    let c = a.model.load()?;
    let rows = a.batch * c.num_tokens();
    let threads = rayon::current_num_threads();
    let peak = measured_peak();
    println!(
        "GEMMs of a step at batch {} ({rows} token rows, E {}, FFN {}), f32, median of {} runs:",
        a.batch, c.embed_dim, c.ffn_dim, a.reps
    );
    let other = if cfg!(feature = "gemm-crate") {
        format!(" {:>14} {:>8}", "gemm crate ms", "of peak")
    } else {
        String::new()
    };
    println!(
        "{:<12} {:>6} {:>6} {:>6} {:>15} {:>8} {:>8} {:>8} {:>18} {:>8}{other}",
        "product", "m", "k", "n", "engine", "ms", "GFLOP/s", "of peak", "matrixmultiply ms", "of peak"
    );
    for s in shapes(rows, c.embed_dim, c.ffn_dim) {
        let av = values(s.m * s.k, 1);
        let bv = values(s.k * s.n, 2);
        let mut cv = vec![0f32; s.m * s.n];
        let mut cm = vec![0f32; s.m * s.n];
        let am = if s.ta {
            MatRef::rm(&av, s.k, s.m).t()
        } else {
            MatRef::rm(&av, s.m, s.k)
        };
        let bm = if s.tb {
            MatRef::rm(&bv, s.n, s.k).t()
        } else {
            MatRef::rm(&bv, s.k, s.n)
        };
        let flops = 2.0 * (s.m * s.k * s.n) as f64;
        // The two engines take turns, so a noisy minute weighs on both.
        let times = median_times(
            a.reps,
            &mut [&mut || matmul(1.0, am, bm, 0.0, &mut cv), &mut || {
                matmul_matrixmultiply(1.0, am, bm, 0.0, &mut cm)
            }],
        );
        std::hint::black_box((&cv, &cm));
        let (ours, mm) = (times[0], times[1]);
        #[cfg(feature = "gemm-crate")]
        let other = {
            let t = median_times(a.reps, &mut [&mut || gemm_crate(&s, &av, &bv, &mut cv, threads)])[0];
            format!(" {:>14.3} {:>7.1}%", 1e3 * t, 100.0 * flops / t / peak)
        };
        #[cfg(not(feature = "gemm-crate"))]
        let other = "";
        println!(
            "{:<12} {:>6} {:>6} {:>6} {:>15} {:>8.3} {:>8.1} {:>7.1}% {:>18.3} {:>7.1}%{other}",
            s.name,
            s.m,
            s.k,
            s.n,
            f32_engine(&am, &bm),
            1e3 * ours,
            flops / ours / 1e9,
            100.0 * flops / ours / peak,
            1e3 * mm,
            100.0 * flops / mm / peak
        );
    }
    println!(
        "PyTorch at the same shapes: python tools/torch_matmul.py --rows {rows} --embed {} --ffn {} --threads {threads}",
        c.embed_dim, c.ffn_dim
    );
    Ok(())
}

/// The f32 FMA peak of the rayon pool's threads (FLOP/s), measured and
/// printed with the instruction set it was measured at.
pub(super) fn measured_peak() -> f64 {
    let threads = rayon::current_num_threads();
    let isa = instruction_set();
    eprintln!("measuring the FMA peak of {threads} threads ({isa})…");
    let peak = fma_peak(1.5);
    println!(
        "CPU: {isa}, {threads} threads; measured f32 FMA peak {:.1} GFLOP/s",
        peak / 1e9
    );
    peak
}

/// The median wall time of `reps` calls of each of `fs`, after one untimed
/// call of each; the calls take turns.
pub(super) fn median_times(reps: usize, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut times = vec![Vec::with_capacity(reps); fs.len()];
    for f in fs.iter_mut() {
        f();
    }
    for _ in 0..reps {
        for (f, t) in fs.iter_mut().zip(&mut times) {
            let t0 = Instant::now();
            f();
            t.push(t0.elapsed().as_secs_f64());
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// The same product through the `gemm` crate (its own rayon threading).
#[cfg(feature = "gemm-crate")]
fn gemm_crate(s: &Shape, a: &[f32], b: &[f32], c: &mut [f32], threads: usize) {
    let (m, k, n) = (s.m, s.k, s.n);
    // (column stride, row stride) of op(A) and op(B) as stored.
    let (a_cs, a_rs) = if s.ta { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if s.tb { (k as isize, 1) } else { (1, n as isize) };
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    // SAFETY: the strides above address exactly the m·k, k·n and m·n
    // elements of the three slices (checked just above), and `c` is
    // borrowed mutably for the call.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(threads),
        )
    }
}

/// `n` uniform values of stream `stream`, the operands of a timed call.
pub(super) fn values(n: usize, stream: u64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    RngStream::new(7, stream).fill_uniform(0, &mut v);
    v
}
