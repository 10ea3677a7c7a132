//! Official `.pt` checkpoints as our checkpoints: the state dict read by
//! io::torch_pt, the model configuration given (`--preset`, `--config`) or
//! inferred from the tensor shapes, the configuration's flags on top, as
//! tools/convert_checkpoint.py does (the cross-check in tests/convert.rs).
//! What the shapes do not fix (head counts, superpatch size, mask ratios,
//! dropout) takes the paper's values, and the notes say so.

use std::collections::BTreeMap;
use std::path::Path;

use super::ModelConfig;
use crate::error::{Error, Result};
use crate::io::{read_state_dict, Array};

/// How a configuration is chosen for a `.pt` checkpoint: a base (`None`:
/// inferred from the shapes) and the flags given on top.
#[derive(Clone, Debug, Default)]
pub struct PtConfig {
    pub base: Option<ModelConfig>,
    pub num_heads: Option<usize>,
    pub decoder_num_heads: Option<usize>,
    pub superpatch_size: Option<[usize; 3]>,
    pub patch_size: Option<[usize; 3]>,
    pub in_channels: Option<usize>,
    pub num_nemesis_tokens: Option<usize>,
    pub plane_mask_ratio: Option<f64>,
    pub axis_mask_ratio: Option<f64>,
    pub dropout: Option<f64>,
    /// State-dict entries to discard before checking.
    pub drop: Vec<String>,
}

/// A `.pt` checkpoint's tensors under the official names, its
/// configuration, and what was done (for stderr).
pub struct Converted {
    pub config: ModelConfig,
    pub arrays: BTreeMap<String, Array>,
    pub notes: Vec<String>,
}

/// Reads `path` and settles its configuration; the tensors are checked
/// against it by the checkpoint loader.
pub fn convert_pt(path: &Path, how: &PtConfig) -> Result<Converted> {
    let sd = read_state_dict(path)?;
    let mut notes = sd.notes;
    let mut arrays = sd.arrays;
    for name in &how.drop {
        if arrays.remove(name).is_none() {
            return Err(Error::invalid(
                "--drop",
                format!("{name}: no such entry in {}", path.display()),
            ));
        }
        notes.push(format!("dropped {name}"));
    }
    let shape = |name: &str| -> Result<Vec<usize>> {
        arrays.get(name).map(|a| a.shape.clone()).ok_or_else(|| {
            Error::format(
                path,
                format!("cannot infer the configuration: {name} is missing (give --preset or --config)"),
            )
        })
    };
    let mut c = match &how.base {
        Some(base) => base.clone(),
        None => {
            let (c, mut n) = infer(&arrays, how, &shape, path)?;
            notes.append(&mut n);
            c
        }
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = how.$f { c.$f = v; } )* };
    }
    set!(
        num_heads,
        decoder_num_heads,
        superpatch_size,
        patch_size,
        in_channels,
        num_nemesis_tokens,
        plane_mask_ratio,
        axis_mask_ratio,
        dropout
    );
    c.validate()
        .map_err(|e| Error::format(path, format!("the configuration {e}")))?;
    // A scalar parameter saved with one element but a shape of [1] (or
    // [1, 1]) is the scalar.
    for s in super::param_specs(&c).iter().filter(|s| s.shape.is_empty()) {
        if let Some(a) = arrays.get_mut(&s.name) {
            if !a.shape.is_empty() && a.shape.iter().product::<usize>() == 1 {
                notes.push(format!("{}: shape {:?} read as a scalar", s.name, a.shape));
                a.shape.clear();
            }
        }
    }
    Ok(Converted {
        config: c,
        arrays,
        notes,
    })
}

