// The weight of the map that RoIAlign adds to a RoI's pooled features (roi_align_weighted, multi_level_roi_align's
// map_weight), shared by the CPU and CUDA kernels and mirrored by `map_gain` in ops/reference/roi_align.py:
//
//   kMapWeightNone  (0): the map as is;
//   kMapWeightStd   (1): std(pooled) / max(std(map), 1e-6), sample standard deviations over all of the RoI's values
//                        (C x Ho x Wo pooled values, Ho x Wo map values);
//   kMapWeightRange (2): max(pooled) - min(pooled).
//
// The statistics are read off the RoI's own output, written just before (no second pass over memory), in double.
// A weight that is not finite (NaN or infinite features, a one-value map) is 0, as nan_to_num(nan=0, posinf=0) in
// the reference. The weight is a constant of the backward (the map's gradient is weight x the channel sum).
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "error_message.h"

namespace opmask_fast {

constexpr int64_t kMapWeightNone = 0;
constexpr int64_t kMapWeightStd = 1;
constexpr int64_t kMapWeightRange = 2;

// The denominator floor of the std weight: a flat map (std 0) gives a large finite weight times a zero map.
constexpr double kMinMapStd = 1e-6;

inline void check_map_weight(int64_t mode, const char* op) {
  TORCH_CHECK(mode == kMapWeightNone || mode == kMapWeightStd || mode == kMapWeightRange,
              format_message("%s: map_weight must be 0 (none), 1 (feature std) or 2 (feature range), got %lld", op,
                             static_cast<long long>(mode)));
}

// Statistics in two passes (the mean, then the squared deviations): exact where sum and sum of squares would cancel.
C10_HOST_DEVICE inline double sample_std(double sum_sq_dev, int64_t count) {
  // count 1: 0 / 0 = NaN, as torch.std; count 0 gives NaN too (the mean was 0 / 0).
  return sqrt(sum_sq_dev / static_cast<double>(count - 1));
}

// x - x is 0 exactly for finite x and NaN for inf or NaN (no <cmath> overloads needed on host and device).
C10_HOST_DEVICE inline double finite_or_zero(double g) { return g - g == 0.0 ? g : 0.0; }

C10_HOST_DEVICE inline double std_weight(double feature_std, double map_std) {
  const double den = map_std < kMinMapStd ? kMinMapStd : map_std;  // NaN stays NaN, as torch's clamp
  return finite_or_zero(feature_std / den);
}

// max - min with NaN propagation: any NaN value makes the range (and so the weight) NaN -> 0.
struct RangeAcc {
  double lo, hi;
  bool nan;
};

C10_HOST_DEVICE inline RangeAcc range_init() {
  constexpr double inf = std::numeric_limits<double>::infinity();
  return {inf, -inf, false};
}

C10_HOST_DEVICE inline void range_add(RangeAcc& a, double v) {
  if (v != v) a.nan = true;
  if (v < a.lo) a.lo = v;
  if (v > a.hi) a.hi = v;
}

C10_HOST_DEVICE inline double range_weight(const RangeAcc& a) { return a.nan ? 0.0 : finite_or_zero(a.hi - a.lo); }

// The statistics of a run of values in one pass, mergeable in any tree (the CUDA kernels: per thread, per block, per
// RoI): count, mean and sum of squared deviations (Welford's update, Chan et al.'s merge), and the range. As stable
// as the two-pass std for these sizes; a NaN or infinite value makes the std weight NaN -> 0, as in two passes.
struct MapStats {
  double n, mean, m2;
  RangeAcc range;
};

C10_HOST_DEVICE inline MapStats map_stats_init() { return {0.0, 0.0, 0.0, range_init()}; }

C10_HOST_DEVICE inline void map_stats_add(MapStats& s, double v) {
  s.n += 1.0;
  const double d = v - s.mean;
  s.mean += d / s.n;
  s.m2 += d * (v - s.mean);
  range_add(s.range, v);
}

C10_HOST_DEVICE inline MapStats map_stats_merge(const MapStats& a, const MapStats& b) {
  if (b.n == 0.0) return a;
  if (a.n == 0.0) return b;
  MapStats s;
  s.n = a.n + b.n;
  const double d = b.mean - a.mean;
  s.mean = a.mean + d * (b.n / s.n);
  s.m2 = a.m2 + b.m2 + d * d * (a.n * (b.n / s.n));
  s.range.lo = b.range.lo < a.range.lo ? b.range.lo : a.range.lo;
  s.range.hi = b.range.hi > a.range.hi ? b.range.hi : a.range.hi;
  s.range.nan = a.range.nan || b.range.nan;
  return s;
}

// The weight (mode kMapWeight*) from the RoI's feature statistics and its map's; 1 for the map as is.
C10_HOST_DEVICE inline double map_stats_weight(const MapStats& features, const MapStats& map, int64_t mode) {
  if (mode == kMapWeightStd)
    return std_weight(sample_std(features.m2, static_cast<int64_t>(features.n)),
                      sample_std(map.m2, static_cast<int64_t>(map.n)));
  if (mode == kMapWeightRange) return range_weight(features.range);
  return 1.0;
}

}  // namespace opmask_fast
