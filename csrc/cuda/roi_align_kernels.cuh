// The RoIAlign family's CUDA kernels and their launch plans, free of ATen so that the same code also runs on the
// CPU under tests/cuda_emulation (the block model emulated with threads):
//
//   roi_align_forward_kernel   one block per (RoI, group of channels): pools, optionally adds a map as is, or
//                              (kStats) also reduces the statistics of the values it wrote into partials[r, group];
//   multi_level_kernel         the same for RoIs pooled from the pyramid level levels[r];
//   map_stats_kernel           those statistics of given features (the standalone add_weighted_map);
//   add_weighted_map_kernel    the same (RoI, group) grid: merges RoI r's partials, reduces its map, and writes
//                              src + weight x map over its channels (in place after a pooling);
//   roi_align_backward_kernel  scatters each output's gradient with atomics (a float32 / float64 buffer).
//
// So the weighted forward reads the pooled values once more (the add) instead of three times (mean, deviations,
// add), and every launch has K x groups blocks, not one block per RoI. A plan calls `launch(grid, threads,
// shared_bytes, kernel, args...)` for each launch of an op; cuda/*.cu pass a launcher for the GPU (cuda_launch.cuh),
// the emulation one of its own.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#include <ATen/cuda/Atomic.cuh>  // gpuAtomicAdd (the emulation brings its own)
#endif

#include "../map_weight.h"
#include "../roi_align_common.h"
#include "roi_align_device.cuh"

