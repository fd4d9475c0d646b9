// hostemu.h: runs gpucnn's CUDA C kernels on the CPU, for tests on machines without a GPU.
//
// Force-included (g++ -include hostemu.h) before a kernels/*.cu file, which is then compiled
// as ordinary C++20. Each CUDA thread of a block is a fiber (ucontext) on one OS thread; blocks
// run one after another. __syncthreads() and warp operations (__syncwarp, shuffles, the TF32
// mma) suspend the fiber until every thread of the block (or lanes of the warp) has arrived, so
// a kernel that reads shared memory before a barrier others have not reached sees stale data,
// as it might on a GPU. Barriers are strict: a thread that exits while others of its block wait
// at __syncthreads, or a deadlock, is an error. __shared__ variables are static: one copy, shared
// by the threads of the running block. Only the subset of CUDA C the kernels use is provided.
// What this cannot show: timing, occupancy, register spills, real hardware rounding of fused
// multiply-adds. Those need a GPU (and compute-sanitizer).
//
// Closer to a device than plain C++ (each mode has a planted bug it catches, tests/test_emulator.py):
//  * shared memory is poisoned (a NaN pattern) at every block's start, so a read before any write
//    shows (the library tells the emulator where its __shared__ arrays are: gpucnn_shared_ranges);
//  * GPUCNN_HOSTEMU_ORDER=shuffle (seed GPUCNN_HOSTEMU_SEED) runs the threads between barriers, and the
//    blocks of a grid, in a random order, and lands each cp.async at a random moment between its issue
//    and its wait; "reverse" reverses the threads; "forward" (default) runs everything in order and
//    lands cp.async at the wait.
// Built with GPUCNN_HOSTEMU_HOOKS defined (and g++'s -fsanitize=thread, which calls a hook on every
// memory access of the kernels: hostemu.Module(..., instrumented=True)), it can also
//  * check every global access of a kernel against the live allocations (gpucnn_check_begin): one
//    outside all of them is an error naming the kernel, where a GPU would read garbage or fault;
//  * count the shared-memory wavefronts a GPU needs for every warp-wide shared access (see
//    "Shared-memory wavefronts" below), running only the first blocks of a grid (gpucnn.perf.banks).
#pragma once
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <string>
#ifdef GPUCNN_HOSTEMU_HOOKS
#include <link.h>

#include <map>
#include <unordered_map>
#endif
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define GPUCNN_HOSTEMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 { unsigned x, y, z; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

namespace hostemu {

enum class Wait { running, block, warp, done, failed };

// An asynchronous copy (cp.async) in flight: the source was read when it was issued, the shared
// memory is written only when the thread waits for it (cp_async_wait_all), as on a device, so a
// kernel that reads its copy before waiting reads stale data here too.
struct Pending {
    float* dst;
    float v[4];
    int n;
};

struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    unsigned lane, warp;
    Wait wait;
    char* stack;
    std::vector<Pending> pending;
#ifdef GPUCNN_HOSTEMU_HOOKS
    std::unordered_map<uintptr_t, unsigned> seen;  // shared-access site -> times this thread executed it
#endif
};

// The library's __shared__ arrays ([lo, hi) addresses, sorted), from its symbol table (hostemu.py reads it
// with nm: the function-local statics): poisoned at each block's start, and what the counter counts.
inline std::vector<std::pair<uintptr_t, uintptr_t>> shared_ranges;
constexpr uint32_t kPoison = 0x7FC0DEADu;  // a quiet NaN: a float read before any write propagates it

inline bool in_ranges(const std::vector<std::pair<uintptr_t, uintptr_t>>& ranges, uintptr_t a) {
    auto it = std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(a, ~uintptr_t(0)));
    return it != ranges.begin() && a < std::prev(it)->second;
}

inline void poison_shared() {
    for (auto [lo, hi] : shared_ranges)
        for (uintptr_t a = lo; a + 4 <= hi; a += 4) memcpy(reinterpret_cast<void*>(a), &kPoison, 4);
}

