//! The flash attention kernels on the emulator against the CPU reference,
//! in fp32 (within 1e-4) and in bf16 on the emulated tensor cores (within
//! 2e-2), forward and backward, over every head dim, length, layout and
//! dropout setting of `check::attention_cases`.

use std::sync::Arc;

use nemesis::backend::check::{attention_cases, attention_kernels, CheckRow};
use nemesis::backend::device::SharedDevice;
use nemesis::backend::emu::EmuDevice;
use nemesis::backend::gpu::AttentionKernel;

fn misses(rows: &[CheckRow]) -> Vec<String> {
    if std::env::var_os("SHOW").is_some() {
        for r in rows {
            eprintln!("{} {}: {:.3e}", r.kernel, r.case, r.rel_err);
        }
    }
    rows.iter()
        .filter(|r| !r.ok())
        .map(|r| format!("{} {}: {:.3e} > {:.0e}", r.kernel, r.case, r.rel_err, r.limit))
        .collect()
}

#[test]
fn flash_f32_matches_the_cpu_reference() {
    let dev: SharedDevice = Arc::new(EmuDevice::new());
    let rows = attention_kernels(&dev, AttentionKernel::FlashF32, &attention_cases(), 11).unwrap();
    assert_eq!(rows.len(), 2 * attention_cases().len());
    assert!(misses(&rows).is_empty(), "{:#?}", misses(&rows));
}

#[test]
fn flash_bf16_on_the_emulated_tensor_cores_is_within_bf16_limits() {
    let dev: SharedDevice = Arc::new(EmuDevice::mixed());
    let rows = attention_kernels(&dev, AttentionKernel::FlashBf16, &attention_cases(), 12).unwrap();
    assert!(misses(&rows).is_empty(), "{:#?}", misses(&rows));
    // bf16 operands must leave a trace: not every case within fp32's limit.
    assert!(rows.iter().any(|r| r.rel_err > 1e-4));
}
