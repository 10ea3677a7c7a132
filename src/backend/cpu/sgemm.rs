//! The f32 product of our own: B packed once and shared by every task, A
//! read in place when it is row-major, and a register-blocked kernel for
//! AVX-512 (8 rows × 48 columns) and for AVX2+FMA (6 × 16).
//!
//! The model's forward products `x·Wᵀ` and input gradients `dY·W` have a
//! row-major A of thousands of token rows and a short k (E = 192 at
//! `small`, 768 at `paper`). matrixmultiply packs A in 64-row blocks and
//! B again for every task; here only B (the small weight) is packed, once,
//! and each kernel call broadcasts A's eight rows straight from the
//! activations. `bench gemm` sets the two side by side.
//!
//! Every element of C is summed in the same order whatever the split, the
//! thread count or the instruction set: over k in blocks of at most
//! `KC_MAX`, each block one FMA chain from p = 0 upwards, its sum added to
//! C as `α·sum + C` (the first block `α·sum + β·C`). So the AVX-512 and
//! AVX2 kernels give the same bits, and so does any thread count.
//! Without AVX2 the caller uses matrixmultiply instead.
//!
//! The same kernels have a gathering form for the convolution
//! (conv_implicit.rs): A a packed strip, and B's k-th row wherever a table
//! of offsets says, prefetched a few steps ahead into L1 and a few tiles
//! ahead into L2, since scattered rows are no pattern the hardware
//! prefetcher follows. AVX-512 adds a 12 × 32 shape there, for outputs of
//! 12 channels.

use rayon::prelude::*;

use super::gemm::MatRef;

/// The longest k block summed in registers before C is updated.
const KC_MAX: usize = 1024;
/// The most values of packed B swept per strip of A (1 MiB, kept in L2).
const NC_VALUES: usize = 1 << 18;

/// One register-blocked kernel: `tile ← A-strip · B` over `kc` k steps,
/// `mr × nr`.
#[derive(Clone, Copy)]
pub(super) struct Kernel {
    pub(super) mr: usize,
    pub(super) nr: usize,
    run: unsafe fn(&Operands, &Out),
}

impl Kernel {
    /// One tile.
    ///
    /// # Safety
    /// The CPU has the kernel's instruction set; `op` reaches `kc` k steps
    /// of `mr` rows of A and `nr` values of B; `out` covers `mr` rows of
    /// `nr` (and its `Row` `nr` values).
    pub(super) unsafe fn call(&self, op: &Operands, out: &Out) {
        (self.run)(op, out)
    }
}

/// How many k steps ahead a gathering kernel prefetches B's rows.
const GATHER_AHEAD: usize = 8;
/// How far along B's row (in values) a gathering kernel prefetches into L2.
const GATHER_AHEAD_L2: usize = 256;

/// The most rows of A any kernel takes.
pub(super) const MR_MAX: usize = 12;

/// What one kernel call reads over `kc` k steps. Row r of the A strip is
/// at `a + rows[r]` and moves `ka` per k step. B's k-th row of `nr`
/// values is at `b + k·nr` (a packed panel); a gathering kernel (see
/// [`gather_kernel_for`]) instead reads A as a packed strip (`rows[r] = r`,
/// `ka = mr`) and B's k-th row at `b + b_rows[k]`.
#[derive(Clone, Copy)]
pub(super) struct Operands {
    pub(super) kc: usize,
    pub(super) a: *const f32,
    pub(super) rows: [isize; MR_MAX],
    pub(super) ka: isize,
    pub(super) b: *const f32,
    pub(super) b_rows: *const isize,
}

/// Where a kernel writes its `mr × nr` tile of sums: `C ← α·sum + start`,
/// row `r` at `c + r·ldc`.
#[derive(Clone, Copy)]
pub(super) struct Out {
    pub(super) c: *mut f32,
    pub(super) ldc: usize,
    pub(super) alpha: f32,
    pub(super) start: Start,
}

/// What the tile's part of C starts as.
#[derive(Clone, Copy)]
pub(super) enum Start {
    /// Nothing (C is written without being read).
    Zero,
    /// `β·C`.
    Scaled(f32),
    /// The same `nr` values for every row (a bias, from this pointer).
    Row(*const f32),
    /// C itself (the later k blocks).
    Add,
}

