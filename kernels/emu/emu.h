// The CUDA built-ins the nemesis kernels use, for running them on the CPU.
// Blocks run one after another; the threads of a block are fibers (each
// with its own stack) on the calling thread, switched at __syncthreads,
// __syncwarp and the warp exchanges, so shared-memory code behaves as on a
// GPU and a block whose threads never meet costs a function call a thread.
// Only what the kernels use is here; a kernel that needs more must add it
// here first (with a test), so the emulator stays honest.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct dim3 {
    unsigned int x, y, z;
};

// One emulated GPU thread: its indices and its warp's exchange slots.
struct EmuThread {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
    unsigned char* dynamic_shared;
    // Warp-level exchange: 32 slots per warp of the block.
    float* warp_slots;
    // Eight 32-bit words per lane for warp-wide exchanges (tensor-core MMA).
    uint32_t* warp_words;
    unsigned int lane, warp;
};

// The thread running now (set by the scheduler before it switches to a fiber).
extern thread_local EmuThread* emu_cur;

#define threadIdx (emu_cur->thread_idx)
#define blockIdx (emu_cur->block_idx)
#define blockDim (emu_cur->block_dim)
#define gridDim (emu_cur->grid_dim)

// Waits until every thread of the block still running has arrived (a
// thread that has returned no longer takes part, as on the GPU).
void emu_block_barrier();
// The same among the lanes of the calling thread's warp.
void emu_warp_barrier();

inline void __syncthreads() { emu_block_barrier(); }
inline unsigned char* emu_dynamic_shared() { return emu_cur->dynamic_shared; }

// Warps of 32 consecutive threads, as on the GPU. A shuffle is two warp
// barriers around an exchange through the warp's slots; every lane of the
// warp must take part (full mask), which is what the kernels do.
inline float __shfl_xor_sync(unsigned int, float v, int lane_mask) {
    emu_cur->warp_slots[emu_cur->lane] = v;
    emu_warp_barrier();
    float r = emu_cur->warp_slots[(emu_cur->lane ^ (unsigned int)lane_mask) & 31u];
    emu_warp_barrier();
    return r;
}

inline void __syncwarp(unsigned int = 0xffffffffu) { emu_warp_barrier(); }

inline float __uint_as_float(unsigned int u) {
    float v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 as the PTX ISA lays
// out its fragments (g = lane / 4, t = lane % 4): A's four registers hold
// bf16 pairs (row g | g+8, columns 2t, 2t+1 | +8), B's two hold (rows 2t,
// 2t+1 | +8, column g), C's four floats are (row g | g+8, columns 2t, 2t+1).
// Every lane publishes its registers, then computes its own C from the whole
// warp's A and B, so a kernel that packs fragments wrongly fails here too.
// (tests/mma_layout.rs checks this against tables of its own, and `nemesis
// check` runs the same probe on a GPU's tensor cores.)
inline void emu_mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    uint32_t* w = emu_cur->warp_words;
    const unsigned int lane = emu_cur->lane;
    for (int i = 0; i < 4; ++i) w[lane * 8 + i] = a[i];
    w[lane * 8 + 4] = b[0];
    w[lane * 8 + 5] = b[1];
    emu_warp_barrier();
    auto half = [](uint32_t word, int hi) {
        uint32_t bits = hi ? (word >> 16) : (word & 0xffffu);
        return __uint_as_float(bits << 16);
    };
    auto A = [&](int m, int k) { return half(w[((m % 8) * 4 + (k % 8) / 2) * 8 + (m >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)], k & 1); };
    auto B = [&](int k, int n) { return half(w[(n * 4 + (k % 8) / 2) * 8 + 4 + (k >= 8 ? 1 : 0)], k & 1); };
    const int g = (int)lane / 4, t = (int)lane % 4;
    float d[4];
    for (int r = 0; r < 2; ++r)
        for (int q = 0; q < 2; ++q) {
            float s = 0.0f;
            for (int k = 0; k < 16; ++k) s += A(g + 8 * r, k) * B(k, 2 * t + q);
            d[2 * r + q] = c[2 * r + q] + s;
        }
    emu_warp_barrier();
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}

inline unsigned int __float_as_uint(float v) {
    unsigned int u;
    std::memcpy(&u, &v, sizeof u);
    return u;
}

inline long long __double_as_longlong(double v) {
    long long u;
    std::memcpy(&u, &v, sizeof u);
    return u;
}

inline double __longlong_as_double(long long u) {
    double v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}

// Double-precision operations rounded to nearest and never fused into a
// multiply-add. build.rs compiles the emulator as ISO C++20 (where GCC
// and Clang contract nothing) for baseline x86-64 (which has no FMA), so
// the plain operators are these.
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

// The threads of a launch run on one host thread, but launches on several
// host threads may share memory, so the add stays atomic.
inline float atomicAdd(float* addr, float v) {
    std::atomic_ref<float> a(*addr);
    float old = a.load();
    while (!a.compare_exchange_weak(old, old + v)) {
    }
    return old;
}

// Launch geometry from Rust, and the runner every launch shim uses.
struct EmuLaunch {
    unsigned int grid[3];
    unsigned int block[3];
    unsigned int shared_bytes;
    // Run only the blocks at the corners of the grid (first and last along
    // each axis): the paper-size dry run's way of reaching every extreme
    // index without the arithmetic of the whole grid.
    unsigned int corners_only;
};

// Runs `kernel` over the launch; returns null, or a message (valid until
// the next launch on this thread) when the launch broke a rule of the GPU.
const char* emu_run(const EmuLaunch* cfg, const std::function<void()>& kernel);
