// add_weighted_map: features[r] + w_r * roi_map[r] on every channel, the weight w_r read off RoI r's own features
// (map_weight.h): the second half of roi_align_weighted, for features pooled before the map was known (the prior at
// the mask head's resolution is computed from the pooled features themselves). The schema is in
// add_weighted_map.cpp, the kernels in cpu/add_weighted_map_kernel.cpp and cuda/add_weighted_map_kernel.cu, the fake
// kernel and autograd in opmask_fast/ops/add_weighted_map.py. Host-side checks shared by both backends.
#pragma once

#include <ATen/ATen.h>

#include "error_message.h"
#include "map_weight.h"

namespace opmask_fast {

inline void check_add_weighted_map(const at::Tensor& features, const at::Tensor& roi_map, int64_t map_weight) {
  const char* op = "opmask_fast::add_weighted_map";
  TORCH_CHECK(features.dim() == 4, format_message("%s: features must be a Tensor[K, C, H, W]", op));
  TORCH_CHECK(roi_map.dim() == 3 && roi_map.size(0) == features.size(0) && roi_map.size(1) == features.size(2) &&
                  roi_map.size(2) == features.size(3),
              format_message("%s: roi_map must be a Tensor[K, H, W] matching the features", op));
  TORCH_CHECK(roi_map.device() == features.device(),
              format_message("%s: roi_map must be on the features' device", op));
  TORCH_CHECK(at::isFloatingType(features.scalar_type()) && roi_map.scalar_type() == features.scalar_type(),
              format_message("%s: features and roi_map must be of one floating dtype", op));
  check_map_weight(map_weight, op);
}

}  // namespace opmask_fast