// GPUCNN_HOSTEMU_ORDER=shuffle: the random source of every shuffled choice (threads, blocks, cp.async).
inline bool shuffled() {
    const char* mode = getenv("GPUCNN_HOSTEMU_ORDER");
    return mode && !strcmp(mode, "shuffle");
}
inline uint64_t order_state = 0;
inline uint64_t random_bits() {  // xorshift64, seeded by GPUCNN_HOSTEMU_SEED
    if (order_state == 0) {
        const char* seed = getenv("GPUCNN_HOSTEMU_SEED");
        order_state = (seed ? strtoull(seed, nullptr, 10) : 1) * 0x9E3779B97F4A7C15ull + 1;
    }
    order_state ^= order_state << 13;
    order_state ^= order_state >> 7;
    order_state ^= order_state << 17;
    return order_state;
}

constexpr size_t kStack = 256 * 1024;  // per thread; a guard page below catches overflow
constexpr size_t kPage = 4096;
constexpr int kSlotWords = 16;          // 8-byte words a lane may publish to its warp

inline ucontext_t sched;
inline Fiber* cur = nullptr;
inline uint3 block_idx, block_dim, grid_dim;
inline std::string error;
inline std::vector<uint64_t> exchange;  // [warp][lane][kSlotWords]
inline void (*body)(void*) = nullptr;
inline void* body_arg = nullptr;

#ifdef GPUCNN_HOSTEMU_HOOKS
// True while a fiber runs kernel code: the hooks ignore this runtime's own accesses (each of its functions
// a kernel calls opens a Runtime scope) and the scheduler's.
inline bool in_kernel = false;
struct Runtime {
    bool was;
    __attribute__((no_sanitize_thread)) Runtime() : was(in_kernel) { in_kernel = false; }
    __attribute__((no_sanitize_thread)) ~Runtime() { in_kernel = was; }
};
#define HOSTEMU_RUNTIME ::hostemu::Runtime hostemu_runtime_scope
#else
#define HOSTEMU_RUNTIME
#endif

inline uint64_t* slot(unsigned warp, unsigned lane) {
    return &exchange[(size_t(warp) * 32 + lane) * kSlotWords];
}

inline void land(const Pending& p) {
    for (int i = 0; i < p.n; ++i) p.dst[i] = p.v[i];
}

inline void suspend(Wait w) {
    HOSTEMU_RUNTIME;
    if (shuffled()) {  // the thread's copies in flight may land at any moment before its wait: now, or later
        auto& pending = cur->pending;
        for (size_t i = 0; i < pending.size();) {
            if (random_bits() & 1) {
                land(pending[i]);
                pending.erase(pending.begin() + long(i));
            } else {
                ++i;
            }
        }
    }
    cur->wait = w;
    swapcontext(&cur->ctx, &sched);
}

inline void fail(const std::string& msg) {
    HOSTEMU_RUNTIME;
    if (error.empty()) error = msg;
    suspend(Wait::failed);  // never resumed
}

inline void full_mask(unsigned mask, const char* what) {
    if (mask != 0xffffffffu) fail(std::string(what) + ": only full-warp masks are emulated");
}

inline void trampoline() {
    body(body_arg);
    HOSTEMU_RUNTIME;
    if (!cur->pending.empty()) fail("a thread exited with cp.async copies it never waited for");
    cur->wait = Wait::done;
}

