//! `init`, `flops`, `encode` and `reconstruct` as a user runs them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nemesis::autograd::Tape;
use nemesis::io::{Array, ArrayData, TensorFile};
use nemesis::model::{load_checkpoint, ModelConfig, Nemesis};
use nemesis::rng::RngStream;
use nemesis::{DType, Tensor};

fn nemesis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nemesis"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn err(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nemesis-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write_image(path: &Path, b: usize, size: [usize; 3]) -> Tensor {
    let n = b * size.iter().product::<usize>();
    let mut v = vec![0.0f32; n];
    RngStream::new(5, 5).fill_uniform(0, &mut v);
    let t = Tensor::from_vec(v, [b, 1, size[0], size[1], size[2]]).unwrap();
    let mut arrays = BTreeMap::new();
    arrays.insert("image".to_string(), Array::from_tensor(&t).unwrap());
    TensorFile::write(path, &HashMap::new(), &arrays).unwrap();
    t
}

#[test]
fn init_is_reproducible_by_seed() {
    let d = tmp("init");
    let (a, b, c) = (
        d.join("a.safetensors"),
        d.join("b.safetensors"),
        d.join("c.safetensors"),
    );
    ok(&nemesis(&["init", "--preset", "tiny", "--seed", "3", "--out", s(&a)]));
    ok(&nemesis(&["init", "--preset", "tiny", "--seed", "3", "--out", s(&b)]));
    ok(&nemesis(&["init", "--preset", "tiny", "--seed", "4", "--out", s(&c)]));
    let bytes = |p: &Path| std::fs::read(p).unwrap();
    assert!(bytes(&a) == bytes(&b), "same seed, byte-identical weights");
    assert!(bytes(&a) != bytes(&c), "another seed, other weights");
    let (config, store) = load_checkpoint(&a, DType::F32).unwrap();
    assert_eq!(config, ModelConfig::tiny());
    assert_eq!(store.num_elements(), 219_395);
    let cfg = d.join("model.json");
    std::fs::write(&cfg, r#"{"embed_dim": 770}"#).unwrap();
    let e = err(&nemesis(&["init", "--config", s(&cfg), "--out", s(&c)]));
    assert!(e.contains("model.json") && e.contains("num_heads"), "{e}");
    let e = err(&nemesis(&["init", "--preset", "huge", "--out", s(&c)]));
    assert!(e.contains("huge"), "{e}");
    let e = err(&nemesis(&[
        "init",
        "--preset",
        "tiny",
        "--config",
        s(&cfg),
        "--out",
        s(&c),
    ]));
    assert!(e.contains("cannot be used with"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn flops_of_the_paper_preset() {
    let out = ok(&nemesis(&["flops", "--preset", "paper"]));
    let total = out
        .lines()
        .find(|l| l.trim_start().starts_with("total"))
        .expect("a total line");
    let nums: Vec<f64> = total.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect();
    assert!((nums[0] / 249.4 - 1.0).abs() < 0.005, "{total}");
    assert!((nums[2] / 747.4 - 1.0).abs() < 0.005, "{total}");
    assert!(out.contains("31.2") && out.contains("paper"), "{out}");
    assert!(out.contains("encoder at inference"));
}

#[test]
fn encode_writes_features_and_pooled() {
    let d = tmp("encode");
    let (w, x, o) = (
        d.join("w.safetensors"),
        d.join("x.safetensors"),
        d.join("f.safetensors"),
    );
    ok(&nemesis(&["init", "--preset", "tiny", "--seed", "1", "--out", s(&w)]));
    let image = write_image(&x, 3, [32, 32, 32]);
    ok(&nemesis(&[
        "encode",
        "--checkpoint",
        s(&w),
        "--input",
        s(&x),
        "--output",
        s(&o),
        "--batch",
        "2",
    ]));
    let f = TensorFile::read(&o).unwrap();
    let feats = f.tensor("features").unwrap();
    let pooled = f.tensor("pooled").unwrap();
    assert_eq!(feats.dims(), [3, 64, 64]);
    assert_eq!(pooled.dims(), [3, 64]);
    // The same as the library's encoder on the whole batch, and the pool is the token mean.
    let (config, store) = load_checkpoint(&w, DType::F32).unwrap();
    let tape = Tape::inference();
    let want = Nemesis::new(config).unwrap().encode(&tape, &store, &image).unwrap();
    let (a, b) = (feats.to_f64_vec().unwrap(), want.value().to_f64_vec().unwrap());
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(diff < 1e-5, "chunked encode differs by {diff}");
    let mean0: f64 = (0..64).map(|t| a[t * 64]).sum::<f64>() / 64.0;
    assert!((mean0 - pooled.to_f64_vec().unwrap()[0]).abs() < 1e-5);

    let e = err(&nemesis(&[
        "encode",
        "--checkpoint",
        s(&w),
        "--input",
        s(&x),
        "--output",
        s(&o),
        "--device",
        "cuda",
    ]));
    assert!(e.contains("not available"), "{e}");
    let bad = d.join("bad.safetensors");
    write_image(&bad, 1, [32, 32, 16]);
    let e = err(&nemesis(&[
        "encode",
        "--checkpoint",
        s(&w),
        "--input",
        s(&bad),
        "--output",
        s(&o),
    ]));
    assert!(e.contains("bad.safetensors") && e.contains("[1, 1, 32, 32, 16]"), "{e}");
    let e = err(&nemesis(&[
        "encode",
        "--checkpoint",
        s(&x),
        "--input",
        s(&x),
        "--output",
        s(&o),
    ]));
    assert!(e.contains("config"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn reconstruct_with_sampled_and_given_masks() {
    let d = tmp("recon");
    let (w, x) = (d.join("w.safetensors"), d.join("x.safetensors"));
    let (o1, o2, png) = (d.join("r1.safetensors"), d.join("r2.safetensors"), d.join("r.png"));
    ok(&nemesis(&["init", "--preset", "tiny", "--seed", "1", "--out", s(&w)]));
    write_image(&x, 2, [32, 32, 32]);
    let out = ok(&nemesis(&[
        "reconstruct",
        "--checkpoint",
        s(&w),
        "--input",
        s(&x),
        "--output",
        s(&o1),
        "--seed",
        "7",
        "--noise-std",
        "0.03",
        "--png",
        s(&png),
    ]));
    assert!(out.contains("PSNR"), "{out}");
    assert!(std::fs::metadata(&png).unwrap().len() > 100);
    let r1 = TensorFile::read(&o1).unwrap();
    assert_eq!(r1.get("reconstruction").unwrap().shape, vec![2, 1, 32, 32, 32]);
    assert_eq!(r1.get("loss").unwrap().shape, vec![1]);
    assert_eq!(r1.get("psnr").unwrap().shape, vec![1]);
    let ArrayData::U8(mask) = &r1.get("mask").unwrap().data else {
        panic!("mask is u8")
    };
    // tiny: 64 tokens, 16 slices of... a_v·Dp = 4·4 visible per item.
    assert_eq!(mask.iter().filter(|&&m| m == 0).count(), 2 * 16);

    // The mask written by the first run, given back without noise, then with the same noise seed.
    let m = d.join("m.safetensors");
    let mut arrays = BTreeMap::new();
    arrays.insert("mask".to_string(), r1.get("mask").unwrap().clone());
    TensorFile::write(&m, &HashMap::new(), &arrays).unwrap();
    ok(&nemesis(&[
        "reconstruct",
        "--checkpoint",
        s(&w),
        "--input",
        s(&x),
        "--output",
        s(&o2),
        "--mask",
        s(&m),
    ]));
    let r2 = TensorFile::read(&o2).unwrap();
    assert_eq!(r2.get("mask").unwrap(), r1.get("mask").unwrap());
    assert_ne!(
        r2.get("loss").unwrap(),
        r1.get("loss").unwrap(),
        "noise changes the loss"
    );

    // A mask without the dual structure is refused, naming the file.
    let mut broken = mask.clone();
    let first_visible = broken.iter().position(|&v| v == 0).unwrap();
    broken[first_visible] = 1;
    arrays.insert(
        "mask".to_string(),
        Array {
            shape: vec![2, 64],
            data: ArrayData::U8(broken),
        },
    );
    TensorFile::write(&m, &HashMap::new(), &arrays).unwrap();
    let e = err(&nemesis(&[
        "reconstruct",
        "--checkpoint",
        s(&w),
        "--input",
        s(&x),
        "--output",
        s(&o2),
        "--mask",
        s(&m),
    ]));
    assert!(e.contains("m.safetensors") && e.contains("same number"), "{e}");
    let e = err(&nemesis(&[
        "reconstruct",
        "--checkpoint",
        s(&w),
        "--input",
        s(&x),
        "--output",
        s(&o2),
        "--mask",
        s(&m),
        "--seed",
        "1",
    ]));
    assert!(e.contains("cannot be used with"), "{e}");
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn encode_a_nifti_volume_tile_by_tile() {
    use nemesis::data::{hu_window, write_volume, VoxelData};
    let d = tmp("encode-nifti");
    let (w, v, o) = (d.join("w.safetensors"), d.join("ct.nii.gz"), d.join("f.safetensors"));
    ok(&nemesis(&["init", "--preset", "tiny", "--seed", "1", "--out", s(&w)]));
    // 40 × 33 × 32 voxels: 2 × 2 × 1 tiles of 32³, the far ones zero-padded.
    let shape = [40, 33, 32];
    let hu: Vec<i16> = (0..40 * 33 * 32).map(|i| ((i * 37) % 1400) as i16 - 1000).collect();
    write_volume(&v, shape, [2.5, 0.8, 0.8], VoxelData::I16(&hu)).unwrap();
    let stderr = String::from_utf8_lossy(
        &nemesis(&["encode", "--checkpoint", s(&w), "--input", s(&v), "--output", s(&o)]).stderr,
    )
    .to_string();
    assert!(stderr.contains("4 tiles") && stderr.contains("[2, 2, 1]"), "{stderr}");
    let f = TensorFile::read(&o).unwrap();
    assert_eq!(f.tensor("features").unwrap().dims(), [4, 64, 64]);
    assert_eq!(f.metadata["tile_grid"], "[2, 2, 1]");
    // Tile 0 is the windowed corner of the volume: encoding it alone gives the same features.
    let mut tile0 = vec![0.0f32; 32 * 32 * 32];
    for z in 0..32 {
        for y in 0..32 {
            for x in 0..32 {
                tile0[(z * 32 + y) * 32 + x] = hu_window(hu[(z * 33 + y) * 32 + x] as f32);
            }
        }
    }
    let (config, store) = load_checkpoint(&w, DType::F32).unwrap();
    let tape = Tape::inference();
    let one = Nemesis::new(config)
        .unwrap()
        .encode(&tape, &store, &Tensor::from_vec(tile0, [1, 1, 32, 32, 32]).unwrap())
        .unwrap();
    let all = f.tensor("features").unwrap().to_f64_vec().unwrap();
    let diff = one
        .value()
        .to_f64_vec()
        .unwrap()
        .iter()
        .zip(&all)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(diff < 1e-5, "tile 0 differs by {diff}");
    std::fs::remove_dir_all(&d).ok();
}
