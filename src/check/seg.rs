//! The segmentation decoder's kernels (src/backend/gpu/seg.rs) against the
//! CPU reference: each op's forward and every gradient on the tape, the
//! same random inputs on the host and on the device.

use super::{host, rel, Kit};
use crate::autograd::{ParamStore, Tape, Var};
use crate::error::Result;
use crate::ops::BatchStats;
use crate::tensor::Tensor;

/// `f` on the host and on the device over `inputs` (values and shapes): the
/// error of the output, and the largest error of the input gradients for
/// a random upstream gradient.
fn compare(
    kit: &Kit,
    inputs: &[(Vec<f32>, Vec<usize>)],
    seed_at: u64,
    f: impl Fn(&Tape, &[Var]) -> Result<Var>,
) -> Result<(f64, f64)> {
    let run = |device: bool| -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let tape = Tape::new();
        let vars: Vec<Var> = inputs
            .iter()
            .map(|(v, s)| {
                let t = Tensor::from_vec(v.clone(), s.clone())?;
                Ok(tape.input(if device { t.to_device(kit.dev)? } else { t }, true))
            })
            .collect::<Result<_>>()?;
        let out = f(&tape, &vars)?;
        let y = host(out.value())?;
        let seed = Tensor::from_vec(kit.values(y.len(), seed_at, 1.0), out.shape().clone())?;
        let seed = if device { seed.to_device(kit.dev)? } else { seed };
        let grads = tape.backward_with(&out, seed, &mut ParamStore::new())?;
        let g = vars
            .iter()
            .map(|v| Ok(grads.get(v).map(host).transpose()?.unwrap_or_default()))
            .collect::<Result<_>>()?;
        Ok((y, g))
    };
    let (want, want_g) = run(false)?;
    let (got, got_g) = run(true)?;
    let grad_err = want_g.iter().zip(&got_g).map(|(w, g)| rel(g, w)).fold(0.0, f64::max);
    Ok((rel(&got, &want), grad_err))
}

pub(super) fn cases(kit: &mut Kit) -> Result<()> {
    let at = 41_000_000u64;
    // ReLU and tokens ↔ channels.
    for (k, shape) in [vec![3usize, 5, 7], vec![2, 64, 48]].into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let x = vec![(kit.values(n, at + 1000 * k as u64, 2.0), shape.clone())];
        let case = format!("{shape:?}");
        let (y, g) = compare(kit, &x, at + 500, |t, v| t.relu(&v[0]))?;
        kit.push("relu_forward", &case, y);
        kit.push("relu_backward", &case, g);
        let (y, g) = compare(kit, &x, at + 600, |t, v| t.transpose12(&v[0]))?;
        kit.push("transpose12", &case, y.max(g));
    }
    // Trilinear resizing: ×2, and to sizes above and below.
    for (k, (dims, size)) in [
        ([2usize, 3, 4], [4usize, 6, 8]),
        ([5, 4, 3], [3, 7, 2]),
        ([4, 4, 4], [16, 16, 16]),
    ]
    .into_iter()
    .enumerate()
    {
        let shape = vec![2, 3, dims[0], dims[1], dims[2]];
        let n: usize = shape.iter().product();
        let x = vec![(kit.values(n, at + 10_000 + 1000 * k as u64, 1.0), shape)];
        let case = format!("{dims:?} → {size:?}");
        let (y, g) = compare(kit, &x, at + 20_000, |t, v| t.resize3d(&v[0], size))?;
        kit.push("resize_axis_forward", &case, y);
        kit.push("resize_axis_backward", &case, g);
    }
    // BatchNorm3d with batch and with running statistics.
    for (k, (b, c, d)) in [(2usize, 3usize, [2usize, 3, 4]), (1, 8, [8, 8, 8])]
        .into_iter()
        .enumerate()
    {
        let shape = vec![b, c, d[0], d[1], d[2]];
        let n: usize = shape.iter().product();
        let base = at + 30_000 + 10_000 * k as u64;
        let gamma: Vec<f32> = kit.values(c, base + 1, 0.5).iter().map(|v| v + 1.0).collect();
        let inputs = vec![
            (kit.values(n, base, 3.0), shape),
            (gamma, vec![c]),
            (kit.values(c, base + 2, 1.0), vec![c]),
        ];
        let running = BatchStats::Running {
            mean: kit.values(c, base + 3, 0.5).iter().map(|&v| v as f64).collect(),
            var: kit
                .values(c, base + 4, 0.5)
                .iter()
                .map(|&v| 1.0 + v.abs() as f64)
                .collect(),
        };
        let case = format!("{b}×{c}×{d:?}");
        for (stats, name) in [(BatchStats::Batch, "batch"), (running, "running")] {
            let (y, g) = compare(kit, &inputs, base + 5, |t, v| {
                Ok(t.batch_norm3d(&v[0], &v[1], &v[2], &stats, 1e-5)?.0)
            })?;
            kit.push("batch_norm_apply", format!("{case} {name} statistics"), y);
            kit.push("batch_norm_backward", format!("{case} {name} statistics"), g);
        }
    }
    // Convolution: 3³ padded, and 1³ with a bias.
    for (k, (b, cin, cout, d, ks, bias)) in [
        (2usize, 3usize, 4usize, [3usize, 4, 5], 3usize, false),
        (1, 8, 6, [6, 6, 6], 3, false),
        (2, 5, 3, [4, 3, 2], 1, true),
    ]
    .into_iter()
    .enumerate()
    {
        let base = at + 60_000 + 10_000 * k as u64;
        let xs = vec![b, cin, d[0], d[1], d[2]];
        let ws = vec![cout, cin, ks, ks, ks];
        let (nx, nw) = (xs.iter().product(), ws.iter().product());
        let mut inputs = vec![(kit.values(nx, base, 1.0), xs), (kit.values(nw, base + 1, 0.3), ws)];
        if bias {
            inputs.push((kit.values(cout, base + 2, 0.5), vec![cout]));
        }
        let pad = ks / 2;
        let case = format!("{b}×{cin}→{cout}, {d:?}, {ks}³{}", if bias { " + bias" } else { "" });
        let (y, g) = compare(kit, &inputs, base + 3, |t, v| t.conv3d(&v[0], &v[1], v.get(2), pad))?;
        kit.push("im2col3d", format!("{case}: forward"), y);
        kit.push("col2im3d", format!("{case}: gradients"), g);
    }
    // Softmax, Dice and cross-entropy.
    for (k, (b, c, d)) in [(2usize, 3usize, [2usize, 3, 4]), (1, 9, [8, 8, 8])]
        .into_iter()
        .enumerate()
    {
        let shape = vec![b, c, d[0], d[1], d[2]];
        let n: usize = shape.iter().product();
        let vox = b * d.iter().product::<usize>();
        let labels: Vec<u32> = (0..vox).map(|i| ((i * 7 + k) % c) as u32).collect();
        let inputs = vec![(kit.values(n, at + 90_000 + 1000 * k as u64, 3.0), shape)];
        let case = format!("{b}×{c}×{d:?}");
        let (y, g) = compare(kit, &inputs, at + 95_000, |t, v| t.dice_ce(&v[0], &labels))?;
        kit.push("dice_ce_loss", &case, y);
        kit.push("dice_ce_backward", &case, g);
    }
    Ok(())
}