#ifdef GPUCNN_HOSTEMU_HOOKS
// ---- Shared-memory wavefronts ---------------------------------------------------------------------
//
// Every access of a thread to shared memory (one of the library's __shared__ arrays) is recorded with its
// address, its width and its site (the code address of
// the access: one per SASS-like instruction, unrolled copies apart). The n-th execution of a site by
// each lane of a warp is one warp-wide request, as on a GPU where the warp issues it once. A request
// costs the wavefronts the hardware needs to serve it (one wavefront a clock an SM, 128 bytes), by
// these rules:
//  * 32 banks of 4-byte words; lanes touching one word share it (a read broadcasts it, a write stores
//    one value); different words in one bank take one wavefront each (CUDA C++ Programming Guide,
//    "Shared Memory", compute capability 5.x and later).
//  * A request's lanes go in groups of 128 bytes of addresses: all 32 lanes for 1- to 4-byte accesses,
//    half-warps for 8-byte ones, quarter-warps for 16-byte ones; a group costs the most distinct words
//    any bank holds among its lanes (1 without a conflict). If every active lane's address equals that
//    of lane ^ 1 (or of lane ^ 2) wherever both are active, only half the addresses are distinct and
//    groups are twice as wide: an unpaired LDS.128 takes 4 wavefronts, a paired one 2 (NVIDIA's answer
//    on the NVIDIA Developer Forums, "Unexpected shared memory bank conflict", 2019, for LDS.128; the
//    same return path of 128 bytes a clock serves 8-byte accesses, so we apply it there too).
//  * A cp.async's destination is a write of its width, counted when it is issued.
// ideal: the groups a request has (its wavefronts without any conflict). The host compiler decides the
// width of an access, so 16-byte shared accesses go through lds128/sts128 (common.cuh), which record
// one 16-byte access; the compiler would split a float4 into four 4-byte ones. An access the compiler
// proves needs no hook (a constant address it keeps in a register) is not seen: the kernels' shared
// accesses all have thread-dependent addresses.
namespace banks {

struct Request {
    uint64_t addr[32];
    uint32_t mask = 0;
    unsigned width = 0, kind = 0;
};
enum Kind { LOAD, STORE, CP_ASYNC };  // a cp.async's destination: a store, issued by the async unit
struct Site {
    unsigned width = 0, kind = 0;
    uint64_t requests = 0, wavefronts = 0, ideal = 0, lanes = 0;
};

inline bool recording = false;
inline unsigned max_blocks = 0;  // run only the first blocks of a grid (0: all)
inline std::map<std::tuple<unsigned, uintptr_t, unsigned>, Request> requests;  // (warp, site, n-th)
inline std::map<uintptr_t, Site> sites;                                         // by site offset

inline void record(uintptr_t site, uintptr_t a, unsigned width, unsigned kind) {
    HOSTEMU_RUNTIME;
    Dl_info info;
    const uintptr_t base = dladdr(reinterpret_cast<void*>(site), &info) ? uintptr_t(info.dli_fbase) : 0;
    const uintptr_t key = site - base;
    Request& r = requests[{cur->warp, key, cur->seen[key]++}];
    r.addr[cur->lane] = a;
    r.mask |= 1u << cur->lane;
    r.width = width;
    r.kind = kind;
}

// (wavefronts, ideal) of one request, by the rules above.
inline std::pair<unsigned, unsigned> cost(const Request& r) {
    const unsigned w = r.width < 4 ? 4 : r.width, words = w / 4;
    unsigned group = w <= 4 ? 32 : 128 / w;
    if (w > 4) {
        for (unsigned step : {1u, 2u}) {
            bool paired = true;
            for (unsigned l = 0; l < 32 && paired; ++l)
                if ((r.mask >> l & 1) && (r.mask >> (l ^ step) & 1) && r.addr[l] != r.addr[l ^ step]) paired = false;
            if (paired) {
                group *= 2;
                break;
            }
        }
    }
    unsigned wavefronts = 0, ideal = 0;
    for (unsigned g0 = 0; g0 < 32; g0 += group) {
        uint64_t seen[32][32 * 4];  // the distinct words each bank holds (a group touches at most 128 words)
        unsigned count[32] = {}, most = 0;
        for (unsigned l = g0; l < g0 + group; ++l) {
            if (!(r.mask >> l & 1)) continue;
            for (unsigned k = 0; k < words; ++k) {
                const uint64_t word = r.addr[l] / 4 + k;
                const unsigned b = unsigned(word % 32);
                unsigned i = 0;
                while (i < count[b] && seen[b][i] != word) ++i;
                if (i == count[b]) seen[b][count[b]++] = word;
                most = count[b] > most ? count[b] : most;
            }
        }
        if (!most) continue;  // no active lane in the group
        wavefronts += most;
        ideal += 1;
    }
    return {wavefronts, ideal};
}

// The block's requests priced and added to their sites (at the end of every block).
inline void settle() {
    HOSTEMU_RUNTIME;
    for (auto& [key, r] : requests) {
        const auto [wavefronts, ideal] = cost(r);
        Site& s = sites[std::get<1>(key)];
        s.width = r.width;
        s.kind = r.kind;
        s.requests += 1;
        s.wavefronts += wavefronts;
        s.ideal += ideal;
        s.lanes += unsigned(__builtin_popcount(r.mask));
    }
    requests.clear();
}

// A 16-byte shared access recorded as one (common.cuh's lds128), done without the hooks.
template <int N>
__attribute__((noinline)) void load(const float* p, float* out);
}  // namespace banks