#[cfg(target_arch = "x86_64")]
const AVX512: Kernel = Kernel {
    mr: 8,
    nr: 48,
    run: kernel_avx512::<8, 3, false>,
};
#[cfg(target_arch = "x86_64")]
const AVX2: Kernel = Kernel {
    mr: 6,
    nr: 16,
    run: kernel_avx2::<false>,
};

/// The gathering kernels (A packed, B's rows through a table).
#[cfg(target_arch = "x86_64")]
const AVX512_GATHER: Kernel = Kernel {
    mr: 8,
    nr: 48,
    run: kernel_avx512::<8, 3, true>,
};
#[cfg(target_arch = "x86_64")]
const AVX512_GATHER_12: Kernel = Kernel {
    mr: 12,
    nr: 32,
    run: kernel_avx512::<12, 2, true>,
};
#[cfg(target_arch = "x86_64")]
const AVX2_GATHER: Kernel = Kernel {
    mr: 6,
    nr: 16,
    run: kernel_avx2::<true>,
};

/// This CPU's product kernel (capped by `NEMESIS_CPU_ISA`), if it has one.
fn kernel_of() -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::Isa;
        match crate::simd::isa() {
            Isa::Avx512 => Some(AVX512),
            Isa::Avx2Fma => Some(AVX2),
            Isa::Baseline => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The gathering kernel for an A of `m` rows on `isa`, if there is one:
/// on AVX-512 the 8 × 48 or the 12 × 32, whichever leaves fewer rows of
/// the last strip empty.
pub(super) fn gather_kernel_for(isa: crate::simd::Isa, m: usize) -> Option<Kernel> {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::simd::Isa;
        match isa {
            Isa::Avx512 if m.div_ceil(12) * 12 < m.div_ceil(8) * 8 => Some(AVX512_GATHER_12),
            Isa::Avx512 => Some(AVX512_GATHER),
            Isa::Avx2Fma => Some(AVX2_GATHER),
            Isa::Baseline => None,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, m);
        None
    }
}

/// Whether this CPU (capped by `NEMESIS_CPU_ISA`) has a kernel here.
pub(super) fn has_kernel() -> bool {
    kernel_of().is_some()
}

/// The largest tile any kernel writes.
const TILE_MAX: usize = 8 * 48;

/// `C ← α·A·B + β·C` (or `C ← row + α·A·B` with `row`) into the dense
/// row-major `m × n` matrix at `c`, in parallel. Returns false, having done
/// nothing, when this CPU has no kernel here.
///
/// # Safety
/// `c` must be valid for reads and writes of `m·n` elements that nobody
/// else touches during the call (with β = 0 or `row` they are written
/// without being read); `row`, when given, has `n` values; the views must
/// lie inside their slices.
pub(super) unsafe fn product(
    alpha: f32,
    a: MatRef<f32>,
    b: MatRef<f32>,
    beta: f32,
    row: Option<&[f32]>,
    c: *mut f32,
) -> bool {
    let Some(kern) = kernel_of() else {
        return false;
    };
    // SAFETY: as this function's.
    unsafe { product_with(kern, alpha, a, b, beta, row, c) };
    true
}

/// `product` with a given kernel.
///
/// # Safety
/// As `product`, and the CPU has the kernel's instruction set.
unsafe fn product_with(
    kern: Kernel,
    alpha: f32,
    a: MatRef<f32>,
    b: MatRef<f32>,
    beta: f32,
    row: Option<&[f32]>,
    c: *mut f32,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "sgemm: inner dimensions differ");
    assert!(
        row.is_none_or(|r| r.len() == n),
        "sgemm: the initial row must have n values"
    );
    if m == 0 || n == 0 {
        return;
    }
    let blocks = k_blocks(k);
    let packed = pack_b(&b, kern.nr);
    let strips = m.div_ceil(kern.mr);
    // A few tasks per thread, so a thread slowed by the machine hands work
    // to the other.
    let tasks = (rayon::current_num_threads() * 4).min(strips);
    let per_task = strips.div_ceil(tasks);
    let c = Shared(c);
    (0..strips.div_ceil(per_task)).into_par_iter().for_each(|t| {
        let s0 = t * per_task;
        let s1 = (s0 + per_task).min(strips);
        // SAFETY: the task writes rows s0·mr .. s1·mr of C (clipped to m),
        // which no other task touches.
        unsafe { run_strips(kern, alpha, &a, &packed, &blocks, beta, row, c, n, s0..s1) };
    });
}

