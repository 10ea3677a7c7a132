//! The engine against tools/torch_reference.py, our independent PyTorch
//! implementation of docs/MODEL.md: outputs within 1e-5 relative, gradients within
//! 1e-4, in f32; far tighter in f64.

mod common;

use std::path::Path;

use common::rel_err;
use nemesis::autograd::{ParamStore, Tape};
use nemesis::io::{ArrayData, TensorFile};
use nemesis::model::{param_specs, unpatchify, DualMask, ModelConfig, Nemesis};
use nemesis::{DType, Tensor};

struct Fixture {
    file: TensorFile,
    config: ModelConfig,
}

fn fixture(name: &str) -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let file = TensorFile::read(&path).unwrap_or_else(|e| panic!("{e}"));
    let config = ModelConfig::from_json(&file.metadata["config"]).unwrap();
    Fixture { file, config }
}

impl Fixture {
    fn t(&self, name: &str, dtype: DType) -> Tensor {
        self.file.tensor(name).unwrap().to_dtype(dtype).unwrap()
    }

    fn store(&self, dtype: DType) -> ParamStore {
        let mut s = ParamStore::new();
        for spec in param_specs(&self.config) {
            let t = self.t(&format!("param.{}", spec.name), dtype);
            assert_eq!(t.dims(), spec.shape.as_slice(), "{}", spec.name);
            s.add(spec.name, t).unwrap();
        }
        let names = self.file.arrays.keys().filter(|k| k.starts_with("param.")).count();
        assert_eq!(names, s.len(), "the fixture has exactly the model's parameters");
        s
    }

    fn mask(&self) -> DualMask {
        let a = self.file.get("mask.ids_keep").unwrap();
        let ArrayData::I64(ids) = &a.data else {
            panic!("ids_keep must be int64")
        };
        let m = DualMask::from_ids_keep(&self.config, a.shape[0], ids.iter().map(|&i| i as usize).collect()).unwrap();
        let ArrayData::U8(stored) = &self.file.get("mask.mask").unwrap().data else {
            panic!("mask must be u8")
        };
        assert_eq!(&m.mask_u8(), stored, "ids_keep and mask agree");
        m
    }
}

fn check(name: &str, dtype: DType, out_tol: f64, grad_tol: f64) {
    let f = fixture(name);
    let model = Nemesis::new(f.config.clone()).unwrap();
    let mut store = f.store(dtype);
    let (noisy, clean) = (f.t("input.noisy", dtype), f.t("input.clean", dtype));
    let mask = f.mask();

    let tape = Tape::new();
    let out = model.forward_train(&tape, &store, &noisy, &clean, &mask, None).unwrap();
    let cmp = |what: &str, got: &Tensor, want: &str, tol: f64| {
        let w = f.t(want, DType::F64);
        assert_eq!(got.dims(), w.dims(), "{name} {what}: shape");
        let e = rel_err(&got.to_f64_vec().unwrap(), &w.to_f64_vec().unwrap());
        assert!(e <= tol, "{name} {dtype:?} {what}: relative error {e:e} > {tol:e}");
        e
    };
    cmp("latent", out.latent.value(), "out.latent", out_tol);
    cmp("pred", out.pred.value(), "out.pred", out_tol);
    cmp("loss", out.loss.value(), "out.loss", out_tol);
    let rec = unpatchify(&f.config, out.pred.value()).unwrap();
    cmp("reconstruction", &rec, "out.reconstruction", out_tol);
    let psnr = f.t("out.psnr", DType::F64).scalar_value().unwrap();
    assert!(
        ((out.psnr().unwrap() - psnr) / psnr).abs() <= out_tol,
        "{name} psnr {} vs {psnr}",
        out.psnr().unwrap()
    );

    tape.backward(&out.loss, &mut store).unwrap();
    for (_, p) in store.iter() {
        let g = p
            .grad
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no gradient for {}", p.name));
        cmp(&format!("grad {}", p.name), g, &format!("grad.{}", p.name), grad_tol);
    }

    let tape = Tape::inference();
    let tokens = model.encode(&tape, &store, &clean).unwrap();
    cmp("eval tokens", tokens.value(), "out.eval_tokens", out_tol);
}

#[test]
fn nemesis_tokens_f32() {
    check("mae_tokens.safetensors", DType::F32, 1e-5, 1e-4);
}

#[test]
fn nemesis_tokens_f64() {
    check("mae_tokens.safetensors", DType::F64, 1e-10, 1e-9);
}

#[test]
fn linear_embedding_f32() {
    check("mae_linear.safetensors", DType::F32, 1e-5, 1e-4);
}

#[test]
fn linear_embedding_f64() {
    check("mae_linear.safetensors", DType::F64, 1e-10, 1e-9);
}
