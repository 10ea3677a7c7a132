//! The segmentation decoder's ops on a device (kernels/seg.cu): ReLU,
//! tokens ↔ channels, trilinear resizing as three one-axis passes,
//! BatchNorm3d (batch or running statistics), 3-D convolution as im2col →
//! GEMM → layout swap (and col2im for its gradient), and Dice + CE.

use super::gemm::product;
use super::{device_of, empty, grid_stride, int, k, sum, values, THREADS};
use crate::device::{Gemm, Launch, SharedDevice};
use crate::error::{Error, Result};
use crate::tensor::{Readers, Tensor};

/// One block per channel (or per item and class), `THREADS` threads, a
/// float of shared memory each.
fn per_block(blocks: usize) -> Launch {
    Launch::linear(blocks as u32, THREADS, THREADS * 4)
}

fn upload(dev: &SharedDevice, v: &[f32]) -> Result<Tensor> {
    Tensor::from_vec(v.to_vec(), [v.len()])?.to_device(dev)
}

pub fn relu(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "relu_forward";
    let dev = device_of(OP, &[x])?;
    let y = empty(&dev, x.shape().clone())?;
    let n = x.numel();
    k::relu_forward(&*dev, &grid_stride(n), values(OP, x)?, values(OP, &y)?, n as u64)?;
    Ok(y)
}

pub fn relu_backward(g: &Tensor, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "relu_backward";
    let dev = device_of(OP, &[g, x])?;
    let dx = empty(&dev, x.shape().clone())?;
    let n = x.numel();
    k::relu_backward(
        &*dev,
        &grid_stride(n),
        values(OP, g)?,
        values(OP, x)?,
        values(OP, &dx)?,
        n as u64,
    )?;
    Ok(dx)
}

/// `B × M × N → B × N × M`.
pub fn transpose12(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "transpose12";
    let dev = device_of(OP, &[x])?;
    let d = x.dims();
    if d.len() != 3 {
        return Err(Error::bad_shape(OP, x.shape(), "the input must be B × M × N"));
    }
    let y = empty(&dev, [d[0], d[2], d[1]])?;
    k::transpose12(
        &*dev,
        &grid_stride(x.numel()),
        values(OP, x)?,
        values(OP, &y)?,
        d[0] as u64,
        d[1] as u64,
        d[2] as u64,
    )?;
    Ok(y)
}

/// `B × C × D × H × W` resized trilinearly to `size`: W, then H, then D.
pub fn resize3d(x: &Tensor, size: [usize; 3]) -> Result<Tensor> {
    const OP: &str = "resize_axis_forward";
    let dev = device_of(OP, &[x])?;
    let d = x.dims().to_vec();
    let mut cur = x.clone();
    let mut dims = [d[2], d[3], d[4]];
    for axis in [2usize, 1, 0] {
        if dims[axis] == size[axis] {
            continue;
        }
        let outer = d[0] * d[1] * dims[..axis].iter().product::<usize>();
        let inner: usize = dims[axis + 1..].iter().product();
        let mut next = dims;
        next[axis] = size[axis];
        let y = empty(&dev, [d[0], d[1], next[0], next[1], next[2]])?;
        k::resize_axis_forward(
            &*dev,
            &grid_stride(y.numel()),
            values(OP, &cur)?,
            values(OP, &y)?,
            outer as u64,
            int(dims[axis])?,
            int(size[axis])?,
            inner as u64,
        )?;
        (cur, dims) = (y, next);
    }
    if dims == [d[2], d[3], d[4]] {
        // No axis changed: a copy, so the output is a tensor of its own.
        return super::scale(x, 1.0);
    }
    Ok(cur)
}

/// The gradient of `resize3d` from `x_dims` (`B × C × D × H × W`): D, then H, then W.
pub fn resize3d_backward(g: &Tensor, x_dims: &[usize]) -> Result<Tensor> {
    const OP: &str = "resize_axis_backward";
    let dev = device_of(OP, &[g])?;
    let gd = g.dims().to_vec();
    let mut cur = g.clone();
    let mut dims = [gd[2], gd[3], gd[4]];
    let want = [x_dims[2], x_dims[3], x_dims[4]];
    let mut changed = false;
    for axis in [0usize, 1, 2] {
        if dims[axis] == want[axis] {
            continue;
        }
        let outer = gd[0] * gd[1] * dims[..axis].iter().product::<usize>();
        let inner: usize = dims[axis + 1..].iter().product();
        let mut next = dims;
        next[axis] = want[axis];
        let dx = empty(&dev, [gd[0], gd[1], next[0], next[1], next[2]])?;
        k::resize_axis_backward(
            &*dev,
            &grid_stride(dx.numel()),
            values(OP, &cur)?,
            values(OP, &dx)?,
            outer as u64,
            int(want[axis])?,
            int(dims[axis])?,
            inner as u64,
        )?;
        (cur, dims, changed) = (dx, next, true);
    }
    if !changed {
        return super::scale(g, 1.0);
    }
    Ok(cur)
}

