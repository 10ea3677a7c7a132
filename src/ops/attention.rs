use super::{backward_fn, on_device};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::attention::{self, AttnShape};
use crate::backend::cpu::attention_tiled;
use crate::backend::cpu::CpuFloat;
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::{Readers, SeqLayout, Tensor};

pub use crate::backend::cpu::attention::AttnDropout;

/// How an attention op groups rows and splits heads.
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions {
    pub layout: SeqLayout,
    pub heads: usize,
    /// Dropout on the probabilities (training only).
    pub dropout: Option<AttnDropout>,
}

impl Tape {
    /// Multi-head attention core over the output of a fused QKV projection
    /// (`[.., 3E]`, rows grouped into sequences by `opts.layout`); returns
    /// `[.., E]` with heads concatenated, in the input's row order. The MHA of
    /// MODEL.md §5.2 is `linear(in_proj)` → this → `linear(out_proj)`.
    pub fn attention(&self, qkv: &Var, opts: &AttentionOptions) -> Result<Var> {
        const OP: &str = "attention";
        let s = qkv.shape();
        let three_e = s.last();
        if s.rank() == 0 || three_e == 0 || !three_e.is_multiple_of(3) {
            return Err(Error::bad_shape(
                OP,
                s,
                "the last dimension must be 3·E (q, k, v), E > 0",
            ));
        }
        let e = three_e / 3;
        if opts.heads == 0 || !e.is_multiple_of(opts.heads) {
            return Err(Error::bad_shape(
                OP,
                s,
                format!("E = {e} must be divisible by the number of heads ({})", opts.heads),
            ));
        }
        if opts.layout.len == 0 && opts.layout.num_seqs() > 0 {
            return Err(Error::invalid(OP, "sequence length 0"));
        }
        let rows = s.rows();
        opts.layout.validate(rows)?;
        if let Some(d) = &opts.dropout {
            if !(0.0..1.0).contains(&d.p) {
                return Err(Error::invalid(
                    OP,
                    format!("dropout probability must be in [0, 1), got {}", d.p),
                ));
            }
        }
        let dropout = opts.dropout.filter(|d| d.p > 0.0);
        let sh = AttnShape {
            layout: opts.layout,
            heads: opts.heads,
            width: e,
        };
        let mut ys = s.dims().to_vec();
        if let Some(last) = ys.last_mut() {
            *last = e;
        }
        if on_device(&[qkv]) {
            let (layout, heads) = (opts.layout, opts.heads);
            let drop = dropout.map(|d| (d.p, d.rng));
            let (y, lse) = gpu::attention(qkv.value(), layout, heads, drop)?;
            let (qv, yv) = (qkv.value().clone(), y.clone());
            return Ok(self.record(
                y,
                &[qkv],
                backward_fn(OP, move |g, _| {
                    Ok(vec![Some(gpu::attention_backward(
                        g, &qv, &yv, &lse, layout, heads, drop,
                    )?)])
                }),
            ));
        }
        let dtype = qkv.value().dtype();
        let (y, saved) = with_dtype!(dtype, T => {
            let qv = qkv.value().cpu_slice::<T>()?;
            let mut y = vec![T::zero(); qv.len() / (3 * sh.width).max(1) * sh.width];
            let saved = cpu_forward_into(qv, &sh, dropout.as_ref(), &mut y);
            (Tensor::from_vec(y, ys)?, saved)
        });
        let qv = qkv.value().clone();
        Ok(self.record(
            y,
            &[qkv],
            backward_fn(OP, move |g, _| {
                with_dtype!(dtype, T => {
                    let qs = qv.cpu_slice::<T>()?;
                    let mut d = vec![T::zero(); qs.len()];
                    cpu_backward_into(g.cpu_slice::<T>()?, qs, &sh, dropout.as_ref(), saved.as_ref(), &mut d);
                    Ok(vec![Some(Tensor::from_vec(d, qv.shape())?)])
                })
            }),
        ))
    }
}

/// The CPU attention into the rows of `y` the layout owns: the tiled f32
/// pass for sequences of up to `attention_tiled::MAX_LEN` rows (returning
/// the probabilities its backward reads), else (and for f64, the gradient
/// checks' type) the plain GEMM reference that the tiled pass is checked
/// against.
fn cpu_forward_into<T: CpuFloat>(
    qkv: &[T],
    sh: &AttnShape,
    dropout: Option<&AttnDropout>,
    y: &mut [T],
) -> Option<attention_tiled::Saved> {
    if sh.layout.len <= attention_tiled::MAX_LEN {
        if let (Some(qkv), Some(y)) = (T::as_f32(qkv), T::as_f32_mut(y)) {
            return Some(attention_tiled::forward_into(qkv, sh, dropout, y));
        }
    }
    attention::forward_plain_into(qkv, sh, dropout, y);
    None
}

/// The gradient counterpart of `cpu_forward_into`, into `dqkv`'s rows:
/// the tiled pass where the forward saved its probabilities.
fn cpu_backward_into<T: CpuFloat>(
    g: &[T],
    qkv: &[T],
    sh: &AttnShape,
    dropout: Option<&AttnDropout>,
    saved: Option<&attention_tiled::Saved>,
    dqkv: &mut [T],
) {
    if let (Some(saved), Some(g), Some(qkv), Some(dqkv)) = (saved, T::as_f32(g), T::as_f32(qkv), T::as_f32_mut(dqkv)) {
        return attention_tiled::backward_into(g, qkv, sh, dropout, saved, dqkv);
    }
    attention::backward_plain_into(g, qkv, sh, dropout, dqkv)
}

