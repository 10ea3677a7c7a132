// The fused superpatch input: HU crops (int16, B×D×H×W) → HU window → Philox
// noise (the values src/model/noise.rs adds) → patchify (MODEL.md §1) → gather of
// the visible tokens in ids_keep order, written as the B×Nv×P rows the patch
// embedding reads. One thread per output value.
#include "common.cuh"

extern "C" __global__ void superpatch_input(const int16_t* hu, const int* ids_keep, float* out, int batch, int d, int h,
                                            int w, int pd, int ph, int pw, int nv, double sigma, RngStream noise) {
    int hp = h / ph, wp = w / pw;
    uint64_t p = (uint64_t)pd * ph * pw;
    uint64_t total = (uint64_t)batch * nv * p;
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < total;
         i += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t k = i % p;
        uint64_t row = i / p;
        int b = (int)(row / nv);
        int n = ids_keep[row];
        int dp = n / (hp * wp), hq = (n / wp) % hp, wq = n % wp;
        int kd = (int)(k / (ph * pw)), kh = (int)((k / pw) % ph), kw = (int)(k % pw);
        int z = dp * pd + kd, y = hq * ph + kh, x = wq * pw + kw;
        uint64_t voxel = (((uint64_t)b * d + z) * h + y) * w + x;
        float v = hu_window((float)hu[voxel]);
        // v + σ·ε in double, unfused, as src/model/noise.rs adds it.
        if (sigma != 0.0) v = (float)__dadd_rn((double)v, __dmul_rn(sigma, (double)rng_normal(noise, voxel)));
        out[i] = v;
    }
}
