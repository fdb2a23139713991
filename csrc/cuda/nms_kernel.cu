// NMS CUDA kernels: the classic 64-box bitmask, with the keep list resolved on the device (nms), and a walk per
// category (batched_nms, nms_topk with idxs: nms_grouped_kernel, no cross-category pairs).
//
// Boxes are sorted by descending score. nms_mask_kernel sets bit j of mask[i][j / 64] when box j (later in the
// order) overlaps box i above the threshold - and, for batched_nms, has the same category, so categories never
// interact and no coordinate-offset trick is needed. nms_gather_kernel then walks the boxes in order in a single
// block, OR-ing the rows of kept boxes into a shared "removed" bitmap; only the boolean keep flags leave the kernel
// (the N x N/64 mask is never copied to the host). One host sync remains in nms/batched_nms: the number of kept
// boxes. nms_topk has none: it writes a fixed-size, padded result and its count on the device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../error_message.h"
#include "../nms_common.h"

namespace opmask_fast {
namespace {

constexpr int kBoxesPerWord = 64;
// The gather kernel keeps one bit per box in shared memory.
constexpr int64_t kMaxSharedBytes = 48 * 1024;

template <typename acc_t>
__global__ void nms_mask_kernel(int64_t n, float threshold, const acc_t* __restrict__ boxes,
                                const int64_t* __restrict__ cls, unsigned long long* __restrict__ mask,
                                int64_t col_blocks) {
  const int64_t row_block = blockIdx.y, col_block = blockIdx.x;
  if (row_block > col_block) return;  // only later boxes can be suppressed: the lower triangle is never read
  const int64_t row_size = min(n - row_block * kBoxesPerWord, int64_t(kBoxesPerWord));
  const int64_t col_size = min(n - col_block * kBoxesPerWord, int64_t(kBoxesPerWord));
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
  extern __shared__ unsigned long long removed[];
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

// Keep flags over the score-sorted boxes (sorted, sorted_scores or undefined: all candidates, sorted_cls) of the
// grouped walk, on the device.
at::Tensor grouped_keep(const at::Tensor& sorted, const at::Tensor& sorted_scores, const at::Tensor& sorted_cls,
                        double threshold, int64_t max_keep) {
  const int64_t n = sorted.size(0);
  const at::Tensor group_order = std::get<1>(sorted_cls.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor removed = at::zeros({n}, sorted.options().dtype(at::kByte));
  at::Tensor keep = at::zeros({n}, sorted.options().dtype(at::kBool));
  const int blocks = static_cast<int>(n < 4096 ? n : 4096);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(sorted.scalar_type(), "nms_grouped_cuda", [&] {
    nms_grouped_kernel<scalar_t><<<blocks, 256, 0, stream>>>(
        n, group_order.const_data_ptr<int64_t>(), sorted.const_data_ptr<scalar_t>(),
        sorted_scores.defined() ? sorted_scores.const_data_ptr<scalar_t>() : nullptr,
        sorted_cls.const_data_ptr<int64_t>(), static_cast<float>(threshold),
        max_keep, removed.mutable_data_ptr<uint8_t>(), keep.mutable_data_ptr<bool>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return keep;
}

at::Tensor nms_cuda_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs, double threshold) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "opmask_fast::nms: boxes must be a Tensor[N, 4]");
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "opmask_fast::nms: scores must be a Tensor[N]");
  TORCH_CHECK(scores.device() == boxes.device(), "opmask_fast::nms: boxes and scores must be on the same device");
  const c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const int64_t col_blocks = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  TORCH_CHECK(col_blocks * 8 <= kMaxSharedBytes,
              format_message("opmask_fast::nms: at most %lld boxes per call on CUDA, got %lld",
                             static_cast<long long>(kMaxSharedBytes) * 8, static_cast<long long>(n)));
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto acc_type = at::toOpMathType(boxes.scalar_type());
  const at::Tensor sorted = boxes.index_select(0, order).to(acc_type).contiguous();
  at::Tensor cls;
  if (idxs != nullptr) {
    TORCH_CHECK(idxs->device() == boxes.device(), "opmask_fast::batched_nms: idxs must be on the boxes' device");
    cls = idxs->index_select(0, order).to(at::kLong).contiguous();
    // Categories never interact: the grouped walk, without the all-pairs mask; no scores passed, so -inf and NaN
    // candidates are walked as any other (torchvision keeps them).
    return order.masked_select(grouped_keep(sorted, at::Tensor(), cls, threshold, n));
  }
  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  AT_DISPATCH_FLOATING_TYPES(acc_type, "nms_cuda", [&] {
    nms_mask_kernel<scalar_t><<<grid, kBoxesPerWord, 0, stream>>>(
        n, static_cast<float>(threshold), sorted.const_data_ptr<scalar_t>(),
        cls.defined() ? cls.const_data_ptr<int64_t>() : nullptr,
        reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>()), col_blocks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  int threads = static_cast<int>(col_blocks < 1024 ? col_blocks : 1024);
  threads = ((threads + 31) / 32) * 32;
  nms_gather_kernel<<<1, threads, col_blocks * sizeof(unsigned long long), stream>>>(
      n, col_blocks, reinterpret_cast<const unsigned long long*>(mask.const_data_ptr<int64_t>()),
      keep.mutable_data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return order.masked_select(keep);
}

at::Tensor nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_cuda_impl(boxes, scores, nullptr, iou_threshold);
}

at::Tensor batched_nms_cuda(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                            double iou_threshold) {
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "opmask_fast::batched_nms: idxs must be a Tensor[N]");
  TORCH_CHECK(!idxs.is_floating_point(), "opmask_fast::batched_nms: idxs must be an integer tensor");
  return nms_cuda_impl(boxes, scores, &idxs, iou_threshold);
}

// nms_topk's walk: as nms_gather_kernel, but it writes the kept boxes' input indices in score order, skips invalid
// candidates (score -inf or NaN: they keep nothing and suppress nothing), stops once max_keep are kept and writes
// the count; nothing is read back to the host. Control flow is the same in every thread (kept is uniform).
template <typename acc_t>
__global__ void nms_topk_gather_kernel(int64_t n, int64_t col_blocks, const unsigned long long* __restrict__ mask,
                                       const int64_t* __restrict__ order, const acc_t* __restrict__ sorted_scores,
                                       int64_t max_keep, int64_t* __restrict__ out, int64_t* __restrict__ count) {
  extern __shared__ unsigned long long removed[];
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

std::tuple<at::Tensor, at::Tensor> nms_topk_cuda(const at::Tensor& boxes_, const at::Tensor& scores_,
                                                 const std::optional<at::Tensor>& idxs, double iou_threshold,
                                                 int64_t max_keep) {
  TORCH_CHECK(boxes_.dim() == 2 && boxes_.size(1) == 4, "opmask_fast::nms_topk: boxes must be a Tensor[N, 4]");
  TORCH_CHECK(scores_.dim() == 1 && scores_.size(0) == boxes_.size(0), "opmask_fast::nms_topk: scores must be a Tensor[N]");
  TORCH_CHECK(scores_.device() == boxes_.device(), "opmask_fast::nms_topk: boxes and scores must be on the same device");
  TORCH_CHECK(max_keep >= 0, "opmask_fast::nms_topk: max_keep must be >= 0");
  const c10::cuda::CUDAGuard guard(boxes_.device());
  const at::Tensor boxes = boxes_.contiguous(), scores = scores_.contiguous();
  const int64_t n = boxes.size(0);
  at::Tensor out = at::full({max_keep}, -1, boxes.options().dtype(at::kLong));
  at::Tensor count = at::zeros({}, boxes.options().dtype(at::kLong));
  if (n == 0 || max_keep == 0) return {out, count};
  const int64_t col_blocks = (n + kBoxesPerWord - 1) / kBoxesPerWord;
  TORCH_CHECK(col_blocks * 8 <= kMaxSharedBytes,
              format_message("opmask_fast::nms_topk: at most %lld boxes per call on CUDA, got %lld",
                             static_cast<long long>(kMaxSharedBytes) * 8, static_cast<long long>(n)));
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const auto acc_type = at::toOpMathType(boxes.scalar_type());
  const at::Tensor sorted = boxes.index_select(0, order).to(acc_type).contiguous();
  const at::Tensor sorted_scores = scores.index_select(0, order).to(acc_type).contiguous();
  at::Tensor cls;
  if (idxs.has_value()) {
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == n, "opmask_fast::nms_topk: idxs must be a Tensor[N]");
    TORCH_CHECK(!idxs->is_floating_point(), "opmask_fast::nms_topk: idxs must be an integer tensor");
    TORCH_CHECK(idxs->device() == boxes.device(), "opmask_fast::nms_topk: idxs must be on the boxes' device");
    cls = idxs->index_select(0, order).to(at::kLong).contiguous();
    // Per category (grouped walk), then the first max_keep kept boxes in score order: rank = kept boxes before.
    const at::Tensor keep = grouped_keep(sorted, sorted_scores, cls, iou_threshold, max_keep);
    const at::Tensor rank = keep.cumsum(0) - 1;
    const at::Tensor slot = at::where(keep & rank.lt(max_keep), rank, at::full_like(rank, max_keep));
    at::Tensor padded = at::full({max_keep + 1}, -1, out.options());
    padded.scatter_(0, slot, order);  // every unkept box lands in the spare last slot
    count.copy_(keep.sum().clamp_max(max_keep));
    return {padded.narrow(0, 0, max_keep).contiguous(), count};
  }
  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  const auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(col_blocks));
  int threads = static_cast<int>(col_blocks < 1024 ? col_blocks : 1024);
  threads = ((threads + 31) / 32) * 32;
  AT_DISPATCH_FLOATING_TYPES(acc_type, "nms_topk_cuda", [&] {
    nms_mask_kernel<scalar_t><<<grid, kBoxesPerWord, 0, stream>>>(
        n, static_cast<float>(iou_threshold), sorted.const_data_ptr<scalar_t>(),
        cls.defined() ? cls.const_data_ptr<int64_t>() : nullptr,
        reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>()), col_blocks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    nms_topk_gather_kernel<scalar_t><<<1, threads, col_blocks * sizeof(unsigned long long), stream>>>(
        n, col_blocks, reinterpret_cast<const unsigned long long*>(mask.const_data_ptr<int64_t>()),
        order.const_data_ptr<int64_t>(), sorted_scores.const_data_ptr<scalar_t>(), max_keep,
        out.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, count};
}

}  // namespace

TORCH_LIBRARY_IMPL(opmask_fast, CUDA, m) {
  m.impl("nms", &nms_cuda);
  m.impl("batched_nms", &batched_nms_cuda);
  m.impl("nms_topk", &nms_topk_cuda);
}

}  // namespace opmask_fast
