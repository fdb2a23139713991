// Schema of add_weighted_map (add_weighted_map.h): out = features + w * roi_map broadcast over the channels, and the
// per-RoI weights w (Tensor[K] in the accumulation dtype: float32, float64 for float64), as roi_align_weighted
// returns them.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(opmask_fast, m) {
  // features: Tensor[K, C, H, W]; roi_map: Tensor[K, H, W] of the same dtype; map_weight: 0 (w = 1), 1 (std ratio)
  // or 2 (feature range), map_weight.h.
  m.def("add_weighted_map(Tensor features, Tensor roi_map, int map_weight) -> (Tensor, Tensor)");
}
