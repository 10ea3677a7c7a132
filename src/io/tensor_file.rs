use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::write_atomic;
use crate::error::{Error, Result};
use crate::tensor::{DType, Shape, Tensor};

/// The values of one stored array, widened to a Rust type per dtype family.
#[derive(Clone, Debug, PartialEq)]
pub enum ArrayData {
    F32(Vec<f32>),
    F64(Vec<f64>),
    U8(Vec<u8>),
    I64(Vec<i64>),
}

impl ArrayData {
    fn dtype_name(&self) -> &'static str {
        match self {
            ArrayData::F32(_) => "F32",
            ArrayData::F64(_) => "F64",
            ArrayData::U8(_) => "U8",
            ArrayData::I64(_) => "I64",
        }
    }

    fn st_dtype(&self) -> Dtype {
        match self {
            ArrayData::F32(_) => Dtype::F32,
            ArrayData::F64(_) => Dtype::F64,
            ArrayData::U8(_) => Dtype::U8,
            ArrayData::I64(_) => Dtype::I64,
        }
    }

    fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            ArrayData::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ArrayData::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ArrayData::U8(v) => v.clone(),
            ArrayData::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// A named array read from or written to a safetensors file.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: ArrayData,
}

impl Array {
    /// A host tensor's values (a device tensor is an error: bring it to
    /// the host first).
    pub fn from_tensor(t: &Tensor) -> Result<Self> {
        let data = match t.dtype() {
            DType::F32 => ArrayData::F32(t.to_vec::<f32>()?),
            DType::F64 => ArrayData::F64(t.to_vec::<f64>()?),
        };
        Ok(Array {
            shape: t.dims().to_vec(),
            data,
        })
    }

    /// A tensor stored as f32, whatever float dtype the tensor has.
    pub fn f32_from_tensor(t: &Tensor) -> Result<Self> {
        Self::from_tensor(&t.to_cpu()?.to_dtype(DType::F32)?)
    }

    pub fn dtype_name(&self) -> &'static str {
        self.data.dtype_name()
    }
}

/// Every array of one safetensors file, with its string metadata.
#[derive(Debug)]
pub struct TensorFile {
    pub path: PathBuf,
    pub metadata: HashMap<String, String>,
    pub arrays: BTreeMap<String, Array>,
}

fn decode(path: &Path, name: &str, view: &TensorView) -> Result<ArrayData> {
    let b = view.data();
    fn chunks<const N: usize>(b: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
        b.chunks_exact(N).map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        })
    }
    Ok(match view.dtype() {
        Dtype::F32 => ArrayData::F32(chunks::<4>(b).map(f32::from_le_bytes).collect()),
        Dtype::F64 => ArrayData::F64(chunks::<8>(b).map(f64::from_le_bytes).collect()),
        Dtype::U8 | Dtype::BOOL => ArrayData::U8(b.to_vec()),
        Dtype::I64 => ArrayData::I64(chunks::<8>(b).map(i64::from_le_bytes).collect()),
        Dtype::I32 => ArrayData::I64(chunks::<4>(b).map(|c| i32::from_le_bytes(c) as i64).collect()),
        other => {
            return Err(Error::format(
                path,
                format!("tensor `{name}` has dtype {other:?}; supported here: F32, F64, U8, BOOL, I32, I64"),
            ))
        }
    })
}

