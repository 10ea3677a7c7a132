//! What the CUDA device writes into a captured launch's parameter block
//! (`kernels::param_bytes`, for a launch and a step-graph node) has the size
//! each kernel declares for that parameter. The sizes come from build.rs,
//! whose table the emulator's C++ build checks with `sizeof` and `offsetof`
//! against the same declarations NVRTC compiles.

use nemesis::backend::kernels::{param_bytes, ParamKind, SeqLayoutC, KERNELS, SIGNATURES};
use nemesis::device::Arg;
use nemesis::rng::RngStream;
use nemesis::tensor::SeqLayout;

fn sample(kind: ParamKind) -> Arg {
    match kind {
        ParamKind::Ptr => Arg::Buf(7),
        ParamKind::I32 => Arg::I32(-3),
        ParamKind::U32 => Arg::U32(3),
        ParamKind::U64 => Arg::U64(1 << 40),
        ParamKind::F32 => Arg::F32(0.5),
        ParamKind::F64 => Arg::F64(0.25),
        ParamKind::Rng => Arg::Rng(RngStream::new(0x0102_0304_0506_0708, 0x1112_1314_1516_1718)),
        ParamKind::Layout => Arg::Layout(SeqLayout::spatial(2, 3, 5)),
    }
}

#[test]
fn every_parameter_of_every_kernel_packs_to_its_declared_size() {
    let mut checked = 0;
    for (kernel, params) in SIGNATURES {
        for p in *params {
            let bytes = param_bytes(&sample(p.kind), |id| Ok(0xABCD_0000 + id)).unwrap();
            assert_eq!(bytes.len(), p.bytes, "{kernel}: `{} {}`", p.ctype, p.name);
            checked += 1;
        }
    }
    // Every NVRTC kernel has a declaration in the table.
    for (_, k) in KERNELS {
        assert!(SIGNATURES.iter().any(|(s, _)| s == k), "{k}");
    }
    assert!(checked > 300, "{checked} parameters");
}

#[test]
fn a_buffer_packs_as_its_device_address_and_structs_field_by_field() {
    let b = param_bytes(&Arg::Buf(7), |id| Ok(0xABCD_0000 + id)).unwrap();
    assert_eq!(b, (0xABCD_0007u64).to_ne_bytes());
    let l = SeqLayout::spatial(2, 3, 5).interleaved(3, 1);
    let c: SeqLayoutC = l.into();
    let want: Vec<u8> = [
        c.outer_count,
        c.inner_count,
        c.outer_stride,
        c.inner_stride,
        c.len,
        c.step,
        c.offset,
    ]
    .iter()
    .flat_map(|v| v.to_ne_bytes())
    .collect();
    // The repr(C) struct's own bytes, field by field.
    // SAFETY: SeqLayoutC is #[repr(C)] with seven i32 fields and no padding.
    let raw = unsafe {
        std::slice::from_raw_parts(
            (&c as *const SeqLayoutC).cast::<u8>(),
            std::mem::size_of::<SeqLayoutC>(),
        )
    };
    assert_eq!(raw, &want[..]);
    assert_eq!(param_bytes(&Arg::Layout(l), |_| Ok(0)).unwrap(), want);
    let r = RngStream::new(0x0102_0304_0506_0708, 0x1112_1314_1516_1718);
    let bytes = param_bytes(&Arg::Rng(r), |_| Ok(0)).unwrap();
    let words: Vec<u32> = bytes
        .chunks(4)
        .map(|w| u32::from_ne_bytes(w.try_into().unwrap()))
        .collect();
    assert_eq!(words, vec![0x0506_0708, 0x0102_0304, 0x1516_1718, 0x1112_1314]);
}
