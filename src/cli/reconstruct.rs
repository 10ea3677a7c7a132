//! `nemesis reconstruct`: masked reconstruction at inference semantics (no
//! dropout; the given or a sampled dual mask; optional input noise).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use clap::Args;

use super::device::select;
use crate::autograd::Tape;
use crate::data::read_superpatches;
use crate::error::{Error, Result};
use crate::io::{Array, ArrayData, TensorFile};
use crate::model::{add_noise, check_fits, load_checkpoint, unpatchify, DualMask, ModelConfig, Nemesis, Pass};
use crate::rng::{stream_id, Purpose, RngStream};
use crate::tensor::{DType, Tensor};
use crate::train::{most_tissue, reconstruction_png};

#[derive(Args, Debug)]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub io: super::encode::ModelIo,
    /// A mask to use: safetensors with tensor `mask` (u8, B×N, 1 = masked),
    /// with the dual structure (every depth slice keeps as many tokens).
    #[arg(long, value_name = "M.safetensors", conflicts_with = "seed")]
    pub mask: Option<PathBuf>,
    /// Seed of the sampled dual mask (and of the noise).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Standard deviation of Gaussian noise added to the encoder's input (MODEL.md §3).
    #[arg(long, value_name = "σ", default_value_t = 0.0)]
    pub noise_std: f64,
    /// Picture of the middle axial slice of one superpatch: input, masked
    /// input, reconstruction, error (on a fixed scale, 0 to 0.5).
    #[arg(long, value_name = "FILE.png")]
    pub png: Option<PathBuf>,
    /// Which superpatch the picture shows, 0-based in the input's order
    /// (a NIfTI volume's tiles in z, y, x order) (default: the one with most tissue).
    #[arg(long, value_name = "K", requires = "png")]
    pub tile: Option<usize>,
}

fn read_mask(path: &std::path::Path, config: &ModelConfig, batch: usize) -> Result<DualMask> {
    let file = TensorFile::read(path)?;
    let a = file.get("mask")?;
    let ArrayData::U8(values) = &a.data else {
        return Err(Error::format(
            path,
            format!("tensor `mask` has dtype {}, expected U8", a.dtype_name()),
        ));
    };
    let n = config.num_tokens();
    if a.shape != [batch, n] {
        return Err(Error::format(
            path,
            format!("tensor `mask` has shape {:?}; this input needs [{batch}, {n}]", a.shape),
        ));
    }
    DualMask::from_mask(config, batch, values).map_err(|e| Error::format(path, e.to_string()))
}

pub fn run(a: &ReconstructArgs) -> Result<()> {
    let io = &a.io;
    let dev = select(io.device, false, 0)?;
    if !a.noise_std.is_finite() || a.noise_std < 0.0 {
        return Err(Error::invalid(
            "--noise-std",
            format!("must be ≥ 0, got {}", a.noise_std),
        ));
    }
    let (config, store) = load_checkpoint(&io.checkpoint, DType::F32)?;
    let clean = read_superpatches(&io.input, &config)?.image;
    let b = clean.dims()[0];
    // All superpatches go through at once (the loss is over the batch).
    check_fits(
        &config,
        b,
        Pass::Infer,
        dev.as_ref(),
        &format!("reconstructing {b} superpatches"),
        "give fewer superpatches in --input",
    )?;
    let store = match &dev {
        Some(d) => store.to_device(d)?,
        None => store,
    };
    let model = Nemesis::new(config.clone())?;
    let seed = a.seed.unwrap_or(0);
    let mask = match &a.mask {
        Some(path) => read_mask(path, &config, b)?,
        None => DualMask::sample(&config, b, RngStream::new(seed, stream_id(Purpose::Mask, 0, 0))),
    };
    let noisy = add_noise(
        &clean,
        a.noise_std,
        RngStream::new(seed, stream_id(Purpose::Noise, 0, 0)),
    )?;
    let tape = Tape::inference();
    let out = model.forward_train(&tape, &store, &noisy, &clean, &mask, None)?;
    let rec = unpatchify(&config, &out.pred.value().to_cpu()?)?;
    let loss = out.loss.value().scalar_value()?;
    let psnr = out.psnr()?;

    let mut arrays = BTreeMap::new();
    arrays.insert("reconstruction".to_string(), Array::from_tensor(&rec)?);
    arrays.insert(
        "mask".to_string(),
        Array {
            shape: vec![b, config.num_tokens()],
            data: ArrayData::U8(mask.mask_u8()),
        },
    );
    arrays.insert(
        "loss".to_string(),
        Array::from_tensor(&Tensor::from_vec(vec![loss as f32], [1])?)?,
    );
    arrays.insert(
        "psnr".to_string(),
        Array::from_tensor(&Tensor::from_vec(vec![psnr as f32], [1])?)?,
    );
    let mut meta = HashMap::new();
    meta.insert("config".to_string(), config.to_json());
    TensorFile::write(&io.output, &meta, &arrays)?;
    println!(
        "wrote {}: {b} superpatch(es), {} of {} tokens masked per item, loss {loss:.6}, PSNR {:.2} dB",
        io.output.display(),
        config.num_tokens() - mask.visible(),
        config.num_tokens(),
        psnr
    );
    if let Some(png) = &a.png {
        let (item, why) = match a.tile {
            Some(t) if t < b => (t, "--tile"),
            Some(t) => {
                return Err(Error::invalid(
                    "--tile",
                    format!("superpatch {t} of {b}: the input has superpatches 0 to {}", b - 1),
                ))
            }
            None => (most_tissue(&clean)?, "the one with most tissue; --tile K picks another"),
        };
        reconstruction_png(png, &config, (&clean, &noisy, &rec), &mask, item)?;
        println!("wrote {}: superpatch {item} of 0..{} ({why})", png.display(), b - 1);
    }
    Ok(())
}
