//! Every op once: shape rules, forward through the backend, and the backward
//! it records on the tape. Ops are methods of `Tape`, e.g. `tape.linear(..)`.
//! A shape that does not fit is an `Error` naming the op and both shapes.

mod activation;
mod arith;
mod attention;
mod batch_norm;
mod conv;
mod dropout;
mod gate;
mod index;
mod layer_norm;
mod linear;
mod loss;
mod reduce;
mod resize;
mod seg_loss;

pub use attention::{AttentionOptions, AttnDropout, MhaParams};
pub use batch_norm::{BatchMoments, BatchStats};
pub use loss::{psnr, psnr_from_sse, sum_sq_err};

use crate::autograd::{Backward, Var};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

type Grads = Result<Vec<Option<Tensor>>>;

/// A backward pass given as a closure over what the forward saved.
struct FnBackward<F> {
    name: &'static str,
    f: F,
}

impl<F: Fn(&Tensor, &[bool]) -> Grads> Backward for FnBackward<F> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn backward(&self, grad_out: &Tensor, needs: &[bool]) -> Grads {
        (self.f)(grad_out, needs)
    }
}

fn backward_fn<F: Fn(&Tensor, &[bool]) -> Grads>(name: &'static str, f: F) -> FnBackward<F> {
    FnBackward { name, f }
}

/// Whether any operand lives on a device (then the op runs on the device
/// through `backend::gpu`, and every operand must be on that device).
fn on_device(vars: &[&Var]) -> bool {
    vars.iter().any(|v| v.value().device_storage().is_some())
}

/// The common dtype of an op's operands.
fn same_dtype(op: &'static str, vars: &[&Var]) -> Result<DType> {
    let d = vars[0].value().dtype();
    for v in &vars[1..] {
        if v.value().dtype() != d {
            return Err(Error::dtype_mismatch(op, d, v.value().dtype()));
        }
    }
    Ok(d)
}
