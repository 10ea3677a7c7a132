//! Pointwise kernels and the reductions around them
//! (src/backend/gpu/pointwise.rs) against the CPU reference.

use super::{grad_of, host, rel, Kit};
use crate::autograd::{ParamStore, Tape};
use crate::backend::cpu::elementwise;
use crate::backend::gpu;
use crate::error::Result;
use crate::rng::RngStream;
use crate::tensor::{Readers, Tensor};

pub(super) fn cases(kit: &mut Kit) -> Result<()> {
    let r = kit.r;
    for (k, n) in [1usize, 64, 999, 4096].into_iter().enumerate() {
        let x = kit.values(n, 10_000 * k as u64, 4.0);
        let g = kit.values(n, 10_000 * k as u64 + 5000, 1.0);
        let (tx, tg) = (kit.up(&x, [n])?, kit.up(&g, [n])?);
        let case = format!("n={n}");
        kit.push(
            "gelu_forward",
            &case,
            rel(&host(&gpu::gelu(&tx)?)?, &elementwise::gelu(&x)),
        );
        kit.push(
            "gelu_backward",
            &case,
            rel(
                &host(&gpu::gelu_backward(&tg, &tx)?)?,
                &elementwise::gelu_backward(&g, &x),
            ),
        );
        let tape = Tape::inference();
        let d = tape.dropout(&tape.constant(Tensor::from_vec(x.clone(), [n])?), 0.1, r)?;
        kit.push(
            "dropout_forward",
            format!("{case} p=0.1"),
            rel(&host(&gpu::dropout(&tx, 0.1, r)?)?, d.value().cpu_slice::<f32>()?),
        );
        kit.push(
            "sigmoid_forward",
            &case,
            rel(&host(&gpu::sigmoid(&tx)?)?, &elementwise::sigmoid(&x)),
        );
        kit.push(
            "gate_mix_forward",
            &case,
            rel(
                &host(&gpu::gate_mix(&tx, &tg, &kit.up(&[0.3], [1])?)?)?,
                &elementwise::gate_mix(&x, &g, 0.3f32),
            ),
        );
    }
    for (k, (rows, cols)) in [(1usize, 1usize), (7, 13), (33, 64), (64, 192)].into_iter().enumerate() {
        let n = rows * cols;
        let at = 20_000_000 + 100_000 * k as u64;
        let (x, y, g) = (
            kit.values(n, at, 2.0),
            kit.values(n, at + 30_000, 2.0),
            kit.values(n, at + 60_000, 1.0),
        );
        let b = kit.values(cols, at + 90_000, 1.0);
        let case = format!("{rows}×{cols}");
        let (tx, ty, tg, tb) = (
            kit.up(&x, [rows, cols])?,
            kit.up(&y, [rows, cols])?,
            kit.up(&g, [rows, cols])?,
            kit.up(&b, [cols])?,
        );
        kit.push(
            "add_broadcast",
            &case,
            rel(&host(&gpu::add(&tx, &tb)?)?, &elementwise::add(&x, &b)),
        );
        kit.push(
            "mul_broadcast",
            &case,
            rel(&host(&gpu::mul(&tx, &tb)?)?, &elementwise::mul(&x, &b)),
        );
        kit.push(
            "column_sums",
            &case,
            rel(
                &host(&gpu::column_sums(&tx, cols)?)?,
                &elementwise::reduce_broadcast(&x, cols),
            ),
        );
        let s = elementwise::sigmoid(&x);
        kit.push(
            "sigmoid_backward",
            &case,
            rel(
                &host(&gpu::sigmoid_backward(&tg, &kit.up(&s, [rows, cols])?)?)?,
                &elementwise::sigmoid_backward(&g, &s),
            ),
        );
        kit.push(
            "scale_forward",
            &case,
            rel(&host(&gpu::scale(&tx, -0.75)?)?, &elementwise::scale(&x, -0.75f32)),
        );
        let a = 0.3f32;
        let (dx, dy, da) = gpu::gate_mix_backward(&tg, &tx, &ty, &kit.up(&[a], [1])?)?;
        let want_da = elementwise::gate_mix_grad_a(&g, &x, &y);
        kit.push(
            "gate_mix_backward",
            &case,
            rel(&host(&dx)?, &elementwise::scale(&g, 1.0 - a))
                .max(rel(&host(&dy)?, &elementwise::scale(&g, a)))
                .max(rel(&host(&da)?, &[want_da])),
        );
        let want_sum: f64 = x.iter().map(|&v| v as f64).sum();
        kit.push(
            "block_sums",
            format!("n={n}"),
            rel(&host(&gpu::sum(&tx)?)?, &[want_sum as f32]),
        );
        // bf16 rounding (nearest even) of a tensor's copy against the half
        // crate, halfway cases, infinities and NaN included.
        let mut v = x.clone();
        v.extend_from_slice(&[
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            f32::INFINITY,
            -0.0,
            f32::MAX,
            f32::NAN,
        ]);
        let got = gpu::bf16_bits(&kit.up(&v, [v.len()])?)?;
        let wrong = got
            .iter()
            .zip(&v)
            .filter(|(g, w)| {
                if w.is_nan() {
                    !half::bf16::from_bits(**g).is_nan()
                } else {
                    **g != half::bf16::from_f32(**w).to_bits()
                }
            })
            .count();
        kit.push(
            "f32_to_bf16",
            format!("n={} (wrong: {wrong})", v.len()),
            if wrong == 0 { 0.0 } else { 1.0 },
        );
    }
    // Column sums over enough rows to split into chunks (two fixed-order
    // passes).
    for (k, (rows, cols)) in [(300usize, 24usize), (1000, 192)].into_iter().enumerate() {
        let g = kit.values(rows * cols, 30_000_000 + 100_000 * k as u64, 1.0);
        kit.push(
            "column_partials",
            format!("{rows}×{cols}, in chunks"),
            rel(
                &host(&gpu::column_sums(&kit.up(&g, [rows, cols])?, cols)?)?,
                &elementwise::reduce_broadcast(&g, cols),
            ),
        );
    }
    // GELU + dropout in one kernel against the two ops on the host.
    for (k, p) in [0.0f64, 0.1].into_iter().enumerate() {
        let n = 5000;
        let at = 29_000_000 + 100_000 * k as u64;
        let (x, g) = (kit.values(n, at, 3.0), kit.values(n, at + 30_000, 1.0));
        let drop = RngStream::new(11, 12 + k as u64);
        let tape = Tape::new();
        let xv = tape.input(Tensor::from_vec(x.clone(), [n])?, true);
        let y = tape.gelu(&xv)?;
        let y = if p > 0.0 { tape.dropout(&y, p, drop)? } else { y };
        let want_y = y.value().to_vec::<f32>()?;
        let grads = tape.backward_with(&y, Tensor::from_vec(g.clone(), [n])?, &mut ParamStore::new())?;
        let want_dx = grad_of(&grads, &xv)?;
        let (tx, tg) = (kit.up(&x, [n])?, kit.up(&g, [n])?);
        let case = format!("n={n}, p={p}");
        kit.push(
            "gelu_dropout_forward",
            &case,
            rel(&host(&gpu::gelu_dropout(&tx, p, drop, Readers::Any)?)?, &want_y),
        );
        kit.push(
            "gelu_dropout_backward",
            &case,
            rel(
                &host(&gpu::gelu_dropout_backward(&tg, &tx, p, drop, Readers::Any)?)?,
                &want_dx,
            ),
        );
    }
    Ok(())
}
