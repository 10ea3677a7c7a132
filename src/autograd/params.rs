use std::collections::HashMap;

use crate::backend::cpu::elementwise;
use crate::error::{Error, Result};
use crate::tensor::with_dtype;
use crate::tensor::{Element, Tensor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamId(pub(crate) usize);

#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Option<Tensor>,
}

/// Named trainable tensors and their accumulated gradients, in insertion order.
#[derive(Default, Clone, Debug)]
pub struct ParamStore {
    params: Vec<Param>,
    by_name: HashMap<String, ParamId>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, name: impl Into<String>, value: Tensor) -> Result<ParamId> {
        let name = name.into();
        if self.by_name.contains_key(&name) {
            return Err(Error::invalid(
                "ParamStore::add",
                format!("parameter `{name}` already exists"),
            ));
        }
        let id = ParamId(self.params.len());
        self.by_name.insert(name.clone(), id);
        self.params.push(Param {
            name,
            value,
            grad: None,
        });
        Ok(id)
    }

    pub fn id(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }

    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[id.0]
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (ParamId, &Param)> {
        self.params.iter().enumerate().map(|(i, p)| (ParamId(i), p))
    }

    pub fn num_elements(&self) -> usize {
        self.params.iter().map(|p| p.value.numel()).sum()
    }

    /// The same parameters (and gradients) on `dev`, as f32.
    pub fn to_device(&self, dev: &crate::device::SharedDevice) -> Result<ParamStore> {
        self.map(|t| t.to_device(dev))
    }

    /// The same parameters (and gradients) on the host.
    pub fn to_cpu(&self) -> Result<ParamStore> {
        self.map(Tensor::to_cpu)
    }

    fn map(&self, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<ParamStore> {
        let mut params = Vec::with_capacity(self.params.len());
        for p in &self.params {
            params.push(Param {
                name: p.name.clone(),
                value: f(&p.value)?,
                grad: p.grad.as_ref().map(&f).transpose()?,
            });
        }
        Ok(ParamStore {
            params,
            by_name: self.by_name.clone(),
        })
    }

    /// A parameter's value as a mutable host slice, when the store alone
    /// holds it (`Tensor::cpu_slice_mut_unique`), beside its gradient: for
    /// an update in place. The shape cannot change through it.
    pub fn value_mut_and_grad<T: Element>(&mut self, id: ParamId) -> (Option<&mut [T]>, Option<&Tensor>) {
        let p = &mut self.params[id.0];
        (p.value.cpu_slice_mut_unique::<T>(), p.grad.as_ref())
    }

    /// Replaces a value; the new one must have the same shape and dtype.
    pub fn set_value(&mut self, id: ParamId, value: Tensor) -> Result<()> {
        let p = &mut self.params[id.0];
        if p.value.shape() != value.shape() {
            return Err(Error::shape_mismatch(
                "ParamStore::set_value",
                p.value.shape(),
                value.shape(),
                format!("parameter `{}` keeps its shape", p.name),
            ));
        }
        if p.value.dtype() != value.dtype() {
            return Err(Error::dtype_mismatch(
                "ParamStore::set_value",
                p.value.dtype(),
                value.dtype(),
            ));
        }
        p.value = value;
        Ok(())
    }

    /// Adds `g` to the parameter's gradient (micro-batch accumulation).
    pub fn accumulate_grad(&mut self, id: ParamId, g: Tensor) -> Result<()> {
        let p = &mut self.params[id.0];
        if g.shape() != p.value.shape() {
            return Err(Error::shape_mismatch(
                "ParamStore::accumulate_grad",
                p.value.shape(),
                g.shape(),
                format!("gradient of `{}`", p.name),
            ));
        }
        p.grad = Some(match p.grad.take() {
            None => g,
            Some(old) => add_same(&old, &g)?,
        });
        Ok(())
    }

    /// Drops one parameter's gradient.
    /// Replaces a gradient (the sum over the ranks, after an all-reduce).
    pub fn set_grad(&mut self, id: ParamId, g: Tensor) -> Result<()> {
        let p = self
            .params
            .get_mut(id.0)
            .ok_or_else(|| Error::Autograd(format!("no parameter {}", id.0)))?;
        if g.dims() != p.value.dims() {
            return Err(Error::Autograd(format!(
                "gradient of `{}` has shape {:?}, the parameter {:?}",
                p.name,
                g.dims(),
                p.value.dims()
            )));
        }
        p.grad = Some(g);
        Ok(())
    }

    pub fn zero_grad_one(&mut self, id: ParamId) {
        self.params[id.0].grad = None;
    }

    /// The device the parameters live on (`None`: the CPU), as the first
    /// one says (a store is moved to a device whole).
    pub fn shared_device(&self) -> Option<crate::device::SharedDevice> {
        self.iter().next().and_then(|(_, p)| p.value.shared_device())
    }

    pub fn zero_grad(&mut self) {
        self.params.iter_mut().for_each(|p| p.grad = None);
    }
}

/// Elementwise sum of two tensors of one shape and dtype, off the tape.
pub(crate) fn add_same(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.shape() != b.shape() {
        return Err(Error::shape_mismatch(
            "add",
            a.shape(),
            b.shape(),
            "gradients must agree",
        ));
    }
    if a.device_storage().is_some() || b.device_storage().is_some() {
        return crate::backend::gpu::add(a, b);
    }
    with_dtype!(a.dtype(), T => {
        let s = elementwise::add(a.cpu_slice::<T>()?, b.cpu_slice::<T>()?);
        Tensor::from_vec(s, a.shape())
    })
}
