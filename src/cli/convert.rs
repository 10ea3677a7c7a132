//! `nemesis convert`: an official PyTorch checkpoint (`.pt`) as this
//! engine's safetensors weights, without Python (model/convert.rs).

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::model::{load_pt, param_count, save_checkpoint, ModelConfig, PtConfig};
use crate::tensor::DType;

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// The PyTorch checkpoint: a training checkpoint with model_state_dict
    /// (the public release's MAE_768_0.5.pt) or a bare state dict.
    #[arg(value_name = "IN.pt")]
    pub input: PathBuf,
    /// The safetensors weights to write.
    #[arg(value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// The model configuration JSON (default: inferred from the shapes).
    #[arg(long, value_name = "FILE", conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// A preset (paper, small, tiny) instead of inferring the configuration.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// Encoder attention heads (shapes do not fix them; default 8).
    #[arg(long, value_name = "N")]
    pub num_heads: Option<usize>,
    /// Decoder attention heads (default 8).
    #[arg(long, value_name = "N")]
    pub decoder_num_heads: Option<usize>,
    /// Superpatch size D,H,W in voxels (default 128,128,128).
    #[arg(long, value_name = "D,H,W", value_delimiter = ',')]
    pub superpatch_size: Option<Vec<usize>>,
    /// Patch size D,H,W, needed only where the shapes leave it open.
    #[arg(long, value_name = "D,H,W", value_delimiter = ',')]
    pub patch_size: Option<Vec<usize>>,
    /// Input channels (default 1).
    #[arg(long, value_name = "N")]
    pub in_channels: Option<usize>,
    /// NEMESIS tokens K, recorded for a checkpoint without them.
    #[arg(long, value_name = "K")]
    pub num_nemesis_tokens: Option<usize>,
    /// Plane mask ratio (default 0.5).
    #[arg(long, value_name = "R")]
    pub plane_mask_ratio: Option<f64>,
    /// Axis mask ratio (default 0.5).
    #[arg(long, value_name = "R")]
    pub axis_mask_ratio: Option<f64>,
    /// Dropout in the MATB blocks (default 0.1).
    #[arg(long, value_name = "P")]
    pub dropout: Option<f64>,
    /// Discard this state-dict entry before checking (repeatable).
    #[arg(long, value_name = "NAME")]
    pub drop: Vec<String>,
}

fn three(v: &Option<Vec<usize>>, flag: &'static str) -> Result<Option<[usize; 3]>> {
    v.as_ref()
        .map(|v| <[usize; 3]>::try_from(v.as_slice()).map_err(|_| Error::invalid(flag, "takes three sizes: D,H,W")))
        .transpose()
}

impl ConvertArgs {
    /// How the configuration is settled, from these flags.
    pub fn pt_config(&self) -> Result<PtConfig> {
        let base = match (&self.config, &self.preset) {
            (Some(p), _) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                Some(ModelConfig::from_json(&text).map_err(|e| Error::format(p, e.to_string()))?)
            }
            (None, Some(name)) => Some(ModelConfig::preset(name)?),
            (None, None) => None,
        };
        Ok(PtConfig {
            base,
            num_heads: self.num_heads,
            decoder_num_heads: self.decoder_num_heads,
            superpatch_size: three(&self.superpatch_size, "--superpatch-size")?,
            patch_size: three(&self.patch_size, "--patch-size")?,
            in_channels: self.in_channels,
            num_nemesis_tokens: self.num_nemesis_tokens,
            plane_mask_ratio: self.plane_mask_ratio,
            axis_mask_ratio: self.axis_mask_ratio,
            dropout: self.dropout,
            drop: self.drop.clone(),
        })
    }
}

pub fn run(a: &ConvertArgs) -> Result<()> {
    let (config, store) = load_pt(&a.input, &a.pt_config()?, DType::F32)?;
    save_checkpoint(&a.output, &config, &store)?;
    println!(
        "wrote {}: {} tensors, {} parameters, config {}",
        a.output.display(),
        store.len(),
        param_count(&config),
        config.to_json()
    );
    Ok(())
}
