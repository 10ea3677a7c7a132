// The segmentation decoder's kernels (SPEC §14): ReLU, tokens ↔ channels,
// trilinear resizing one axis at a time, per-channel sums for BatchNorm,
// its application and gradient, im2col / col2im around the GEMMs of a 3-D
// convolution, and softmax + Dice + cross-entropy. Sums run in a fixed
// order (a tree per block, or one thread walking a line), never atomics.
#include "common.cuh"

// The sum of every thread's v into *dst, by the fixed-order tree of
// block_tree_sum (buf: blockDim.x floats, a power of two).
__device__ __forceinline__ void tree_sum_to(float v, float* buf, float* dst) {
    buf[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride) buf[threadIdx.x] += buf[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) *dst = buf[0];
    __syncthreads();
}

extern "C" __global__ void relu_forward(const float* x, float* y, uint64_t n) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        y[i] = x[i] > 0.0f ? x[i] : 0.0f;
    }
}

extern "C" __global__ void relu_backward(const float* g, const float* x, float* dx, uint64_t n) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
        dx[i] = x[i] > 0.0f ? g[i] : 0.0f;
    }
}

// y[b][j][i] = x[b][i][j] for x of batch × m × n.
extern "C" __global__ void transpose12(const float* x, float* y, uint64_t batch, uint64_t m, uint64_t n) {
    uint64_t total = batch * m * n;
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t b = t / (m * n), r = t % (m * n);
        uint64_t j = r / m, i = r % m;
        y[t] = x[(b * m + i) * n + j];
    }
}

// ---- trilinear resizing, one axis at a time (align_corners false) ----

// Output index o along an axis of len_in → len_out reads inputs *i0 and *i1
// with weights 1 − *w and *w: source (o + ½)·len_in/len_out − ½, clamped at 0.
__device__ __forceinline__ void resize_taps(int o, int len_in, int len_out, int* i0, int* i1, float* w) {
    float src = ((float)o + 0.5f) * ((float)len_in / (float)len_out) - 0.5f;
    if (src < 0.0f) src = 0.0f;
    int a = (int)floorf(src);
    if (a > len_in - 1) a = len_in - 1;
    *i0 = a;
    *i1 = a + 1 < len_in ? a + 1 : len_in - 1;
    *w = src - (float)a;
}

// x is outer × in × inner, y outer × out × inner: the middle axis resized.
extern "C" __global__ void resize_axis_forward(const float* x, float* y, uint64_t outer, int len_in, int len_out,
                                               uint64_t inner) {
    uint64_t total = outer * len_out * inner;
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t a = t / (len_out * inner), r = t % (len_out * inner);
        int o = (int)(r / inner);
        uint64_t c = r % inner;
        int i0, i1;
        float w;
        resize_taps(o, len_in, len_out, &i0, &i1, &w);
        const float* line = x + a * len_in * inner + c;
        y[t] = (1.0f - w) * line[(uint64_t)i0 * inner] + w * line[(uint64_t)i1 * inner];
    }
}

// Its gradient: each input index gathers the outputs that read it (a run of
// outputs around i·len_out/len_in), in increasing order.
extern "C" __global__ void resize_axis_backward(const float* g, float* dx, uint64_t outer, int len_in, int len_out,
                                                uint64_t inner) {
    uint64_t total = outer * len_in * inner;
    float ratio = (float)len_out / (float)len_in;
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t a = t / (len_in * inner), r = t % (len_in * inner);
        int i = (int)(r / inner);
        uint64_t c = r % inner;
        int lo = (int)floorf(((float)i - 0.5f) * ratio - 0.5f) - 1;
        int hi = (int)ceilf(((float)i + 1.5f) * ratio - 0.5f) + 1;
        if (lo < 0) lo = 0;
        if (hi > len_out - 1) hi = len_out - 1;
        if (i == 0) lo = 0;
        if (i == len_in - 1) hi = len_out - 1;
        const float* line = g + a * len_out * inner + c;
        float s = 0.0f;
        for (int o = lo; o <= hi; o++) {
            int i0, i1;
            float w;
            resize_taps(o, len_in, len_out, &i0, &i1, &w);
            float go = line[(uint64_t)o * inner];
            if (i0 == i) s += (1.0f - w) * go;
            if (i1 == i) s += w * go;
        }
        dx[t] = s;
    }
}

// ---- BatchNorm3d ----

// Per channel c of x (batch × channels × plane): the sum of x (into
// sums[c]) and, with with_y set, of x·y (into sums[channels + c]). One
// block per channel, a tree in shared memory (blockDim floats).
extern "C" __global__ void channel_sums(const float* x, const float* y, float* sums, uint64_t batch, int channels,
                                        uint64_t plane, int with_y) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    int c = blockIdx.x;
    float s = 0.0f, sxy = 0.0f;
    uint64_t n = batch * plane;
    for (uint64_t k = threadIdx.x; k < n; k += blockDim.x) {
        uint64_t b = k / plane, v = k % plane;
        uint64_t at = (b * channels + c) * plane + v;
        s += x[at];
        if (with_y) sxy += x[at] * y[at];
    }
    tree_sum_to(s, buf, sums + c);
    if (with_y) tree_sum_to(sxy, buf, sums + channels + c);
}