// ---- Global accesses against the live allocations ------------------------------------------------
namespace check {
inline bool on = false;
inline std::vector<std::pair<uintptr_t, uintptr_t>> allocations;  // [lo, hi), sorted
inline uintptr_t seg_lo = 0, seg_hi = 0;   // the library's writable segment: its __shared__ arrays, our state
inline uintptr_t fibers_lo = 0, fibers_hi = 0, job_lo = 0, job_hi = 0;  // the threads' records, the arguments

inline int find_segment(dl_phdr_info* info, size_t, void*) {
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        const uintptr_t lo = info->dlpi_addr + ph.p_vaddr, hi = lo + ph.p_memsz;
        if (ph.p_type == PT_LOAD && (ph.p_flags & PF_W) && uintptr_t(&seg_lo) >= lo && uintptr_t(&seg_lo) < hi) {
            seg_lo = lo;
            seg_hi = hi;
            return 1;
        }
    }
    return 0;
}

inline bool allowed(uintptr_t a, unsigned width) {
    const uintptr_t z = a + width - 1;
    auto within = [a, z](uintptr_t lo, uintptr_t hi) { return a >= lo && z < hi; };
    if (within(seg_lo, seg_hi) || within(fibers_lo, fibers_hi) || within(job_lo, job_hi)) return true;
    if (within(uintptr_t(cur->stack), uintptr_t(cur->stack) + kStack + kPage)) return true;
    auto it = std::upper_bound(allocations.begin(), allocations.end(), std::make_pair(a, ~uintptr_t(0)));
    return it != allocations.begin() && z < std::prev(it)->second;
}
}  // namespace check

// Every access of kernel code: -fsanitize=thread calls these hooks (its runtime is not linked).
__attribute__((no_sanitize_thread)) inline void access(uintptr_t site, const void* p, unsigned width, unsigned kind) {
    if (!in_kernel) return;
    in_kernel = false;  // the containers below are instrumented too: their accesses are not the kernel's
    const uintptr_t a = uintptr_t(p);
    const bool shared = in_ranges(shared_ranges, a);
    if (shared && banks::recording) banks::record(site, a, width, kind);
    if (!shared && check::on && !check::allowed(a, width)) {  // fail() does not return (in_kernel stays false)
        char msg[160];
        snprintf(msg, sizeof msg, "a global %s of %u bytes at %#lx is outside every live allocation",
                 kind ? "write" : "read", width, (unsigned long)a);
        fail(msg);
    }
    in_kernel = true;
}

template <int N>
__attribute__((noinline, no_sanitize_thread)) void banks::load(const float* p, float* out) {
    access(uintptr_t(__builtin_return_address(0)), p, 4 * N, LOAD);
    memcpy(out, p, 4 * N);
}

extern "C" {
#define GPUCNN_HOOK(name, kind, n)                                                                            \
    __attribute__((no_sanitize_thread)) void __tsan_##name##n(void* p) {                                      \
        access(uintptr_t(__builtin_return_address(0)), p, n, banks::kind);                                    \
    }                                                                                                         \
    __attribute__((no_sanitize_thread)) void __tsan_unaligned_##name##n(void* p) {                            \
        access(uintptr_t(__builtin_return_address(0)), p, n, banks::kind);                                    \
    }
GPUCNN_HOOK(read, LOAD, 1) GPUCNN_HOOK(read, LOAD, 2) GPUCNN_HOOK(read, LOAD, 4) GPUCNN_HOOK(read, LOAD, 8)
GPUCNN_HOOK(read, LOAD, 16) GPUCNN_HOOK(write, STORE, 1) GPUCNN_HOOK(write, STORE, 2) GPUCNN_HOOK(write, STORE, 4)
GPUCNN_HOOK(write, STORE, 8) GPUCNN_HOOK(write, STORE, 16)
#undef GPUCNN_HOOK
__attribute__((no_sanitize_thread)) void __tsan_read_range(void*, unsigned long) {}
__attribute__((no_sanitize_thread)) void __tsan_write_range(void*, unsigned long) {}
__attribute__((no_sanitize_thread)) void __tsan_func_entry(void*) {}
__attribute__((no_sanitize_thread)) void __tsan_func_exit() {}
__attribute__((no_sanitize_thread)) void __tsan_init() {}
__attribute__((no_sanitize_thread)) void __tsan_vptr_update(void*, void*) {}
__attribute__((no_sanitize_thread)) void __tsan_vptr_read(void*) {}

