//! NIfTI reading against nibabel: the fixtures under tests/fixtures/nifti/
//! were written and read back by tools/make_nifti_fixtures.py. Every good
//! file must give nibabel's values exactly after MODEL.md §2's orientation, through
//! the library and through `nemesis inspect --export`; every bad file must give
//! a clear error naming it.

use std::path::{Path, PathBuf};
use std::process::Command;

use nemesis::data::read_volume;
use nemesis::io::{ArrayData, TensorFile};
use serde_json::Value;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nifti")
}

fn expected() -> (TensorFile, Vec<Value>) {
    let f = TensorFile::read(&dir().join("expected.safetensors")).unwrap();
    let manifest: Vec<Value> = serde_json::from_str(&f.metadata["manifest"]).unwrap();
    (f, manifest)
}

fn f32s(f: &TensorFile, name: &str) -> (Vec<usize>, Vec<f32>) {
    let a = f.get(name).unwrap();
    let ArrayData::F32(v) = &a.data else {
        panic!("{name} is f32")
    };
    (a.shape.clone(), v.clone())
}

#[test]
fn every_good_fixture_matches_nibabel_exactly() {
    let (f, manifest) = expected();
    assert!(manifest.len() >= 30, "the manifest lists the fixtures");
    for m in &manifest {
        let name = m["name"].as_str().unwrap();
        let path = dir().join(m["file"].as_str().unwrap());
        let v = read_volume(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (shape, want) = f32s(&f, &format!("{name}.volume"));
        assert_eq!(v.shape.to_vec(), shape, "{name}: oriented shape");
        assert_eq!(v.info.si_axis as u64, m["si_axis"].as_u64().unwrap(), "{name}: SI axis");
        let same =
            v.hu.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits() || a == b);
        assert!(same, "{name}: voxel values differ from nibabel's");
        let (_, spacing) = f32s(&f, &format!("{name}.spacing"));
        for (a, b) in v.spacing.iter().zip(&spacing) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{name}: spacing {:?} vs {spacing:?}",
                v.spacing
            );
        }
        assert_eq!(v.info.datatype, m["datatype"].as_str().unwrap(), "{name}: datatype");
        assert_eq!(v.info.big_endian, m["endianness"] == ">", "{name}: byte order");
        assert_eq!(
            !v.info.warnings.is_empty(),
            m["four_d"] == true && name != "fourd_single",
            "{name}: 4-D warning"
        );
    }
}

#[test]
fn inspect_export_matches_nibabel_exactly() {
    let (f, manifest) = expected();
    let out_dir = std::env::temp_dir().join(format!("nemesis-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    for m in &manifest {
        let name = m["name"].as_str().unwrap();
        let out = out_dir.join(format!("{name}.safetensors"));
        let run = Command::new(env!("CARGO_BIN_EXE_nemesis"))
            .args([
                "inspect",
                dir().join(m["file"].as_str().unwrap()).to_str().unwrap(),
                "--export",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(run.status.success(), "{name}: {}", String::from_utf8_lossy(&run.stderr));
        let text = String::from_utf8_lossy(&run.stdout);
        assert!(text.contains("orientation") && text.contains("HU"), "{text}");
        let got = TensorFile::read(&out).unwrap();
        assert_eq!(f32s(&got, "volume"), f32s(&f, &format!("{name}.volume")), "{name}");
    }
    std::fs::remove_dir_all(&out_dir).ok();
}

#[test]
fn every_bad_fixture_is_a_clear_error() {
    let bad: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(dir().join("bad.json")).unwrap()).unwrap();
    assert!(bad.len() >= 10);
    for b in &bad {
        let file = b["file"].as_str().unwrap();
        let e = read_volume(&dir().join(file)).expect_err(file).to_string();
        assert!(e.contains(file), "{file}: the error names the file: {e}");
        let run = Command::new(env!("CARGO_BIN_EXE_nemesis"))
            .args(["inspect", dir().join(file).to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(1), "{file}: exit status");
        assert!(String::from_utf8_lossy(&run.stderr).contains(file));
    }
}

/// Either half of a `.hdr`/`.img` pair opens the pair (as nibabel does); an
/// image without its header is an error naming the header looked for.
#[test]
fn either_half_of_a_pair_opens_it() {
    let by_hdr = read_volume(&dir().join("int16_pair.hdr")).unwrap();
    let by_img = read_volume(&dir().join("int16_pair.img")).unwrap();
    assert_eq!(by_hdr.shape, by_img.shape);
    assert!(by_hdr
        .hu
        .iter()
        .zip(&by_img.hu)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let lone = std::env::temp_dir().join(format!("nemesis-lone-{}", std::process::id()));
    std::fs::create_dir_all(&lone).unwrap();
    std::fs::copy(dir().join("int16_pair.img"), lone.join("scan.img")).unwrap();
    let e = read_volume(&lone.join("scan.img")).unwrap_err().to_string();
    assert!(e.contains("scan.hdr") && e.contains("only voxels"), "{e}");
    std::fs::remove_dir_all(&lone).ok();
}
