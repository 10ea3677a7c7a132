//! Labelled volumes for segmentation (SPEC §14): the dataset's label
//! values as classes, volumes read with their label maps, and training
//! crops of the superpatch size at a foreground-biased position.

use serde::{Deserialize, Serialize};

use crate::data::{hu_window, read_label_map, read_volume, Entry, VolumeInfo};
use crate::error::{Error, Result};
use crate::rng::{stream_id, Purpose, RngStream};

/// Class `k` is label value `values[k]`; class 0 is the background (value 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassTable {
    pub values: Vec<u8>,
    pub names: Vec<String>,
}

impl ClassTable {
    /// From the label values a dataset allows (background added) and
    /// their names where known.
    pub fn new(values: &[u8], name_of: impl Fn(u8) -> Option<String>) -> Result<ClassTable> {
        let mut v: Vec<u8> = values.to_vec();
        v.push(0);
        v.sort_unstable();
        v.dedup();
        if v.len() < 2 {
            return Err(Error::invalid(
                "classes",
                "the label table holds no class besides the background",
            ));
        }
        let names = v
            .iter()
            .map(|&c| match c {
                0 => "background".to_string(),
                c => name_of(c).unwrap_or_else(|| format!("label {c}")),
            })
            .collect();
        Ok(ClassTable { values: v, names })
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The class of each label value (`None` where the value has none).
    fn lookup(&self) -> [Option<u8>; 256] {
        let mut t = [None; 256];
        for (k, &v) in self.values.iter().enumerate() {
            t[v as usize] = Some(k as u8);
        }
        t
    }
}

/// One volume and its classes, `D × H × W`: intensities windowed to [0, 1]
/// as the encoder saw them in pretraining.
pub struct LabelledVolume {
    pub name: String,
    pub shape: [usize; 3],
    /// Voxel spacing in mm along (D, H, W).
    pub spacing: [f32; 3],
    pub image: Vec<f32>,
    /// Class indices (not label values).
    pub classes: Vec<u8>,
    pub info: VolumeInfo,
    /// Flat indices of the foreground voxels, for biased crops.
    foreground: Vec<u32>,
}

impl LabelledVolume {
    pub fn voxels(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Reads an entry's image and label map (same grid, same orientation,
/// values in `table`); the image must hold at least one `window`.
pub fn read_labelled(entry: &Entry, table: &ClassTable, window: [usize; 3]) -> Result<LabelledVolume> {
    let label_path = entry.label.as_deref().ok_or_else(|| {
        Error::format(
            &entry.image,
            "has no label map in the index; segmentation needs one per volume",
        )
    })?;
    let image = read_volume(&entry.image)?;
    image.check_ct_range()?;
    check_fits_window(&entry.image.display().to_string(), image.shape, window)?;
    let codes = read_label_map(&entry.image, &image, label_path, &table.values)?;
    let lookup = table.lookup();
    let classes: Vec<u8> = codes.iter().map(|&c| lookup[c as usize].unwrap_or(0)).collect();
    let foreground = classes
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, _)| i as u32)
        .collect();
    Ok(LabelledVolume {
        name: entry
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        shape: image.shape,
        spacing: image.spacing,
        image: image.hu.iter().map(|&h| hu_window(h)).collect(),
        classes,
        info: image.info,
        foreground,
    })
}

/// A scan smaller than the model's window along any axis is refused,
/// naming both sizes.
pub fn check_fits_window(what: &str, shape: [usize; 3], window: [usize; 3]) -> Result<()> {
    if (0..3).any(|a| shape[a] < window[a]) {
        return Err(Error::invalid(
            "segmentation",
            format!(
                "{what}: the scan is {shape:?} voxels (D, H, W), smaller than the model's window {window:?}; \
                 use a model of a smaller superpatch (e.g. the `tiny` or `small` preset) or a larger scan"
            ),
        ));
    }
    Ok(())
}

/// The corner of training crop `sample` of `step`: with probability ½ the
/// window is centred on a random foreground voxel (when there is one),
/// otherwise placed uniformly; always inside the volume.
pub fn crop_origin(v: &LabelledVolume, window: [usize; 3], seed: u64, step: u64, sample: u64) -> [usize; 3] {
    let rng = RngStream::new(seed, stream_id(Purpose::Crop, step, 0x5E9_0000 + sample));
    let [_, h, w] = v.shape;
    let pick = |u: f32, n: usize| ((u as f64 * n as f64) as usize).min(n.saturating_sub(1));
    let room = |a: usize| v.shape[a] - window[a] + 1;
    if rng.uniform(0) < 0.5 && !v.foreground.is_empty() {
        let i = v.foreground[pick(rng.uniform(1), v.foreground.len())] as usize;
        let centre = [i / (h * w), (i / w) % h, i % w];
        return [0, 1, 2].map(|a| centre[a].saturating_sub(window[a] / 2).min(room(a) - 1));
    }
    [0, 1, 2].map(|a| pick(rng.uniform(2 + a as u64), room(a)))
}

/// The image values and classes of the window at `origin`.
pub fn crop(v: &LabelledVolume, window: [usize; 3], origin: [usize; 3]) -> (Vec<f32>, Vec<u8>) {
    let [_, h, w] = v.shape;
    let n: usize = window.iter().product();
    let (mut img, mut cls) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for z in 0..window[0] {
        for y in 0..window[1] {
            let start = ((origin[0] + z) * h + origin[1] + y) * w + origin[2];
            img.extend_from_slice(&v.image[start..start + window[2]]);
            cls.extend_from_slice(&v.classes[start..start + window[2]]);
        }
    }
    (img, cls)
}