/// The k blocks `(p0, kc)`: as few as `KC_MAX` allows, of equal length
/// (the last shorter); one empty block when k = 0, so C still gets β·C.
pub(super) fn k_blocks(k: usize) -> Vec<(usize, usize)> {
    if k == 0 {
        return vec![(0, 0)];
    }
    let len = k.div_ceil(k.div_ceil(KC_MAX));
    (0..k).step_by(len).map(|p0| (p0, len.min(k - p0))).collect()
}

/// B (`k × n`, any strides) packed panel by panel, in parallel: `n.div_ceil(nr)`
/// panels of `k × nr` values row by row (columns past n zero), so a k block
/// of a panel is a run of its rows, as `product` reads it.
fn pack_b(b: &MatRef<f32>, nr: usize) -> AlignedBuf {
    let k = b.rows;
    let mut data = AlignedBuf::new(b.cols.div_ceil(nr) * k * nr);
    if k > 0 {
        data.as_mut_slice()
            .par_chunks_mut(k * nr)
            .enumerate()
            .for_each(|(j, dst)| pack_panel(b, 0, k, j * nr, nr, dst));
    }
    data
}

/// Columns `j0 .. j0 + nr` of B's rows `p0 .. p0 + kc` into `dst` as
/// `kc × nr`, zeros past the last column.
fn pack_panel(b: &MatRef<f32>, p0: usize, kc: usize, j0: usize, nr: usize, dst: &mut [f32]) {
    let cols = nr.min(b.cols - j0);
    if cols < nr {
        dst.fill(0.0);
    }
    if b.cs == 1 {
        for p in 0..kc {
            let at = (p0 + p) * b.rs + j0;
            dst[p * nr..p * nr + cols].copy_from_slice(&b.data[at..at + cols]);
        }
    } else {
        // Column by column, reading each (a row of the stored transpose)
        // with its own stride.
        for jj in 0..cols {
            let base = (j0 + jj) * b.cs + p0 * b.rs;
            for p in 0..kc {
                dst[p * nr + jj] = b.data[base + p * b.rs];
            }
        }
    }
}

/// Rows `i0 .. i0 + mr` of A's columns `p0 .. p0 + kc` into `dst` as
/// `kc × mr`, zeros past the last row: a panel of Aᵀ.
pub(super) fn pack_strip(a: &MatRef<f32>, i0: usize, mr: usize, p0: usize, kc: usize, dst: &mut [f32]) {
    pack_panel(&a.t(), p0, kc, i0, mr, &mut dst[..kc * mr]);
}

/// Strips `strips` of C (mr rows each), every k block and column panel.
///
/// # Safety
/// As `product`, for the strips' rows of C.
#[allow(clippy::too_many_arguments)]
unsafe fn run_strips(
    kern: Kernel,
    alpha: f32,
    a: &MatRef<f32>,
    packed: &AlignedBuf,
    blocks: &[(usize, usize)],
    beta: f32,
    row: Option<&[f32]>,
    c: Shared,
    n: usize,
    strips: std::ops::Range<usize>,
) {
    let (mr, nr) = (kern.mr, kern.nr);
    let (m, k) = (a.rows, a.cols);
    let panels = n.div_ceil(nr);
    let mut strip = vec![0f32; mr * blocks.iter().map(|b| b.1).max().unwrap_or(0)];
    let mut tile = Aligned([0f32; TILE_MAX]);
    for (bi, &(p0, kc)) in blocks.iter().enumerate() {
        let first = bi == 0;
        let nc_panels = (NC_VALUES / (kc * nr).max(1)).max(1);
        for pj0 in (0..panels).step_by(nc_panels) {
            let pj1 = (pj0 + nc_panels).min(panels);
            for s in strips.clone() {
                let i0 = s * mr;
                let rows = mr.min(m - i0);
                let strip_a = strip_of(a, i0, rows, mr, p0, kc, &mut strip);
                for pj in pj0..pj1 {
                    let j0 = pj * nr;
                    let op = Operands {
                        b: packed.as_ptr().add((pj * k + p0) * nr),
                        ..strip_a
                    };
                    let place = Place {
                        c: c.0,
                        n,
                        i0,
                        rows,
                        j0,
                        cols: nr.min(n - j0),
                    };
                    let begin = Begin {
                        alpha,
                        beta,
                        first,
                        row,
                    };
                    write_tile(kern, &op, place, begin, &mut tile);
                }
            }
        }
    }
}

