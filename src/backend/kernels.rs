//! The CUDA kernel sources (kernels/*.cu), embedded at build time: NVRTC
//! compiles them for a GPU at run time, and build.rs compiles them for the
//! emulator.

use crate::rng::RngStream;

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// A Philox stream as the kernels take it (`RngStream` of common.cuh).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngStreamC {
    pub k0: u32,
    pub k1: u32,
    pub s0: u32,
    pub s1: u32,
}

impl From<RngStream> for RngStreamC {
    fn from(r: RngStream) -> Self {
        let (seed, stream) = (r.seed(), r.stream());
        RngStreamC {
            k0: seed as u32,
            k1: (seed >> 32) as u32,
            s0: stream as u32,
            s1: (stream >> 32) as u32,
        }
    }
}

/// An attention layout as the kernels take it (`SeqLayout` of attention.cu).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeqLayoutC {
    pub outer_count: i32,
    pub inner_count: i32,
    pub outer_stride: i32,
    pub inner_stride: i32,
    pub len: i32,
    pub step: i32,
    pub offset: i32,
}

impl From<crate::tensor::SeqLayout> for SeqLayoutC {
    fn from(l: crate::tensor::SeqLayout) -> Self {
        SeqLayoutC {
            outer_count: l.outer_count as i32,
            inner_count: l.inner_count as i32,
            outer_stride: l.outer_stride as i32,
            inner_stride: l.inner_stride as i32,
            len: l.len as i32,
            step: l.step as i32,
            offset: l.offset as i32,
        }
    }
}

/// The source of one kernel file, by name.
pub fn source(file: &str) -> Option<&'static str> {
    SOURCES.iter().find(|(f, _)| *f == file).map(|(_, s)| *s)
}
