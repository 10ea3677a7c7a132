//! Getting CT data into the model: NIfTI volumes, the superpatch file format
//! of the CLI, synthetic phantoms.

mod cache;
mod dicom;
mod dicom_write;
mod index;
mod labels;
mod loader;
mod manifest;
mod nifti;
mod nifti_write;
mod sampler;
mod superpatch_file;
pub mod synth;
mod tiles;
mod volume;

pub use cache::{file_stamp, write_cache, CacheHeader, CachedVolume};
pub use dicom::{is_dicom_folder, read_series, SeriesInfo};
pub use dicom_write::write_series;
pub use index::{DatasetIndex, Entry};
pub use labels::{check_same_grid, read_label_map, write_label_map_like};
pub use loader::{Batch, BatchData, EpochPlan, Loader, Position};
pub use manifest::{CacheManifest, Failure, ManifestEntry, Split, MANIFEST};
pub use nifti::{AffineSource, Volume, VolumeInfo};
pub use nifti_write::{write_volume, VoxelData};
pub use sampler::{hu_window, sample_crop, Crop, CropSpec, Voxel, HU_HIGH, HU_LOW};
pub use superpatch_file::{is_nifti_path, read_superpatches, Superpatches};
pub use tiles::{tile, tile_grid};
pub use volume::read_volume;
