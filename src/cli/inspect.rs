//! `nemesis inspect`: what a NIfTI volume holds and how it will be read.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use clap::Args;

use crate::data::{read_volume, AffineSource};
use crate::error::Result;
use crate::io::{Array, ArrayData, TensorFile};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A NIfTI-1 volume: .nii, .nii.gz or .hdr (with its .img).
    pub volume: PathBuf,
    /// Write the HU volume after orientation as f32 tensor `volume` (D×H×W)
    /// and its spacing as `spacing` (mm, D, H, W).
    #[arg(long, value_name = "OUT.safetensors")]
    pub export: Option<PathBuf>,
}

pub fn run(a: &InspectArgs) -> Result<()> {
    let v = read_volume(&a.volume)?;
    let i = &v.info;
    let names = ["i", "j", "k"];
    println!("{}", a.volume.display());
    println!(
        "  stored shape   {:?} ({}, {})",
        i.stored_shape,
        i.datatype,
        if i.big_endian { "big-endian" } else { "little-endian" }
    );
    match i.scaling {
        Some((s, b)) => println!("  scaling        HU = {s} · stored + {b}"),
        None => println!("  scaling        none (stored values are HU)"),
    }
    let source = match i.affine_source {
        AffineSource::Sform => "sform",
        AffineSource::Qform => "qform",
        AffineSource::Identity => "none (identity)",
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
    println!("  HU             min {lo}, max {hi}, mean {mean:.1}");
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
