//! PyTorch `.pt` checkpoints (torch.save), read without Python: the one
//! module of ours over the `pytorch-reader` crate (docs/DESIGN.md says why
//! that crate). It parses the pickle and runs nothing: it rebuilds tensors
//! (views gathered, any storage type), dicts, lists, tuples, numbers and
//! strings, and leaves any other object opaque. Here any such other object
//! anywhere in the file is an error naming its Python type and where it
//! sits (torch's own classes, dtypes say, excepted), as torch's restricted
//! loader refuses them; then the state dict is found (a training
//! checkpoint's `model_state_dict`, beside optimizer and scheduler state,
//! or a bare state dict), every entry of it must be a tensor, the `module.`
//! prefix of `nn.DataParallel` is dropped, and float tensors are widened or
//! narrowed to f32.

use std::collections::BTreeMap;
use std::path::Path;

use pytorch_reader::{DType as PtDType, PickleValue, PytorchReader};

use super::tensor_file::{Array, ArrayData};
use crate::error::{Error, Result};

/// The tensors of a checkpoint's state dict, as f32, and what was done to
/// find them (said on stderr by the commands).
#[derive(Debug)]
pub struct StateDict {
    pub arrays: BTreeMap<String, Array>,
    pub notes: Vec<String>,
}

/// Whether `path` names a PyTorch checkpoint by its extension.
pub fn is_torch_file(path: &Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    name.ends_with(".pt") || name.ends_with(".pth") || name.ends_with(".ckpt")
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("not a readable PyTorch checkpoint ({e})"))
}

/// The state dict of the checkpoint at `path`.
pub fn read_state_dict(path: &Path) -> Result<StateDict> {
    if !path.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        ));
    }
    let mut notes = Vec::new();
    let root = PytorchReader::read_pickle_data(path, None).map_err(|e| err(path, e))?;
    let mut foreign = Vec::new();
    foreign_objects(&root, "", &mut foreign);
    if !foreign.is_empty() {
        foreign.sort();
        return Err(Error::format(
            path,
            format!(
                "holds objects that are not tensors, dicts, lists, tuples, numbers or strings: {}; nothing in it \
                 was run. Save the state dict alone (torch.save(model.state_dict(), …)), or, if you trust the \
                 file, convert it with tools/convert_checkpoint.py --trust-pickle",
                foreign.join(", ")
            ),
        ));
    }
    let key = match &root {
        PickleValue::Dict(d) if d.contains_key("model_state_dict") => {
            let mut others: Vec<&String> = d.keys().filter(|k| *k != "model_state_dict").collect();
            others.sort();
            if !others.is_empty() {
                let others: Vec<&str> = others.iter().map(|s| s.as_str()).collect();
                notes.push(format!("taking model_state_dict; ignoring {}", others.join(", ")));
            }
            Some("model_state_dict")
        }
        PickleValue::Dict(d) if !d.is_empty() && d.values().all(is_tensor) => {
            notes.push("a bare state dict".into());
            None
        }
        PickleValue::Dict(d) => {
            let mut keys: Vec<&String> = d.keys().collect();
            keys.sort();
            return Err(Error::format(
                path,
                format!(
                    "neither a training checkpoint with model_state_dict nor a bare state dict (its keys: {})",
                    keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        other => {
            return Err(Error::format(
                path,
                format!("holds a {}, not a dict of tensors", kind(other)),
            ))
        }
    };
    // Every entry of the state dict is a tensor; anything else is named.
    if let (Some(k), PickleValue::Dict(top)) = (key, &root) {
        match &top[k] {
            PickleValue::Dict(d) => {
                let mut bad: Vec<String> = d
                    .iter()
                    .filter(|(_, v)| !is_tensor(v))
                    .map(|(n, v)| format!("{n} ({})", kind(v)))
                    .collect();
                bad.sort();
                if !bad.is_empty() {
                    return Err(Error::format(
                        path,
                        format!("entries of {k} that are not tensors: {}", bad.join(", ")),
                    ));
                }
            }
            other => return Err(Error::format(path, format!("{k} is a {}, not a dict", kind(other)))),
        }
    }
    let reader = match key {
        Some(k) => PytorchReader::with_top_level_key(path, k),
        None => PytorchReader::new(path),
    }
    .map_err(|e| err(path, e))?;
    let mut tensors: Vec<(String, pytorch_reader::Tensor)> = reader.into_tensors().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let prefixed = tensors.iter().filter(|(n, _)| n.starts_with("module.")).count();
    if prefixed > 0 {
        if prefixed != tensors.len() {
            return Err(Error::format(
                path,
                "some names carry nn.DataParallel's prefix `module.` and some do not",
            ));
        }
        notes.push("dropped nn.DataParallel's prefix `module.`".into());
    }
    let mut arrays = BTreeMap::new();
    let mut kinds = BTreeMap::<&'static str, usize>::new();
    for (name, t) in tensors {
        let name = name.strip_prefix("module.").map(str::to_string).unwrap_or(name);
        let bytes = t.read().map_err(|e| err(path, e))?;
        let values: Vec<f32> = match t.dtype() {
            PtDType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            PtDType::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_ne_bytes(c.try_into().unwrap_or([0; 8])) as f32)
                .collect(),
            PtDType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32())
                .collect(),
            PtDType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_ne_bytes([c[0], c[1]])).to_f32())
                .collect(),
            other => {
                return Err(Error::format(
                    path,
                    format!("tensor `{name}` holds {other:?} values; the model's weights are floating point"),
                ))
            }
        };
        *kinds.entry(dtype_name(t.dtype())).or_default() += 1;
        arrays.insert(
            name,
            Array {
                shape: t.shape().to_vec(),
                data: ArrayData::F32(values),
            },
        );
    }
    if kinds.keys().any(|k| *k != "f32") {
        let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        notes.push(format!("tensors stored as {}, read as f32", list.join(", ")));
    }
    Ok(StateDict { arrays, notes })
}

