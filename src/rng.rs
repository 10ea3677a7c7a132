//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2,
//! 3", SC'11), the counter-based generator every random draw of the engine
//! uses. A draw is a pure function of (seed, stream, index), so the CPU and
//! the GPU kernels produce the same noise, masks and dropout, in any order,
//! and a resumed run continues the same sequence.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

fn mulhilo(a: u32, b: u32) -> (u32, u32) {
    let p = a as u64 * b as u64;
    ((p >> 32) as u32, p as u32)
}

fn round(ctr: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (hi0, lo0) = mulhilo(M0, ctr[0]);
    let (hi1, lo1) = mulhilo(M1, ctr[2]);
    [hi1 ^ ctr[1] ^ key[0], lo1, hi0 ^ ctr[3] ^ key[1], lo0]
}

/// One Philox4x32 block with ten rounds: 128 random bits per counter.
pub fn philox4x32_10(mut ctr: [u32; 4], mut key: [u32; 2]) -> [u32; 4] {
    for r in 0..10 {
        if r > 0 {
            key[0] = key[0].wrapping_add(W0);
            key[1] = key[1].wrapping_add(W1);
        }
        ctr = round(ctr, key);
    }
    ctr
}

/// What a random stream is for; part of its stream id, so draws for different
/// purposes never share counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    Init = 1,
    Noise = 2,
    Mask = 3,
    Dropout = 4,
    Crop = 5,
    Shuffle = 6,
}

/// The stream id of `(purpose, step, site)`: purpose in the top 8 bits, the
/// training step in the next 40, a site (layer, call) in the low 16.
pub fn stream_id(purpose: Purpose, step: u64, site: u64) -> u64 {
    ((purpose as u64) << 56) | ((step & ((1 << 40) - 1)) << 16) | (site & 0xFFFF)
}

/// 2⁻²⁴: the spacing of the uniform grid, exact in f32.
const UNIT: f32 = 1.0 / 16_777_216.0;

/// A numbered sequence of random values under one seed. The seed is the key;
/// the counter is `[block_lo, block_hi, stream_lo, stream_hi]`, so streams
/// (noise, masks, dropout of each layer, each step) never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RngStream {
    key: [u32; 2],
    stream: u64,
}

impl RngStream {
    pub fn new(seed: u64, stream: u64) -> Self {
        RngStream {
            key: [seed as u32, (seed >> 32) as u32],
            stream,
        }
    }

    pub fn seed(&self) -> u64 {
        self.key[0] as u64 | (self.key[1] as u64) << 32
    }

    pub fn stream(&self) -> u64 {
        self.stream
    }

    /// The block of four words that holds values `4·block … 4·block + 3`.
    #[inline]
    pub fn block(&self, block: u64) -> [u32; 4] {
        let ctr = [
            block as u32,
            (block >> 32) as u32,
            self.stream as u32,
            (self.stream >> 32) as u32,
        ];
        philox4x32_10(ctr, self.key)
    }

    /// The words of values `start .. start + out.len()`, word `i` the bits
    /// of value `start + i` (what `bits` gives, many at a time: whole
    /// blocks go through the vectorised [`philox_words`]).
    pub fn fill_bits(&self, start: u64, out: &mut [u32]) {
        let lead = (((4 - start % 4) % 4) as usize).min(out.len());
        let (head, rest) = out.split_at_mut(lead);
        if !head.is_empty() {
            let w = self.block(start / 4);
            let first = (start % 4) as usize;
            head.copy_from_slice(&w[first..first + head.len()]);
        }
        let first_block = (start + lead as u64) / 4;
        let whole = rest.len() / 4 * 4;
        let (body, tail) = rest.split_at_mut(whole);
        philox_words(self.key, self.stream, first_block, body);
        if !tail.is_empty() {
            let w = self.block(first_block + (whole / 4) as u64);
            tail.copy_from_slice(&w[..tail.len()]);
        }
    }

    pub fn bits(&self, index: u64) -> u32 {
        self.block(index / 4)[(index % 4) as usize]
    }

    /// Uniform on `[0, 1)` with 24 random bits (every value exact in f32).
    pub fn uniform(&self, index: u64) -> f32 {
        (self.bits(index) >> 8) as f32 * UNIT
    }

