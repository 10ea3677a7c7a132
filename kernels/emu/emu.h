// The CUDA built-ins the nemesis kernels use, for running them on the CPU.
// Blocks run one after another; the threads of a block run as real threads
// that meet at __syncthreads, so shared-memory code behaves as on a GPU.
// Only what the kernels use is here; a kernel that needs more must add it
// here first (with a test), so the emulator stays honest.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <math.h>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
// One block runs at a time, so a function-level static is exactly one
// block's shared memory.
#define __shared__ static

struct dim3 {
    unsigned int x, y, z;
};

struct EmuThread {
    dim3 thread_idx, block_idx, block_dim, grid_dim;
    std::barrier<>* barrier;
    unsigned char* dynamic_shared;
    // Warp-level exchange: one barrier and 32 slots per warp of the block.
    std::barrier<>* warp_barrier;
    float* warp_slots;
    // Eight 32-bit words per lane for warp-wide exchanges (tensor-core MMA).
    uint32_t* warp_words;
    unsigned int lane;
};

extern thread_local EmuThread emu_thread;

#define threadIdx (emu_thread.thread_idx)
#define blockIdx (emu_thread.block_idx)
#define blockDim (emu_thread.block_dim)
#define gridDim (emu_thread.grid_dim)

inline void __syncthreads() { emu_thread.barrier->arrive_and_wait(); }
inline unsigned char* emu_dynamic_shared() { return emu_thread.dynamic_shared; }

// Warps of 32 consecutive threads, as on the GPU. A shuffle is two warp
// barriers around an exchange through the warp's slots; every lane of the
// warp must take part (full mask), which is what the kernels do.
inline float __shfl_xor_sync(unsigned int, float v, int lane_mask) {
    emu_thread.warp_slots[emu_thread.lane] = v;
    emu_thread.warp_barrier->arrive_and_wait();
    float r = emu_thread.warp_slots[(emu_thread.lane ^ (unsigned int)lane_mask) & 31u];
    emu_thread.warp_barrier->arrive_and_wait();
    return r;
}

inline void __syncwarp(unsigned int = 0xffffffffu) { emu_thread.warp_barrier->arrive_and_wait(); }

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
inline void emu_mma_m16n8k16_bf16(float c[4], const uint32_t a[4], const uint32_t b[2]) {
    uint32_t* w = emu_thread.warp_words;
    const unsigned int lane = emu_thread.lane;
    for (int i = 0; i < 4; ++i) w[lane * 8 + i] = a[i];
    w[lane * 8 + 4] = b[0];
    w[lane * 8 + 5] = b[1];
    emu_thread.warp_barrier->arrive_and_wait();
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
    emu_thread.warp_barrier->arrive_and_wait();
    for (int i = 0; i < 4; ++i) c[i] = d[i];
}

inline unsigned int __float_as_uint(float v) {
    unsigned int u;
    std::memcpy(&u, &v, sizeof u);
    return u;
}

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
};

void emu_run(const EmuLaunch* cfg, const std::function<void()>& kernel);
