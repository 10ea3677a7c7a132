//! DICOM CT series read as the same volumes their NIfTI twins give
//! (tests/fixtures/dicom, written by pydicom and GDCM from
//! tools/make_dicom_fixtures.py, each good series beside a .nii of the same
//! array and affine): every transfer syntax, shuffled file names and
//! instance numbers, coronal and tilted series, signed and unsigned pixels
//! with rescale, a multi-frame (enhanced) CT object; and each bad case a
//! clear error naming what is wrong.

use std::path::{Path, PathBuf};
use std::process::Command;

use nemesis::data::{read_series, read_volume};

mod common;
use common::bin;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dicom")
        .join(name)
}

#[track_caller]
fn same_as_nifti(name: &str) {
    let d = read_volume(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let n = read_volume(&fixture(&format!("{name}.nii"))).unwrap();
    assert_eq!(d.shape, n.shape, "{name}: shape");
    assert_eq!(d.info.axis_order, n.info.axis_order, "{name}: orientation");
    assert!(
        d.hu.iter().zip(&n.hu).all(|(a, b)| a.to_bits() == b.to_bits()),
        "{name}: voxels differ from the NIfTI twin's"
    );
    for (a, b) in d.spacing.iter().zip(&n.spacing) {
        assert!(
            (a - b).abs() <= 1e-4 * b,
            "{name}: spacing {:?} vs {:?}",
            d.spacing,
            n.spacing
        );
    }
    for (ra, rb) in d.info.affine.iter().zip(&n.info.affine) {
        for (a, b) in ra.iter().zip(rb) {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{name}: affine {:?} vs {:?}",
                d.info.affine,
                n.info.affine
            );
        }
    }
}

#[test]
fn every_transfer_syntax_reads_as_its_nifti_twin() {
    for name in [
        "axial_implicit",
        "axial_explicit",
        "axial_deflate",
        "axial_rle",
        "axial_jpegll",
    ] {
        same_as_nifti(name);
    }
    // JPEG 2000: in a build with the feature; else an error that says how.
    if cfg!(feature = "jpeg2000") {
        same_as_nifti("axial_j2k");
    } else {
        let e = read_volume(&fixture("axial_j2k")).unwrap_err().to_string();
        assert!(e.contains("JPEG 2000") && e.contains("--features jpeg2000"), "{e}");
    }
}

#[test]
fn geometry_and_pixels_of_every_kind_read_as_their_nifti_twins() {
    // One enhanced CT object: frames shuffled, geometry in the functional groups.
    for name in ["unsigned", "coronal", "tilted", "multiframe"] {
        same_as_nifti(name);
    }
    // A coronal series' slices run anterior–posterior: D is still the axis
    // closest to superior–inferior (a stored in-plane axis).
    let c = read_volume(&fixture("coronal")).unwrap();
    assert_ne!(c.info.axis_order[0], 2);
    let (_, info) = read_series(&fixture("axial_explicit"), None).unwrap();
    assert_eq!(info.slices, 7);
    assert!((info.slice_spacing - 2.5).abs() < 1e-9, "{}", info.slice_spacing);
    assert!(
        info.transfer_syntax.contains("Explicit VR Little Endian"),
        "{}",
        info.transfer_syntax
    );
}

#[test]
fn two_series_are_never_merged() {
    let e = read_volume(&fixture("two_series")).unwrap_err().to_string();
    assert!(
        e.contains("holds 2 series") && e.contains("--series") && e.contains("soft") && e.contains("bone"),
        "{e}"
    );
    let uid = e
        .split("series, which are never merged: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let (v, info) = read_series(&fixture("two_series"), Some(&uid)).unwrap();
    assert_eq!((info.slices, v.shape[0]), (7, 7));
}

#[test]
fn localizers_and_objects_without_pixels_are_left_out_and_said() {
    same_as_nifti("with_localizer");
    let v = read_volume(&fixture("with_localizer")).unwrap();
    let w = v.info.warnings.join("; ");
    assert!(
        w.contains("scout.dcm: a localizer") && w.contains("report.dcm: no image"),
        "{w}"
    );
}

#[test]
fn bad_series_are_clear_errors_naming_the_cause() {
    let e = read_volume(&fixture("bad_spacing")).unwrap_err().to_string();
    assert!(
        e.contains("uneven slice spacing") && e.contains("positions along the normal"),
        "{e}"
    );
    let e = read_volume(&fixture("bad_truncated")).unwrap_err().to_string();
    assert!(e.contains("img002.dcm"), "{e}");
    let e = read_volume(&fixture("bad_notdicom")).unwrap_err().to_string();
    assert!(
        e.contains("notes.txt") && e.contains("not a readable DICOM file"),
        "{e}"
    );
}

#[test]
fn inspect_names_the_series_its_transfer_syntax_and_spacing() {
    let o = Command::new(bin())
        .arg("inspect")
        .arg(fixture("axial_rle"))
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        t.contains("DICOM series") && t.contains("RLE Lossless") && t.contains("slices         7, 2.5000 mm"),
        "{t}"
    );
    assert!(t.contains("affine         from DICOM"), "{t}");
}