/// What BatchNorm's forward keeps for its backward pass.
pub struct BnSaved {
    pub xhat: Tensor,
    pub invstd: Tensor,
    pub batch_stats: bool,
}

/// BatchNorm3d of `x` (`B × C × D × H × W`): with `running` the given
/// statistics, else the batch's (then also the batch's mean and unbiased
/// variance per channel, read back for the running update).
#[allow(clippy::type_complexity)]
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    running: Option<(&[f64], &[f64])>,
    eps: f64,
) -> Result<(Tensor, BnSaved, Option<(Vec<f64>, Vec<f64>)>)> {
    const OP: &str = "batch_norm";
    let dev = device_of(OP, &[x, gamma, beta])?;
    let d = x.dims();
    let (b, c, plane) = (d[0], d[1], d[2] * d[3] * d[4]);
    let n = (b * plane) as f64;
    let (mean, invstd, moments) = match running {
        Some((m, v)) => {
            let mean: Vec<f32> = m.iter().map(|&v| v as f32).collect();
            let inv: Vec<f32> = v.iter().map(|&v| (1.0 / (v + eps).sqrt()) as f32).collect();
            (upload(&dev, &mean)?, upload(&dev, &inv)?, None)
        }
        None => {
            let sums = empty(&dev, [2 * c])?;
            k::channel_sums(
                &*dev,
                &per_block(c),
                values(OP, x)?,
                values(OP, x)?,
                values(OP, &sums)?,
                b as u64,
                int(c)?,
                plane as u64,
                0,
            )?;
            let s = sums.to_cpu()?.to_vec::<f32>()?;
            let mean: Vec<f32> = (0..c).map(|ch| (s[ch] as f64 / n) as f32).collect();
            let mean_t = upload(&dev, &mean)?;
            let sq = empty(&dev, [c])?;
            k::channel_sq_dev(
                &*dev,
                &per_block(c),
                values(OP, x)?,
                values(OP, &mean_t)?,
                values(OP, &sq)?,
                b as u64,
                int(c)?,
                plane as u64,
            )?;
            let sq = sq.to_cpu()?.to_vec::<f32>()?;
            let inv: Vec<f32> = sq.iter().map(|&s| (1.0 / (s as f64 / n + eps).sqrt()) as f32).collect();
            let unbiased: Vec<f64> = sq.iter().map(|&s| s as f64 / (n - 1.0)).collect();
            let means: Vec<f64> = mean.iter().map(|&m| m as f64).collect();
            (mean_t, upload(&dev, &inv)?, Some((means, unbiased)))
        }
    };
    let (y, xhat) = (empty(&dev, x.shape().clone())?, empty(&dev, x.shape().clone())?);
    k::batch_norm_apply(
        &*dev,
        &grid_stride(x.numel()),
        values(OP, x)?,
        values(OP, &mean)?,
        values(OP, &invstd)?,
        values(OP, gamma)?,
        values(OP, beta)?,
        values(OP, &y)?,
        values(OP, &xhat)?,
        x.numel() as u64,
        int(c)?,
        plane as u64,
    )?;
    let batch_stats = moments.is_some();
    Ok((
        y,
        BnSaved {
            xhat,
            invstd,
            batch_stats,
        },
        moments,
    ))
}

