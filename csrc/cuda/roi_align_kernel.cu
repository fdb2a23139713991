// RoIAlign CUDA launchers (float32, float64, float16, bfloat16; accumulation in float32 for the half types); the
// kernels and the order of their launches are in roi_align_kernels.cuh.
//
// One block per (RoI, group of channels). The block first computes the RoI's axis taps (roi_align_common.h) into
// shared memory - ph * grid_h rows and pw * grid_w columns - and every thread then reuses them for its
// (channel, bin) outputs, instead of recomputing the sample positions and weights for each channel. Consecutive
// threads take consecutive bins of one channel, so their loads hit neighbouring pixels and their stores are
// contiguous. The weighted forward (roi_align_weighted) pools the same way, each block also reducing the statistics
// of what it wrote, then adds the weighted map in place over the same grid. Backward scatters with atomics into a
// float32 (float64) buffer: run to run it may differ in the last bits; the CPU kernel is the deterministic one.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../roi_align_checks.h"
#include "../roi_align_common.h"
#include "cuda_launch.cuh"
#include "roi_align_kernels.cuh"

namespace opmask_fast {
namespace {

at::Tensor roi_align_forward_cuda(const at::Tensor& input_, const at::Tensor& rois_, double spatial_scale,
                                  int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                  const std::optional<at::Tensor>& roi_map_) {
  TORCH_CHECK(input_.dim() == 4, "opmask_fast::roi_align: input must be a Tensor[N, C, H, W]");
  check_roi_align_rois(rois_, input_, ph, pw, sampling_ratio);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0);
  const at::Tensor roi_map = checked_roi_map(roi_map_, input, k, ph, pw);
  at::Tensor out = at::empty({k, c, ph, pw}, input.options());
  if (out.numel() == 0) return out;
  int64_t cpb = 0;
  const dim3 grid = grid_for(k, c, ph * pw, &cpb);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    roi_align_forward_plan<scalar_t, acc_t>(
        CudaLaunch{}, grid, cpb, input.const_data_ptr<scalar_t>(), rois.const_data_ptr<acc_t>(),
        roi_map.defined() ? roi_map.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), nullptr,
        nullptr, kMapWeightNone, n, c, h, w, ph, pw, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> roi_align_weighted_cuda(const at::Tensor& input_, const at::Tensor& rois_,
                                                           double spatial_scale, int64_t ph, int64_t pw,
                                                           int64_t sampling_ratio, bool aligned,
                                                           const at::Tensor& roi_map_, int64_t map_weight) {
  TORCH_CHECK(input_.dim() == 4, "opmask_fast::roi_align_weighted: input must be a Tensor[N, C, H, W]");
  check_roi_align_rois(rois_, input_, ph, pw, sampling_ratio);
  check_map_weight(map_weight, "opmask_fast::roi_align_weighted");
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0);
  TORCH_CHECK(k < (int64_t(1) << 31), "opmask_fast::roi_align_weighted: too many RoIs");
  const at::Tensor roi_map = checked_roi_map(roi_map_, input, k, ph, pw);
  at::Tensor out = at::empty({k, c, ph, pw}, input.options());
  // Zeros: with no channels the statistics are NaN, so the weight is 0 as in the reference.
  at::Tensor weights = at::zeros({k}, input.options().dtype(at::toOpMathType(input.scalar_type())));
  if (out.numel() == 0) return {out, weights};
  int64_t cpb = 0;
  const dim3 grid = grid_for(k, c, ph * pw, &cpb);
  at::Tensor partials = map_stats_buffer(map_weight, k, grid, input.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_weighted_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    roi_align_forward_plan<scalar_t, acc_t>(
        CudaLaunch{}, grid, cpb, input.const_data_ptr<scalar_t>(), rois.const_data_ptr<acc_t>(),
        roi_map.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), map_stats_ptr(partials),
        weights.mutable_data_ptr<acc_t>(), map_weight, n, c, h, w, ph, pw, static_cast<acc_t>(spatial_scale),
        sampling_ratio, aligned);
  });
  return {out, weights};
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad_, const at::Tensor& rois_, double spatial_scale,
                                   int64_t ph, int64_t pw, int64_t batch_size, int64_t channels, int64_t height,
                                   int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_grad(grad_, rois_, ph, pw, sampling_ratio, channels);
  const int64_t k = rois_.size(0);
  const c10::cuda::CUDAGuard guard(grad_.device());
  const at::Tensor grad = grad_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor grad_in = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && grad_in.numel() > 0) {
    int64_t cpb = 0;
    const dim3 grid = grid_for(k, channels, ph * pw, &cpb);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      roi_align_backward_plan<scalar_t, acc_t>(CudaLaunch{}, grid, cpb, grad.const_data_ptr<scalar_t>(),
                                               rois.const_data_ptr<acc_t>(), grad_in.mutable_data_ptr<acc_t>(),
                                               batch_size, channels, height, width, ph, pw,
                                               static_cast<acc_t>(spatial_scale), sampling_ratio, aligned);
    });
  }
  return grad_in.scalar_type() == grad.scalar_type() ? grad_in : grad_in.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(opmask_fast, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("roi_align_weighted", &roi_align_weighted_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
}

}  // namespace opmask_fast
