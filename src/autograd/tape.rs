use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::params::{add_same, ParamId, ParamStore};
use crate::error::{Error, Result};
use crate::tensor::{Shape, Tensor};

pub type VarId = usize;

/// A value in a computation: its tensor, and whether gradients flow to it.
#[derive(Clone, Debug)]
pub struct Var {
    id: VarId,
    value: Tensor,
    tracked: bool,
}

impl Var {
    pub fn id(&self) -> VarId {
        self.id
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }

    /// Whether a gradient can reach this value (it depends on a parameter or
    /// an input that asked for one, and was made while recording).
    pub fn tracked(&self) -> bool {
        self.tracked
    }
}

/// The backward half of an op. It holds what the forward saved and returns
/// one gradient per input, `None` where `needs` is false.
pub trait Backward {
    fn name(&self) -> &'static str;
    fn backward(&self, grad_out: &Tensor, needs: &[bool]) -> Result<Vec<Option<Tensor>>>;
}

struct Node {
    op: Box<dyn Backward>,
    inputs: Vec<(VarId, bool)>,
    output: VarId,
}

/// Gradients of the leaves that asked for them (`Tape::input(.., true)`).
#[derive(Default, Debug)]
pub struct Gradients {
    inputs: HashMap<VarId, Tensor>,
}

impl Gradients {
    pub fn get(&self, v: &Var) -> Option<&Tensor> {
        self.inputs.get(&v.id)
    }
}

/// One forward pass worth of recorded ops. Not shared between threads; a
/// new tape per step.
pub struct Tape {
    next_id: Cell<VarId>,
    recording: Cell<bool>,
    nodes: RefCell<Vec<Node>>,
    params: RefCell<HashMap<VarId, ParamId>>,
    wants_grad: RefCell<Vec<VarId>>,
}

impl Default for Tape {
    fn default() -> Self {
        Self::new()
    }
}

impl Tape {
    /// A tape that records ops for a backward pass.
    pub fn new() -> Self {
        Tape {
            next_id: Cell::new(0),
            recording: Cell::new(true),
            nodes: RefCell::new(Vec::new()),
            params: RefCell::new(HashMap::new()),
            wants_grad: RefCell::new(Vec::new()),
        }
    }

    /// A tape for inference: nothing is recorded, intermediates are freed as
    /// soon as their `Var`s drop.
    pub fn inference() -> Self {
        let t = Self::new();
        t.recording.set(false);
        t
    }

    pub fn is_recording(&self) -> bool {
        self.recording.get()
    }

    /// Runs `f` with recording off, then restores the previous state.
    pub fn no_grad<R>(&self, f: impl FnOnce(&Tape) -> R) -> R {
        let was = self.recording.replace(false);
        let r = f(self);
        self.recording.set(was);
        r
    }

    pub fn num_nodes(&self) -> usize {
        self.nodes.borrow().len()
    }

    fn fresh(&self, value: Tensor, tracked: bool) -> Var {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        Var { id, value, tracked }
    }

    /// A value no gradient flows to.
    pub fn constant(&self, value: Tensor) -> Var {
        self.fresh(value, false)
    }

    /// An input leaf; with `requires_grad` its gradient is returned by `backward`.
    pub fn input(&self, value: Tensor, requires_grad: bool) -> Var {
        let tracked = requires_grad && self.is_recording();
        let v = self.fresh(value, tracked);
        if tracked {
            self.wants_grad.borrow_mut().push(v.id);
        }
        v
    }

    /// A parameter leaf; `backward` adds its gradient into the store.
    pub fn param(&self, store: &ParamStore, id: ParamId) -> Var {
        let tracked = self.is_recording();
        let v = self.fresh(store.get(id).value.clone(), tracked);
        if tracked {
            self.params.borrow_mut().insert(v.id, id);
        }
        v
    }

