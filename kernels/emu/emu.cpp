// The emulator's launch loop (see emu.h). The threads of a block come from a
// pool that lives as long as the calling thread and is reused by every
// block and launch, so a launch costs a wake-up, not a thread creation per
// emulated GPU thread.
#include "emu.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>

thread_local EmuThread emu_thread;

namespace {

class Pool {
  public:
    ~Pool() {
        {
            std::lock_guard<std::mutex> lk(m_);
            stop_ = true;
        }
        start_.notify_all();
        for (auto& w : workers_) w.join();
    }

    // Runs job(t) for t in 0..n on n pool threads and waits for all of them.
    void run(unsigned int n, const std::function<void(unsigned int)>& job) {
        while (workers_.size() < n) {
            unsigned int id = (unsigned int)workers_.size();
            workers_.emplace_back([this, id] { loop(id); });
        }
        {
            std::lock_guard<std::mutex> lk(m_);
            job_ = &job;
            active_ = n;
            remaining_ = n;
            ++generation_;
        }
        start_.notify_all();
        std::unique_lock<std::mutex> lk(m_);
        done_.wait(lk, [&] { return remaining_ == 0; });
        job_ = nullptr;
    }

  private:
    void loop(unsigned int id) {
        unsigned long long seen = 0;
        for (;;) {
            const std::function<void(unsigned int)>* job;
            {
                std::unique_lock<std::mutex> lk(m_);
                start_.wait(lk, [&] { return stop_ || (generation_ != seen && id < active_); });
                if (stop_) return;
                seen = generation_;
                job = job_;
            }
            (*job)(id);
            {
                std::lock_guard<std::mutex> lk(m_);
                if (--remaining_ == 0) done_.notify_all();
            }
        }
    }

    std::mutex m_;
    std::condition_variable start_, done_;
    std::vector<std::thread> workers_;
    const std::function<void(unsigned int)>* job_ = nullptr;
    unsigned int active_ = 0, remaining_ = 0;
    unsigned long long generation_ = 0;
    bool stop_ = false;
};

thread_local Pool pool;

}  // namespace

void emu_run(const EmuLaunch* cfg, const std::function<void()>& kernel) {
    const dim3 grid{cfg->grid[0], cfg->grid[1], cfg->grid[2]};
    const dim3 block{cfg->block[0], cfg->block[1], cfg->block[2]};
    const unsigned int threads = block.x * block.y * block.z;
    std::vector<unsigned char> shared(cfg->shared_bytes + 16);
    const unsigned int warps = (threads + 31) / 32;
    std::vector<float> warp_slots(warps * 32);
    std::vector<uint32_t> warp_words(warps * 32 * 8);
    for (unsigned int bz = 0; bz < grid.z; ++bz)
        for (unsigned int by = 0; by < grid.y; ++by)
            for (unsigned int bx = 0; bx < grid.x; ++bx) {
                // Fresh barriers per block: a thread that left one early
                // (arrive_and_drop) must not change the next block's count.
                std::barrier<> barrier((std::ptrdiff_t)threads);
                std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
                for (unsigned int wi = 0; wi < warps; ++wi)
                    warp_barriers.push_back(std::make_unique<std::barrier<>>((std::ptrdiff_t)std::min(32u, threads - wi * 32)));
                pool.run(threads, [&](unsigned int t) {
                    emu_thread.thread_idx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
                    emu_thread.block_idx = dim3{bx, by, bz};
                    emu_thread.block_dim = block;
                    emu_thread.grid_dim = grid;
                    emu_thread.barrier = &barrier;
                    emu_thread.dynamic_shared = shared.data();
                    emu_thread.warp_barrier = warp_barriers[t / 32].get();
                    emu_thread.warp_slots = warp_slots.data() + (t / 32) * 32;
                    emu_thread.warp_words = warp_words.data() + (t / 32) * 32 * 8;
                    emu_thread.lane = t % 32;
                    kernel();
                    // A finished thread leaves the barriers, as an exited
                    // GPU thread no longer takes part in __syncthreads.
                    barrier.arrive_and_drop();
                    emu_thread.warp_barrier->arrive_and_drop();
                });
            }
}
