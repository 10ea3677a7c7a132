// Pointwise kernels: exact GELU, dropout, the gate mix. One thread per value,
// grid-stride loops so any launch size covers any length.
#include "common.cuh"

extern "C" __global__ void gelu_forward(const float* x, float* y, uint64_t n) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

extern "C" __global__ void gelu_backward(const float* g, const float* x, float* dx, uint64_t n) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float v = x[i];
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[i] = g[i] * (cdf + v * pdf);
    }
}

// Inverted dropout with the mask of src/ops/dropout.rs: value i is kept when
// uniform i of the stream is >= p, and scaled by 1/(1 - p).
extern "C" __global__ void dropout_forward(const float* x, float* y, uint64_t n, double p, RngStream s) {
    float keep = (float)(1.0 / (1.0 - p));
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        y[i] = ((double)rng_uniform(s, i) >= p) ? x[i] * keep : 0.0f;
    }
}

// GELU then inverted dropout in one pass (the FFN's hidden activation): the
// arithmetic of gelu_forward then dropout_forward, value for value (p = 0
// keeps everything, no draws). y goes to y and/or y16 by `out16` (the
// OUT16_* modes of common.cuh; y16 is the copy the next GEMM reads). x is
// f32, or bf16 bits in the _bf16 kernels (the FFN's first projection
// stored as bf16 alone).
template <typename XT>
__device__ __forceinline__ void gelu_dropout_forward_impl(const XT* x, float* y, uint64_t n, double p, RngStream s,
                                                          uint16_t* y16, int out16) {
    float keep = (float)(1.0 / (1.0 - p));
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float v = as_f32(x[i]);
        float gv = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        float out = gv;
        if (p > 0.0) out = ((double)rng_uniform(s, i) >= p) ? gv * keep : 0.0f;
        if (out16 != OUT16_ONLY) y[i] = out;
        if (out16 != OUT16_NONE) y16[i] = to_bf16(out);
    }
}

// Its gradient: dropout's mask on g, then GELU's derivative, in one pass;
// dx and dx16 as y and y16 above (dx is the upstream gradient of the FFN's
// first GEMM), x as above.
template <typename XT>
__device__ __forceinline__ void gelu_dropout_backward_impl(const float* g, const XT* x, float* dx, uint64_t n,
                                                           double p, RngStream s, uint16_t* dx16, int out16) {
    float keep = (float)(1.0 / (1.0 - p));
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        if (p > 0.0) gi = ((double)rng_uniform(s, i) >= p) ? gi * keep : 0.0f;
        float v = as_f32(x[i]);
        float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        float d = gi * (cdf + v * pdf);
        if (out16 != OUT16_ONLY) dx[i] = d;
        if (out16 != OUT16_NONE) dx16[i] = to_bf16(d);
    }
}

extern "C" __global__ void gelu_dropout_forward(const float* x, float* y, uint64_t n, double p, RngStream s,
                                                uint16_t* y16, int out16) {
    gelu_dropout_forward_impl(x, y, n, p, s, y16, out16);
}

extern "C" __global__ void gelu_dropout_forward_bf16(const uint16_t* x, float* y, uint64_t n, double p, RngStream s,
                                                     uint16_t* y16, int out16) {
    gelu_dropout_forward_impl(x, y, n, p, s, y16, out16);
}

extern "C" __global__ void gelu_dropout_backward(const float* g, const float* x, float* dx, uint64_t n, double p,
                                                 RngStream s, uint16_t* dx16, int out16) {
    gelu_dropout_backward_impl(g, x, dx, n, p, s, dx16, out16);
}

extern "C" __global__ void gelu_dropout_backward_bf16(const float* g, const uint16_t* x, float* dx, uint64_t n,
                                                      double p, RngStream s, uint16_t* dx16, int out16) {
    gelu_dropout_backward_impl(g, x, dx, n, p, s, dx16, out16);
}

// (1 - a)·x + a·y with a read from device memory (sigmoid(alpha)).
extern "C" __global__ void gate_mix_forward(const float* x, const float* y, const float* a, float* out, uint64_t n) {
    float av = a[0];
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        out[i] = (1.0f - av) * x[i] + av * y[i];
    }
}

extern "C" __global__ void sigmoid_forward(const float* x, float* y, uint64_t n) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        y[i] = 1.0f / (1.0f + expf(-x[i]));
}