    /// A parameter leaf that takes its forward value from `value` while its
    /// gradient still goes to `id`. Only for the decoder's `pe_scale`, which
    /// the public release overwrites with the encoder's before each pass
    /// (MODEL.md §6); the shape must match the parameter's.
    pub fn param_as(&self, store: &ParamStore, id: ParamId, value: Tensor) -> Result<Var> {
        let p = store.get(id);
        if p.value.shape() != value.shape() || p.value.dtype() != value.dtype() {
            return Err(Error::shape_mismatch(
                "param_as",
                p.value.shape(),
                value.shape(),
                format!("value for `{}` must have its shape and dtype", p.name),
            ));
        }
        let tracked = self.is_recording();
        let v = self.fresh(value, tracked);
        if tracked {
            self.params.borrow_mut().insert(v.id, id);
        }
        Ok(v)
    }

    /// Wraps an op's output; records `op` when recording and some input is tracked.
    pub fn record(&self, value: Tensor, inputs: &[&Var], op: impl Backward + 'static) -> Var {
        let tracked = self.is_recording() && inputs.iter().any(|v| v.tracked);
        let out = self.fresh(value, tracked);
        if tracked {
            self.nodes.borrow_mut().push(Node {
                op: Box::new(op),
                inputs: inputs.iter().map(|v| (v.id, v.tracked)).collect(),
                output: out.id,
            });
        }
        out
    }

    /// Backward from a scalar (one-element) loss with seed gradient 1.
    pub fn backward(&self, loss: &Var, store: &mut ParamStore) -> Result<Gradients> {
        if loss.value.numel() != 1 {
            return Err(Error::bad_shape(
                "backward",
                loss.shape(),
                "the loss must have one element; use backward_with for a tensor output",
            ));
        }
        let mut seed = Tensor::full(1.0, loss.shape(), loss.value.dtype());
        // A loss on a device gets its seed there (an upload, no wait).
        if let Some(dev) = loss.value.shared_device() {
            seed = seed.to_device(&dev)?;
        }
        self.backward_with(loss, seed, store)
    }

    /// Backward from any output with a given upstream gradient. Consumes the
    /// recorded nodes; parameter gradients are added to `store`.
    pub fn backward_with(&self, out: &Var, seed: Tensor, store: &mut ParamStore) -> Result<Gradients> {
        if seed.shape() != out.shape() {
            return Err(Error::shape_mismatch(
                "backward",
                out.shape(),
                seed.shape(),
                "seed gradient",
            ));
        }
        if !out.tracked {
            return Err(Error::Autograd(
                "the output does not depend on any parameter or input that requires a gradient \
                 (or it was computed outside recording)"
                    .into(),
            ));
        }
        let nodes = std::mem::take(&mut *self.nodes.borrow_mut());
        let mut grads: HashMap<VarId, Tensor> = HashMap::new();
        grads.insert(out.id, seed);
        for node in nodes.into_iter().rev() {
            let Some(g) = grads.remove(&node.output) else {
                continue;
            };
            let needs: Vec<bool> = node.inputs.iter().map(|&(_, t)| t).collect();
            let input_grads = node.op.backward(&g, &needs)?;
            for (&(id, tracked), gi) in node.inputs.iter().zip(input_grads) {
                let (true, Some(gi)) = (tracked, gi) else {
                    continue;
                };
                let acc = match grads.remove(&id) {
                    Some(prev) => add_same(&prev, &gi)?,
                    None => gi,
                };
                grads.insert(id, acc);
            }
        }
        // In variable order, so repeated uses of a parameter add up the same
        // way on every run (bit-for-bit resumes depend on it).
        let mut params: Vec<(VarId, ParamId)> = self.params.borrow_mut().drain().collect();
        params.sort_unstable_by_key(|&(var, _)| var);
        for (var, pid) in params {
            if let Some(g) = grads.remove(&var) {
                store.accumulate_grad(pid, g)?;
            }
        }
        let mut inputs = HashMap::new();
        for id in self.wants_grad.borrow_mut().drain(..) {
            if let Some(g) = grads.remove(&id) {
                inputs.insert(id, g);
            }
        }
        Ok(Gradients { inputs })
    }
}
