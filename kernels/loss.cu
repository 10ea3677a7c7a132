// The masked per-token MSE of MODEL.md §7 and the pieces of its PSNR. Every sum
// is in a fixed order (one block, shares added in thread order), so the
// result does not depend on scheduling.
#include "common.cuh"

// e[n] = mean over the token's P values of (pred − target)²; sq[n] = the sum.
extern "C" __global__ void token_errors(const float* pred, const float* target, float* e, float* sq, int tokens, int p) {
    for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < tokens; n += gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int k = 0; k < p; ++k) {
            float d = pred[(uint64_t)n * p + k] - target[(uint64_t)n * p + k];
            s += d * d;
        }
        sq[n] = s;
        e[n] = s / p;
    }
}

// The loss and the squared-error total from token_errors' output, in one
// block, so no partial sums go to the host: loss[0] = Σ mask·e / Σ mask (the
// mean of e when nothing is masked), sse[0] = Σ sq. Each thread adds a
// strided share in double; thread 0 adds the shares in thread order, so the
// result depends on the launch only. Shared memory: 4 · blockDim.x doubles.
extern "C" __global__ void masked_mse_reduce(const float* e, const float* sq, const float* mask, float* loss, float* sse,
                                             int tokens) {
    NEMESIS_DYNAMIC_SHARED(double, buf);
    double we = 0.0, w = 0.0, all = 0.0, s = 0.0;
    for (int n = threadIdx.x; n < tokens; n += blockDim.x) {
        we += (double)mask[n] * (double)e[n];
        w += (double)mask[n];
        all += (double)e[n];
        s += (double)sq[n];
    }
    double* mine = buf + 4 * threadIdx.x;
    mine[0] = we;
    mine[1] = w;
    mine[2] = all;
    mine[3] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t[4] = {0.0, 0.0, 0.0, 0.0};
        for (unsigned int k = 0; k < blockDim.x; ++k)
            for (int j = 0; j < 4; ++j) t[j] += buf[4 * k + j];
        loss[0] = (float)(t[1] == 0.0 ? t[2] / (double)tokens : t[0] / t[1]);
        sse[0] = (float)t[3];
    }
}

// d loss / d pred = g · weight[n] · 2 (pred − target) / P, with weight[n] =
// mask[n] / Σ mask (or 1 / tokens when nothing is masked), computed by the
// caller, and the upstream gradient g read from the device (g[0]), so the
// backward pass never waits for the host.
// The gradient goes to grad and/or grad16 by `out16` (the OUT16_* modes of
// common.cuh; grad16 is what the decoder head's backward GEMMs read).
extern "C" __global__ void masked_mse_backward(const float* pred, const float* target, const float* weight, float* grad,
                                               const float* g, int tokens, int p, uint16_t* grad16, int out16) {
    uint64_t total = (uint64_t)tokens * p;
    float g0 = g[0];
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        float d = g0 * weight[i / p] * 2.0f * (pred[i] - target[i]) / (float)p;
        if (out16 != OUT16_ONLY) grad[i] = d;
        if (out16 != OUT16_NONE) grad16[i] = to_bf16(d);
    }
}

// Mean over the middle axis of an outer × n × inner tensor (the token mean pool).
extern "C" __global__ void mean_axis(const float* x, float* y, int outer, int n, int inner) {
    uint64_t total = (uint64_t)outer * inner;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t o = i / inner, c = i % inner;
        float s = 0.0f;
        for (int k = 0; k < n; ++k) s += x[(o * n + k) * inner + c];
        y[i] = s / n;
    }
}

// The mean pool's gradient: every one of the n rows gets g / n.
extern "C" __global__ void mean_axis_backward(const float* g, float* dx, int outer, int n, int inner) {
    uint64_t total = (uint64_t)outer * n * inner;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t c = i % inner, o = i / ((uint64_t)n * inner);
        dx[i] = g[o * inner + c] / (float)n;
    }
}
