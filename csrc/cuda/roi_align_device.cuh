// Device code shared by the RoIAlign CUDA kernels (roi_align_kernel.cu, multi_level_roi_align_kernel.cu): launch
// constants, the per-block axis-tap cache and the pooling of one RoI's block of (channel, bin) outputs.
#pragma once

#include <c10/util/Exception.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../map_weight.h"
#include "../roi_align_common.h"

namespace opmask_fast {

constexpr int kThreads = 256;
// Axis taps cached per block (per axis). A RoI needing more (a huge adaptive grid) recomputes them per sample.
constexpr int kMaxAxisTaps = 512;
// Target number of (channel, bin) outputs per block.
constexpr int64_t kOutputsPerBlock = 1024;
// Threads of a block that pools a whole RoI and weights its map (a power of two: the reductions halve it).
constexpr int kWeightedThreads = 512;

template <typename acc_t>
__device__ inline void load_axis_taps(const RoiGeometry<acc_t>& g, int64_t ph, int64_t pw, int64_t h, int64_t w,
                                      AxisTap<acc_t>* ytaps, AxisTap<acc_t>* xtaps) {
  for (int64_t i = threadIdx.x; i < ph * g.grid_h; i += blockDim.x)
    ytaps[i] = axis_tap(g.start_h, g.bin_h, i / g.grid_h, i % g.grid_h, g.grid_h, h);
  for (int64_t i = threadIdx.x; i < pw * g.grid_w; i += blockDim.x)
    xtaps[i] = axis_tap(g.start_w, g.bin_w, i / g.grid_w, i % g.grid_w, g.grid_w, w);
}

// The block's axis taps in shared memory when they fit (true), else false and every sample recomputes its own.
// Called by every thread of the block (it holds the barrier).
template <typename acc_t>
__device__ inline bool cache_axis_taps(const RoiGeometry<acc_t>& g, int64_t ph, int64_t pw, int64_t h, int64_t w,
                                       AxisTap<acc_t>* ytaps, AxisTap<acc_t>* xtaps) {
  const bool cached = ph * g.grid_h <= kMaxAxisTaps && pw * g.grid_w <= kMaxAxisTaps;
  if (cached) load_axis_taps(g, ph, pw, h, w, ytaps, xtaps);
  __syncthreads();
  return cached;
}

// Channels [c0, c0 + channels_per_block) of RoI r with geometry g, read from input Tensor[N, C, h, w], written to
// out Tensor[K, C, ph, pw] (+ roi_map Tensor[K, ph, pw] when not null). Called by every thread of the block.
template <typename scalar_t, typename acc_t>
__device__ inline void pool_roi_block(const scalar_t* __restrict__ input, const RoiGeometry<acc_t>& g, int64_t r,
                                      int64_t c0, int64_t channels_per_block, int64_t c, int64_t h, int64_t w,
                                      int64_t ph, int64_t pw, const scalar_t* __restrict__ roi_map,
                                      scalar_t* __restrict__ out, AxisTap<acc_t>* ytaps, AxisTap<acc_t>* xtaps) {
  const bool cached = cache_axis_taps(g, ph, pw, h, w, ytaps, xtaps);
  const int64_t nbins = ph * pw;
  const int64_t c1 = c0 + channels_per_block < c ? c0 + channels_per_block : c;
  for (int64_t e = threadIdx.x; e < (c1 - c0) * nbins; e += blockDim.x) {
    const int64_t ch = c0 + e / nbins, bin = e % nbins, p = bin / pw, q = bin % pw;
    acc_t sum = 0;
    if (g.batch >= 0) {  // an invalid batch index (refused in Python) reads nothing
      const scalar_t* plane = input + (g.batch * c + ch) * h * w;
      for (int64_t iy = 0; iy < g.grid_h; ++iy) {
        const AxisTap<acc_t> ty =
            cached ? ytaps[p * g.grid_h + iy] : axis_tap(g.start_h, g.bin_h, p, iy, g.grid_h, h);
        if (ty.w_lo == 0 && ty.w_hi == 0) continue;
        const scalar_t* row_lo = plane + ty.lo * w;
        const scalar_t* row_hi = plane + ty.hi * w;
        for (int64_t ix = 0; ix < g.grid_w; ++ix) {
          const AxisTap<acc_t> tx =
              cached ? xtaps[q * g.grid_w + ix] : axis_tap(g.start_w, g.bin_w, q, ix, g.grid_w, w);
          if (tx.w_lo == 0 && tx.w_hi == 0) continue;
          sum += ty.w_lo * (tx.w_lo * static_cast<acc_t>(row_lo[tx.lo]) + tx.w_hi * static_cast<acc_t>(row_lo[tx.hi])) +
                 ty.w_hi * (tx.w_lo * static_cast<acc_t>(row_hi[tx.lo]) + tx.w_hi * static_cast<acc_t>(row_hi[tx.hi]));
        }
      }
    }
    sum *= g.inv_count;
    if (roi_map != nullptr) sum += static_cast<acc_t>(roi_map[r * nbins + bin]);
    out[(r * c + ch) * nbins + bin] = static_cast<scalar_t>(sum);
  }
}

struct SumOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct MinOp {
  __device__ double operator()(double a, double b) const { return b < a ? b : a; }
};
struct MaxOp {
  __device__ double operator()(double a, double b) const { return b > a ? b : a; }
};

// One value per thread combined over the block (blockDim.x a power of two); every thread gets the result.
template <typename Op>
__device__ inline double block_reduce(double v, double* buf, Op op) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] = op(buf[threadIdx.x], buf[threadIdx.x + s]);
    __syncthreads();
  }
  const double out = buf[0];
  __syncthreads();  // buf is reused by the next reduction
  return out;
}