// gpucnn.perf.banks: start recording (and run only the first `blocks` blocks of each grid, 0: all);
// then read the sites: their count, and each one's offset in the library, width, kind (banks::Kind),
// requests, wavefronts, ideal wavefronts and active lanes.
__attribute__((no_sanitize_thread)) void gpucnn_banks_begin(unsigned blocks) {
    banks::sites.clear();
    banks::requests.clear();
    banks::max_blocks = blocks;
    banks::recording = true;
}
__attribute__((no_sanitize_thread)) int gpucnn_banks_sites() {
    banks::recording = false;
    return int(banks::sites.size());
}
__attribute__((no_sanitize_thread)) void gpucnn_banks_site(int i, unsigned long long* out) {
    auto it = banks::sites.begin();
    std::advance(it, i);
    const banks::Site& s = it->second;
    const unsigned long long row[] = {it->first, s.width, s.kind, s.requests, s.wavefronts, s.ideal, s.lanes};
    memcpy(out, row, sizeof row);
}

// Check the global accesses of the launches that follow against these allocations ([address, bytes)
// pairs, n of them; every live device array), until gpucnn_check_end.
__attribute__((no_sanitize_thread)) void gpucnn_check_begin(const unsigned long long* pairs, int n) {
    if (!check::seg_hi) dl_iterate_phdr(check::find_segment, nullptr);
    check::allocations.clear();
    for (int i = 0; i < n; ++i) check::allocations.push_back({uintptr_t(pairs[2 * i]), uintptr_t(pairs[2 * i] + pairs[2 * i + 1])});
    std::sort(check::allocations.begin(), check::allocations.end());
    check::on = true;
}
__attribute__((no_sanitize_thread)) void gpucnn_check_end() { check::on = false; }
}
#endif

extern "C" {
// The library's __shared__ arrays, as (offset in the library, bytes) pairs (hostemu.py reads its symbol table).
__attribute__((visibility("default"))) void gpucnn_shared_ranges(const unsigned long long* pairs, int n) {
    Dl_info info;
    const uintptr_t base = dladdr(reinterpret_cast<void*>(&gpucnn_shared_ranges), &info) ? uintptr_t(info.dli_fbase) : 0;
    shared_ranges.clear();
    for (int i = 0; i < n; ++i)
        shared_ranges.push_back({base + uintptr_t(pairs[2 * i]), base + uintptr_t(pairs[2 * i] + pairs[2 * i + 1])});
    std::sort(shared_ranges.begin(), shared_ranges.end());
}
}

// cp.async of n (1 or 4) floats, zero-filled when !valid (src-size 0: the source is not read). Where
// hooked, the destination counts as a shared store and the source is checked as a global read.
#ifdef GPUCNN_HOSTEMU_HOOKS
__attribute__((noinline, no_sanitize_thread))
#endif
inline void cp_async(float* dst, const float* src, int n, bool valid) {
#ifdef GPUCNN_HOSTEMU_HOOKS
    const uintptr_t site = uintptr_t(__builtin_return_address(0));
    access(site, dst, 4 * unsigned(n), banks::CP_ASYNC);
    if (valid) access(site, src, 4 * unsigned(n), banks::LOAD);
#endif
    HOSTEMU_RUNTIME;
    if (n == 4 && (reinterpret_cast<uintptr_t>(dst) % 16 || (valid && reinterpret_cast<uintptr_t>(src) % 16)))
        fail("misaligned 16-byte cp.async (shared or global address not a multiple of 16)");
    Pending p{dst, {0.f, 0.f, 0.f, 0.f}, n};
    if (valid)
        for (int i = 0; i < n; ++i) p.v[i] = src[i];
    if (shuffled() && (random_bits() & 3) == 0)
        land(p);  // it may land at once
    else
        cur->pending.push_back(p);
}

