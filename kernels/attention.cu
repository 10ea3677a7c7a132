// Plain multi-head attention over sequences of rows of a fused QKV matrix
// (rows × 3E: [q | k | v], head h at columns h·dh..), the layout of
// src/backend/cpu/attention.rs. One thread per (sequence, head, query row);
// the softmax runs online over the keys (running max and sum), so no score
// matrix is stored; the row's log-sum-exp is saved for the backward pass.
// This is the correct, simple kernel; the fast flash kernel replaces it later.
#include "common.cuh"

// With `out16mode` (OUT16_BOTH), out16 gets the output rounded to bf16 as
// well (the copy the output projection's mixed-precision GEMM reads). The
// output accumulates in `out`, so this kernel always writes it: it is never
// asked for the bf16 copy alone.
extern "C" __global__ void attention_forward(const float* qkv, float* out, float* lse, SeqLayout l, int heads, int e,
                                             double p, RngStream rng, uint16_t* out16, int out16mode) {
    int dh = e / heads;
    int seqs = l.outer_count * l.inner_count;
    uint64_t total = (uint64_t)seqs * heads * l.len;
    float scale = 1.0f / sqrtf((float)dh);
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        int i = (int)(t % l.len);
        int h = (int)((t / l.len) % heads);
        int s = (int)(t / ((uint64_t)l.len * heads));
        const float* q = qkv + (uint64_t)seq_row(l, s, i) * 3 * e + h * dh;
        float m = -INFINITY, z = 0.0f;
        for (int j = 0; j < l.len; ++j) {
            const float* k = qkv + (uint64_t)seq_row(l, s, j) * 3 * e + e + h * dh;
            float d = 0.0f;
            for (int c = 0; c < dh; ++c) d += q[c] * k[c];
            d *= scale;
            float m2 = fmaxf(m, d);
            z = z * expf(m - m2) + expf(d - m2);
            m = m2;
        }
        float* o = out + (uint64_t)seq_row(l, s, i) * e + h * dh;
        for (int c = 0; c < dh; ++c) o[c] = 0.0f;
        for (int j = 0; j < l.len; ++j) {
            const float* k = qkv + (uint64_t)seq_row(l, s, j) * 3 * e + e + h * dh;
            const float* v = k + e;
            float d = 0.0f;
            for (int c = 0; c < dh; ++c) d += q[c] * k[c];
            float pr = expf(d * scale - m) / z * attn_keep(rng, p, heads, s, h, i, j, l.len);
            for (int c = 0; c < dh; ++c) o[c] += pr * v[c];
        }
        if (out16mode != OUT16_NONE) {
            uint16_t* o16 = out16 + (uint64_t)seq_row(l, s, i) * e + h * dh;
            for (int c = 0; c < dh; ++c) o16[c] = to_bf16(o[c]);
        }
        lse[t] = m + logf(z);
    }
}

// dQ for one (sequence, head, query row) per thread: dS_ij = P_ij (dP_ij − D_i),
// with dP_ij = keep_ij · dO_i·v_j and D_i = dO_i·O_i.
extern "C" __global__ void attention_backward_dq(const float* qkv, const float* out, const float* dout, const float* lse,
                                                 float* dqkv, SeqLayout l, int heads, int e, double p, RngStream rng) {
    int dh = e / heads;
    uint64_t total = (uint64_t)l.outer_count * l.inner_count * heads * l.len;
    float scale = 1.0f / sqrtf((float)dh);
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        int i = (int)(t % l.len);
        int h = (int)((t / l.len) % heads);
        int s = (int)(t / ((uint64_t)l.len * heads));
        int ri = seq_row(l, s, i);
        const float* q = qkv + (uint64_t)ri * 3 * e + h * dh;
        const float* go = dout + (uint64_t)ri * e + h * dh;
        const float* o = out + (uint64_t)ri * e + h * dh;
        float di = 0.0f;
        for (int c = 0; c < dh; ++c) di += go[c] * o[c];
        float* dq = dqkv + (uint64_t)ri * 3 * e + h * dh;
        for (int c = 0; c < dh; ++c) dq[c] = 0.0f;
        for (int j = 0; j < l.len; ++j) {
            const float* k = qkv + (uint64_t)seq_row(l, s, j) * 3 * e + e + h * dh;
            const float* v = k + e;
            float d = 0.0f, dp = 0.0f;
            for (int c = 0; c < dh; ++c) {
                d += q[c] * k[c];
                dp += go[c] * v[c];
            }
            float pr = expf(d * scale - lse[t]);
            float ds = pr * (dp * attn_keep(rng, p, heads, s, h, i, j, l.len) - di);
            for (int c = 0; c < dh; ++c) dq[c] += scale * ds * k[c];
        }
    }
}

// dK and dV for one (sequence, head, key row) per thread, no atomics.
extern "C" __global__ void attention_backward_dkv(const float* qkv, const float* out, const float* dout,
                                                  const float* lse, float* dqkv, SeqLayout l, int heads, int e,
                                                  double p, RngStream rng) {
    int dh = e / heads;
    uint64_t total = (uint64_t)l.outer_count * l.inner_count * heads * l.len;
    float scale = 1.0f / sqrtf((float)dh);
    for (uint64_t t = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; t < total; t += (uint64_t)gridDim.x * blockDim.x) {
        int j = (int)(t % l.len);
        int h = (int)((t / l.len) % heads);
        int s = (int)(t / ((uint64_t)l.len * heads));
        int rj = seq_row(l, s, j);
        const float* k = qkv + (uint64_t)rj * 3 * e + e + h * dh;
        const float* v = k + e;
        float* dk = dqkv + (uint64_t)rj * 3 * e + e + h * dh;
        float* dv = dk + e;
        for (int c = 0; c < dh; ++c) {
            dk[c] = 0.0f;
            dv[c] = 0.0f;
        }
        uint64_t row0 = t - j;  // lse index of (s, h, 0)
        for (int i = 0; i < l.len; ++i) {
            int ri = seq_row(l, s, i);
            const float* q = qkv + (uint64_t)ri * 3 * e + h * dh;
            const float* go = dout + (uint64_t)ri * e + h * dh;
            const float* o = out + (uint64_t)ri * e + h * dh;
            float d = 0.0f, dp = 0.0f, di = 0.0f;
            for (int c = 0; c < dh; ++c) {
                d += q[c] * k[c];
                dp += go[c] * v[c];
                di += go[c] * o[c];
            }
            float pr = expf(d * scale - lse[row0 + i]);
            float keep = attn_keep(rng, p, heads, s, h, i, j, l.len);
            float ds = pr * (dp * keep - di);
            for (int c = 0; c < dh; ++c) {
                dk[c] += scale * ds * q[c];
                dv[c] += pr * keep * go[c];
            }
        }
    }
}
