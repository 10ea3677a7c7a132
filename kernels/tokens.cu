// Token movement of dual masking: the gather of visible rows, and the
// decoder's mask-token scatter fused with the positional-table add (MODEL.md §6):
// y[b, n] = (n visible ? latent[b, j] : mask_token) + s·PE[n].
#include "common.cuh"

extern "C" __global__ void gather_rows(const float* x, const int* idx, float* y, int batch, int n_src, int n, int e) {
    uint64_t total = (uint64_t)batch * n * e;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t row = i / e;
        int b = (int)(row / n);
        y[i] = x[((uint64_t)b * n_src + idx[row]) * e + i % e];
    }
}

// `slot[b·N + n]` is the position j of token n among item b's visible rows,
// or −1 when n is masked.
extern "C" __global__ void scatter_mask_pe(const float* latent, const int* slot, const float* mask_token,
                                           const float* pe, const float* scale, float* y, int batch, int n, int nv,
                                           int e) {
    float s = scale[0];
    uint64_t total = (uint64_t)batch * n * e;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        int c = (int)(i % e);
        uint64_t row = i / e;
        int b = (int)(row / n), tok = (int)(row % n);
        int j = slot[row];
        float v = j >= 0 ? latent[((uint64_t)b * nv + j) * e + c] : mask_token[c];
        y[i] = v + s * pe[(uint64_t)tok * e + c];
    }
}

// y[b, n] = slot[b·N + n] ≥ 0 ? x[b, slot] : fill — the general row scatter
// (the patch embedding's token sequence, the gradient of a gather with a
// zero fill row).
extern "C" __global__ void scatter_rows(const float* x, const int* slot, const float* fill, float* y, int batch, int n,
                                        int nv, int e) {
    uint64_t total = (uint64_t)batch * n * e;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        int c = (int)(i % e);
        uint64_t row = i / e;
        int b = (int)(row / n);
        int j = slot[row];
        y[i] = j >= 0 ? x[((uint64_t)b * nv + j) * e + c] : fill[c];
    }
}

// The gradient of the fill row: out[c] = Σ g[r, c] over the rows r with
// slot[r] < 0, one thread per column adding rows in order.
extern "C" __global__ void unselected_row_sums(const float* g, const int* slot, float* out, int rows, int e) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < e; c += gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int r = 0; r < rows; ++r)
            if (slot[r] < 0) s += g[(uint64_t)r * e + c];
        out[c] = s;
    }
}

// y = [a | b] row by row (rows × (ca + cb)); rows = 1 joins two flat arrays.
extern "C" __global__ void concat2(const float* a, const float* b, float* y, int rows, int ca, int cb) {
    uint64_t w = (uint64_t)ca + cb, total = (uint64_t)rows * w;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t r = i / w, c = i % w;
        y[i] = c < (uint64_t)ca ? a[r * ca + c] : b[r * cb + (c - ca)];
    }
}

// The gradient of concat2: g split back into ga (rows × ca) and gb (rows × cb).
extern "C" __global__ void split2(const float* g, float* ga, float* gb, int rows, int ca, int cb) {
    uint64_t w = (uint64_t)ca + cb, total = (uint64_t)rows * w;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total; i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t r = i / w, c = i % w;
        if (c < (uint64_t)ca) ga[r * ca + c] = g[i]; else gb[r * cb + (c - ca)] = g[i];
    }
}