/// The four tensors of a PyTorch `nn.MultiheadAttention` (MODEL.md §5.2).
#[derive(Clone, Copy, Debug)]
pub struct MhaParams<'a> {
    /// `3E × E`, rows `[Wq; Wk; Wv]`.
    pub in_proj_weight: &'a Var,
    pub in_proj_bias: &'a Var,
    pub out_proj_weight: &'a Var,
    pub out_proj_bias: &'a Var,
}

impl Tape {
    /// Full multi-head self-attention: fused QKV projection, attention over
    /// the sequences of `opts.layout`, output projection.
    pub fn mha(&self, x: &Var, p: &MhaParams, opts: &AttentionOptions) -> Result<Var> {
        let qkv = self.linear(x, p.in_proj_weight, Some(p.in_proj_bias))?;
        let a = self.attention(&qkv, opts)?;
        self.linear(&a, p.out_proj_weight, Some(p.out_proj_bias))
    }
}

impl Tape {
    /// Both attention streams of a MATB over one fused QKV matrix
    /// (`rows × 6E`: stream `a`'s q, k, v in columns 0..3E, `b`'s in
    /// 3E..6E), giving `rows × 2E` (a's output, then b's): what one fused
    /// output projection reads. The same arithmetic as two `attention` calls.
    /// `readers`: who reads the output and the gradient handed back to
    /// `qkv` (with `Readers::Bf16` a device's bf16 flash kernels store both
    /// as bf16 alone).
    pub fn attention_pair(
        &self,
        qkv: &Var,
        a: &AttentionOptions,
        b: &AttentionOptions,
        readers: Readers,
    ) -> Result<Var> {
        const OP: &str = "attention_pair";
        let s = qkv.shape();
        if s.rank() != 2 || s.last() == 0 || !s.last().is_multiple_of(6) {
            return Err(Error::bad_shape(OP, s, "expected rows × 6E (two fused QKV blocks)"));
        }
        let (rows, e) = (s.dims()[0], s.last() / 6);
        for o in [a, b] {
            if o.heads == 0 || e % o.heads != 0 {
                return Err(Error::bad_shape(
                    OP,
                    s,
                    format!("E = {e} must be divisible by the number of heads ({})", o.heads),
                ));
            }
            o.layout.validate(rows)?;
            if let Some(d) = &o.dropout {
                if !(0.0..1.0).contains(&d.p) {
                    return Err(Error::invalid(
                        OP,
                        format!("dropout probability must be in [0, 1), got {}", d.p),
                    ));
                }
            }
        }
        let stream = |o: &AttentionOptions, which: usize| {
            let d = o.dropout.filter(|d| d.p > 0.0);
            (
                AttnShape {
                    layout: o.layout.interleaved(2, which),
                    heads: o.heads,
                    width: e,
                },
                d,
            )
        };
        let (sa, da) = stream(a, 0);
        let (sb, db) = stream(b, 1);
        if on_device(&[qkv]) {
            // The device takes the layouts over the token rows and
            // interleaves them itself.
            let ga = gpu::Stream {
                layout: a.layout,
                heads: a.heads,
                dropout: da.map(|d| (d.p, d.rng)),
            };
            let gb = gpu::Stream {
                layout: b.layout,
                heads: b.heads,
                dropout: db.map(|d| (d.p, d.rng)),
            };
            let (y, lse) = gpu::attention_pair(qkv.value(), ga, gb, readers)?;
            let (qv, yv) = (qkv.value().clone(), y.clone());
            return Ok(self.record(
                y,
                &[qkv],
                backward_fn(OP, move |g, _| {
                    Ok(vec![Some(gpu::attention_pair_backward(
                        g, &qv, &yv, &lse, ga, gb, readers,
                    )?)])
                }),
            ));
        }
        let dtype = qkv.value().dtype();
        let (y, saved_a, saved_b) = with_dtype!(dtype, T => {
            let qv = qkv.value().cpu_slice::<T>()?;
            // Each stream fills its own rows of the 2·rows × E view.
            let mut y = vec![T::zero(); rows * 2 * e];
            let saved_a = cpu_forward_into(qv, &sa, da.as_ref(), &mut y);
            let saved_b = cpu_forward_into(qv, &sb, db.as_ref(), &mut y);
            (Tensor::from_vec(y, [rows, 2 * e])?, saved_a, saved_b)
        });
        let qv = qkv.value().clone();
        Ok(self.record(
            y,
            &[qkv],
            backward_fn(OP, move |g, _| {
                with_dtype!(dtype, T => {
                    let (gs, qs) = (g.cpu_slice::<T>()?, qv.cpu_slice::<T>()?);
                    let mut d = vec![T::zero(); qs.len()];
                    cpu_backward_into(gs, qs, &sa, da.as_ref(), saved_a.as_ref(), &mut d);
                    cpu_backward_into(gs, qs, &sb, db.as_ref(), saved_b.as_ref(), &mut d);
                    Ok(vec![Some(Tensor::from_vec(d, qv.shape())?)])
                })
            }),
        ))
    }
}
