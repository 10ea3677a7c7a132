// Flash-style multi-head attention for the MATB streams and the patch
// embedding: one block per (sequence, head, tile of 64 rows), four warps of
// 16 rows each; Q, K, V (and dO) tiles in shared memory, scores and
// probabilities only in registers and a per-warp 16 × 64 scratch, never in
// global memory. q, k, v are read in place from the fused QKV projection
// output (rows × 3E, rows of a sequence found through SeqLayout), the output
// is written as the rows × E the output projection reads.
//
// Products are 16 × 8 × 16 tiles laid out as the tensor cores' mma.sync
// m16n8k16 fragments. The bf16 kernels round Q, K, V, P, dO and dS to bf16
// and multiply on the tensor cores (fp32 accumulation, fp32 softmax
// statistics); the f32 kernels compute the same tiles with fp32 FMAs, for
// verification. The backward recomputes probabilities from the saved
// log-sum-exp; dQ (per query tile) and dK, dV (per key tile) are separate
// kernels, so no atomics. Dropout uses the draws of attn_keep (common.cuh).
// Head dims up to 128 (padded to a multiple of 16), any sequence length.
#include "common.cuh"

#define FLASH_ROWS 64  // rows a block owns: 4 warps × 16
#define FLASH_TILE 64  // rows of the inner loop's tiles
#define FLASH_MAX_NT 16  // n8 tiles of a row of up to 128 values

template <bool BF16>
struct Elem;

template <>
struct Elem<false> {
    typedef float T;
    static __device__ __forceinline__ T put(float x) { return x; }
};

template <>
struct Elem<true> {
    typedef uint16_t T;
    static __device__ __forceinline__ T put(float x) { return to_bf16(x); }
};

// C(16×8) += A(16×16)·B(16×8) with A(m, k) = a[m·am + k·ak] and
// B(k, n) = b[k·bk + n·bn] in shared memory. Lane (g, t) = (lane / 4,
// lane % 4) holds C(g, 2t), C(g, 2t+1), C(g+8, 2t), C(g+8, 2t+1), the
// tensor cores' accumulator layout.
__device__ __forceinline__ void mma_tile(float c[4], const float* a, int am, int ak, const float* b, int bk, int bn) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int r = 0; r < 2; ++r)
        for (int q = 0; q < 2; ++q) {
            int m = g + 8 * r, n = 2 * t + q;
            float s = 0.0f;
            for (int k = 0; k < 16; ++k) s += a[m * am + k * ak] * b[k * bk + n * bn];
            c[2 * r + q] += s;
        }
}

__device__ __forceinline__ uint32_t pack_bf16(const uint16_t* p, int stride) {
    return (uint32_t)p[0] | ((uint32_t)p[stride] << 16);
}

// One mma.sync m16n8k16 (bf16 operands, f32 accumulators) on fragments
// already packed as the PTX ISA lays them out: C += A·B.
__device__ __forceinline__ void mma_m16n8k16(float c[4], const uint32_t ar[4], const uint32_t br[2]) {
#ifdef NEMESIS_EMU
    emu_mma_m16n8k16_bf16(c, ar, br);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(ar[0]), "r"(ar[1]), "r"(ar[2]), "r"(ar[3]), "r"(br[0]), "r"(br[1]));
#endif
}

__device__ __forceinline__ void mma_tile(float c[4], const uint16_t* a, int am, int ak, const uint16_t* b, int bk,
                                         int bn) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    uint32_t ar[4], br[2];
    ar[0] = pack_bf16(a + g * am + 2 * t * ak, ak);
    ar[1] = pack_bf16(a + (g + 8) * am + 2 * t * ak, ak);
    ar[2] = pack_bf16(a + g * am + (2 * t + 8) * ak, ak);
    ar[3] = pack_bf16(a + (g + 8) * am + (2 * t + 8) * ak, ak);
    br[0] = pack_bf16(b + 2 * t * bk + g * bn, bk);
    br[1] = pack_bf16(b + (2 * t + 8) * bk + g * bn, bk);
    mma_m16n8k16(c, ar, br);
}