// y = x + b with b repeating every `cols` values (a bias over rows, a
// positional table over a batch).
extern "C" __global__ void add_broadcast(const float* x, const float* b, float* y, uint64_t n, uint64_t cols) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        y[i] = x[i] + b[i % cols];
}

// A column reduction's input is f32, or bf16 bits (a gradient stored as
// bf16 alone, whose bias gradient sums the bf16 values): as_f32 reads both.
template <typename T>
__device__ __forceinline__ void column_sums_impl(const T* g, float* out, uint64_t rows, uint64_t cols) {
    for (uint64_t c = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; c < cols; c += (uint64_t)gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (uint64_t r = 0; r < rows; ++r) s += as_f32(g[r * cols + c]);
        out[c] = s;
    }
}

template <typename T>
__device__ __forceinline__ void column_partials_impl(const T* g, float* partial, uint64_t rows, uint64_t cols,
                                                     uint64_t chunk) {
    uint64_t c = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x;
    if (c >= cols) return;
    uint64_t r0 = blockIdx.y * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
    float s = 0.0f;
    for (uint64_t r = r0; r < r1; ++r) s += as_f32(g[r * cols + c]);
    partial[blockIdx.y * cols + c] = s;
}

// The gradient of the repeated operand: column sums over the rows, one
// thread per column summing in row order (no atomics).
extern "C" __global__ void column_sums(const float* g, float* out, uint64_t rows, uint64_t cols) {
    column_sums_impl(g, out, rows, cols);
}

// The same over bf16 values.
extern "C" __global__ void column_sums_bf16(const uint16_t* g, float* out, uint64_t rows, uint64_t cols) {
    column_sums_impl(g, out, rows, cols);
}

// The first of two fixed-order passes for many rows: block (x, y) sums rows
// [y·chunk, min((y + 1)·chunk, rows)) of its columns in row order into
// partial[y·cols + c]; column_sums over the gridDim.y partial rows finishes.
// One thread per column walking every row would leave a wide GPU idle.
extern "C" __global__ void column_partials(const float* g, float* partial, uint64_t rows, uint64_t cols,
                                           uint64_t chunk) {
    column_partials_impl(g, partial, rows, cols, chunk);
}

// The same over bf16 values.
extern "C" __global__ void column_partials_bf16(const uint16_t* g, float* partial, uint64_t rows, uint64_t cols,
                                                uint64_t chunk) {
    column_partials_impl(g, partial, rows, cols, chunk);
}

extern "C" __global__ void sigmoid_backward(const float* g, const float* y, float* dx, uint64_t n) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        dx[i] = g[i] * y[i] * (1.0f - y[i]);
}

// y = c·x.
extern "C" __global__ void scale_forward(const float* x, float* y, uint64_t n, float c) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        y[i] = c * x[i];
}

// y = x ⊙ b with b repeating every `cols` values (cols = n: a plain product).
extern "C" __global__ void mul_broadcast(const float* x, const float* b, float* y, uint64_t n, uint64_t cols) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        y[i] = x[i] * b[i % cols];
}

// The gate mix's gradients: dx = (1 − a)·g, dy = a·g, and t = g·(y − x),
// whose sum (block_sums) is the gradient of a.
extern "C" __global__ void gate_mix_backward(const float* g, const float* x, const float* y, const float* a, float* dx,
                                             float* dy, float* t, uint64_t n) {
    float av = a[0];
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        float gi = g[i];
        dx[i] = (1.0f - av) * gi;
        dy[i] = av * gi;
        t[i] = gi * (y[i] - x[i]);
    }
}

// Sum per block of x (grid-stride), written to partial[blockIdx.x]; a tree
// in shared memory of blockDim (a power of two) floats, so the order of the
// additions is fixed by the launch, never by scheduling.
extern "C" __global__ void block_sums(const float* x, float* partial, uint64_t n) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    float s = 0.0f;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        s += x[i];
    block_tree_sum(s, buf, partial);
}

// f32 → bf16 bits, rounding to nearest even (NaN stays a quiet NaN): the
// operands of a mixed-precision GEMM.
extern "C" __global__ void f32_to_bf16(const float* x, uint16_t* y, uint64_t n) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        y[i] = to_bf16(x[i]);
    }
}

// bf16 bits → f32 (exact): the values of a tensor stored as bf16 alone, for
// a reader other than a GEMM.
extern "C" __global__ void bf16_to_f32(const uint16_t* x, float* y, uint64_t n) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        y[i] = from_bf16(x[i]);
    }
}
