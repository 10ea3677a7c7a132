//! The segmentation model of SPEC §14: the pretrained encoder (no masking,
//! no noise) and a UNETR-style decoder — three up-blocks (trilinear ×2,
//! then twice Conv3d 3³ + BatchNorm3d + ReLU), two skips from encoder
//! blocks projected by 1³ convolutions, and a 1³ head to the classes.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::autograd::{ParamStore, Tape, Var};
use crate::error::{Error, Result};
use crate::model::{Dropout, ModelConfig, Nemesis};
use crate::ops::{BatchMoments, BatchStats};
use crate::rng::{stream_id, Purpose, RngStream};
use crate::tensor::{DType, Tensor};

/// The paper preset's up-block widths (E = 768).
pub const PAPER_CHANNELS: [usize; 3] = [192, 96, 48];
/// PyTorch's BatchNorm3d defaults.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// The encoder's configuration and the decoder's two keys.
#[derive(Clone, Debug, PartialEq)]
pub struct SegConfig {
    pub encoder: ModelConfig,
    /// Classes, background (label 0) included.
    pub num_classes: usize,
    pub decoder_channels: [usize; 3],
}

impl SegConfig {
    /// The decoder for `encoder` with `num_classes` and widths scaled from
    /// the paper's by `E / 768` (rounded, at least 4): (48, 24, 12) for
    /// `small`, (16, 8, 4) for `tiny`.
    pub fn new(encoder: ModelConfig, num_classes: usize) -> Result<Self> {
        let c = SegConfig {
            decoder_channels: scaled_channels(encoder.embed_dim),
            encoder,
            num_classes,
        };
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        self.encoder.validate()?;
        if !(2..=256).contains(&self.num_classes) {
            return Err(Error::Config(format!(
                "num_classes {} must be 2…256 (background included)",
                self.num_classes
            )));
        }
        if self.decoder_channels.iter().any(|&c| c == 0 || c > 4096) {
            return Err(Error::Config(format!(
                "decoder_channels {:?} must each be 1…4096",
                self.decoder_channels
            )));
        }
        Ok(())
    }

    /// The encoder blocks whose outputs are the skips, deeper first:
    /// `depth/2` and `depth/6`, clamped to the blocks there are.
    pub fn skip_blocks(&self) -> [usize; 2] {
        let d = self.encoder.depth;
        [d / 2, d / 6].map(|b| b.min(d.saturating_sub(1)))
    }

    /// The encoder's keys (MODEL.md §9) plus `num_classes` and
    /// `decoder_channels`, as the checkpoint's `config`.
    pub fn to_json(&self) -> String {
        let mut v: Value = serde_json::to_value(&self.encoder).unwrap_or(Value::Null);
        if let Some(o) = v.as_object_mut() {
            o.insert("num_classes".into(), self.num_classes.into());
            o.insert("decoder_channels".into(), self.decoder_channels.to_vec().into());
        }
        v.to_string()
    }

    /// Parses `to_json`'s form; a configuration without `num_classes` is a
    /// pretraining checkpoint's and is refused as such.
    pub fn from_json(text: &str) -> Result<Self> {
        let mut v: Value = serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        let o = v
            .as_object_mut()
            .ok_or_else(|| Error::Config("the configuration is not a JSON object".into()))?;
        let classes = o.remove("num_classes").ok_or_else(|| {
            Error::Config(
                "no `num_classes`: this is an encoder (pretraining) configuration, not a segmentation model's".into(),
            )
        })?;
        let num_classes = classes
            .as_u64()
            .ok_or_else(|| Error::Config(format!("num_classes {classes} is not a count")))?
            as usize;
        let channels = o.remove("decoder_channels");
        // The MAE decoder's keys may be absent; the encoder's defaults fill them.
        let encoder = ModelConfig::from_json(&Value::Object(o.clone()).to_string())?;
        let decoder_channels = match channels {
            None => scaled_channels(encoder.embed_dim),
            Some(c) => serde_json::from_value::<[usize; 3]>(c.clone())
                .map_err(|_| Error::Config(format!("decoder_channels {c} is not three widths")))?,
        };
        let c = SegConfig {
            encoder,
            num_classes,
            decoder_channels,
        };
        c.validate()?;
        Ok(c)
    }

    /// Input channels of up-block `i`'s first convolution.
    fn block_in(&self, i: usize) -> usize {
        if i == 0 {
            self.encoder.embed_dim
        } else {
            self.decoder_channels[i - 1]
        }
    }
}

/// The paper's widths scaled by `E / 768`, rounded, at least 4.
pub fn scaled_channels(embed_dim: usize) -> [usize; 3] {
    PAPER_CHANNELS.map(|c| ((c * embed_dim + 384) / 768).max(4))
}

/// How a decoder parameter starts (PyTorch's defaults for each layer).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DecoderInit {
    /// `U(−1/√fan_in, 1/√fan_in)`: Conv3d weight and bias.
    Uniform {
        fan_in: usize,
    },
    Ones,
    Zeros,
}

