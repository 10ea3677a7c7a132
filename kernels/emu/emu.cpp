// The emulator's launch loop (see emu.h).
#include "emu.h"

thread_local EmuThread emu_thread;

void emu_run(const EmuLaunch* cfg, const std::function<void()>& kernel) {
    const dim3 grid{cfg->grid[0], cfg->grid[1], cfg->grid[2]};
    const dim3 block{cfg->block[0], cfg->block[1], cfg->block[2]};
    const unsigned int threads = block.x * block.y * block.z;
    std::vector<unsigned char> shared(cfg->shared_bytes + 16);
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                std::barrier<> barrier((std::ptrdiff_t)threads);
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned int t = 0; t < threads; ++t) {
                    pool.emplace_back([&, t] {
                        emu_thread.thread_idx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                        emu_thread.block_idx = dim3{bx, by, bz};
                        emu_thread.block_dim = block;
                        emu_thread.grid_dim = grid;
                        emu_thread.barrier = &barrier;
                        emu_thread.dynamic_shared = shared.data();
                        kernel();
                        // A finished thread leaves the barrier, as an exited
                        // GPU thread no longer takes part in __syncthreads.
                        barrier.arrive_and_drop();
                    });
                }
                for (auto& th : pool) th.join();
            }
}
