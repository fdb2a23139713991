// The RoIAlign family's CUDA kernels, run by their own launch plans (csrc/cuda/roi_align_kernels.cuh) under the
// emulated block model (block_model.h), behind a C interface for tests/test_cuda_emulated_roi_align.py (ctypes).
//
// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16; RoIs, weights and the backward's gradient buffer are in the
// accumulation type (float64 for float64, else float32), as on the GPU. Each entry
// returns 0, or 1 with the error in err. The per-block statistics buffer starts as NaN, so a slot no block writes
// shows in the weights.
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "block_model.h"

#include <cmath>
#include <limits>
#include <vector>

#include "cuda/roi_align_kernels.cuh"

using namespace opmask_fast;

namespace {

// at::opmath_type without ATen.
template <typename scalar_t>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

std::vector<MapStats> poisoned_partials(int64_t k, dim3 grid) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  return std::vector<MapStats>(static_cast<size_t>(k * grid.y), MapStats{nan, nan, nan, {nan, nan, false}});
}

template <typename scalar_t>
void roi_align_forward(const void* input, const void* rois, const void* roi_map, void* out, void* weights,
                       int64_t map_weight, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t ph,
                       int64_t pw, double scale, int64_t sampling_ratio, bool aligned) {
  using acc_t = typename Acc<scalar_t>::type;
  int64_t cpb = 0;
  const dim3 grid = grid_for(k, c, ph * pw, &cpb);
  std::vector<MapStats> partials = poisoned_partials(k, grid);
  roi_align_forward_plan<scalar_t, acc_t>(
      cuda_emulation::Launch{}, grid, cpb, static_cast<const scalar_t*>(input), static_cast<const acc_t*>(rois),
      static_cast<const scalar_t*>(roi_map), static_cast<scalar_t*>(out), partials.data(),
      static_cast<acc_t*>(weights), map_weight, n, c, h, w, ph, pw, static_cast<acc_t>(scale), sampling_ratio,
      aligned);
}

template <typename scalar_t>
void multi_level(int64_t count, const void* const* data, const int64_t* heights, const int64_t* widths,
                 const double* scales, const void* rois, const int64_t* levels, const void* roi_map, void* out,
                 int64_t map_weight, int64_t n, int64_t c, int64_t k, int64_t ph, int64_t pw, int64_t sampling_ratio,
                 bool aligned) {
  using acc_t = typename Acc<scalar_t>::type;
  LevelMaps<scalar_t, acc_t> maps{};
  maps.count = count;
  for (int64_t l = 0; l < count; ++l) {
    maps.data[l] = static_cast<const scalar_t*>(data[l]);
    maps.height[l] = heights[l];
    maps.width[l] = widths[l];
    maps.scale[l] = static_cast<acc_t>(scales[l]);
  }
  int64_t cpb = 0;
  const dim3 grid = grid_for(k, c, ph * pw, &cpb);
  std::vector<MapStats> partials = poisoned_partials(k, grid);
  multi_level_plan<scalar_t, acc_t>(cuda_emulation::Launch{}, grid, cpb, maps, static_cast<const acc_t*>(rois), levels,
                                    static_cast<const scalar_t*>(roi_map), static_cast<scalar_t*>(out),
                                    partials.data(), map_weight, n, c, ph, pw, sampling_ratio, aligned);
}

template <typename scalar_t>
void add_weighted_map(const void* features, const void* roi_map, void* out, void* weights, int64_t map_weight,
                      int64_t k, int64_t c, int64_t nbins) {
  int64_t cpb = 0;
  const dim3 grid = grid_for(k, c, nbins, &cpb);
  std::vector<MapStats> partials = poisoned_partials(k, grid);
  using acc_t = typename Acc<scalar_t>::type;
  add_weighted_map_plan<scalar_t, acc_t>(cuda_emulation::Launch{}, grid, cpb, static_cast<const scalar_t*>(features),
                                         static_cast<const scalar_t*>(roi_map), static_cast<scalar_t*>(out),
                                         partials.data(), static_cast<acc_t*>(weights), map_weight, c, nbins);
}

