// Token movement of dual masking: the gather of visible rows, and the
// decoder's mask-token scatter fused with the positional-table add (SPEC 6):
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
