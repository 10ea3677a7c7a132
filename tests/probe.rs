//! `nemesis probe`: metrics against scikit-learn, the whole run on small
//! synthetic phantoms (report, pictures, predictions, the feature cache, the
//! random baseline, fine-tuning) and each kind of bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use nemesis::data::{write_volume, VoxelData};
use nemesis::io::{ArrayData, TensorFile};
use nemesis::probe::metrics::{auroc, f1};
use serde_json::Value;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nemesis")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nemesis-probe-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn auroc_and_f1_match_scikit_learn() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auroc.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let scores: Vec<f64> = c["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let labels: Vec<u8> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u8)
            .collect();
        let got = auroc(&scores, &labels);
        match c["auroc"].as_f64() {
            Some(want) => {
                let got = got.unwrap_or_else(|| panic!("{name}: undefined, scikit-learn says {want}"));
                assert!((got - want).abs() < 1e-12, "{name}: AUROC {got} vs {want}");
            }
            None => assert!(got.is_none(), "{name}: {got:?} for an absent class"),
        }
        let want = c["f1"].as_f64().unwrap();
        assert!((f1(&scores, &labels, 0.5) - want).abs() < 1e-12, "{name}: F1");
    }
}

/// Six small phantoms (five for training, one for validation) and a tiny
/// encoder, made once for the tests of this file.
fn setup() -> &'static (PathBuf, PathBuf) {
    static S: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    S.get_or_init(|| {
        let d = tmp("data");
        let raw = d.join("nifti");
        ok(&run(&[
            "synth",
            "--out",
            raw.to_str().unwrap(),
            "--count",
            "6",
            "--seed",
            "5",
            "--size",
            "40,64,64",
        ]));
        let w = d.join("tiny.safetensors");
        ok(&run(&[
            "init",
            "--preset",
            "tiny",
            "--seed",
            "1",
            "--out",
            w.to_str().unwrap(),
        ]));
        (raw.join("dataset.json"), w)
    })
}

