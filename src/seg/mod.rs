//! Segmentation fine-tuning (SPEC §14): the pretrained encoder with a
//! UNETR-style decoder, its checkpoints, labelled crops, training,
//! sliding-window prediction back onto the scan, and Dice/HD95 evaluation.

mod checkpoint;
mod data;
pub mod metrics;
mod model;
mod picture;
mod predict;
mod train;
mod window;

pub use checkpoint::{load_encoder, load_seg, save_seg, SegCheckpoint};
pub use data::{check_fits_window, crop, crop_origin, read_labelled, ClassTable, LabelledVolume};
pub use model::{
    add_decoder_params, batch_norms, decoder_specs, scaled_channels, DecoderInit, DecoderSpec, Mode, RunningStats,
    SegConfig, SegModel, BN_EPS, BN_MOMENTUM, PAPER_CHANNELS,
};
pub use picture::overlay_png;
pub use predict::{evaluate, label_values, score, write_prediction, ClassScore, EvalReport, Predictor, VolumeScore};
pub use train::{curves, resume_run, train, validate, SegRecipe, SegReport, SegRun, SegState, SegTrainIo};
pub use window::{gaussian_importance, predict_classes, window_starts};
