// Common definitions of the nemesis kernels. Compiled two ways: by NVRTC for
// the GPU, and by the host C++ compiler against kernels/emu/emu.h for the
// emulator (`cargo test` runs every kernel on the CPU that way). Kernels use
// only what both provide.
#pragma once

#ifdef NEMESIS_EMU
#include "emu/emu.h"
#else
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef short int16_t;
typedef unsigned short uint16_t;
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif
#endif

// Dynamic shared memory, declared the same way on both sides.
#ifdef NEMESIS_EMU
#define NEMESIS_DYNAMIC_SHARED(type, name) type* name = (type*)emu_dynamic_shared()
#else
#define NEMESIS_DYNAMIC_SHARED(type, name) extern __shared__ unsigned char nemesis_smem_[]; type* name = (type*)nemesis_smem_
#endif

// ---- Philox4x32-10, bit-identical to src/rng.rs --------------------------

struct Philox4 {
    uint32_t v[4];
};

__device__ __forceinline__ void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
    uint64_t p = (uint64_t)a * (uint64_t)b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

__device__ __forceinline__ Philox4 philox4x32_10(Philox4 ctr, uint32_t k0, uint32_t k1) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        uint32_t hi0, lo0, hi1, lo1;
        philox_mulhilo(0xD2511F53u, ctr.v[0], &hi0, &lo0);
        philox_mulhilo(0xCD9E8D57u, ctr.v[2], &hi1, &lo1);
        Philox4 n;
        n.v[0] = hi1 ^ ctr.v[1] ^ k0;
        n.v[1] = lo1;
        n.v[2] = hi0 ^ ctr.v[3] ^ k1;
        n.v[3] = lo0;
        ctr = n;
    }
    return ctr;
}

// A stream as in src/rng.rs: key = seed, counter = [block lo, block hi, stream lo, stream hi].
struct RngStream {
    uint32_t k0, k1, s0, s1;
};

__device__ __forceinline__ Philox4 rng_block(RngStream s, uint64_t block) {
    Philox4 c;
    c.v[0] = (uint32_t)block;
    c.v[1] = (uint32_t)(block >> 32);
    c.v[2] = s.s0;
    c.v[3] = s.s1;
    return philox4x32_10(c, s.k0, s.k1);
}

// Uniform on [0, 1) with 24 bits, value `index` of the stream.
__device__ __forceinline__ float rng_uniform(RngStream s, uint64_t index) {
    Philox4 w = rng_block(s, index / 4);
    return (float)(w.v[index % 4] >> 8) * (1.0f / 16777216.0f);
}

// Box–Muller as src/rng.rs computes it (box_muller_pair, ln_unit,
// sin_cos_turn): the same IEEE operations in the same order on the same
// constants, each through an intrinsic the compiler never fuses into a
// multiply-add, so the GPU, the emulator and the CPU give the same bits.
#define RNG_ADD(a, b) __dadd_rn((a), (b))
#define RNG_SUB(a, b) __dadd_rn((a), -(b))
#define RNG_MUL(a, b) __dmul_rn((a), (b))

// ln(n·2⁻²⁴) for n in 1 ..= 2²⁴: n = m·2^e with m in [1/√2, √2), then
// (e − 24)·ln 2 + ln m, ln m by the series of 2·atanh((m − 1)/(m + 1)).
__device__ __forceinline__ double rng_ln_unit(uint32_t n) {
    const double LN2_HI = __longlong_as_double(0x3FE62E42FEF00000LL);
    const double LN2_LO = __longlong_as_double(0x3DD473DE6AF278EDLL);
    const double c[11] = {2.0 / 3.0,  2.0 / 5.0,  2.0 / 7.0,  2.0 / 9.0,  2.0 / 11.0, 2.0 / 13.0,
                          2.0 / 15.0, 2.0 / 17.0, 2.0 / 19.0, 2.0 / 21.0, 2.0 / 23.0};
    double x = (double)n;
    long long bits = __double_as_longlong(x);
    double m = __longlong_as_double((bits & 0xFFFFFFFFFFFFFLL) | (1023LL << 52));
    bool big = m > 1.4142135623730951;
    if (big) m = RNG_MUL(m, 0.5);
    double e = (double)((int)(bits >> 52) - 1023 + (big ? 1 : 0) - 24);
    double f = __ddiv_rn(RNG_SUB(m, 1.0), RNG_ADD(m, 1.0));
    double s = RNG_MUL(f, f);
    double p = c[10];
#pragma unroll
    for (int i = 9; i >= 0; --i) p = RNG_ADD(RNG_MUL(p, s), c[i]);
    double ln_m = RNG_ADD(RNG_MUL(2.0, f), RNG_MUL(f, RNG_MUL(s, p)));
    return RNG_ADD(RNG_MUL(e, LN2_HI), RNG_ADD(ln_m, RNG_MUL(e, LN2_LO)));
}

