//! Segmentation fine-tuning (SPEC §14): the pretrained encoder with a
//! UNETR-style decoder, its checkpoints, labelled crops, training,
//! sliding-window prediction back onto the scan, and Dice/HD95 evaluation.

mod checkpoint;
mod model;

pub use checkpoint::{load_encoder, load_seg, save_seg};
pub use model::{
    add_decoder_params, batch_norms, decoder_specs, scaled_channels, DecoderInit, DecoderSpec, Mode, RunningStats,
    SegConfig, SegModel, BN_EPS, BN_MOMENTUM, PAPER_CHANNELS,
};
