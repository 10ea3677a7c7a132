//! The model on the engine: a whole MAE step's gradient in f64, checkpoints,
//! and clear errors for configurations, checkpoints and inputs that do not fit.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{rand_tensor, rel_err};
use nemesis::autograd::{ParamStore, Tape};
use nemesis::io::{Array, ArrayData, TensorFile};
use nemesis::model::{
    add_noise, init_params, load_checkpoint, load_checkpoint_for, param_specs, save_checkpoint, unpatchify, Dropout,
    DualMask, ModelConfig, Nemesis,
};
use nemesis::rng::RngStream;
use nemesis::{DType, Tensor};

/// Grid 2 × 2 × 3 (S = 6), P = 32, E = 12, K = 2 tokens of width 6 with 2
/// heads of 3; decoder with 3 heads of 4.
fn micro(tokens: bool) -> ModelConfig {
    ModelConfig {
        superpatch_size: [4, 8, 12],
        patch_size: [2, 4, 4],
        embed_dim: 12,
        depth: 1,
        num_heads: 2,
        decoder_depth: 1,
        decoder_num_heads: 3,
        num_nemesis_tokens: 2,
        ffn_dim: 10,
        use_nemesis_tokens: tokens,
        ..ModelConfig::tiny()
    }
}

/// Perturbs every parameter away from its special initial values (zero
/// biases, unit norms), so each one matters to the gradient.
fn jitter(store: &ParamStore, seed: u64) -> ParamStore {
    let mut out = store.clone();
    for (k, (id, p)) in store.iter().enumerate() {
        let noise = rand_tensor(p.value.shape(), seed + k as u64, p.value.dtype())
            .to_f64_vec()
            .unwrap();
        let v: Vec<f64> = p
            .value
            .to_f64_vec()
            .unwrap()
            .iter()
            .zip(&noise)
            .map(|(a, b)| a + 0.1 * b)
            .collect();
        out.set_value(
            id,
            Tensor::from_f64_slice(&v, p.value.shape(), p.value.dtype()).unwrap(),
        )
        .unwrap();
    }
    out
}

fn batch(c: &ModelConfig, b: usize, dtype: DType) -> (Tensor, Tensor) {
    let [d, h, w] = c.superpatch_size;
    let clean = rand_tensor([b, 1, d, h, w], 5, dtype);
    let clean = Tensor::from_f64_slice(
        &clean
            .to_f64_vec()
            .unwrap()
            .iter()
            .map(|v| 0.5 + 0.5 * v)
            .collect::<Vec<_>>(),
        clean.shape(),
        dtype,
    )
    .unwrap();
    let noisy = add_noise(&clean, 0.05, RngStream::new(9, 1)).unwrap();
    (noisy, clean)
}

