//! The CPU reference: generic over f32 and f64, loops parallel with rayon,
//! matrix products through `matrixmultiply` or, for large f32 products
//! with a row-major A, our own kernels (sgemm.rs). Kernels here work on slices;
//! the ops module owns shape rules and the tape.

pub mod attention;
pub mod attention_tiled;
pub mod batch_norm;
pub mod conv;
mod conv_implicit;
pub mod elementwise;
mod float;
pub mod fused;
pub mod gemm;
pub mod index;
pub mod layer_norm;
pub mod loss;
pub mod peak;
pub mod reduce;
mod sgemm;
pub mod softmax;
pub mod vecmath;

pub use float::CpuFloat;

/// Row blocks handed to one rayon task: big enough that scheduling costs
/// nothing next to the work, small enough to balance across cores.
pub(crate) fn rows_per_task(rows: usize, cols: usize) -> usize {
    const TARGET_ELEMS: usize = 16 * 1024;
    (TARGET_ELEMS / cols.max(1)).clamp(1, rows.max(1))
}

/// A new vector of `len` values made in parallel chunks of `chunk`: each
/// task zeroes its own chunk (while it is about to be in cache anyway) and
/// then `fill(chunk index, chunk)` writes it. No thread zeroes the whole
/// vector first, as `vec![0; len]` would on the caller's thread.
pub(crate) fn par_chunks_new<T: CpuFloat>(len: usize, chunk: usize, fill: impl Fn(usize, &mut [T]) + Sync) -> Vec<T> {
    use rayon::prelude::*;
    let chunk = chunk.max(1);
    let mut v: Vec<T> = Vec::with_capacity(len);
    let base = Chunks(v.as_mut_ptr());
    (0..len.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let n = chunk.min(len - c * chunk);
        // SAFETY: chunk c is elements c·chunk .. c·chunk + n of the
        // capacity, which no other task touches.
        fill(c, unsafe { base.zeroed(c * chunk, n) });
    });
    // SAFETY: every element was zeroed by its chunk's task above.
    unsafe { v.set_len(len) };
    v
}

/// Two new vectors of `len` values made as `par_chunks_new` makes one:
/// `fill(chunk index, chunk of the first, chunk of the second)`.
pub(crate) fn par_chunks_new_pair<T: CpuFloat>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [T], &mut [T]) + Sync,
) -> (Vec<T>, Vec<T>) {
    use rayon::prelude::*;
    let chunk = chunk.max(1);
    let (mut a, mut b): (Vec<T>, Vec<T>) = (Vec::with_capacity(len), Vec::with_capacity(len));
    let (pa, pb) = (Chunks(a.as_mut_ptr()), Chunks(b.as_mut_ptr()));
    (0..len.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let n = chunk.min(len - c * chunk);
        // SAFETY: as in `par_chunks_new`, for each of the two vectors.
        fill(c, unsafe { pa.zeroed(c * chunk, n) }, unsafe {
            pb.zeroed(c * chunk, n)
        });
    });
    // SAFETY: every element of both was zeroed by its chunk's task above.
    unsafe {
        a.set_len(len);
        b.set_len(len);
    }
    (a, b)
}

/// The start of a vector's capacity, shared by the tasks that fill it.
#[derive(Clone, Copy)]
struct Chunks<T>(*mut T);
// SAFETY: only used to hand disjoint chunks of one allocation to tasks.
unsafe impl<T> Send for Chunks<T> {}
unsafe impl<T> Sync for Chunks<T> {}

impl<T> Chunks<T> {
    /// Elements `at .. at + n`, zeroed (a valid f32 or f64 0.0) before a
    /// slice of them is made.
    ///
    /// # Safety
    /// They lie inside the allocation, and no other task touches them
    /// while the slice lives.
    unsafe fn zeroed<'a>(self, at: usize, n: usize) -> &'a mut [T] {
        let p = self.0.add(at);
        std::ptr::write_bytes(p, 0, n);
        std::slice::from_raw_parts_mut(p, n)
    }
}

/// A slice that parallel tasks write in disjoint, interleaved parts (the
/// rows of one item's channels, the planes of an output), where
/// `par_chunks_mut` cannot hand the parts out.
pub(crate) struct Disjoint<'a, T> {
    ptr: *mut T,
    len: usize,
    _slice: std::marker::PhantomData<&'a mut [T]>,
}
// SAFETY: tasks only write the parts `part` hands them, which the caller
// keeps disjoint.
unsafe impl<T: Send> Send for Disjoint<'_, T> {}
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub(crate) fn new(s: &'a mut [T]) -> Self {
        Disjoint {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _slice: std::marker::PhantomData,
        }
    }

    /// Elements `at .. at + len`.
    ///
    /// # Safety
    /// No other task reads or writes them while the result lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn part(&self, at: usize, len: usize) -> &mut [T] {
        assert!(at + len <= self.len, "Disjoint: part out of range");
        std::slice::from_raw_parts_mut(self.ptr.add(at), len)
    }
}

#[cfg(test)]
mod tests {
    /// Every element is written once, by its chunk, at lengths around the
    /// chunk size (and zero).
    #[test]
    fn par_chunks_new_fills_every_chunk() {
        for len in [0usize, 1, 6, 7, 8, 50] {
            let v: Vec<f32> = super::par_chunks_new(len, 7, |c, part| {
                for (i, x) in part.iter_mut().enumerate() {
                    *x += (c * 7 + i) as f32;
                }
            });
            assert_eq!(v, (0..len).map(|i| i as f32).collect::<Vec<_>>(), "len {len}");
        }
    }
}
