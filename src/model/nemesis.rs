//! The NEMESIS masked autoencoder (MODEL.md §5–7), written once against the tape.

use std::cell::Cell;

use super::checkpoint::param_value;
use super::config::ModelConfig;
use super::mask::DualMask;
use super::patch::patchify;
use super::pos_embed::positional_table;
use crate::autograd::{ParamStore, Tape, Var};
use crate::error::{Error, Result};
use crate::ops::{AttentionOptions, AttnDropout, MhaParams};
use crate::rng::{stream_id, Purpose, RngStream};
use crate::tensor::{DType, Readers, SeqLayout, Tensor};

const LN_EPS: f64 = 1e-5;

/// Dropout for one training step: each dropout site (attention
/// probabilities, FFN outputs) takes the next stream id, in the fixed order
/// of the forward pass.
pub struct Dropout {
    p: f64,
    seed: u64,
    step: u64,
    site: Cell<u64>,
}

impl Dropout {
    pub fn new(p: f64, seed: u64, step: u64) -> Self {
        Dropout {
            p,
            seed,
            step,
            site: Cell::new(0),
        }
    }

    fn next(&self) -> RngStream {
        let s = self.site.get();
        self.site.set(s + 1);
        RngStream::new(self.seed, stream_id(Purpose::Dropout, self.step, s))
    }

    fn attention(&self) -> Option<AttnDropout> {
        (self.p > 0.0).then(|| AttnDropout {
            p: self.p,
            rng: self.next(),
        })
    }
}

/// What a training forward pass returns.
pub struct MaeOutput {
    /// Reconstructed patches, `B × N × P`.
    pub pred: Var,
    /// The masked loss of MODEL.md §7 (0-d).
    pub loss: Var,
    /// Encoder output after `encoder.norm`, `B × Nv × E`.
    pub latent: Var,
    /// Σ (pred − target)² over the whole reconstruction (0-d, where the
    /// model runs: on a device it stays there until read), for MODEL.md §7's PSNR.
    pub sse: Tensor,
}

impl MaeOutput {
    /// MODEL.md §7's PSNR of the whole reconstruction against the clean target
    /// (reads the error back from a device).
    pub fn psnr(&self) -> Result<f64> {
        crate::ops::psnr_from_sse(self.sse.scalar_value()?, self.pred.value().numel())
    }
}

/// The model: a configuration and its fixed positional table. Parameters
/// live in a `ParamStore` under their official names.
pub struct Nemesis {
    config: ModelConfig,
    pe: Vec<f64>,
}

