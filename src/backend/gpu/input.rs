//! The input superpatch (kernels/input.cu): raw HU crops uploaded as i16
//! and expanded on the device (window → noise → patchify → gather of the
//! visible tokens) in one kernel.

use super::{empty, grid_stride, int, k, values};
use crate::device::{Buffer, DeviceVec, SharedDevice};
use crate::error::{Error, Result};
use crate::rng::RngStream;
use crate::tensor::Tensor;

/// Raw HU crops (`B × D × H × W`, i16) on a device: half the bytes of the
/// windowed f32 volume; `superpatch_input` expands them there.
pub struct HuBatch {
    dev: SharedDevice,
    buf: Buffer,
    len: usize,
}

impl Drop for HuBatch {
    fn drop(&mut self) {
        self.dev.free(&self.buf);
    }
}

pub fn upload_hu(dev: &SharedDevice, hu: &[i16]) -> Result<HuBatch> {
    let buf = dev.alloc_for_upload(hu.len() * 2)?;
    let batch = HuBatch {
        dev: dev.clone(),
        buf,
        len: hu.len(),
    };
    dev.upload(&batch.buf, bytemuck::cast_slice(hu))?;
    Ok(batch)
}

/// The fused superpatch input: window → noise of `sigma` from `noise`
/// (value i of the flattened batch, as `add_noise`) → patchify → the tokens
/// `ids_keep` (`n` per item) of each item: `B × n × P`.
pub fn superpatch_input(
    hu: &HuBatch,
    batch: usize,
    size: [usize; 3],
    patch: [usize; 3],
    ids_keep: &[usize],
    sigma: f64,
    noise: RngStream,
) -> Result<Tensor> {
    const OP: &str = "superpatch_input";
    let [d, h, w] = size;
    let [pd, ph, pw] = patch;
    if batch == 0 || hu.len != batch * d * h * w || !ids_keep.len().is_multiple_of(batch) {
        return Err(Error::invalid(OP, "the HU batch, sizes and token lists do not agree"));
    }
    if size.iter().zip(&patch).any(|(s, p)| *p == 0 || s % p != 0) {
        return Err(Error::invalid(OP, "the patch size must divide the superpatch size"));
    }
    let n_tok = (d / pd) * (h / ph) * (w / pw);
    if let Some(&bad) = ids_keep.iter().find(|&&i| i >= n_tok) {
        return Err(Error::invalid(OP, format!("token {bad} out of range for {n_tok}")));
    }
    let dev = &hu.dev;
    let n = ids_keep.len() / batch;
    let p = pd * ph * pw;
    let ids = ids_keep.iter().map(|&i| int(i)).collect::<Result<Vec<i32>>>()?;
    let di = DeviceVec::from_slice(&**dev, &ids)?;
    let y = empty(dev, [batch, n, p])?;
    k::superpatch_input(
        &**dev,
        &grid_stride(batch * n * p),
        &hu.buf,
        &di.buf,
        values(OP, &y)?,
        int(batch)?,
        int(d)?,
        int(h)?,
        int(w)?,
        int(pd)?,
        int(ph)?,
        int(pw)?,
        int(n)?,
        sigma,
        noise,
    )?;
    Ok(y)
}
