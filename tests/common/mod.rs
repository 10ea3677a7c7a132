//! Shared test helpers: seeded random tensors and the f64 finite-difference
//! gradient check.
#![allow(dead_code)]

use nemesis::autograd::{ParamStore, Tape, Var};
use nemesis::rng::RngStream;
use nemesis::{DType, Result, Shape, Tensor};

/// Uniform values in `[-1, 1)` from Philox, as f64.
pub fn rand_values(n: usize, seed: u64) -> Vec<f64> {
    let mut u = vec![0.0f32; n];
    RngStream::new(seed, 0xC0FFEE).fill_uniform(0, &mut u);
    u.iter().map(|&v| 2.0 * v as f64 - 1.0).collect()
}

pub fn rand_tensor(shape: impl Into<Shape>, seed: u64, dtype: DType) -> Tensor {
    let shape = shape.into();
    Tensor::from_f64_slice(&rand_values(shape.numel(), seed), shape, dtype).expect("sizes agree")
}

/// A size in `lo..=hi` drawn from Philox, so "random" shapes are the same on every run.
pub fn rand_size(lo: usize, hi: usize, seed: u64) -> usize {
    lo + (RngStream::new(seed, 0x5A7E).bits(0) as usize) % (hi - lo + 1)
}

pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "compared vectors differ in length");
    assert!(
        a.iter().chain(b).all(|v| v.is_finite()),
        "NaN or Inf in a compared value"
    );
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// Largest number of coordinates probed per input; bigger inputs get a
/// seeded sample of this many.
const MAX_COORDS: usize = 400;
const H: f64 = 1e-5;
pub const GRAD_TOL: f64 = 1e-6;

/// Checks the tape's gradient of `Σ f(inputs) ⊙ R` (R a fixed random
/// tensor) against central differences for every input, in f64. Returns the
/// worst relative error and asserts it is at most `GRAD_TOL`.
pub fn gradcheck(name: &str, inputs: &[Tensor], f: impl Fn(&Tape, &[Var]) -> Result<Var>) -> f64 {
    let tape = Tape::new();
    let vars: Vec<Var> = inputs.iter().map(|t| tape.input(t.clone(), true)).collect();
    let out = f(&tape, &vars).unwrap_or_else(|e| panic!("{name}: forward failed: {e}"));
    let seed = rand_tensor(out.shape(), 0xFEED, DType::F64);
    let r = seed.to_f64_vec().unwrap();
    let mut store = ParamStore::new();
    let grads = tape
        .backward_with(&out, seed, &mut store)
        .unwrap_or_else(|e| panic!("{name}: backward failed: {e}"));

    let objective = |xs: &[Tensor]| -> f64 {
        let t = Tape::inference();
        let vs: Vec<Var> = xs.iter().map(|x| t.input(x.clone(), false)).collect();
        let y = f(&t, &vs).expect("forward");
        y.value().to_f64_vec().unwrap().iter().zip(&r).map(|(a, b)| a * b).sum()
    };

    let mut worst = 0.0f64;
    for (i, (input, var)) in inputs.iter().zip(&vars).enumerate() {
        let analytic = grads
            .get(var)
            .unwrap_or_else(|| panic!("{name}: no gradient for input {i}"))
            .to_f64_vec()
            .unwrap();
        let base = input.to_f64_vec().unwrap();
        let n = base.len();
        let coords: Vec<usize> = if n <= MAX_COORDS {
            (0..n).collect()
        } else {
            let rng = RngStream::new(0xC00D + i as u64, 1);
            (0..MAX_COORDS).map(|k| rng.bits(k as u64) as usize % n).collect()
        };
        let mut num = Vec::with_capacity(coords.len());
        let mut ana = Vec::with_capacity(coords.len());
        for &j in &coords {
            let probe = |delta: f64| {
                let mut v = base.clone();
                v[j] += delta;
                let mut xs = inputs.to_vec();
                xs[i] = Tensor::from_f64_slice(&v, input.shape(), DType::F64).expect("sizes agree");
                objective(&xs)
            };
            num.push((probe(H) - probe(-H)) / (2.0 * H));
            ana.push(analytic[j]);
        }
        let e = rel_err(&ana, &num);
        assert!(
            e <= GRAD_TOL,
            "{name}: input {i} {}: relative gradient error {e:e} > {GRAD_TOL:e}",
            input.shape()
        );
        worst = worst.max(e);
    }
    worst
}

/// The `nemesis` binary cargo built for this test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nemesis")
}

/// A fresh, empty folder `nemesis-PREFIX-PID-NAME` under the temp folder.
pub fn fresh_dir(prefix: &str, name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nemesis-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("the temp folder is writable");
    d
}

/// A command's stdout and stderr, one after the other.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A command that succeeded: its stdout and stderr, one after the other.
#[track_caller]
pub fn succeeded(o: &std::process::Output) -> String {
    let text = output_text(o);
    assert!(o.status.success(), "{text}");
    text
}
