// Schema of RoIAlign. Kernels live in cpu/roi_align_kernel.cpp and cuda/roi_align_kernel.cu; fake kernels and
// autograd are registered in Python (opmask_fast/ops/roi_align.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(opmask_fast, m) {
  // rois: Tensor[K, 5] (batch index, x1, y1, x2, y2) in float32 (float64 for float64 input).
  // roi_map: optional Tensor[K, Ho, Wo] added to every channel of the output (fused prior add).
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned, Tensor? roi_map=None) -> Tensor");
  // roi_align with roi_map weighted per RoI by that RoI's own pooled features (map_weight.h: 1 feature std, 2 feature
  // range), added as the output is written; also returns the weights, Tensor[K] (float32; float64 for float64).
  // Its backward is roi_align_backward and weight x the channel sum for roi_map (the weight is a constant).
  m.def(
      "roi_align_weighted(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned, Tensor roi_map, int map_weight) -> (Tensor, Tensor)");
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned) -> Tensor");
}