/// A strip of A as the kernel reads it, over k steps `p0 .. p0 + kc` (B
/// still to be set): a full strip of a row-major A in place; a strip of
/// any other A, or the last, short one (zero rows below it), packed into
/// `buf`.
///
/// # Safety
/// `a`'s view lies inside its slice; the pointer lives as long as `a` and `buf`.
unsafe fn strip_of(
    a: &MatRef<f32>,
    i0: usize,
    rows: usize,
    mr: usize,
    p0: usize,
    kc: usize,
    buf: &mut [f32],
) -> Operands {
    let (ptr, ra, ka) = if rows == mr && a.cs == 1 {
        (a.data.as_ptr().add(i0 * a.rs + p0), a.rs as isize, 1)
    } else {
        pack_strip(a, i0, mr, p0, kc, buf);
        (buf.as_ptr(), 1, mr as isize)
    };
    Operands {
        kc,
        a: ptr,
        rows: std::array::from_fn(|r| r as isize * ra),
        ka,
        b: std::ptr::null(),
        b_rows: std::ptr::null(),
    }
}

/// Where a tile goes in the dense row-major C (`n` columns at `c`).
#[derive(Clone, Copy)]
struct Place {
    c: *mut f32,
    n: usize,
    i0: usize,
    rows: usize,
    j0: usize,
    cols: usize,
}

/// How a tile's sums enter C: `α·sum + β·C` (or `+ row`) in the first k
/// block, `α·sum + C` in the later ones.
#[derive(Clone, Copy)]
struct Begin<'a> {
    alpha: f32,
    beta: f32,
    first: bool,
    row: Option<&'a [f32]>,
}

/// One tile: the kernel over `op` (a strip and a panel), into C.
///
/// # Safety
/// As [`Kernel::call`] for `op`, and the place lies inside C.
unsafe fn write_tile(kern: Kernel, op: &Operands, at: Place, how: Begin, tile: &mut Aligned<TILE_MAX>) {
    let (mr, nr) = (kern.mr, kern.nr);
    if at.rows == mr && at.cols == nr {
        // A whole tile: the kernel writes C itself.
        let start = match (how.first, how.row) {
            (true, Some(row)) => Start::Row(row.as_ptr().add(at.j0)),
            (true, None) if how.beta == 0.0 => Start::Zero,
            (true, None) => Start::Scaled(how.beta),
            (false, _) => Start::Add,
        };
        let out = Out {
            c: at.c.add(at.i0 * at.n + at.j0),
            ldc: at.n,
            alpha: how.alpha,
            start,
        };
        kern.call(op, &out);
        return;
    }
    // An edge tile: the sums into `tile`, then its valid part into C.
    let out = Out {
        c: tile.0.as_mut_ptr(),
        ldc: nr,
        alpha: 1.0,
        start: Start::Zero,
    };
    kern.call(op, &out);
    for r in 0..at.rows {
        let dst = std::slice::from_raw_parts_mut(at.c.add((at.i0 + r) * at.n + at.j0), at.cols);
        let t = &tile.0[r * nr..r * nr + at.cols];
        update(
            dst,
            t,
            how.alpha,
            how.beta,
            how.first,
            how.row.map(|v| &v[at.j0..at.j0 + at.cols]),
        );
    }
}

/// One row of an edge tile into C: the same operations, element by
/// element, as a kernel's own write of a whole tile (`finish!`).
#[inline]
fn update(out: &mut [f32], t: &[f32], alpha: f32, beta: f32, first: bool, row: Option<&[f32]>) {
    match (first, row) {
        (true, Some(row)) => {
            for ((o, &t), &r) in out.iter_mut().zip(t).zip(row) {
                *o = alpha * t + r;
            }
        }
        (true, None) if beta == 0.0 => {
            for (o, &t) in out.iter_mut().zip(t) {
                *o = alpha * t;
            }
        }
        (true, None) => {
            for (o, &t) in out.iter_mut().zip(t) {
                *o = alpha * t + beta * *o;
            }
        }
        (false, _) => {
            for (o, &t) in out.iter_mut().zip(t) {
                *o += alpha * t;
            }
        }
    }
}