/// One decoder parameter: its public name, shape and start.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: DecoderInit,
}

/// The decoder's trainable parameters, in a fixed order.
pub fn decoder_specs(c: &SegConfig) -> Vec<DecoderSpec> {
    let spec = |name: String, shape: Vec<usize>, init| DecoderSpec { name, shape, init };
    let mut out = Vec::new();
    for i in 0..3 {
        let ch = c.decoder_channels[i];
        for j in 0..2 {
            let cin = if j == 0 { c.block_in(i) } else { ch };
            let p = format!("decoder.up_blocks.{i}.conv.{j}");
            out.push(spec(
                format!("{p}.0.weight"),
                vec![ch, cin, 3, 3, 3],
                DecoderInit::Uniform { fan_in: cin * 27 },
            ));
            out.push(spec(format!("{p}.1.weight"), vec![ch], DecoderInit::Ones));
            out.push(spec(format!("{p}.1.bias"), vec![ch], DecoderInit::Zeros));
        }
    }
    let e = c.encoder.embed_dim;
    for i in 0..2 {
        let ch = c.decoder_channels[i];
        let fan = DecoderInit::Uniform { fan_in: e };
        out.push(spec(
            format!("decoder.skip_projs.{i}.weight"),
            vec![ch, e, 1, 1, 1],
            fan,
        ));
        out.push(spec(format!("decoder.skip_projs.{i}.bias"), vec![ch], fan));
    }
    let (k, last) = (c.num_classes, c.decoder_channels[2]);
    let fan = DecoderInit::Uniform { fan_in: last };
    out.push(spec("decoder.head.weight".into(), vec![k, last, 1, 1, 1], fan));
    out.push(spec("decoder.head.bias".into(), vec![k], fan));
    out
}

/// The BatchNorm layers' prefixes (`decoder.up_blocks.{i}.conv.{j}.1`) and widths.
pub fn batch_norms(c: &SegConfig) -> Vec<(String, usize)> {
    (0..3)
        .flat_map(|i| (0..2).map(move |j| (format!("decoder.up_blocks.{i}.conv.{j}.1"), c.decoder_channels[i])))
        .collect()
}

/// BatchNorm running statistics, by layer prefix: (mean, variance).
#[derive(Clone, Debug, PartialEq)]
pub struct RunningStats(pub BTreeMap<String, (Vec<f64>, Vec<f64>)>);

impl RunningStats {
    /// PyTorch's start: mean 0, variance 1.
    pub fn new(c: &SegConfig) -> Self {
        RunningStats(
            batch_norms(c)
                .into_iter()
                .map(|(p, ch)| (p, (vec![0.0; ch], vec![1.0; ch])))
                .collect(),
        )
    }

    /// `running = (1 − momentum)·running + momentum·batch`, per layer,
    /// kept in f32 as PyTorch's buffers are (and as checkpoints store them,
    /// so a resumed run continues from exactly these values).
    pub fn update(&mut self, moments: &[(String, BatchMoments)]) -> Result<()> {
        for (prefix, m) in moments {
            let (mean, var) = self
                .0
                .get_mut(prefix)
                .ok_or_else(|| Error::invalid("segmentation", format!("no running statistics for `{prefix}`")))?;
            for (r, b) in mean.iter_mut().zip(&m.mean) {
                *r = ((1.0 - BN_MOMENTUM) * *r + BN_MOMENTUM * b) as f32 as f64;
            }
            for (r, b) in var.iter_mut().zip(&m.var_unbiased) {
                *r = ((1.0 - BN_MOMENTUM) * *r + BN_MOMENTUM * b) as f32 as f64;
            }
        }
        Ok(())
    }
}

/// Adds the decoder's parameters to `store` (which holds the encoder's),
/// drawn from `seed` as PyTorch's layers start.
pub fn add_decoder_params(c: &SegConfig, store: &mut ParamStore, seed: u64, dtype: DType) -> Result<()> {
    for (i, s) in decoder_specs(c).into_iter().enumerate() {
        let n: usize = s.shape.iter().product();
        let v: Vec<f64> = match s.init {
            DecoderInit::Ones => vec![1.0; n],
            DecoderInit::Zeros => vec![0.0; n],
            DecoderInit::Uniform { fan_in } => {
                let bound = 1.0 / (fan_in as f64).sqrt();
                let mut u = vec![0f32; n];
                RngStream::new(seed, stream_id(Purpose::Init, 1, 0x5E6 + i as u64)).fill_uniform(0, &mut u);
                u.iter().map(|&r| (2.0 * r as f64 - 1.0) * bound).collect()
            }
        };
        store.add(s.name, Tensor::from_f64_slice(&v, s.shape, dtype)?)?;
    }
    Ok(())
}

