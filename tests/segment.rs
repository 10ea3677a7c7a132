//! `nemesis segment`: train → predict → eval end to end on tiny phantoms,
//! the numbers of the report recomputed from the written label maps, label
//! maps that lie on their scans whatever the stored axis order, an exact
//! resume, and each kind of bad input refused with a clear error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use common::{bin, fresh_dir, output_text};
use nemesis::data::{read_volume, write_label_map_like, write_volume, Entry, VoxelData};
use nemesis::model::init_params;
use nemesis::seg::metrics::dice;
use nemesis::seg::{
    add_decoder_params, read_labelled, resume_run, train, ClassTable, SegConfig, SegModel, SegRecipe, SegRun,
    SegTrainIo,
};
use nemesis::DType;
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", output_text(o));
    output_text(o)
}

#[track_caller]
fn fails_with(o: &Output, needle: &str) {
    let text = output_text(o);
    assert!(!o.status.success(), "should fail: {text}");
    assert!(!text.contains("panicked"), "a panic: {text}");
    assert!(text.contains(needle), "expected `{needle}` in: {text}");
}

/// Four 40×48×48 phantoms, a `tiny` encoder, and a 4-step run on them.
struct Setup {
    dir: PathBuf,
    data: PathBuf,
    encoder: PathBuf,
    run: PathBuf,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = fresh_dir("seg", "setup");
        let data = dir.join("phantoms");
        ok(&run(&[
            "synth",
            "--out",
            data.to_str().unwrap(),
            "--count",
            "4",
            "--size",
            "40,48,48",
        ]));
        let encoder = dir.join("tiny.safetensors");
        ok(&run(&["init", "--preset", "tiny", "--out", encoder.to_str().unwrap()]));
        let out = dir.join("run");
        ok(&run(&[
            "segment",
            "train",
            "--checkpoint",
            encoder.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--steps",
            "4",
            "--eval-every",
            "1",
            "--out",
            out.to_str().unwrap(),
        ]));
        Setup {
            dir,
            data,
            encoder,
            run: out,
        }
    })
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_predict_eval_end_to_end() {
    let st = setup();
    for f in [
        "best.safetensors",
        "best.json",
        "latest.json",
        "metrics.jsonl",
        "curves.png",
        "config.json",
    ] {
        assert!(st.run.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(st.run.join("metrics.jsonl")).unwrap();
    let lines: Vec<Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().filter(|l| l.get("loss").is_some()).count(), 4);
    assert!(lines.iter().any(|l| l.get("val_dice").is_some()));
    assert!(lines.iter().filter_map(|l| l["loss"].as_f64()).all(f64::is_finite));

    // predict: a label map on the scan's grid and affine, label values of the table.
    let model = st.run.join("best.safetensors");
    let scan = st.data.join("images/phantom_0003.nii.gz");
    let out = st.dir.join("p3.nii.gz");
    let png = st.dir.join("p3.png");
    ok(&run(&[
        "segment",
        "predict",
        "--model",
        s(&model),
        "--input",
        s(&scan),
        "--output",
        s(&out),
        "--png",
        s(&png),
    ]));
    let (a, b) = (read_volume(&scan).unwrap(), read_volume(&out).unwrap());
    assert_eq!(a.shape, b.shape);
    assert_eq!(a.info.stored_shape, b.info.stored_shape);
    assert_eq!(a.info.affine, b.info.affine);
    let allowed = [0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 11.0];
    assert!(b.hu.iter().all(|v| allowed.contains(v)));
    assert!(std::fs::metadata(&png).unwrap().len() > 1000);

    // eval: the report's Dice recomputed from the label map it wrote.
    let ev = st.dir.join("eval");
    ok(&run(&[
        "segment",
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&st.data),
        "--out",
        s(&ev),
    ]));
    let report: Value = serde_json::from_str(&std::fs::read_to_string(ev.join("report.json")).unwrap()).unwrap();
    assert!(ev.join("report.md").exists() && ev.join("overlay.png").exists());
    let vol = &report["volumes"][0];
    let pred = read_volume(&ev.join(vol["prediction"].as_str().unwrap())).unwrap();
    let truth = read_volume(&st.data.join("labels/phantom_0003.nii.gz")).unwrap();
    let (p, t): (Vec<u8>, Vec<u8>) = (
        pred.hu.iter().map(|&v| v as u8).collect(),
        truth.hu.iter().map(|&v| v as u8).collect(),
    );
    for c in vol["classes"].as_array().unwrap() {
        let label = c["label"].as_u64().unwrap() as u8;
        let want = dice(&p, &t, label);
        match (c["dice"].as_f64(), want) {
            (Some(got), Some(want)) => assert!((got - want).abs() < 1e-12, "{c}: {got} vs {want}"),
            (None, None) => {}
            other => panic!("class {c}: {other:?}"),
        }
    }
}

