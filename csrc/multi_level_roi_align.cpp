// Schema of multi-level RoIAlign: the FPN pooler in one launch. Each RoI is pooled from the pyramid level its
// `levels` entry names, so no per-level selection (nonzero, a host sync per level) is needed. Kernels live in
// cpu/multi_level_roi_align_kernel.cpp and cuda/multi_level_roi_align_kernel.cu; the fake kernel is registered in
// Python (opmask_fast/ops/multi_level_roi_align.py). Forward only: the inference path runs it without autograd.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(opmask_fast, m) {
  // features: L <= 8 Tensor[N, C, H_l, W_l] of one dtype and device; spatial_scales: L floats.
  // rois: Tensor[K, 5] as for roi_align; levels: int64 Tensor[K] with values in [0, L).
  // map_weight: how roi_map is weighted per RoI, as roi_align_weighted (map_weight.h); 0 adds it as is.
  m.def(
      "multi_level_roi_align(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
      "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, bool aligned, Tensor? roi_map=None, "
      "int map_weight=0) -> Tensor");
}
