//! Backends: where the arithmetic of each op happens. `cpu` is the plain,
//! readable reference every other backend is checked against.

pub mod cpu;
