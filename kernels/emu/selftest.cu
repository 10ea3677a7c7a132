// The emulator's self-tests: kernels that break a GPU rule on purpose, so
// tests/emu_rules.rs can show the emulator catches what a GPU would get
// wrong in silence or hang on. Compiled into the emulator only, never by
// NVRTC, and launched by nothing but those tests.
#include "../common.cuh"

// Copies the block's dynamic shared memory, as it finds it, to out (one
// float per thread): what a block sees before writing any.
extern "C" __global__ void selftest_read_fresh_shared(float* out, int n) {
    NEMESIS_DYNAMIC_SHARED(float, s);
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = s[threadIdx.x];
}

// Each thread writes its shared slot at `offset` floats: past the launch's
// dynamic shared memory when offset + blockDim.x exceeds it.
extern "C" __global__ void selftest_write_shared(int offset) {
    NEMESIS_DYNAMIC_SHARED(float, s);
    s[offset + threadIdx.x] = 1.0f;
}

// Half of the first warp waits at __syncthreads, the other half at
// __syncwarp: neither barrier can complete (a hang on a GPU).
extern "C" __global__ void selftest_split_barriers(float* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncwarp();
    }
    out[threadIdx.x] = 1.0f;
}

// Adds 1 to y[i] for i in [0, n) with a grid-stride loop; a caller that
// gives a shorter buffer than n writes past its end.
extern "C" __global__ void selftest_add_one(float* y, uint64_t n) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        y[i] += 1.0f;
}

// Threads exchange values through shared memory with a barrier between
// the write and the read: out[i] = i of the thread opposite in the block.
extern "C" __global__ void selftest_reverse_block(float* out) {
    NEMESIS_DYNAMIC_SHARED(float, s);
    s[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[blockIdx.x * blockDim.x + threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

// Not a broken rule: Box–Muller's parts as common.cuh computes them, in
// double before the rounding to float hides them, for k[i] (a 24-bit value
// each): ln(k[i]·2⁻²⁴) (k[i] ≥ 1), then cos and sin of 2π·k[i]·2⁻²⁴.
// tests/emu_kernels.rs compares them bit for bit with src/rng.rs.
extern "C" __global__ void selftest_box_muller_parts(const uint32_t* k, double* out, uint64_t n) {
    uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x;
    if (i < n) {
        out[3 * i] = rng_ln_unit(k[i] < 1 ? 1 : k[i]);
        rng_sin_cos_turn(k[i] & 0xFFFFFF, &out[3 * i + 1], &out[3 * i + 2]);
    }
}
