//! One optimizer step, queued: the micro-batches' forward and backward, the
//! global gradient norm and clip, AdamW. On a device nothing here makes the
//! host wait: the loss, the squared error and the norm stay on the device
//! and come back through `PendingStep`, which the trainer reads after it has
//! queued the next step, so the device never runs dry while the host logs.

use super::adamw::{clip_factor, device_clip, grad_norm, AdamW, Clip};
use crate::autograd::{ParamStore, Tape};
use crate::backend::gpu;
use crate::data::{Batch, BatchData};
use crate::device::GraphCounts;
use crate::device::SharedDevice;
use crate::dist::{Collective, Shard};
use crate::error::{Error, Result};
use crate::model::{noisy_visible_tokens, Dropout, DualMask, Nemesis};
use crate::rng::{stream_id, Purpose, RngStream};
use crate::tensor::{Readback, Tensor};

/// What stays the same from step to step.
pub struct StepSpec<'a> {
    pub model: &'a Nemesis,
    pub seed: u64,
    /// The σ values a micro-batch's noise is drawn from.
    pub noise_levels: &'a [f64],
    /// The maximum global gradient norm.
    pub clip: f64,
    /// This rank's share of the step's micro-batches; draws are keyed by the
    /// global micro-batch, so they do not depend on the world size.
    pub shard: Shard,
    /// How the ranks sum their gradients (none: one rank).
    pub collective: Option<&'a dyn Collective>,
    /// Sum bf16 copies of the gradients over the ranks (half the bytes).
    pub allreduce_bf16: bool,
}

/// A step that has been queued; `wait` gives its metrics.
pub struct PendingStep {
    /// The step's number, from 1.
    pub number: u64,
    /// The noise σ of the last micro-batch.
    pub sigma: f64,
    pub epoch: u64,
    pub lr: f64,
    /// Superpatches in the step (all micro-batches).
    pub superpatches: usize,
    losses: Vec<Readback>,
    sses: Vec<Readback>,
    /// `[norm, clip factor]`.
    clip: Readback,
    values: usize,
}

/// A finished step's metrics.
#[derive(Clone, Copy, Debug)]
pub struct StepValues {
    /// The mean of the micro-batches' masked losses.
    pub loss: f64,
    /// The mean of the micro-batches' PSNRs.
    pub psnr: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
}

impl PendingStep {
    /// Waits for the step on its device and reads its metrics back. A loss
    /// or norm that is not finite comes back as it is (the device skipped
    /// the update then; the caller decides what to say).
    pub fn wait(self) -> Result<StepValues> {
        let n = self.losses.len().max(1) as f64;
        let mut loss = 0.0;
        for l in self.losses {
            loss += first(l.wait()?)?;
        }
        let mut psnr = 0.0;
        for s in self.sses {
            psnr += crate::ops::psnr_from_sse(first(s.wait()?)?, self.values)?;
        }
        let grad_norm = first(self.clip.wait()?)?;
        Ok(StepValues {
            loss: loss / n,
            psnr: psnr / n,
            grad_norm,
        })
    }
}

/// Whether steps on `device` should be read after the next one is queued:
/// only a GPU works behind the host; the CPU and the emulator have finished
/// a step when it is queued, so deferring would only shift the timing.
pub fn read_deferred(device: Option<&SharedDevice>) -> bool {
    device.is_some_and(|d| d.kind() == crate::device::Device::Cuda)
}

fn first(v: Vec<f64>) -> Result<f64> {
    v.first()
        .copied()
        .ok_or_else(|| Error::invalid("step", "an empty metric came back"))
}

