// NMS CUDA launchers: the classic 64-box bitmask, with the keep list resolved on the device (nms), and a walk per
// category (batched_nms, nms_topk with idxs: no cross-category pairs); the kernels and their launches are in
// nms_kernels.cuh. Here: the checks, the score sort and the gathers around a plan. The N x N/64 mask is never copied
// to the host. One host sync remains in nms/batched_nms: the number of kept boxes. nms_topk has none: it writes a
// fixed-size, padded result and its count on the device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../error_message.h"
#include "cuda_launch.cuh"
#include "nms_kernels.cuh"

namespace opmask_fast {
namespace {

// Keep flags over the score-sorted boxes (sorted, sorted_scores or undefined: all candidates, sorted_cls) of the
// grouped walk, on the device.
at::Tensor grouped_keep(const at::Tensor& sorted, const at::Tensor& sorted_scores, const at::Tensor& sorted_cls,
                        double threshold, int64_t max_keep) {
  const int64_t n = sorted.size(0);
  const at::Tensor group_order = std::get<1>(sorted_cls.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor removed = at::zeros({n}, sorted.options().dtype(at::kByte));
  at::Tensor keep = at::zeros({n}, sorted.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(sorted.scalar_type(), "nms_grouped_cuda", [&] {
    nms_grouped_plan<scalar_t>(CudaLaunch{}, n, group_order.const_data_ptr<int64_t>(),
                               sorted.const_data_ptr<scalar_t>(),
                               sorted_scores.defined() ? sorted_scores.const_data_ptr<scalar_t>() : nullptr,
                               sorted_cls.const_data_ptr<int64_t>(), static_cast<float>(threshold), max_keep,
                               removed.mutable_data_ptr<uint8_t>(), keep.mutable_data_ptr<bool>());
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
  // The all-pairs walk keeps one bit per box of a row in shared memory (the grouped walk above has no such limit).
  const int64_t col_blocks = nms_col_blocks(n);
  TORCH_CHECK(col_blocks * 8 <= kMaxSharedBytes,
              format_message("opmask_fast::nms: at most %lld boxes per call on CUDA, got %lld",
                             static_cast<long long>(kMaxSharedBytes) * 8, static_cast<long long>(n)));
  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  at::Tensor keep = at::zeros({n}, boxes.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(acc_type, "nms_cuda", [&] {
    nms_bitmask_plan<scalar_t>(CudaLaunch{}, n, static_cast<float>(threshold), sorted.const_data_ptr<scalar_t>(),
                               static_cast<const int64_t*>(nullptr),
                               reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>()),
                               keep.mutable_data_ptr<bool>());
  });
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

std::tuple<at::Tensor, at::Tensor> nms_topk_cuda(const at::Tensor& boxes_, const at::Tensor& scores_,
                                                 const std::optional<at::Tensor>& idxs, double iou_threshold,
                                                 int64_t max_keep) {
  TORCH_CHECK(boxes_.dim() == 2 && boxes_.size(1) == 4, "opmask_fast::nms_topk: boxes must be a Tensor[N, 4]");
  TORCH_CHECK(scores_.dim() == 1 && scores_.size(0) == boxes_.size(0),
              "opmask_fast::nms_topk: scores must be a Tensor[N]");
  TORCH_CHECK(scores_.device() == boxes_.device(),
              "opmask_fast::nms_topk: boxes and scores must be on the same device");
  TORCH_CHECK(max_keep >= 0, "opmask_fast::nms_topk: max_keep must be >= 0");
  const c10::cuda::CUDAGuard guard(boxes_.device());
  const at::Tensor boxes = boxes_.contiguous(), scores = scores_.contiguous();
  const int64_t n = boxes.size(0);
  at::Tensor out = at::full({max_keep}, -1, boxes.options().dtype(at::kLong));
  at::Tensor count = at::zeros({}, boxes.options().dtype(at::kLong));
  if (n == 0 || max_keep == 0) return {out, count};
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
  const int64_t col_blocks = nms_col_blocks(n);  // the all-pairs walk's shared-memory row, as in nms
  TORCH_CHECK(col_blocks * 8 <= kMaxSharedBytes,
              format_message("opmask_fast::nms_topk: at most %lld boxes per call on CUDA, got %lld",
                             static_cast<long long>(kMaxSharedBytes) * 8, static_cast<long long>(n)));
  at::Tensor mask = at::empty({n * col_blocks}, boxes.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(acc_type, "nms_topk_cuda", [&] {
    nms_topk_plan<scalar_t>(CudaLaunch{}, n, static_cast<float>(iou_threshold), sorted.const_data_ptr<scalar_t>(),
                            order.const_data_ptr<int64_t>(), sorted_scores.const_data_ptr<scalar_t>(), max_keep,
                            reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>()),
                            out.mutable_data_ptr<int64_t>(), count.mutable_data_ptr<int64_t>());
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
