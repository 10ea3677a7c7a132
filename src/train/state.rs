//! Checkpoints of a run: weights (MODEL.md §10) and, beside them, the training
//! state a resumed run needs to continue exactly.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::adamw::AdamW;
use super::config::TrainConfig;
use crate::autograd::ParamStore;
use crate::data::Position;
use crate::error::{Error, Result};
use crate::io::{Array, ArrayData, TensorFile};
use crate::model::{save_checkpoint, ModelConfig};

/// The scalar part of the training state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateMeta {
    /// Optimizer steps done.
    pub step: u64,
    /// Where the loader continues.
    pub position: Position,
    pub best_val: Option<f64>,
    pub config: TrainConfig,
    /// Seconds of training so far (for the metrics' time column).
    pub elapsed: f64,
    /// Ranks the run trained on (a resume on another number keeps the
    /// global batch, batch × accum × ranks, by changing accum).
    #[serde(default = "one_rank")]
    pub world: usize,
}

fn one_rank() -> usize {
    1
}

/// `latest.json` of a run: the newest complete checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Latest {
    pub step: u64,
    pub weights: String,
    pub state: String,
}

pub fn weights_name(step: u64) -> String {
    format!("checkpoints/step-{step:07}.safetensors")
}

pub fn state_name(step: u64) -> String {
    format!("checkpoints/step-{step:07}.state.safetensors")
}

/// Writes weights, then state, then `latest.json`, each atomically: a crash
/// at any point leaves the previous `latest.json` pointing at files that
/// are whole.
pub fn save(dir: &Path, store: &ParamStore, opt: &AdamW, meta: &StateMeta) -> Result<PathBuf> {
    let weights = dir.join(weights_name(meta.step));
    save_checkpoint(&weights, &meta.config.model, store)?;
    let mut arrays = BTreeMap::new();
    for (k, (_, p)) in store.iter().enumerate() {
        let shape = p.value.dims().to_vec();
        arrays.insert(
            format!("m.{}", p.name),
            Array {
                shape: shape.clone(),
                data: ArrayData::F32(opt.m[k].clone()),
            },
        );
        arrays.insert(
            format!("v.{}", p.name),
            Array {
                shape,
                data: ArrayData::F32(opt.v[k].clone()),
            },
        );
    }
    let mut md = HashMap::new();
    md.insert(
        "state".to_string(),
        serde_json::to_string(meta).map_err(|e| Error::format(dir, e.to_string()))?,
    );
    TensorFile::write(&dir.join(state_name(meta.step)), &md, &arrays)?;
    let latest = Latest {
        step: meta.step,
        weights: weights_name(meta.step),
        state: state_name(meta.step),
    };
    let text = serde_json::to_string_pretty(&latest).map_err(|e| Error::format(dir, e.to_string()))?;
    crate::io::write_atomic(&dir.join("latest.json"), text.as_bytes())?;
    Ok(weights)
}

/// Reads a training-state file into the optimizer (whose shapes come from
/// `store`) and returns its scalar part.
pub fn load_state(path: &Path, store: &ParamStore) -> Result<(AdamW, StateMeta)> {
    let f = TensorFile::read(path)?;
    let meta = state_meta(&f, path)?;
    fill_state(&f, path, meta, store)
}

/// `load_state` for the weights at `weights` of configuration `model`: a
/// state of another model configuration is refused, naming the weights,
/// before any moment is read.
pub fn load_state_for(
    path: &Path,
    store: &ParamStore,
    model: &ModelConfig,
    weights: &Path,
) -> Result<(AdamW, StateMeta)> {
    let f = TensorFile::read(path)?;
    let meta = state_meta(&f, path)?;
    if &meta.config.model != model {
        return Err(Error::format(
            weights,
            format!(
                "holds weights of another model configuration than its training state {}",
                path.display()
            ),
        ));
    }
    fill_state(&f, path, meta, store)
}

fn state_meta(f: &TensorFile, path: &Path) -> Result<StateMeta> {
    let json = f
        .metadata
        .get("state")
        .ok_or_else(|| Error::format(path, "not a training-state file (no `state` metadata)"))?;
    serde_json::from_str(json).map_err(|e| Error::format(path, format!("state ({e})")))
}

fn fill_state(f: &TensorFile, path: &Path, meta: StateMeta, store: &ParamStore) -> Result<(AdamW, StateMeta)> {
    let c = &meta.config;
    let mut opt = AdamW::new(c.adamw(), store);
    opt.step = meta.step;
    for (k, (_, p)) in store.iter().enumerate() {
        for (prefix, dst) in [("m", &mut opt.m[k]), ("v", &mut opt.v[k])] {
            let name = format!("{prefix}.{}", p.name);
            let a = f.get(&name)?;
            match &a.data {
                ArrayData::F32(v) if v.len() == dst.len() => dst.copy_from_slice(v),
                _ => {
                    return Err(Error::format(
                        path,
                        format!("`{name}` does not fit parameter `{}`", p.name),
                    ))
                }
            }
        }
    }
    Ok((opt, meta))
}

/// Checkpoints of a run, oldest first.
pub fn list_checkpoints(dir: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = std::fs::read_dir(dir.join("checkpoints"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().to_string();
                    n.strip_prefix("step-")
                        .and_then(|r| r.strip_suffix(".state.safetensors"))
                        .and_then(|s| s.parse().ok())
                })
                .collect()
        })
        .unwrap_or_default();
    steps.sort_unstable();
    steps
}

/// Removes all but the newest `keep` checkpoints (weights and state).
pub fn prune(dir: &Path, keep: usize) {
    let steps = list_checkpoints(dir);
    for &s in steps.iter().take(steps.len().saturating_sub(keep.max(1))) {
        std::fs::remove_file(dir.join(weights_name(s))).ok();
        std::fs::remove_file(dir.join(state_name(s))).ok();
    }
}