inline void cp_async_wait_all() {
    HOSTEMU_RUNTIME;
    for (const Pending& p : cur->pending) land(p);
    cur->pending.clear();
}

template <class... A, size_t... I>
std::tuple<A...> unpack(void** args, std::index_sequence<I...>) {
    return std::tuple<A...>{*static_cast<A*>(args[I])...};
}

template <class... A>
struct Job {
    void (*kernel)(A...);
    std::tuple<A...> args;
    static void run(void* p) {
        auto* j = static_cast<Job*>(p);
        std::apply(j->kernel, j->args);
    }
};

// The order threads run in between two barriers, from GPUCNN_HOSTEMU_ORDER: "forward" (default),
// "reverse", or "shuffle" (a fresh random order at every barrier, seeded by GPUCNN_HOSTEMU_SEED).
// A kernel whose result depends on it reads shared or global memory that another thread of its
// block writes without a barrier between them: a race that would make it wrong on a GPU.
template <class T>
void shuffle_in_place(std::vector<T>& v) {  // Fisher-Yates
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[random_bits() % i]);
}
inline void next_order(std::vector<unsigned>& order, unsigned n) {
    const char* mode = getenv("GPUCNN_HOSTEMU_ORDER");
    order.resize(n);
    for (unsigned i = 0; i < n; ++i) order[i] = i;
    if (!mode || !strcmp(mode, "forward")) return;
    if (!strcmp(mode, "reverse")) {
        for (unsigned i = 0; i < n; ++i) order[i] = n - 1 - i;
        return;
    }
    shuffle_in_place(order);
}