fn mae_step_gradcheck(c: ModelConfig, dropout: f64) {
    let model = Nemesis::new(c.clone()).unwrap();
    let store = jitter(&init_params(&c, 3, DType::F64).unwrap(), 100);
    let (noisy, clean) = batch(&c, 2, DType::F64);
    let mask = DualMask::sample(&c, 2, RngStream::new(4, 4));
    let loss_at = |s: &ParamStore| -> f64 {
        let tape = Tape::inference();
        let d = Dropout::new(dropout, 11, 0);
        let out = model.forward_train(&tape, s, &noisy, &clean, &mask, Some(&d)).unwrap();
        out.loss.value().scalar_value().unwrap()
    };
    let mut grads = store.clone();
    let tape = Tape::new();
    let d = Dropout::new(dropout, 11, 0);
    let out = model
        .forward_train(&tape, &grads, &noisy, &clean, &mask, Some(&d))
        .unwrap();
    tape.backward(&out.loss, &mut grads).unwrap();
    assert!((out.loss.value().scalar_value().unwrap() - loss_at(&store)).abs() < 1e-15);

    let h = 1e-5;
    let mut worst = 0.0f64;
    let grad_of = |name: &str| {
        let p = grads.get(grads.id(name).unwrap());
        p.grad
            .as_ref()
            .unwrap_or_else(|| panic!("no gradient for {name}"))
            .to_f64_vec()
            .unwrap()
    };
    for (k, (id, p)) in store.iter().enumerate() {
        if p.name == "decoder.pe_scale" {
            // Its forward value is the encoder's (MODEL.md §6), so the loss does not
            // depend on its stored value; its gradient is checked with the
            // encoder's below and against PyTorch by the fixtures.
            continue;
        }
        let mut analytic = grad_of(&p.name);
        if p.name == "encoder.pe_scale" {
            // Moving the encoder's scale moves the decoder's too: the total
            // derivative is the sum of the two recorded gradients.
            analytic[0] += grad_of("decoder.pe_scale")[0];
        }
        let base = p.value.to_f64_vec().unwrap();
        // Up to 12 coordinates per tensor, drawn by seed.
        let coords: Vec<usize> = if base.len() <= 12 {
            (0..base.len()).collect()
        } else {
            let r = RngStream::new(k as u64, 3);
            (0..12).map(|i| r.bits(i) as usize % base.len()).collect()
        };
        let (mut num, mut ana) = (vec![], vec![]);
        for &j in &coords {
            let probe = |delta: f64| {
                let mut s = store.clone();
                let mut v = base.clone();
                v[j] += delta;
                s.set_value(id, Tensor::from_f64_slice(&v, p.value.shape(), DType::F64).unwrap())
                    .unwrap();
                loss_at(&s)
            };
            num.push((probe(h) - probe(-h)) / (2.0 * h));
            ana.push(analytic[j]);
        }
        let e = rel_err(&ana, &num);
        assert!(e <= 1e-6, "{}: relative gradient error {e:e}", p.name);
        worst = worst.max(e);
    }
    assert!(worst.is_finite());
}

#[test]
fn whole_mae_step_gradient_f64() {
    mae_step_gradcheck(micro(true), 0.0);
}

#[test]
fn whole_mae_step_gradient_with_dropout_f64() {
    mae_step_gradcheck(micro(true), 0.2);
}

#[test]
fn whole_mae_step_gradient_linear_embedding_f64() {
    mae_step_gradcheck(micro(false), 0.0);
}

