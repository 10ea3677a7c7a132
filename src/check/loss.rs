//! The masked loss, the PSNR's squared error and mean pooling
//! (src/backend/gpu/loss.rs) against the tape's CPU ops.

use super::{grad_of, host, rel, Kit};
use crate::autograd::{ParamStore, Tape};
use crate::backend::gpu;
use crate::error::Result;
use crate::tensor::{Readers, Tensor};

pub(super) fn cases(kit: &mut Kit) -> Result<()> {
    // The last case masks nothing: the loss is then the mean over all tokens.
    for (k, (b, n, p)) in [(1usize, 7usize, 5usize), (2, 64, 512), (1, 300, 3)]
        .into_iter()
        .enumerate()
    {
        let pred = kit.values(b * n * p, 7_000_000 + 100_000 * k as u64, 1.0);
        let target = kit.values(b * n * p, 8_000_000 + 100_000 * k as u64, 1.0);
        let mask: Vec<f32> = kit
            .values(b * n, 9_000_000 + 1000 * k as u64, 1.0)
            .iter()
            .map(|v| f32::from(*v > 0.0 && k < 2))
            .collect();
        let (tp, tt) = (kit.up(&pred, [b, n, p])?, kit.up(&target, [b, n, p])?);
        let (loss, sse) = gpu::masked_mse(&tp, &tt, &mask, p)?;
        let grad = gpu::masked_mse_backward(
            &tp,
            &tt,
            &mask,
            p,
            &Tensor::scalar(1.0, crate::DType::F32),
            Readers::Any,
        )?;
        let (loss, sse) = (loss.scalar_value()?, sse.scalar_value()?);
        let tape = Tape::new();
        let pv = tape.input(Tensor::from_vec(pred.clone(), [b, n, p])?, true);
        let tv = tape.constant(Tensor::from_vec(target.clone(), [b, n, p])?);
        let l = tape.masked_mse(&pv, &tv, &Tensor::from_vec(mask, [b, n])?)?;
        let want = l.value().scalar_value()?;
        let grads = tape.backward(&l, &mut ParamStore::new())?;
        let want_grad = grad_of(&grads, &pv)?;
        let psnr = -10.0 * (sse / (b * n * p) as f64 + 1e-8).log10();
        let want_psnr = crate::ops::psnr(
            &Tensor::from_vec(pred, [b, n, p])?,
            &Tensor::from_vec(target, [b, n, p])?,
        )?;
        let case = format!("{b}×{n} tokens of {p}");
        kit.push(
            "masked_mse_reduce",
            &case,
            ((loss - want) / want).abs().max(((psnr - want_psnr) / want_psnr).abs()),
        );
        kit.push("masked_mse_backward", case, rel(&host(&grad)?, &want_grad));
        let x = kit.values(b * n * 24, 9_500_000 + 1000 * k as u64, 1.0);
        let tape = Tape::inference();
        let m = tape.mean(&tape.constant(Tensor::from_vec(x.clone(), [b, n, 24])?), 1)?;
        let got = gpu::mean_axis(&kit.up(&x, [b, n, 24])?, b, n, 24, vec![b, 24].into())?;
        kit.push(
            "mean_axis",
            format!("{b}×{n}×24"),
            rel(&host(&got)?, m.value().cpu_slice::<f32>()?),
        );
    }
    Ok(())
}
