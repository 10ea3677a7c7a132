//! Backends: where the arithmetic of each op happens. `cpu` is the plain,
//! readable reference every other backend is checked against. The GPU side:
//! `kernels` (the .cu sources), `device` (the trait a device implements),
//! `emu` (the kernels compiled for the host), `gpu` (each op on
//! device tensors, against the trait), `launch` (host-side launchers
//! written once against the trait), `nvrtc` and `cuda_probe` (CUDA libraries
//! loaded at run time), `check` (kernels against the reference), `graph` (a step recorded
//! once and replayed as one unit).

pub mod check;
pub mod cpu;
pub mod cuda;
pub mod cuda_probe;
pub mod device;
pub mod emu;
pub mod gemm_plan;
pub mod gpu;
pub mod graph;
pub mod kernels;
pub mod launch;
pub mod limits;
pub mod nvrtc;
pub mod raw;
pub mod staging;