// Per channel: the sum of squared deviations from mean[c] (the biased
// variance's numerator, two-pass for accuracy).
extern "C" __global__ void channel_sq_dev(const float* x, const float* mean, float* out, uint64_t batch, int channels,
                                          uint64_t plane) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    int c = blockIdx.x;
    float m = mean[c], s = 0.0f;
    uint64_t n = batch * plane;
    for (uint64_t k = threadIdx.x; k < n; k += blockDim.x) {
        uint64_t b = k / plane, v = k % plane;
        float d = x[(b * channels + c) * plane + v] - m;
        s += d * d;
    }
    tree_sum_to(s, buf, out + c);
}

// y = (x − mean[c])·invstd[c]·gamma[c] + beta[c]; xhat keeps the
// normalised values for the backward pass.
extern "C" __global__ void batch_norm_apply(const float* x, const float* mean, const float* invstd,
                                            const float* gamma, const float* beta, float* y, float* xhat,
                                            uint64_t total, int channels, uint64_t plane) {
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        int c = (int)((t / plane) % channels);
        float h = (x[t] - mean[c]) * invstd[c];
        xhat[t] = h;
        y[t] = h * gamma[c] + beta[c];
    }
}

// dx from g, xhat and the per-channel sums of g (sg) and g·xhat (sgx) over
// n values: batch statistics, gamma·invstd·(g − sg/n − xhat·sgx/n); or,
// running statistics (batch_stats 0), gamma·invstd·g.
extern "C" __global__ void batch_norm_backward(const float* g, const float* xhat, const float* sums,
                                               const float* gamma, const float* invstd, float* dx, uint64_t total,
                                               int channels, uint64_t plane, float n, int batch_stats) {
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        int c = (int)((t / plane) % channels);
        float k = gamma[c] * invstd[c];
        float v = g[t];
        if (batch_stats) v = v - sums[c] / n - xhat[t] * sums[channels + c] / n;
        dx[t] = k * v;
    }
}

// ---- 3-D convolution around GEMMs ----

// cols (cin·k³ × batch·vox_out) from x (batch × cin × d × h × w): row
// (ci, a, b, c), column (item, output voxel); zero outside the volume.
extern "C" __global__ void im2col3d(const float* x, float* cols, int batch, int cin, int d, int h, int w, int k,
                                    int pad) {
    int od = d + 2 * pad + 1 - k, oh = h + 2 * pad + 1 - k, ow = w + 2 * pad + 1 - k;
    uint64_t nout = (uint64_t)od * oh * ow, ncol = (uint64_t)batch * nout;
    uint64_t total = (uint64_t)cin * k * k * k * ncol;
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t row = t / ncol, col = t % ncol;
        int cc = (int)(row % k), bb = (int)((row / k) % k), aa = (int)((row / (k * k)) % k), ci = (int)(row / (k * k * k));
        int item = (int)(col / nout);
        uint64_t o = col % nout;
        int z = (int)(o / ((uint64_t)oh * ow)) + aa - pad, y = (int)((o / ow) % oh) + bb - pad, xx = (int)(o % ow) + cc - pad;
        float v = 0.0f;
        if (z >= 0 && z < d && y >= 0 && y < h && xx >= 0 && xx < w)
            v = x[(((uint64_t)item * cin + ci) * d + z) * h * w + (uint64_t)y * w + xx];
        cols[t] = v;
    }
}

// The gradient of im2col3d: each input value gathers the columns that read
// it, kernel offsets in order.
extern "C" __global__ void col2im3d(const float* cols, float* dx, int batch, int cin, int d, int h, int w, int k,
                                    int pad) {
    int od = d + 2 * pad + 1 - k, oh = h + 2 * pad + 1 - k, ow = w + 2 * pad + 1 - k;
    uint64_t nout = (uint64_t)od * oh * ow, ncol = (uint64_t)batch * nout;
    uint64_t vox = (uint64_t)d * h * w, total = (uint64_t)batch * cin * vox;
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        int item = (int)(t / ((uint64_t)cin * vox));
        int ci = (int)((t / vox) % cin);
        uint64_t v = t % vox;
        int z = (int)(v / ((uint64_t)h * w)), y = (int)((v / w) % h), xx = (int)(v % w);
        float s = 0.0f;
        for (int aa = 0; aa < k; aa++) {
            int oz = z + pad - aa;
            if (oz < 0 || oz >= od) continue;
            for (int bb = 0; bb < k; bb++) {
                int oy = y + pad - bb;
                if (oy < 0 || oy >= oh) continue;
                for (int cc = 0; cc < k; cc++) {
                    int ox = xx + pad - cc;
                    if (ox < 0 || ox >= ow) continue;
                    uint64_t row = (((uint64_t)ci * k + aa) * k + bb) * k + cc;
                    uint64_t col = (uint64_t)item * nout + ((uint64_t)oz * oh + oy) * ow + ox;
                    s += cols[row * ncol + col];
                }
            }
        }
        dx[t] = s;
    }
}

