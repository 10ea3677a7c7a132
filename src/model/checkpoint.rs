//! Weights checkpoints (MODEL.md §10): safetensors, official names, f32, the
//! configuration JSON in metadata key `config`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::config::ModelConfig;
use super::convert::{convert_pt, PtConfig};
use super::params::param_specs;
use crate::autograd::ParamStore;
use crate::error::{Error, Result};
use crate::io::{is_torch_file, Array, ArrayData, TensorFile};
use crate::tensor::{DType, Tensor};

/// Writes every parameter of `store` as f32 under its name, with `config`,
/// atomically. The store must hold exactly the parameters of `config`. The
/// metadata holds the one key, so equal weights give byte-identical files.
pub fn save_checkpoint(path: &Path, config: &ModelConfig, store: &ParamStore) -> Result<()> {
    check_store(config, store)?;
    let arrays: BTreeMap<String, Array> = store
        .iter()
        .map(|(_, p)| Ok((p.name.clone(), Array::f32_from_tensor(&p.value)?)))
        .collect::<Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert("config".to_string(), config.to_json());
    TensorFile::write(path, &meta, &arrays)
}

fn check_store(config: &ModelConfig, store: &ParamStore) -> Result<()> {
    let specs = param_specs(config);
    if specs.len() != store.len() {
        return Err(Error::invalid(
            "save_checkpoint",
            format!("the store holds {} parameters, the config {}", store.len(), specs.len()),
        ));
    }
    for s in &specs {
        let id = store
            .id(&s.name)
            .ok_or_else(|| Error::invalid("save_checkpoint", format!("parameter `{}` is missing", s.name)))?;
        if store.get(id).value.dims() != s.shape.as_slice() {
            return Err(Error::invalid(
                "save_checkpoint",
                format!(
                    "parameter `{}` has shape {}, expected {:?}",
                    s.name,
                    store.get(id).value.shape(),
                    s.shape
                ),
            ));
        }
    }
    Ok(())
}

/// Reads a checkpoint: its configuration and its parameters in `dtype`.
/// Every parameter of the configuration must be present, as F32 with the
/// exact shape, and nothing else may be; each miss is named.
///
/// A PyTorch `.pt` checkpoint is read too (model/convert.rs), its
/// configuration inferred from the shapes; what that took is said on
/// stderr.
pub fn load_checkpoint(path: &Path, dtype: DType) -> Result<(ModelConfig, ParamStore)> {
    if is_torch_file(path) {
        return load_pt(path, &PtConfig::default(), dtype);
    }
    load_file(TensorFile::read(path)?, dtype)
}

/// A `.pt` checkpoint under the configuration `how` settles, its notes said
/// on stderr.
pub fn load_pt(path: &Path, how: &PtConfig, dtype: DType) -> Result<(ModelConfig, ParamStore)> {
    let c = convert_pt(path, how)?;
    for n in &c.notes {
        eprintln!("{}: {n}", path.display());
    }
    let mut metadata = HashMap::new();
    metadata.insert("config".to_string(), c.config.to_json());
    let file = TensorFile {
        path: path.to_path_buf(),
        metadata,
        arrays: c.arrays,
    };
    load_file(file, dtype)
}

fn load_file(file: TensorFile, dtype: DType) -> Result<(ModelConfig, ParamStore)> {
    let path = file.path.clone();
    let path = path.as_path();
    let json = file.metadata.get("config").ok_or_else(|| {
        Error::format(
            path,
            "no `config` in the safetensors metadata: not a checkpoint of this engine (an official PyTorch \
             checkpoint is read as the .pt itself, or converted with `nemesis convert`)",
        )
    })?;
    let config = ModelConfig::from_json(json).map_err(|e| Error::format(path, format!("its {e}")))?;
    let specs = param_specs(&config);
    let mut problems = Vec::new();
    for s in &specs {
        match file.arrays.get(&s.name) {
            None => problems.push(format!("missing tensor `{}` ({:?})", s.name, s.shape)),
            Some(a) if a.shape != s.shape => problems.push(format!(
                "tensor `{}` has shape {:?}, the config needs {:?}",
                s.name, a.shape, s.shape
            )),
            Some(a) if !matches!(a.data, ArrayData::F32(_)) => problems.push(format!(
                "tensor `{}` has dtype {}, expected F32",
                s.name,
                a.dtype_name()
            )),
            Some(a) => {
                if let ArrayData::F32(v) = &a.data {
                    let bad = v.iter().filter(|x| !x.is_finite()).count();
                    if bad > 0 {
                        let first = v.iter().position(|x| !x.is_finite()).unwrap_or(0);
                        problems.push(format!(
                            "tensor `{}` holds {bad} non-finite value{} (the first, {}, at flat index {first})",
                            s.name,
                            if bad == 1 { "" } else { "s" },
                            v[first]
                        ));
                    }
                }
            }
        }
    }
    let expected: std::collections::HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for name in file.arrays.keys().filter(|n| !expected.contains(n.as_str())) {
        problems.push(format!("unexpected tensor `{name}`"));
    }
    if !problems.is_empty() {
        let shown = problems.len().min(10);
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
    for s in &specs {
        let t = file.tensor(&s.name)?;
        store.add(s.name.clone(), t.to_dtype(dtype)?)?;
    }
    Ok((config, store))
}

/// `load_checkpoint`, also requiring the configuration to equal `expected`
/// (a run resumed or probed with another model is refused, naming the keys).
pub fn load_checkpoint_for(path: &Path, expected: &ModelConfig, dtype: DType) -> Result<ParamStore> {
    // A `.pt` takes the expected configuration; its shapes must fit it.
    if is_torch_file(path) {
        let how = PtConfig {
            base: Some(expected.clone()),
            ..PtConfig::default()
        };
        return load_pt(path, &how, dtype).map(|(_, store)| store);
    }
    let (config, store) = load_checkpoint(path, dtype)?;
    if &config != expected {
        let a = serde_json::to_value(&config).unwrap_or_default();
        let b = serde_json::to_value(expected).unwrap_or_default();
        let diff: Vec<String> = match (a.as_object(), b.as_object()) {
            (Some(a), Some(b)) => a
                .iter()
                .filter(|(k, v)| b.get(*k) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k}: checkpoint {v}, expected {}",
                        b.get(k).cloned().unwrap_or_default()
                    )
                })
                .collect(),
            _ => vec![],
        };
        return Err(Error::format(
            path,
            format!("is a checkpoint of another configuration ({})", diff.join("; ")),
        ));
    }
    Ok(store)
}

/// A parameter's value, by official name.
pub fn param_value(store: &ParamStore, name: &str) -> Result<Tensor> {
    store
        .id(name)
        .map(|id| store.get(id).value.clone())
        .ok_or_else(|| Error::invalid("model", format!("parameter `{name}` is missing")))
}
