//! `nemesis bench seg-step`: whole segmentation training steps (SPEC §14:
//! the encoder, the UNETR-style decoder, Dice + CE, AdamW) at a preset's
//! shapes, beside tools/torch_seg_baseline.py.

use std::time::Instant;

use clap::Args;

use crate::autograd::{ParamStore, Tape};
use crate::error::{Error, Result};
use crate::model::{init_params, Dropout};
use crate::rng::RngStream;
use crate::seg::{add_decoder_params, Mode, RunningStats, SegConfig, SegModel};
use crate::tensor::{DType, Tensor};
use crate::train::{AdamW, AdamWConfig};

#[derive(Args, Debug)]
pub struct SegStepArgs {
    #[command(flatten)]
    pub model: super::model_source::ModelSource,
    /// Crops per step.
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Classes, background included (the phantoms have 9).
    #[arg(long, default_value_t = 9)]
    pub classes: usize,
    /// Timed steps, after one untimed warm-up step.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Train the decoder alone.
    #[arg(long)]
    pub freeze_encoder: bool,
    /// Where to run: cpu, auto (CUDA when a usable GPU is there, else the
    /// CPU; says which), cuda, or emu (the CUDA kernels on the CPU, slow).
    #[arg(long, value_enum, default_value_t = super::device::DeviceArg::Auto)]
    pub device: super::device::DeviceArg,
}

pub fn run(a: &SegStepArgs) -> Result<()> {
    if a.batch == 0 || a.steps == 0 {
        return Err(Error::invalid(
            "bench seg-step",
            "--batch and --steps must be at least 1",
        ));
    }
    let dev = super::device::select(a.device, false, 0)?;
    let enc = a.model.load()?;
    let config = SegConfig::new(enc.clone(), a.classes)?;
    let full = init_params(&enc, 0, DType::F32)?;
    let mut store = ParamStore::new();
    for (_, p) in full.iter().filter(|(_, p)| p.name.starts_with("encoder.")) {
        store.add(p.name.clone(), p.value.clone())?;
    }
    add_decoder_params(&config, &mut store, 0, DType::F32)?;
    if let Some(d) = &dev {
        store = store.to_device(d)?;
    }
    let model = SegModel::new(config.clone())?;
    let mut stats = RunningStats::new(&config);
    let adamw = AdamWConfig {
        betas: (0.9, 0.999),
        eps: 1e-8,
        weight_decay: 1e-5,
    };
    let mut opt = AdamW::new(adamw, &store);
    let [d, h, w] = enc.superpatch_size;
    let mut x = vec![0f32; a.batch * d * h * w];
    RngStream::new(1, 1).fill_uniform(0, &mut x);
    let x = Tensor::from_vec(x, [a.batch, 1, d, h, w])?;
    let labels: Vec<u32> = (0..a.batch * d * h * w)
        .map(|i| RngStream::new(1, 2).bits(i as u64) % a.classes as u32)
        .collect();
    let mut times = Vec::new();
    for s in 0..=a.steps {
        let t0 = Instant::now();
        let tape = Tape::new();
        let dropout = Dropout::new(enc.dropout, 0, s as u64);
        let mode = Mode::Train {
            dropout: Some(&dropout),
            freeze_encoder: a.freeze_encoder,
        };
        let (logits, moments) = model.forward(&tape, &store, &stats, &x, mode)?;
        let loss = tape.dice_ce(&logits, &labels)?;
        store.zero_grad();
        tape.backward(&loss, &mut store)?;
        stats.update(&moments)?;
        opt.update(&mut store, 1e-4)?;
        let value = loss.value().scalar_value()?;
        let dt = t0.elapsed().as_secs_f64();
        eprintln!(
            "step {s}: {dt:.3} s, loss {value:.4}{}",
            if s == 0 { " (warm-up)" } else { "" }
        );
        if s > 0 {
            times.push(dt);
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    let isa = crate::backend::cpu::peak::instruction_set();
    let where_ = match &dev {
        Some(d) => d.name(),
        None => format!("CPU, {} threads, {isa}", rayon::current_num_threads()),
    };
    println!(
        "nemesis segmentation step, {:?} superpatch, E {}, decoder {:?}, batch {}, {} classes{}, {where_}: \
         median step {med:.3} s (min {:.3}, max {:.3}), {:.2} crops/s",
        enc.superpatch_size,
        enc.embed_dim,
        config.decoder_channels,
        a.batch,
        a.classes,
        if a.freeze_encoder { ", encoder frozen" } else { "" },
        times[0],
        times[times.len() - 1],
        a.batch as f64 / med
    );
    Ok(())
}
