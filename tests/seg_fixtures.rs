//! The segmentation model against tools/torch_seg_reference.py, our
//! independent PyTorch implementation of SPEC §14: training-mode logits,
//! Dice + CE, every gradient, the BatchNorm running update, and
//! evaluation-mode logits from running statistics.

mod common;

use std::path::Path;

use common::rel_err;
use nemesis::autograd::{ParamStore, Tape};
use nemesis::io::{ArrayData, TensorFile};
use nemesis::seg::{batch_norms, load_seg, save_seg, Mode, RunningStats, SegConfig, SegModel};
use nemesis::{DType, Tensor};

struct Fixture {
    file: TensorFile,
    config: SegConfig,
}

fn fixture(name: &str) -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let file = TensorFile::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let config = SegConfig::from_json(&file.metadata["config"]).unwrap();
    Fixture { file, config }
}

impl Fixture {
    fn t(&self, name: &str, dtype: DType) -> Tensor {
        self.file.tensor(name).unwrap().to_dtype(dtype).unwrap()
    }

    fn store(&self, dtype: DType) -> ParamStore {
        let mut s = ParamStore::new();
        for name in self.file.arrays.keys() {
            if let Some(p) = name.strip_prefix("param.") {
                s.add(p, self.t(name, dtype)).unwrap();
            }
        }
        s
    }

    fn stats(&self, prefix: &str) -> RunningStats {
        let mut r = RunningStats::new(&self.config);
        for (p, _) in batch_norms(&self.config) {
            let get = |k: &str| self.t(&format!("{prefix}.{p}.{k}"), DType::F64).to_f64_vec().unwrap();
            r.0.insert(p.clone(), (get("running_mean"), get("running_var")));
        }
        r
    }

    fn labels(&self) -> Vec<u32> {
        let ArrayData::I64(v) = &self.file.get("input.labels").unwrap().data else {
            panic!("labels must be int64")
        };
        v.iter().map(|&l| l as u32).collect()
    }
}

fn check(name: &str, dtype: DType, out_tol: f64, grad_tol: f64) {
    let f = fixture(name);
    let model = SegModel::new(f.config.clone()).unwrap();
    let mut store = f.store(dtype);
    let x = f.t("input.x", dtype);
    let cmp = |what: &str, got: &[f64], want: &str, tol: f64| {
        let w = f.t(want, DType::F64).to_f64_vec().unwrap();
        assert_eq!(got.len(), w.len(), "{name} {what}: size");
        let e = rel_err(got, &w);
        assert!(e <= tol, "{name} {dtype:?} {what}: relative error {e:e} > {tol:e}");
    };

    let before = f.stats("buffer");
    let tape = Tape::inference();
    let (logits, moments) = model.forward(&tape, &store, &before, &x, Mode::Eval).unwrap();
    assert!(moments.is_empty(), "evaluation leaves the running statistics alone");
    cmp(
        "eval logits",
        &logits.value().to_f64_vec().unwrap(),
        "out.eval_logits",
        out_tol,
    );

    let tape = Tape::new();
    let train = Mode::Train {
        dropout: None,
        freeze_encoder: false,
    };
    let (logits, moments) = model.forward(&tape, &store, &before, &x, train).unwrap();
    assert_eq!(logits.shape().dims()[2..], x.dims()[2..], "logits on the input's grid");
    cmp(
        "train logits",
        &logits.value().to_f64_vec().unwrap(),
        "out.train_logits",
        out_tol,
    );
    let loss = tape.dice_ce(&logits, &f.labels()).unwrap();
    cmp("loss", &loss.value().to_f64_vec().unwrap(), "out.loss", out_tol);
    let mut after = before.clone();
    after.update(&moments).unwrap();
    // Running statistics are kept in f32, as PyTorch's buffers and our
    // checkpoints hold them.
    let stat_tol = out_tol.max(1e-7);
    for (p, (mean, var)) in &after.0 {
        cmp(
            &format!("{p} running mean"),
            mean,
            &format!("out.{p}.running_mean"),
            stat_tol,
        );
        cmp(
            &format!("{p} running var"),
            var,
            &format!("out.{p}.running_var"),
            stat_tol,
        );
    }
    tape.backward(&loss, &mut store).unwrap();
    for (_, p) in store.iter() {
        let g = p
            .grad
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no gradient for {}", p.name));
        cmp(
            &format!("grad {}", p.name),
            &g.to_f64_vec().unwrap(),
            &format!("grad.{}", p.name),
            grad_tol,
        );
    }
}

#[test]
fn resized_logits_f64() {
    check("seg_resize.safetensors", DType::F64, 1e-10, 1e-8);
}

#[test]
fn resized_logits_f32() {
    check("seg_resize.safetensors", DType::F32, 1e-5, 1e-4);
}

#[test]
fn exact_grid_linear_embedding_f64() {
    check("seg_exact.safetensors", DType::F64, 1e-10, 1e-8);
}

/// A model written and read back is the same model, its file byte for byte.
#[test]
fn checkpoint_round_trip() {
    let f = fixture("seg_exact.safetensors");
    let store = f.store(DType::F32);
    let stats = f.stats("buffer");
    let dir = std::env::temp_dir().join(format!("nemesis-seg-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.safetensors");
    save_seg(&a, &f.config, &store, &stats, None).unwrap();
    let ck = load_seg(&a, DType::F32).unwrap();
    let (c, s2, st2) = (ck.config, ck.store, ck.stats);
    assert_eq!(c, f.config);
    assert_eq!(s2.len(), store.len());
    let b = dir.join("b.safetensors");
    save_seg(&b, &c, &s2, &st2, None).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::remove_dir_all(&dir).ok();
}

/// The whole model on the emulator (the CUDA kernels on the CPU) against
/// the same fixture: training logits, loss and every gradient in f32.
#[test]
fn resized_logits_on_the_emulator() {
    let f = fixture("seg_resize.safetensors");
    let dev: nemesis::device::SharedDevice = std::sync::Arc::new(nemesis::backend::emu::EmuDevice::new());
    let model = SegModel::new(f.config.clone()).unwrap();
    let mut store = f.store(DType::F32).to_device(&dev).unwrap();
    let x = f.t("input.x", DType::F32);
    let tape = Tape::new();
    let train = Mode::Train {
        dropout: None,
        freeze_encoder: false,
    };
    let (logits, _) = model.forward(&tape, &store, &f.stats("buffer"), &x, train).unwrap();
    let loss = tape.dice_ce(&logits, &f.labels()).unwrap();
    let cmp = |what: &str, got: &Tensor, want: &str, tol: f64| {
        let got = got.to_cpu().unwrap().to_f64_vec().unwrap();
        let e = rel_err(&got, &f.t(want, DType::F64).to_f64_vec().unwrap());
        assert!(e <= tol, "emulator {what}: relative error {e:e} > {tol:e}");
    };
    cmp("train logits", logits.value(), "out.train_logits", 1e-5);
    cmp("loss", loss.value(), "out.loss", 1e-5);
    tape.backward(&loss, &mut store).unwrap();
    for (_, p) in store.iter() {
        let g = p.grad.as_ref().unwrap_or_else(|| panic!("no gradient for {}", p.name));
        cmp(&format!("grad {}", p.name), g, &format!("grad.{}", p.name), 1e-4);
    }
}