// Stores accumulator tile n (columns n·8 … n·8+7) of a warp's 16 rows into
// a row-major tile of row length `ld`, by the accumulator layout: where the
// backward kernel turns transposed scores into the A operand of dK and dV.
template <bool BF16>
__device__ __forceinline__ void put_acc_tile(typename Elem<BF16>::T* dst, int ld, int n, const float c[4]) {
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    for (int k = 0; k < 4; ++k) dst[(g + 8 * (k >> 1)) * ld + n * 8 + 2 * t + (k & 1)] = Elem<BF16>::put(c[k]);
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Loads `count` rows (from `first`) of sequence s, columns off..off+dh of a
// row of width `width` (f32, or bf16 bits), into a tile of `count` × dp
// (zero-padded).
template <bool BF16, typename ST>
__device__ __forceinline__ void load_rows(typename Elem<BF16>::T* dst, const ST* src, SeqLayout l, int s,
                                          int first, int count, int width, int off, int dh, int dp) {
    for (int x = threadIdx.x; x < count * dp; x += blockDim.x) {
        int r = x / dp, c = x % dp, i = first + r;
        float v = (i < l.len && c < dh) ? as_f32(src[(uint64_t)seq_row(l, s, i) * width + off + c]) : 0.0f;
        dst[x] = Elem<BF16>::put(v);
    }
}

template <bool BF16, typename QT>
__device__ void flash_forward_impl(const QT* qkv, float* out, float* lse, SeqLayout l, int heads, int e, double p,
                                   RngStream rng, uint16_t* out16, int out16mode) {
    typedef typename Elem<BF16>::T T;
    const int dh = e / heads, dp = (dh + 15) & ~15, nt = dp / 8;
    const int s = blockIdx.x / heads, h = blockIdx.x % heads;
    const int q0 = blockIdx.y * FLASH_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    NEMESIS_DYNAMIC_SHARED(T, sq);
    T* sk = sq + FLASH_ROWS * dp;
    T* sv = sk + FLASH_TILE * dp;
    T* sp = sv + FLASH_TILE * dp + warp * 16 * FLASH_TILE;
    const T* qw = sq + warp * 16 * dp;
    const float scale = 1.0f / sqrtf((float)dh);
    load_rows<BF16>(sq, qkv, l, s, q0, FLASH_ROWS, 3 * e, h * dh, dh, dp);

    float o[FLASH_MAX_NT][4];
#pragma unroll
    for (int n = 0; n < FLASH_MAX_NT; ++n)
        for (int k = 0; k < 4; ++k) o[n][k] = 0.0f;
    float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
    for (int k0 = 0; k0 < l.len; k0 += FLASH_TILE) {
        __syncthreads();
        load_rows<BF16>(sk, qkv, l, s, k0, FLASH_TILE, 3 * e, e + h * dh, dh, dp);
        load_rows<BF16>(sv, qkv, l, s, k0, FLASH_TILE, 3 * e, 2 * e + h * dh, dh, dp);
        __syncthreads();
        float sc[FLASH_TILE / 8][4];
#pragma unroll
        for (int n = 0; n < FLASH_TILE / 8; ++n) {
            for (int k = 0; k < 4; ++k) sc[n][k] = 0.0f;
            for (int kk = 0; kk < dp; kk += 16) mma_tile(sc[n], qw + kk, dp, 1, sk + n * 8 * dp + kk, 1, dp);
        }
        // Online softmax over this tile: scaled scores, keys past the end masked.
        float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
        for (int n = 0; n < FLASH_TILE / 8; ++n)
            for (int k = 0; k < 4; ++k) {
                int j = k0 + n * 8 + 2 * t + (k & 1);
                float v = j < l.len ? sc[n][k] * scale : -INFINITY;
                sc[n][k] = v;
                mx[k >> 1] = fmaxf(mx[k >> 1], v);
            }
        float alpha[2];
        for (int r = 0; r < 2; ++r) {
            mx[r] = quad_max(mx[r]);
            alpha[r] = m_run[r] == -INFINITY ? 0.0f : expf(m_run[r] - mx[r]);
            m_run[r] = mx[r];
            l_run[r] *= alpha[r];
        }
#pragma unroll
        for (int n = 0; n < FLASH_TILE / 8; ++n)
            for (int k = 0; k < 4; ++k) {
                int r = k >> 1, row = g + 8 * r, col = n * 8 + 2 * t + (k & 1);
                float pr = expf(sc[n][k] - m_run[r]);
                l_run[r] += pr;
                int i = q0 + warp * 16 + row, j = k0 + col;
                float keep = (i < l.len && j < l.len) ? attn_keep(rng, p, heads, s, h, i, j, l.len) : 1.0f;
                sp[row * FLASH_TILE + col] = Elem<BF16>::put(pr * keep);
            }
#pragma unroll
        for (int n = 0; n < FLASH_MAX_NT; ++n)
            for (int k = 0; k < 4; ++k) o[n][k] *= alpha[k >> 1];
        __syncwarp();
#pragma unroll
        for (int n = 0; n < FLASH_MAX_NT; ++n)
            if (n < nt)
                for (int kk = 0; kk < FLASH_TILE; kk += 16)
                    mma_tile(o[n], sp + kk, FLASH_TILE, 1, sv + kk * dp + n * 8, dp, 1);
        __syncwarp();
    }
    for (int r = 0; r < 2; ++r) l_run[r] = quad_sum(l_run[r]);
    // Every loop here fully unrolled, so the accumulators stay in registers
    // (ptxas reports no stack frame; a rolled loop indexing o[][] would put
    // it in local memory).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int i = q0 + warp * 16 + g + 8 * r;
        if (i >= l.len) continue;
        uint64_t base = (uint64_t)seq_row(l, s, i) * e + h * dh;
        float* orow = out + base;
        uint16_t* orow16 = out16 + base;
#pragma unroll
        for (int n = 0; n < FLASH_MAX_NT; ++n)
#pragma unroll
            for (int q = 0; q < 2; ++q) {
                int c = n * 8 + 2 * t + q;
                if (n < nt && c < dh) {
                    float v = o[n][2 * r + q] / l_run[r];
                    if (out16mode != OUT16_ONLY) orow[c] = v;
                    if (out16mode != OUT16_NONE) orow16[c] = to_bf16(v);
                }
            }
        if (t == 0) lse[((uint64_t)s * heads + h) * l.len + i] = m_run[r] + logf(l_run[r]);
    }
}

