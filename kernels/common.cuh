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

// Standard normal by Box–Muller on word pairs (0, 1) and (2, 3), computed in
// double and rounded to float, as src/rng.rs does.
__device__ __forceinline__ float rng_normal(RngStream s, uint64_t index) {
    Philox4 w = rng_block(s, index / 4);
    int lane = (int)(index % 4);
    int pair = lane & ~1;
    double u1 = (double)((w.v[pair] >> 8) + 1) * (1.0 / 16777216.0);
    double u2 = (double)(w.v[pair + 1] >> 8) * (1.0 / 16777216.0);
    double r = sqrt(-2.0 * log(u1));
    double theta = 6.283185307179586 * u2;
    return (float)((lane & 1) ? r * sin(theta) : r * cos(theta));
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
