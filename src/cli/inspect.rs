//! `nemesis inspect`: what a NIfTI volume or DICOM series holds and how it
//! will be read.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use clap::Args;

use crate::data::{read_series, read_volume, AffineSource, Volume};
use crate::error::Result;
use crate::io::{Array, ArrayData, TensorFile};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A NIfTI-1 volume (.nii, .nii.gz, or either half of a .hdr/.img pair)
    /// or a folder holding a DICOM series.
    pub volume: PathBuf,
    /// In a folder of several DICOM series, the one to read (its
    /// SeriesInstanceUID, as the error listing them gives).
    #[arg(long, value_name = "UID")]
    pub series: Option<String>,
    /// Write the HU volume after orientation as f32 tensor `volume` (D×H×W)
    /// and its spacing as `spacing` (mm, D, H, W).
    #[arg(long, value_name = "OUT.safetensors")]
    pub export: Option<PathBuf>,
}

/// The values of a volume that reads as a label map: unscaled integers of
/// 0 to 255, at most 64 distinct. `None` for an image.
fn label_values(v: &Volume) -> Option<Vec<u32>> {
    let scaled = v.info.scaling.is_some_and(|(s, b)| s != 1.0 || b != 0.0);
    if scaled || v.info.datatype.starts_with("float") {
        return None;
    }
    let mut seen = [false; 256];
    for &x in &v.hu {
        if !(0.0..=255.0).contains(&x) || x.fract() != 0.0 {
            return None;
        }
        seen[x as usize] = true;
    }
    let values: Vec<u32> = (0..256u32).filter(|&k| seen[k as usize]).collect();
    (values.len() <= 64).then_some(values)
}

pub fn run(a: &InspectArgs) -> Result<()> {
    let (v, series) = if a.volume.is_dir() {
        let (v, s) = read_series(&a.volume, a.series.as_deref())?;
        (v, Some(s))
    } else {
        (read_volume(&a.volume)?, None)
    };
    let i = &v.info;
    let names = ["i", "j", "k"];
    println!("{}", a.volume.display());
    if let Some(s) = &series {
        println!(
            "  DICOM series   {}{}",
            s.uid,
            if s.description.is_empty() {
                String::new()
            } else {
                format!(" ({})", s.description)
            }
        );
        println!("  transfer       {}", s.transfer_syntax);
        println!(
            "  slices         {}, {:.4} mm apart along the normal (from ImagePositionPatient)",
            s.slices, s.slice_spacing
        );
    }
    println!(
        "  stored shape   {:?} ({}, {})",
        i.stored_shape,
        i.datatype,
        if i.big_endian { "big-endian" } else { "little-endian" }
    );
    let labels = label_values(&v);
    match (i.scaling, &labels) {
        (Some((s, b)), None) => println!("  scaling        HU = {s} · stored + {b}"),
        (Some((s, b)), Some(_)) => println!("  scaling        value = {s} · stored + {b}"),
        (None, Some(_)) => println!("  scaling        none"),
        (None, None) => println!("  scaling        none (stored values are HU)"),
    }
    let source = match i.affine_source {
        AffineSource::Sform => "sform",
        AffineSource::Qform => "qform",
        AffineSource::Identity => "none (identity)",
        AffineSource::Dicom => "DICOM (orientation, positions, pixel spacing; LPS turned to RAS)",
    };
    println!("  affine         from {source}");
    for row in &i.affine {
        println!(
            "                 [{:>9.4} {:>9.4} {:>9.4} {:>10.3}]",
            row[0], row[1], row[2], row[3]
        );
    }
    println!(
        "  orientation    D = stored {} (closest to superior–inferior), H = stored {}, W = stored {}",
        names[i.axis_order[0]], names[i.axis_order[1]], names[i.axis_order[2]]
    );
    println!("  shape (D,H,W)  {:?}", v.shape);
    println!("  spacing (mm)   {:?}", v.spacing);
    let (lo, hi) =
        v.hu.iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| (l.min(x), h.max(x)));
    let mean = v.hu.iter().map(|&x| x as f64).sum::<f64>() / v.hu.len().max(1) as f64;
    match &labels {
        Some(values) => println!(
            "  values         a label map: {} distinct, {}",
            values.len(),
            values.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
        ),
        None => println!("  HU             min {lo}, max {hi}, mean {mean:.1}"),
    }
    for w in &i.warnings {
        println!("  warning        {w}");
    }
    if let Some(out) = &a.export {
        let mut arrays = BTreeMap::new();
        arrays.insert(
            "volume".to_string(),
            Array {
                shape: v.shape.to_vec(),
                data: ArrayData::F32(v.hu.clone()),
            },
        );
        arrays.insert(
            "spacing".to_string(),
            Array {
                shape: vec![3],
                data: ArrayData::F32(v.spacing.to_vec()),
            },
        );
        TensorFile::write(out, &HashMap::new(), &arrays)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
