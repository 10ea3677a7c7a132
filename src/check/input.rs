//! The fused superpatch input (src/backend/gpu/input.rs) against window →
//! noise → patchify → gather on the CPU, on the tiny preset and an odd
//! shape.

use super::{host, rel, Kit};
use crate::autograd::Tape;
use crate::backend::gpu;
use crate::data::hu_window;
use crate::error::Result;
use crate::model::{add_noise, patchify, DualMask, ModelConfig};
use crate::tensor::Tensor;

pub(super) fn cases(kit: &mut Kit) -> Result<()> {
    let odd = ModelConfig {
        superpatch_size: [6, 10, 12],
        patch_size: [2, 5, 3],
        ..ModelConfig::tiny()
    };
    for c in [ModelConfig::tiny(), odd] {
        let b = 2;
        let hu: Vec<i16> = kit
            .values(b * c.voxels(), 5_000_000, 1.0)
            .iter()
            .map(|v| (v * 900.0) as i16)
            .collect();
        let mask = DualMask::sample(&c, b, kit.r);
        let up = gpu::upload_hu(kit.dev, &hu)?;
        let got = gpu::superpatch_input(&up, b, c.superpatch_size, c.patch_size, mask.ids_keep(), 0.03, kit.r)?;
        let [d, h, w] = c.superpatch_size;
        let x = Tensor::from_vec(
            hu.iter().map(|&v| hu_window(v as f32)).collect::<Vec<_>>(),
            [b, 1, d, h, w],
        )?;
        let tape = Tape::inference();
        let p = tape.constant(patchify(&c, &add_noise(&x, 0.03, kit.r)?)?);
        let want = tape.gather_rows(&p, mask.ids_keep())?;
        kit.push(
            "superpatch_input",
            format!("{d}×{h}×{w}, patch {:?}", c.patch_size),
            rel(&host(&got)?, want.value().cpu_slice::<f32>()?),
        );
    }
    Ok(())
}