/// `pretrain` on the tiny preset for one step, on `data`, into `out`.
fn pretrain_one_step(data: &Path, out: &Path, home: &Path) {
    let o = Command::new(bin())
        .args([
            "pretrain",
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--batch",
            "1",
            "--val-superpatches",
            "1",
            "--data",
        ])
        .arg(data)
        .arg("--out")
        .arg(out)
        .env("NEMESIS_DATA", home)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("latest.json").is_file());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A folder of series folders is a dataset, as is a dataset JSON naming
/// series folders: `prepare` caches each series, `pretrain` trains on them.
#[test]
fn a_folder_of_series_is_a_dataset_everywhere() {
    let d = common::fresh_dir("dicom", "dataset");
    let data = d.join("ct");
    copy_dir(&fixture("axial_explicit"), &data.join("patient1"));
    copy_dir(&fixture("axial_rle"), &data.join("patient2"));
    let o = Command::new(bin())
        .args(["prepare", "--dir"])
        .arg(&data)
        .arg("--out")
        .arg(d.join("cache"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let manifest = std::fs::read_to_string(d.join("cache/manifest.json")).unwrap();
    assert!(
        manifest.contains("patient1") && manifest.contains("patient2"),
        "{manifest}"
    );
    std::fs::write(
        d.join("index.json"),
        r#"{"training": ["ct/patient1"], "validation": ["ct/patient2"]}"#,
    )
    .unwrap();
    for source in [data.clone(), d.join("index.json")] {
        let run = d.join(format!("run-{}", source.file_name().unwrap().to_string_lossy()));
        pretrain_one_step(&source, &run, &d.join("home"));
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn encode_takes_a_series_folder() {
    let d = common::fresh_dir("dicom", "encode");
    let w = d.join("w.safetensors");
    let run = |args: &[&std::ffi::OsStr]| {
        let o = Command::new(bin()).args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    run(&[
        "init".as_ref(),
        "--preset".as_ref(),
        "tiny".as_ref(),
        "--out".as_ref(),
        w.as_os_str(),
    ]);
    let out = d.join("f.safetensors");
    let series = fixture("axial_deflate");
    run(&[
        "encode".as_ref(),
        "--checkpoint".as_ref(),
        w.as_os_str(),
        "--input".as_ref(),
        series.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert!(out.is_file());
    std::fs::remove_dir_all(&d).ok();
}

/// `synth --format dicom` writes the phantoms as DICOM series that read
/// back as exactly the volumes the NIfTI phantoms hold, with their NIfTI
/// label maps fitting them; every command then takes the folder.
#[test]
fn synthetic_phantoms_as_dicom_read_as_their_nifti_selves() {
    let d = common::fresh_dir("dicom", "synth");
    let synth = |out: &Path, format: &str| {
        let o = Command::new(bin())
            .args([
                "synth", "--count", "2", "--seed", "4", "--size", "24,40,48", "--format", format, "--out",
            ])
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    synth(&d.join("dcm"), "dicom");
    synth(&d.join("nii"), "nifti");
    for i in 0..2 {
        let a = read_volume(&d.join(format!("dcm/images/phantom_{i:04}"))).unwrap();
        let b = read_volume(&d.join(format!("nii/images/phantom_{i:04}.nii.gz"))).unwrap();
        assert_eq!((a.shape, a.spacing), (b.shape, b.spacing));
        assert!(
            a.hu.iter().zip(&b.hu).all(|(x, y)| x.to_bits() == y.to_bits()),
            "phantom {i}"
        );
    }
    // prepare checks each label map against its image's geometry.
    let o = Command::new(bin())
        .args(["prepare", "--index"])
        .arg(d.join("dcm/dataset.json"))
        .arg("--out")
        .arg(d.join("cache"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    pretrain_one_step(&d.join("dcm"), &d.join("run"), &d.join("home"));
    std::fs::remove_dir_all(&d).ok();
}