/// Queues step `step` (from 0) over `batches` (one per micro-batch) with
/// learning rate `lr`: noise, masks and dropout drawn from the step's
/// streams, gradients added over the micro-batches, clipped, one AdamW
/// update, gradients cleared. Where the model lives on a device, the
/// batches are raw HU (`BatchData::HuI16`) expanded there.
pub fn queue_step(
    spec: &StepSpec,
    store: &mut ParamStore,
    opt: &mut AdamW,
    step: u64,
    lr: f64,
    batches: Vec<Batch>,
) -> Result<PendingStep> {
    let c = spec.model.config();
    let accum = batches.len();
    if accum == 0 || spec.noise_levels.is_empty() {
        return Err(Error::invalid(
            "step",
            "a step needs a batch and at least one noise level",
        ));
    }
    let device = store.shared_device();
    let mut pending = PendingStep {
        number: step + 1,
        sigma: 0.0,
        epoch: 0,
        lr,
        superpatches: 0,
        losses: Vec::with_capacity(accum),
        sses: Vec::with_capacity(accum),
        clip: Readback::Ready(Vec::new()),
        values: 0,
    };
    // Every draw is keyed by the global micro-batch `j`, and the loss of each
    // is scaled by the global count: summed over the ranks' gradients (the
    // all-reduce), one rank with accum × W gives the same step.
    let global_accum = accum * spec.shard.world;
    for (local, batch) in batches.into_iter().enumerate() {
        let micro = spec.shard.global_micro(local);
        let b = batch.shape[0];
        pending.epoch = batch.position.epoch;
        pending.superpatches += b;
        let levels = spec.noise_levels;
        let noise_rng = RngStream::new(spec.seed, stream_id(Purpose::Noise, step, 0));
        pending.sigma = levels[noise_rng.bits(micro as u64) as usize % levels.len()];
        let noise = RngStream::new(spec.seed, stream_id(Purpose::Noise, step, 1 + micro as u64));
        let mask = DualMask::sample(
            c,
            b,
            RngStream::new(spec.seed, stream_id(Purpose::Mask, step, micro as u64)),
        );
        let dropout = Dropout::new(c.dropout, spec.seed, step * global_accum as u64 + micro as u64);
        let tape = Tape::new();
        let out = match (batch.data, &device) {
            // On a device: the raw HU crops go up as i16 and one kernel
            // windows, adds the noise (the same draws as `add_noise`),
            // patchifies and gathers the visible tokens; a second call
            // without noise makes the clean target.
            (BatchData::HuI16(hu), Some(dev)) => {
                let (size, patch) = (c.superpatch_size, c.patch_size);
                let up = gpu::upload_hu(dev, &hu)?;
                let visible = gpu::superpatch_input(&up, b, size, patch, mask.ids_keep(), pending.sigma, noise)?;
                let all: Vec<usize> = (0..b).flat_map(|_| 0..c.num_tokens()).collect();
                let target = gpu::superpatch_input(&up, b, size, patch, &all, 0.0, noise)?;
                spec.model
                    .forward_tokens(&tape, store, &tape.constant(visible), target, &mask, Some(&dropout))?
            }
            (BatchData::F32(values), _) => {
                let clean = Tensor::from_vec(values, batch.shape.to_vec())?;
                // As on a device: noise only where the encoder looks (the
                // same values as `add_noise`, `patchify` and the gather).
                let visible = noisy_visible_tokens(c, &clean, mask.ids_keep(), pending.sigma, noise)?;
                spec.model
                    .forward_train_visible(&tape, store, visible, &clean, &mask, Some(&dropout))?
            }
            _ => {
                return Err(Error::invalid(
                    "step",
                    "the loader made batches of the wrong kind for this device",
                ))
            }
        };
        pending.losses.push(out.loss.value().read_later()?);
        pending.sses.push(out.sse.read_later()?);
        pending.values = out.pred.value().numel();
        let scaled = if global_accum > 1 {
            tape.scale(&out.loss, 1.0 / global_accum as f64)?
        } else {
            out.loss
        };
        // A device rank sums its gradients over the ranks while the last
        // micro-batch's backward pass runs, bucket by bucket.
        match (spec.collective, &device) {
            (Some(c), Some(_)) if local + 1 == accum => {
                let size = super::reduce::bucket_bytes()?;
                let mut buckets = super::reduce::GradBuckets::new(store, size, c.timeout(), spec.allreduce_bf16);
                tape.backward_each(&scaled, store, &mut |id, store| buckets.ready(id, store))?;
                buckets.finish(store)?;
            }
            _ => {
                tape.backward(&scaled, store)?;
            }
        }
    }
    // The σ logged is that of the step's last global micro-batch, whichever
    // rank drew it.
    let levels = spec.noise_levels;
    let noise_rng = RngStream::new(spec.seed, stream_id(Purpose::Noise, step, 0));
    pending.sigma = levels[noise_rng.bits(global_accum as u64 - 1) as usize % levels.len()];
    // The ranks' gradients summed before the clip (on a device, above), so
    // every rank clips by the norm of the same, global gradient and takes
    // the same update.
    if let (Some(c), None) = (spec.collective, &device) {
        super::reduce::all_reduce_grads(store, c, spec.allreduce_bf16)?;
    }
    // The clip: on a device it is computed and used there; on the host a
    // norm that is not finite skips the update just as the device does.
    let clip = match device_clip(store, spec.clip)? {
        Some(t) => {
            pending.clip = t.read_later()?;
            Clip::Device(t)
        }
        None => {
            let norm = grad_norm(store)?;
            let factor = if norm.is_finite() {
                clip_factor(norm, spec.clip)
            } else {
                f64::NAN
            };
            pending.clip = Readback::Ready(vec![norm, factor]);
            Clip::Factor(factor)
        }
    };
    opt.update_with(store, lr, &clip)?;
    store.zero_grad();
    Ok(pending)
}