// (cos θ, sin θ) of θ = 2π·k·2⁻²⁴, k < 2²⁴: θ less the nearest quarter
// turns (π/2 in three parts), the Taylor series on |x| ≤ π/4, then the
// quadrant's swap and signs.
__device__ __forceinline__ void rng_sin_cos_turn(uint32_t k, double* cos_out, double* sin_out) {
    const double PIO2_HI = __longlong_as_double(0x3FF921FB54400000LL);
    const double PIO2_MID = __longlong_as_double(0x3DD0B4611A600000LL);
    const double PIO2_LO = __longlong_as_double(0x3BA3198A2E037073LL);
    const double cs[9] = {-1.0 / 6.0,
                          1.0 / 120.0,
                          -1.0 / 5040.0,
                          1.0 / 362880.0,
                          -1.0 / 39916800.0,
                          1.0 / 6227020800.0,
                          -1.0 / 1307674368000.0,
                          1.0 / 355687428096000.0,
                          -1.0 / 121645100408832000.0};
    const double cc[9] = {1.0 / 24.0,
                          -1.0 / 720.0,
                          1.0 / 40320.0,
                          -1.0 / 3628800.0,
                          1.0 / 479001600.0,
                          -1.0 / 87178291200.0,
                          1.0 / 20922789888000.0,
                          -1.0 / 6402373705728000.0,
                          1.0 / 2432902008176640000.0};
    double theta = RNG_MUL(6.283185307179586, RNG_MUL((double)k, 1.0 / 16777216.0));
    uint32_t q = (k + (1u << 21)) >> 22;
    double qf = (double)q;
    double x = RNG_SUB(RNG_SUB(RNG_SUB(theta, RNG_MUL(qf, PIO2_HI)), RNG_MUL(qf, PIO2_MID)), RNG_MUL(qf, PIO2_LO));
    double z = RNG_MUL(x, x);
    double ps = cs[8], pc = cc[8];
#pragma unroll
    for (int i = 7; i >= 0; --i) {
        ps = RNG_ADD(RNG_MUL(ps, z), cs[i]);
        pc = RNG_ADD(RNG_MUL(pc, z), cc[i]);
    }
    double sn = RNG_ADD(x, RNG_MUL(x, RNG_MUL(z, ps)));
    double hz = RNG_MUL(0.5, z);
    double w = RNG_SUB(1.0, hz);
    double cs_ = RNG_ADD(w, RNG_ADD(RNG_SUB(RNG_SUB(1.0, w), hz), RNG_MUL(z, RNG_MUL(z, pc))));
    double c = (q & 1) ? -sn : cs_, s = (q & 1) ? cs_ : sn;
    if (q & 2) {
        c = -c;
        s = -s;
    }
    *cos_out = c;
    *sin_out = s;
}

// Standard normal by Box–Muller on word pairs (0, 1) and (2, 3), computed in
// double and rounded to float: the values of src/rng.rs, bit for bit.
__device__ __forceinline__ float rng_normal(RngStream s, uint64_t index) {
    Philox4 w = rng_block(s, index / 4);
    int lane = (int)(index % 4);
    int pair = lane & ~1;
    double r = __dsqrt_rn(RNG_MUL(-2.0, rng_ln_unit((w.v[pair] >> 8) + 1)));
    double c, sn;
    rng_sin_cos_turn(w.v[pair + 1] >> 8, &c, &sn);
    return (float)RNG_MUL(r, (lane & 1) ? sn : c);
}

// MODEL.md §2: HU window to [0, 1].
__device__ __forceinline__ float hu_window(float hu) {
    float v = fminf(fmaxf(hu, -175.0f), 250.0f);
    return (v + 175.0f) / 425.0f;
}

// ---- block sums in a fixed order ----

// Writes the sum of every thread's `v` to partial[blockIdx.x] by a tree in
// shared memory (`buf`: blockDim.x floats, blockDim.x a power of two), so the
// order of the additions depends on the launch only, never on scheduling.
__device__ __forceinline__ void block_tree_sum(float v, float* buf, float* partial) {
    buf[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// ---- sequences of rows (the MATB streams), shared by the attention kernels ----

struct SeqLayout {
    int outer_count, inner_count, outer_stride, inner_stride, len, step, offset;
};

__device__ __forceinline__ int seq_row(SeqLayout l, int s, int i) {
    return l.offset + (s / l.inner_count) * l.outer_stride + (s % l.inner_count) * l.inner_stride + i * l.step;
}

// Dropout keep-multiplier for (s, h, i, j), the draw of the CPU reference.
__device__ __forceinline__ float attn_keep(RngStream rng, double p, int heads, int s, int h, int i, int j, int len) {
    if (p <= 0.0) return 1.0f;
    uint64_t idx = (((uint64_t)s * heads + h) * len + i) * len + j;
    return ((double)rng_uniform(rng, idx) >= p) ? (float)(1.0 / (1.0 - p)) : 0.0f;
}

// ---- bf16 as raw bits (no cuda_bf16.h needed): round to nearest even ----

__device__ __forceinline__ uint16_t to_bf16(float x) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__device__ __forceinline__ float from_bf16(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }

// Where a kernel writes an output that may also be a mixed-precision GEMM's
// operand (its `out16` argument): f32 only; f32 and the bf16 copy beside
// it; the bf16 copy alone (an output only GEMMs read, stored as bf16).
#define OUT16_NONE 0
#define OUT16_BOTH 1
#define OUT16_ONLY 2

// A value read from f32 or from bf16 bits (an input stored as bf16 alone).
__device__ __forceinline__ float as_f32(float v) { return v; }
__device__ __forceinline__ float as_f32(uint16_t b) { return from_bf16(b); }

// Writes v at y[i] and/or y16[i] by `mode` (OUT16_*).
__device__ __forceinline__ void put_out(float* y, uint16_t* y16, int mode, uint64_t i, float v) {
    if (mode != OUT16_ONLY) y[i] = v;
    if (mode != OUT16_NONE) y16[i] = to_bf16(v);
}
