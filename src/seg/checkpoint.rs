//! Segmentation checkpoints (SPEC §14): safetensors under the public
//! `NEMESISSeg` names — `encoder.*` as MODEL.md §10, the decoder's
//! parameters and BatchNorm running statistics — with the configuration
//! (encoder keys, `num_classes`, `decoder_channels`) in metadata `config`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use super::data::ClassTable;
use super::model::{batch_norms, decoder_specs, RunningStats, SegConfig};
use crate::autograd::ParamStore;
use crate::error::{Error, Result};
use crate::io::{Array, ArrayData, TensorFile};
use crate::model::{load_checkpoint, param_specs, ModelConfig};
use crate::tensor::{DType, Tensor};

/// The encoder's parameter names and shapes (MODEL.md §9), in order.
fn encoder_specs(c: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    param_specs(c)
        .into_iter()
        .filter(|s| s.name.starts_with("encoder."))
        .map(|s| (s.name, s.shape))
        .collect()
}

/// Every tensor a segmentation checkpoint of `c` holds: (name, shape).
fn expected(c: &SegConfig) -> Vec<(String, Vec<usize>)> {
    let mut out = encoder_specs(&c.encoder);
    out.extend(decoder_specs(c).into_iter().map(|s| (s.name, s.shape)));
    for (p, ch) in batch_norms(c) {
        out.push((format!("{p}.running_mean"), vec![ch]));
        out.push((format!("{p}.running_var"), vec![ch]));
    }
    out
}

/// The encoder of a pretraining checkpoint (safetensors or `.pt`): its
/// configuration and its `encoder.*` parameters alone, in `dtype`.
pub fn load_encoder(path: &Path, dtype: DType) -> Result<(ModelConfig, ParamStore)> {
    let (config, full) = load_checkpoint(path, dtype)?;
    let mut store = ParamStore::new();
    for (name, _) in encoder_specs(&config) {
        let id = full
            .id(&name)
            .ok_or_else(|| Error::format(path, format!("has no `{name}`")))?;
        store.add(name, full.get(id).value.clone())?;
    }
    Ok((config, store))
}

/// A segmentation model read back: configuration, parameters, running
/// statistics, and the label value of each class when the file says.
pub struct SegCheckpoint {
    pub config: SegConfig,
    pub store: ParamStore,
    pub stats: RunningStats,
    pub classes: Option<ClassTable>,
}

/// Writes the model atomically (the class table, when given, in metadata
/// `classes`); equal weights give byte-identical files.
pub fn save_seg(
    path: &Path,
    c: &SegConfig,
    store: &ParamStore,
    stats: &RunningStats,
    classes: Option<&ClassTable>,
) -> Result<()> {
    let mut arrays = BTreeMap::new();
    for (name, shape) in expected(c) {
        if let Some(id) = store.id(&name) {
            let v = &store.get(id).value;
            if v.dims() != shape.as_slice() {
                return Err(Error::invalid(
                    "save_seg",
                    format!("`{name}` has shape {}, expected {shape:?}", v.shape()),
                ));
            }
            arrays.insert(name, Array::f32_from_tensor(v)?);
        }
    }
    for (p, (mean, var)) in &stats.0 {
        for (suffix, v) in [("running_mean", mean), ("running_var", var)] {
            let t = Tensor::from_f64_slice(v, [v.len()], DType::F32)?;
            arrays.insert(format!("{p}.{suffix}"), Array::f32_from_tensor(&t)?);
        }
    }
    let want = expected(c);
    if arrays.len() != want.len() {
        let missing: Vec<&str> = want
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !arrays.contains_key(*n))
            .take(5)
            .collect();
        return Err(Error::invalid("save_seg", format!("the model lacks {missing:?}")));
    }
    let mut meta = HashMap::new();
    meta.insert("config".to_string(), c.to_json());
    if let Some(t) = classes {
        if t.len() != c.num_classes {
            return Err(Error::invalid(
                "save_seg",
                format!("{} classes in the table, {} in the model", t.len(), c.num_classes),
            ));
        }
        let json = serde_json::to_string(t).map_err(|e| Error::invalid("save_seg", e.to_string()))?;
        meta.insert("classes".to_string(), json);
    }
    TensorFile::write(path, &meta, &arrays)
}

/// Reads a segmentation model: configuration, parameters (in `dtype`) and
/// running statistics. Every tensor must be present as F32 with its exact
/// shape and finite; PyTorch's `num_batches_tracked` counters are ignored;
/// anything else is named as unexpected.
pub fn load_seg(path: &Path, dtype: DType) -> Result<SegCheckpoint> {
    let file = TensorFile::read(path)?;
    let json = file.metadata.get("config").ok_or_else(|| {
        Error::format(
            path,
            "no `config` in the safetensors metadata: not a segmentation model of this engine",
        )
    })?;
    let c = SegConfig::from_json(json).map_err(|e| Error::format(path, format!("its {e}")))?;
    let want = expected(&c);
    let mut problems = Vec::new();
    for (name, shape) in &want {
        match file.arrays.get(name) {
            None => problems.push(format!("missing tensor `{name}` ({shape:?})")),
            Some(a) if &a.shape != shape => problems.push(format!(
                "tensor `{name}` has shape {:?}, the config needs {shape:?}",
                a.shape
            )),
            Some(a) => match &a.data {
                ArrayData::F32(v) if v.iter().all(|x| x.is_finite()) => {}
                ArrayData::F32(_) => problems.push(format!("tensor `{name}` holds non-finite values")),
                _ => problems.push(format!("tensor `{name}` has dtype {}, expected F32", a.dtype_name())),
            },
        }
    }
    let known: HashSet<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
    for name in file.arrays.keys() {
        if !known.contains(name.as_str()) && !name.ends_with(".num_batches_tracked") {
            problems.push(format!("unexpected tensor `{name}`"));
        }
    }
    if !problems.is_empty() {
        let shown = problems.len().min(8);
        return Err(Error::format(
            path,
            format!(
                "does not match its config ({} problem{}): {}{}",
                problems.len(),
                if problems.len() == 1 { "" } else { "s" },
                problems[..shown].join("; "),
                if problems.len() > shown { "; …" } else { "" }
            ),
        ));
    }
    let mut store = ParamStore::new();
    let mut stats = RunningStats::new(&c);
    for (name, _) in &want {
        let t = file.tensor(name)?;
        if let Some(p) = name.strip_suffix(".running_mean") {
            if let Some(s) = stats.0.get_mut(p) {
                s.0 = t.to_f64_vec()?;
            }
        } else if let Some(p) = name.strip_suffix(".running_var") {
            if let Some(s) = stats.0.get_mut(p) {
                s.1 = t.to_f64_vec()?;
            }
        } else {
            store.add(name.clone(), t.to_dtype(dtype)?)?;
        }
    }
    let classes = match file.metadata.get("classes") {
        None => None,
        Some(j) => {
            let t: ClassTable =
                serde_json::from_str(j).map_err(|e| Error::format(path, format!("its class table: {e}")))?;
            if t.len() != c.num_classes || t.names.len() != t.len() {
                return Err(Error::format(
                    path,
                    format!("its class table has {} classes, the model {}", t.len(), c.num_classes),
                ));
            }
            Some(t)
        }
    };
    Ok(SegCheckpoint {
        config: c,
        store,
        stats,
        classes,
    })
}
