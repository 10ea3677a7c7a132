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
