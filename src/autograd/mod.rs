//! Reverse-mode autodiff on a tape: each op that touches a tracked value
//! appends a node (its inputs and a backward closure over what it saved);
//! `backward` walks the nodes in reverse. Parameters live in a `ParamStore`
//! outside the tape, so their gradients outlive one forward pass and add up
//! across micro-batches until cleared.

mod params;
pub mod profile;
mod tape;

pub use params::{Param, ParamId, ParamStore};
pub use tape::{Backward, Gradients, Tape, Var, VarId};
