// Per-RoI bilinear taps of the CPU RoIAlign kernels (roi_align_kernel.cpp, multi_level_roi_align_kernel.cpp): each
// RoI's taps (pixel offset within a channel plane, weight already divided by the bin's sample count) are built once
// and reused for every channel.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "../map_weight.h"
#include "../roi_align_common.h"

namespace opmask_fast {
namespace cpu {

// Taps of one RoI: bin b owns entries [bin_begin[b], bin_begin[b + 1]) of offset/weight.
template <typename acc_t>
struct RoiTaps {
  std::vector<AxisTap<acc_t>> ytaps, xtaps;
  std::vector<int64_t> bin_begin;
  std::vector<int32_t> offset;  // y * W + x within one channel plane (H * W < 2^31 is checked)
  std::vector<acc_t> weight;
};

// Samples of a bin narrower than a pixel share pixels: summing their weights per pixel once per RoI saves a load
// and a multiply-add per channel for every duplicate. Small bins only (the quadratic scan stays cheap).
template <typename acc_t>
void merge_duplicates(RoiTaps<acc_t>& t, int64_t begin) {
  const int64_t end = static_cast<int64_t>(t.offset.size());
  if (end - begin > 64) return;
  int64_t out = begin;
  for (int64_t i = begin; i < end; ++i) {
    int64_t j = begin;
    while (j < out && t.offset[j] != t.offset[i]) ++j;
    if (j < out) {
      t.weight[j] += t.weight[i];
    } else {
      t.offset[out] = t.offset[i];
      t.weight[out] = t.weight[i];
      ++out;
    }
  }
  t.offset.resize(out);
  t.weight.resize(out);
}

// Fills taps for one RoI; zero-weight taps (samples outside the map, exact pixel hits) are dropped and taps on
// the same pixel merged.
template <typename acc_t>
void build_taps(const RoiGeometry<acc_t>& g, int64_t ph, int64_t pw, int64_t height, int64_t width,
                RoiTaps<acc_t>& t) {
  const int64_t gh = g.grid_h, gw = g.grid_w;
  t.ytaps.resize(ph * gh);
  t.xtaps.resize(pw * gw);
  for (int64_t p = 0; p < ph; ++p)
    for (int64_t i = 0; i < gh; ++i) t.ytaps[p * gh + i] = axis_tap(g.start_h, g.bin_h, p, i, gh, height);
  for (int64_t q = 0; q < pw; ++q)
    for (int64_t i = 0; i < gw; ++i) t.xtaps[q * gw + i] = axis_tap(g.start_w, g.bin_w, q, i, gw, width);
  t.bin_begin.resize(ph * pw + 1);
  t.offset.clear();
  t.weight.clear();
  auto push = [&](int64_t y, int64_t x, acc_t w) {
    if (w != 0) {
      t.offset.push_back(static_cast<int32_t>(y * width + x));
      t.weight.push_back(w);
    }
  };
  for (int64_t p = 0; p < ph; ++p) {
    for (int64_t q = 0; q < pw; ++q) {
      t.bin_begin[p * pw + q] = static_cast<int64_t>(t.offset.size());
      for (int64_t iy = 0; iy < gh; ++iy) {
        const AxisTap<acc_t>& ty = t.ytaps[p * gh + iy];
        if (ty.w_lo == 0 && ty.w_hi == 0) continue;
        for (int64_t ix = 0; ix < gw; ++ix) {
          const AxisTap<acc_t>& tx = t.xtaps[q * gw + ix];
          push(ty.lo, tx.lo, ty.w_lo * tx.w_lo * g.inv_count);
          push(ty.lo, tx.hi, ty.w_lo * tx.w_hi * g.inv_count);
          push(ty.hi, tx.lo, ty.w_hi * tx.w_lo * g.inv_count);
          push(ty.hi, tx.hi, ty.w_hi * tx.w_hi * g.inv_count);
        }
      }
      merge_duplicates(t, t.bin_begin[p * pw + q]);
    }
  }
  t.bin_begin[ph * pw] = static_cast<int64_t>(t.offset.size());
}

// Channels handled together: each tap's offset and weight are loaded once and applied to this many planes, and
// the independent accumulators keep the FPU busy while the scattered loads are in flight.
constexpr int64_t kChannelBlock = 8;

// Output bins of channels [c0, c0 + count) of one RoI. BLOCK > 1 processes exactly BLOCK channels per step with
// the accumulators in registers; BLOCK == 1 handles a remainder of any size.
template <typename scalar_t, typename acc_t, int64_t BLOCK>
inline void pool_channels(const RoiTaps<acc_t>& t, const scalar_t* planes, scalar_t* dst, const scalar_t* map,
                          int64_t c0, int64_t count, int64_t plane, int64_t nbins) {
  const int32_t* off = t.offset.data();
  const acc_t* wt = t.weight.data();
  for (int64_t cs = c0; cs < c0 + count; cs += BLOCK) {
    const scalar_t* src = planes + cs * plane;
    for (int64_t b = 0; b < nbins; ++b) {
      acc_t acc[BLOCK] = {};
      for (int64_t i = t.bin_begin[b]; i < t.bin_begin[b + 1]; ++i) {
        const acc_t wi = wt[i];
        const scalar_t* p = src + off[i];
        for (int64_t j = 0; j < BLOCK; ++j) acc[j] += wi * static_cast<acc_t>(p[j * plane]);
      }
      const acc_t add = map ? static_cast<acc_t>(map[b]) : acc_t(0);
      for (int64_t j = 0; j < BLOCK; ++j) dst[(cs + j) * nbins + b] = static_cast<scalar_t>(acc[j] + add);
    }
  }
}

// Sums in double over kSumLanes interleaved accumulators: the lanes are independent chains the compiler vectorises
// (no reassociation needed), where one accumulator would wait on each add's latency. The order differs from a plain
// loop's only in the last bits of a double; the weight is rounded to the RoI's accumulate type afterwards.
constexpr int64_t kSumLanes = 8;

template <typename scalar_t, typename Term>
inline double lane_sum(const scalar_t* x, int64_t n, Term term) {
  double lane[kSumLanes] = {};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int64_t j = 0; j < kSumLanes; ++j) lane[j] += term(static_cast<double>(x[i + j]));
  double total = 0.0;
  for (; i < n; ++i) total += term(static_cast<double>(x[i]));
  for (int64_t j = 0; j < kSumLanes; ++j) total += lane[j];
  return total;
}

// Sample std of n values, two passes (map_weight.h: exact where sum and sum of squares would cancel).
template <typename scalar_t>
inline double sample_std_of(const scalar_t* x, int64_t n) {
  const double mean = lane_sum(x, n, [](double v) { return v; }) / static_cast<double>(n);
  return sample_std(lane_sum(x, n, [mean](double v) { return (v - mean) * (v - mean); }), n);
}

// The weighted map of one RoI (map_weight.h): reads the RoI's features src (C x nbins; RoIAlign passes its output
// just written, still in cache, as both src and dst), computes its weight and writes dst = src + weight * map[bin] on
// every channel. Returns the weight.
template <typename scalar_t, typename acc_t>
inline acc_t add_weighted_map(const scalar_t* src, scalar_t* dst, const scalar_t* map, int64_t channels, int64_t nbins,
                              int64_t mode) {
  const int64_t count = channels * nbins;
  double weight = 1.0;
  if (mode == kMapWeightStd) {
    weight = std_weight(sample_std_of(src, count), sample_std_of(map, nbins));
  } else if (mode == kMapWeightRange) {
    RangeAcc range = range_init();
    for (int64_t i = 0; i < count; ++i) range_add(range, static_cast<double>(src[i]));
    weight = range_weight(range);
  }
  const acc_t w = static_cast<acc_t>(weight);  // 1 for the map as is: 1 * m is m exactly, so one loop serves both
  for (int64_t ch = 0; ch < channels; ++ch) {
    const scalar_t* s = src + ch * nbins;
    scalar_t* d = dst + ch * nbins;
    for (int64_t b = 0; b < nbins; ++b)
      d[b] = static_cast<scalar_t>(static_cast<acc_t>(s[b]) + w * static_cast<acc_t>(map[b]));
  }
  return w;
}

}  // namespace cpu
}  // namespace opmask_fast
