//! Getting CT data into the model.

mod superpatch_file;

pub use superpatch_file::{is_nifti_path, read_superpatches};