fn probe(index: &Path, w: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "probe",
        "--checkpoint",
        w.to_str().unwrap(),
        "--data",
        index.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    if !extra.contains(&"--epochs") {
        args.extend(["--epochs", "10"]);
    }
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn a_probe_run_writes_its_report_pictures_and_predictions() {
    let (index, w) = setup();
    let out = tmp("run");
    let text = ok(&probe(index, w, &out, &[]));
    assert!(text.contains("mean AUROC"), "{text}");
    for f in [
        "report.json",
        "report.md",
        "roc.png",
        "predictions.safetensors",
        "features.safetensors",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let r: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let organs = r["last"]["organs"].as_array().unwrap();
    assert_eq!(organs.len(), 8);
    assert_eq!(r["evaluations"].as_array().unwrap().len(), 2, "epochs 5 and 10");
    // 40×64×64 in 32³ tiles: 2 × 2 × 2 tiles a volume.
    assert_eq!(r["train_tiles"], 5 * 8);
    assert_eq!(r["val_tiles"], 8);
    // The predictions recompute the reported metrics.
    let p = TensorFile::read(&out.join("predictions.safetensors")).unwrap();
    let (ArrayData::F32(scores), ArrayData::U8(labels)) =
        (&p.get("scores").unwrap().data, &p.get("labels").unwrap().data)
    else {
        panic!("dtypes")
    };
    assert_eq!(p.get("scores").unwrap().shape, vec![8, 8]);
    let mut defined = Vec::new();
    for (o, organ) in organs.iter().enumerate() {
        let s: Vec<f64> = scores.iter().skip(o).step_by(8).map(|&v| v as f64).collect();
        let l: Vec<u8> = labels.iter().skip(o).step_by(8).copied().collect();
        let a = auroc(&s, &l);
        match organ["auroc"].as_f64() {
            Some(v) => {
                assert!((a.unwrap() - v).abs() < 1e-6, "{organ}");
                defined.push(v);
            }
            None => assert!(a.is_none(), "an organ absent from validation is undefined"),
        }
    }
    if let Some(mean) = r["last"]["mean_auroc"].as_f64() {
        assert!((mean - defined.iter().sum::<f64>() / defined.len() as f64).abs() < 1e-9);
    }
    // A rerun takes the frozen features from the cache.
    let again = probe(index, w, &out, &["--epochs", "5"]);
    ok(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains("frozen features from"));
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn random_init_label_fraction_and_finetune_run() {
    let (index, w) = setup();
    let out = tmp("variants");
    let r = probe(
        index,
        w,
        &out.join("random"),
        &["--random-init", "--label-fraction", "0.2"],
    );
    ok(&r);
    let rep: Value = serde_json::from_str(&std::fs::read_to_string(out.join("random/report.json")).unwrap()).unwrap();
    assert_eq!(rep["settings"]["training_volumes"], 1, "max(1, ⌊5·0.2⌋)");
    assert!(rep["settings"]["encoder"].as_str().unwrap().contains("random init"));
    let f = probe(
        index,
        w,
        &out.join("finetune"),
        &["--finetune", "--epochs", "1", "--batch", "4"],
    );
    ok(&f);
    let rep: Value = serde_json::from_str(&std::fs::read_to_string(out.join("finetune/report.json")).unwrap()).unwrap();
    assert_eq!(rep["settings"]["finetune"], true);
    std::fs::remove_dir_all(&out).ok();
}

fn err_of(o: &Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// An index with one training and one validation volume, the label map of
/// the validation volume replaced by `label`.
fn index_with_label(dir: &Path, index: &Path, label: &Path) -> PathBuf {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap();
    let base = index.parent().unwrap();
    let abs = |e: &Value, k: &str| base.join(e[k].as_str().unwrap()).display().to_string();
    let t = &v["training"][0];
    let val = &v["validation"][0];
    let j = serde_json::json!({
        "labels": v["labels"],
        "training": [{"image": abs(t, "image"), "label": abs(t, "label")}],
        "validation": [{"image": abs(val, "image"), "label": label.display().to_string()}],
    });
    let p = dir.join(format!("index-{}.json", label.file_stem().unwrap().to_string_lossy()));
    std::fs::write(&p, j.to_string()).unwrap();
    p
}

#[test]
fn bad_labels_and_mismatched_tiles_are_clear_errors() {
    let (index, w) = setup();
    let dir = tmp("bad");
    // A label map of another shape.
    let other = dir.join("other-shape.nii.gz");
    write_volume(
        &other,
        [40, 64, 60],
        [2.5, 0.8, 0.8],
        VoxelData::U8(&vec![0u8; 40 * 64 * 60]),
    )
    .unwrap();
    let e = err_of(&probe(&index_with_label(&dir, index, &other), w, &dir.join("o1"), &[]));
    assert!(e.contains("other-shape.nii.gz") && e.contains("shape"), "{e}");
    // Another orientation (spacing, hence affine) with the same shape.
    let turned = dir.join("other-affine.nii.gz");
    write_volume(
        &turned,
        [40, 64, 64],
        [1.0, 1.0, 1.0],
        VoxelData::U8(&vec![0u8; 40 * 64 * 64]),
    )
    .unwrap();
    let e = err_of(&probe(&index_with_label(&dir, index, &turned), w, &dir.join("o2"), &[]));
    assert!(
        e.contains("other-affine.nii.gz") && e.contains("oriented differently"),
        "{e}"
    );
    // A value outside the label table.
    let v: Value = serde_json::from_str(&std::fs::read_to_string(index).unwrap()).unwrap();
    let spacing: Vec<f32> = v["spacing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let mut data = vec![0u8; 40 * 64 * 64];
    data[1234] = 99;
    let odd = dir.join("value-99.nii.gz");
    write_volume(
        &odd,
        [40, 64, 64],
        [spacing[0], spacing[1], spacing[2]],
        VoxelData::U8(&data),
    )
    .unwrap();
    let e = err_of(&probe(&index_with_label(&dir, index, &odd), w, &dir.join("o3"), &[]));
    assert!(e.contains("value-99.nii.gz") && e.contains("label value 99"), "{e}");
    // Tiles of another size than the checkpoint's superpatches.
    let e = err_of(&probe(index, w, &dir.join("o4"), &["--tile", "64,64,64"]));
    assert!(e.contains("--tile") && e.contains("[32, 32, 32]"), "{e}");
    // No weights at all.
    let e = err_of(&run(&["probe", "--data", index.to_str().unwrap(), "--device", "cpu"]));
    assert!(e.contains("--checkpoint"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
