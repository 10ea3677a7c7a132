//! The CPU reference: generic over f32 and f64, loops parallel with rayon,
//! matrix products through `matrixmultiply`. Kernels here work on slices;
//! the ops module owns shape rules and the tape.

pub mod attention;
pub mod attention_tiled;
pub mod conv;
pub mod elementwise;
mod float;
pub mod fused;
pub mod gemm;
pub mod index;
pub mod layer_norm;
pub mod loss;
pub mod peak;
pub mod reduce;
pub mod softmax;
pub mod vecmath;

pub use float::CpuFloat;

/// Row blocks handed to one rayon task: big enough that scheduling costs
/// nothing next to the work, small enough to balance across cores.
pub(crate) fn rows_per_task(rows: usize, cols: usize) -> usize {
    const TARGET_ELEMS: usize = 16 * 1024;
    (TARGET_ELEMS / cols.max(1)).clamp(1, rows.max(1))
}