/// `(dx, dgamma, dbeta)` of `batch_norm`.
pub fn batch_norm_backward(g: &Tensor, gamma: &Tensor, saved: &BnSaved) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "batch_norm_backward";
    let dev = device_of(OP, &[g, gamma])?;
    let d = g.dims();
    let (b, c, plane) = (d[0], d[1], d[2] * d[3] * d[4]);
    let sums = empty(&dev, [2 * c])?;
    k::channel_sums(
        &*dev,
        &per_block(c),
        values(OP, g)?,
        values(OP, &saved.xhat)?,
        values(OP, &sums)?,
        b as u64,
        int(c)?,
        plane as u64,
        1,
    )?;
    let dx = empty(&dev, g.shape().clone())?;
    k::batch_norm_backward(
        &*dev,
        &grid_stride(g.numel()),
        values(OP, g)?,
        values(OP, &saved.xhat)?,
        values(OP, &sums)?,
        values(OP, gamma)?,
        values(OP, &saved.invstd)?,
        values(OP, &dx)?,
        g.numel() as u64,
        int(c)?,
        plane as u64,
        (b * plane) as f32,
        i32::from(saved.batch_stats),
    )?;
    let s = sums.to_cpu()?.to_vec::<f32>()?;
    let dbeta = upload(&dev, &s[..c])?;
    let dgamma = upload(&dev, &s[c..])?;
    Ok((dx, dgamma, dbeta))
}

/// The sizes of a stride-1 convolution with a cubic kernel.
#[derive(Clone, Copy, Debug)]
pub struct ConvDims {
    pub batch: usize,
    pub cin: usize,
    pub cout: usize,
    pub dims: [usize; 3],
    pub k: usize,
    pub pad: usize,
}

impl ConvDims {
    fn out_dims(&self) -> [usize; 3] {
        self.dims.map(|n| n + 2 * self.pad + 1 - self.k)
    }
    fn rows(&self) -> usize {
        self.cin * self.k * self.k * self.k
    }
    fn cols(&self) -> usize {
        self.batch * self.out_dims().iter().product::<usize>()
    }
}

fn im2col(dev: &SharedDevice, x: &Tensor, c: &ConvDims) -> Result<Tensor> {
    const OP: &str = "im2col3d";
    let cols = empty(dev, [c.rows(), c.cols()])?;
    k::im2col3d(
        &**dev,
        &grid_stride(cols.numel()),
        values(OP, x)?,
        values(OP, &cols)?,
        int(c.batch)?,
        int(c.cin)?,
        int(c.dims[0])?,
        int(c.dims[1])?,
        int(c.dims[2])?,
        int(c.k)?,
        int(c.pad)?,
    )?;
    Ok(cols)
}

/// `y = w ⊛ x + b`: im2col, one GEMM over the whole batch, then the
/// channel-major result swapped into `B × Cout × D × H × W` with the bias.
pub fn conv3d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, c: &ConvDims) -> Result<Tensor> {
    const OP: &str = "conv3d";
    let dev = device_of(OP, &[x, w])?;
    let cols = im2col(&dev, x, c)?;
    let w2 = w.reshape([c.cout, c.rows()])?;
    let g = Gemm::new(c.cout, c.cols(), c.rows(), false, false);
    let ym = product(&dev, g, &w2, &cols, None, [c.cout, c.cols()], Readers::Any)?;
    let [od, oh, ow] = c.out_dims();
    let y = empty(&dev, [c.batch, c.cout, od, oh, ow])?;
    let bias = b.unwrap_or(&ym);
    k::channels_batch_swap(
        &*dev,
        &grid_stride(y.numel()),
        values(OP, &ym)?,
        values(OP, bias)?,
        values(OP, &y)?,
        int(c.batch)?,
        int(c.cout)?,
        (od * oh * ow) as u64,
        i32::from(b.is_some()),
        0,
    )?;
    Ok(y)
}

