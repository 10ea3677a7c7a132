//! `nemesis check`: every GPU kernel against the CPU reference on fresh
//! random inputs (odd and even sizes), with the tolerances of
//! docs/DESIGN.md ("Numerics"), through any device: the emulator on every
//! machine, the CUDA device on a GPU. Each kernel runs through the op that
//! launches it in training (src/backend/gpu/); the cases sit in one module
//! per kernel family, mirroring src/backend/gpu/, and whole training steps
//! in `step`.

mod attention;
mod input;
mod loss;
mod mma;
mod norm;
mod optim;
mod pointwise;
mod seg;
mod step;
mod tokens;

pub use self::attention::{attention_cases, attention_kernels, AttnCase};
pub use self::step::{step_graphs, training_step};
use crate::device::SharedDevice;
use crate::error::Result;
use crate::rng::RngStream;
use crate::tensor::{Shape, Tensor};

/// fp32 against the CPU reference.
pub const FP32_LIMIT: f64 = 1e-4;
/// bf16 against the CPU reference.
pub const BF16_LIMIT: f64 = 2e-2;

#[derive(Clone, Debug)]
pub struct CheckRow {
    pub kernel: &'static str,
    pub case: String,
    pub rel_err: f64,
    pub limit: f64,
}

impl CheckRow {
    pub fn ok(&self) -> bool {
        self.rel_err.is_finite() && self.rel_err <= self.limit
    }
}

/// `‖a − b‖ / ‖b‖` (`‖a − b‖` when `b` is zero); infinite for NaN anywhere
/// (a poisoned output left unwritten) or different lengths.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() || a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum::<f64>().sqrt();
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// `n` uniform values in `[-scale, scale)`, value `at` on of `rng`.
fn values(n: usize, rng: RngStream, at: u64, scale: f32) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    rng.fill_uniform(at, &mut v);
    v.iter_mut().for_each(|x| *x = (2.0 * *x - 1.0) * scale);
    v
}

/// What the kernel cases share: the device, the random inputs, the rows.
struct Kit<'d> {
    dev: &'d SharedDevice,
    r: RngStream,
    rows: Vec<CheckRow>,
}

impl Kit<'_> {
    /// A row at the fp32 limit.
    fn push(&mut self, kernel: &'static str, case: impl Into<String>, rel_err: f64) {
        self.rows.push(CheckRow {
            kernel,
            case: case.into(),
            rel_err,
            limit: FP32_LIMIT,
        });
    }

    fn values(&self, n: usize, at: u64, scale: f32) -> Vec<f32> {
        values(n, self.r, at, scale)
    }

    /// Host values as a device tensor.
    fn up(&self, v: &[f32], shape: impl Into<Shape>) -> Result<Tensor> {
        Tensor::from_vec(v.to_vec(), shape)?.to_device(self.dev)
    }
}

/// A device tensor's values on the host.
fn host(t: &Tensor) -> Result<Vec<f32>> {
    t.to_cpu()?.to_vec()
}

/// The gradient the tape left for `v` (empty when there is none).
fn grad_of(grads: &crate::autograd::Gradients, v: &crate::autograd::Var) -> Result<Vec<f32>> {
    Ok(grads.get(v).map(|t| t.to_vec::<f32>()).transpose()?.unwrap_or_default())
}

/// Runs every kernel check on `dev` with inputs drawn from `seed`.
pub fn run(dev: &SharedDevice, seed: u64) -> Result<Vec<CheckRow>> {
    let mut kit = Kit {
        dev,
        r: RngStream::new(seed, 0xC4EC),
        rows: Vec::new(),
    };
    pointwise::cases(&mut kit)?;
    norm::cases(&mut kit)?;
    attention::plain_cases(&mut kit)?;
    loss::cases(&mut kit)?;
    tokens::cases(&mut kit)?;
    optim::cases(&mut kit)?;
    input::cases(&mut kit)?;
    mma::cases(&mut kit)?;
    seg::cases(&mut kit)?;
    Ok(kit.rows)
}