fn dtype_name(d: PtDType) -> &'static str {
    match d {
        PtDType::F32 => "f32",
        PtDType::F64 => "f64",
        PtDType::F16 => "f16",
        PtDType::BF16 => "bf16",
        _ => "other",
    }
}

/// Every value in `v` that is neither plain data nor torch's own (a
/// tensor, a storage, a dtype), as `place (type)`.
fn foreign_objects(v: &PickleValue, at: &str, out: &mut Vec<String>) {
    let place = |k: &str| {
        if at.is_empty() {
            k.to_string()
        } else {
            format!("{at}.{k}")
        }
    };
    match v {
        PickleValue::Dict(d) => d.iter().for_each(|(k, v)| foreign_objects(v, &place(k), out)),
        PickleValue::List(l) => l
            .iter()
            .enumerate()
            .for_each(|(i, v)| foreign_objects(v, &format!("{at}[{i}]"), out)),
        PickleValue::Unsupported(t) if !t.starts_with("torch.") => {
            out.push(format!("{} ({t})", if at.is_empty() { "the file itself" } else { at }))
        }
        _ => {}
    }
}

fn is_tensor(v: &PickleValue) -> bool {
    matches!(v, PickleValue::Unsupported(t) if t == "torch.Tensor")
}

/// A value's Python kind, for messages.
fn kind(v: &PickleValue) -> String {
    match v {
        PickleValue::None => "None".into(),
        PickleValue::Bool(_) => "bool".into(),
        PickleValue::Int(_) => "int".into(),
        PickleValue::Float(_) => "float".into(),
        PickleValue::String(_) => "str".into(),
        PickleValue::List(_) => "list".into(),
        PickleValue::Dict(_) => "dict".into(),
        PickleValue::Bytes(_) => "bytes".into(),
        PickleValue::Unsupported(t) => t.clone(),
    }
}
