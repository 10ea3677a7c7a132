//! Layer norm (src/backend/gpu/norm.rs) against the CPU reference: the
//! forward, the backward (per row, and the weight and bias gradients in
//! one pass or in row chunks), and the residual add fused with the norm.

use super::{host, rel, Kit};
use crate::backend::cpu::layer_norm;
use crate::backend::gpu;
use crate::error::Result;
use crate::tensor::Readers;

pub(super) fn cases(kit: &mut Kit) -> Result<()> {
    for (k, (rows, cols)) in [(3usize, 7usize), (8, 64), (5, 192), (2, 768)].into_iter().enumerate() {
        let x = kit.values(rows * cols, 100_000 + 10_000 * k as u64, 3.0);
        let w: Vec<f32> = kit
            .values(cols, 200_000 + 1000 * k as u64, 1.0)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let b = kit.values(cols, 300_000 + 1000 * k as u64, 1.0);
        let g = kit.values(rows * cols, 400_000 + 10_000 * k as u64, 1.0);
        let (tx, tw, tb, tg) = (
            kit.up(&x, [rows, cols])?,
            kit.up(&w, [cols])?,
            kit.up(&b, [cols])?,
            kit.up(&g, [rows, cols])?,
        );
        let (y, mean, rstd) = gpu::layer_norm(&tx, &tw, &tb, 1e-5, Readers::Any)?;
        let (want, stats) = layer_norm::forward(&x, &w, &b, cols, 1e-5);
        let case = format!("{rows}×{cols}");
        kit.push("layer_norm_forward", &case, rel(&host(&y)?, &want));
        let (dx, dw, db) = gpu::layer_norm_backward(&tg, &tx, &tw, &mean, &rstd)?;
        let (wx, ww, wb) = layer_norm::backward(&g, &x, &w, &stats, cols);
        kit.push("layer_norm_backward_dx", format!("{case} dx"), rel(&host(&dx)?, &wx));
        kit.push(
            "layer_norm_backward_dwdb",
            format!("{case} dw, db"),
            rel(&host(&dw)?, &ww).max(rel(&host(&db)?, &wb)),
        );
    }
    // Enough rows for the weight gradients to go in chunks, and the
    // residual + norm kernel.
    for (k, (rows, cols)) in [(300usize, 24usize), (1000, 192)].into_iter().enumerate() {
        let at = 31_000_000 + 100_000 * k as u64;
        let (x, a, g) = (
            kit.values(rows * cols, at, 2.0),
            kit.values(rows * cols, at + 30_000, 2.0),
            kit.values(rows * cols, at + 60_000, 1.0),
        );
        let w: Vec<f32> = kit.values(cols, at + 90_000, 1.0).iter().map(|v| v + 1.0).collect();
        let b = kit.values(cols, at + 95_000, 1.0);
        let case = format!("{rows}×{cols}, in chunks");
        let (tx, ta, tg) = (
            kit.up(&x, [rows, cols])?,
            kit.up(&a, [rows, cols])?,
            kit.up(&g, [rows, cols])?,
        );
        let (tw, tb) = (kit.up(&w, [cols])?, kit.up(&b, [cols])?);
        let (sum, y, mean, rstd) = gpu::add_layer_norm(&tx, &ta, 0.5, &tw, &tb, 1e-6, Readers::Any)?;
        let want_sum: Vec<f32> = x.iter().zip(&a).map(|(x, a)| x + 0.5 * a).collect();
        let (want_y, stats) = layer_norm::forward(&want_sum, &w, &b, cols, 1e-6);
        kit.push(
            "add_layer_norm_forward",
            format!("{case}, x + ½a"),
            rel(&host(&sum)?, &want_sum).max(rel(&host(&y)?, &want_y)),
        );
        let ts = kit.up(&want_sum, [rows, cols])?;
        let (_, dw, db) = gpu::layer_norm_backward(&tg, &ts, &tw, &mean, &rstd)?;
        let (_, ww, wb) = layer_norm::backward(&g, &want_sum, &w, &stats, cols);
        kit.push(
            "layer_norm_dwdb_partials",
            case,
            rel(&host(&dw)?, &ww).max(rel(&host(&db)?, &wb)),
        );
    }
    Ok(())
}
