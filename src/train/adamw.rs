//! AdamW (decoupled weight decay, bias-corrected moments) as PyTorch's
//! `torch.optim.AdamW`, and the global gradient-norm clip.

use crate::autograd::ParamStore;
use crate::backend::gpu;
use crate::device::SharedDevice;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub betas: (f64, f64),
    pub eps: f64,
    pub weight_decay: f64,
}

/// Moments per parameter, in the store's order, and the step count. When
/// the parameters live on a device the moments do too (`on_device`, made
/// at the first update); `sync_host` brings them back into `m` and `v`.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    on_device: Option<Vec<(Tensor, Tensor)>>,
}

impl PartialEq for AdamW {
    /// Compares the host state (call `sync_host` first on a device).
    fn eq(&self, o: &Self) -> bool {
        self.config == o.config && self.step == o.step && self.m == o.m && self.v == o.v
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig, store: &ParamStore) -> Self {
        let zeros: Vec<Vec<f32>> = store.iter().map(|(_, p)| vec![0.0; p.value.numel()]).collect();
        AdamW {
            config,
            step: 0,
            m: zeros.clone(),
            v: zeros,
            on_device: None,
        }
    }

    /// Copies device moments back into `m` and `v` (before a checkpoint).
    pub fn sync_host(&mut self) -> Result<()> {
        if let Some(dev) = &self.on_device {
            for (k, (m, v)) in dev.iter().enumerate() {
                self.m[k] = m.to_cpu()?.to_vec()?;
                self.v[k] = v.to_cpu()?.to_vec()?;
            }
        }
        Ok(())
    }

    /// The update on a device: moments uploaded once, then every parameter
    /// through one multi-tensor AdamW launch.
    fn update_device(&mut self, store: &mut ParamStore, lr: f64, clip: &Clip, dev: &SharedDevice) -> Result<()> {
        if self.on_device.is_none() {
            let mut moments = Vec::with_capacity(self.m.len());
            for ((m, v), (_, p)) in self.m.iter().zip(&self.v).zip(store.iter()) {
                let shape = p.value.shape().clone();
                moments.push((
                    Tensor::from_vec(m.clone(), shape.clone())?.to_device(dev)?,
                    Tensor::from_vec(v.clone(), shape)?.to_device(dev)?,
                ));
            }
            self.on_device = Some(moments);
        }
        let s = gpu::AdamWStep {
            lr,
            betas: self.config.betas,
            eps: self.config.eps,
            weight_decay: self.config.weight_decay,
            t: self.step,
        };
        let clip = match clip {
            Clip::Device(t) => t.clone(),
            Clip::Factor(f) => gpu::clip_values(dev, f64::NAN, *f)?,
        };
        let ids: Vec<_> = store.iter().map(|(id, _)| id).collect();
        // The kernel updates weights in place; a weight another tensor
        // shares (a clone of the store) is copied first, so its holder never
        // sees it change.
        for &id in &ids {
            let p = store.get(id);
            if p.grad.is_some() && p.value.is_shared() {
                let w = gpu::scale(&p.value, 1.0)?;
                store.set_value(id, w)?;
            }
        }
        let moments = self.on_device.as_deref().unwrap_or_default();
        let mut rows = Vec::with_capacity(ids.len());
        for (&id, (m, v)) in ids.iter().zip(moments) {
            let p = store.get(id);
            if let Some(g) = &p.grad {
                rows.push([&p.value, g, m, v]);
            }
        }
        gpu::adamw_multi(&rows, &s, &clip)
    }

    /// One update with learning rate `lr` from the gradients in `store`
    /// (parameters without a gradient are left alone, moments included).
    pub fn update(&mut self, store: &mut ParamStore, lr: f64) -> Result<()> {
        self.update_clipped(store, lr, 1.0)
    }

    /// `update` with every gradient scaled by `clip` (the factor of
    /// `clip_factor`), without rewriting the gradients first.
    pub fn update_clipped(&mut self, store: &mut ParamStore, lr: f64, clip: f64) -> Result<()> {
        self.update_with(store, lr, &Clip::Factor(clip))
    }