// Runs every block of the grid; returns 0, or 1 with `err` filled.
inline int schedule(std::vector<Fiber>& fibers, const unsigned* grid, const unsigned* block) {
    const unsigned n = unsigned(fibers.size());
    std::vector<unsigned> order;
    const unsigned nwarps = (n + 31) / 32;
    const uint64_t blocks = uint64_t(grid[0]) * grid[1] * grid[2];
    std::vector<uint64_t> block_order;  // shuffled: the blocks in a random order (as a GPU may run them)
#ifdef GPUCNN_HOSTEMU_HOOKS
    const bool counting = banks::recording && banks::max_blocks;  // the first blocks only, in order
#else
    const bool counting = false;
#endif
    if (shuffled() && !counting) {
        block_order.resize(blocks);
        for (uint64_t b = 0; b < blocks; ++b) block_order[b] = b;
        shuffle_in_place(block_order);
    }
    for (uint64_t b0 = 0; b0 < blocks; ++b0) {
#ifdef GPUCNN_HOSTEMU_HOOKS
        if (counting && b0 == banks::max_blocks) return 0;
#endif
        const uint64_t b = block_order.empty() ? b0 : block_order[b0];
        block_idx = {unsigned(b % grid[0]), unsigned(b / grid[0] % grid[1]), unsigned(b / grid[0] / grid[1])};
        poison_shared();
        for (unsigned i = 0; i < n; ++i) {
            Fiber& f = fibers[i];
            f.tid = {i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
            f.lane = i % 32;
            f.warp = i / 32;
            f.wait = Wait::running;
#ifdef GPUCNN_HOSTEMU_HOOKS
            f.seen.clear();
#endif
            getcontext(&f.ctx);
            f.ctx.uc_stack.ss_sp = f.stack + kPage;
            f.ctx.uc_stack.ss_size = kStack;
            f.ctx.uc_link = &sched;
            makecontext(&f.ctx, trampoline, 0);
        }
        for (;;) {
            next_order(order, n);
            for (unsigned j = 0; j < n; ++j) {
                const unsigned i = order[j];
                if (fibers[i].wait != Wait::running) continue;
                cur = &fibers[i];
#ifdef GPUCNN_HOSTEMU_HOOKS
                in_kernel = true;
                swapcontext(&sched, &cur->ctx);
                in_kernel = false;
#else
                swapcontext(&sched, &cur->ctx);
#endif
                if (!error.empty()) return 1;
            }
            // Everyone is parked. Release warps whose live lanes all wait at a warp barrier.
            bool released = false;
            for (unsigned w = 0; w < nwarps; ++w) {
                unsigned lo = w * 32, hi = std::min(n, lo + 32), waiting = 0, done = 0;
                for (unsigned i = lo; i < hi; ++i) {
                    waiting += fibers[i].wait == Wait::warp;
                    done += fibers[i].wait == Wait::done;
                }
                if (waiting && waiting + done == hi - lo) {
                    if (done) {
                        error = "a lane exited while the rest of its warp waits at a warp-wide operation";
                        return 1;
                    }
                    for (unsigned i = lo; i < hi; ++i) fibers[i].wait = Wait::running;
                    released = true;
                }
            }
            if (released) continue;
            unsigned at_block = 0, done = 0;
            for (auto& f : fibers) {
                at_block += f.wait == Wait::block;
                done += f.wait == Wait::done;
            }
            if (done == n) {
#ifdef GPUCNN_HOSTEMU_HOOKS
                banks::settle();
#endif
                break;
            }
            if (at_block + done == n) {
                if (done) {
                    error = "__syncthreads(): some threads of the block exited while others wait at it";
                    return 1;
                }
                for (auto& f : fibers) f.wait = Wait::running;
                continue;
            }
            error = "deadlock: threads wait at __syncthreads() while lanes of their warps wait at a warp-wide operation";
            return 1;
        }
    }
    return 0;
}

template <class... A>
int launch(void (*kernel)(A...), const unsigned* grid, const unsigned* block, void** args, const long* sizes,
           int nargs, char* err, int errlen) {
    auto report = [&](const std::string& msg) {
        snprintf(err, size_t(errlen), "%s", msg.c_str());
        return 1;
    };
    if (nargs != int(sizeof...(A)))
        return report("the kernel takes " + std::to_string(sizeof...(A)) + " arguments, " + std::to_string(nargs) +
                      " were passed");
    const size_t want[] = {sizeof(A)..., 0};
    for (int i = 0; i < nargs; ++i)
        if (size_t(sizes[i]) != want[i])
            return report("argument " + std::to_string(i) + " is " + std::to_string(want[i]) +
                          " bytes in the kernel's signature but a " + std::to_string(sizes[i]) +
                          "-byte value was passed (pass np.int32 / np.float32 / arrays explicitly)");
    const unsigned n = block[0] * block[1] * block[2];
    if (n == 0 || n > 1024) return report("a block must have 1 to 1024 threads, not " + std::to_string(n));
    if (block[2] > 64) return report("blockDim.z is at most 64");
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0) return report("every grid dimension must be at least 1");
    if (grid[1] > 65535 || grid[2] > 65535) return report("gridDim.y and gridDim.z are at most 65535");

    Job<A...> job{kernel, unpack<A...>(args, std::index_sequence_for<A...>{})};
    body = &Job<A...>::run;
    body_arg = &job;
    block_dim = {block[0], block[1], block[2]};
    grid_dim = {grid[0], grid[1], grid[2]};
    error.clear();
    exchange.assign(size_t((n + 31) / 32) * 32 * kSlotWords, 0);

    std::vector<Fiber> fibers(n);
    for (auto& f : fibers) {
        void* p = mmap(nullptr, kStack + kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return report("out of memory for thread stacks");
        mprotect(p, kPage, PROT_NONE);
        f.stack = static_cast<char*>(p);
    }
#ifdef GPUCNN_HOSTEMU_HOOKS
    check::fibers_lo = uintptr_t(fibers.data()), check::fibers_hi = uintptr_t(fibers.data() + n);
    check::job_lo = uintptr_t(&job), check::job_hi = uintptr_t(&job + 1);
#endif
    const int rc = schedule(fibers, grid, block);
    for (auto& f : fibers) munmap(f.stack, kStack + kPage);
    cur = nullptr;
    if (rc) return report(error);
    return 0;
}

inline float tf32_value(unsigned u) {  // the tensor core reads only the TF32 bits
    u &= 0xffffe000u;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

}  // namespace hostemu

#define threadIdx (hostemu::cur->tid)
#define blockIdx (hostemu::block_idx)
#define blockDim (hostemu::block_dim)
#define gridDim (hostemu::grid_dim)
#define warpSize 32

inline void __syncthreads() { hostemu::suspend(hostemu::Wait::block); }
inline void __syncwarp(unsigned mask = 0xffffffffu) {
    hostemu::full_mask(mask, "__syncwarp");
    hostemu::suspend(hostemu::Wait::warp);
}

namespace hostemu {
template <class T>
T shuffle(unsigned mask, T v, unsigned src, const char* what) {
    static_assert(sizeof(T) <= 8, "shuffle of a value wider than 8 bytes");
    HOSTEMU_RUNTIME;
    full_mask(mask, what);
    uint64_t* mine = slot(cur->warp, cur->lane);
    memcpy(mine, &v, sizeof(T));
    __syncwarp();
    T out;
    memcpy(&out, slot(cur->warp, src), sizeof(T));
    __syncwarp();
    return out;
}
}  // namespace hostemu

template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
    unsigned lane = hostemu::cur->lane, base = lane - lane % unsigned(width);
    return hostemu::shuffle(mask, v, base + unsigned(src_lane) % unsigned(width), "__shfl_sync");
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    unsigned lane = hostemu::cur->lane, src = lane + delta;
    if (src % unsigned(width) < lane % unsigned(width) || src / unsigned(width) != lane / unsigned(width)) src = lane;
    return hostemu::shuffle(mask, v, src, "__shfl_down_sync");
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    unsigned lane = hostemu::cur->lane, src = lane ^ unsigned(lane_mask);
    if (src / unsigned(width) != lane / unsigned(width)) src = lane;
    return hostemu::shuffle(mask, v, src, "__shfl_xor_sync");
}

