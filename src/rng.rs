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
        self.fill_words(start, out, |w, o| {
            for (o, &x) in o.iter_mut().zip(w) {
                *o = (x >> 8) as f32 * UNIT;
            }
        });
    }

    /// The normals of whole blocks: values `4b … 4b + 3` (as `normal`
    /// gives them, bit for bit) of each block `b` in `blocks`, into `out`
    /// four a block in the list's order. For values scattered over a stream
    /// (the voxels of the visible tokens), computed side by side as
    /// `fill_normal` computes a run.
    pub fn fill_normal_blocks(&self, blocks: &[u64], out: &mut [f32]) {
        assert_eq!(out.len(), 4 * blocks.len(), "fill_normal_blocks: four values a block");
        let mut words = [0u32; 4 * LANES];
        for (list, vals) in blocks.chunks(LANES).zip(out.chunks_mut(4 * LANES)) {
            let words = &mut words[..4 * list.len()];
            philox_words_at(self.key, self.stream, list, words);
            box_muller_words(words, vals);
        }
    }

    /// Fills `out` with normals for indices `start ..`.
    /// Each pair of values shares its radius and angle, computed once
    /// (the values are those of `normal`, bit for bit).
    pub fn fill_normal(&self, start: u64, out: &mut [f32]) {
        self.fill_words(start, out, box_muller_words);
    }

    /// Value `i` of `out` depends only on index `start + i`, so chunks fill
    /// in parallel with exactly the values of a sequential fill. `f` maps
    /// whole blocks' words to as many values.
    fn fill_words(&self, start: u64, out: &mut [f32], f: impl Fn(&[u32], &mut [f32]) + Sync) {
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
    fn fill_words_seq(&self, start: u64, out: &mut [f32], f: &impl Fn(&[u32], &mut [f32])) {
        const GROUP: usize = 4 * LANES;
        let lead = (((4 - start % 4) % 4) as usize).min(out.len());
        let (head, rest) = out.split_at_mut(lead);
        if !head.is_empty() {
            let mut vals = [0.0f32; 4];
            f(&self.block(start / 4), &mut vals);
            let first = (start % 4) as usize;
            head.copy_from_slice(&vals[first..first + head.len()]);
        }
        let first_block = (start + lead as u64) / 4;
        let mut words = [0u32; 4 * GROUP];
        let mut cut = [0.0f32; 4 * GROUP];
        for (g, vals) in rest.chunks_mut(4 * GROUP).enumerate() {
            let n = 4 * vals.len().div_ceil(4);
            philox_words(self.key, self.stream, first_block + (g * GROUP) as u64, &mut words[..n]);
            if vals.len() == n {
                f(&words[..n], vals);
            } else {
                f(&words[..n], &mut cut[..n]);
                vals.copy_from_slice(&cut[..vals.len()]);
            }
        }
    }
}

/// Philox blocks computed side by side, two per 64-bit vector lane.
const LANES: usize = 64;
const PAIRS: usize = LANES / 2;
const LOW: u64 = 0xFFFF_FFFF;

/// `LANES` blocks of a stream, block `j` at counter `ctr(j)`
/// ([`philox_words`] makes them consecutive): the arithmetic of
/// [`philox4x32_10`] with each counter word of blocks `2j` and `2j + 1`
/// packed into one u64 (low and high half). The 32 × 32 → 64-bit products of
/// both halves are then two `vpmuludq` on whole lanes (the high half shifted
/// down first) and their halves are put back with shifts and masks, all
/// lane-local: no shuffles across lanes, which the one-block-per-lane form
/// spent most of its time on. Returns the four packed words of each pair.
#[inline(always)]
fn philox_pairs(key: [u32; 2], stream: u64, ctr: impl Fn(usize) -> u64) -> [[u64; PAIRS]; 4] {
    let (mut c0, mut c1) = ([0u64; PAIRS], [0u64; PAIRS]);
    for j in 0..PAIRS {
        let (a, b) = (ctr(2 * j), ctr(2 * j + 1));
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
            let at = first.wrapping_add((g * LANES) as u64);
            let w = philox_pairs(key, stream, |j| at.wrapping_add(j as u64));
            interleave(&w, chunk);
        }
    }
}

