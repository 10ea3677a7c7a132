// The emulator's launch loop (see emu.h). Each block's threads are fibers
// on the calling host thread: a fiber runs until it waits at a barrier or
// returns, then the next one runs; when the last thread still running
// arrives at a barrier, the others waiting there may go on. A block whose
// threads wait at barriers nobody else can reach is a deadlock on a GPU
// too, and is reported instead of hanging.
//
// The fibers and their stacks live as long as the host thread and serve
// every block and launch it makes. A fiber switch saves the callee-saved
// registers and swaps stacks (x86-64: a few instructions below; elsewhere
// ucontext, slower but the same).
//
// Static `__shared__` arrays are not provided: kernels declare dynamic
// shared memory (NEMESIS_DYNAMIC_SHARED), which every block receives filled
// with 0xFF bytes (NaN as floats, -1 as ints) and followed by a guard zone
// that is checked after the block, as a GPU's shared memory holds whatever
// the last block left and has no room past its size.
#include "emu.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

thread_local EmuThread* emu_cur = nullptr;

namespace {

// Bytes of stack per fiber (kernels keep small register arrays; the deepest
// uses a few KiB), below a guard page that faults on overflow.
constexpr size_t STACK_BYTES = 128 * 1024;
constexpr unsigned MAX_THREADS = 1024;
constexpr size_t SHARED_GUARD = 256;
constexpr unsigned char SHARED_FILL = 0xFF;
constexpr unsigned char GUARD_FILL = 0xA5;

enum class State { Ready, AtBlock, AtWarp, Done };

#if defined(__x86_64__)
// emu_switch(save, to): pushes the callee-saved registers, stores the stack
// pointer in *save, loads `to` and pops the registers saved there.
extern "C" void emu_switch(void** save, void* to);
// The first frame of a fresh fiber returns here: r12 holds the fiber's
// argument and r13 its entry point; the entry never returns.
extern "C" void emu_fiber_start();
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch

    .globl emu_fiber_start
    .type emu_fiber_start, @function
emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size emu_fiber_start, .-emu_fiber_start
)");
#endif

struct Fiber {
    EmuThread st;
    State state = State::Ready;
    unsigned char* stack = nullptr;  // the mapping, guard page first
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
};

class Scheduler {
  public:
    ~Scheduler() {
        for (auto& f : fibers_)
            if (f->stack) munmap(f->stack, STACK_BYTES);
    }

    const char* run(const EmuLaunch* cfg, const std::function<void()>& kernel) {
        error_.clear();
        const dim3 grid{cfg->grid[0], cfg->grid[1], cfg->grid[2]};
        const dim3 block{cfg->block[0], cfg->block[1], cfg->block[2]};
        const unsigned long long n = (unsigned long long)block.x * block.y * block.z;
        if (n == 0 || n > MAX_THREADS) return fail("a block of " + std::to_string(n) + " threads");
        const unsigned threads = (unsigned)n;
        if (!ensure(threads)) return error_.c_str();
        const unsigned warps = (threads + 31) / 32;
        shared_.assign(cfg->shared_bytes + SHARED_GUARD, 0);
        warp_slots_.assign(warps * 32, 0.0f);
        warp_words_.assign(warps * 32 * 8, 0);
        warp_live_.assign(warps, 0);
        warp_arrived_.assign(warps, 0);
        kernel_ = &kernel;
        auto along = [&](unsigned extent, unsigned i) {
            return !cfg->corners_only || i == 0 || i + 1 == extent;
        };
        for (unsigned bz = 0; bz < grid.z; ++bz) {
            if (!along(grid.z, bz)) continue;
            for (unsigned by = 0; by < grid.y; ++by) {
                if (!along(grid.y, by)) continue;
                for (unsigned bx = 0; bx < grid.x; ++bx) {
                    if (!along(grid.x, bx)) {
                        bx = grid.x - 2;  // on to the last block of the row
                        continue;
                    }
                    if (!run_block(dim3{bx, by, bz}, grid, block, threads, cfg->shared_bytes)) {
                        kernel_ = nullptr;
                        return error_.c_str();
                    }
                }
            }
        }
        kernel_ = nullptr;
        return nullptr;
    }