    /// Standard normal by Box–Muller. Values `4b … 4b+3` come from block `b`:
    /// words (0, 1) give values 0 and 1 (cosine and sine branch), words (2, 3)
    /// give values 2 and 3.
    pub fn normal(&self, index: u64) -> f32 {
        let w = self.block(index / 4);
        let lane = (index % 4) as usize;
        let pair = lane & !1;
        box_muller(w[pair], w[pair + 1], lane & 1 == 1)
    }

    /// Fills `out` with uniforms for indices `start ..` (one Philox block per
    /// four values).
    pub fn fill_uniform(&self, start: u64, out: &mut [f32]) {
        self.fill_words(start, out, |w| w.map(|x| (x >> 8) as f32 * UNIT));
    }

    /// Fills `out` with normals for indices `start ..`.
    /// Each pair of values shares its radius and angle, computed once
    /// (the values are those of `normal`, bit for bit).
    pub fn fill_normal(&self, start: u64, out: &mut [f32]) {
        self.fill_words(start, out, |w| {
            let (c0, s0) = box_muller_pair(w[0], w[1]);
            let (c1, s1) = box_muller_pair(w[2], w[3]);
            [c0, s0, c1, s1]
        });
    }

    /// Value `i` of `out` depends only on index `start + i`, so chunks fill
    /// in parallel with exactly the values of a sequential fill.
    fn fill_words(&self, start: u64, out: &mut [f32], f: impl Fn(&[u32; 4]) -> [f32; 4] + Sync) {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 15;
        if out.len() <= CHUNK {
            return self.fill_words_seq(start, out, &f);
        }
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| self.fill_words_seq(start + (c * CHUNK) as u64, chunk, &f));
    }

    /// One Philox block per four values: the values before the first block
    /// boundary, then whole blocks (the last one possibly cut short), their
    /// words made `GROUP` blocks at a time by [`philox_words`].
    #[inline]
    fn fill_words_seq(&self, start: u64, out: &mut [f32], f: &impl Fn(&[u32; 4]) -> [f32; 4]) {
        const GROUP: usize = 4 * LANES;
        let lead = (((4 - start % 4) % 4) as usize).min(out.len());
        let (head, rest) = out.split_at_mut(lead);
        if !head.is_empty() {
            let vals = f(&self.block(start / 4));
            let first = (start % 4) as usize;
            head.copy_from_slice(&vals[first..first + head.len()]);
        }
        let first_block = (start + lead as u64) / 4;
        let mut words = [0u32; 4 * GROUP];
        for (g, vals) in rest.chunks_mut(4 * GROUP).enumerate() {
            let blocks = vals.len().div_ceil(4);
            philox_words(
                self.key,
                self.stream,
                first_block + (g * GROUP) as u64,
                &mut words[..4 * blocks],
            );
            for (quad, w) in vals.chunks_mut(4).zip(words.chunks_exact(4)) {
                let v = f(&[w[0], w[1], w[2], w[3]]);
                quad.copy_from_slice(&v[..quad.len()]);
            }
        }
    }
}

/// Philox blocks computed side by side, two per 64-bit vector lane.
const LANES: usize = 64;
const PAIRS: usize = LANES / 2;
const LOW: u64 = 0xFFFF_FFFF;

