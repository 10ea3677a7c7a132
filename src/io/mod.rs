//! Files: safetensors in and out, written atomically; one writer per run folder.

mod atomic;
mod lock;
mod tensor_file;

pub use atomic::write_atomic;
pub use lock::{claim_folder, utc_now, FolderLock, LOCK_FILE};
pub use tensor_file::{Array, ArrayData, TensorFile};