// channels × (batch·plane) → batch × channels × plane, plus bias[c] with
// has_bias set; with `back` set, the other way (no bias): the GEMM's
// layout and the tensor's.
extern "C" __global__ void channels_batch_swap(const float* src, const float* bias, float* dst, int batch,
                                               int channels, uint64_t plane, int has_bias, int back) {
    uint64_t total = (uint64_t)batch * channels * plane;
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        // t indexes the tensor layout: item, channel, voxel.
        uint64_t b = t / ((uint64_t)channels * plane), c = (t / plane) % channels, v = t % plane;
        uint64_t g = c * ((uint64_t)batch * plane) + b * plane + v;
        if (back) {
            dst[g] = src[t];
        } else {
            dst[t] = src[g] + (has_bias ? bias[c] : 0.0f);
        }
    }
}

// ---- softmax, Dice and cross-entropy ----

// Per voxel of logits (batch × classes × vox): the softmax into p, and
// −log p[label] into nll (labels: class indices held as floats).
extern "C" __global__ void softmax_nll(const float* z, const float* labels, float* p, float* nll, int batch,
                                       int classes, uint64_t vox) {
    uint64_t total = (uint64_t)batch * vox;
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t b = t / vox, v = t % vox;
        const float* zb = z + b * classes * vox + v;
        float m = -INFINITY;
        for (int c = 0; c < classes; c++) m = fmaxf(m, zb[c * vox]);
        float s = 0.0f;
        for (int c = 0; c < classes; c++) s += expf(zb[c * vox] - m);
        int l = (int)labels[t];
        for (int c = 0; c < classes; c++) p[(b * classes + c) * vox + v] = expf(zb[c * vox] - m) / s;
        nll[t] = -(zb[l * vox] - m - logf(s));
    }
}

// Per (item, class) block: Σ p·y, Σ p and Σ y over the voxels (y the
// one-hot label), into sums[3·(b·classes + c) + 0, 1, 2].
extern "C" __global__ void dice_sums(const float* p, const float* labels, float* sums, int classes, uint64_t vox) {
    NEMESIS_DYNAMIC_SHARED(float, buf);
    int bc = blockIdx.x, b = bc / classes, c = bc % classes;
    float inter = 0.0f, sp = 0.0f, sy = 0.0f;
    for (uint64_t v = threadIdx.x; v < vox; v += blockDim.x) {
        float pv = p[(uint64_t)bc * vox + v];
        float y = (int)labels[(uint64_t)b * vox + v] == c ? 1.0f : 0.0f;
        inter += pv * y;
        sp += pv;
        sy += y;
    }
    tree_sum_to(inter, buf, sums + 3 * bc);
    tree_sum_to(sp, buf, sums + 3 * bc + 1);
    tree_sum_to(sy, buf, sums + 3 * bc + 2);
}

// The loss (one thread): the mean over items and foreground classes of
// 1 − (2·inter + ε)/(Σp + Σy + ε), plus nll_sum / (batch·vox).
extern "C" __global__ void dice_ce_loss(const float* sums, const float* nll_sum, float* loss, int batch, int classes,
                                        uint64_t vox, float smooth) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    float dice = 0.0f;
    for (int b = 0; b < batch; b++)
        for (int c = 1; c < classes; c++) {
            const float* s = sums + 3 * (b * classes + c);
            dice += 1.0f - (2.0f * s[0] + smooth) / (s[1] + s[2] + smooth);
        }
    loss[0] = dice / (float)(batch * (classes - 1)) + nll_sum[0] / (float)((uint64_t)batch * vox);
}

// d(loss)/d(logits)·up, per voxel: the Dice term through the softmax, plus
// (p − onehot)/(batch·vox).
extern "C" __global__ void dice_ce_backward(const float* p, const float* labels, const float* sums,
                                            const float* up, float* dz, int batch, int classes, uint64_t vox,
                                            float smooth) {
    uint64_t total = (uint64_t)batch * vox;
    float count = (float)(batch * (classes - 1)), nvox = (float)total, u = up[0];
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        uint64_t b = t / vox, v = t % vox;
        int l = (int)labels[t];
        float dot = 0.0f;
        for (int c = 1; c < classes; c++) {
            const float* s = sums + 3 * (b * classes + c);
            float num = 2.0f * s[0] + smooth, den = s[1] + s[2] + smooth;
            float y = l == c ? 1.0f : 0.0f;
            float gp = -(2.0f * y / den - num / (den * den)) / count;
            dot += gp * p[(b * classes + c) * vox + v];
        }
        for (int c = 0; c < classes; c++) {
            float gp = 0.0f;
            if (c > 0) {
                const float* s = sums + 3 * (b * classes + c);
                float num = 2.0f * s[0] + smooth, den = s[1] + s[2] + smooth;
                float y = l == c ? 1.0f : 0.0f;
                gp = -(2.0f * y / den - num / (den * den)) / count;
            }
            float pc = p[(b * classes + c) * vox + v];
            float onehot = l == c ? 1.0f : 0.0f;
            dz[(b * classes + c) * vox + v] = u * (pc * (gp - dot) + (pc - onehot) / nvox);
        }
    }
}