/// How a forward pass runs.
pub enum Mode<'a> {
    /// Batch statistics (returned for the running update); the encoder's
    /// dropout when given; the encoder frozen (run apart, no gradient)
    /// when `freeze_encoder`.
    Train {
        dropout: Option<&'a Dropout>,
        freeze_encoder: bool,
    },
    /// Running statistics, no dropout.
    Eval,
}

/// The model: the encoder and the decoder's configuration.
pub struct SegModel {
    config: SegConfig,
    encoder: Nemesis,
}

impl SegModel {
    pub fn new(config: SegConfig) -> Result<Self> {
        config.validate()?;
        Ok(SegModel {
            encoder: Nemesis::new(config.encoder.clone())?,
            config,
        })
    }

    pub fn config(&self) -> &SegConfig {
        &self.config
    }

    fn p(&self, tape: &Tape, store: &ParamStore, name: &str) -> Result<Var> {
        let id = store
            .id(name)
            .ok_or_else(|| Error::invalid("segmentation", format!("parameter `{name}` is missing")))?;
        Ok(tape.param(store, id))
    }

    /// Tokens `B × N × E` in grid order → `B × E × Dp × Hp × Wp`.
    fn to_grid(&self, tape: &Tape, tokens: &Var) -> Result<Var> {
        let d = tokens.shape().dims().to_vec();
        let [gd, gh, gw] = self.config.encoder.grid();
        let x = tape.transpose12(tokens)?;
        tape.reshape(&x, [d[0], d[2], gd, gh, gw])
    }

    /// Logits `B × classes × D × H × W` of superpatches `x` (`B × 1 × D × H
    /// × W`, windowed to [0, 1]), and in training the batch moments of
    /// each BatchNorm for the running update.
    pub fn forward(
        &self,
        tape: &Tape,
        store: &ParamStore,
        stats: &RunningStats,
        x: &Tensor,
        mode: Mode,
    ) -> Result<(Var, Vec<(String, BatchMoments)>)> {
        let c = &self.config;
        let taps = c.skip_blocks();
        let (last, skips) = match mode {
            Mode::Train {
                freeze_encoder: true, ..
            } => {
                let t = Tape::inference();
                let (l, s) = self.encoder.encode_with_skips(&t, store, x, &taps, None)?;
                let keep = |v: &Var| tape.constant(v.value().clone());
                (keep(&l), s.iter().map(keep).collect())
            }
            Mode::Train { dropout, .. } => self.encoder.encode_with_skips(tape, store, x, &taps, dropout)?,
            Mode::Eval => self.encoder.encode_with_skips(tape, store, x, &taps, None)?,
        };
        let train = matches!(mode, Mode::Train { .. });
        let mut h = self.to_grid(tape, &last)?;
        let mut moments = Vec::new();
        for i in 0..3 {
            let d = h.shape().dims().to_vec();
            h = tape.resize3d(&h, [2 * d[2], 2 * d[3], 2 * d[4]])?;
            for j in 0..2 {
                let p = format!("decoder.up_blocks.{i}.conv.{j}");
                h = tape.conv3d(&h, &self.p(tape, store, &format!("{p}.0.weight"))?, None, 1)?;
                let bn = format!("{p}.1");
                let how = if train {
                    BatchStats::Batch
                } else {
                    let (mean, var) = stats
                        .0
                        .get(&bn)
                        .ok_or_else(|| Error::invalid("segmentation", format!("no running statistics for `{bn}`")))?;
                    BatchStats::Running {
                        mean: mean.clone(),
                        var: var.clone(),
                    }
                };
                let gamma = self.p(tape, store, &format!("{bn}.weight"))?;
                let beta = self.p(tape, store, &format!("{bn}.bias"))?;
                let (y, m) = tape.batch_norm3d(&h, &gamma, &beta, &how, BN_EPS)?;
                if let Some(m) = m {
                    moments.push((bn, m));
                }
                h = tape.relu(&y)?;
            }
            if let Some(skip) = skips.get(i) {
                let p = format!("decoder.skip_projs.{i}");
                let s = self.to_grid(tape, skip)?;
                let s = tape.conv3d(
                    &s,
                    &self.p(tape, store, &format!("{p}.weight"))?,
                    Some(&self.p(tape, store, &format!("{p}.bias"))?),
                    0,
                )?;
                let d = h.shape().dims().to_vec();
                let s = tape.resize3d(&s, [d[2], d[3], d[4]])?;
                h = tape.add(&h, &s)?;
            }
        }
        let mut logits = tape.conv3d(
            &h,
            &self.p(tape, store, "decoder.head.weight")?,
            Some(&self.p(tape, store, "decoder.head.bias")?),
            0,
        )?;
        let want = &x.dims()[2..];
        if &logits.shape().dims()[2..] != want {
            logits = tape.resize3d(&logits, [want[0], want[1], want[2]])?;
        }
        Ok((logits, moments))
    }
}
