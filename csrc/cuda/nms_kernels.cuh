// The NMS CUDA kernels and their launch plans, free of ATen so that the same code also runs on the CPU under
// tests/cuda_emulation (see roi_align_kernels.cuh); the launchers in nms_kernel.cu sort and gather on the host side
// of a plan.
//
// Boxes are sorted by descending score. nms_mask_kernel sets bit j of mask[i][j / 64] when box j (later in the
// order) overlaps box i above the threshold - and, with categories, has the same category. nms_gather_kernel then
// walks the boxes in order in a single block, OR-ing the rows of kept boxes into a shared "removed" bitmap; only the
// boolean keep flags leave the kernel. nms_topk_gather_kernel walks the same way, writes the kept boxes' indices
// and their count and stops at max_keep. nms_grouped_kernel walks each category on its own (below).
#pragma once

#include <cmath>
#include <cstdint>

#include "../nms_common.h"

namespace opmask_fast {

constexpr int kBoxesPerWord = 64;
// The gather kernels keep one bit per box in shared memory.
constexpr int64_t kMaxSharedBytes = 48 * 1024;
// Threads of a block of the grouped walk, and its most blocks.
constexpr int kGroupedThreads = 256;
constexpr int64_t kMaxGroupedBlocks = 4096;

#ifdef __CUDACC__
// The launch's dynamic shared memory (the emulation brings its own).
template <typename T>
__device__ inline T* dynamic_shared() {
  extern __shared__ __align__(16) unsigned char dynamic_smem[];
  return reinterpret_cast<T*>(dynamic_smem);
}
#endif

template <typename acc_t>
__global__ void nms_mask_kernel(int64_t n, float threshold, const acc_t* __restrict__ boxes,
                                const int64_t* __restrict__ cls, unsigned long long* __restrict__ mask,
                                int64_t col_blocks) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;  // only later boxes can be suppressed: the lower triangle is never read
  const int64_t row_left = n - row_block * kBoxesPerWord, col_left = n - col_block * kBoxesPerWord;
  const int64_t row_size = row_left < kBoxesPerWord ? row_left : kBoxesPerWord;
  const int64_t col_size = col_left < kBoxesPerWord ? col_left : kBoxesPerWord;
  __shared__ acc_t col_boxes[kBoxesPerWord * 5];
  __shared__ int64_t col_cls[kBoxesPerWord];
  if (threadIdx.x < col_size) {
    const acc_t* b = boxes + (col_block * kBoxesPerWord + threadIdx.x) * 4;
    acc_t* s = col_boxes + threadIdx.x * 5;
    s[0] = b[0];
    s[1] = b[1];
    s[2] = b[2];
    s[3] = b[3];
    s[4] = (b[2] - b[0]) * (b[3] - b[1]);
    col_cls[threadIdx.x] = cls != nullptr ? cls[col_block * kBoxesPerWord + threadIdx.x] : 0;
  }
  __syncthreads();
  if (threadIdx.x >= row_size) return;
  const int64_t cur = row_block * kBoxesPerWord + threadIdx.x;
  const acc_t* a = boxes + cur * 4;
  const acc_t area = (a[2] - a[0]) * (a[3] - a[1]);
  const int64_t cur_cls = cls != nullptr ? cls[cur] : 0;
  unsigned long long bits = 0;
  for (int64_t i = row_block == col_block ? threadIdx.x + 1 : 0; i < col_size; ++i) {
    const acc_t* b = col_boxes + i * 5;
    if (col_cls[i] == cur_cls && iou_above<acc_t, float>(a[0], a[1], a[2], a[3], area, b[0], b[1], b[2], b[3], b[4],
                                                         threshold))
      bits |= 1ULL << i;
  }
  mask[cur * col_blocks + col_block] = bits;
}

