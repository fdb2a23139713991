// Multi-level RoIAlign CUDA kernel: one launch for all pyramid levels. Block (r, channel group) reads levels[r] and
// pools from that level's map with the same device code as roi_align_kernel.cu (roi_align_device.cuh), so each
// RoI's output equals roi_align on its own level. The level maps travel by value in the launch arguments; a level
// outside [0, L) stops the kernel with a device-side assert (no host sync to check it).
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
#include "roi_align_device.cuh"

namespace opmask_fast {
namespace {

template <typename scalar_t, typename acc_t>
struct LevelMaps {
  const scalar_t* data[kMaxLevels];
  int64_t height[kMaxLevels];
  int64_t width[kMaxLevels];
  acc_t scale[kMaxLevels];
  int64_t count;
};

template <typename scalar_t, typename acc_t>
__global__ void multi_level_roi_align_kernel(LevelMaps<scalar_t, acc_t> maps, const acc_t* __restrict__ rois,
                                             const int64_t* __restrict__ levels,
                                             const scalar_t* __restrict__ roi_map, scalar_t* __restrict__ out,
                                             int64_t n, int64_t c, int64_t ph, int64_t pw, int64_t sampling_ratio,
                                             bool aligned, int64_t channels_per_block) {
  __shared__ AxisTap<acc_t> ytaps[kMaxAxisTaps];
  __shared__ AxisTap<acc_t> xtaps[kMaxAxisTaps];
  const int64_t r = blockIdx.x;
  const int64_t lv = levels[r];
  CUDA_KERNEL_ASSERT(lv >= 0 && lv < maps.count);
  const auto g = roi_geometry<acc_t>(rois + 5 * r, n, maps.scale[lv], ph, pw, sampling_ratio, aligned);
  pool_roi_block(maps.data[lv], g, r, blockIdx.y * channels_per_block, channels_per_block, c, maps.height[lv],
                 maps.width[lv], ph, pw, roi_map, out, ytaps, xtaps);
}

at::Tensor multi_level_roi_align_cuda(at::TensorList features_, const at::Tensor& rois_, const at::Tensor& levels_,
                                      at::ArrayRef<double> scales, int64_t ph, int64_t pw, int64_t sampling_ratio,
                                      bool aligned, const std::optional<at::Tensor>& roi_map_,
                                      int64_t map_weight) {
  check_multi_level_roi_align(features_, rois_, levels_, scales, ph, pw, roi_map_, map_weight);
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
  const bool weighted = map_weight != kMapWeightNone;
  TORCH_CHECK(k < (int64_t(1) << 31), "opmask_fast::multi_level_roi_align: too many RoIs");
  const dim3 grid = grid_for(k, c, ph * pw, &cpb);
  const auto stream = at::cuda::getCurrentCUDAStream();
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
    // A weighted map is added after the pooling, per RoI in place, once the RoI's statistics are known.
    const scalar_t* map = roi_map.defined() ? roi_map.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    multi_level_roi_align_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        maps, rois.const_data_ptr<acc_t>(), levels.const_data_ptr<int64_t>(), weighted ? nullptr : map, o, n, c, ph,
        pw, sampling_ratio, aligned, cpb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (weighted) {
      add_weighted_map_kernel<scalar_t, acc_t><<<static_cast<unsigned>(k), kWeightedThreads, 0, stream>>>(
          o, map, o, static_cast<acc_t*>(nullptr), c * ph * pw, ph * pw, map_weight);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(opmask_fast, CUDA, m) {
  m.impl("multi_level_roi_align", &multi_level_roi_align_cuda);
}

}  // namespace opmask_fast