    void block_barrier() {
        Fiber& f = *fibers_[current_];
        if (++block_arrived_ == live_) {
            release(State::AtBlock, ~0u);
            return;
        }
        f.state = State::AtBlock;
        yield(f);
    }

    void warp_barrier() {
        Fiber& f = *fibers_[current_];
        const unsigned w = f.st.warp;
        if (++warp_arrived_[w] == warp_live_[w]) {
            release(State::AtWarp, w);
            return;
        }
        f.state = State::AtWarp;
        yield(f);
    }

  private:
    // Every waiting thread of kind `at` (of warp `w` for warp barriers) may go on.
    void release(State at, unsigned w) {
        if (at == State::AtBlock) {
            block_arrived_ = 0;
        } else {
            warp_arrived_[w] = 0;
        }
        for (unsigned i = 0; i < threads_; ++i) {
            Fiber& o = *fibers_[i];
            if (o.state == at && (at == State::AtBlock || o.st.warp == w)) o.state = State::Ready;
        }
    }

    bool run_block(dim3 b, dim3 grid, dim3 block, unsigned threads, unsigned shared_bytes) {
        std::fill(shared_.begin(), shared_.begin() + shared_bytes, SHARED_FILL);
        std::fill(shared_.begin() + shared_bytes, shared_.end(), GUARD_FILL);
        threads_ = threads;
        live_ = threads;
        block_arrived_ = 0;
        std::fill(warp_arrived_.begin(), warp_arrived_.end(), 0u);
        for (unsigned w = 0; w < warp_live_.size(); ++w) warp_live_[w] = std::min(32u, threads - w * 32);
        for (unsigned t = 0; t < threads; ++t) {
            Fiber& f = *fibers_[t];
            f.state = State::Ready;
            f.st.thread_idx = dim3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            f.st.block_idx = b;
            f.st.block_dim = block;
            f.st.grid_dim = grid;
            f.st.dynamic_shared = shared_.data();
            f.st.warp = t / 32;
            f.st.lane = t % 32;
            f.st.warp_slots = warp_slots_.data() + (t / 32) * 32;
            f.st.warp_words = warp_words_.data() + (t / 32) * 32 * 8;
        }
        unsigned done = 0;
        while (done < threads) {
            bool ran = false;
            for (unsigned t = 0; t < threads; ++t) {
                if (fibers_[t]->state != State::Ready) continue;
                ran = true;
                resume(t);
                if (fibers_[t]->state == State::Done) ++done;
            }
            if (!ran && done < threads) {
                unsigned at_block = 0, at_warp = 0;
                for (unsigned t = 0; t < threads; ++t) {
                    at_block += fibers_[t]->state == State::AtBlock;
                    at_warp += fibers_[t]->state == State::AtWarp;
                }
                // The stuck fibers are left where they are and restarted
                // from their entry at the next launch.
                reset();
                fail("deadlock in block (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " +
                     std::to_string(b.z) + "): " + std::to_string(at_block) + " threads wait at __syncthreads and " +
                     std::to_string(at_warp) + " at a warp barrier, and none can go on");
                return false;
            }
        }
        for (unsigned i = shared_bytes; i < shared_.size(); ++i) {
            if (shared_[i] != GUARD_FILL) {
                fail("block (" + std::to_string(b.x) + ", " + std::to_string(b.y) + ", " + std::to_string(b.z) +
                     ") wrote past its " + std::to_string(shared_bytes) + " bytes of dynamic shared memory (at +" +
                     std::to_string(i - shared_bytes) + ")");
                return false;
            }
        }
        return true;
    }

    // A thread has returned: it leaves every barrier, which may release the
    // threads that were only waiting for it.
    void finished(Fiber& f) {
        f.state = State::Done;
        --live_;
        --warp_live_[f.st.warp];
        if (block_arrived_ > 0 && block_arrived_ == live_) release(State::AtBlock, ~0u);
        const unsigned w = f.st.warp;
        if (warp_arrived_[w] > 0 && warp_arrived_[w] == warp_live_[w]) release(State::AtWarp, w);
    }