impl Nemesis {
    pub fn new(config: ModelConfig) -> Result<Self> {
        config.validate()?;
        let pe = positional_table(&config);
        Ok(Nemesis { config, pe })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn p(&self, tape: &Tape, store: &ParamStore, name: &str) -> Result<Var> {
        let id = store
            .id(name)
            .ok_or_else(|| Error::invalid("model", format!("parameter `{name}` is missing")))?;
        Ok(tape.param(store, id))
    }

    /// `t` moved to the device the parameters live on (a no-op on the CPU).
    fn place(&self, store: &ParamStore, t: Tensor) -> Result<Tensor> {
        match store.shared_device() {
            Some(dev) => t.to_device(&dev),
            None => Ok(t),
        }
    }

    fn dtype(&self, store: &ParamStore) -> Result<DType> {
        store
            .iter()
            .next()
            .map(|(_, p)| p.value.dtype())
            .ok_or_else(|| Error::invalid("model", "the parameter store is empty"))
    }

    /// The positional rows of `ids` per item, `B × n × E`, as a constant.
    fn pe_rows(&self, ids: &[usize], batch: usize, dtype: DType) -> Result<Tensor> {
        let e = self.config.embed_dim;
        let n = ids.len() / batch.max(1);
        let mut v = Vec::with_capacity(ids.len() * e);
        for &i in ids {
            v.extend_from_slice(&self.pe[i * e..(i + 1) * e]);
        }
        Tensor::from_f64_slice(&v, [batch, n, e], dtype)
    }

    #[allow(clippy::too_many_arguments)]
    fn mha(
        &self,
        tape: &Tape,
        store: &ParamStore,
        prefix: &str,
        x: &Var,
        layout: SeqLayout,
        heads: usize,
        dropout: Option<&Dropout>,
    ) -> Result<Var> {
        let w = self.p(tape, store, &format!("{prefix}.in_proj_weight"))?;
        let b = self.p(tape, store, &format!("{prefix}.in_proj_bias"))?;
        let ow = self.p(tape, store, &format!("{prefix}.out_proj.weight"))?;
        let ob = self.p(tape, store, &format!("{prefix}.out_proj.bias"))?;
        let params = MhaParams {
            in_proj_weight: &w,
            in_proj_bias: &b,
            out_proj_weight: &ow,
            out_proj_bias: &ob,
        };
        let opts = AttentionOptions {
            layout,
            heads,
            dropout: dropout.and_then(|d| d.attention()),
        };
        tape.mha(x, &params, &opts)
    }

    fn linear(&self, tape: &Tape, store: &ParamStore, prefix: &str, x: &Var) -> Result<Var> {
        self.linear_read_by(tape, store, prefix, x, Readers::Any)
    }

    /// The linear `prefix`, whose output only `readers` read.
    fn linear_read_by(&self, tape: &Tape, store: &ParamStore, prefix: &str, x: &Var, readers: Readers) -> Result<Var> {
        let w = self.p(tape, store, &format!("{prefix}.weight"))?;
        let b = self.p(tape, store, &format!("{prefix}.bias"))?;
        tape.linear_read_by(x, &w, Some(&b), readers)
    }

    /// The layer norm `prefix`; `readers` say who reads its output (a
    /// mixed-precision device keeps one only GEMMs read as bf16 alone).
    fn layer_norm(&self, tape: &Tape, store: &ParamStore, prefix: &str, x: &Var, readers: Readers) -> Result<Var> {
        let w = self.p(tape, store, &format!("{prefix}.weight"))?;
        let b = self.p(tape, store, &format!("{prefix}.bias"))?;
        tape.layer_norm_read_by(x, &w, &b, LN_EPS, readers)
    }

    /// `(s, layer_norm(s))` with `s = x + k·a` and the norm `prefix`.
    #[allow(clippy::too_many_arguments)]
    fn add_layer_norm(
        &self,
        tape: &Tape,
        store: &ParamStore,
        prefix: &str,
        x: &Var,
        a: &Var,
        k: f64,
        readers: Readers,
    ) -> Result<(Var, Var)> {
        let w = self.p(tape, store, &format!("{prefix}.weight"))?;
        let b = self.p(tape, store, &format!("{prefix}.bias"))?;
        tape.add_layer_norm(x, a, k, &w, &b, LN_EPS, readers)
    }

    fn dropout(&self, tape: &Tape, x: &Var, d: Option<&Dropout>) -> Result<Var> {
        match d {
            Some(d) if d.p > 0.0 => tape.dropout(x, d.p, d.next()),
            _ => Ok(x.clone()),
        }
    }

    /// Whether the parameters live on a device.
    fn on_device(&self, store: &ParamStore) -> bool {
        store
            .iter()
            .next()
            .is_some_and(|(_, p)| p.value.device_storage().is_some())
    }

    /// `MHA_spatial(h) + MHA_depth(h)` with both streams in one pass,
    /// for devices: their QKV projections as one GEMM (weights stacked,
    /// rows × 6E), both attentions over that matrix in place, and their
    /// output projections with the ½ merge as one GEMM over the concatenated
    /// heads (rows × 2E). The same arithmetic as the CPU path, fewer passes
    /// and launches. (On the CPU it measured 7 % slower than two streams —
    /// the interleaved rows cost locality — so the CPU keeps the plain form.)
    #[allow(clippy::too_many_arguments)]
    fn matb_attention_fused(
        &self,
        tape: &Tape,
        store: &ParamStore,
        prefix: &str,
        h: &Var,
        grid: (usize, usize, usize),
        heads: usize,
        dropout: Option<&Dropout>,
    ) -> Result<Var> {
        let (b, t, l) = grid;
        let (sp, dp) = (format!("{prefix}.spatial_attn"), format!("{prefix}.depth_attn"));
        let p = |name: String| self.p(tape, store, &name);
        let w_in = tape.concat(
            &p(format!("{sp}.in_proj_weight"))?,
            &p(format!("{dp}.in_proj_weight"))?,
            0,
        )?;
        let b_in = tape.concat(&p(format!("{sp}.in_proj_bias"))?, &p(format!("{dp}.in_proj_bias"))?, 0)?;
        // The QKV projection's output is read by the attention kernels
        // alone: the bf16 flash kernels take bf16 (and hand back a bf16
        // gradient, which only this projection's backward reads).
        let qkv = tape.linear_read_by(h, &w_in, Some(&b_in), Readers::Bf16)?;
        // Dropout streams in the order of the unfused code: spatial, then depth.
        let spatial = AttentionOptions {
            layout: SeqLayout::spatial(b, t, l),
            heads,
            dropout: dropout.and_then(|d| d.attention()),
        };
        let depth = AttentionOptions {
            layout: SeqLayout::depth(b, t, l),
            heads,
            dropout: dropout.and_then(|d| d.attention()),
        };
        // The heads feed the output projection's GEMM alone (and the
        // attention backward, which reads them as bf16 too).
        let heads_out = tape.attention_pair(&qkv, &spatial, &depth, Readers::Bf16)?;
        let w_out = tape.concat(
            &p(format!("{sp}.out_proj.weight"))?,
            &p(format!("{dp}.out_proj.weight"))?,
            1,
        )?;
        let b_out = tape.add(&p(format!("{sp}.out_proj.bias"))?, &p(format!("{dp}.out_proj.bias"))?)?;
        // Both streams' output projections summed; the ½ is applied where
        // the residual is added (`add_layer_norm`).
        tape.linear(&heads_out, &w_out, Some(&b_out))
    }

    /// MODEL.md §5.4 on `x + f` (`B·T·L × E` rows of a `B × T × L` grid; `f`
    /// the previous block's unadded FFN output, or none). Returns the
    /// block's output as `(x', f')`, its sum `x' + f'` left to the next
    /// layer norm, which adds it in the same pass (`add_layer_norm`).
    #[allow(clippy::too_many_arguments)]
    fn matb(
        &self,
        tape: &Tape,
        store: &ParamStore,
        prefix: &str,
        x: &Var,
        f: Option<&Var>,
        grid: (usize, usize, usize),
        heads: usize,
        dropout: Option<&Dropout>,
    ) -> Result<(Var, Var)> {
        let (b, t, l) = grid;
        // norm1's output feeds the QKV projections alone: GEMMs only (bf16
        // alone in mixed precision), as are the FFN's hidden activation and
        // the gradient it hands back. (norm2's output is also the residual.)
        let norm1 = format!("{prefix}.norm1");
        let (x, h) = match f {
            Some(f) => self.add_layer_norm(tape, store, &norm1, x, f, 1.0, Readers::Bf16)?,
            None => (x.clone(), self.layer_norm(tape, store, &norm1, x, Readers::Bf16)?),
        };
        let both = if self.on_device(store) {
            self.matb_attention_fused(tape, store, prefix, &h, grid, heads, dropout)?
        } else {
            // The CPU reference: the two streams as written in MODEL.md §5.4.
            let os = self.mha(
                tape,
                store,
                &format!("{prefix}.spatial_attn"),
                &h,
                SeqLayout::spatial(b, t, l),
                heads,
                dropout,
            )?;
            let od = self.mha(
                tape,
                store,
                &format!("{prefix}.depth_attn"),
                &h,
                SeqLayout::depth(b, t, l),
                heads,
                dropout,
            )?;
            tape.add(&os, &od)?
        };
        // x + ½(both), then norm2: one pass on a device.
        let norm2 = format!("{prefix}.norm2");
        let (_, x) = self.add_layer_norm(tape, store, &norm2, &x, &both, 0.5, Readers::Any)?;
        // The FFN's first projection feeds GELU + dropout alone, which reads
        // it as bf16 when it is stored so.
        let f = self.linear_read_by(tape, store, &format!("{prefix}.ffn.0"), &x, Readers::Bf16)?;
        let drop = dropout.filter(|d| d.p > 0.0).map(|d| (d.p, d.next()));
        let f = tape.gelu_dropout(&f, drop, Readers::Bf16)?;
        let f = self.linear(tape, store, &format!("{prefix}.ffn.3"), &f)?;
        let f = self.dropout(tape, &f, dropout)?;
        Ok((x, f))
    }

    /// A stack of blocks and the layer norm `norm` after it, whose output
    /// `readers` read; also the outputs of the blocks listed in `taps` (in
    /// that order), for the segmentation decoder's skips.
    #[allow(clippy::too_many_arguments)]
    fn blocks(
        &self,
        tape: &Tape,
        store: &ParamStore,
        stack: &str,
        depth: usize,
        x: Var,
        grid: (usize, usize, usize),
        heads: usize,
        dropout: Option<&Dropout>,
        readers: Readers,
        taps: &[usize],
    ) -> Result<(Var, Vec<Var>)> {
        let (mut x, mut f) = (x, None);
        let mut tapped = vec![None; taps.len()];
        for i in 0..depth {
            let (x2, f2) = self.matb(
                tape,
                store,
                &format!("{stack}.blocks.{i}"),
                &x,
                f.as_ref(),
                grid,
                heads,
                dropout,
            )?;
            if taps.contains(&i) {
                // A block's output is its residual stream plus its FFN
                // branch, which the next block's norm1 would otherwise add.
                let out = tape.add(&x2, &f2)?;
                for (k, _) in taps.iter().enumerate().filter(|(_, &t)| t == i) {
                    tapped[k] = Some(out.clone());
                }
            }
            (x, f) = (x2, Some(f2));
        }
        let tapped = tapped
            .into_iter()
            .zip(taps)
            .map(|(t, i)| t.ok_or_else(|| Error::invalid("model", format!("block {i} of {depth} cannot be tapped"))))
            .collect::<Result<Vec<Var>>>()?;
        let norm = format!("{stack}.norm");
        let out = match f {
            Some(f) => self.add_layer_norm(tape, store, &norm, &x, &f, 1.0, readers)?.1,
            None => self.layer_norm(tape, store, &norm, &x, readers)?,
        };
        Ok((out, tapped))
    }

    /// MODEL.md §5.1: visible patch vectors `B × Nv × P` → `H0`, `B × Nv × E`.
    fn patch_embed(&self, tape: &Tape, store: &ParamStore, x: &Var, dropout: Option<&Dropout>) -> Result<Var> {
        let c = &self.config;
        if !c.use_nemesis_tokens {
            return self.linear(tape, store, "encoder.patch_embed", x);
        }
        let a = "encoder.adaptive_agg";
        let (b, nv) = (x.shape().dims()[0], x.shape().dims()[1]);
        let g = b * nv;
        let (pd, k, e, te) = (c.patch_size[0], c.num_nemesis_tokens, c.embed_dim, c.token_dim());
        let dtype = x.value().dtype();
        let lin = self.linear(tape, store, &format!("{a}.linear"), x)?;

        // Token path: the pd axial rows of each patch, embedded, plus pos_embed.
        let rows = tape.reshape(x, [g * pd, c.patch_row()])?;
        let u = self.linear(tape, store, &format!("{a}.embed"), &rows)?;
        let u = tape.reshape(&u, [g, pd, te])?;
        let pos = tape.reshape(&self.p(tape, store, &format!("{a}.pos_embed"))?, [pd, te])?;
        let u = tape.add(&u, &pos)?;
        // Z = [u_0 … u_{pd−1}, t_0 … t_{K−1}]: the rows of u in places 0..pd,
        // the learned tokens in places pd..pd+K (the same for every patch).
        let zero_row = tape.constant(self.place(store, Tensor::zeros([te], dtype))?);
        let first: Vec<usize> = (0..g).flat_map(|_| 0..pd).collect();
        let z = tape.scatter_rows(&u, &first, pd + k, &zero_row)?;
        let mt = self.p(tape, store, &format!("{a}.mt"))?;
        let last: Vec<usize> = (pd..pd + k).collect();
        let mt_rows = tape.reshape(&tape.scatter_rows(&mt, &last, pd + k, &zero_row)?, [pd + k, te])?;
        let z = tape.add(&z, &mt_rows)?;
        let z = self.layer_norm(
            tape,
            store,
            &format!("{a}.norm_qkv"),
            &tape.reshape(&z, [g * (pd + k), te])?,
            Readers::Any,
        )?;
        let att = self.mha(
            tape,
            store,
            &format!("{a}.attn"),
            &z,
            SeqLayout::contiguous(g, pd + k),
            c.num_heads,
            dropout,
        )?;
        let att = self.linear(tape, store, &format!("{a}.proj"), &att)?;
        let tail: Vec<usize> = (0..g).flat_map(|_| pd..pd + k).collect();
        let tok = tape.gather_rows(&tape.reshape(&att, [g, pd + k, te])?, &tail)?;
        let tok = tape.reshape(&tok, [b, nv, e])?;
        let gate = tape.sigmoid(&self.p(tape, store, &format!("{a}.alpha"))?)?;
        tape.gate_mix(&lin, &tok, &gate)
    }

    /// The encoder on visible patch vectors `B × Nv × P` laid out by `mask`:
    /// returns the latent, `B × Nv × E`.
    fn encoder(
        &self,
        tape: &Tape,
        store: &ParamStore,
        patches: &Var,
        mask: &DualMask,
        dropout: Option<&Dropout>,
        taps: &[usize],
    ) -> Result<(Var, Vec<Var>)> {
        let c = &self.config;
        let (b, nv, e) = (mask.batch(), mask.visible(), c.embed_dim);
        let dtype = patches.value().dtype();
        let h0 = self.patch_embed(tape, store, patches, dropout)?;
        let pe = tape.constant(self.place(store, self.pe_rows(mask.ids_keep(), b, dtype)?)?);
        let s = self.p(tape, store, "encoder.pe_scale")?;
        let x = tape.reshape(&tape.add(&h0, &tape.mul(&pe, &s)?)?, [b * nv, e])?;
        let grid = (b, mask.slices(), mask.per_slice());
        // The latent goes on to the decoder's scatter (and to `encode`).
        let (x, tapped) = self.blocks(
            tape,
            store,
            "encoder",
            c.depth,
            x,
            grid,
            c.num_heads,
            dropout,
            Readers::Any,
            taps,
        )?;
        let tapped = tapped
            .iter()
            .map(|t| tape.reshape(t, [b, nv, e]))
            .collect::<Result<Vec<Var>>>()?;
        Ok((tape.reshape(&x, [b, nv, e])?, tapped))
    }

    /// MODEL.md §6: latent `B × Nv × E` → predicted patches `B × N × P`.
    fn decoder(
        &self,
        tape: &Tape,
        store: &ParamStore,
        latent: &Var,
        mask: &DualMask,
        dropout: Option<&Dropout>,
    ) -> Result<Var> {
        let c = &self.config;
        let (b, n, e, p) = (mask.batch(), c.num_tokens(), c.embed_dim, c.patch_dim());
        let dtype = latent.value().dtype();
        let fill = tape.reshape(&self.p(tape, store, "decoder.mask_token")?, [e])?;
        // The decoder's scale takes the encoder's value (kept quirk, MODEL.md §6).
        let enc_scale = param_value(store, "encoder.pe_scale")?;
        let dec_id = store
            .id("decoder.pe_scale")
            .ok_or_else(|| Error::invalid("model", "parameter `decoder.pe_scale` is missing"))?;
        let s = tape.param_as(store, dec_id, enc_scale)?;
        let pe = tape.constant(self.place(store, Tensor::from_f64_slice(&self.pe, [n, e], dtype)?)?);
        let y = tape.scatter_rows_add_pe(latent, mask.ids_keep(), n, &fill, &pe, &s)?;
        let x = tape.reshape(&y, [b * n, e])?;
        let grid = (b, c.grid()[0], c.plane_tokens());
        let heads = c.decoder_num_heads;
        // The decoder's final norm feeds the head's GEMM alone.
        let x = self
            .blocks(
                tape,
                store,
                "decoder",
                c.decoder_depth,
                x,
                grid,
                heads,
                dropout,
                Readers::Bf16,
                &[],
            )?
            .0;
        let x = self.linear(tape, store, "decoder.head", &x)?;
        tape.reshape(&x, [b, n, p])
    }

    fn check_input(&self, store: &ParamStore, x: &Tensor, what: &'static str) -> Result<DType> {
        let dtype = self.dtype(store)?;
        if x.dtype() != dtype {
            return Err(Error::dtype_mismatch(what, x.dtype(), dtype));
        }
        Ok(dtype)
    }

    /// The training forward pass (MODEL.md §4–7): the encoder sees the visible
    /// tokens of `noisy`, the decoder reconstructs every token, the loss is
    /// taken against `clean` on the masked tokens. `dropout` is `None` at
    /// inference and in the fixtures.
    pub fn forward_train(
        &self,
        tape: &Tape,
        store: &ParamStore,
        noisy: &Tensor,
        clean: &Tensor,
        mask: &DualMask,
        dropout: Option<&Dropout>,
    ) -> Result<MaeOutput> {
        self.check_input(store, noisy, "forward")?;
        self.check_input(store, clean, "forward")?;
        if noisy.shape() != clean.shape() {
            return Err(Error::shape_mismatch(
                "forward",
                noisy.shape(),
                clean.shape(),
                "noisy input and clean target",
            ));
        }
        let input = tape.constant(self.place(store, patchify(&self.config, &noisy.to_cpu()?)?)?);
        let target = self.place(store, patchify(&self.config, &clean.to_cpu()?)?)?;
        crate::autograd::profile::charge("input (noise, patchify)");
        let b = input.shape().dims()[0];
        if mask.batch() != b || mask.slices() != self.config.grid()[0] {
            return Err(Error::invalid(
                "forward",
                format!("the mask is for a batch of {}, the input has {b}", mask.batch()),
            ));
        }
        let visible = tape.gather_rows(&input, mask.ids_keep())?;
        self.forward_tokens(tape, store, &visible, target, mask, dropout)
    }

    /// `forward_train` from the visible rows already cut out of the noisy
    /// input (`B × Nv × P` on the host, `noisy_visible_tokens`), as the
    /// CPU step makes them; `clean` is the whole clean volume.
    pub fn forward_train_visible(
        &self,
        tape: &Tape,
        store: &ParamStore,
        visible: Tensor,
        clean: &Tensor,
        mask: &DualMask,
        dropout: Option<&Dropout>,
    ) -> Result<MaeOutput> {
        self.check_input(store, &visible, "forward")?;
        self.check_input(store, clean, "forward")?;
        let target = self.place(store, patchify(&self.config, &clean.to_cpu()?)?)?;
        let visible = tape.constant(self.place(store, visible)?);
        crate::autograd::profile::charge("input (noise, patchify)");
        self.forward_tokens(tape, store, &visible, target, mask, dropout)
    }

    /// The training forward pass from token rows already made: `visible`
    /// (`B × Nv × P`, the noisy patches at `mask.ids_keep()`, e.g. from the
    /// GPU's fused superpatch-input kernel) and the clean `target`
    /// (`B × N × P`).
    pub fn forward_tokens(
        &self,
        tape: &Tape,
        store: &ParamStore,
        visible: &Var,
        target: Tensor,
        mask: &DualMask,
        dropout: Option<&Dropout>,
    ) -> Result<MaeOutput> {
        let c = &self.config;
        let (b, n, p) = (mask.batch(), c.num_tokens(), c.patch_dim());
        if visible.shape().dims() != [b, mask.visible(), p] || target.dims() != [b, n, p] {
            return Err(Error::invalid(
                "forward",
                format!(
                    "token rows {} and target {} do not fit a batch of {b} with {} visible of {n} tokens of {p}",
                    visible.shape(),
                    target.shape(),
                    mask.visible()
                ),
            ));
        }
        let dtype = target.dtype();
        let latent = self.encoder(tape, store, visible, mask, dropout, &[])?.0;
        let pred = self.decoder(tape, store, &latent, mask, dropout)?;
        let target = tape.constant(target);
        // `pred` is the decoder head's output: its gradient feeds that
        // linear's two backward GEMMs and nothing else.
        let (loss, sse) = tape.masked_mse_with_sse(&pred, &target, &mask.mask_tensor(dtype), Readers::Bf16)?;
        Ok(MaeOutput {
            pred,
            loss,
            latent,
            sse,
        })
    }

    /// The encoder at inference (no masking, no dropout): `B × N × E`.
    pub fn encode(&self, tape: &Tape, store: &ParamStore, x: &Tensor) -> Result<Var> {
        self.check_input(store, x, "encode")?;
        let patches = tape.constant(self.place(store, patchify(&self.config, &x.to_cpu()?)?)?);
        let b = patches.shape().dims()[0];
        let mask = DualMask::full(&self.config, b);
        Ok(self.encoder(tape, store, &patches, &mask, None, &[])?.0)
    }

    /// The encoder on whole superpatches (no masking, no noise) for the
    /// segmentation model (SPEC §14): its final tokens after `encoder.norm`
    /// and the outputs of blocks `taps`, each `B × N × E` in grid order.
    /// `dropout` applies in training only.
    pub fn encode_with_skips(
        &self,
        tape: &Tape,
        store: &ParamStore,
        x: &Tensor,
        taps: &[usize],
        dropout: Option<&Dropout>,
    ) -> Result<(Var, Vec<Var>)> {
        self.check_input(store, x, "encode")?;
        let patches = tape.constant(self.place(store, patchify(&self.config, &x.to_cpu()?)?)?);
        let b = patches.shape().dims()[0];
        let mask = DualMask::full(&self.config, b);
        self.encoder(tape, store, &patches, &mask, dropout, taps)
    }
}
