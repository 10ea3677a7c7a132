//! `nemesis encode`: encoder features at inference.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use clap::Args;

use super::device::{select, DeviceArg};
use crate::autograd::Tape;
use crate::data::read_superpatches;
use crate::error::{Error, Result};
use crate::io::{Array, TensorFile};
use crate::model::{check_fits, load_checkpoint, Nemesis, Pass};
use crate::tensor::{DType, Tensor};

/// What `encode` and `reconstruct` both take.
#[derive(Args, Debug)]
pub struct ModelIo {
    /// Weights (safetensors with the config in its metadata).
    #[arg(long, value_name = "W.safetensors|W.pt")]
    pub checkpoint: PathBuf,
    /// Superpatches: safetensors with tensor `image` (f32, B×1×D×H×W in
    /// [0, 1]), or a CT volume in HU, a NIfTI file or a DICOM series folder
    /// (windowed, cut into superpatch tiles in z, y, x order, zero-padded
    /// at the far ends).
    #[arg(long, value_name = "X")]
    pub input: PathBuf,
    /// Output safetensors (encode: `features` B×N×E and `pooled` B×E;
    /// reconstruct: `reconstruction`, `mask`, `loss`, `psnr`).
    #[arg(long, value_name = "OUT.safetensors")]
    pub output: PathBuf,
    /// Where to run: cpu, auto (CUDA when a usable GPU is there, else the
    /// CPU; says which), cuda, or emu (the CUDA kernels on the CPU, slow).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
}

#[derive(Args, Debug)]
pub struct EncodeArgs {
    #[command(flatten)]
    pub io: ModelIo,
    /// Superpatches encoded at once (bounds memory).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
}

pub fn run(a: &EncodeArgs) -> Result<()> {
    let io = &a.io;
    let dev = select(io.device, false, 0)?;
    if a.batch == 0 {
        return Err(Error::invalid("--batch", "must be at least 1"));
    }
    let (config, store) = load_checkpoint(&io.checkpoint, DType::F32)?;
    // Sizes and input first: nothing large is built for a model or an
    // input that cannot run.
    check_fits(
        &config,
        a.batch,
        Pass::Infer,
        dev.as_ref(),
        &format!("encoding {} superpatches at once", a.batch),
        "lower --batch",
    )?;
    let input = read_superpatches(&io.input, &config)?;
    let store = match &dev {
        Some(d) => store.to_device(d)?,
        None => store,
    };
    let model = Nemesis::new(config.clone())?;
    let x = input.image;
    let b = x.dims()[0];
    let per_item = x.numel() / b;
    let values = x.cpu_slice::<f32>()?;
    let (n, e) = (config.num_tokens(), config.embed_dim);
    let mut features = Vec::with_capacity(b * n * e);
    let mut pooled = Vec::with_capacity(b * e);
    let start = std::time::Instant::now();
    let mut progress = crate::progress::Progress::new("encode", b as u64);
    for first in (0..b).step_by(a.batch) {
        let count = a.batch.min(b - first);
        let mut dims = x.dims().to_vec();
        dims[0] = count;
        let chunk = Tensor::from_vec(values[first * per_item..(first + count) * per_item].to_vec(), dims)?;
        let tape = Tape::inference();
        let f = model.encode(&tape, &store, &chunk)?;
        let p = tape.mean(&f, 1)?;
        features.extend_from_slice(f.value().to_cpu()?.cpu_slice::<f32>()?);
        pooled.extend_from_slice(p.value().to_cpu()?.cpu_slice::<f32>()?);
        progress.add(count as u64, "superpatches encoded");
    }
    progress.finish();
    let mut arrays = BTreeMap::new();
    arrays.insert(
        "features".to_string(),
        Array::from_tensor(&Tensor::from_vec(features, [b, n, e])?)?,
    );
    arrays.insert(
        "pooled".to_string(),
        Array::from_tensor(&Tensor::from_vec(pooled, [b, e])?)?,
    );
    let mut meta = HashMap::new();
    meta.insert("config".to_string(), config.to_json());
    if let Some((shape, grid)) = input.tiling {
        meta.insert("volume_shape".to_string(), format!("{shape:?}"));
        meta.insert("tile_grid".to_string(), format!("{grid:?}"));
        eprintln!(
            "{}: volume {shape:?} (D, H, W) → {b} tiles, grid {grid:?} (z, y, x)",
            io.input.display()
        );
    }
    TensorFile::write(&io.output, &meta, &arrays)?;
    println!(
        "wrote {}: features {b}×{n}×{e}, pooled {b}×{e} ({:.2} s)",
        io.output.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
