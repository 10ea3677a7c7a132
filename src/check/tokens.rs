//! Token movement (src/backend/gpu/tokens.rs) against the tape's CPU ops:
//! the scatter of the latent among mask tokens and its gradients, and the
//! mean pooling's gradient.

use super::{grad_of, host, rel, Kit};
use crate::autograd::{ParamStore, Tape};
use crate::backend::gpu;
use crate::error::Result;
use crate::tensor::Tensor;

pub(super) fn cases(kit: &mut Kit) -> Result<()> {
    // Token movement and pooling against the tape's CPU ops.
    for (k, (b, n_dst, per, e)) in [(1usize, 5usize, 2usize, 3usize), (2, 16, 7, 12)]
        .into_iter()
        .enumerate()
    {
        let at = 30_000_000 + 100_000 * k as u64;
        let x = kit.values(b * per * e, at, 1.0);
        let fill = kit.values(e, at + 40_000, 1.0);
        let g = kit.values(b * n_dst * e, at + 50_000, 1.0);
        let mut idx = Vec::new();
        for item in 0..b {
            // A fixed permutation per item: every third row, wrapping.
            let mut used = vec![false; n_dst];
            let mut i = item;
            while idx.len() < (item + 1) * per {
                i = (i + 3) % n_dst;
                if !std::mem::replace(&mut used[i], true) {
                    idx.push(i);
                } else {
                    i += 1;
                }
            }
        }
        let tape = Tape::new();
        let xv = tape.input(Tensor::from_vec(x.clone(), [b, per, e])?, true);
        let fv = tape.input(Tensor::from_vec(fill.clone(), [e])?, true);
        let y = tape.scatter_rows(&xv, &idx, n_dst, &fv)?;
        let mut store = ParamStore::new();
        let grads = tape.backward_with(&y, Tensor::from_vec(g.clone(), [b, n_dst, e])?, &mut store)?;
        let want_dx = grad_of(&grads, &xv)?;
        let want_df = grad_of(&grads, &fv)?;
        let case = format!("{b}×{per} rows into {n_dst}, E={e}");
        let got = gpu::scatter_rows(&kit.up(&x, [b, per, e])?, &idx, &kit.up(&fill, [e])?, b, n_dst)?;
        kit.push(
            "scatter_rows",
            case.clone(),
            rel(&host(&got)?, y.value().cpu_slice::<f32>()?),
        );
        let (dx, df) = gpu::scatter_rows_backward(&kit.up(&g, [b, n_dst, e])?, &idx, b, n_dst, e)?;
        kit.push(
            "unselected_row_sums",
            case.clone(),
            rel(&host(&dx)?, &want_dx).max(rel(&host(&df)?, &want_df)),
        );
        let tape = Tape::new();
        let xv = tape.input(Tensor::from_vec(g.clone(), [b, n_dst, e])?, true);
        let m = tape.mean(&xv, 1)?;
        let gm = kit.values(b * e, at + 60_000, 1.0);
        let mut store = ParamStore::new();
        let grads = tape.backward_with(&m, Tensor::from_vec(gm.clone(), [b, e])?, &mut store)?;
        let want = grad_of(&grads, &xv)?;
        let got = gpu::mean_axis_backward(&kit.up(&gm, [b, e])?, b, n_dst, e, vec![b, n_dst, e].into())?;
        kit.push(
            "mean_axis_backward",
            format!("{b}×{n_dst}×{e}"),
            rel(&host(&got)?, &want),
        );
    }
    Ok(())
}
