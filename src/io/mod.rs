//! Files: safetensors in and out, written atomically.

mod atomic;
mod tensor_file;

pub use atomic::write_atomic;
pub use tensor_file::{Array, ArrayData, TensorFile};
