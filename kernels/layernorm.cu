// Layer norm over the last dimension: one block per row, block-wide sums in
// shared memory (blockDim.x a multiple of 32), statistics in float.
#include "common.cuh"

// Block-wide sum: a butterfly within each warp (shuffles), then the warp
// partials through shared memory. blockDim.x must be a multiple of 32 and at
// most 1024; `buf` holds one float per warp.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

__device__ __forceinline__ float block_sum(float v, float* buf) {
    unsigned int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) buf[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (unsigned int w = 0; w < warps; ++w) total += buf[w];
    __syncthreads();
    return total;
}

// The rest of a layer norm of row `row` once each thread holds `part`, its
// share of the row's sum over the values `xr` (each thread reads back only
// the columns it summed): mean, variance, y = x̂·w + b and the statistics.
// `out16` says where y goes (the OUT16_* modes of common.cuh): f32 into y,
// rounded to bf16 into y16 as well (the copy a mixed-precision GEMM reads
// next, without a pass of its own), or into y16 alone when only GEMMs read it.
__device__ __forceinline__ void norm_row(const float* xr, float part, const float* w, const float* b, float* y,
                                         float* mean, float* rstd, int row, int cols, float eps, uint16_t* y16,
                                         int out16, float* buf) {
    float mu = block_sum(part, buf) / cols;
    float q = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float d = xr[c] - mu;
        q += d * d;
    }
    float rs = 1.0f / sqrtf(block_sum(q, buf) / cols + eps);
    float* yr = y + (uint64_t)row * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = (xr[c] - mu) * rs * w[c] + b[c];
        if (out16 != OUT16_ONLY) yr[c] = v;
        if (out16 != OUT16_NONE) y16[(uint64_t)row * cols + c] = to_bf16(v);
    }
    if (threadIdx.x == 0) {
        mean[row] = mu;
        rstd[row] = rs;
    }
}

// y = (x - mean) / sqrt(var + eps) * w + b; saves mean and 1/sigma per row
// (and y16, see norm_row). One block per row.
extern "C" __global__ void layer_norm_forward(const float* x, const float* w, const float* b, float* y, float* mean,
                                              float* rstd, int rows, int cols, float eps, uint16_t* y16,
                                              int out16) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (uint64_t)row * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
    norm_row(xr, s, w, b, y, mean, rstd, row, cols, eps, y16, out16, buf);
}

// dx per row (one block per row): dx = rstd·(g·w − mean(g·w) − x̂·mean(g·w·x̂)).
extern "C" __global__ void layer_norm_backward_dx(const float* g, const float* x, const float* w, const float* mean,
                                                  const float* rstd, float* dx, int rows, int cols) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* gr = g + (uint64_t)row * cols;
    const float* xr = x + (uint64_t)row * cols;
    float mu = mean[row], rs = rstd[row];
    float s1 = 0.0f, s2 = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float xh = (xr[c] - mu) * rs;
        float gw = gr[c] * w[c];
        s1 += gw;
        s2 += gw * xh;
    }
    float m1 = block_sum(s1, buf) / cols;
    float m2 = block_sum(s2, buf) / cols;
    float* dr = dx + (uint64_t)row * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float xh = (xr[c] - mu) * rs;
        dr[c] = rs * (gr[c] * w[c] - m1 - xh * m2);
    }
}

// dw and db, one thread per column summing the rows in order (no atomics, so
// the result does not depend on scheduling).
extern "C" __global__ void layer_norm_backward_dwdb(const float* g, const float* x, const float* mean, const float* rstd,
                                                    float* dw, float* db, int rows, int cols) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
        float sw = 0.0f, sb = 0.0f;
        for (int r = 0; r < rows; ++r) {
            float gv = g[(uint64_t)r * cols + c];
            sw += gv * (x[(uint64_t)r * cols + c] - mean[r]) * rstd[r];
            sb += gv;
        }
        dw[c] = sw;
        db[c] = sb;
    }
}

// layer_norm_backward_dwdb in two fixed-order passes for many rows: block
// (x, y) sums rows [y·chunk, min((y + 1)·chunk, rows)) of its columns into
// pw[y·cols + c] and pb[y·cols + c]; column_sums over the partial rows
// finishes each.
extern "C" __global__ void layer_norm_dwdb_partials(const float* g, const float* x, const float* mean,
                                                    const float* rstd, float* pw, float* pb, int rows, int cols,
                                                    int chunk) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    int r0 = blockIdx.y * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
    float sw = 0.0f, sb = 0.0f;
    for (int r = r0; r < r1; ++r) {
        float gv = g[(uint64_t)r * cols + c];
        sw += gv * (x[(uint64_t)r * cols + c] - mean[r]) * rstd[r];
        sb += gv;
    }
    pw[(uint64_t)blockIdx.y * cols + c] = sw;
    pb[(uint64_t)blockIdx.y * cols + c] = sb;
}

// The residual and the layer norm after it in one pass: s = x + k·a (kept:
// the next residual and the backward read it), y = LN(s)·w + b, with the
// row statistics and y16 as layer_norm_forward. One block per row.
extern "C" __global__ void add_layer_norm_forward(const float* x, const float* a, float k, const float* w,
                                                  const float* b, float* s, float* y, float* mean, float* rstd,
                                                  int rows, int cols, float eps, uint16_t* y16, int out16) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    int row = blockIdx.x;
    if (row >= rows) return;
    const float* xr = x + (uint64_t)row * cols;
    const float* ar = a + (uint64_t)row * cols;
    float* sr = s + (uint64_t)row * cols;
    float t = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) {
        float v = xr[c] + k * ar[c];
        sr[c] = v;
        t += v;
    }
    norm_row(sr, t, w, b, y, mean, rstd, row, cols, eps, y16, out16, buf);
}
