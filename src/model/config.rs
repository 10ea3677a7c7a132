//! The model configuration of MODEL.md §9: JSON keys, defaults, presets, and the
//! shapes that follow from them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    pub superpatch_size: [usize; 3],
    pub patch_size: [usize; 3],
    pub in_channels: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub decoder_depth: usize,
    pub decoder_num_heads: usize,
    pub num_nemesis_tokens: usize,
    pub ffn_dim: usize,
    pub plane_mask_ratio: f64,
    pub axis_mask_ratio: f64,
    pub dropout: f64,
    pub use_nemesis_tokens: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self::paper()
    }
}

/// The most values one tensor of a model may hold: the kernels index with
/// 32-bit integers.
pub const MAX_ELEMENTS: usize = i32::MAX as usize;
/// Bounds on single keys, far above any real model, that keep every product
/// of sizes below in range before it is checked.
pub const MAX_SIDE: usize = 1 << 16;
pub const MAX_CHANNELS: usize = 64;
pub const MAX_WIDTH: usize = 1 << 16;
pub const MAX_DEPTH: usize = 1024;

/// Sizes that follow from a valid configuration (see [`ModelConfig::sizes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelSizes {
    /// Values of one superpatch, all channels.
    pub voxels: usize,
    /// Tokens per superpatch, `N`.
    pub tokens: usize,
    /// Values per patch, `P`.
    pub patch_dim: usize,
    /// `N × max(E, F)`: the widest activation of one superpatch.
    pub token_width: usize,
}

/// The preset names accepted everywhere (CLI, tests, benchmarks, tools).
pub const PRESETS: [&str; 3] = ["paper", "small", "tiny"];

impl ModelConfig {
    pub fn paper() -> Self {
        ModelConfig {
            superpatch_size: [128, 128, 128],
            patch_size: [8, 8, 8],
            in_channels: 1,
            embed_dim: 768,
            depth: 6,
            num_heads: 8,
            decoder_depth: 3,
            decoder_num_heads: 8,
            num_nemesis_tokens: 8,
            ffn_dim: 1024,
            plane_mask_ratio: 0.5,
            axis_mask_ratio: 0.5,
            dropout: 0.1,
            use_nemesis_tokens: true,
        }
    }

    pub fn small() -> Self {
        ModelConfig {
            superpatch_size: [64, 64, 64],
            embed_dim: 192,
            depth: 4,
            num_heads: 6,
            decoder_depth: 2,
            decoder_num_heads: 6,
            ffn_dim: 768,
            ..Self::paper()
        }
    }

    pub fn tiny() -> Self {
        ModelConfig {
            superpatch_size: [32, 32, 32],
            embed_dim: 64,
            depth: 2,
            num_heads: 4,
            decoder_depth: 1,
            decoder_num_heads: 4,
            num_nemesis_tokens: 4,
            ffn_dim: 128,
            ..Self::paper()
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "paper" => Ok(Self::paper()),
            "small" => Ok(Self::small()),
            "tiny" => Ok(Self::tiny()),
            other => Err(Error::Config(format!(
                "unknown preset `{other}`; choose one of {}",
                PRESETS.join(", ")
            ))),
        }
    }

