//! Official `.pt` checkpoints read in Rust (`nemesis convert`, and `.pt`
//! wherever a checkpoint is taken), against tools/convert_checkpoint.py on
//! the same files: tests/fixtures/pt, written by torch from
//! tools/make_pt_fixtures.py, with each good file's conversion by the
//! Python tool beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

use nemesis::io::{ArrayData, TensorFile};
use nemesis::model::{load_checkpoint, load_checkpoint_for, ModelConfig};
use nemesis::tensor::DType;

mod common;
use common::bin;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pt")
        .join(name)
}

fn convert(input: &Path, out: &Path) -> std::process::Output {
    Command::new(bin())
        .arg("convert")
        .arg(input)
        .arg(out)
        .args([
            "--num-heads",
            "2",
            "--decoder-num-heads",
            "2",
            "--superpatch-size",
            "16,16,16",
        ])
        .output()
        .unwrap()
}

fn f32s(a: &nemesis::io::Array) -> Vec<u32> {
    match &a.data {
        ArrayData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
        other => panic!("not f32: {other:?}"),
    }
}

/// The zip-format training checkpoint and the legacy-format bare state
/// dict (DataParallel names, f16/bf16/f64 storages, views) convert to what
/// the Python tool writes: the same names, shapes, bits and configuration.
#[test]
fn both_formats_convert_as_the_python_tool_does() {
    let dir = common::fresh_dir("convert", "same");
    for (name, says) in [
        (
            "train_zip",
            vec![
                "taking model_state_dict; ignoring best_loss, epoch, note, optimizer_state_dict, scheduler_state_dict",
                "read as a scalar",
            ],
        ),
        (
            "bare_legacy",
            vec![
                "a bare state dict",
                "prefix `module.`",
                "tensors stored as",
                "assumed from the head's 64 outputs",
            ],
        ),
    ] {
        let out = dir.join(format!("{name}.safetensors"));
        let o = convert(&fixture(&format!("{name}.pt")), &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}: {err}");
        for s in says {
            assert!(err.contains(s), "{name}: no `{s}` in\n{err}");
        }
        let ours = TensorFile::read(&out).unwrap();
        let theirs = TensorFile::read(&fixture(&format!("{name}.expected.safetensors"))).unwrap();
        assert_eq!(
            ours.arrays.keys().collect::<Vec<_>>(),
            theirs.arrays.keys().collect::<Vec<_>>(),
            "{name}"
        );
        for (k, a) in &ours.arrays {
            let b = &theirs.arrays[k];
            assert_eq!(a.shape, b.shape, "{name}: {k}");
            assert_eq!(f32s(a), f32s(b), "{name}: {k} differs");
        }
        let cfg = |f: &TensorFile| -> serde_json::Value { serde_json::from_str(&f.metadata["config"]).unwrap() };
        assert_eq!(cfg(&ours), cfg(&theirs), "{name}: configuration");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `--checkpoint x.pt` infers the configuration (the head counts and
/// superpatch size the paper's, said); `--init x.pt` takes the run's
/// configuration, and one the shapes do not fit is refused naming them.
#[test]
fn a_pt_is_taken_wherever_a_checkpoint_is() {
    let (config, store) = load_checkpoint(&fixture("train_zip.pt"), DType::F32).unwrap();
    assert_eq!((config.embed_dim, config.depth, config.num_nemesis_tokens), (16, 1, 2));
    assert_eq!(config.num_heads, ModelConfig::paper().num_heads);
    let micro = ModelConfig {
        superpatch_size: [16, 16, 16],
        patch_size: [4, 4, 4],
        embed_dim: 16,
        depth: 1,
        num_heads: 2,
        decoder_depth: 1,
        decoder_num_heads: 2,
        num_nemesis_tokens: 2,
        ffn_dim: 32,
        ..ModelConfig::paper()
    };
    let same = load_checkpoint_for(&fixture("train_zip.pt"), &micro, DType::F32).unwrap();
    assert_eq!(same.len(), store.len());
    let e = load_checkpoint_for(&fixture("train_zip.pt"), &ModelConfig::tiny(), DType::F32)
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not match") && e.contains("the config needs"), "{e}");
}

#[test]
fn what_is_not_a_state_dict_is_named() {
    let dir = common::fresh_dir("convert", "bad");
    let o = convert(&fixture("bad_global.pt"), &dir.join("x.safetensors"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("model_state_dict.encoder.norm.weight (__main__.Thing)"),
        "{err}"
    );
    assert!(err.contains("nothing in it was run"), "{err}");
    // Beside the state dict too: a training script's saved arguments.
    let o = convert(&fixture("foreign_args.pt"), &dir.join("x.safetensors"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("args (argparse.Namespace)"), "{err}");
    let o = convert(&fixture("bad_layout.pt"), &dir.join("x.safetensors"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("its keys: epoch, weights"), "{err}");
    // Not a checkpoint at all: a NIfTI file named .pt.
    let fake = dir.join("fake.pt");
    std::fs::write(&fake, b"not a pickle at all").unwrap();
    let o = convert(&fake, &dir.join("x.safetensors"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("not a readable PyTorch checkpoint"),
        "{err}"
    );
    assert!(!dir.join("x.safetensors").exists());
    std::fs::remove_dir_all(&dir).ok();
}
