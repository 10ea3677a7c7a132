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
        if super::profile::enabled() {
            let bytes: usize = inputs.iter().map(|v| v.value.numel()).sum::<usize>() + value.numel();
            let size = if value.dtype() == crate::tensor::DType::F64 {
                8
            } else {
                4
            };
            super::profile::forward(op.name(), (bytes * size) as f64);
        }
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
        self.backward_inner(out, seed, store, &mut |_, _| Ok(()))
    }

    /// `backward` that hands each parameter to `ready` as soon as its
    /// gradient for this pass is complete (in the store): the first node
    /// that used it in the forward pass has run backward. Data-parallel
    /// training starts summing a bucket of gradients over the ranks there,
    /// while the rest of the backward pass runs. Every parameter of the
    /// store that this pass did not reach comes last, in order. The
    /// gradients are the same as `backward`'s, bit for bit.
    pub fn backward_each(
        &self,
        loss: &Var,
        store: &mut ParamStore,
        ready: &mut dyn FnMut(ParamId, &mut ParamStore) -> Result<()>,
    ) -> Result<Gradients> {
        let mut seed = Tensor::full(1.0, loss.shape(), loss.value.dtype());
        if let Some(dev) = loss.value.shared_device() {
            seed = seed.to_device(&dev)?;
        }
        if loss.value.numel() != 1 {
            return Err(Error::bad_shape(
                "backward",
                loss.shape(),
                "the loss must have one element",
            ));
        }
        let mut reported = vec![false; store.len()];
        let mut hook = |pid: ParamId, store: &mut ParamStore| -> Result<()> {
            reported[pid.0] = true;
            ready(pid, store)
        };
        let g = self.backward_inner(loss, seed, store, &mut hook)?;
        for i in (0..reported.len()).filter(|&i| !reported[i]) {
            ready(ParamId(i), store)?;
        }
        Ok(g)
    }

    fn backward_inner(
        &self,
        out: &Var,
        seed: Tensor,
        store: &mut ParamStore,
        ready: &mut dyn FnMut(ParamId, &mut ParamStore) -> Result<()>,
    ) -> Result<Gradients> {
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
        let params: HashMap<VarId, ParamId> = self.params.borrow_mut().drain().collect();
        // Where each parameter's gradient is complete: after the earliest
        // node that reads one of its variables has run backward. A
        // parameter's variables are added to the store in variable order,
        // so repeated uses add up the same way on every run (bit-for-bit
        // resumes depend on it).
        let mut vars_of: HashMap<ParamId, Vec<VarId>> = HashMap::new();
        for (&var, &pid) in &params {
            vars_of.entry(pid).or_default().push(var);
        }
        vars_of.values_mut().for_each(|v| v.sort_unstable());
        let mut first_use: HashMap<ParamId, usize> = HashMap::new();
        for (i, node) in nodes.iter().enumerate() {
            for (id, _) in &node.inputs {
                if let Some(&pid) = params.get(id) {
                    first_use.entry(pid).or_insert(i);
                }
            }
        }
        let mut complete_at: HashMap<usize, Vec<ParamId>> = HashMap::new();
        for (&pid, &i) in &first_use {
            complete_at.entry(i).or_default().push(pid);
        }
        complete_at.values_mut().for_each(|v| v.sort_unstable_by_key(|p| p.0));
        let mut grads: HashMap<VarId, Tensor> = HashMap::new();
        grads.insert(out.id, seed);
        let mut store_param =
            |pid: ParamId, grads: &mut HashMap<VarId, Tensor>, store: &mut ParamStore| -> Result<()> {
                for var in vars_of.get(&pid).map(Vec::as_slice).unwrap_or_default() {
                    if let Some(g) = grads.remove(var) {
                        store.accumulate_grad(pid, g)?;
                    }
                }
                ready(pid, store)
            };
        for (i, node) in nodes.into_iter().enumerate().rev() {
            if let Some(g) = grads.remove(&node.output) {
                let needs: Vec<bool> = node.inputs.iter().map(|&(_, t)| t).collect();
                let t0 = super::profile::enabled().then(std::time::Instant::now);
                let input_grads = node.op.backward(&g, &needs)?;
                if let Some(t0) = t0 {
                    super::profile::backward(node.op.name(), t0.elapsed().as_secs_f64());
                }
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
            for &pid in complete_at.get(&i).map(Vec::as_slice).unwrap_or_default() {
                store_param(pid, &mut grads, store)?;
            }
        }
        // Parameters on the tape that no node read (the output itself, say).
        let mut rest: Vec<ParamId> = vars_of.keys().filter(|p| !first_use.contains_key(p)).copied().collect();
        rest.sort_unstable_by_key(|p| p.0);
        for pid in rest {
            store_param(pid, &mut grads, store)?;
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