crate::dispatched! {
    /// The words of the blocks `blocks` lists into `out` (four a block, in
    /// the list's order; `out.len() == 4·blocks.len()`): the same words as
    /// `RngStream::block`, bit for bit.
    fn philox_words_at(key: [u32; 2], stream: u64, blocks: &[u64], out: &mut [u32]) {
        assert_eq!(out.len(), 4 * blocks.len(), "philox_words_at: four words a block");
        for (list, chunk) in blocks.chunks(LANES).zip(out.chunks_mut(4 * LANES)) {
            let w = philox_pairs(key, stream, |j| list.get(j).copied().unwrap_or(0));
            interleave(&w, chunk);
        }
    }
}

/// A group's words from [`philox_pairs`] into `chunk` in block order (its
/// first `chunk.len()` words).
#[inline(always)]
fn interleave(w: &[[u64; PAIRS]; 4], chunk: &mut [u32]) {
    // Block 2j's words go to 8j … 8j + 3, block 2j + 1's after them: on a
    // whole group a fixed-size interleave, done in registers.
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

/// Box–Muller in f64, rounded to f32 once at the end, on [`ln_unit`] and
/// [`sin_cos_turn`]: IEEE additions, multiplications, one division and one
/// square root, no library call. Every platform and vector width gives the
/// same bits, and so do the CUDA kernels (kernels/common.cuh does the same
/// operations with intrinsics the compiler may not fuse) and the emulator.
fn box_muller(a: u32, b: u32, sine: bool) -> f32 {
    let (c, s) = box_muller_pair(a, b);
    if sine {
        s
    } else {
        c
    }
}

/// Both values of a Box–Muller pair: (cosine branch, sine branch), from
/// `u1 = ((a >> 8) + 1)·2⁻²⁴` (on (0, 1], so the logarithm is finite) and
/// `u2 = (b >> 8)·2⁻²⁴`: `√(−2 ln u1)·(cos 2πu2, sin 2πu2)`.
#[inline(always)]
fn box_muller_pair(a: u32, b: u32) -> (f32, f32) {
    let r = (-2.0 * ln_unit((a >> 8) + 1)).sqrt();
    let (c, s) = sin_cos_turn(b >> 8);
    ((r * c) as f32, (r * s) as f32)
}

crate::dispatched! {
    /// Box–Muller over word pairs: `out[2i]`, `out[2i + 1]` are the cosine
    /// and sine values of `(words[2i], words[2i + 1])` (the lengths equal
    /// and even). The same bits at every vector level.
    fn box_muller_words(words: &[u32], out: &mut [f32]) {
        for (w, o) in words.chunks_exact(2).zip(out.chunks_exact_mut(2)) {
            let (c, s) = box_muller_pair(w[0], w[1]);
            o[0] = c;
            o[1] = s;
        }
    }
}

/// ln 2 in two parts: `LN2_HI` keeps 32 bits of the significand, so its
/// product with a small integer is exact; `LN2_LO` is the rest of ln 2
/// (`LN2 − LN2_HI`, exact, plus ln 2's distance from its f64, 2.319e-17).
const LN2_HI: f64 = f64::from_bits(std::f64::consts::LN_2.to_bits() & !0xF_FFFF);
const LN2_LO: f64 = (std::f64::consts::LN_2 - LN2_HI) + 2.319_046_813_846_299_6e-17;

/// `2/(2k + 1)` for k = 1 … 11: `ln m = 2f + f·s·Σ c_k s^(k−1)` with
/// `f = (m − 1)/(m + 1)`, `s = f²` (the series of 2·atanh f). On
/// `m ∈ [1/√2, √2]`, `s ≤ 0.0295`, and the first term left out is below
/// 2⁻⁵⁶ of the sum.
const LN_SERIES: [f64; 11] = [
    2.0 / 3.0,
    2.0 / 5.0,
    2.0 / 7.0,
    2.0 / 9.0,
    2.0 / 11.0,
    2.0 / 13.0,
    2.0 / 15.0,
    2.0 / 17.0,
    2.0 / 19.0,
    2.0 / 21.0,
    2.0 / 23.0,
];

/// `ln(n·2⁻²⁴)` for `n` in 1 ..= 2²⁴, within about one unit in the last
/// place of f64. `n = m·2^e` with `m ∈ [1/√2, √2)`, then
/// `(e − 24)·ln 2 + ln m`, ln 2 in two parts so the sum is as accurate as
/// `ln m`. Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn ln_unit(n: u32) -> f64 {
    const MANTISSA: u64 = (1 << 52) - 1;
    const ONE: u64 = 1023 << 52;
    // 2⁵² + the biased exponent, read as an f64, minus 2⁵²: the exponent
    // as an f64 without an integer-to-float conversion AVX2 lacks.
    const TWO52: f64 = 4_503_599_627_370_496.0;
    let x = n as i32 as f64;
    let bits = x.to_bits();
    let biased = f64::from_bits((bits >> 52) | TWO52.to_bits()) - TWO52;
    let m = f64::from_bits((bits & MANTISSA) | ONE);
    let big = m > std::f64::consts::SQRT_2;
    let m = if big { m * 0.5 } else { m };
    let e = (biased - 1023.0) + if big { 1.0 } else { 0.0 } - 24.0;
    let f = (m - 1.0) / (m + 1.0);
    let s = f * f;
    let mut p = LN_SERIES[10];
    for &c in LN_SERIES[..10].iter().rev() {
        p = p * s + c;
    }
    let ln_m = 2.0 * f + f * (s * p);
    e * LN2_HI + (ln_m + e * LN2_LO)
}