// D_i = dO_i · O_i and the saved log-sum-exp for `count` rows from `first`
// (O in f32, or in bf16 for the bf16 kernels: the copy the output
// projection reads, which may be all there is of it).
template <typename OT>
__device__ __forceinline__ void load_row_stats(float* sd, float* sl, const OT* out, const float* dout,
                                               const float* lse, SeqLayout l, int s, int h, int heads, int e,
                                               int first, int count) {
    int dh = e / heads;
    for (int r = threadIdx.x; r < count; r += blockDim.x) {
        int i = first + r;
        float d = 0.0f, ls = 0.0f;
        if (i < l.len) {
            uint64_t base = (uint64_t)seq_row(l, s, i) * e + h * dh;
            for (int c = 0; c < dh; ++c) d += dout[base + c] * as_f32(out[base + c]);
            ls = lse[((uint64_t)s * heads + h) * l.len + i];
        }
        sd[r] = d;
        sl[r] = ls;
    }
}

template <bool BF16, typename QT, typename OT>
__device__ void flash_backward_dq_impl(const QT* qkv, const OT* out, const float* dout, const float* lse,
                                       float* dqkv, SeqLayout l, int heads, int e, double p, RngStream rng,
                                       uint16_t* dqkv16, int out16mode) {
    typedef typename Elem<BF16>::T T;
    const int dh = e / heads, dp = (dh + 15) & ~15, nt = dp / 8;
    const int s = blockIdx.x / heads, h = blockIdx.x % heads;
    const int q0 = blockIdx.y * FLASH_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    NEMESIS_DYNAMIC_SHARED(float, sd);
    float* sl = sd + FLASH_ROWS;
    T* sq = (T*)(sl + FLASH_ROWS);
    T* sdo = sq + FLASH_ROWS * dp;
    T* sk = sdo + FLASH_ROWS * dp;
    T* sv = sk + FLASH_TILE * dp;
    T* sds = sv + FLASH_TILE * dp + warp * 16 * FLASH_TILE;
    const float scale = 1.0f / sqrtf((float)dh);
    load_rows<BF16>(sq, qkv, l, s, q0, FLASH_ROWS, 3 * e, h * dh, dh, dp);
    load_rows<BF16>(sdo, dout, l, s, q0, FLASH_ROWS, e, h * dh, dh, dp);
    load_row_stats(sd, sl, out, dout, lse, l, s, h, heads, e, q0, FLASH_ROWS);
    const T* qw = sq + warp * 16 * dp;
    const T* dow = sdo + warp * 16 * dp;

    float dq[FLASH_MAX_NT][4];
#pragma unroll
    for (int n = 0; n < FLASH_MAX_NT; ++n)
        for (int k = 0; k < 4; ++k) dq[n][k] = 0.0f;
    for (int k0 = 0; k0 < l.len; k0 += FLASH_TILE) {
        __syncthreads();
        load_rows<BF16>(sk, qkv, l, s, k0, FLASH_TILE, 3 * e, e + h * dh, dh, dp);
        load_rows<BF16>(sv, qkv, l, s, k0, FLASH_TILE, 3 * e, 2 * e + h * dh, dh, dp);
        __syncthreads();
#pragma unroll
        for (int n = 0; n < FLASH_TILE / 8; ++n) {
            float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f}, dpv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (int kk = 0; kk < dp; kk += 16) {
                mma_tile(sc, qw + kk, dp, 1, sk + n * 8 * dp + kk, 1, dp);
                mma_tile(dpv, dow + kk, dp, 1, sv + n * 8 * dp + kk, 1, dp);
            }
            for (int k = 0; k < 4; ++k) {
                int row = g + 8 * (k >> 1), col = n * 8 + 2 * t + (k & 1);
                int i = q0 + warp * 16 + row, j = k0 + col;
                float ds = 0.0f;
                if (i < l.len && j < l.len) {
                    float pr = expf(sc[k] * scale - sl[warp * 16 + row]);
                    ds = pr * (dpv[k] * attn_keep(rng, p, heads, s, h, i, j, l.len) - sd[warp * 16 + row]);
                }
                sds[row * FLASH_TILE + col] = Elem<BF16>::put(ds);
            }
        }
        __syncwarp();
#pragma unroll
        for (int n = 0; n < FLASH_MAX_NT; ++n)
            if (n < nt)
                for (int kk = 0; kk < FLASH_TILE; kk += 16)
                    mma_tile(dq[n], sds + kk, FLASH_TILE, 1, sk + kk * dp + n * 8, dp, 1);
        __syncwarp();
    }
    // Fully unrolled, so dq[][] stays in registers.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int i = q0 + warp * 16 + g + 8 * r;
        if (i >= l.len) continue;
        uint64_t at = (uint64_t)seq_row(l, s, i) * 3 * e + h * dh;