    /// `update` with the gradients scaled by `clip`'s factor; a clip left on
    /// the device by `device_clip` is read there (a NaN factor, from a norm
    /// that is not finite, leaves every weight and moment as it was).
    pub fn update_with(&mut self, store: &mut ParamStore, lr: f64, clip: &Clip) -> Result<()> {
        if self.m.len() != store.len() {
            return Err(Error::invalid("AdamW", "the optimizer state belongs to another model"));
        }
        self.step += 1;
        let dev = store.shared_device();
        if let Some(dev) = dev {
            return self.update_device(store, lr, clip, &dev);
        }
        let clip = match clip {
            Clip::Factor(f) => *f,
            Clip::Device(t) => *t
                .to_f64_vec()?
                .get(1)
                .ok_or_else(|| Error::invalid("AdamW", "a clip tensor without its factor"))?,
        };
        if clip.is_nan() {
            return Ok(());
        }
        let (b1, b2) = self.config.betas;
        let bc1 = 1.0 - b1.powi(self.step as i32);
        let bc2 = 1.0 - b2.powi(self.step as i32);
        let decay = (1.0 - lr * self.config.weight_decay) as f32;
        let step_size = (lr / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (b1f, b2f, eps) = (b1 as f32, b2 as f32, self.config.eps as f32);
        let h = Hyper {
            clip,
            decay,
            step_size,
            bc2_sqrt,
            b1: b1f,
            b2: b2f,
            eps,
        };
        // Each element on its own, so chunks run in parallel with the same
        // result as a sequential loop.
        let run = |w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]| {
            use rayon::prelude::*;
            const CHUNK: usize = 1 << 14;
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|((w, m), (v, g))| update_chunk(w, m, v, g, &h));
        };
        let ids: Vec<_> = store.iter().map(|(id, _)| id).collect();
        for (k, id) in ids.into_iter().enumerate() {
            let (m, v) = (&mut self.m[k], &mut self.v[k]);
            // The gradient is read in place, the clip applied as it is read.
            match store.value_mut_and_grad::<f32>(id) {
                (_, None) => continue,
                // The store alone holds the weights: updated where they are,
                // with no copy and no new allocation to fault in and free.
                (Some(w), Some(g)) => run(w, m, v, g.cpu_slice::<f32>()?),
                // Shared (a clone of the store holds them): new weights, so
                // the holder never sees them change.
                (None, Some(_)) => {
                    let p = store.get(id);
                    let Some(g) = &p.grad else { continue };
                    let g = g.cpu_slice::<f32>()?;
                    let mut w = p.value.to_vec::<f32>()?;
                    run(&mut w, m, v, g);
                    let shape = p.value.shape().clone();
                    store.set_value(id, Tensor::from_vec(w, shape)?)?;
                }
            }
        }
        Ok(())
    }
}

/// One step's constants of the CPU update.
struct Hyper {
    /// The gradient's clip factor (1 when not clipped).
    clip: f64,
    decay: f32,
    step_size: f32,
    bc2_sqrt: f32,
    b1: f32,
    b2: f32,
    eps: f32,
}

crate::dispatched! {
    /// The AdamW update of one chunk, in PyTorch's order: decay the
    /// weight, then the Adam step. Element by element with no fused
    /// multiply-add, so every instruction set gives the same bits.
    fn update_chunk(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], h: &Hyper) {
        let n = w.len().min(m.len()).min(v.len()).min(g.len());
        let (w, m, v, g) = (&mut w[..n], &mut m[..n], &mut v[..n], &g[..n]);
        for i in 0..n {
            // The clip applied as the gradient is read.
            let g = if h.clip != 1.0 { (g[i] as f64 * h.clip) as f32 } else { g[i] };
            w[i] *= h.decay;
            m[i] = h.b1 * m[i] + (1.0 - h.b1) * g;
            v[i] = h.b2 * v[i] + (1.0 - h.b2) * g * g;
            let denom = v[i].sqrt() / h.bc2_sqrt + h.eps;
            w[i] -= h.step_size * m[i] / denom;
        }
    }
}

/// How one step's gradients are scaled before AdamW.
#[derive(Clone, Debug)]
pub enum Clip {
    /// A factor decided on the host (`clip_factor`).
    Factor(f64),
    /// `[norm, factor]` left on the device by `device_clip`.
    Device(Tensor),
}

/// The global gradient norm and clip factor for `max_norm`, computed where
/// the gradients live and left there (`None` on the host), so a step on a
/// device never waits to read them.
pub fn device_clip(store: &ParamStore, max_norm: f64) -> Result<Option<Tensor>> {
    let grads: Vec<&Tensor> = store.iter().filter_map(|(_, p)| p.grad.as_ref()).collect();
    if grads.is_empty() || grads.iter().any(|g| g.device_storage().is_none()) {
        return Ok(None);
    }
    gpu::clip_norm(&grads, max_norm).map(Some)
}

/// The global L2 norm of all gradients (in f64; on a device, from per-block
/// f32 partial sums added in f64).
pub fn grad_norm(store: &ParamStore) -> Result<f64> {
    let grads: Vec<&Tensor> = store.iter().filter_map(|(_, p)| p.grad.as_ref()).collect();
    if grads.iter().any(|g| g.device_storage().is_some()) {
        // One launch over every gradient.
        return gpu::sum_of_squares_multi(&grads).map(f64::sqrt);
    }
    let mut sq = 0.0;
    for g in grads {
        sq += match g.cpu_slice::<f32>() {
            Ok(s) => sum_of_squares(s),
            Err(_) => g.to_f64_vec()?.iter().map(|v| v * v).sum::<f64>(),
        };
    }
    Ok(sq.sqrt())
}