/// π/2 in three parts: `PIO2_HI` and `PIO2_MID` with 32 bits of
/// significand each (so their products with a quarter-turn count are
/// exact), `PIO2_LO` the rest, to 2⁻¹²⁰ of π/2.
const PIO2_HI: f64 = f64::from_bits(std::f64::consts::FRAC_PI_2.to_bits() & !0xF_FFFF);
const PIO2_MID: f64 = 6.077_100_506_303_966e-11;
const PIO2_LO: f64 = 2.022_266_248_795_950_6e-21;

/// `(−1)^k / (2k + 1)!` for k = 1 … 9, and `(−1)^k / (2k)!` for k = 2 … 10:
/// the Taylor series of sin and cos; on `|x| ≤ π/4` the first terms left
/// out are below 2⁻⁵⁸ of the value.
const SIN_SERIES: [f64; 9] = [
    -1.0 / 6.0,
    1.0 / 120.0,
    -1.0 / 5_040.0,
    1.0 / 362_880.0,
    -1.0 / 39_916_800.0,
    1.0 / 6_227_020_800.0,
    -1.0 / 1_307_674_368_000.0,
    1.0 / 355_687_428_096_000.0,
    -1.0 / 121_645_100_408_832_000.0,
];
const COS_SERIES: [f64; 9] = [
    1.0 / 24.0,
    -1.0 / 720.0,
    1.0 / 40_320.0,
    -1.0 / 3_628_800.0,
    1.0 / 479_001_600.0,
    -1.0 / 87_178_291_200.0,
    1.0 / 20_922_789_888_000.0,
    -1.0 / 6_402_373_705_728_000.0,
    1.0 / 2_432_902_008_176_640_000.0,
];

