//! The tensor cores' fragment layout, the one thing about the GPU the
//! emulator assumes rather than shows: probe kernels of kernels/flash.cu
//! against the layout the PTX ISA gives, on small integers.

use super::{rel, values, Kit};
use crate::backend::kernels::k;
use crate::device::{Buffer, DeviceApi, DeviceVec, Launch};
use crate::error::Result;

/// The flash probes' signature.
type Probe = fn(&dyn DeviceApi, &Launch, &Buffer, &Buffer, &Buffer, i32) -> Result<()>;

/// The tensor-core fragment layout (mma.sync m16n8k16, bf16), as the PTX
/// ISA gives it for lane (g, t) = (lane / 4, lane % 4): A element i at row
/// g (+8 for i = 2, 3, 6, 7), column 2t + (i & 1) (+8 for i ≥ 4); B element
/// i at row 2t + (i & 1) (+8 for i ≥ 2), column g; C element i at row g
/// (+8 for i ≥ 2), column 2t + (i & 1). (tests/mma_layout.rs holds its own
/// copy of these tables and checks this one against the emulator.)
fn mma_a(lane: usize, i: usize) -> (usize, usize) {
    (lane / 4 + 8 * ((i >> 1) & 1), 2 * (lane % 4) + (i & 1) + 8 * (i >> 2))
}

fn mma_b(lane: usize, i: usize) -> (usize, usize) {
    (2 * (lane % 4) + (i & 1) + 8 * (i >> 1), lane / 4)
}

fn mma_c(lane: usize, i: usize) -> (usize, usize) {
    (lane / 4 + 8 * (i >> 1), 2 * (lane % 4) + (i & 1))
}

/// Row-major `a (rows × inner) · b (inner × cols)`.
fn plain_product(a: &[f32], b: &[f32], rows: usize, inner: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|at| {
            (0..inner)
                .map(|k| a[at / cols * inner + k] * b[k * cols + at % cols])
                .sum()
        })
        .collect()
}

/// The tensor cores against the fragment tables (`mma_fragment_probe`), and
/// the flash kernels' three products with their own packing
/// (`flash_mma_probe_*`), on small integers: every value is exact, so any
/// error at all is a layout error.
pub(super) fn cases(kit: &mut Kit) -> Result<()> {
    let dev: &dyn DeviceApi = &**kit.dev;
    let r = kit.r;
    let ints = |n: usize, at: u64, k: f32| -> Vec<f32> {
        values(n, r, at, 1.0)
            .iter()
            .map(|v| ((v + 1.0) * (k + 0.5)).floor() - k)
            .collect()
    };
    let bits = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
    let (a, b) = (ints(256, 900_000, 3.0), ints(128, 901_000, 3.0));
    let mut ar = vec![0u32; 128];
    let mut br = vec![0u32; 64];
    for lane in 0..32 {
        for reg in 0..4 {
            let (lo, hi) = (mma_a(lane, 2 * reg), mma_a(lane, 2 * reg + 1));
            ar[4 * lane + reg] = bits(a[lo.0 * 16 + lo.1]) | bits(a[hi.0 * 16 + hi.1]) << 16;
        }
        for reg in 0..2 {
            let (lo, hi) = (mma_b(lane, 2 * reg), mma_b(lane, 2 * reg + 1));
            br[2 * lane + reg] = bits(b[lo.0 * 8 + lo.1]) | bits(b[hi.0 * 8 + hi.1]) << 16;
        }
    }
    let (da, db, dc) = (
        DeviceVec::from_slice(dev, &ar)?,
        DeviceVec::from_slice(dev, &br)?,
        DeviceVec::poisoned_f32(dev, 128)?,
    );
    k::mma_fragment_probe(dev, &Launch::linear(1, 32, 0), &da.buf, &db.buf, &dc.buf)?;
    let got = dc.to_vec::<f32>()?;
    let ab = plain_product(&a, &b, 16, 16, 8);
    let want: Vec<f32> = (0..128)
        .map(|x| {
            let (row, col) = mma_c(x / 4, x % 4);
            ab[row * 8 + col]
        })
        .collect();
    kit.push("mma_fragment_probe", "m16n8k16 bf16, PTX ISA tables", rel(&got, &want));

    let (x, y) = (ints(256, 902_000, 2.0), ints(256, 903_000, 2.0));
    let yt: Vec<f32> = (0..256).map(|i| y[(i % 16) * 16 + i / 16]).collect();
    let xyt = plain_product(&x, &yt, 16, 16, 16);
    let products = [
        ("Q·Kᵀ", xyt.clone()),
        ("P·V", plain_product(&x, &y, 16, 16, 16)),
        ("scores written back, then Pᵀ·dO", plain_product(&xyt, &y, 16, 16, 16)),
    ];
    let probes: [(&'static str, Probe); 2] = [
        ("flash_mma_probe_f32", k::flash_mma_probe_f32),
        ("flash_mma_probe_bf16", k::flash_mma_probe_bf16),
    ];
    for (kernel, probe) in probes {
        for (usage, (name, full)) in products.iter().enumerate() {
            let (dx, dy, dc) = (
                DeviceVec::from_slice(dev, &x)?,
                DeviceVec::from_slice(dev, &y)?,
                DeviceVec::poisoned_f32(dev, 256)?,
            );
            probe(
                dev,
                &Launch::linear(1, 32, 3 * 256 * 4),
                &dx.buf,
                &dy.buf,
                &dc.buf,
                usage as i32,
            )?;
            let got = dc.to_vec::<f32>()?;
            let want: Vec<f32> = (0..256)
                .map(|at| {
                    let (lane, tile, i) = (at / 8, at / 4 % 2, at % 4);
                    let (row, col) = mma_c(lane, i);
                    full[row * 16 + tile * 8 + col]
                })
                .collect();
            kit.push(kernel, *name, rel(&got, &want));
        }
    }
    Ok(())
}
