//! The whole GPU code path on the CPU: a training step of the model on the
//! emulated device (every op through `backend::gpu`, the .cu kernels and the
//! device GEMM) against the CPU reference backend.

use std::sync::Arc;

use nemesis::backend::check::{training_step, CheckRow};
use nemesis::backend::device::SharedDevice;
use nemesis::backend::emu::EmuDevice;

fn report(rows: &[CheckRow]) -> usize {
    let mut misses = 0;
    for r in rows {
        if !r.ok() {
            misses += 1;
            eprintln!("MISS {} {} {:.3e} > {:.0e}", r.kernel, r.case, r.rel_err, r.limit);
        }
        if std::env::var_os("SHOW").is_some() {
            eprintln!("{} {} {:.3e}", r.kernel, r.case, r.rel_err);
        }
    }
    misses
}

#[test]
fn tiny_training_step_on_the_emulator_matches_the_cpu_fp32() {
    let dev: SharedDevice = Arc::new(EmuDevice::new());
    let rows = training_step(&dev, "tiny", 2, 5).unwrap();
    // Loss, PSNR and one row per parameter.
    assert!(rows.len() > 40, "{} rows", rows.len());
    assert!(rows.iter().all(|r| r.limit == 1e-4));
    assert_eq!(report(&rows), 0);
}

#[test]
fn tiny_training_step_in_mixed_precision_is_within_bf16_limits() {
    let dev: SharedDevice = Arc::new(EmuDevice::mixed());
    let rows = training_step(&dev, "tiny", 2, 6).unwrap();
    // Every row but the one-element gradients (shown, judged together with
    // all others in the last row) has the bf16 limit.
    assert_eq!(rows.iter().filter(|r| r.limit != 2e-2).count(), 3);
    assert!(rows.iter().any(|r| r.case.contains("all gradients") && r.limit == 2e-2));
    assert_eq!(report(&rows), 0);
    // Rounding the GEMM operands to bf16 must show: not every gradient is
    // within fp32's limit.
    assert!(rows.iter().any(|r| r.rel_err > 1e-4), "bf16 rounding had no effect");
}