template <typename scalar_t>
void roi_align_backward(const void* grad, const void* rois, void* grad_input, int64_t n, int64_t c, int64_t h,
                        int64_t w, int64_t k, int64_t ph, int64_t pw, double scale, int64_t sampling_ratio,
                        bool aligned) {
  int64_t cpb = 0;
  const dim3 grid = grid_for(k, c, ph * pw, &cpb);
  using acc_t = typename Acc<scalar_t>::type;
  roi_align_backward_plan<scalar_t, acc_t>(cuda_emulation::Launch{}, grid, cpb, static_cast<const scalar_t*>(grad),
                                           static_cast<const acc_t*>(rois), static_cast<acc_t*>(grad_input), n, c, h,
                                           w, ph, pw, static_cast<acc_t>(scale), sampling_ratio, aligned);
}

// A kernel with a barrier under a branch some threads skip: the emulation must refuse it (its own test).
__global__ void divergent_barrier_kernel() {
  if (threadIdx.x < 3) __syncthreads();
}

}  // namespace

#define DISPATCH(dtype, fn, ...)                                                                     \
  ((dtype) == 1   ? fn<double>(__VA_ARGS__)                                                           \
   : (dtype) == 2 ? fn<c10::Half>(__VA_ARGS__)                                                        \
   : (dtype) == 3 ? fn<c10::BFloat16>(__VA_ARGS__)                                                    \
                  : fn<float>(__VA_ARGS__))

extern "C" {

int emu_roi_align_forward(int dtype, const void* input, const void* rois, const void* roi_map, void* out,
                          void* weights, int64_t map_weight, int64_t n, int64_t c, int64_t h, int64_t w, int64_t k,
                          int64_t ph, int64_t pw, double scale, int64_t sampling_ratio, int aligned, char* err,
                          int err_len) {
  return cuda_emulation::guarded(err, err_len, [&] {
    DISPATCH(dtype, roi_align_forward, input, rois, roi_map, out, weights, map_weight, n, c, h, w, k, ph, pw, scale,
             sampling_ratio, aligned != 0);
  });
}

int emu_multi_level_roi_align(int dtype, int64_t count, const void* const* data, const int64_t* heights,
                              const int64_t* widths, const double* scales, const void* rois, const int64_t* levels,
                              const void* roi_map, void* out, int64_t map_weight, int64_t n, int64_t c, int64_t k,
                              int64_t ph, int64_t pw, int64_t sampling_ratio, int aligned, char* err, int err_len) {
  return cuda_emulation::guarded(err, err_len, [&] {
    DISPATCH(dtype, multi_level, count, data, heights, widths, scales, rois, levels, roi_map, out, map_weight, n, c,
             k, ph, pw, sampling_ratio, aligned != 0);
  });
}

int emu_add_weighted_map(int dtype, const void* features, const void* roi_map, void* out, void* weights,
                         int64_t map_weight, int64_t k, int64_t c, int64_t nbins, char* err, int err_len) {
  return cuda_emulation::guarded(err, err_len, [&] {
    DISPATCH(dtype, add_weighted_map, features, roi_map, out, weights, map_weight, k, c, nbins);
  });
}

int emu_roi_align_backward(int dtype, const void* grad, const void* rois, void* grad_input, int64_t n, int64_t c,
                           int64_t h, int64_t w, int64_t k, int64_t ph, int64_t pw, double scale,
                           int64_t sampling_ratio, int aligned, char* err, int err_len) {
  return cuda_emulation::guarded(err, err_len, [&] {
    DISPATCH(dtype, roi_align_backward, grad, rois, grad_input, n, c, h, w, k, ph, pw, scale, sampling_ratio,
             aligned != 0);
  });
}

int emu_divergent_barrier(char* err, int err_len) {
  return cuda_emulation::guarded(err, err_len,
                                 [&] { cuda_emulation::Launch{}(dim3(1), 8, 0, divergent_barrier_kernel); });
}

}  // extern "C"