    static void entry(void* arg) {
        auto* s = static_cast<Scheduler*>(arg);
        for (;;) {
            Fiber& f = *s->fibers_[s->current_];
            (*s->kernel_)();
            s->finished(f);
            s->yield(f);
        }
    }

    bool ensure(unsigned threads) {
        while (fibers_.size() < threads) {
            fibers_.push_back(std::make_unique<Fiber>());
            Fiber& f = *fibers_.back();
            void* m = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                           -1, 0);
            if (m == MAP_FAILED) {
                fibers_.pop_back();
                fail("no memory for the stack of emulated thread " + std::to_string(fibers_.size()));
                return false;
            }
            f.stack = static_cast<unsigned char*>(m);
            mprotect(f.stack, (size_t)sysconf(_SC_PAGESIZE), PROT_NONE);
            start(f);
        }
        return true;
    }

    // Puts a fiber at the start of `entry`.
    void start(Fiber& f) {
#if defined(__x86_64__)
        // The frame emu_switch pops: r15, r14, r13 (entry), r12 (argument),
        // rbx, rbp, then the return address; after that return the stack is
        // 16-byte aligned for the call in emu_fiber_start.
        auto top = reinterpret_cast<uintptr_t>(f.stack + STACK_BYTES) & ~uintptr_t(15);
        auto* slot = reinterpret_cast<void**>(top - 24);
        slot[0] = reinterpret_cast<void*>(&emu_fiber_start);
        slot[-1] = nullptr;                                           // rbp
        slot[-2] = nullptr;                                           // rbx
        slot[-3] = static_cast<void*>(this);                          // r12
        slot[-4] = reinterpret_cast<void*>(&Scheduler::entry);        // r13
        slot[-5] = nullptr;                                           // r14
        slot[-6] = nullptr;                                           // r15
        f.sp = slot - 6;
#else
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, &Scheduler::trampoline, 0);
#endif
    }

#if !defined(__x86_64__)
    static void trampoline() { entry(self_); }
    static thread_local Scheduler* self_;
#endif

    void reset() {
        for (auto& f : fibers_) start(*f);
    }

    void resume(unsigned t) {
        current_ = t;
        Fiber& f = *fibers_[t];
        emu_cur = &f.st;
#if defined(__x86_64__)
        emu_switch(&sched_sp_, f.sp);
#else
        self_ = this;
        swapcontext(&sched_ctx_, &f.ctx);
#endif
        emu_cur = nullptr;
    }

    void yield(Fiber& f) {
#if defined(__x86_64__)
        emu_switch(&f.sp, sched_sp_);
#else
        swapcontext(&f.ctx, &sched_ctx_);
#endif
        // Resumed by the scheduler, which has set emu_cur again.
    }

    const char* fail(const std::string& what) {
        error_ = what;
        return error_.c_str();
    }

    // Boxed, so a fiber's saved context never moves when more are added.
    std::vector<std::unique_ptr<Fiber>> fibers_;
    const std::function<void()>* kernel_ = nullptr;
    unsigned current_ = 0, threads_ = 0, live_ = 0, block_arrived_ = 0;
    std::vector<unsigned> warp_live_, warp_arrived_;
    std::vector<unsigned char> shared_;
    std::vector<float> warp_slots_;
    std::vector<uint32_t> warp_words_;
    std::string error_;
#if defined(__x86_64__)
    void* sched_sp_ = nullptr;
#else
    ucontext_t sched_ctx_;
#endif
};

#if !defined(__x86_64__)
thread_local Scheduler* Scheduler::self_ = nullptr;
#endif

thread_local Scheduler scheduler;

}  // namespace

void emu_block_barrier() { scheduler.block_barrier(); }
void emu_warp_barrier() { scheduler.warp_barrier(); }

const char* emu_run(const EmuLaunch* cfg, const std::function<void()>& kernel) { return scheduler.run(cfg, kernel); }