/// `(cos θ, sin θ)` of `θ = 2π·k·2⁻²⁴` (θ rounded to f64 first, as the
/// plain formula would), for `k < 2²⁴`, within about one unit in the last
/// place. `x = θ − q·π/2` with `q` the nearest quarter turn (the first two
/// subtractions exact by Sterbenz's lemma, so x keeps its relative
/// accuracy even at θ ≈ q·π/2), then the series on `|x| ≤ π/4`, the
/// rounding of cos's `1 − x²/2` carried into its small terms, and the
/// quadrant's swap and signs.
#[inline(always)]
pub fn sin_cos_turn(k: u32) -> (f64, f64) {
    let theta = std::f64::consts::TAU * (k as i32 as f64 * (1.0 / 16_777_216.0));
    let q = (k + (1 << 21)) >> 22;
    let qf = q as i32 as f64;
    let x = ((theta - qf * PIO2_HI) - qf * PIO2_MID) - qf * PIO2_LO;
    let z = x * x;
    let mut ps = SIN_SERIES[8];
    for &c in SIN_SERIES[..8].iter().rev() {
        ps = ps * z + c;
    }
    let sin = x + x * (z * ps);
    let mut pc = COS_SERIES[8];
    for &c in COS_SERIES[..8].iter().rev() {
        pc = pc * z + c;
    }
    let hz = 0.5 * z;
    let w = 1.0 - hz;
    let cos = w + (((1.0 - w) - hz) + z * (z * pc));
    // Quarter turn q: (cos, sin) of x rotated q times by 90°.
    let (c, s) = if q & 1 == 1 { (-sin, cos) } else { (cos, sin) };
    if q & 2 == 2 {
        (-c, -s)
    } else {
        (c, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Listed blocks, in any order and past 2³² (a counter's high word),
    /// more than one group of them and a short last group: the values
    /// `normal` gives at the same indices, bit for bit.
    #[test]
    fn normals_of_listed_blocks_are_the_streams() {
        let r = RngStream::new(11, 5);
        let blocks: Vec<u64> = (0..70u64)
            .map(|i| (i * 7919) % 1000 + if i % 3 == 0 { 1 << 33 } else { 0 })
            .collect();
        let mut out = vec![0f32; 4 * blocks.len()];
        r.fill_normal_blocks(&blocks, &mut out);
        for (i, &b) in blocks.iter().enumerate() {
            for v in 0..4 {
                assert_eq!(
                    out[4 * i + v].to_bits(),
                    r.normal(4 * b + v as u64).to_bits(),
                    "block {b}, value {v}"
                );
            }
        }
    }

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

    /// The distance of `a` from `b` in units of `b`'s last place.
    fn ulps(a: f64, b: f64) -> f64 {
        let unit = f64::from_bits(b.abs().to_bits() + 1) - b.abs();
        (a - b).abs() / unit
    }

    #[test]
    fn logarithm_and_quarter_turns_are_within_an_ulp_of_libm() {
        // Every n up to 2¹⁶, then every 97th up to 2²⁴ and its end.
        let ns = (1..=1u32 << 16)
            .chain(((1 << 16)..=(1 << 24)).step_by(97))
            .chain([1 << 24, (1 << 24) - 1]);
        let mut worst = 0.0f64;
        for n in ns {
            let want = (n as f64 * (1.0 / 16_777_216.0)).ln();
            let got = ln_unit(n);
            if want == 0.0 {
                assert_eq!(got.to_bits(), 0, "ln at n = {n}");
            } else {
                worst = worst.max(ulps(got, want));
            }
        }
        assert!(worst <= 1.0, "ln_unit is {worst} ulp from libm");
        // Every 61st angle, and both sides of every octant boundary.
        let boundaries = (0..=8u32).flat_map(|j| [j << 21, (j << 21).wrapping_sub(1), (j << 21) + 1]);
        let ks = (0..1u32 << 24).step_by(61).chain(boundaries.filter(|&k| k < 1 << 24));
        let (mut worst_c, mut worst_s) = (0.0f64, 0.0f64);
        for k in ks {
            let theta = std::f64::consts::TAU * (k as f64 * (1.0 / 16_777_216.0));
            let (c, s) = sin_cos_turn(k);
            worst_c = worst_c.max(ulps(c, theta.cos()));
            worst_s = worst_s.max(ulps(s, theta.sin()));
        }
        assert!(
            worst_c <= 1.0 && worst_s <= 1.0,
            "cos {worst_c} ulp, sin {worst_s} ulp from libm"
        );
    }

    #[test]
    fn normals_agree_with_the_libm_formula() {
        // The plain formula on the platform's ln, sin and cos: the f32
        // values agree unless the exact one lies within an ulp of f64 of a
        // halfway point between floats (about one value in 10⁸), and then
        // by one unit of f32.
        let libm = |a: u32, b: u32| {
            let u1 = ((a >> 8) + 1) as f64 * (1.0 / 16_777_216.0);
            let u2 = (b >> 8) as f64 * (1.0 / 16_777_216.0);
            let r = (-2.0 * u1.ln()).sqrt();
            let theta = std::f64::consts::TAU * u2;
            ((r * theta.cos()) as f32, (r * theta.sin()) as f32)
        };
        let s = RngStream::new(2026, 12);
        let mut words = vec![0u32; 1 << 21];
        s.fill_bits(0, &mut words);
        // The ends: u1 = 1 (radius 0) and u1 = 2⁻²⁴, and the quarter turns.
        words.extend([u32::MAX, 0, 0, 0x0020_0000 << 8, 0xFF, 0x0040_0000 << 8]);
        let mut got = vec![0.0f32; words.len()];
        box_muller_words(&words, &mut got);
        let mut differ = 0;
        for (w, g) in words.chunks_exact(2).zip(got.chunks_exact(2)) {
            let (c, sn) = libm(w[0], w[1]);
            for (x, y) in [(g[0], c), (g[1], sn)] {
                if x.to_bits() != y.to_bits() {
                    differ += 1;
                    assert!(x.to_bits().abs_diff(y.to_bits()) == 1, "{x} against {y} at words {w:?}");
                }
            }
        }
        assert!(differ <= 2, "{differ} of {} values differ from libm's", got.len());
        // One pair by index equals the fill.
        assert_eq!(s.normal(12_345).to_bits(), {
            let mut v = [0.0f32; 1];
            s.fill_normal(12_345, &mut v);
            v[0].to_bits()
        });
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
