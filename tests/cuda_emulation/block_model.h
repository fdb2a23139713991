// CUDA's execution model on the CPU, enough to run the extension's kernels (csrc/cuda/*_kernels.cuh) unchanged: each
// thread of a block is a std::thread, __syncthreads a barrier, __shared__ a static (blocks run one after another,
// so one copy serves every block), dynamic shared memory one buffer per launch, gpuAtomicAdd an atomic add. The tests
// then compare what the GPU code computes with the CPU kernels and the float64 reference, on a machine without a GPU.
//
// Checked on every block: no CUDA_KERNEL_ASSERT fails (a failing one ends its thread, as a trap ends a GPU kernel),
// and all threads pass the same number of barriers (a barrier under a divergent branch is a bug on a GPU even where
// it happens to work); either fails the launch with an exception.
// Included before any kernel header, after <c10/macros/Macros.h> (whose host CUDA_KERNEL_ASSERT would abort).
#pragma once

#include <c10/macros/Macros.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_emulation {

inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline thread_local std::barrier<>* block_barrier = nullptr;
inline thread_local int64_t barriers_passed = 0;
inline std::atomic<int64_t> failed_block{-1};  // the first block in which a CUDA_KERNEL_ASSERT failed, or -1
inline const char* failed_condition = "";       // its condition
inline std::vector<unsigned char> dynamic_smem;
constexpr int kWatchdogSeconds = 300;

// A failed CUDA_KERNEL_ASSERT ends its thread, as a trap ends the kernel on a GPU; the launch then fails.
struct AssertFailure {
  const char* condition;
};

inline void sync_threads() {
  ++barriers_passed;
  block_barrier->arrive_and_wait();
}

// Runs body() as every thread of every block of grid (threads x 1 x 1 per block), one block after another: the
// block's threads are a pool of std::threads that meet at a second barrier between blocks.
template <typename Body>
void run_grid(dim3 grid, unsigned threads, Body body) {
  grid_dim = grid;
  block_dim = dim3(threads);
  failed_block = -1;
  const int64_t blocks = static_cast<int64_t>(grid.x) * grid.y * grid.z;
  std::vector<std::unique_ptr<std::barrier<>>> inside;
  for (int64_t b = 0; b < blocks; ++b) inside.push_back(std::make_unique<std::barrier<>>(threads));
  std::barrier<> between(threads);
  std::vector<int64_t> passed(static_cast<size_t>(blocks * threads), 0);
  // A launch that never ends (threads waiting at a barrier no other thread reaches) would hang the test run: after
  // kWatchdogSeconds the process stops with a message instead.
  std::mutex done_mutex;
  std::condition_variable done_cv;
  bool done = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(done_mutex);
    if (!done_cv.wait_for(lock, std::chrono::seconds(kWatchdogSeconds), [&] { return done; })) {
      std::fprintf(stderr, "cuda_emulation: a launch of %u x %u blocks did not end in %d s; stopping\n", grid.x,
                   grid.y, kWatchdogSeconds);
      std::abort();
    }
  });
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      thread_idx = dim3(t);
      for (int64_t b = 0; b < blocks; ++b) {
        block_idx = dim3(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                         static_cast<unsigned>(b / grid.x / grid.y));
        block_barrier = inside[b].get();
        barriers_passed = 0;
        try {
          body();
        } catch (const AssertFailure& failure) {
          int64_t none = -1;
          if (failed_block.compare_exchange_strong(none, b)) failed_condition = failure.condition;
        }
        passed[b * threads + t] = barriers_passed;
        block_barrier->arrive_and_drop();  // an exited thread no longer holds the others at a barrier
        between.arrive_and_wait();         // the next block starts when this one has ended (shared memory is one)
        // Stop after the block an assert failed in. Compared with b: a thread of the next block may already have
        // failed it, and every thread must take the same decision here.
        const int64_t failed = failed_block;
        if (failed >= 0 && failed <= b) return;
      }
    });
  for (auto& th : pool) th.join();
  {
    std::lock_guard<std::mutex> lock(done_mutex);
    done = true;
  }
  done_cv.notify_one();
  watchdog.join();
  auto where = [&](int64_t b) {
    return "block (" + std::to_string(b % grid.x) + ", " + std::to_string(b / grid.x % grid.y) + ")";
  };
  if (failed_block >= 0)
    throw std::runtime_error("CUDA_KERNEL_ASSERT(" + std::string(failed_condition) + ") failed in " +
                             where(failed_block));
  for (int64_t b = 0; b < blocks; ++b) {
    for (unsigned t = 1; t < threads; ++t)
      if (passed[b * threads + t] != passed[b * threads])
        throw std::runtime_error(where(b) + ": thread " + std::to_string(t) + " passed " +
                                 std::to_string(passed[b * threads + t]) + " barriers, thread 0 " +
                                 std::to_string(passed[b * threads]));
  }
}

// The launcher the kernels' plans take (csrc/cuda/cuda_launch.cuh is the GPU's).
// Its dynamic shared memory is one buffer, filled with 0xff bytes before the launch so that a kernel reading what
// it did not write sees garbage.
struct Launch {
  template <typename... KernelArgs, typename... Args>
  void operator()(dim3 grid, int threads, size_t shared_bytes, void (*kernel)(KernelArgs...), Args... args) const {
    dynamic_smem.assign(shared_bytes + 16, 0xff);
    run_grid(grid, static_cast<unsigned>(threads), [&] { kernel(static_cast<KernelArgs>(args)...); });
  }
};

// The C entry points of the emulated ops: 0, or 1 with the exception's message in err.
template <typename F>
int guarded(char* err, int err_len, F body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, static_cast<size_t>(err_len), "%s", e.what());
    return 1;
  }
}

}  // namespace cuda_emulation

#define threadIdx (::cuda_emulation::thread_idx)
#define blockIdx (::cuda_emulation::block_idx)
#define blockDim (::cuda_emulation::block_dim)
#define gridDim (::cuda_emulation::grid_dim)
#define __syncthreads() ::cuda_emulation::sync_threads()
#define __global__
#define __device__
#define __shared__ static
#undef CUDA_KERNEL_ASSERT
#define CUDA_KERNEL_ASSERT(cond) \
  do {                           \
    if (!(cond)) throw ::cuda_emulation::AssertFailure{#cond}; \
  } while (0)

template <typename T>
inline T gpuAtomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}

template <typename T>
inline T* dynamic_shared() {
  return reinterpret_cast<T*>(::cuda_emulation::dynamic_smem.data());
}
