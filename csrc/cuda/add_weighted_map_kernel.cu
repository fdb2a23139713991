// add_weighted_map CUDA launcher (add_weighted_map_plan, roi_align_kernels.cuh): the features' statistics per (RoI,
// group of channels), then the add over the same grid, by the kernel roi_align_weighted and the weighted multi-level
// RoIAlign run in place after their pooling.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../add_weighted_map.h"
#include "cuda_launch.cuh"
#include "roi_align_kernels.cuh"

namespace opmask_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> add_weighted_map_cuda(const at::Tensor& features_, const at::Tensor& roi_map_,
                                                         int64_t map_weight) {
  check_add_weighted_map(features_, roi_map_, map_weight);
  const c10::cuda::CUDAGuard guard(features_.device());
  const at::Tensor features = features_.contiguous();
  const at::Tensor roi_map = roi_map_.contiguous();
  const int64_t k = features.size(0), nbins = features.size(2) * features.size(3);
  TORCH_CHECK(k < (int64_t(1) << 31), "opmask_fast::add_weighted_map: too many RoIs");
  at::Tensor out = at::empty_like(features, at::MemoryFormat::Contiguous);
  // Zeros: with no values the statistics are NaN, so the weight is 0 as in the reference.
  at::Tensor weights = at::zeros({k}, features.options().dtype(at::toOpMathType(features.scalar_type())));
  if (out.numel() == 0) return {out, weights};
  int64_t cpb = 0;
  const dim3 grid = grid_for(k, features.size(1), nbins, &cpb);
  at::Tensor partials = map_stats_buffer(map_weight, k, grid, features.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "add_weighted_map_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    add_weighted_map_plan<scalar_t, acc_t>(CudaLaunch{}, grid, cpb, features.const_data_ptr<scalar_t>(),
                                           roi_map.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                           map_stats_ptr(partials), weights.mutable_data_ptr<acc_t>(), map_weight,
                                           features.size(1), nbins);
  });
  return {out, weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(opmask_fast, CUDA, m) { m.impl("add_weighted_map", &add_weighted_map_cuda); }

}  // namespace opmask_fast