/// The end of a kernel: each accumulator `acc[r][v]` (lanes `v·W ..` of
/// row r) into `out` as `α·acc + start`, multiplies and adds kept apart
/// (no FMA), so the result is the scalar `update`'s.
macro_rules! finish {
    ($acc:expr, $out:expr, $w:expr, $set1:ident, $load:ident, $store:ident, $mul:ident, $add:ident) => {{
        let out: &Out = $out;
        let alpha = $set1(out.alpha);
        match out.start {
            Start::Zero => {
                for (r, acc) in $acc.iter().enumerate() {
                    for (v, &x) in acc.iter().enumerate() {
                        $store(out.c.add(r * out.ldc + v * $w), $mul(alpha, x));
                    }
                }
            }
            Start::Scaled(beta) => {
                let beta = $set1(beta);
                for (r, acc) in $acc.iter().enumerate() {
                    for (v, &x) in acc.iter().enumerate() {
                        let p = out.c.add(r * out.ldc + v * $w);
                        $store(p, $add($mul(alpha, x), $mul(beta, $load(p))));
                    }
                }
            }
            Start::Row(row) => {
                for (r, acc) in $acc.iter().enumerate() {
                    for (v, &x) in acc.iter().enumerate() {
                        let p = out.c.add(r * out.ldc + v * $w);
                        $store(p, $add($mul(alpha, x), $load(row.add(v * $w))));
                    }
                }
            }
            Start::Add => {
                for (r, acc) in $acc.iter().enumerate() {
                    for (v, &x) in acc.iter().enumerate() {
                        let p = out.c.add(r * out.ldc + v * $w);
                        $store(p, $add($load(p), $mul(alpha, x)));
                    }
                }
            }
        }
    }};
}

/// `out ← α·Σ_p A[r][p] · B[p][j] + start`, MR rows × 16·V columns, A and
/// B read as [`Operands`] says (B gathered when `GATHER`). The wide kernel
/// is 8 × 48 (24 accumulators); the gathering ones are 8 × 48 and 12 × 32.
///
/// # Safety
/// AVX-512F present; as [`Kernel::call`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512<const MR: usize, const V: usize, const GATHER: bool>(op: &Operands, out: &Out) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; MR];
    let mut rows = [0isize; MR];
    for (r, x) in rows.iter_mut().enumerate() {
        // A gathering kernel's strip is packed: its rows are adjacent.
        *x = if GATHER { r as isize } else { op.rows[r] };
    }
    let ka = if GATHER { MR as isize } else { op.ka };
    let (mut a, mut b) = (op.a, op.b);
    for p in 0..op.kc {
        if GATHER {
            b = op.b.offset(*op.b_rows.add(p));
            // Scattered rows are no pattern the hardware prefetcher sees:
            // fetch the row `GATHER_AHEAD` steps on, every line of it.
            if p + GATHER_AHEAD < op.kc {
                let next = op.b.offset(*op.b_rows.add(p + GATHER_AHEAD));
                for v in 0..V {
                    _mm_prefetch::<_MM_HINT_T0>(next.add(16 * v) as *const i8);
                }
                _mm_prefetch::<_MM_HINT_T0>(next.add(16 * V - 1) as *const i8);
            }
            // And into L2 the same row `GATHER_AHEAD_L2` values on, where
            // a later tile will read it: the rows come from memory, more
            // of them than the hardware follows.
            for v in 0..V {
                _mm_prefetch::<_MM_HINT_T1>(b.add(GATHER_AHEAD_L2 + 16 * v) as *const i8);
            }
        }
        // A loop, not `array::from_fn`: a closure would lose the target feature.
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(b.add(16 * v));
        }
        for (acc, &o) in acc.iter_mut().zip(&rows) {
            let av = _mm512_set1_ps(*a.offset(o));
            for (acc, &bv) in acc.iter_mut().zip(&bv) {
                *acc = _mm512_fmadd_ps(av, bv, *acc);
            }
        }
        a = a.offset(ka);
        if !GATHER {
            b = b.add(16 * V);
        }
    }
    finish!(
        acc,
        out,
        16,
        _mm512_set1_ps,
        _mm512_loadu_ps,
        _mm512_storeu_ps,
        _mm512_mul_ps,
        _mm512_add_ps
    );
}

