//! The NEMESIS model (MODEL.md §1, 4–10, 13): configuration, parameters and their
//! initialisation, positional table, dual masking, noise, the masked
//! autoencoder on the tape, checkpoints and FLOP accounting.

mod checkpoint;
mod config;
mod convert;
mod flops;
mod mask;
mod memory;
mod nemesis;
mod noise;
mod params;
mod patch;
mod pos_embed;

pub use checkpoint::{load_checkpoint, load_checkpoint_for, load_pt, param_value, save_checkpoint};
pub use config::{ModelConfig, ModelSizes, MAX_ELEMENTS, PRESETS};
pub use convert::{convert_pt, Converted, PtConfig};
pub use flops::{encoder_flops, training_flops, FlopCount, FlopEntry};
pub use mask::DualMask;
pub use memory::{check_fits, ensure_fits, estimate, MemoryEstimate, Pass, Place};
pub use nemesis::{Dropout, MaeOutput, Nemesis};
pub use noise::add_noise;
pub use params::{init_params, param_count, param_specs, Init, ParamSpec};
pub use patch::{noisy_visible_tokens, patchify, unpatchify};
pub use pos_embed::positional_table;
