//! The segmentation decoder's normalisation and activation (SPEC §14):
//! `batch_norm3d` as PyTorch's BatchNorm3d (statistics of
//! the batch in training, running statistics in evaluation; eps and the
//! momentum of the running update are the caller's, PyTorch's 1e-5 and
//! 0.1 by default) and `relu`.

use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::batch_norm::{self as bn, Affine, Planes};
use crate::backend::cpu::elementwise;
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::{with_dtype, Tensor};

/// Which statistics normalise the batch.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchStats {
    /// The batch's own, per channel (biased variance), as in training.
    Batch,
    /// Given running mean and variance, per channel, as in evaluation.
    Running { mean: Vec<f64>, var: Vec<f64> },
}

/// What a training-mode `batch_norm3d` saw: the batch's mean and unbiased
/// variance per channel, for the caller's running update
/// (`running = (1 − momentum)·running + momentum·batch`).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchMoments {
    pub mean: Vec<f64>,
    pub var_unbiased: Vec<f64>,
}

impl Tape {
    /// `max(x, 0)`; its gradient at 0 is 0, as PyTorch's.
    pub fn relu(&self, x: &Var) -> Result<Var> {
        if on_device(&[x]) {
            let xv = x.value().clone();
            return Ok(self.record(
                gpu::relu(x.value())?,
                &[x],
                backward_fn("relu", move |g, _| Ok(vec![Some(gpu::relu_backward(g, &xv)?)])),
            ));
        }
        let dtype = x.value().dtype();
        let y = with_dtype!(dtype, T => Tensor::from_vec(elementwise::relu(x.value().cpu_slice::<T>()?), x.shape())?);
        let xv = x.value().clone();
        Ok(self.record(
            y,
            &[x],
            backward_fn("relu", move |g, _| {
                let dx = with_dtype!(dtype, T => Tensor::from_vec(
                    elementwise::relu_backward(g.cpu_slice::<T>()?, xv.cpu_slice::<T>()?),
                    xv.shape(),
                )?);
                Ok(vec![Some(dx)])
            }),
        ))
    }

    /// BatchNorm3d over `x` (`B × C × D × H × W`) with per-channel `gamma`
    /// and `beta`. In training (`BatchStats::Batch`) it also returns the
    /// batch's moments for the running update.
    pub fn batch_norm3d(
        &self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        stats: &BatchStats,
        eps: f64,
    ) -> Result<(Var, Option<BatchMoments>)> {
        const OP: &str = "batch_norm3d";
        let xs = x.shape().clone();
        if xs.rank() != 5 {
            return Err(Error::bad_shape(OP, &xs, "the input must be B × C × D × H × W"));
        }
        let d = xs.dims();
        let (b, c, vox) = (d[0], d[1], d[2] * d[3] * d[4]);
        for p in [gamma, beta] {
            if p.shape().dims() != [c] {
                return Err(Error::shape_mismatch(
                    OP,
                    &xs,
                    p.shape(),
                    format!("gamma and beta must be [{c}]"),
                ));
            }
        }
        let dtype = same_dtype(OP, &[x, gamma, beta])?;
        if on_device(&[x, gamma, beta]) {
            return self.batch_norm3d_device(x, gamma, beta, stats, eps);
        }
        let n = b * vox;
        if n == 0 || (matches!(stats, BatchStats::Batch) && n < 2) {
            return Err(Error::bad_shape(
                OP,
                &xs,
                "batch statistics need at least two values a channel",
            ));
        }
        let p = Planes { b, c, vox };
        let (g, bt) = (gamma.value().to_f64_vec()?, beta.value().to_f64_vec()?);
        let (mean, var, moments) = match stats {
            BatchStats::Batch => {
                let (mean, var) = with_dtype!(dtype, T => bn::moments(x.value().cpu_slice::<T>()?, p));
                let unbiased = var.iter().map(|v| v * n as f64 / (n - 1) as f64).collect();
                let moments = BatchMoments {
                    mean: mean.clone(),
                    var_unbiased: unbiased,
                };
                (mean, var, Some(moments))
            }
            BatchStats::Running { mean, var } => {
                if mean.len() != c || var.len() != c {
                    return Err(Error::invalid(
                        OP,
                        format!("running statistics of {} channels for {c}", mean.len()),
                    ));
                }
                (mean.clone(), var.clone(), None)
            }
        };
        let inv: Vec<f64> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        let affine = Affine {
            mean: &mean,
            inv: &inv,
            gamma: &g,
            beta: &bt,
        };
        let y = with_dtype!(dtype, T => Tensor::from_vec(bn::forward(x.value().cpu_slice::<T>()?, p, &affine), xs.clone())?);
        let training = moments.is_some();
        let xv = x.value().clone();
        let out = self.record(
            y,
            &[x, gamma, beta],
            backward_fn(OP, move |dy, needs| {
                let affine = Affine {
                    mean: &mean,
                    inv: &inv,
                    gamma: &g,
                    beta: &bt,
                };
                let (dx, dg, db) = with_dtype!(dtype, T => {
                    let (dx, dg, db) = bn::backward(dy.cpu_slice::<T>()?, xv.cpu_slice::<T>()?, p, &affine, training);
                    (Tensor::from_vec(dx, xs.clone())?, dg, db)
                });
                Ok(vec![
                    needs[0].then_some(dx),
                    needs[1]
                        .then(|| Tensor::from_f64_slice(&dg, vec![c], dtype))
                        .transpose()?,
                    needs[2]
                        .then(|| Tensor::from_f64_slice(&db, vec![c], dtype))
                        .transpose()?,
                ])
            }),
        );
        Ok((out, moments))
    }

    fn batch_norm3d_device(
        &self,
        x: &Var,
        gamma: &Var,
        beta: &Var,
        stats: &BatchStats,
        eps: f64,
    ) -> Result<(Var, Option<BatchMoments>)> {
        const OP: &str = "batch_norm3d";
        let c = x.shape().dims()[1];
        let running = match stats {
            BatchStats::Batch => None,
            BatchStats::Running { mean, var } => {
                if mean.len() != c || var.len() != c {
                    return Err(Error::invalid(
                        OP,
                        format!("running statistics of {} channels for {c}", mean.len()),
                    ));
                }
                Some((mean.as_slice(), var.as_slice()))
            }
        };
        let (y, saved, moments) = gpu::batch_norm(x.value(), gamma.value(), beta.value(), running, eps)?;
        let g = gamma.value().clone();
        let out = self.record(
            y,
            &[x, gamma, beta],
            backward_fn(OP, move |dy, needs| {
                let (dx, dg, db) = gpu::batch_norm_backward(dy, &g, &saved)?;
                Ok(vec![
                    needs[0].then_some(dx),
                    needs[1].then_some(dg),
                    needs[2].then_some(db),
                ])
            }),
        );
        Ok((
            out,
            moments.map(|(mean, var_unbiased)| BatchMoments { mean, var_unbiased }),
        ))
    }
}
