//! Backends: where the arithmetic of each op happens. `cpu` is the plain,
//! readable reference every other backend is checked against. The GPU side,
//! below the device trait of src/device/:
//! - `kernels` (the .cu sources and their declared parameters), `limits`
//!   (what a launch may ask of an sm_90 GPU), `gemm_plan` (our GEMMs as the
//!   column-major calls of cuBLAS);
//! - `raw` (what every device shares: the step-graph recorder of `graph`,
//!   the staged copies of `staging`, argument checks, the shared-memory
//!   opt-in), and the two devices: `emu` (the kernels compiled for the
//!   host, held to a GPU's rules) and `cuda` (a GPU through cudarc, with
//!   `nvrtc` and `cuda_probe` loading CUDA's libraries at run time);
//! - `gpu` (each op on device tensors, written once against the trait,
//!   through the typed launchers of `kernels::k`).

pub mod cpu;
pub mod cuda;
pub mod cuda_probe;
pub mod emu;
pub mod gemm_plan;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod limits;
pub mod nvrtc;
pub mod raw;
pub mod staging;