#[test]
fn checkpoint_round_trip_gives_identical_outputs() {
    let c = ModelConfig::tiny();
    let store = jitter(&init_params(&c, 1, DType::F32).unwrap(), 7);
    let dir = std::env::temp_dir().join(format!("nemesis-ckpt-{}", std::process::id()));
    let path = dir.join("w.safetensors");
    save_checkpoint(&path, &c, &store).unwrap();
    let (c2, loaded) = load_checkpoint(&path, DType::F32).unwrap();
    assert_eq!(c2, c);
    let model = Nemesis::new(c.clone()).unwrap();
    let (noisy, clean) = batch(&c, 1, DType::F32);
    let mask = DualMask::sample(&c, 1, RngStream::new(1, 1));
    let run = |s: &ParamStore| {
        let tape = Tape::inference();
        let out = model.forward_train(&tape, s, &noisy, &clean, &mask, None).unwrap();
        let enc = model.encode(&tape, s, &clean).unwrap();
        (
            out.pred.value().to_f64_vec().unwrap(),
            out.loss.value().to_f64_vec().unwrap(),
            enc.value().to_f64_vec().unwrap(),
        )
    };
    assert_eq!(run(&store), run(&loaded));
    // The same weights under another expected config are refused, naming the key.
    let other = ModelConfig {
        ffn_dim: 64,
        ..c.clone()
    };
    let e = load_checkpoint_for(&path, &other, DType::F32).unwrap_err().to_string();
    assert!(e.contains("another configuration") && e.contains("ffn_dim"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Writes a tiny checkpoint with one change applied to its arrays.
fn broken_checkpoint(name: &str, change: impl FnOnce(&mut BTreeMap<String, Array>)) -> (std::path::PathBuf, String) {
    let c = ModelConfig::tiny();
    let store = init_params(&c, 1, DType::F32).unwrap();
    let mut arrays: BTreeMap<String, Array> = store
        .iter()
        .map(|(_, p)| (p.name.clone(), Array::from_tensor(&p.value).unwrap()))
        .collect();
    change(&mut arrays);
    let mut meta = HashMap::new();
    meta.insert("config".to_string(), c.to_json());
    let dir = std::env::temp_dir().join(format!("nemesis-bad-{}", std::process::id()));
    let path = dir.join(format!("{name}.safetensors"));
    TensorFile::write(&path, &meta, &arrays).unwrap();
    let err = load_checkpoint(&path, DType::F32).unwrap_err().to_string();
    (path, err)
}

#[test]
fn bad_checkpoints_name_the_tensor() {
    let (_, e) = broken_checkpoint("missing", |a| {
        a.remove("decoder.head.bias");
    });
    assert!(e.contains("missing tensor `decoder.head.bias`"), "{e}");
    let (_, e) = broken_checkpoint("extra", |a| {
        a.insert(
            "decoder.decoder_embed.weight".into(),
            Array {
                shape: vec![1],
                data: ArrayData::F32(vec![0.0]),
            },
        );
    });
    assert!(e.contains("unexpected tensor `decoder.decoder_embed.weight`"), "{e}");
    let (_, e) = broken_checkpoint("shape", |a| {
        a.insert(
            "encoder.norm.weight".into(),
            Array {
                shape: vec![65],
                data: ArrayData::F32(vec![1.0; 65]),
            },
        );
    });
    assert!(e.contains("`encoder.norm.weight` has shape [65]"), "{e}");
    let (path, e) = broken_checkpoint("dtype", |a| {
        a.insert(
            "encoder.pe_scale".into(),
            Array {
                shape: vec![],
                data: ArrayData::F64(vec![0.1]),
            },
        );
    });
    assert!(e.contains("`encoder.pe_scale` has dtype F64, expected F32"), "{e}");
    std::fs::remove_dir_all(path.parent().unwrap()).ok();

    let dir = std::env::temp_dir().join(format!("nemesis-junk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"definitely not safetensors").unwrap();
    let e = load_checkpoint(&junk, DType::F32).unwrap_err().to_string();
    assert!(
        e.contains("junk.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    let e = load_checkpoint(&dir.join("absent.safetensors"), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn inputs_of_the_wrong_size_or_dtype_are_errors() {
    let c = ModelConfig::tiny();
    let model = Nemesis::new(c.clone()).unwrap();
    let store = init_params(&c, 1, DType::F32).unwrap();
    let tape = Tape::inference();
    let wrong = Tensor::zeros([1, 1, 32, 32, 24], DType::F32);
    let e = model.encode(&tape, &store, &wrong).unwrap_err().to_string();
    assert!(e.contains("[1, 1, 32, 32, 24]"), "{e}");
    let e = model
        .encode(&tape, &store, &Tensor::zeros([1, 1, 32, 32, 32], DType::F64))
        .unwrap_err();
    assert!(e.to_string().contains("F64"), "{e}");
    let (noisy, clean) = batch(&c, 2, DType::F32);
    let mask = DualMask::sample(&c, 3, RngStream::new(1, 1));
    assert!(model.forward_train(&tape, &store, &noisy, &clean, &mask, None).is_err());
    let other = micro(true);
    let e = Nemesis::new(ModelConfig {
        superpatch_size: [4, 10, 12],
        ..other
    });
    assert!(e.is_err());
}

#[test]
fn reconstruction_shape_and_ablation_names() {
    let c = micro(false);
    assert!(param_specs(&c).iter().any(|s| s.name == "encoder.patch_embed.weight"));
    assert!(!param_specs(&c)
        .iter()
        .any(|s| s.name.starts_with("encoder.adaptive_agg")));
    let model = Nemesis::new(c.clone()).unwrap();
    let store = init_params(&c, 2, DType::F32).unwrap();
    let (noisy, clean) = batch(&c, 2, DType::F32);
    let mask = DualMask::sample(&c, 2, RngStream::new(3, 3));
    let tape = Tape::inference();
    let out = model.forward_train(&tape, &store, &noisy, &clean, &mask, None).unwrap();
    assert_eq!(out.latent.shape().dims(), [2, c.visible_tokens(), 12]);
    let rec = unpatchify(&c, out.pred.value()).unwrap();
    assert_eq!(rec.dims(), clean.dims());
    assert!(out.psnr().unwrap().is_finite() && out.loss.value().scalar_value().unwrap() > 0.0);
}
