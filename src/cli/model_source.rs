//! `--config FILE | --preset NAME`: where a model configuration comes from.

use std::path::PathBuf;

use clap::Args;

use crate::error::{Error, Result};
use crate::model::ModelConfig;

#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct ModelSource {
    /// A model configuration JSON (MODEL.md §9 keys; missing keys take the paper default).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A preset: paper, small or tiny.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
}

impl ModelSource {
    pub fn load(&self) -> Result<ModelConfig> {
        match (&self.config, &self.preset) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
                ModelConfig::from_json(&text).map_err(|e| Error::format(path, e.to_string()))
            }
            (None, Some(name)) => ModelConfig::preset(name),
            (None, None) => Err(Error::invalid("model", "give --config FILE or --preset NAME")),
        }
    }
}
