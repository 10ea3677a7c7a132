//! `conv3d`: PyTorch's Conv3d with stride 1, a cubic kernel and zero
//! padding, for the segmentation decoder (SPEC §14); on a device, im2col,
//! one GEMM and a layout swap (backend/gpu/seg.rs).

use super::{backward_fn, on_device, same_dtype};
use crate::autograd::{Tape, Var};
use crate::backend::cpu::conv::Conv3d;
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::tensor::{with_dtype, Tensor};

impl Tape {
    /// `y = w ⊛ x + b`: `x` is `B × Cin × D × H × W`, `w` is
    /// `Cout × Cin × k × k × k`, `b` (if any) `Cout`; zero padding `pad` on
    /// every side, stride 1.
    pub fn conv3d(&self, x: &Var, w: &Var, b: Option<&Var>, pad: usize) -> Result<Var> {
        const OP: &str = "conv3d";
        let (xs, ws) = (x.shape().clone(), w.shape().clone());
        if xs.rank() != 5 {
            return Err(Error::bad_shape(OP, &xs, "the input must be B × C × D × H × W"));
        }
        let wd = ws.dims();
        if ws.rank() != 5 || wd[2] != wd[3] || wd[3] != wd[4] || wd[2] == 0 {
            return Err(Error::bad_shape(OP, &ws, "the weight must be Cout × Cin × k × k × k"));
        }
        let xd = xs.dims();
        if wd[1] != xd[1] {
            return Err(Error::shape_mismatch(
                OP,
                &xs,
                &ws,
                format!("the input has {} channels, the weight {}", xd[1], wd[1]),
            ));
        }
        let conv = Conv3d {
            batch: xd[0],
            cin: xd[1],
            cout: wd[0],
            dims: [xd[2], xd[3], xd[4]],
            k: wd[2],
            pad,
        };
        if pad >= conv.k {
            return Err(Error::invalid(
                OP,
                format!("padding {pad} must be below the kernel's side {}", conv.k),
            ));
        }
        if conv.dims.iter().any(|&n| n + 2 * pad < conv.k) {
            return Err(Error::bad_shape(
                OP,
                &xs,
                format!("smaller than the {}³ kernel with padding {pad}", conv.k),
            ));
        }
        let mut inputs = vec![x, w];
        if let Some(b) = b {
            if b.shape().dims() != [conv.cout] {
                return Err(Error::shape_mismatch(
                    OP,
                    &ws,
                    b.shape(),
                    format!("the bias must be [{}]", conv.cout),
                ));
            }
            inputs.push(b);
        }
        let dtype = same_dtype(OP, &inputs)?;
        if on_device(&inputs) {
            let dims = gpu::ConvDims {
                batch: conv.batch,
                cin: conv.cin,
                cout: conv.cout,
                dims: conv.dims,
                k: conv.k,
                pad: conv.pad,
            };
            let y = gpu::conv3d(x.value(), w.value(), b.map(|b| b.value()), &dims)?;
            let (xv, wv) = (x.value().clone(), w.value().clone());
            return Ok(self.record(
                y,
                &inputs,
                backward_fn(OP, move |g, needs| {
                    let want = [needs[0], needs[1], needs.get(2).copied().unwrap_or(false)];
                    let [dx, dw, db] = gpu::conv3d_backward(g, &xv, &wv, &dims, want)?;
                    let mut out = vec![dx, dw];
                    if needs.len() > 2 {
                        out.push(db);
                    }
                    Ok(out)
                }),
            ));
        }
        let [od, oh, ow] = conv.out_dims();
        let shape = vec![conv.batch, conv.cout, od, oh, ow];
        let y = with_dtype!(dtype, T => {
            let bias = match b {
                Some(b) => Some(b.value().cpu_slice::<T>()?),
                None => None,
            };
            Tensor::from_vec(conv.forward(x.value().cpu_slice::<T>()?, w.value().cpu_slice::<T>()?, bias), shape)?
        });
        let (xv, wv) = (x.value().clone(), w.value().clone());
        Ok(self.record(
            y,
            &inputs,
            backward_fn(OP, move |g, needs| {
                with_dtype!(dtype, T => {
                    let (dx, dw, db) = conv.backward(xv.cpu_slice::<T>()?, wv.cpu_slice::<T>()?, g.cpu_slice::<T>()?);
                    let mut out = vec![
                        needs[0].then(|| Tensor::from_vec(dx, xv.dims().to_vec())).transpose()?,
                        needs[1].then(|| Tensor::from_vec(dw, wv.dims().to_vec())).transpose()?,
                    ];
                    if needs.len() > 2 {
                        out.push(needs[2].then(|| Tensor::from_vec(db, vec![conv.cout])).transpose()?);
                    }
                    Ok(out)
                })
            }),
        ))
    }
}
