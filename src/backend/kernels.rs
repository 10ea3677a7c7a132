//! The CUDA kernel sources (kernels/*.cu), embedded at build time: NVRTC
//! compiles them for a GPU at run time, and build.rs compiles them for the
//! emulator.

use crate::rng::RngStream;

include!(concat!(env!("OUT_DIR"), "/kernel_sources.rs"));

/// The kind of value a kernel parameter takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Ptr,
    I32,
    U32,
    U64,
    F32,
    F64,
    Rng,
    Layout,
}

/// One kernel parameter as its source declares it.
#[derive(Clone, Copy, Debug)]
pub struct Param {
    pub ctype: &'static str,
    pub name: &'static str,
    pub kind: ParamKind,
    /// Its size in the kernel's parameter block.
    pub bytes: usize,
}

/// The kind of value an argument carries.
pub fn arg_kind(a: &crate::device::Arg) -> ParamKind {
    use crate::device::Arg;
    match a {
        Arg::Buf(_) => ParamKind::Ptr,
        Arg::I32(_) => ParamKind::I32,
        Arg::U32(_) => ParamKind::U32,
        Arg::U64(_) => ParamKind::U64,
        Arg::F32(_) => ParamKind::F32,
        Arg::F64(_) => ParamKind::F64,
        Arg::Rng(_) => ParamKind::Rng,
        Arg::Layout(_) => ParamKind::Layout,
    }
}

/// Checks a launch's arguments against the kernel's declared parameters:
/// their number and each one's kind, on every device (a CUDA launch would
/// otherwise pass whatever bytes it is given).
pub fn check_args(kernel: &str, args: &[crate::device::Arg]) -> crate::error::Result<()> {
    use crate::error::Error;
    let sig = signature(kernel).ok_or_else(|| Error::invalid("launch", format!("no kernel named `{kernel}`")))?;
    if sig.len() != args.len() {
        return Err(Error::invalid(
            "launch",
            format!("`{kernel}` takes {} arguments, got {}", sig.len(), args.len()),
        ));
    }
    for (i, (p, a)) in sig.iter().zip(args).enumerate() {
        if let crate::device::Arg::Layout(l) = a {
            // Kernels index rows with 32-bit ints.
            let fields = [
                l.outer_count,
                l.inner_count,
                l.outer_stride,
                l.inner_stride,
                l.len,
                l.step,
                l.offset,
            ];
            if fields.iter().chain([&l.last_row()]).any(|&v| v > i32::MAX as usize) {
                return Err(Error::invalid(
                    "launch",
                    format!("`{kernel}`: a sequence layout beyond 32-bit rows ({l:?})"),
                ));
            }
        }
        if p.kind != arg_kind(a) {
            return Err(Error::invalid(
                "launch",
                format!(
                    "`{kernel}`: argument {i} (`{} {}`) must be {:?}, got {:?}",
                    p.ctype,
                    p.name,
                    p.kind,
                    arg_kind(a)
                ),
            ));
        }
    }
    Ok(())
}

/// The declared parameters of `kernel`.
pub fn signature(kernel: &str) -> Option<&'static [Param]> {
    SIGNATURES.iter().find(|(k, _)| *k == kernel).map(|(_, p)| *p)
}

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
