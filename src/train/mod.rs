//! Pretraining (MODEL.md §11): AdamW, the learning-rate schedule, the run
//! configuration, checkpoints with training state, pictures, the loop.

mod adamw;
mod config;
mod pictures;
mod reduce;
mod resume;
mod schedule;
mod state;
mod step;
mod trainer;

pub use adamw::{clip_factor, clip_grad_norm, device_clip, grad_norm, AdamW, AdamWConfig, Clip};
pub use config::TrainConfig;
pub use pictures::{curves_png, most_tissue, reconstruction_png, Curve, ERROR_SCALE};
pub use reduce::all_reduce_grads;
pub use resume::{
    apply_changes, keep_global_batch, open_resume, run_cache, run_dir_of, Change, ResumeFlags, Resumed, DATA_NOTE,
};
pub use schedule::{LrSchedule, Schedule};
pub use state::{list_checkpoints, load_state, prune, save, state_name, weights_name, Latest, StateMeta};
pub use step::{queue_step, read_deferred, PendingStep, StepGraphs, StepSpec, StepValues};
pub use trainer::{check_run_fits, run, Observer, RunOptions, RunReport, Start, StepMetrics};
