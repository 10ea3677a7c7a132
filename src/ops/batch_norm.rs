//! The segmentation decoder's normalisation and activation (SPEC §14):
//! `batch_norm3d` as PyTorch's BatchNorm3d (statistics of
//! the batch in training, running statistics in evaluation; eps and the
//! momentum of the running update are the caller's, PyTorch's 1e-5 and
//! 0.1 by default) and `relu`.

use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

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
        let v = x.value().to_f64_vec()?;
        let y = Tensor::from_f64_slice(
            &v.iter().map(|&a| a.max(0.0)).collect::<Vec<_>>(),
            x.shape(),
            x.value().dtype(),
        )?;
        let (dtype, shape) = (x.value().dtype(), x.shape().clone());
        Ok(self.record(
            y,
            &[x],
            backward_fn("relu", move |g, _| {
                let g = g.to_f64_vec()?;
                let d: Vec<f64> = g.iter().zip(&v).map(|(&g, &a)| if a > 0.0 { g } else { 0.0 }).collect();
                Ok(vec![Some(Tensor::from_f64_slice(&d, shape.clone(), dtype)?)])
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
        let xv = x.value().to_f64_vec()?;
        let (g, bt) = (gamma.value().to_f64_vec()?, beta.value().to_f64_vec()?);
        let at = move |bi: usize, ch: usize, i: usize| (bi * c + ch) * vox + i;
        let (mean, var, moments) = match stats {
            BatchStats::Batch => {
                let mut mean = vec![0.0; c];
                let mut var = vec![0.0; c];
                for ch in 0..c {
                    let vals = (0..b).flat_map(|bi| (0..vox).map(move |i| (bi, i)));
                    let m = vals.clone().map(|(bi, i)| xv[at(bi, ch, i)]).sum::<f64>() / n as f64;
                    let s = vals.map(|(bi, i)| (xv[at(bi, ch, i)] - m).powi(2)).sum::<f64>();
                    mean[ch] = m;
                    var[ch] = s / n as f64;
                }
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
        let mut xhat = vec![0.0; xv.len()];
        let mut y = vec![0.0; xv.len()];
        for bi in 0..b {
            for ch in 0..c {
                for i in 0..vox {
                    let k = at(bi, ch, i);
                    xhat[k] = (xv[k] - mean[ch]) * inv[ch];
                    y[k] = xhat[k] * g[ch] + bt[ch];
                }
            }
        }
        let training = moments.is_some();
        let out = self.record(
            Tensor::from_f64_slice(&y, xs.clone(), dtype)?,
            &[x, gamma, beta],
            backward_fn(OP, move |dy, needs| {
                let dy = dy.to_f64_vec()?;
                let mut dx = vec![0.0; dy.len()];
                let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
                for ch in 0..c {
                    let (mut sum, mut dot) = (0.0, 0.0);
                    for bi in 0..b {
                        for i in 0..vox {
                            let k = at(bi, ch, i);
                            sum += dy[k];
                            dot += dy[k] * xhat[k];
                        }
                    }
                    dg[ch] = dot;
                    db[ch] = sum;
                    for bi in 0..b {
                        for i in 0..vox {
                            let k = at(bi, ch, i);
                            dx[k] = if training {
                                g[ch] * inv[ch] * (dy[k] - sum / n as f64 - xhat[k] * dot / n as f64)
                            } else {
                                g[ch] * inv[ch] * dy[k]
                            };
                        }
                    }
                }
                Ok(vec![
                    needs[0]
                        .then(|| Tensor::from_f64_slice(&dx, xs.clone(), dtype))
                        .transpose()?,
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