#pragma unroll
        for (int n = 0; n < FLASH_MAX_NT; ++n)
#pragma unroll
            for (int q = 0; q < 2; ++q) {
                int c = n * 8 + 2 * t + q;
                if (n < nt && c < dh) put_out(dqkv, dqkv16, out16mode, at + c, dq[n][2 * r + q] * scale);
            }
    }
}

template <bool BF16, typename QT, typename OT>
__device__ void flash_backward_dkv_impl(const QT* qkv, const OT* out, const float* dout, const float* lse,
                                        float* dqkv, SeqLayout l, int heads, int e, double p, RngStream rng,
                                        uint16_t* dqkv16, int out16mode) {
    typedef typename Elem<BF16>::T T;
    const int dh = e / heads, dp = (dh + 15) & ~15, nt = dp / 8;
    const int s = blockIdx.x / heads, h = blockIdx.x % heads;
    const int k0 = blockIdx.y * FLASH_ROWS;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    NEMESIS_DYNAMIC_SHARED(float, sd);
    float* sl = sd + FLASH_TILE;
    T* sk = (T*)(sl + FLASH_TILE);
    T* sv = sk + FLASH_ROWS * dp;
    T* sq = sv + FLASH_ROWS * dp;
    T* sdo = sq + FLASH_TILE * dp;
    T* sps = sdo + FLASH_TILE * dp + warp * 16 * FLASH_TILE;
    const float scale = 1.0f / sqrtf((float)dh);
    load_rows<BF16>(sk, qkv, l, s, k0, FLASH_ROWS, 3 * e, e + h * dh, dh, dp);
    load_rows<BF16>(sv, qkv, l, s, k0, FLASH_ROWS, 3 * e, 2 * e + h * dh, dh, dp);
    const T* kw = sk + warp * 16 * dp;
    const T* vw = sv + warp * 16 * dp;

    float dk[FLASH_MAX_NT][4], dv[FLASH_MAX_NT][4];
#pragma unroll
    for (int n = 0; n < FLASH_MAX_NT; ++n)
        for (int k = 0; k < 4; ++k) dk[n][k] = dv[n][k] = 0.0f;
    for (int i0 = 0; i0 < l.len; i0 += FLASH_TILE) {
        __syncthreads();
        load_rows<BF16>(sq, qkv, l, s, i0, FLASH_TILE, 3 * e, h * dh, dh, dp);
        load_rows<BF16>(sdo, dout, l, s, i0, FLASH_TILE, e, h * dh, dh, dp);
        load_row_stats(sd, sl, out, dout, lse, l, s, h, heads, e, i0, FLASH_TILE);
        __syncthreads();
        // Transposed scores: rows are this warp's keys, columns the tile's queries.
        float pt[FLASH_TILE / 8][4], dpt[FLASH_TILE / 8][4];
#pragma unroll
        for (int n = 0; n < FLASH_TILE / 8; ++n) {
            for (int k = 0; k < 4; ++k) pt[n][k] = dpt[n][k] = 0.0f;
            for (int kk = 0; kk < dp; kk += 16) {
                mma_tile(pt[n], kw + kk, dp, 1, sq + n * 8 * dp + kk, 1, dp);
                mma_tile(dpt[n], vw + kk, dp, 1, sdo + n * 8 * dp + kk, 1, dp);
            }
            for (int k = 0; k < 4; ++k) {
                int row = g + 8 * (k >> 1), col = n * 8 + 2 * t + (k & 1);
                int j = k0 + warp * 16 + row, i = i0 + col;
                float pr = 0.0f, keep = 1.0f;
                if (i < l.len && j < l.len) {
                    pr = expf(pt[n][k] * scale - sl[col]);
                    keep = attn_keep(rng, p, heads, s, h, i, j, l.len);
                }
                pt[n][k] = pr;
                dpt[n][k] = pr * (dpt[n][k] * keep - sd[col]);  // dS, transposed
                sps[row * FLASH_TILE + col] = Elem<BF16>::put(pr * keep);
            }
        }
        __syncwarp();
#pragma unroll
        for (int n = 0; n < FLASH_MAX_NT; ++n)
            if (n < nt)
                for (int kk = 0; kk < FLASH_TILE; kk += 16)
                    mma_tile(dv[n], sps + kk, FLASH_TILE, 1, sdo + kk * dp + n * 8, dp, 1);
        __syncwarp();
#pragma unroll
        for (int n = 0; n < FLASH_TILE / 8; ++n) put_acc_tile<BF16>(sps, FLASH_TILE, n, dpt[n]);
        __syncwarp();
#pragma unroll
        for (int n = 0; n < FLASH_MAX_NT; ++n)
            if (n < nt)
                for (int kk = 0; kk < FLASH_TILE; kk += 16)
                    mma_tile(dk[n], sps + kk, FLASH_TILE, 1, sq + kk * dp + n * 8, dp, 1);
        __syncwarp();
    }
    // Fully unrolled, so dk[][] and dv[][] stay in registers.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        int j = k0 + warp * 16 + g + 8 * r;
        if (j >= l.len) continue;
        uint64_t at = (uint64_t)seq_row(l, s, j) * 3 * e + e + h * dh;
#pragma unroll
        for (int n = 0; n < FLASH_MAX_NT; ++n)
#pragma unroll
            for (int q = 0; q < 2; ++q) {
                int c = n * 8 + 2 * t + q;
                if (n < nt && c < dh) {
                    put_out(dqkv, dqkv16, out16mode, at + c, dk[n][2 * r + q] * scale);
                    put_out(dqkv, dqkv16, out16mode, at + e + c, dv[n][2 * r + q]);
                }
            }
    }
}

