// The NMS CUDA kernels, run by their own launch plans (csrc/cuda/nms_kernels.cuh) under the emulated block model
// (block_model.h), behind a C interface for tests/test_cuda_emulated_nms.py. The host side of the launchers (the score
// sort, the gathers) is the test's. dtype: 0 float32, 1 float64 (boxes and scores already in it).
#include <c10/macros/Macros.h>

#include "block_model.h"

#include <vector>

#include "cuda/nms_kernels.cuh"

using namespace opmask_fast;

namespace {

// The bitmask as the launcher allocates it (uninitialised there: every word is written), filled with ones here so a
// word the mask kernel skips would suppress everything after it.
std::vector<unsigned long long> poisoned_mask(int64_t n) {
  return std::vector<unsigned long long>(static_cast<size_t>(n * nms_col_blocks(n)), ~0ULL);
}

template <typename acc_t>
void bitmask(int64_t n, double threshold, const void* sorted, bool* keep) {
  std::vector<unsigned long long> mask = poisoned_mask(n);
  nms_bitmask_plan<acc_t>(cuda_emulation::Launch{}, n, static_cast<float>(threshold),
                          static_cast<const acc_t*>(sorted), static_cast<const int64_t*>(nullptr), mask.data(), keep);
}

template <typename acc_t>
void grouped(int64_t n, const int64_t* group_order, const void* sorted, const void* sorted_scores, const int64_t* cls,
             double threshold, int64_t max_keep, bool* keep) {
  std::vector<uint8_t> removed(static_cast<size_t>(n), 0);
  nms_grouped_plan<acc_t>(cuda_emulation::Launch{}, n, group_order, static_cast<const acc_t*>(sorted),
                          static_cast<const acc_t*>(sorted_scores), cls, static_cast<float>(threshold), max_keep,
                          removed.data(), keep);
}

template <typename acc_t>
void topk(int64_t n, double threshold, const void* sorted, const int64_t* order, const void* sorted_scores,
          int64_t max_keep, int64_t* out, int64_t* count) {
  std::vector<unsigned long long> mask = poisoned_mask(n);
  nms_topk_plan<acc_t>(cuda_emulation::Launch{}, n, static_cast<float>(threshold), static_cast<const acc_t*>(sorted),
                       order, static_cast<const acc_t*>(sorted_scores), max_keep, mask.data(), out, count);
}

}  // namespace

extern "C" {

// keep[n]: flags of the score-sorted boxes (zeroed by the caller, as the launcher's).
int emu_nms_bitmask(int dtype, int64_t n, double threshold, const void* sorted, bool* keep, char* err, int err_len) {
  return cuda_emulation::guarded(err, err_len, [&] {
    dtype == 1 ? bitmask<double>(n, threshold, sorted, keep) : bitmask<float>(n, threshold, sorted, keep);
  });
}

// sorted_scores may be null (batched_nms: every box a candidate); keep zeroed by the caller.
int emu_nms_grouped(int dtype, int64_t n, const int64_t* group_order, const void* sorted, const void* sorted_scores,
                    const int64_t* cls, double threshold, int64_t max_keep, bool* keep, char* err, int err_len) {
  return cuda_emulation::guarded(err, err_len, [&] {
    dtype == 1 ? grouped<double>(n, group_order, sorted, sorted_scores, cls, threshold, max_keep, keep)
               : grouped<float>(n, group_order, sorted, sorted_scores, cls, threshold, max_keep, keep);
  });
}

// out[max_keep] filled with -1 and *count zeroed by the caller, as the launcher's.
int emu_nms_topk(int dtype, int64_t n, double threshold, const void* sorted, const int64_t* order,
                 const void* sorted_scores, int64_t max_keep, int64_t* out, int64_t* count, char* err, int err_len) {
  return cuda_emulation::guarded(err, err_len, [&] {
    dtype == 1 ? topk<double>(n, threshold, sorted, order, sorted_scores, max_keep, out, count)
               : topk<float>(n, threshold, sorted, order, sorted_scores, max_keep, out, count);
  });
}

}  // extern "C"
