//! Backends: where the arithmetic of each op happens. `cpu` is the plain,
//! readable reference every other backend is checked against; `emu` runs the
//! CUDA kernels (kernels/*.cu) on the CPU; `kernels` holds their sources.

pub mod check;
pub mod cpu;
pub mod cuda_probe;
pub mod emu;
pub mod kernels;
pub mod nvrtc;
