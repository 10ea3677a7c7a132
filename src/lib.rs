//! `nemesis`: NEMESIS masked-autoencoder pretraining for 3D CT.
//!
//! The engine: tensors with backend-owned storage ([`tensor`]), a tape for
//! reverse-mode autodiff ([`autograd`]), coarse ops written once
//! ([`ops`]) over the CPU reference backend ([`backend::cpu`]), and the
//! Philox4x32-10 generator every random draw uses ([`rng`]).

pub mod autograd;
pub mod backend;
pub mod check;
pub mod cli;
pub mod data;
pub mod device;
pub mod dist;
pub mod error;
pub mod host;
pub mod io;
pub mod model;
pub mod ops;
pub mod picture;
pub mod probe;
pub mod progress;
pub mod rng;
pub mod seg;
pub mod simd;
pub mod tempname;
pub mod tensor;
pub mod train;

pub use autograd::{ParamStore, Tape, Var};
pub use error::{Error, Result};
pub use tensor::{DType, Device, Shape, Tensor};
