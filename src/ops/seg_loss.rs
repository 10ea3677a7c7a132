//! The segmentation loss (SPEC §14): Dice + cross-entropy, weight 1 each,
//! as MONAI's `DiceCELoss(to_onehot_y=True, softmax=True,
//! include_background=False)`: the softmax over classes, the Dice loss per
//! item and foreground class (smoothing 1e-5 above and below) averaged, the
//! cross-entropy averaged over voxels.

use rayon::prelude::*;

use super::{backward_fn, on_device};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::{CpuFloat, Disjoint};
use crate::error::{Error, Result};
use crate::tensor::{with_dtype, Element, Tensor};

const SMOOTH: f64 = 1e-5;
/// Voxels per task of the loss's passes.
const CHUNK: usize = 4096;

impl Tape {
    /// Dice + CE of `logits` (`B × C × D × H × W`, C ≥ 2, class 0 the
    /// background) against `labels` (a class per voxel, `B × D × H × W` in
    /// the same order); a scalar.
    pub fn dice_ce(&self, logits: &Var, labels: &[u32]) -> Result<Var> {
        const OP: &str = "dice_ce";
        let s = logits.shape().clone();
        if s.rank() != 5 || s.dims()[1] < 2 {
            return Err(Error::bad_shape(
                OP,
                &s,
                "logits must be B × C × D × H × W with C ≥ 2 classes",
            ));
        }
        if on_device(&[logits]) {
            let (loss, saved) = crate::backend::gpu::dice_ce(logits.value(), labels)?;
            return Ok(self.record(
                loss,
                &[logits],
                backward_fn(OP, move |g, _| {
                    Ok(vec![Some(crate::backend::gpu::dice_ce_backward(g, &saved)?)])
                }),
            ));
        }
        let d = s.dims();
        let (b, c, v) = (d[0], d[1], d[2] * d[3] * d[4]);
        if labels.len() != b * v {
            return Err(Error::invalid(
                OP,
                format!("{} labels for {} voxels", labels.len(), b * v),
            ));
        }
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= c) {
            return Err(Error::invalid(
                OP,
                format!("a label of class {bad} for a model of {c} classes"),
            ));
        }
        let dtype = logits.value().dtype();
        // Voxel ranges of one item, the unit of the parallel passes.
        let ranges: Vec<(usize, usize, usize)> = (0..b)
            .flat_map(|bi| (0..v).step_by(CHUNK).map(move |i0| (bi, i0, CHUNK.min(v - i0))))
            .collect();
        // Voxel i of channel ch of item bi.
        let at = move |bi: usize, ch: usize, i: usize| (bi * c + ch) * v + i;
        // Softmax over the classes of each voxel (channel rows of a voxel
        // range at a time; per voxel the same operations in the same
        // order as one voxel at a time).
        let mut p = vec![0.0f64; b * c * v];
        {
            let parts = Disjoint::new(&mut p);
            with_dtype!(dtype, T => {
                let z = logits.value().cpu_slice::<T>()?;
                ranges.par_iter().for_each(|&(bi, i0, n)| {
                    let mut m = vec![f64::NEG_INFINITY; n];
                    for ch in 0..c {
                        for (m, z) in m.iter_mut().zip(&z[at(bi, ch, i0)..][..n]) {
                            *m = m.max(z.to_f64());
                        }
                    }
                    let mut sum = vec![0.0f64; n];
                    for ch in 0..c {
                        // SAFETY: this range's voxels of channel ch; the
                        // ranges do not overlap.
                        let pr = unsafe { parts.part(at(bi, ch, i0), n) };
                        for ((p, z), (&m, s)) in pr.iter_mut().zip(&z[at(bi, ch, i0)..][..n]).zip(m.iter().zip(&mut sum)) {
                            *p = (z.to_f64() - m).exp();
                            *s += *p;
                        }
                    }
                    for ch in 0..c {
                        // SAFETY: as above.
                        let pr = unsafe { parts.part(at(bi, ch, i0), n) };
                        pr.iter_mut().zip(&sum).for_each(|(p, &s)| *p /= s);
                    }
                });
            });
        }
        let label = |bi: usize, i: usize| labels[bi * v + i] as usize;
        let logs: Vec<f64> = (0..b * v)
            .into_par_iter()
            .map(|k| p[at(k / v, label(k / v, k % v), k % v)].ln())
            .collect();
        let ce = -logs.iter().sum::<f64>() / (b * v) as f64;
        // Per item and foreground class: (numerator, denominator).
        let terms: Vec<(f64, f64)> = (0..b * c)
            .into_par_iter()
            .map(|k| {
                let (bi, ch) = (k / c, k % c);
                if ch == 0 {
                    return (0.0, 0.0);
                }
                let (mut inter, mut sum_p, mut sum_g) = (0.0, 0.0, 0.0);
                for (i, &p) in p[at(bi, ch, 0)..][..v].iter().enumerate() {
                    let y = f64::from(u8::from(label(bi, i) == ch));
                    inter += p * y;
                    sum_p += p;
                    sum_g += y;
                }
                (2.0 * inter + SMOOTH, sum_p + sum_g + SMOOTH)
            })
            .collect();
        let count = (b * (c - 1)) as f64;
        let dice = (0..b)
            .flat_map(|bi| (1..c).map(move |ch| (bi, ch)))
            .map(|(bi, ch)| {
                let (num, den) = terms[bi * c + ch];
                1.0 - num / den
            })
            .sum::<f64>()
            / count;
        let labels = labels.to_vec();
        Ok(self.record(
            Tensor::from_f64_slice(&[dice + ce], vec![], dtype)?,
            &[logits],
            backward_fn(OP, move |g, _| {
                let up = g.to_f64_vec()?[0];
                let dz = with_dtype!(dtype, T => {
                    let mut dz = vec![T::zero(); p.len()];
                    let parts = Disjoint::new(&mut dz);
                    ranges.par_iter().for_each(|&(bi, i0, n)| {
                        // SAFETY: this range's voxels of each channel; the
                        // ranges do not overlap.
                        let mut out: Vec<&mut [T]> = (0..c).map(|ch| unsafe { parts.part(at(bi, ch, i0), n) }).collect();
                        let mut gp = vec![0.0f64; c];
                        for i in i0..i0 + n {
                            let l = labels[bi * v + i] as usize;
                            // dDice/dp for each class of this voxel.
                            for (ch, gp) in gp.iter_mut().enumerate().skip(1) {
                                let (num, den) = terms[bi * c + ch];
                                let y = f64::from(u8::from(l == ch));
                                *gp = -(2.0 * y / den - num / (den * den)) / count;
                            }
                            let dot: f64 = (0..c).map(|ch| gp[ch] * p[at(bi, ch, i)]).sum();
                            for ((ch, gpc), out) in gp.iter().enumerate().zip(&mut out) {
                                let k = at(bi, ch, i);
                                let onehot = f64::from(u8::from(l == ch));
                                let ce = (p[k] - onehot) / (b * v) as f64;
                                out[i - i0] = T::from_f64(up * (p[k] * (gpc - dot) + ce));
                            }
                        }
                    });
                    Tensor::from_vec(dz, s.clone())?
                });
                Ok(vec![Some(dz)])
            }),
        ))
    }
}
