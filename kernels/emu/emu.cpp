// The emulator's launch loop (see emu.h).
#include "emu.h"

#include <algorithm>

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
                const unsigned int warps = (threads + 31) / 32;
                std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
                for (unsigned int wi = 0; wi < warps; ++wi)
                    warp_barriers.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)std::min(32u, threads - wi * 32)));
                std::vector<float> warp_slots(warps * 32);
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
                        emu_thread.warp_barrier = warp_barriers[t / 32].get();
                        emu_thread.warp_slots = warp_slots.data() + (t / 32) * 32;
                        emu_thread.lane = t % 32;
                        kernel();
                        // A finished thread leaves the barriers, as an exited
                        // GPU thread no longer takes part in __syncthreads.
                        barrier.arrive_and_drop();
                        emu_thread.warp_barrier->arrive_and_drop();
                    });
                }
                for (auto& th : pool) th.join();
            }
}