/// Blocks `first … first + LANES − 1` of a stream: the arithmetic of
/// [`philox4x32_10`] with each counter word of blocks `2j` and `2j + 1`
/// packed into one u64 (low and high half). The 32 × 32 → 64-bit products of
/// both halves are then two `vpmuludq` on whole lanes (the high half shifted
/// down first) and their halves are put back with shifts and masks, all
/// lane-local: no shuffles across lanes, which the one-block-per-lane form
/// spent most of its time on. Returns the four packed words of each pair.
#[inline(always)]
fn philox_pairs(key: [u32; 2], stream: u64, first: u64) -> [[u64; PAIRS]; 4] {
    let (mut c0, mut c1) = ([0u64; PAIRS], [0u64; PAIRS]);
    for j in 0..PAIRS {
        let (a, b) = (first.wrapping_add(2 * j as u64), first.wrapping_add(2 * j as u64 + 1));
        c0[j] = (a & LOW) | (b << 32);
        c1[j] = (a >> 32) | (b & !LOW);
    }
    let both = |w: u32| w as u64 | (w as u64) << 32;
    let mut c2 = [both(stream as u32); PAIRS];
    let mut c3 = [both((stream >> 32) as u32); PAIRS];
    let mut k = key;
    for r in 0..10 {
        if r > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let (k0, k1) = (both(k[0]), both(k[1]));
        for j in 0..PAIRS {
            // M·c for the low block (p) and the high block (q) of the pair.
            let (p0, q0) = (mul_wide(c0[j] as u32, M0), mul_wide((c0[j] >> 32) as u32, M0));
            let (p1, q1) = (mul_wide(c2[j] as u32, M1), mul_wide((c2[j] >> 32) as u32, M1));
            let (hi0, lo0) = ((p0 >> 32) | (q0 & !LOW), (p0 & LOW) | (q0 << 32));
            let (hi1, lo1) = ((p1 >> 32) | (q1 & !LOW), (p1 & LOW) | (q1 << 32));
            c0[j] = hi1 ^ c1[j] ^ k0;
            c1[j] = lo1;
            c2[j] = hi0 ^ c3[j] ^ k1;
            c3[j] = lo0;
        }
    }
    [c0, c1, c2, c3]
}

/// The full product of two u32s.
#[inline(always)]
fn mul_wide(a: u32, b: u32) -> u64 {
    a as u64 * b as u64
}

crate::dispatched! {
    /// The words of blocks `first, first + 1, …` into `out` (four a block,
    /// in block order; `out.len()` a multiple of four), `LANES` blocks at a
    /// time: the same words as `RngStream::block`, bit for bit.
    fn philox_words(key: [u32; 2], stream: u64, first: u64, out: &mut [u32]) {
        for (g, chunk) in out.chunks_mut(4 * LANES).enumerate() {
            let w = philox_pairs(key, stream, first.wrapping_add((g * LANES) as u64));
            // Block 2j's words go to 8j … 8j + 3, block 2j + 1's after them:
            // on a whole group a fixed-size interleave, done in registers.
            let mut words = [0u32; 4 * LANES];
            for j in 0..PAIRS {
                for k in 0..4 {
                    words[8 * j + k] = w[k][j] as u32;
                    words[8 * j + 4 + k] = (w[k][j] >> 32) as u32;
                }
            }
            match <&mut [u32; 4 * LANES]>::try_from(&mut *chunk) {
                Ok(whole) => *whole = words,
                Err(_) => chunk.copy_from_slice(&words[..chunk.len()]),
            }
        }
    }
}

/// Box–Muller in f64, rounded to f32 once at the end. The CUDA kernels
/// (kernels/common.cuh) do the same with the device's double-precision
/// functions; both are accurate far below f32's resolution, so the rounded
/// values agree (the emulator, on the host's libm, agrees exactly).
fn box_muller(a: u32, b: u32, sine: bool) -> f32 {
    let (c, s) = box_muller_pair(a, b);
    if sine {
        s
    } else {
        c
    }
}