// Blocks run one after another and one thread at a time: memory fences have nothing to order.
inline void __threadfence() {}

// One thread runs at a time, so atomics are plain read-modify-writes.
template <class T>
T atomicAdd(T* p, T v) {
    T old = *p;
    *p = old + v;
    return old;
}
template <class T>
T atomicCAS(T* p, T compare, T v) {
    T old = *p;
    if (old == compare) *p = v;
    return old;
}
inline int atomicMax(int* p, int v) {
    int old = *p;
    if (v > old) *p = v;
    return old;
}

inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
template <class T>
T __ldg(const T* p) { return *p; }
inline float4 __ldg(const float4* p) {  // a GPU faults on a misaligned vector load; so do we
    if (reinterpret_cast<uintptr_t>(p) % 16) hostemu::fail("misaligned 16-byte load (float4 from an address not a multiple of 16)");
    return *p;
}
inline unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
inline float __uint_as_float(unsigned u) { float f; memcpy(&f, &u, 4); return f; }
inline int __float_as_int(float f) { int i; memcpy(&i, &f, 4); return i; }
inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
template <class T, class U>
auto min(T a, U b) -> std::common_type_t<T, U> { return b < a ? b : a; }
template <class T, class U>
auto max(T a, U b) -> std::common_type_t<T, U> { return a < b ? b : a; }

namespace hostemu {
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32, D = A B + D, with the PTX ISA's fragment
// layout (g = lane / 4, t = lane % 4): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
// b0 (k=t, n=g), b1 (k=t+4, n=g); d0 (g, 2t), d1 (g, 2t+1), d2 (g+8, 2t), d3 (g+8, 2t+1).
inline void mma_m16n8k8_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
    HOSTEMU_RUNTIME;
    uint64_t* mine = slot(cur->warp, cur->lane);
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    for (int i = 0; i < 2; ++i) mine[4 + i] = b[i];
    __syncwarp();
    float A[16][8], B[8][8];
    for (unsigned l = 0; l < 32; ++l) {
        const uint64_t* s = slot(cur->warp, l);
        unsigned g = l / 4, t = l % 4;
        A[g][t] = tf32_value(unsigned(s[0]));
        A[g + 8][t] = tf32_value(unsigned(s[1]));
        A[g][t + 4] = tf32_value(unsigned(s[2]));
        A[g + 8][t + 4] = tf32_value(unsigned(s[3]));
        B[t][g] = tf32_value(unsigned(s[4]));
        B[t + 4][g] = tf32_value(unsigned(s[5]));
    }
    __syncwarp();
    unsigned g = cur->lane / 4, t = cur->lane % 4;
    const unsigned rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
    for (int i = 0; i < 4; ++i) {
        float acc = d[i];
        for (int k = 0; k < 8; ++k) acc += A[rows[i]][k] * B[k][cols[i]];
        d[i] = acc;
    }
}
}  // namespace hostemu