// The entry points. The bf16 kernels read Q, K, V and O as bf16 (the
// copies the GEMMs around them read or write; all there is of them when
// they are stored as bf16 alone) and write dQKV by `out16mode` (OUT16_*).
extern "C" __global__ void flash_forward_f32(const float* qkv, float* out, float* lse, SeqLayout l, int heads, int e,
                                             double p, RngStream rng, uint16_t* out16, int out16mode) {
    flash_forward_impl<false>(qkv, out, lse, l, heads, e, p, rng, out16, out16mode);
}

extern "C" __global__ void flash_forward_bf16(const uint16_t* qkv, float* out, float* lse, SeqLayout l, int heads,
                                              int e, double p, RngStream rng, uint16_t* out16, int out16mode) {
    flash_forward_impl<true>(qkv, out, lse, l, heads, e, p, rng, out16, out16mode);
}

extern "C" __global__ void flash_backward_dq_f32(const float* qkv, const float* out, const float* dout,
                                                 const float* lse, float* dqkv, SeqLayout l, int heads, int e,
                                                 double p, RngStream rng, uint16_t* dqkv16, int out16mode) {
    flash_backward_dq_impl<false>(qkv, out, dout, lse, dqkv, l, heads, e, p, rng, dqkv16, out16mode);
}