/// Both values of a Box–Muller pair: (cosine branch, sine branch).
fn box_muller_pair(a: u32, b: u32) -> (f32, f32) {
    // u1 on (0, 1], so the logarithm is finite.
    let u1 = ((a >> 8) + 1) as f64 * (1.0 / 16_777_216.0);
    let u2 = (b >> 8) as f64 * (1.0 / 16_777_216.0);
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = std::f64::consts::TAU * u2;
    ((r * theta.cos()) as f32, (r * theta.sin()) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Philox4x32-10 known-answer vectors of the Random123 distribution
    // (its kat_vectors file): counter, key, expected output.
    const KAT: [([u32; 4], [u32; 2], [u32; 4]); 3] = [
        ([0, 0, 0, 0], [0, 0], [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]),
        (
            [u32::MAX; 4],
            [u32::MAX; 2],
            [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
        ),
        (
            [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
            [0xa4093822, 0x299f31d0],
            [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
        ),
    ];

    #[test]
    fn philox_known_answers() {
        for (ctr, key, want) in KAT {
            assert_eq!(philox4x32_10(ctr, key), want, "ctr {ctr:08x?} key {key:08x?}");
        }
    }

    #[test]
    fn stream_maps_onto_counter_and_key() {
        let s = RngStream::new(0x299f31d0_a4093822, 0x03707344_13198a2e);
        assert_eq!(s.seed(), 0x299f31d0_a4093822);
        assert_eq!(s.block(0x85a308d3_243f6a88), KAT[2].2);
        let b = s.block(12345);
        assert_eq!((0..4).map(|lane| s.bits(4 * 12345 + lane)).collect::<Vec<_>>(), b);
    }

    #[test]
    fn uniform_moments_and_range() {
        let s = RngStream::new(42, 7);
        let n = 200_000;
        let mut v = vec![0.0f32; n];
        s.fill_uniform(0, &mut v);
        assert!(v.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard errors: 0.29/√n ≈ 6.5e-4 for the mean, ≈ 2e-4 for the variance.
        assert!((mean - 0.5).abs() < 4e-3, "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 2e-3, "var {var}");
    }

    #[test]
    fn normal_moments() {
        let s = RngStream::new(1234, 0);
        let n = 200_000;
        let mut v = vec![0.0f32; n];
        s.fill_normal(0, &mut v);
        assert!(v.iter().all(|x| x.is_finite()));
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let kurt = v.iter().map(|&x| (x as f64 - mean).powi(4)).sum::<f64>() / n as f64 / (var * var);
        assert!(mean.abs() < 1e-2, "mean {mean}");
        assert!((var - 1.0).abs() < 2e-2, "var {var}");
        assert!((kurt - 3.0).abs() < 0.1, "kurtosis {kurt}");
    }

    #[test]
    fn fills_equal_the_draws_by_index_at_any_start_and_length() {
        let s = RngStream::new(77, 3);
        for start in 0..9u64 {
            for len in 0..12usize {
                let (mut u, mut n) = (vec![0.0f32; len], vec![0.0f32; len]);
                s.fill_uniform(start, &mut u);
                s.fill_normal(start, &mut n);
                for i in 0..len {
                    assert_eq!(
                        u[i],
                        s.uniform(start + i as u64),
                        "uniform start {start} len {len} at {i}"
                    );
                    assert_eq!(
                        n[i],
                        s.normal(start + i as u64),
                        "normal start {start} len {len} at {i}"
                    );
                }
            }
        }
        // Past the parallel chunk size, with a start inside a block.
        let mut big = vec![0.0f32; 70_001];
        s.fill_uniform(3, &mut big);
        for i in [0usize, 1, 32_767, 32_768, 65_536, 70_000] {
            assert_eq!(big[i], s.uniform(3 + i as u64), "at {i}");
        }
    }

    #[test]
    fn vector_lanes_give_the_words_of_single_blocks() {
        let s = RngStream::new(0x1234_5678_9abc_def0, 0xfeed_0000_0000_0042);
        // Lengths across the lane group (64 blocks, 256 words) and the fill
        // group (256 blocks, 1024 words), starts inside a block, and a run of
        // blocks whose counter crosses 2³² (its high word changes inside one
        // lane group, and inside one packed pair of blocks).
        let near_wrap = 4 * (u32::MAX as u64) - 37;
        for start in [0u64, 1, 3, 4, 62, near_wrap, near_wrap + 3] {
            for len in [0usize, 1, 5, 63, 64, 65, 255, 256, 257, 1030] {
                let mut w = vec![0u32; len];
                s.fill_bits(start, &mut w);
                let mut u = vec![0.0f32; len];
                s.fill_uniform(start, &mut u);
                for i in 0..len {
                    let idx = start + i as u64;
                    assert_eq!(w[i], s.bits(idx), "bits start {start} len {len} at {i}");
                    assert_eq!(u[i], s.uniform(idx), "uniform start {start} len {len} at {i}");
                }
            }
        }
    }

    #[test]
    fn draws_depend_only_on_seed_stream_index() {
        let a = RngStream::new(5, 1);
        let b = RngStream::new(5, 1);
        let c = RngStream::new(5, 2);
        let d = RngStream::new(6, 1);
        assert_eq!(a.normal(1001), b.normal(1001));
        assert_ne!(a.bits(10), c.bits(10));
        assert_ne!(a.bits(10), d.bits(10));
        let mut chunk = vec![0.0f32; 8];
        a.fill_uniform(96, &mut chunk);
        assert_eq!(chunk[5], a.uniform(101));
    }
}
