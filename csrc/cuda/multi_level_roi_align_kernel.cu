// Multi-level RoIAlign CUDA launcher: one pooling launch for all pyramid levels (multi_level_plan,
// roi_align_kernels.cuh). Block (r, channel group) reads levels[r] and pools from that level's map with the same device
// code as roi_align (roi_align_device.cuh), so each RoI's output equals roi_align on its own level. The level maps
// travel by value in the launch arguments; a level outside [0, L) stops the kernel with a device-side assert (no
// host sync to check it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <vector>

#include "../roi_align_checks.h"
#include "../roi_align_common.h"
#include "cuda_launch.cuh"
#include "roi_align_kernels.cuh"

namespace opmask_fast {
namespace {

at::Tensor multi_level_roi_align_cuda(at::TensorList features_, const at::Tensor& rois_, const at::Tensor& levels_,
                                      at::ArrayRef<double> scales, int64_t ph, int64_t pw, int64_t sampling_ratio,
                                      bool aligned, const std::optional<at::Tensor>& roi_map_,
                                      int64_t map_weight) {
  check_multi_level_roi_align(features_, rois_, levels_, scales, ph, pw, sampling_ratio, roi_map_, map_weight);
  const c10::cuda::CUDAGuard guard(features_[0].device());
  std::vector<at::Tensor> features;
  for (const at::Tensor& f : features_) features.push_back(f.contiguous());
  const at::Tensor rois = rois_.contiguous();
  const at::Tensor levels = levels_.contiguous();
  const int64_t n = features[0].size(0), c = features[0].size(1), k = rois.size(0);
  at::Tensor roi_map;
  if (roi_map_.has_value()) roi_map = roi_map_->to(features[0].scalar_type()).contiguous();
  at::Tensor out = at::empty({k, c, ph, pw}, features[0].options());
  if (out.numel() == 0) return out;
  int64_t cpb = 0;
  TORCH_CHECK(k < (int64_t(1) << 31), "opmask_fast::multi_level_roi_align: too many RoIs");
  const dim3 grid = grid_for(k, c, ph * pw, &cpb);
  at::Tensor partials = map_stats_buffer(map_weight, k, grid, out.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "multi_level_roi_align_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    LevelMaps<scalar_t, acc_t> maps{};
    maps.count = static_cast<int64_t>(features.size());
    for (int64_t l = 0; l < maps.count; ++l) {
      maps.data[l] = features[l].const_data_ptr<scalar_t>();
      maps.height[l] = features[l].size(2);
      maps.width[l] = features[l].size(3);
      maps.scale[l] = static_cast<acc_t>(scales[l]);
    }
    multi_level_plan<scalar_t, acc_t>(CudaLaunch{}, grid, cpb, maps, rois.const_data_ptr<acc_t>(),
                                      levels.const_data_ptr<int64_t>(),
                                      roi_map.defined() ? roi_map.const_data_ptr<scalar_t>() : nullptr,
                                      out.mutable_data_ptr<scalar_t>(), map_stats_ptr(partials), map_weight, n, c,
                                      ph, pw, sampling_ratio, aligned);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(opmask_fast, CUDA, m) {
  m.impl("multi_level_roi_align", &multi_level_roi_align_cuda);
}

}  // namespace opmask_fast