__global__ void nms_gather_kernel(int64_t n, int64_t col_blocks, const unsigned long long* __restrict__ mask,
                                  bool* __restrict__ keep) {
  unsigned long long* removed = dynamic_shared<unsigned long long>();
  for (int64_t i = threadIdx.x; i < col_blocks; i += blockDim.x) removed[i] = 0;
  __syncthreads();
  for (int64_t block = 0; block < col_blocks; ++block) {
    unsigned long long removed_here = removed[block];
    __syncthreads();
    for (int bit = 0; bit < kBoxesPerWord; ++bit) {
      const int64_t i = block * kBoxesPerWord + bit;
      if (i >= n) break;
      if (removed_here & (1ULL << bit)) continue;
      if (threadIdx.x == 0) keep[i] = true;
      const unsigned long long* row = mask + i * col_blocks;
      for (int64_t j = block + threadIdx.x; j < col_blocks; j += blockDim.x) removed[j] |= row[j];
      __syncthreads();
      removed_here = removed[block];  // box i may have suppressed later boxes of this very word
    }
  }
}

// Batched NMS without cross-category work: the score-sorted boxes are grouped by category (a stable sort keeps score
// order inside a group) and each group walks greedily in one block - the kept box's IoU with the group's later boxes
// computed by the block's threads, one sync per kept box - so the cost is the sum of per-group work and the memory
// one byte per box, instead of the N x N/64 mask over every pair. Block b takes the groups that start at positions
// b, b + gridDim.x, ...; a group stops at its first -inf score (they sort last; NaN sorts first and is skipped) and
// once it has kept max_keep boxes (no more of its boxes can be among the first max_keep overall). scores may be null:
// every box is a candidate (batched_nms, which keeps -inf and NaN scores as torchvision does).
template <typename acc_t>
__global__ void nms_grouped_kernel(int64_t n, const int64_t* __restrict__ group_order,
                                   const acc_t* __restrict__ boxes, const acc_t* __restrict__ scores,
                                   const int64_t* __restrict__ cls, float threshold, int64_t max_keep,
                                   uint8_t* __restrict__ removed, bool* __restrict__ keep) {
  for (int64_t start = blockIdx.x; start < n; start += gridDim.x) {
    if (start > 0 && cls[group_order[start]] == cls[group_order[start - 1]]) continue;  // not a group's first box
    int64_t end = start + 1;
    while (end < n && cls[group_order[end]] == cls[group_order[start]]) ++end;
    int64_t kept = 0;
    for (int64_t i = start; i < end && kept < max_keep; ++i) {
      __syncthreads();  // removed[i] was written before this barrier by the previous kept box
      const int64_t p = group_order[i];
      const acc_t s = scores != nullptr ? scores[p] : acc_t(0);
      if (s == -INFINITY) break;
      if (removed[i] || s != s) continue;
      if (threadIdx.x == 0) keep[p] = true;
      ++kept;
      const acc_t* a = boxes + p * 4;
      const acc_t area = (a[2] - a[0]) * (a[3] - a[1]);
      for (int64_t j = i + 1 + threadIdx.x; j < end; j += blockDim.x) {
        if (removed[j]) continue;
        const acc_t* b = boxes + group_order[j] * 4;
        if (iou_above<acc_t, float>(a[0], a[1], a[2], a[3], area, b[0], b[1], b[2], b[3], (b[2] - b[0]) * (b[3] - b[1]),
                                    threshold))
          removed[j] = 1;
      }
    }
    __syncthreads();
  }
}

// nms_topk's walk: as nms_gather_kernel, but it writes the kept boxes' input indices in score order, skips invalid
// candidates (score -inf or NaN: they keep nothing and suppress nothing), stops once max_keep are kept and writes
// the count; nothing is read back to the host. Control flow is the same in every thread (kept is uniform).
template <typename acc_t>
__global__ void nms_topk_gather_kernel(int64_t n, int64_t col_blocks, const unsigned long long* __restrict__ mask,
                                       const int64_t* __restrict__ order, const acc_t* __restrict__ sorted_scores,
                                       int64_t max_keep, int64_t* __restrict__ out, int64_t* __restrict__ count) {
  unsigned long long* removed = dynamic_shared<unsigned long long>();
  for (int64_t i = threadIdx.x; i < col_blocks; i += blockDim.x) removed[i] = 0;
  __syncthreads();
  int64_t kept = 0;
  for (int64_t block = 0; block < col_blocks && kept < max_keep; ++block) {
    unsigned long long removed_here = removed[block];
    __syncthreads();
    for (int bit = 0; bit < kBoxesPerWord && kept < max_keep; ++bit) {
      const int64_t i = block * kBoxesPerWord + bit;
      if (i >= n) break;
      if (removed_here & (1ULL << bit)) continue;
      const acc_t s = sorted_scores[i];
      if (!(s > -INFINITY)) continue;  // an invalid candidate
      if (threadIdx.x == 0) out[kept] = order[i];
      ++kept;
      const unsigned long long* row = mask + i * col_blocks;
      for (int64_t j = block + threadIdx.x; j < col_blocks; j += blockDim.x) removed[j] |= row[j];
      __syncthreads();
      removed_here = removed[block];
    }
  }
  if (threadIdx.x == 0) *count = kept;
}