namespace opmask_fast {

template <typename scalar_t, typename acc_t, bool kStats>
__global__ void roi_align_forward_kernel(const scalar_t* __restrict__ input, const acc_t* __restrict__ rois,
                                         const scalar_t* __restrict__ roi_map, scalar_t* __restrict__ out,
                                         MapStats* __restrict__ partials, int64_t n, int64_t c, int64_t h, int64_t w,
                                         int64_t ph, int64_t pw, acc_t spatial_scale, int64_t sampling_ratio,
                                         bool aligned, int64_t channels_per_block) {
  __shared__ AxisTap<acc_t> ytaps[kMaxAxisTaps];
  __shared__ AxisTap<acc_t> xtaps[kMaxAxisTaps];
  const int64_t r = blockIdx.x;
  const auto g = roi_geometry<acc_t>(rois + 5 * r, n, spatial_scale, ph, pw, sampling_ratio, aligned);
  MapStats stats = map_stats_init();
  pool_roi_block<scalar_t, acc_t, kStats>(input, g, r, blockIdx.y * channels_per_block, channels_per_block, c, h, w,
                                          ph, pw, roi_map, out, ytaps, xtaps, stats);
  if (kStats) {
    __shared__ MapStats buf[kThreads];
    store_block_stats(stats, buf, partials);
  }
}

// The pyramid levels of multi_level_roi_align, passed by value in the launch arguments.
template <typename scalar_t, typename acc_t>
struct LevelMaps {
  const scalar_t* data[kMaxLevels];
  int64_t height[kMaxLevels];
  int64_t width[kMaxLevels];
  acc_t scale[kMaxLevels];
  int64_t count;
};

template <typename scalar_t, typename acc_t, bool kStats>
__global__ void multi_level_kernel(LevelMaps<scalar_t, acc_t> maps, const acc_t* __restrict__ rois,
                                   const int64_t* __restrict__ levels, const scalar_t* __restrict__ roi_map,
                                   scalar_t* __restrict__ out, MapStats* __restrict__ partials, int64_t n, int64_t c,
                                   int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                   int64_t channels_per_block) {
  __shared__ AxisTap<acc_t> ytaps[kMaxAxisTaps];
  __shared__ AxisTap<acc_t> xtaps[kMaxAxisTaps];
  const int64_t r = blockIdx.x;
  const int64_t lv = levels[r];
  CUDA_KERNEL_ASSERT(lv >= 0 && lv < maps.count);
  const auto g = roi_geometry<acc_t>(rois + 5 * r, n, maps.scale[lv], ph, pw, sampling_ratio, aligned);
  MapStats stats = map_stats_init();
  pool_roi_block<scalar_t, acc_t, kStats>(maps.data[lv], g, r, blockIdx.y * channels_per_block, channels_per_block,
                                          c, maps.height[lv], maps.width[lv], ph, pw, roi_map, out, ytaps, xtaps,
                                          stats);
  if (kStats) {
    __shared__ MapStats buf[kThreads];
    store_block_stats(stats, buf, partials);
  }
}

// Statistics of channels [group x channels_per_block, ...) of RoI r's values src Tensor[K, C, nbins].
template <typename scalar_t>
__global__ void map_stats_kernel(const scalar_t* __restrict__ src, MapStats* __restrict__ partials, int64_t c,
                                 int64_t nbins, int64_t channels_per_block) {
  __shared__ MapStats buf[kThreads];
  const int64_t c0 = blockIdx.y * channels_per_block;
  const int64_t c1 = c0 + channels_per_block < c ? c0 + channels_per_block : c;
  const scalar_t* x = src + (blockIdx.x * c + c0) * nbins;
  MapStats stats = map_stats_init();
  for (int64_t e = threadIdx.x; e < (c1 - c0) * nbins; e += blockDim.x)
    map_stats_add(stats, static_cast<double>(x[e]));
  store_block_stats(stats, buf, partials);
}

// dst = src + w_r x map[bin] over channels [group x channels_per_block, ...) of RoI r (src and dst alias in place:
// each thread reads only the elements it writes). w_r (map_weight.h) comes from the RoI's partials Tensor[K, groups]
// (kMapWeightNone: 1, partials unread); every block of the RoI computes the same w_r, block (r, 0) stores it.
template <typename scalar_t, typename acc_t>
__global__ void add_weighted_map_kernel(const scalar_t* src, const scalar_t* __restrict__ roi_map, scalar_t* dst,
                                        const MapStats* __restrict__ partials, acc_t* __restrict__ weights, int64_t c,
                                        int64_t nbins, int64_t channels_per_block, int64_t map_weight) {
  __shared__ MapStats buf[kThreads];
  const int64_t r = blockIdx.x, groups = gridDim.y;
  const scalar_t* map = roi_map + r * nbins;
  double weight = 1.0;
  if (map_weight != kMapWeightNone) {
    MapStats features = map_stats_init(), map_stats = map_stats_init();
    for (int64_t i = threadIdx.x; i < groups; i += blockDim.x)
      features = map_stats_merge(features, partials[r * groups + i]);
    features = block_reduce(features, buf, MergeStats());
    if (map_weight == kMapWeightStd) {
      for (int64_t b = threadIdx.x; b < nbins; b += blockDim.x) map_stats_add(map_stats, static_cast<double>(map[b]));
      map_stats = block_reduce(map_stats, buf, MergeStats());
    }
    weight = map_stats_weight(features, map_stats, map_weight);
  }
  const acc_t wt = static_cast<acc_t>(weight);  // 1 for the map as is: 1 * m (or fma(1, m, s)) is exact
  const int64_t c0 = blockIdx.y * channels_per_block;
  const int64_t c1 = c0 + channels_per_block < c ? c0 + channels_per_block : c;
  const int64_t base = (r * c + c0) * nbins;
  for (int64_t e = threadIdx.x; e < (c1 - c0) * nbins; e += blockDim.x)
    dst[base + e] = static_cast<scalar_t>(static_cast<acc_t>(src[base + e]) + wt * static_cast<acc_t>(map[e % nbins]));
  if (weights != nullptr && blockIdx.y == 0 && threadIdx.x == 0) weights[r] = wt;
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

// The plans. grid = grid_for(k, c, nbins, &cpb); partials holds k x grid.y MapStats (null without a weight).

// The weighted add over the (RoI, group) grid, after the partials are written (src and dst alias in place).
template <typename scalar_t, typename acc_t, typename Launch>
void add_weighted_map_launch(Launch&& launch, dim3 grid, int64_t cpb, const scalar_t* src, const scalar_t* roi_map,
                             scalar_t* dst, const MapStats* partials, acc_t* weights, int64_t map_weight, int64_t c,
                             int64_t nbins) {
  launch(grid, kThreads, 0, add_weighted_map_kernel<scalar_t, acc_t>, src, roi_map, dst, partials, weights, c, nbins,
         cpb, map_weight);
}

// roi_align (roi_map added as is, or none) and roi_align_weighted (map_weight != none: weights Tensor[K]).
template <typename scalar_t, typename acc_t, typename Launch>
void roi_align_forward_plan(Launch&& launch, dim3 grid, int64_t cpb, const scalar_t* input, const acc_t* rois,
                            const scalar_t* roi_map, scalar_t* out, MapStats* partials, acc_t* weights,
                            int64_t map_weight, int64_t n, int64_t c, int64_t h, int64_t w, int64_t ph, int64_t pw,
                            acc_t spatial_scale, int64_t sampling_ratio, bool aligned) {
  if (map_weight == kMapWeightNone) {
    launch(grid, kThreads, 0, roi_align_forward_kernel<scalar_t, acc_t, false>, input, rois, roi_map, out, partials, n,
           c, h, w, ph, pw, spatial_scale, sampling_ratio, aligned, cpb);
    return;
  }
  launch(grid, kThreads, 0, roi_align_forward_kernel<scalar_t, acc_t, true>, input, rois,
         static_cast<const scalar_t*>(nullptr), out, partials, n, c, h, w, ph, pw, spatial_scale, sampling_ratio,
         aligned, cpb);
  add_weighted_map_launch<scalar_t, acc_t>(launch, grid, cpb, out, roi_map, out, partials, weights, map_weight, c,
                                           ph * pw);
}

template <typename scalar_t, typename acc_t, typename Launch>
void multi_level_plan(Launch&& launch, dim3 grid, int64_t cpb, const LevelMaps<scalar_t, acc_t>& maps,
                      const acc_t* rois, const int64_t* levels, const scalar_t* roi_map, scalar_t* out,
                      MapStats* partials, int64_t map_weight, int64_t n, int64_t c, int64_t ph, int64_t pw,
                      int64_t sampling_ratio, bool aligned) {
  if (map_weight == kMapWeightNone) {
    launch(grid, kThreads, 0, multi_level_kernel<scalar_t, acc_t, false>, maps, rois, levels, roi_map, out, partials, n,
           c, ph, pw, sampling_ratio, aligned, cpb);
    return;
  }
  launch(grid, kThreads, 0, multi_level_kernel<scalar_t, acc_t, true>, maps, rois, levels,
         static_cast<const scalar_t*>(nullptr), out, partials, n, c, ph, pw, sampling_ratio, aligned, cpb);
  add_weighted_map_launch<scalar_t, acc_t>(launch, grid, cpb, out, roi_map, out, partials, nullptr, map_weight, c,
                                           ph * pw);
}

// add_weighted_map: features Tensor[K, C, nbins] -> out, weights Tensor[K].
template <typename scalar_t, typename acc_t, typename Launch>
void add_weighted_map_plan(Launch&& launch, dim3 grid, int64_t cpb, const scalar_t* features, const scalar_t* roi_map,
                           scalar_t* out, MapStats* partials, acc_t* weights, int64_t map_weight, int64_t c,
                           int64_t nbins) {
  if (map_weight != kMapWeightNone)
    launch(grid, kThreads, 0, map_stats_kernel<scalar_t>, features, partials, c, nbins, cpb);
  add_weighted_map_launch<scalar_t, acc_t>(launch, grid, cpb, features, roi_map, out, partials, weights, map_weight, c,
                                           nbins);
}

template <typename scalar_t, typename acc_t, typename Launch>
void roi_align_backward_plan(Launch&& launch, dim3 grid, int64_t cpb, const scalar_t* grad, const acc_t* rois,
                             acc_t* grad_input, int64_t n, int64_t c, int64_t h, int64_t w, int64_t ph, int64_t pw,
                             acc_t spatial_scale, int64_t sampling_ratio, bool aligned) {
  launch(grid, kThreads, 0, roi_align_backward_kernel<scalar_t, acc_t>, grad, rois, grad_input, n, c, h, w, ph, pw,
         spatial_scale, sampling_ratio, aligned, cpb);
}

}  // namespace opmask_fast