// Sample std of x[0, count), each thread reading the elements e = threadIdx.x (mod blockDim.x).
template <typename scalar_t>
__device__ inline double block_std(const scalar_t* x, int64_t count, double* buf) {
  double sum = 0.0;
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) sum += static_cast<double>(x[e]);
  const double mean = block_reduce(sum, buf, SumOp()) / static_cast<double>(count);
  double ssd = 0.0;
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
    const double d = static_cast<double>(x[e]) - mean;
    ssd += d * d;
  }
  return sample_std(block_reduce(ssd, buf, SumOp()), count);
}

// The weighted map of one RoI (map_weight.h): reads the RoI's values src (all channels) for its statistics and writes
// dst = src + weight * map[bin]. In place after a pooling launch src and dst alias: every thread reads back only the
// elements it wrote itself (same stride), so no barrier is needed beyond the reductions'. Returns the weight (in every
// thread). Called by every thread of the block.
template <typename scalar_t, typename acc_t>
__device__ inline acc_t add_weighted_map_block(const scalar_t* src, scalar_t* dst, const scalar_t* __restrict__ map,
                                               int64_t count, int64_t nbins, int64_t mode, double* buf) {
  double weight = 1.0;
  if (mode == kMapWeightStd) {
    const double feature_std = block_std(src, count, buf);
    weight = std_weight(feature_std, block_std(map, nbins, buf));
  } else if (mode == kMapWeightRange) {
    RangeAcc range = range_init();
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) range_add(range, static_cast<double>(src[e]));
    const double any_nan = block_reduce(range.nan ? 1.0 : 0.0, buf, MaxOp());
    range.lo = block_reduce(range.lo, buf, MinOp());
    range.hi = block_reduce(range.hi, buf, MaxOp());
    range.nan = any_nan > 0.0;
    weight = range_weight(range);
  }
  const acc_t w = static_cast<acc_t>(weight);  // 1 for the map as is: 1 * m (or fma(1, m, s)) is exact
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x)
    dst[e] = static_cast<scalar_t>(static_cast<acc_t>(src[e]) + w * static_cast<acc_t>(map[e % nbins]));
  return w;
}

// The weighted map added to K RoIs of `count` values each (C x nbins): one block of kWeightedThreads per RoI, by
// add_weighted_map_block (src and dst alias when it runs in place after a pooling launch; the standalone op reads the
// features and writes its output directly). The pooling runs before it with the full (RoI, channel group) grid, so
// neither launch leaves SMs idle at a hundred RoIs; the RoI's values are read twice (statistics, add), which at these
// sizes mostly hits L2. map_weight none adds the map as is (w = 1).
template <typename scalar_t, typename acc_t>
__global__ void add_weighted_map_kernel(const scalar_t* src, const scalar_t* __restrict__ roi_map, scalar_t* dst,
                                        acc_t* __restrict__ weights, int64_t count, int64_t nbins,
                                        int64_t map_weight) {
  __shared__ double buf[kWeightedThreads];
  const int64_t r = blockIdx.x;
  const acc_t weight = add_weighted_map_block<scalar_t, acc_t>(src + r * count, dst + r * count, roi_map + r * nbins,
                                                               count, nbins, map_weight, buf);
  if (weights != nullptr && threadIdx.x == 0) weights[r] = weight;
}

// Blocks of one launch: one per (RoI, group of channels) with about kOutputsPerBlock outputs each.
inline dim3 grid_for(int64_t k, int64_t c, int64_t nbins, int64_t* channels_per_block) {
  int64_t cpb = (kOutputsPerBlock + nbins - 1) / nbins;
  cpb = cpb < c ? cpb : c;
  const int64_t groups = (c + cpb - 1) / cpb;
  TORCH_CHECK(groups <= 65535 && k < (int64_t(1) << 31), "opmask_fast::roi_align: too many RoIs or channels");
  *channels_per_block = cpb;
  return dim3(static_cast<unsigned>(k), static_cast<unsigned>(groups));
}

}  // namespace opmask_fast