/// `Σ x²` in f64 over fixed chunks in parallel, the chunks' sums added in
/// chunk order: the same result for any number of threads.
fn sum_of_squares(x: &[f32]) -> f64 {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 14;
    let parts: Vec<f64> = x.par_chunks(CHUNK).map(squares_in_lanes).collect();
    parts.iter().sum()
}

crate::dispatched! {
    /// Σ x² in f64, value `i` in lane `i % 8`, the lanes added in order at
    /// the end: a vector loop, the same bits at every instruction set.
    fn squares_in_lanes(x: &[f32]) -> f64 {
        let mut lanes = [0.0f64; 8];
        for c in x.chunks(8) {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v as f64 * v as f64;
            }
        }
        lanes.iter().fold(0.0, |s, &l| s + l)
    }
}

/// PyTorch's `clip_grad_norm_` factor: `max_norm / (norm + 1e-6)` when that
/// is below 1, else 1.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 && norm.is_finite() {
        coef
    } else {
        1.0
    }
}

/// Scales every gradient by `max_norm / (norm + 1e-6)` when that is below 1
/// (PyTorch's `clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(store: &mut ParamStore, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(store)?;
    let coef = clip_factor(norm, max_norm);
    if coef < 1.0 {
        let ids: Vec<_> = store.iter().map(|(id, _)| id).collect();
        for id in ids {
            let p = store.get(id);
            if let Some(g) = p.grad.as_ref().filter(|g| g.device_storage().is_some()) {
                let t = gpu::scale(g, coef)?;
                store.zero_grad_one(id);
                store.accumulate_grad(id, t)?;
            } else if let Some(g) = &p.grad {
                let scaled: Vec<f32> = g.to_vec::<f32>()?.iter().map(|&v| (v as f64 * coef) as f32).collect();
                let t = Tensor::from_vec(scaled, g.shape().clone())?;
                store.zero_grad_one(id);
                store.accumulate_grad(id, t)?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::DType;

    fn store(values: &[f64], grad: &[f64]) -> ParamStore {
        let mut s = ParamStore::new();
        let id = s
            .add("w", Tensor::from_f64_slice(values, [values.len()], DType::F32).unwrap())
            .unwrap();
        s.accumulate_grad(id, Tensor::from_f64_slice(grad, [grad.len()], DType::F32).unwrap())
            .unwrap();
        s
    }

    /// The vectorised chunk update gives the bits of a plain scalar loop
    /// written out here, with and without a clip factor.
    #[test]
    fn chunk_update_matches_the_scalar_formula_bit_for_bit() {
        let n = 1000;
        let g: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0).collect();
        for clip in [1.0, 0.37] {
            let h = Hyper {
                clip,
                decay: 0.9999,
                step_size: 3e-4,
                bc2_sqrt: 0.05,
                b1: 0.9,
                b2: 0.95,
                eps: 1e-8,
            };
            let mut w: Vec<f32> = (0..n).map(|i| (i as f32 * 0.01).sin()).collect();
            let mut m: Vec<f32> = (0..n).map(|i| (i as f32 * 0.02).cos() * 0.1).collect();
            let mut v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.03).sin().abs() * 0.01).collect();
            let (mut w2, mut m2, mut v2) = (w.clone(), m.clone(), v.clone());
            update_chunk(&mut w, &mut m, &mut v, &g, &h);
            for i in 0..n {
                let gi = if clip != 1.0 { (g[i] as f64 * clip) as f32 } else { g[i] };
                w2[i] *= h.decay;
                m2[i] = h.b1 * m2[i] + (1.0 - h.b1) * gi;
                v2[i] = h.b2 * v2[i] + (1.0 - h.b2) * gi * gi;
                w2[i] -= h.step_size * m2[i] / (v2[i].sqrt() / h.bc2_sqrt + h.eps);
                assert_eq!(
                    (w[i].to_bits(), m[i].to_bits(), v[i].to_bits()),
                    (w2[i].to_bits(), m2[i].to_bits(), v2[i].to_bits()),
                    "element {i}, clip {clip}"
                );
            }
        }
    }

    /// Weights the store alone holds are updated in place; weights a clone
    /// shares are replaced, the clone keeps its values, and both ways give
    /// the same bits.
    #[test]
    fn shared_weights_are_copied_and_unshared_updated_in_place() {
        let cfg = AdamWConfig {
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.05,
        };
        let values: Vec<f64> = (0..50_000).map(|i| ((i * 13 % 97) as f64 - 48.0) / 50.0).collect();
        let grad: Vec<f64> = (0..50_000).map(|i| ((i * 29 % 89) as f64 - 44.0) / 30.0).collect();
        let (mut alone, mut shared) = (store(&values, &grad), store(&values, &grad));
        let id = alone.id("w").unwrap();
        let holder = shared.get(id).value.clone();
        let before = alone.get(id).value.cpu_slice::<f32>().unwrap().as_ptr();
        let (mut opt_a, mut opt_s) = (AdamW::new(cfg, &alone), AdamW::new(cfg, &shared));
        opt_a.update(&mut alone, 0.01).unwrap();
        opt_s.update(&mut shared, 0.01).unwrap();
        assert_eq!(
            alone.get(id).value.cpu_slice::<f32>().unwrap().as_ptr(),
            before,
            "updated in place"
        );
        assert_eq!(
            holder.to_f64_vec().unwrap(),
            values.iter().map(|&v| v as f32 as f64).collect::<Vec<_>>()
        );
        let (a, s) = (
            alone.get(id).value.to_vec::<f32>().unwrap(),
            shared.get(id).value.to_vec::<f32>().unwrap(),
        );
        assert!(a.iter().zip(&s).all(|(x, y)| x.to_bits() == y.to_bits()));
        assert!(
            a.iter().zip(&values).any(|(x, &v)| *x != v as f32),
            "the update moved the weights"
        );
    }

    #[test]
    fn two_steps_by_hand() {
        let cfg = AdamWConfig {
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.05,
        };
        let mut s = store(&[1.0, -2.0], &[0.5, -0.25]);
        let mut opt = AdamW::new(cfg, &s);
        let lr = 0.1;
        opt.update(&mut s, lr).unwrap();
        // Step 1: the bias-corrected moments are g and g², so the step is lr·sign(g).
        let w1: Vec<f64> = s.iter().next().unwrap().1.value.to_f64_vec().unwrap();
        let want1 = [1.0 * (1.0 - lr * 0.05) - lr, -2.0 * (1.0 - lr * 0.05) + lr];
        for (a, b) in w1.iter().zip(want1) {
            assert!((a - b).abs() < 1e-6, "{w1:?} vs {want1:?}");
        }
        // Step 2 with gradient 1.0 for both.
        let id = s.id("w").unwrap();
        s.zero_grad();
        s.accumulate_grad(id, Tensor::from_f64_slice(&[1.0, 1.0], [2], DType::F32).unwrap())
            .unwrap();
        opt.update(&mut s, lr).unwrap();
        let w2 = s.get(id).value.to_f64_vec().unwrap();
        for (k, g1) in [0.5f64, -0.25].iter().enumerate() {
            let m = 0.9 * 0.1 * g1 + 0.1 * 1.0;
            let v = 0.95 * 0.05 * g1 * g1 + 0.05 * 1.0;
            let mhat = m / (1.0 - 0.81);
            let vhat = v / (1.0 - 0.95f64.powi(2));
            let want = want1[k] * (1.0 - lr * 0.05) - lr * mhat / (vhat.sqrt() + 1e-8);
            assert!((w2[k] - want).abs() < 1e-5, "{k}: {} vs {want}", w2[k]);
        }
    }

    #[test]
    fn squares_in_lanes_are_the_documented_sum() {
        // Lengths off the lane count and past the parallel chunk; the lanes
        // written out plainly give the same bits.
        for n in [0usize, 1, 7, 9, 100, 20_000] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect();
            let mut lanes = [0.0f64; 8];
            for (i, &v) in x.iter().enumerate() {
                lanes[i % 8] += v as f64 * v as f64;
            }
            let want = lanes.iter().fold(0.0, |s, &l| s + l);
            assert_eq!(squares_in_lanes(&x).to_bits(), want.to_bits(), "n {n}");
            let plain: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            assert!((sum_of_squares(&x) - plain).abs() <= 1e-12 * plain, "n {n}");
        }
    }

    #[test]
    fn clipping_scales_to_the_maximum_norm() {
        let mut s = store(&[0.0, 0.0], &[3.0, 4.0]);
        let n = clip_grad_norm(&mut s, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-6);
        assert!((grad_norm(&s).unwrap() - 1.0).abs() < 1e-5);
        let mut small = store(&[0.0], &[0.5]);
        clip_grad_norm(&mut small, 1.0).unwrap();
        assert!(
            (grad_norm(&small).unwrap() - 0.5).abs() < 1e-7,
            "below the maximum: untouched"
        );
    }
}
