//! Files: safetensors in and out, written atomically; PyTorch `.pt`
//! checkpoints in; one writer per run folder.

mod atomic;
mod lock;
mod tensor_file;
mod torch_pt;

pub use atomic::write_atomic;
pub use lock::{claim_folder, utc_now, FolderLock, LOCK_FILE};
pub use tensor_file::{Array, ArrayData, TensorFile};
pub use torch_pt::{is_torch_file, read_state_dict, StateDict};
