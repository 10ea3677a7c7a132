//! The official parameter names and shapes (MODEL.md §5, 6) and their
//! PyTorch-default initialisation (MODEL.md §8).

use super::config::ModelConfig;
use crate::autograd::ParamStore;
use crate::error::Result;
use crate::rng::{stream_id, Purpose, RngStream};
use crate::tensor::{DType, Tensor};

/// How a parameter starts (MODEL.md §8).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// `U(−b, b)`.
    Uniform(f64),
    /// Every element equal to the value (zeros, ones, `alpha`, `pe_scale`).
    Constant(f64),
    /// Normal with this std, redrawn outside ±2 (PyTorch's `trunc_normal_` defaults).
    TruncNormal(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

fn spec(out: &mut Vec<ParamSpec>, name: String, shape: Vec<usize>, init: Init) {
    out.push(ParamSpec { name, shape, init });
}

/// `nn.Linear(fan_in → fan_out)`: weight `fan_out × fan_in` and bias, both `U(±1/√fan_in)`.
fn linear(out: &mut Vec<ParamSpec>, prefix: &str, fan_in: usize, fan_out: usize) {
    let b = 1.0 / (fan_in as f64).sqrt();
    spec(out, format!("{prefix}.weight"), vec![fan_out, fan_in], Init::Uniform(b));
    spec(out, format!("{prefix}.bias"), vec![fan_out], Init::Uniform(b));
}

fn layer_norm(out: &mut Vec<ParamSpec>, prefix: &str, dim: usize) {
    spec(out, format!("{prefix}.weight"), vec![dim], Init::Constant(1.0));
    spec(out, format!("{prefix}.bias"), vec![dim], Init::Constant(0.0));
}

/// `nn.MultiheadAttention(e)` (MODEL.md §5.2).
fn mha(out: &mut Vec<ParamSpec>, prefix: &str, e: usize) {
    let xavier = (6.0 / (e + 3 * e) as f64).sqrt();
    spec(
        out,
        format!("{prefix}.in_proj_weight"),
        vec![3 * e, e],
        Init::Uniform(xavier),
    );
    spec(out, format!("{prefix}.in_proj_bias"), vec![3 * e], Init::Constant(0.0));
    spec(
        out,
        format!("{prefix}.out_proj.weight"),
        vec![e, e],
        Init::Uniform(1.0 / (e as f64).sqrt()),
    );
    spec(out, format!("{prefix}.out_proj.bias"), vec![e], Init::Constant(0.0));
}

fn matb(out: &mut Vec<ParamSpec>, prefix: &str, e: usize, f: usize) {
    mha(out, &format!("{prefix}.spatial_attn"), e);
    mha(out, &format!("{prefix}.depth_attn"), e);
    layer_norm(out, &format!("{prefix}.norm1"), e);
    layer_norm(out, &format!("{prefix}.norm2"), e);
    linear(out, &format!("{prefix}.ffn.0"), e, f);
    linear(out, &format!("{prefix}.ffn.3"), f, e);
}

/// Every parameter of the model, in a fixed order.
pub fn param_specs(c: &ModelConfig) -> Vec<ParamSpec> {
    let mut v = Vec::new();
    let (e, p, f) = (c.embed_dim, c.patch_dim(), c.ffn_dim);
    if c.use_nemesis_tokens {
        let (k, te, pd) = (c.num_nemesis_tokens, c.token_dim(), c.patch_size[0]);
        let a = "encoder.adaptive_agg";
        linear(&mut v, &format!("{a}.linear"), p, e);
        linear(&mut v, &format!("{a}.embed"), c.patch_row(), te);
        spec(
            &mut v,
            format!("{a}.pos_embed"),
            vec![1, pd, te],
            Init::TruncNormal(0.01),
        );
        let mt = (6.0 / (k * te + te) as f64).sqrt();
        spec(&mut v, format!("{a}.mt"), vec![1, k, te], Init::Uniform(mt));
        layer_norm(&mut v, &format!("{a}.norm_qkv"), te);
        mha(&mut v, &format!("{a}.attn"), te);
        linear(&mut v, &format!("{a}.proj"), te, te);
        spec(&mut v, format!("{a}.alpha"), vec![], Init::Constant(0.5));
    } else {
        linear(&mut v, "encoder.patch_embed", p, e);
    }
    spec(&mut v, "encoder.pe_scale".into(), vec![], Init::Constant(0.1));
    for i in 0..c.depth {
        matb(&mut v, &format!("encoder.blocks.{i}"), e, f);
    }
    layer_norm(&mut v, "encoder.norm", e);
    let mask = (6.0 / (2 * e) as f64).sqrt();
    spec(&mut v, "decoder.mask_token".into(), vec![1, 1, e], Init::Uniform(mask));
    spec(&mut v, "decoder.pe_scale".into(), vec![], Init::Constant(0.1));
    for i in 0..c.decoder_depth {
        matb(&mut v, &format!("decoder.blocks.{i}"), e, f);
    }
    layer_norm(&mut v, "decoder.norm", e);
    linear(&mut v, "decoder.head", e, p);
    v
}

pub fn param_count(c: &ModelConfig) -> usize {
    param_specs(c).iter().map(|s| s.shape.iter().product::<usize>()).sum()
}

fn draw(init: Init, n: usize, rng: RngStream) -> Vec<f64> {
    match init {
        Init::Constant(v) => vec![v; n],
        Init::Uniform(b) => {
            let mut u = vec![0.0f32; n];
            rng.fill_uniform(0, &mut u);
            u.iter().map(|&u| (2.0 * u as f64 - 1.0) * b).collect()
        }
        Init::TruncNormal(std) => {
            // Value i uses the first draw of its own run of normals that lands
            // inside ±2; the runs are spaced far apart in the stream.
            (0..n as u64)
                .map(|i| {
                    (0..)
                        .map(|k| std * rng.normal((i << 8) + k) as f64)
                        .find(|v| v.abs() <= 2.0)
                        .unwrap_or(0.0)
                })
                .collect()
        }
    }
}

/// A freshly initialised parameter store for `c`, reproducible from `seed`:
/// parameter `i` of `param_specs` draws from its own Philox stream.
pub fn init_params(c: &ModelConfig, seed: u64, dtype: DType) -> Result<ParamStore> {
    c.validate()?;
    let mut store = ParamStore::new();
    for (i, s) in param_specs(c).into_iter().enumerate() {
        let n = s.shape.iter().product();
        let rng = RngStream::new(seed, stream_id(Purpose::Init, 0, i as u64));
        let t = Tensor::from_f64_slice(&draw(s.init, n, rng), s.shape.clone(), dtype)?;
        store.add(s.name, t)?;
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_parameter_counts_match_spec_9() {
        assert_eq!(param_count(&ModelConfig::paper()), 57_568_259);
        assert_eq!(param_count(&ModelConfig::small()), 3_761_795);
        assert_eq!(param_count(&ModelConfig::tiny()), 219_395);
    }

    #[test]
    fn init_follows_spec_8() {
        let c = ModelConfig::tiny();
        let s = init_params(&c, 7, DType::F64).unwrap();
        let get = |n: &str| s.get(s.id(n).unwrap()).value.to_f64_vec().unwrap();
        assert_eq!(get("encoder.adaptive_agg.alpha"), vec![0.5]);
        assert_eq!(get("decoder.pe_scale"), vec![0.1]);
        assert!(get("encoder.blocks.0.spatial_attn.in_proj_bias")
            .iter()
            .all(|&v| v == 0.0));
        assert!(get("encoder.norm.weight").iter().all(|&v| v == 1.0));
        let w = get("encoder.blocks.1.ffn.0.weight");
        let b = 1.0 / 64f64.sqrt();
        assert!(w.iter().all(|v| v.abs() <= b));
        let max = w.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(max > 0.95 * b, "uniform draws should reach close to the bound");
        let pe = get("encoder.adaptive_agg.pos_embed");
        let std = (pe.iter().map(|v| v * v).sum::<f64>() / pe.len() as f64).sqrt();
        assert!((0.005..0.02).contains(&std), "pos_embed std {std}");
        // Same seed, same weights; another seed, other weights.
        let again = init_params(&c, 7, DType::F64).unwrap();
        assert_eq!(
            again
                .get(again.id("decoder.head.weight").unwrap())
                .value
                .to_f64_vec()
                .unwrap(),
            get("decoder.head.weight")
        );
        let other = init_params(&c, 8, DType::F64).unwrap();
        assert_ne!(
            other
                .get(other.id("decoder.head.weight").unwrap())
                .value
                .to_f64_vec()
                .unwrap(),
            get("decoder.head.weight")
        );
    }
}