/// The configuration the shapes fix, the rest the paper's (said).
fn infer(
    arrays: &BTreeMap<String, Array>,
    how: &PtConfig,
    shape: &dyn Fn(&str) -> Result<Vec<usize>>,
    path: &Path,
) -> Result<(ModelConfig, Vec<String>)> {
    let bad = |m: String| Error::format(path, format!("cannot infer the configuration: {m}"));
    let mut c = ModelConfig::paper();
    let mut notes = Vec::new();
    let ch = how.in_channels.unwrap_or(1);
    c.in_channels = ch;
    c.use_nemesis_tokens = if arrays.contains_key("encoder.adaptive_agg.linear.weight") {
        true
    } else if arrays.contains_key("encoder.patch_embed.weight") {
        false
    } else {
        return Err(bad(
            "neither encoder.adaptive_agg.linear.weight nor encoder.patch_embed.weight is there".into(),
        ));
    };
    c.embed_dim = shape("decoder.mask_token")?.last().copied().unwrap_or(0);
    let p = shape("decoder.head.weight")?.first().copied().unwrap_or(0);
    let patch = if c.use_nemesis_tokens {
        let a = "encoder.adaptive_agg";
        let pe = shape(&format!("{a}.pos_embed"))?;
        let mt = shape(&format!("{a}.mt"))?;
        let row = shape(&format!("{a}.embed.weight"))?.get(1).copied().unwrap_or(0);
        let pd = pe.get(1).copied().unwrap_or(0);
        c.num_nemesis_tokens = mt.get(1).copied().unwrap_or(0);
        match how.patch_size {
            Some(ps) => ps,
            None => {
                if ch == 0 || row % ch != 0 {
                    return Err(bad(format!(
                        "embed input width {row} is not a multiple of {ch} channel(s)"
                    )));
                }
                let side = (row / ch).isqrt();
                if side * side * ch != row {
                    return Err(bad(format!(
                        "in-plane patch area {} is not a square: give --patch-size",
                        row / ch
                    )));
                }
                [pd, side, side]
            }
        }
    } else {
        match how.patch_size {
            Some(ps) => ps,
            None => {
                let per = if ch > 0 && p % ch == 0 { p / ch } else { 0 };
                let side = (per as f64).cbrt().round() as usize;
                if per == 0 || side.pow(3) != per {
                    return Err(bad(format!("patch volume {per} is not a cube: give --patch-size")));
                }
                notes.push(format!("patch size {side}³ assumed from the head's {p} outputs"));
                [side; 3]
            }
        }
    };
    if patch.iter().product::<usize>() * ch != p {
        return Err(bad(format!(
            "patch size {patch:?} × {ch} channel(s) ≠ decoder.head's {p} outputs"
        )));
    }
    c.patch_size = patch;
    c.depth = blocks(arrays, "encoder", path)?;
    c.decoder_depth = blocks(arrays, "decoder", path)?;
    for prefix in ["encoder.blocks.0", "decoder.blocks.0"] {
        if let Some(a) = arrays.get(&format!("{prefix}.ffn.0.weight")) {
            c.ffn_dim = a.shape.first().copied().unwrap_or(0);
            break;
        }
    }
    let paper = ModelConfig::paper();
    let mut guessed = Vec::new();
    if how.num_heads.is_none() {
        guessed.push(format!("num_heads = {} (--num-heads)", paper.num_heads));
    }
    if how.decoder_num_heads.is_none() {
        guessed.push(format!(
            "decoder_num_heads = {} (--decoder-num-heads)",
            paper.decoder_num_heads
        ));
    }
    if how.superpatch_size.is_none() {
        guessed.push(format!(
            "superpatch_size = {:?} (--superpatch-size)",
            paper.superpatch_size
        ));
    }
    for (key, flag, v) in [
        ("plane_mask_ratio", "--plane-mask-ratio", how.plane_mask_ratio),
        ("axis_mask_ratio", "--axis-mask-ratio", how.axis_mask_ratio),
        ("dropout", "--dropout", how.dropout),
    ] {
        if v.is_none() {
            let value = match key {
                "plane_mask_ratio" => paper.plane_mask_ratio,
                "axis_mask_ratio" => paper.axis_mask_ratio,
                _ => paper.dropout,
            };
            guessed.push(format!("{key} = {value} ({flag})"));
        }
    }
    notes.push(format!(
        "inferred from the shapes: embed_dim {}, patch_size {:?}, depth {}, decoder_depth {}, \
         num_nemesis_tokens {}, ffn_dim {}, use_nemesis_tokens {}",
        c.embed_dim, c.patch_size, c.depth, c.decoder_depth, c.num_nemesis_tokens, c.ffn_dim, c.use_nemesis_tokens
    ));
    if !guessed.is_empty() {
        notes.push(format!(
            "the shapes do not fix these; the paper's values: {}",
            guessed.join("; ")
        ));
    }
    Ok((c, notes))
}

/// How many blocks `prefix.blocks.N.` numbers, which must have no gaps.
fn blocks(arrays: &BTreeMap<String, Array>, prefix: &str, path: &Path) -> Result<usize> {
    let head = format!("{prefix}.blocks.");
    let mut seen = std::collections::BTreeSet::new();
    for name in arrays.keys() {
        if let Some(rest) = name.strip_prefix(&head) {
            if let Some(i) = rest.split('.').next().and_then(|s| s.parse::<usize>().ok()) {
                seen.insert(i);
            }
        }
    }
    let n = seen.last().map_or(0, |&i| i + 1);
    if seen.len() != n {
        return Err(Error::format(
            path,
            format!("{prefix}.blocks has gaps: {:?}", seen.iter().collect::<Vec<_>>()),
        ));
    }
    Ok(n)
}