/// `out ← α·Σ_p A[r][p] · B[p][j] + start`, 6 rows × 16 columns, read as
/// [`Operands`] says (B gathered when `GATHER`).
///
/// # Safety
/// AVX2 and FMA present; as [`Kernel::call`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const GATHER: bool>(op: &Operands, out: &Out) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; 6];
    let mut rows = [0isize; 6];
    for (r, x) in rows.iter_mut().enumerate() {
        *x = if GATHER { r as isize } else { op.rows[r] };
    }
    let ka = if GATHER { 6 } else { op.ka };
    let (mut a, mut b) = (op.a, op.b);
    for p in 0..op.kc {
        if GATHER {
            b = op.b.offset(*op.b_rows.add(p));
        }
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (acc, &o) in acc.iter_mut().zip(&rows) {
            let av = _mm256_broadcast_ss(&*a.offset(o));
            acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
        }
        a = a.offset(ka);
        if !GATHER {
            b = b.add(16);
        }
    }
    finish!(
        acc,
        out,
        8,
        _mm256_set1_ps,
        _mm256_loadu_ps,
        _mm256_storeu_ps,
        _mm256_mul_ps,
        _mm256_add_ps
    );
}

#[repr(align(64))]
struct Aligned<const N: usize>([f32; N]);

/// An f32 buffer whose first element sits on a 64-byte boundary, for a
/// packed B. Its values start as whatever an earlier product on this
/// thread left there (zeros when new): `pack_b` writes every one before
/// any is read. The storage goes back to the thread's spare when dropped,
/// so a step's hundreds of products do not each allocate, zero and fault
/// in a new buffer.
pub(super) struct AlignedBuf {
    raw: Vec<f32>,
    offset: usize,
    len: usize,
}

thread_local! {
    /// The largest packed-B storage this thread has freed, kept for the next.
    static SPARE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The most values a spare keeps (32 MiB); larger buffers are freed.
const SPARE_MAX: usize = 1 << 23;

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let mut raw = SPARE.try_with(|s| s.take()).unwrap_or_default();
        raw.resize(len + 16, 0.0);
        let offset = raw.as_ptr().align_offset(64).min(16);
        AlignedBuf { raw, offset, len }
    }
    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.raw[self.offset..self.offset + self.len]
    }
    fn as_ptr(&self) -> *const f32 {
        self.raw[self.offset..].as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let raw = std::mem::take(&mut self.raw);
        if raw.capacity() <= SPARE_MAX {
            // A thread being torn down has no spare to keep it in.
            let _ = SPARE.try_with(|s| {
                let old = s.take();
                s.set(if raw.capacity() >= old.capacity() { raw } else { old });
            });
        }
    }
}

