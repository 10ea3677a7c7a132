//! The segmentation loss (SPEC §14): Dice + cross-entropy, weight 1 each,
//! as MONAI's `DiceCELoss(to_onehot_y=True, softmax=True,
//! include_background=False)`: the softmax over classes, the Dice loss per
//! item and foreground class (smoothing 1e-5 above and below) averaged, the
//! cross-entropy averaged over voxels. CPU only so far.

use super::{backward_fn, on_device};
use crate::autograd::{Tape, Var};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

const SMOOTH: f64 = 1e-5;

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
        let z = logits.value().to_f64_vec()?;
        let at = move |bi: usize, ch: usize, i: usize| (bi * c + ch) * v + i;
        // Softmax over the classes of each voxel.
        let mut p = vec![0.0; z.len()];
        for bi in 0..b {
            for i in 0..v {
                let m = (0..c).map(|ch| z[at(bi, ch, i)]).fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..c).map(|ch| (z[at(bi, ch, i)] - m).exp()).sum();
                for ch in 0..c {
                    p[at(bi, ch, i)] = (z[at(bi, ch, i)] - m).exp() / sum;
                }
            }
        }
        let label = |bi: usize, i: usize| labels[bi * v + i] as usize;
        let ce = -(0..b)
            .flat_map(|bi| (0..v).map(move |i| (bi, i)))
            .map(|(bi, i)| p[at(bi, label(bi, i), i)].ln())
            .sum::<f64>()
            / (b * v) as f64;
        // Per item and foreground class: (numerator, denominator).
        let mut terms = vec![(0.0, 0.0); b * c];
        for bi in 0..b {
            for ch in 1..c {
                let (mut inter, mut sum_p, mut sum_g) = (0.0, 0.0, 0.0);
                for i in 0..v {
                    let y = f64::from(u8::from(label(bi, i) == ch));
                    inter += p[at(bi, ch, i)] * y;
                    sum_p += p[at(bi, ch, i)];
                    sum_g += y;
                }
                terms[bi * c + ch] = (2.0 * inter + SMOOTH, sum_p + sum_g + SMOOTH);
            }
        }
        let count = (b * (c - 1)) as f64;
        let dice = (0..b)
            .flat_map(|bi| (1..c).map(move |ch| (bi, ch)))
            .map(|(bi, ch)| {
                let (num, den) = terms[bi * c + ch];
                1.0 - num / den
            })
            .sum::<f64>()
            / count;
        let dtype = logits.value().dtype();
        let labels = labels.to_vec();
        Ok(self.record(
            Tensor::from_f64_slice(&[dice + ce], vec![], dtype)?,
            &[logits],
            backward_fn(OP, move |g, _| {
                let up = g.to_f64_vec()?[0];
                let label = |bi: usize, i: usize| labels[bi * v + i] as usize;
                let mut dz = vec![0.0; p.len()];
                for bi in 0..b {
                    for i in 0..v {
                        // dDice/dp for each class of this voxel.
                        let gp: Vec<f64> = (0..c)
                            .map(|ch| {
                                if ch == 0 {
                                    return 0.0;
                                }
                                let (num, den) = terms[bi * c + ch];
                                let y = f64::from(u8::from(label(bi, i) == ch));
                                -(2.0 * y / den - num / (den * den)) / count
                            })
                            .collect();
                        let dot: f64 = (0..c).map(|ch| gp[ch] * p[at(bi, ch, i)]).sum();
                        for (ch, gpc) in gp.iter().enumerate() {
                            let k = at(bi, ch, i);
                            let onehot = f64::from(u8::from(label(bi, i) == ch));
                            let ce = (p[k] - onehot) / (b * v) as f64;
                            dz[k] = up * (p[k] * (gpc - dot) + ce);
                        }
                    }
                }
                Ok(vec![Some(Tensor::from_f64_slice(&dz, s.clone(), dtype)?)])
            }),
        ))
    }
}