/// A label map written for a scan of any stored axis order reads back on
/// that scan's grid: same stored shape, affine and oriented values.
#[test]
fn label_maps_lie_on_their_scans() {
    let dir = fresh_dir("seg", "orient");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nifti");
    for name in [
        "orient_oblique.nii",
        "orient_si_first.nii",
        "orient_yxz.nii",
        "int16_pair.hdr",
        "fourd.nii",
    ] {
        let v = read_volume(&fixtures.join(name)).unwrap();
        let labels: Vec<u8> = (0..v.hu.len()).map(|k| (k * 7 % 5) as u8).collect();
        let out = dir.join(format!("{name}.labels.nii.gz"));
        write_label_map_like(&out, &labels, v.shape, &v.info).unwrap();
        let back = read_volume(&out).unwrap();
        assert_eq!(back.shape, v.shape, "{name}");
        assert_eq!(back.info.axis_order, v.info.axis_order, "{name}");
        assert_eq!(back.info.stored_shape[..3], v.info.stored_shape[..3], "{name}");
        for (a, b) in back.info.affine.iter().flatten().zip(v.info.affine.iter().flatten()) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{name}: {a} vs {b}");
        }
        assert_eq!(back.hu, labels.iter().map(|&l| l as f32).collect::<Vec<_>>(), "{name}");
    }
}

/// A run stopped after its first step and resumed ends with the weights
/// of a run that never stopped, byte for byte.
#[test]
fn resume_is_exact() {
    let st = setup();
    let table = ClassTable::new(&[1, 2, 3, 4, 6, 7, 8, 11], |_| None).unwrap();
    let enc = nemesis::model::ModelConfig::tiny();
    let entries: Vec<Entry> = (0..2)
        .map(|i| Entry {
            image: st.data.join(format!("images/phantom_000{i}.nii.gz")),
            label: Some(st.data.join(format!("labels/phantom_000{i}.nii.gz"))),
        })
        .collect();
    let vols: Vec<_> = entries
        .iter()
        .map(|e| read_labelled(e, &table, enc.superpatch_size).unwrap())
        .collect();
    let fresh = || {
        let config = SegConfig::new(enc.clone(), table.len()).unwrap();
        let full = init_params(&enc, 3, DType::F32).unwrap();
        let mut store = nemesis::ParamStore::new();
        for (_, p) in full.iter().filter(|(_, p)| p.name.starts_with("encoder.")) {
            store.add(p.name.clone(), p.value.clone()).unwrap();
        }
        add_decoder_params(&config, &mut store, 3, DType::F32).unwrap();
        let recipe = SegRecipe {
            encoder: "test".into(),
            data: "test".into(),
            classes: table.clone(),
            label_fraction: 1.0,
            freeze_encoder: false,
            batch: 1,
            steps: 3,
            steps_per_epoch: 2,
            lr: 1e-3,
            min_lr_factor: 1e-3,
            weight_decay: 1e-5,
            eval_every: 1,
            seed: 5,
        };
        SegRun::new(SegModel::new(config).unwrap(), store, recipe)
    };
    fn io<'a>(vols: &'a [nemesis::seg::LabelledVolume], out: &'a Path, stop: bool) -> SegTrainIo<'a> {
        SegTrainIo {
            train: vols,
            val: &[],
            out,
            interrupt: Arc::new(AtomicBool::new(stop)),
            keep: 5,
        }
    }
    let straight = fresh_dir("seg", "straight");
    let mut a = fresh();
    let r = train(&io(&vols, &straight, false), &mut a).unwrap();
    assert_eq!(r.steps, 3);
    let stopped = fresh_dir("seg", "stopped");
    let mut b = fresh();
    let r = train(&io(&vols, &stopped, true), &mut b).unwrap();
    assert!(r.interrupted && r.steps == 1, "stops after its first step");
    let mut b = resume_run(&stopped).unwrap();
    assert_eq!(b.state.step, 1);
    train(&io(&vols, &stopped, false), &mut b).unwrap();
    let w = "checkpoints/step-0000003.safetensors";
    let same = std::fs::read(straight.join(w)).unwrap() == std::fs::read(stopped.join(w)).unwrap();
    assert!(same, "the resumed run's weights differ from the uninterrupted run's");
}

