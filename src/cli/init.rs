//! `nemesis init`: a freshly initialised checkpoint (MODEL.md §8).

use std::path::PathBuf;

use clap::Args;

use super::model_source::ModelSource;
use crate::error::Result;
use crate::model::{init_params, param_count, save_checkpoint};
use crate::tensor::DType;

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub model: ModelSource,
    /// Seed of the initialisation (Philox; the same seed gives the same weights).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Where to write the safetensors weights.
    #[arg(long, value_name = "W.safetensors")]
    pub out: PathBuf,
}

pub fn run(a: &InitArgs) -> Result<()> {
    let config = a.model.load()?;
    // Only the weights (and the positional table) are built: a batch of 0.
    crate::model::check_fits(
        &config,
        0,
        crate::model::Pass::Infer,
        None,
        "the weights",
        "a smaller model",
    )?;
    let store = init_params(&config, a.seed, DType::F32)?;
    save_checkpoint(&a.out, &config, &store)?;
    println!(
        "wrote {} ({} parameters, seed {})",
        a.out.display(),
        param_count(&config),
        a.seed
    );
    Ok(())
}