/// C's pointer, shared by the strip tasks (each writes its own rows).
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only used to hand disjoint row ranges of C to tasks.
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The kernels this CPU can run, whatever the cap.
    fn kernels() -> Vec<(&'static str, Kernel)> {
        use std::arch::is_x86_feature_detected as has;
        let mut v = Vec::new();
        if has!("avx512f") {
            v.push(("AVX-512", AVX512));
        }
        if has!("avx2") && has!("fma") {
            v.push(("AVX2", AVX2));
        }
        if v.is_empty() {
            eprintln!("sgemm tests: this CPU has neither AVX2+FMA nor AVX-512; nothing to check");
        }
        v
    }

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7 + seed * 13) % 23) as f32 - 11.0) / 8.0)
            .collect()
    }

    /// `kern`'s product into a C that starts as `c0` (ignored with `row`).
    #[allow(clippy::too_many_arguments)]
    fn run(
        kern: Kernel,
        alpha: f32,
        a: MatRef<f32>,
        b: MatRef<f32>,
        beta: f32,
        row: Option<&[f32]>,
        c0: &[f32],
    ) -> Vec<f32> {
        let mut c = c0.to_vec();
        assert_eq!(c.len(), a.rows * b.cols);
        // SAFETY: `c` holds the m × n result and the views lie in their slices.
        unsafe { product_with(kern, alpha, a, b, beta, row, c.as_mut_ptr()) };
        c
    }

    /// Ragged shapes (m, n not multiples of the tile, k over `KC_MAX` and
    /// k = 0), every operand layout, β = 0, β ≠ 0 and a bias row, against
    /// a product summed in f64, each time with this thread's spare packing
    /// buffer full of NaNs.
    #[test]
    fn matches_a_plain_product_at_ragged_shapes() {
        for (name, kern) in kernels() {
            for (m, k, n) in [
                (1usize, 1usize, 1usize),
                (7, 3, 5),
                (9, 1030, 50),
                (17, 64, 97),
                (40, 2, 200),
                (8, 0, 48),
            ] {
                let av = values(m * k + 3 * m, 1);
                let bv = values(k * n, 2);
                let row = values(n, 3);
                let c0 = values(m * n, 4);
                // A row-major, transposed (stored k × m) and with padded rows.
                let a_views = [
                    ("A", MatRef::rm(&av, m, k)),
                    ("Aᵀ", MatRef::rm(&av, k, m).t()),
                    ("A padded", MatRef::strided(&av, 0, m, k, k + 3)),
                ];
                let b_views = [("B", MatRef::rm(&bv, k, n)), ("Bᵀ", MatRef::rm(&bv, n, k).t())];
                for &(an, a) in &a_views {
                    for &(bn, b) in &b_views {
                        for (init, beta, with_row) in
                            [("β 0", 0.0f32, false), ("β 0.5", 0.5, false), ("row", 1.0, true)]
                        {
                            let r = with_row.then_some(&row[..]);
                            // The packed B reuses this thread's spare: NaNs
                            // there would show any value not written first.
                            SPARE.with(|s| s.set(vec![f32::NAN; 1 << 16]));
                            let got = run(kern, 1.5, a, b, beta, r, &c0);
                            for i in 0..m {
                                for j in 0..n {
                                    let mut sum = 0f64;
                                    let mut size = 0f64;
                                    for p in 0..k {
                                        let x = a.data[i * a.rs + p * a.cs] as f64 * b.data[p * b.rs + j * b.cs] as f64;
                                        sum += x;
                                        size += x.abs();
                                    }
                                    let start = if with_row {
                                        row[j] as f64
                                    } else {
                                        beta as f64 * c0[i * n + j] as f64
                                    };
                                    let want = 1.5 * sum + start;
                                    let err = (got[i * n + j] as f64 - want).abs();
                                    assert!(
                                        err <= 1e-6 * (1.0 + 1.5 * size + start.abs()),
                                        "{name} {m}×{k}×{n} {an} {bn} {init} ({i}, {j}): {} against {want}",
                                        got[i * n + j]
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The summation order is fixed: the AVX-512 and AVX2 kernels, and
    /// one or three threads, give the same bits (k over `KC_MAX`, so C is
    /// updated per block too; m and n not multiples of either tile).
    #[test]
    fn same_bits_for_every_kernel_and_thread_count() {
        let (m, k, n) = (100usize, 1100usize, 70usize);
        let av = values(m * k, 5);
        let bv = values(n * k, 6);
        let (a, b) = (MatRef::rm(&av, m, k), MatRef::rm(&bv, n, k).t());
        let c0 = values(m * n, 7);
        let row = values(n, 8);
        // β = 0, β ≠ 0 and a bias row: a tile the kernel writes whole under
        // one kernel is an edge tile (written through `update`) under the other.
        for (beta, r) in [(0.0f32, None), (0.25, None), (1.0, Some(&row[..]))] {
            let mut results = Vec::new();
            for (name, kern) in kernels() {
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    let c = pool.install(|| run(kern, 0.75, a, b, beta, r, &c0));
                    results.push((format!("{name}, {threads} threads"), c));
                }
            }
            for (name, c) in results.iter().skip(1) {
                let same = c.iter().zip(&results[0].1).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "β {beta}, row {}: {name} differs from {}",
                    r.is_some(),
                    results[0].0
                );
            }
        }
    }

    #[test]
    fn k_blocks_cover_k_in_order() {
        assert_eq!(k_blocks(0), vec![(0, 0)]);
        assert_eq!(k_blocks(192), vec![(0, 192)]);
        assert_eq!(
            k_blocks(KC_MAX + 1),
            vec![(0, KC_MAX / 2 + 1), (KC_MAX / 2 + 1, KC_MAX / 2)]
        );
        assert_eq!(k_blocks(3 * KC_MAX).len(), 3);
    }
}
