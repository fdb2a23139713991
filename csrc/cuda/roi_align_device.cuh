// Device code shared by the RoIAlign CUDA kernels (roi_align_kernels.cuh): launch constants, the per-block axis-tap
// cache, the pooling of one RoI's block of (channel, bin) outputs and the block reduction of their statistics.
#pragma once

#include <c10/util/Exception.h>
#ifdef __CUDACC__
#include <cuda_runtime.h>
#endif

#include <cstdint>

#include "../map_weight.h"
#include "../roi_align_common.h"

namespace opmask_fast {

constexpr int kThreads = 256;
// Axis taps cached per block (per axis). A RoI needing more (a huge adaptive grid) recomputes them per sample.
constexpr int kMaxAxisTaps = 512;
// Target number of (channel, bin) outputs per block.
constexpr int64_t kOutputsPerBlock = 1024;

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
// out Tensor[K, C, ph, pw] (+ roi_map Tensor[K, ph, pw] when not null). With kStats each thread also adds the values
// it writes (as stored) to stats, for the map's weight. Called by every thread of the block.
template <typename scalar_t, typename acc_t, bool kStats>
__device__ inline void pool_roi_block(const scalar_t* __restrict__ input, const RoiGeometry<acc_t>& g, int64_t r,
                                      int64_t c0, int64_t channels_per_block, int64_t c, int64_t h, int64_t w,
                                      int64_t ph, int64_t pw, const scalar_t* __restrict__ roi_map,
                                      scalar_t* __restrict__ out, AxisTap<acc_t>* ytaps, AxisTap<acc_t>* xtaps,
                                      MapStats& stats) {
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
    const scalar_t stored = static_cast<scalar_t>(sum);
    out[(r * c + ch) * nbins + bin] = stored;
    if (kStats) map_stats_add(stats, static_cast<double>(stored));
  }
}

// One value per thread combined over the block by merge (blockDim.x a power of two, buf one T per thread); every
// thread gets the result, in the same tree order on every run.
template <typename T, typename Merge>
__device__ inline T block_reduce(T v, T* buf, Merge merge) {
  buf[threadIdx.x] = v;
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) buf[threadIdx.x] = merge(buf[threadIdx.x], buf[threadIdx.x + s]);
    __syncthreads();
  }
  const T out = buf[0];
  __syncthreads();  // buf is reused by the next reduction
  return out;
}

struct MergeStats {
  __device__ MapStats operator()(const MapStats& a, const MapStats& b) const { return map_stats_merge(a, b); }
};

// The block's statistics (each thread's own in local) into slot (blockIdx.x, blockIdx.y) of partials
// Tensor[K, groups]. Called by every thread of the block.
__device__ inline void store_block_stats(const MapStats& local, MapStats* buf, MapStats* __restrict__ partials) {
  const MapStats s = block_reduce(local, buf, MergeStats());
  if (threadIdx.x == 0) partials[static_cast<int64_t>(blockIdx.x) * gridDim.y + blockIdx.y] = s;
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