    /// Parses JSON (unknown keys are an error, missing keys take the paper
    /// default) and validates the result.
    pub fn from_json(text: &str) -> Result<Self> {
        let c: ModelConfig = serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks the configuration as a whole: every key in range, every size
    /// dividing where it must, and every product of sizes (voxels, tokens,
    /// token × width, parameters) computed in checked arithmetic and within
    /// what one tensor may hold, so nothing derived from it can overflow.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        let names = ["D", "H", "W"];
        for (i, axis) in names.iter().enumerate() {
            let (s, p) = (self.superpatch_size[i], self.patch_size[i]);
            if p == 0 || s == 0 {
                return bad(format!(
                    "superpatch_size and patch_size must be positive (axis {})",
                    names[i]
                ));
            }
            if s > MAX_SIDE {
                return bad(format!(
                    "superpatch_size {:?}: axis {axis} is {s} voxels, at most {MAX_SIDE}",
                    self.superpatch_size
                ));
            }
            if s % p != 0 {
                return bad(format!(
                    "superpatch_size {:?} is not divisible by patch_size {:?} (axis {axis}: {s} % {p} = {})",
                    self.superpatch_size,
                    self.patch_size,
                    s % p
                ));
            }
        }
        if self.in_channels == 0 {
            return bad("in_channels must be at least 1".into());
        }
        let e = self.embed_dim;
        if e == 0 || self.depth == 0 || self.decoder_depth == 0 || self.ffn_dim == 0 {
            return bad("embed_dim, depth, decoder_depth and ffn_dim must be positive".into());
        }
        for (name, v, max) in [
            ("in_channels", self.in_channels, MAX_CHANNELS),
            ("embed_dim", e, MAX_WIDTH),
            ("ffn_dim", self.ffn_dim, MAX_WIDTH),
            ("depth", self.depth, MAX_DEPTH),
            ("decoder_depth", self.decoder_depth, MAX_DEPTH),
        ] {
            if v > max {
                return bad(format!("{name} is {v}, at most {max}"));
            }
        }
        self.sizes()?;
        if self.num_heads == 0 || !e.is_multiple_of(self.num_heads) {
            return bad(format!(
                "embed_dim {e} is not divisible by num_heads {}",
                self.num_heads
            ));
        }
        if self.decoder_num_heads == 0 || !e.is_multiple_of(self.decoder_num_heads) {
            return bad(format!(
                "embed_dim {e} is not divisible by decoder_num_heads {}",
                self.decoder_num_heads
            ));
        }
        if self.use_nemesis_tokens {
            let k = self.num_nemesis_tokens;
            if k == 0 || !e.is_multiple_of(k) {
                return bad(format!("embed_dim {e} is not divisible by num_nemesis_tokens {k}"));
            }
            if !(e / k).is_multiple_of(self.num_heads) {
                return bad(format!(
                    "the NEMESIS token width embed_dim/num_nemesis_tokens = {} is not divisible by num_heads {}",
                    e / k,
                    self.num_heads
                ));
            }
        }
        // A mask ratio of 1 is allowed: MODEL.md §4's clamps still keep one token.
        for (name, r) in [
            ("plane_mask_ratio", self.plane_mask_ratio),
            ("axis_mask_ratio", self.axis_mask_ratio),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return bad(format!("{name} must be in [0, 1], got {r}"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// The products of sizes that tensors of this model take, each in
    /// checked arithmetic and refused above [`MAX_ELEMENTS`] (the kernels
    /// index one tensor with 32-bit integers).
    pub fn sizes(&self) -> Result<ModelSizes> {
        let product = |what: &str, factors: &[usize]| -> Result<usize> {
            let v = factors
                .iter()
                .try_fold(1usize, |acc, &f| acc.checked_mul(f))
                .filter(|&v| v <= MAX_ELEMENTS);
            v.ok_or_else(|| {
                Error::Config(format!(
                    "{what} ({}) is more than one tensor may hold ({MAX_ELEMENTS} values); \
                     superpatch_size {:?}, patch_size {:?}, embed_dim {}",
                    factors.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(" × "),
                    self.superpatch_size,
                    self.patch_size,
                    self.embed_dim
                ))
            })
        };
        let grid = self.grid();
        let voxels = product("voxels per superpatch × channels", &[self.voxels(), self.in_channels])?;
        let tokens = product("tokens per superpatch", &grid)?;
        let patch_dim = product(
            "values per patch",
            &[self.patch_size.iter().product(), self.in_channels],
        )?;
        let token_width = product("tokens × embed_dim", &[tokens, self.embed_dim.max(self.ffn_dim)])?;
        product("tokens × patch values", &[tokens, patch_dim])?;
        product("embed_dim × ffn_dim", &[self.embed_dim, self.ffn_dim])?;
        product("patch values × embed_dim", &[patch_dim, self.embed_dim])?;
        Ok(ModelSizes {
            voxels,
            tokens,
            patch_dim,
            token_width,
        })
    }

    /// `(Dp, Hp, Wp)`.
    pub fn grid(&self) -> [usize; 3] {
        [0, 1, 2].map(|i| self.superpatch_size[i] / self.patch_size[i].max(1))
    }

    /// Tokens per superpatch, `N`.
    pub fn num_tokens(&self) -> usize {
        self.grid().iter().product()
    }

    /// Tokens per depth slice, `S = Hp·Wp`.
    pub fn plane_tokens(&self) -> usize {
        let g = self.grid();
        g[1] * g[2]
    }

    /// Values per patch, `P = pd·ph·pw·C`.
    pub fn patch_dim(&self) -> usize {
        self.patch_size.iter().product::<usize>() * self.in_channels
    }

    /// One axial row of a patch, `ph·pw·C` (the token path's input width).
    pub fn patch_row(&self) -> usize {
        self.patch_size[1] * self.patch_size[2] * self.in_channels
    }

    /// Width of a NEMESIS token, `e = E/K`.
    pub fn token_dim(&self) -> usize {
        self.embed_dim / self.num_nemesis_tokens.max(1)
    }

    /// Visible in-plane positions per item, `s_v` (MODEL.md §4).
    pub fn plane_visible(&self) -> usize {
        let s = self.plane_tokens();
        ((s as f64 * (1.0 - self.plane_mask_ratio)).floor() as usize).clamp(1, s.max(1))
    }

    /// Visible tokens per depth slice, `a_v` (MODEL.md §4).
    pub fn axis_visible(&self) -> usize {
        let sv = self.plane_visible();
        ((sv as f64 * (1.0 - self.axis_mask_ratio)).floor() as usize).clamp(1, sv)
    }

    /// Visible tokens per item in training, `Nv = Dp·a_v`.
    pub fn visible_tokens(&self) -> usize {
        self.grid()[0] * self.axis_visible()
    }

    /// Voxels per superpatch and channel.
    pub fn voxels(&self) -> usize {
        self.superpatch_size.iter().product()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_mask_example_of_spec_4() {
        let c = ModelConfig::paper();
        assert_eq!((c.plane_tokens(), c.plane_visible(), c.axis_visible()), (256, 128, 64));
        assert_eq!((c.visible_tokens(), c.num_tokens()), (1024, 4096));
    }

    #[test]
    fn json_round_trip_defaults_and_unknown_keys() {
        let c = ModelConfig::small();
        assert_eq!(ModelConfig::from_json(&c.to_json()).unwrap(), c);
        assert_eq!(ModelConfig::from_json("{}").unwrap(), ModelConfig::paper());
        let e = ModelConfig::from_json(r#"{"embed_dims": 3}"#).unwrap_err().to_string();
        assert!(e.contains("embed_dims"), "{e}");
    }

    #[test]
    fn configurations_that_do_not_divide_are_rejected() {
        let cases = [
            (r#"{"superpatch_size": [100, 128, 128]}"#, "not divisible by patch_size"),
            (r#"{"embed_dim": 770}"#, "num_heads"),
            (
                r#"{"embed_dim": 772, "num_heads": 4, "decoder_num_heads": 4}"#,
                "num_nemesis_tokens",
            ),
            (
                r#"{"embed_dim": 64, "num_heads": 16, "decoder_num_heads": 4}"#,
                "token width",
            ),
            (r#"{"plane_mask_ratio": 1.5}"#, "plane_mask_ratio"),
            (r#"{"dropout": 1.0}"#, "dropout"),
            (r#"{"patch_size": [0, 8, 8]}"#, "positive"),
        ];
        for (json, want) in cases {
            let e = ModelConfig::from_json(json).unwrap_err().to_string();
            assert!(e.contains(want), "{json}: {e}");
        }
    }
}
