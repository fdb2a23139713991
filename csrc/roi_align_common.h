// Per-element RoIAlign maths shared by the CPU and CUDA kernels (and mirrored by the Python reference), so the CPU
// tests exercise exactly the arithmetic the GPU runs. The kernels keep only indexing, launch and memory handling.
//
// Bilinear weights separate into a y factor and an x factor: sample (iy, ix) of bin (p, q) reads the four corners
// (y_lo|y_hi) x (x_lo|x_hi) with weights wy * wx. Each axis is therefore described once per (bin row, sample row)
// by an AxisTap, and every sample weight is a product of two of them - computed once per RoI, reused for every
// channel.
#pragma once

#include <c10/macros/Macros.h>
#include <cstdint>

namespace opmask_fast {

// Adaptive grids above this many samples per axis are clamped. The Python wrapper refuses such boxes before any
// kernel runs; the clamp only keeps a direct op call on an absurd box from overflowing an int or running for hours.
constexpr int64_t kMaxGridPerAxis = 1 << 13;

// Pyramid levels one multi-level launch accepts (FPN uses 4 or 5).
constexpr int64_t kMaxLevels = 8;

template <typename acc_t>
struct RoiGeometry {
  int64_t batch;      // image index, -1 when the stored value is not a valid index
  acc_t start_h;      // first row of the RoI in feature pixels
  acc_t start_w;      // first column
  acc_t bin_h;        // bin height in feature pixels
  acc_t bin_w;        // bin width
  int64_t grid_h;     // samples per bin along y
  int64_t grid_w;     // samples per bin along x
  acc_t inv_count;    // 1 / (grid_h * grid_w): the bin average
};

template <typename acc_t>
C10_HOST_DEVICE inline int64_t adaptive_grid(acc_t extent, int64_t pooled) {
  acc_t g = ceil(extent / static_cast<acc_t>(pooled));
  if (!(g >= 0)) return 0;  // NaN extent: no samples, the bin reads 0
  if (g > static_cast<acc_t>(kMaxGridPerAxis)) return kMaxGridPerAxis;
  return static_cast<int64_t>(g);
}

// roi points at (batch index, x1, y1, x2, y2).
template <typename acc_t>
C10_HOST_DEVICE inline RoiGeometry<acc_t> roi_geometry(const acc_t* roi, int64_t batch_size, acc_t spatial_scale,
                                                       int64_t pooled_height, int64_t pooled_width,
                                                       int64_t sampling_ratio, bool aligned) {
  RoiGeometry<acc_t> g;
  const acc_t b = roi[0];
  g.batch = (b >= 0 && b < static_cast<acc_t>(batch_size)) ? static_cast<int64_t>(b) : -1;
  // aligned: pixel centres at half-integers, so shift the box by half a pixel.
  const acc_t offset = aligned ? static_cast<acc_t>(0.5) : static_cast<acc_t>(0);
  g.start_w = roi[1] * spatial_scale - offset;
  g.start_h = roi[2] * spatial_scale - offset;
  acc_t roi_w = roi[3] * spatial_scale - offset - g.start_w;
  acc_t roi_h = roi[4] * spatial_scale - offset - g.start_h;
  if (!aligned) {  // legacy behaviour: malformed boxes are forced to 1x1
    roi_w = roi_w > static_cast<acc_t>(1) ? roi_w : static_cast<acc_t>(1);
    roi_h = roi_h > static_cast<acc_t>(1) ? roi_h : static_cast<acc_t>(1);
  }
  g.bin_h = roi_h / static_cast<acc_t>(pooled_height);
  g.bin_w = roi_w / static_cast<acc_t>(pooled_width);
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_h, pooled_height);
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : adaptive_grid(roi_w, pooled_width);
  const int64_t count = g.grid_h * g.grid_w;
  g.inv_count = static_cast<acc_t>(1) / static_cast<acc_t>(count > 0 ? count : 1);
  return g;
}

// One axis of one bilinear sample: the two neighbouring pixel indices and their weights.
template <typename acc_t>
struct AxisTap {
  int32_t lo;
  int32_t hi;
  acc_t w_lo;
  acc_t w_hi;  // both weights are 0 when the sample lies more than one pixel outside the map
};

// Sample i (of grid) in bin p along an axis of length size; same evaluation order as torchvision.
template <typename acc_t>
C10_HOST_DEVICE inline AxisTap<acc_t> axis_tap(acc_t start, acc_t bin, int64_t p, int64_t i, int64_t grid,
                                                int64_t size) {
  AxisTap<acc_t> t;
  acc_t v = start + static_cast<acc_t>(p) * bin +
            (static_cast<acc_t>(i) + static_cast<acc_t>(0.5)) * bin / static_cast<acc_t>(grid);
  // Written so that NaN also lands in the "outside" branch; an empty axis (size 0) has no pixel to read.
  if (size <= 0 || !(v >= static_cast<acc_t>(-1) && v <= static_cast<acc_t>(size))) {
    t.lo = 0;
    t.hi = 0;
    t.w_lo = 0;
    t.w_hi = 0;
    return t;
  }
  if (v <= 0) v = 0;
  int32_t lo = static_cast<int32_t>(v);
  int32_t hi;
  if (lo >= size - 1) {
    lo = hi = static_cast<int32_t>(size - 1);
    v = static_cast<acc_t>(lo);
  } else {
    hi = lo + 1;
  }
  const acc_t frac = v - static_cast<acc_t>(lo);
  t.lo = lo;
  t.hi = hi;
  t.w_lo = static_cast<acc_t>(1) - frac;
  t.w_hi = frac;
  return t;
}

}  // namespace opmask_fast
