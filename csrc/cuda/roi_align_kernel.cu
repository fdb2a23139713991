// RoIAlign CUDA kernels (float32, float64, float16, bfloat16; accumulation in float32 for the half types).
//
// One block per (RoI, group of channels). The block first computes the RoI's axis taps (roi_align_common.h) into
// shared memory - ph * grid_h rows and pw * grid_w columns - and every thread then reuses them for its
// (channel, bin) outputs, instead of recomputing the sample positions and weights for each channel. Consecutive
// threads take consecutive bins of one channel, so their loads hit neighbouring pixels and their stores are
// contiguous. The weighted forward (roi_align_weighted) pools the same way, then adds the map per RoI in place
// (add_weighted_map_kernel, roi_align_device.cuh). Backward scatters with atomics into a float32 (float64) buffer:
// run to run it may differ in the last bits; the CPU kernel is the deterministic one.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../roi_align_checks.h"
#include "../roi_align_common.h"
#include "roi_align_device.cuh"

namespace opmask_fast {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void roi_align_forward_kernel(const scalar_t* __restrict__ input, const acc_t* __restrict__ rois,
                                         const scalar_t* __restrict__ roi_map, scalar_t* __restrict__ out,
                                         int64_t n, int64_t c, int64_t h, int64_t w, int64_t ph, int64_t pw,
                                         acc_t spatial_scale, int64_t sampling_ratio, bool aligned,
                                         int64_t channels_per_block) {
  __shared__ AxisTap<acc_t> ytaps[kMaxAxisTaps];
  __shared__ AxisTap<acc_t> xtaps[kMaxAxisTaps];
  const int64_t r = blockIdx.x;
  const auto g = roi_geometry<acc_t>(rois + 5 * r, n, spatial_scale, ph, pw, sampling_ratio, aligned);
  pool_roi_block(input, g, r, blockIdx.y * channels_per_block, channels_per_block, c, h, w, ph, pw, roi_map, out,
                 ytaps, xtaps);
}

template <typename scalar_t, typename acc_t>
__global__ void roi_align_backward_kernel(const scalar_t* __restrict__ grad, const acc_t* __restrict__ rois,
                                          acc_t* __restrict__ grad_input, int64_t n, int64_t c, int64_t h,
                                          int64_t w, int64_t ph, int64_t pw, acc_t spatial_scale,
                                          int64_t sampling_ratio, bool aligned, int64_t channels_per_block) {
  __shared__ AxisTap<acc_t> ytaps[kMaxAxisTaps];
  __shared__ AxisTap<acc_t> xtaps[kMaxAxisTaps];
  const int64_t r = blockIdx.x;
  const int64_t c0 = blockIdx.y * channels_per_block;
  const auto g = roi_geometry<acc_t>(rois + 5 * r, n, spatial_scale, ph, pw, sampling_ratio, aligned);
  if (g.batch < 0) return;  // uniform across the block, so no thread is left waiting at the barrier
  const bool cached = cache_axis_taps(g, ph, pw, h, w, ytaps, xtaps);
  const int64_t nbins = ph * pw;
  const int64_t c1 = c0 + channels_per_block < c ? c0 + channels_per_block : c;
  for (int64_t e = threadIdx.x; e < (c1 - c0) * nbins; e += blockDim.x) {
    const int64_t ch = c0 + e / nbins, bin = e % nbins, p = bin / pw, q = bin % pw;
    const acc_t gv = static_cast<acc_t>(grad[(r * c + ch) * nbins + bin]) * g.inv_count;
    if (gv == 0) continue;
    acc_t* plane = grad_input + (g.batch * c + ch) * h * w;
    for (int64_t iy = 0; iy < g.grid_h; ++iy) {
      const AxisTap<acc_t> ty = cached ? ytaps[p * g.grid_h + iy] : axis_tap(g.start_h, g.bin_h, p, iy, g.grid_h, h);
      if (ty.w_lo == 0 && ty.w_hi == 0) continue;
      for (int64_t ix = 0; ix < g.grid_w; ++ix) {
        const AxisTap<acc_t> tx =
            cached ? xtaps[q * g.grid_w + ix] : axis_tap(g.start_w, g.bin_w, q, ix, g.grid_w, w);
        if (tx.w_lo == 0 && tx.w_hi == 0) continue;
        gpuAtomicAdd(plane + ty.lo * w + tx.lo, gv * ty.w_lo * tx.w_lo);
        gpuAtomicAdd(plane + ty.lo * w + tx.hi, gv * ty.w_lo * tx.w_hi);
        gpuAtomicAdd(plane + ty.hi * w + tx.lo, gv * ty.w_hi * tx.w_lo);
        gpuAtomicAdd(plane + ty.hi * w + tx.hi, gv * ty.w_hi * tx.w_hi);
      }
    }
  }
}

at::Tensor roi_align_forward_cuda(const at::Tensor& input_, const at::Tensor& rois_, double spatial_scale,
                                  int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                  const std::optional<at::Tensor>& roi_map_) {
  TORCH_CHECK(input_.dim() == 4, "opmask_fast::roi_align: input must be a Tensor[N, C, H, W]");
  check_roi_align_rois(rois_, input_, ph, pw);
  const c10::cuda::CUDAGuard guard(input_.device());
  const at::Tensor input = input_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0);
  const at::Tensor roi_map = checked_roi_map(roi_map_, input, k, ph, pw);
  at::Tensor out = at::empty({k, c, ph, pw}, input.options());
  if (out.numel() == 0) return out;
  int64_t cpb = 0;
  const dim3 grid = grid_for(k, c, ph * pw, &cpb);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    roi_align_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        input.const_data_ptr<scalar_t>(), rois.const_data_ptr<acc_t>(),
        roi_map.defined() ? roi_map.const_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), n, c, h,
        w, ph, pw, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, cpb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> roi_align_weighted_cuda(const at::Tensor& input_, const at::Tensor& rois_,
                                                           double spatial_scale, int64_t ph, int64_t pw,
                                                           int64_t sampling_ratio, bool aligned,
                                                           const at::Tensor& roi_map_, int64_t map_weight) {
  TORCH_CHECK(input_.dim() == 4, "opmask_fast::roi_align_weighted: input must be a Tensor[N, C, H, W]");
  check_roi_align_rois(rois_, input_, ph, pw);
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
  const auto stream = at::cuda::getCurrentCUDAStream();
  // The plain pooling over the full grid, then the weight and the map per RoI in place (add_weighted_map_kernel):
  // a block per RoI pooling all channels would leave most SMs idle at the hundred RoIs of inference.
  int64_t cpb = 0;
  const dim3 grid = grid_for(k, c, ph * pw, &cpb);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_weighted_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    roi_align_forward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
        input.const_data_ptr<scalar_t>(), rois.const_data_ptr<acc_t>(), static_cast<const scalar_t*>(nullptr), o, n,
        c, h, w, ph, pw, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned, cpb);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    add_weighted_map_kernel<scalar_t, acc_t><<<static_cast<unsigned>(k), kWeightedThreads, 0, stream>>>(
        o, roi_map.const_data_ptr<scalar_t>(), o, weights.mutable_data_ptr<acc_t>(), c * ph * pw, ph * pw,
        map_weight);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, weights};
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad_, const at::Tensor& rois_, double spatial_scale,
                                   int64_t ph, int64_t pw, int64_t batch_size, int64_t channels, int64_t height,
                                   int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_grad(grad_, rois_, ph, pw, channels);
  const int64_t k = rois_.size(0);
  const c10::cuda::CUDAGuard guard(grad_.device());
  const at::Tensor grad = grad_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor grad_in = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() > 0 && grad_in.numel() > 0) {
    int64_t cpb = 0;
    const dim3 grid = grid_for(k, channels, ph * pw, &cpb);
    const auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      roi_align_backward_kernel<scalar_t, acc_t><<<grid, kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), rois.const_data_ptr<acc_t>(), grad_in.mutable_data_ptr<acc_t>(),
          batch_size, channels, height, width, ph, pw, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned,
          cpb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
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