#[test]
fn bad_input_is_refused_clearly() {
    let st = setup();
    let dir = fresh_dir("seg", "bad");
    let model = st.run.join("best.safetensors");
    let hu = |n: usize| -> Vec<i16> { (0..n).map(|k| (k % 200) as i16 - 100).collect() };

    // A label map of another shape, and one of another orientation (spacing).
    for (case, lshape, lspacing, needle) in [
        ("shape", [40, 48, 40], [2.5, 0.8, 0.8], "label map of shape"),
        ("orientation", [40, 48, 48], [2.0, 0.8, 0.8], "oriented differently"),
    ] {
        let d = dir.join(case);
        std::fs::create_dir_all(d.join("images")).unwrap();
        std::fs::create_dir_all(d.join("labels")).unwrap();
        for i in 0..2 {
            let n = format!("v{i}.nii.gz");
            write_volume(
                &d.join("images").join(&n),
                [40, 48, 48],
                [2.5, 0.8, 0.8],
                VoxelData::I16(&hu(40 * 48 * 48)),
            )
            .unwrap();
            let labels = vec![1u8; lshape.iter().product()];
            write_volume(&d.join("labels").join(&n), lshape, lspacing, VoxelData::U8(&labels)).unwrap();
        }
        let o = run(&[
            "segment",
            "train",
            "--checkpoint",
            s(&st.encoder),
            "--data",
            s(&d),
            "--steps",
            "1",
            "--out",
            s(&dir.join(format!("{case}-run"))),
        ]);
        fails_with(&o, needle);
    }

    // A label value outside the model's classes.
    let d = dir.join("classes");
    std::fs::create_dir_all(d.join("images")).unwrap();
    std::fs::create_dir_all(d.join("labels")).unwrap();
    for i in 0..2 {
        let n = format!("v{i}.nii.gz");
        write_volume(
            &d.join("images").join(&n),
            [40, 48, 48],
            [2.5, 0.8, 0.8],
            VoxelData::I16(&hu(40 * 48 * 48)),
        )
        .unwrap();
        write_volume(
            &d.join("labels").join(&n),
            [40, 48, 48],
            [2.5, 0.8, 0.8],
            VoxelData::U8(&vec![20u8; 40 * 48 * 48]),
        )
        .unwrap();
    }
    let o = run(&[
        "segment",
        "eval",
        "--model",
        s(&model),
        "--data",
        s(&d),
        "--out",
        s(&dir.join("ev")),
    ]);
    fails_with(&o, "outside the label table");
    let o = run(&[
        "segment",
        "train",
        "--checkpoint",
        s(&st.encoder),
        "--data",
        s(&st.data),
        "--num-classes",
        "5",
        "--out",
        s(&dir.join("nc")),
    ]);
    fails_with(&o, "label table has 9");

    // A scan smaller than the model's window.
    let small = dir.join("small.nii.gz");
    write_volume(&small, [16, 48, 48], [2.5, 0.8, 0.8], VoxelData::I16(&hu(16 * 48 * 48))).unwrap();
    let o = run(&[
        "segment",
        "predict",
        "--model",
        s(&model),
        "--input",
        s(&small),
        "--output",
        s(&dir.join("x.nii.gz")),
    ]);
    fails_with(&o, "smaller than the model's window");

    // A pretraining checkpoint where a segmentation model belongs.
    let o = run(&["segment", "predict", "--model", s(&st.encoder), "--input", s(&small)]);
    fails_with(&o, "not a segmentation model");
}

/// `bench seg-step` times whole segmentation steps and names the machine.
#[test]
fn bench_seg_step_reports_its_median() {
    let o = run(&[
        "bench", "seg-step", "--preset", "tiny", "--steps", "1", "--device", "cpu",
    ]);
    let text = ok(&o);
    assert!(text.contains("median step") && text.contains("crops/s"), "{text}");
    assert!(text.contains("threads"), "names the CPU: {text}");
}

/// `bench conv` times every decoder convolution both ways against the
/// measured peak; a zero batch is a clear error.
#[test]
fn bench_conv_tables_every_decoder_convolution() {
    let o = run(&["bench", "conv", "--preset", "tiny", "--reps", "1"]);
    let text = ok(&o);
    assert!(text.contains("measured f32 FMA peak"), "{text}");
    for name in ["up0.conv0", "up1.conv1", "up2.conv1", "skip0", "skip1", "head"] {
        for pass in ["fwd", "dW", "dX"] {
            assert!(
                text.lines()
                    .any(|l| l.starts_with(name) && l.split_whitespace().nth(3) == Some(pass)),
                "no {name} {pass} row: {text}"
            );
        }
    }
    let o = run(&["bench", "conv", "--preset", "tiny", "--batch", "0"]);
    fails_with(&o, "--batch and --reps must be at least 1");
}