/// Steps on a device as one recorded graph (backend/graph.rs). The first
/// step runs as usual: it makes the optimizer's state and the weights' bf16
/// copies, which later steps only update. The second step is recorded
/// while it runs, and every later one replays it: the same host code runs,
/// but the device only sees one graph launch, with the step's random
/// streams, learning rate and bias corrections updated in place and its
/// batches and token lists copied in first.
///
/// If the graph cannot be built, or its first replay fails before running,
/// steps go on as before and `warning` says why. A later replay that does not
/// match the recording is an error: it means a step changed shape, which a
/// fixed configuration never does.
pub struct StepGraphs {
    on: bool,
    done: u64,
    device: Option<SharedDevice>,
    counts: Option<GraphCounts>,
    replays: u64,
    /// Why graphs were switched off during the run, to tell the user.
    pub warning: Option<String>,
}

impl StepGraphs {
    /// `on`: use graphs where the parameters live on a device.
    pub fn new(on: bool) -> Self {
        StepGraphs {
            on,
            done: 0,
            device: None,
            counts: None,
            replays: 0,
            warning: None,
        }
    }

    /// What the recorded step holds, once there is one.
    pub fn counts(&self) -> Option<GraphCounts> {
        self.counts
    }

    /// Steps replayed from the graph so far.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    fn off(&mut self, why: String) {
        if let Some(dev) = self.device.take() {
            dev.graph_drop();
        }
        self.counts = None;
        self.on = false;
        self.warning = Some(why);
    }

    /// `queue_step`, recorded or replayed as described above.
    pub fn queue(
        &mut self,
        spec: &StepSpec,
        store: &mut ParamStore,
        opt: &mut AdamW,
        step: u64,
        lr: f64,
        batches: Vec<Batch>,
    ) -> Result<PendingStep> {
        let Some(dev) = store.shared_device().filter(|_| self.on) else {
            return queue_step(spec, store, opt, step, lr, batches);
        };
        self.done += 1;
        if self.done == 1 {
            return queue_step(spec, store, opt, step, lr, batches);
        }
        if self.counts.is_none() {
            dev.graph_record()?;
            self.device = Some(dev.clone());
            let queued = queue_step(spec, store, opt, step, lr, batches);
            let pending = match queued {
                Ok(p) => p,
                Err(e) => {
                    self.off(format!("step graphs off: the recorded step failed: {e}"));
                    return Err(e);
                }
            };
            match dev.graph_build() {
                Ok(c) => self.counts = Some(c),
                // The step ran as usual while it was recorded; only the
                // graph is lost.
                Err(e) => self.off(format!(
                    "step graphs off: the graph could not be built ({e}); steps run as usual"
                )),
            }
            return Ok(pending);
        }
        // The first replay keeps what it needs to run the step again as
        // usual, should the graph fail to launch.
        let retry = (self.replays == 0).then(|| (batches.clone(), opt.step));
        dev.graph_replay()?;
        let pending = match queue_step(spec, store, opt, step, lr, batches) {
            Ok(p) => p,
            Err(e) => {
                dev.graph_abandon();
                return Err(e);
            }
        };
        match dev.graph_launch() {
            Ok(()) => {
                self.replays += 1;
                Ok(pending)
            }
            Err(e) => match retry {
                // Nothing of the step has run: run it as usual.
                Some((batches, opt_step)) => {
                    drop(pending);
                    opt.step = opt_step;
                    store.zero_grad();
                    self.off(format!(
                        "step graphs off: the graph did not launch ({e}); steps run as usual"
                    ));
                    queue_step(spec, store, opt, step, lr, batches)
                }
                None => Err(e),
            },
        }
    }
}

impl Drop for StepGraphs {
    fn drop(&mut self) {
        if let Some(dev) = self.device.take() {
            dev.graph_drop();
        }
    }
}