extern "C" __global__ void flash_backward_dq_bf16(const uint16_t* qkv, const uint16_t* out, const float* dout,
                                                  const float* lse, float* dqkv, SeqLayout l, int heads, int e,
                                                  double p, RngStream rng, uint16_t* dqkv16, int out16mode) {
    flash_backward_dq_impl<true>(qkv, out, dout, lse, dqkv, l, heads, e, p, rng, dqkv16, out16mode);
}

extern "C" __global__ void flash_backward_dkv_f32(const float* qkv, const float* out, const float* dout,
                                                  const float* lse, float* dqkv, SeqLayout l, int heads, int e,
                                                  double p, RngStream rng, uint16_t* dqkv16, int out16mode) {
    flash_backward_dkv_impl<false>(qkv, out, dout, lse, dqkv, l, heads, e, p, rng, dqkv16, out16mode);
}

extern "C" __global__ void flash_backward_dkv_bf16(const uint16_t* qkv, const uint16_t* out, const float* dout,
                                                   const float* lse, float* dqkv, SeqLayout l, int heads, int e,
                                                   double p, RngStream rng, uint16_t* dqkv16, int out16mode) {
    flash_backward_dkv_impl<true>(qkv, out, dout, lse, dqkv, l, heads, e, p, rng, dqkv16, out16mode);
}