// The plans. `sorted` holds the n score-sorted boxes (the accumulation type), `cls` their categories (or null).

inline int64_t nms_col_blocks(int64_t n) { return (n + kBoxesPerWord - 1) / kBoxesPerWord; }

// A gather block: a warp multiple of threads, at most 1024, about one per mask word.
inline int nms_gather_threads(int64_t col_blocks) {
  const int threads = static_cast<int>(col_blocks < 1024 ? col_blocks : 1024);
  return ((threads + 31) / 32) * 32;
}

// The pairwise mask over the sorted boxes (n x col_blocks words; categories cls or null), one block per 64 x 64 tile.
template <typename acc_t, typename Launch>
void nms_mask_launch(Launch&& launch, int64_t n, float threshold, const acc_t* sorted, const int64_t* cls,
                     unsigned long long* mask) {
  const int64_t col_blocks = nms_col_blocks(n);
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  launch(grid, kBoxesPerWord, 0, nms_mask_kernel<acc_t>, n, threshold, sorted, cls, mask, col_blocks);
}

// nms: keep flags of the sorted boxes by the bitmask walk. mask holds n x col_blocks words.
template <typename acc_t, typename Launch>
void nms_bitmask_plan(Launch&& launch, int64_t n, float threshold, const acc_t* sorted, const int64_t* cls,
                      unsigned long long* mask, bool* keep) {
  const int64_t col_blocks = nms_col_blocks(n);
  nms_mask_launch<acc_t>(launch, n, threshold, sorted, cls, mask);
  launch(dim3(1), nms_gather_threads(col_blocks), col_blocks * sizeof(unsigned long long), nms_gather_kernel, n,
         col_blocks, static_cast<const unsigned long long*>(mask), keep);
}

// batched_nms and nms_topk with categories: keep flags of the sorted boxes, each category walked on its own.
// group_order: the sorted positions grouped by category (a stable sort by cls); removed: n zeroed bytes.
template <typename acc_t, typename Launch>
void nms_grouped_plan(Launch&& launch, int64_t n, const int64_t* group_order, const acc_t* sorted,
                      const acc_t* sorted_scores, const int64_t* cls, float threshold, int64_t max_keep,
                      uint8_t* removed, bool* keep) {
  const int64_t blocks = n < kMaxGroupedBlocks ? n : kMaxGroupedBlocks;
  launch(dim3(static_cast<unsigned>(blocks)), kGroupedThreads, 0, nms_grouped_kernel<acc_t>, n, group_order, sorted,
         sorted_scores, cls, threshold, max_keep, removed, keep);
}

// nms_topk without categories: the first max_keep kept boxes' input indices (order[i] of sorted position i) in
// out[max_keep] (the rest left as they are) and their number in *count.
template <typename acc_t, typename Launch>
void nms_topk_plan(Launch&& launch, int64_t n, float threshold, const acc_t* sorted, const int64_t* order,
                   const acc_t* sorted_scores, int64_t max_keep, unsigned long long* mask, int64_t* out,
                   int64_t* count) {
  const int64_t col_blocks = nms_col_blocks(n);
  nms_mask_launch<acc_t>(launch, n, threshold, sorted, static_cast<const int64_t*>(nullptr), mask);
  launch(dim3(1), nms_gather_threads(col_blocks), col_blocks * sizeof(unsigned long long),
         nms_topk_gather_kernel<acc_t>, n, col_blocks, static_cast<const unsigned long long*>(mask), order,
         sorted_scores, max_keep, out, count);
}

}  // namespace opmask_fast