impl TensorFile {
    pub fn read(path: &Path) -> Result<TensorFile> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file ({e})")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file ({e})")))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let mut arrays = BTreeMap::new();
        for (name, view) in st.tensors() {
            let data = decode(path, &name, &view)?;
            arrays.insert(
                name,
                Array {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            metadata,
            arrays,
        })
    }

    pub fn get(&self, name: &str) -> Result<&Array> {
        self.arrays.get(name).ok_or_else(|| {
            let names: Vec<&str> = self.arrays.keys().map(|s| s.as_str()).take(8).collect();
            Error::format(
                &self.path,
                format!(
                    "no tensor named `{name}` (it holds: {}{})",
                    names.join(", "),
                    if self.arrays.len() > 8 { ", …" } else { "" }
                ),
            )
        })
    }

    /// A float array as a tensor of its own dtype (F32 or F64).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let a = self.get(name)?;
        match &a.data {
            ArrayData::F32(v) => Tensor::from_vec(v.clone(), Shape::new(a.shape.clone())),
            ArrayData::F64(v) => Tensor::from_vec(v.clone(), Shape::new(a.shape.clone())),
            _ => Err(Error::format(
                &self.path,
                format!("tensor `{name}` has dtype {}, expected F32 or F64", a.dtype_name()),
            )),
        }
    }

    /// Writes `arrays` and `metadata` atomically.
    pub fn write(path: &Path, metadata: &HashMap<String, String>, arrays: &BTreeMap<String, Array>) -> Result<()> {
        let bytes: Vec<(String, Vec<u8>)> = arrays.iter().map(|(n, a)| (n.clone(), a.data.to_le_bytes())).collect();
        let views = arrays
            .iter()
            .zip(&bytes)
            .map(|((name, a), (_, b))| {
                TensorView::new(a.data.st_dtype(), a.shape.clone(), b)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::format(path, format!("tensor `{name}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = if metadata.is_empty() {
            None
        } else {
            Some(metadata.clone())
        };
        let mut out = safetensors::serialize(views, &meta).map_err(|e| Error::format(path, e.to_string()))?;
        sort_header_keys(&mut out).map_err(|e| Error::format(path, e))?;
        write_atomic(path, &out)
    }
}

/// Rewrites a serialized safetensors header with its keys in sorted order.
/// The crate takes the metadata as a `HashMap`, whose order changes from
/// map to map, so the same checkpoint would otherwise come out as different
/// bytes; sorted, equal contents give equal files. The same pairs in another
/// order serialize to the same length, so the data offsets stay valid.
fn sort_header_keys(file: &mut [u8]) -> std::result::Result<(), String> {
    let n = file
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .filter(|&n| 8 + n <= file.len())
        .ok_or("a header shorter than its length field")?;
    let header = &file[8..8 + n];
    // serde_json's maps are BTreeMaps: parsing and writing again sorts them.
    let value: serde_json::Value = serde_json::from_slice(header.trim_ascii_end()).map_err(|e| e.to_string())?;
    let sorted = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    if sorted.len() > n {
        return Err(format!("the sorted header grew from {n} to {} bytes", sorted.len()));
    }
    file[8..8 + sorted.len()].copy_from_slice(&sorted);
    file[8 + sorted.len()..8 + n].fill(b' ');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_contents_give_equal_bytes_whatever_the_metadata_order() {
        let dir = std::env::temp_dir().join(format!("nemesis-tf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut arrays = BTreeMap::new();
        arrays.insert(
            "w".to_string(),
            Array {
                shape: vec![2, 3],
                data: ArrayData::F32(vec![1.0, -2.0, 3.5, 0.0, 7.25, 1e-3]),
            },
        );
        arrays.insert(
            "labels".to_string(),
            Array {
                shape: vec![4],
                data: ArrayData::U8(vec![0, 1, 4, 11]),
            },
        );
        let keys = ["config", "classes", "format", "step", "zeta", "alpha"];
        let mut files = Vec::new();
        // Many maps, each with its own hash keys, filled in two orders.
        for (i, order) in [keys.to_vec(), keys.iter().rev().copied().collect()]
            .iter()
            .cycle()
            .take(8)
            .enumerate()
        {
            let mut meta = HashMap::new();
            for k in order {
                meta.insert(k.to_string(), format!("{{\"value of\":\"{k}\"}}"));
            }
            let p = dir.join(format!("f{i}.safetensors"));
            TensorFile::write(&p, &meta, &arrays).unwrap();
            files.push(std::fs::read(&p).unwrap());
            let back = TensorFile::read(&p).unwrap();
            assert_eq!(back.arrays, arrays);
            assert_eq!(back.metadata, meta);
        }
        assert!(
            files.windows(2).all(|w| w[0] == w[1]),
            "the bytes differ between writes"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