// ---- probes of the tensor-core fragment layout --------------------------
// tests/mma_layout.rs checks them on the emulator against tables of its
// own transcribed from the PTX ISA, and `nemesis check` runs them on a
// GPU's tensor cores. One warp each.

// Lane l's A registers are a[4l … 4l+3] and its B registers b[2l], b[2l+1]
// (bf16 pairs, packed by the caller); its four accumulators, from zero, go
// to c[4l … 4l+3].
extern "C" __global__ void mma_fragment_probe(const uint32_t* a, const uint32_t* b, float* c) {
    int lane = threadIdx.x & 31;
    uint32_t ar[4] = {a[4 * lane], a[4 * lane + 1], a[4 * lane + 2], a[4 * lane + 3]};
    uint32_t br[2] = {b[2 * lane], b[2 * lane + 1]};
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    mma_m16n8k16(acc, ar, br);
    for (int k = 0; k < 4; ++k) c[4 * lane + k] = acc[k];
}

// The three products of the flash kernels on 16 × 16 row-major x and y,
// staged as the kernels stage their tiles (rows of 16, through Elem, so
// bf16 rounds), with the kernels' own mma_tile; lane l's accumulators of
// column tiles 0 and 1 go to c[8l … 8l+7]:
//   usage 0, Q·Kᵀ: x·yᵀ (x as Q rows, y as K rows);
//   usage 1, P·V: x·y (x as P, y as V rows);
//   usage 2, the dK/dV path: S = x·yᵀ kept in accumulators, written back
//   as a tile by put_acc_tile, then S·y as Pᵀ·dO is formed.
template <bool BF16>
__device__ void flash_mma_probe_impl(const float* x, const float* y, float* c, int usage) {
    typedef typename Elem<BF16>::T T;
    NEMESIS_DYNAMIC_SHARED(T, sx);
    T* sy = sx + 256;
    T* ss = sy + 256;
    int lane = threadIdx.x & 31;
    for (int i = lane; i < 256; i += 32) {
        sx[i] = Elem<BF16>::put(x[i]);
        sy[i] = Elem<BF16>::put(y[i]);
    }
    __syncwarp();
    float acc[2][4];
    for (int n = 0; n < 2; ++n)
        for (int k = 0; k < 4; ++k) acc[n][k] = 0.0f;
    if (usage == 1) {
        for (int n = 0; n < 2; ++n) mma_tile(acc[n], sx, 16, 1, sy + n * 8, 16, 1);
    } else {
        for (int n = 0; n < 2; ++n) mma_tile(acc[n], sx, 16, 1, sy + n * 8 * 16, 1, 16);
    }
    if (usage == 2) {
        for (int n = 0; n < 2; ++n) put_acc_tile<BF16>(ss, 16, n, acc[n]);
        __syncwarp();
        for (int n = 0; n < 2; ++n) {
            for (int k = 0; k < 4; ++k) acc[n][k] = 0.0f;
            mma_tile(acc[n], ss, 16, 1, sy + n * 8, 16, 1);
        }
    }
    for (int n = 0; n < 2; ++n)
        for (int k = 0; k < 4; ++k) c[8 * lane + 4 * n + k] = acc[n][k];
}

extern "C" __global__ void flash_mma_probe_f32(const float* x, const float* y, float* c, int usage) {
    flash_mma_probe_impl<false>(x, y, c, usage);
}

extern "C" __global__ void flash_mma_probe_bf16(const float* x, const float* y, float* c, int usage) {
    flash_mma_probe_impl<true>(x, y, c, usage);
}