/// `(dx, dw, db)` of `conv3d`, each when asked for.
pub fn conv3d_backward(
    g: &Tensor,
    x: &Tensor,
    w: &Tensor,
    c: &ConvDims,
    needs: [bool; 3],
) -> Result<[Option<Tensor>; 3]> {
    const OP: &str = "conv3d backward";
    let dev = device_of(OP, &[g, x, w])?;
    let plane: usize = c.out_dims().iter().product();
    // dy in the GEMM's layout: Cout × (B·plane).
    let gm = empty(&dev, [c.cout, c.cols()])?;
    k::channels_batch_swap(
        &*dev,
        &grid_stride(g.numel()),
        values(OP, g)?,
        values(OP, g)?,
        values(OP, &gm)?,
        int(c.batch)?,
        int(c.cout)?,
        plane as u64,
        0,
        1,
    )?;
    let w2 = w.reshape([c.cout, c.rows()])?;
    let mut out = [None, None, None];
    if needs[1] {
        let cols = im2col(&dev, x, c)?;
        let gw = Gemm::new(c.cout, c.rows(), c.cols(), false, true);
        out[1] =
            Some(product(&dev, gw, &gm, &cols, None, [c.cout, c.rows()], Readers::Any)?.reshape(w.shape().clone())?);
    }
    if needs[0] {
        let gc = Gemm::new(c.rows(), c.cols(), c.cout, true, false);
        let dcols = product(&dev, gc, &w2, &gm, None, [c.rows(), c.cols()], Readers::Any)?;
        let dx = empty(&dev, x.shape().clone())?;
        k::col2im3d(
            &*dev,
            &grid_stride(dx.numel()),
            values(OP, &dcols)?,
            values(OP, &dx)?,
            int(c.batch)?,
            int(c.cin)?,
            int(c.dims[0])?,
            int(c.dims[1])?,
            int(c.dims[2])?,
            int(c.k)?,
            int(c.pad)?,
        )?;
        out[0] = Some(dx);
    }
    if needs[2] {
        let sums = empty(&dev, [2 * c.cout])?;
        k::channel_sums(
            &*dev,
            &per_block(c.cout),
            values(OP, g)?,
            values(OP, g)?,
            values(OP, &sums)?,
            c.batch as u64,
            int(c.cout)?,
            plane as u64,
            0,
        )?;
        let s = sums.to_cpu()?.to_vec::<f32>()?;
        out[2] = Some(upload(&dev, &s[..c.cout])?);
    }
    Ok(out)
}

/// What Dice + CE keeps for its backward pass.
pub struct DiceSaved {
    pub p: Tensor,
    pub labels: Tensor,
    pub sums: Tensor,
}

const SMOOTH: f32 = 1e-5;

/// Dice + CE of `logits` (`B × C × D × H × W`) against class `labels`.
pub fn dice_ce(logits: &Tensor, labels: &[u32]) -> Result<(Tensor, DiceSaved)> {
    const OP: &str = "dice_ce";
    let dev = device_of(OP, &[logits])?;
    let d = logits.dims();
    let (b, c, vox) = (d[0], d[1], d[2] * d[3] * d[4]);
    let lab: Vec<f32> = labels.iter().map(|&l| l as f32).collect();
    let labels = upload(&dev, &lab)?;
    let p = empty(&dev, logits.shape().clone())?;
    let nll = empty(&dev, [b * vox])?;
    k::softmax_nll(
        &*dev,
        &grid_stride(b * vox),
        values(OP, logits)?,
        values(OP, &labels)?,
        values(OP, &p)?,
        values(OP, &nll)?,
        int(b)?,
        int(c)?,
        vox as u64,
    )?;
    let sums = empty(&dev, [b * c * 3])?;
    k::dice_sums(
        &*dev,
        &per_block(b * c),
        values(OP, &p)?,
        values(OP, &labels)?,
        values(OP, &sums)?,
        int(c)?,
        vox as u64,
    )?;
    let nll_sum = sum(&nll)?;
    let loss = empty(&dev, Vec::<usize>::new())?;
    k::dice_ce_loss(
        &*dev,
        &Launch::linear(1, 32, 0),
        values(OP, &sums)?,
        values(OP, &nll_sum)?,
        values(OP, &loss)?,
        int(b)?,
        int(c)?,
        vox as u64,
        SMOOTH,
    )?;
    Ok((loss, DiceSaved { p, labels, sums }))
}

/// The gradient of `dice_ce` for the upstream gradient `up` (0-d).
pub fn dice_ce_backward(up: &Tensor, s: &DiceSaved) -> Result<Tensor> {
    const OP: &str = "dice_ce_backward";
    let dev = device_of(OP, &[up, &s.p])?;
    let d = s.p.dims();
    let (b, c, vox) = (d[0], d[1], d[2] * d[3] * d[4]);
    let dz = empty(&dev, s.p.shape().clone())?;
    k::dice_ce_backward(
        &*dev,
        &grid_stride(b * vox),
        values(OP, &s.p)?,
        values(OP, &s.labels)?,
        values(OP, &s.sums)?,
        values(OP, up)?,
        values(OP, &dz)?,
        int(b)?,
        int(c)?,
        vox as u64,
        SMOOTH,
    )?;
    Ok(dz)
}
