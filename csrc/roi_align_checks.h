// Host-side argument checks of the RoIAlign kernels, shared by the CPU and CUDA backends so both refuse the same
// inputs with the same messages when the op is called directly (the Python wrapper checks first).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "error_message.h"
#include "map_weight.h"
#include "roi_align_common.h"

namespace opmask_fast {

inline void check_roi_align_rois(const at::Tensor& rois, const at::Tensor& ref, int64_t ph, int64_t pw,
                                 int64_t sampling_ratio) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "opmask_fast::roi_align: rois must be a Tensor[K, 5]");
  TORCH_CHECK(ph > 0 && pw > 0, "opmask_fast::roi_align: output size must be positive");
  // The CPU kernels keep each RoI's taps (ph * sampling_ratio per axis): an unbounded ratio would take any memory.
  TORCH_CHECK(sampling_ratio <= kMaxGridPerAxis,
              format_message("opmask_fast::roi_align: sampling_ratio must be <= %lld, got %lld",
                             static_cast<long long>(kMaxGridPerAxis), static_cast<long long>(sampling_ratio)));
  TORCH_CHECK(rois.device() == ref.device(), "opmask_fast::roi_align: rois and input must be on the same device");
  const auto want = ref.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(rois.scalar_type() == want,
              format_message("opmask_fast::roi_align: rois must be %s for %s input, got %s", c10::toString(want),
                             c10::toString(ref.scalar_type()), c10::toString(rois.scalar_type())));
}

// roi_map Tensor[K, Ho, Wo] on the input's device, converted to the input's dtype and made contiguous; undefined when
// absent. Shared by every RoIAlign forward (plain and weighted, CPU and CUDA).
inline at::Tensor checked_roi_map(const std::optional<at::Tensor>& roi_map, const at::Tensor& input, int64_t k,
                                  int64_t ph, int64_t pw) {
  if (!roi_map.has_value()) return at::Tensor();
  TORCH_CHECK(roi_map->dim() == 3 && roi_map->size(0) == k && roi_map->size(1) == ph && roi_map->size(2) == pw,
              "opmask_fast::roi_align: roi_map must be a Tensor[K, Ho, Wo]");
  TORCH_CHECK(roi_map->device() == input.device(), "opmask_fast::roi_align: roi_map must be on the input's device");
  return roi_map->to(input.scalar_type()).contiguous();
}

inline void check_roi_align_grad(const at::Tensor& grad, const at::Tensor& rois, int64_t ph, int64_t pw,
                                 int64_t sampling_ratio, int64_t channels) {
  check_roi_align_rois(rois, grad, ph, pw, sampling_ratio);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels && grad.size(2) == ph &&
                  grad.size(3) == pw,
              "opmask_fast::roi_align_backward: grad must be a Tensor[K, C, Ho, Wo]");
}

// Everything of a multi-level RoIAlign call that can be checked without reading data; the levels' values are
// checked by the kernels (CPU: before any work; CUDA: a device-side assert).
inline void check_multi_level_roi_align(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                        at::ArrayRef<double> scales, int64_t ph, int64_t pw, int64_t sampling_ratio,
                                        const std::optional<at::Tensor>& roi_map, int64_t map_weight) {
  const char* op = "opmask_fast::multi_level_roi_align";
  check_map_weight(map_weight, op);
  TORCH_CHECK(map_weight == kMapWeightNone || roi_map.has_value(),
              format_message("%s: map_weight %lld needs a roi_map", op, static_cast<long long>(map_weight)));
  TORCH_CHECK(!features.empty() && static_cast<int64_t>(features.size()) <= kMaxLevels,
              format_message("%s: needs 1 to %lld feature levels, got %lld", op, static_cast<long long>(kMaxLevels),
                             static_cast<long long>(features.size())));
  TORCH_CHECK(scales.size() == features.size(), format_message("%s: %lld feature levels but %lld spatial scales", op,
                                                               static_cast<long long>(features.size()),
                                                               static_cast<long long>(scales.size())));
  const at::Tensor& f0 = features[0];
  for (const at::Tensor& f : features) {
    TORCH_CHECK(f.dim() == 4, format_message("%s: every feature level must be a Tensor[N, C, H, W]", op));
    TORCH_CHECK(f.size(0) == f0.size(0) && f.size(1) == f0.size(1) && f.scalar_type() == f0.scalar_type() &&
                    f.device() == f0.device(),
                format_message("%s: feature levels must share batch size, channels, dtype and device", op));
    TORCH_CHECK(f.size(2) * f.size(3) < (int64_t(1) << 31), format_message("%s: H * W must be < 2^31", op));
  }
  check_roi_align_rois(rois, f0, ph, pw, sampling_ratio);
  TORCH_CHECK(levels.dim() == 1 && levels.size(0) == rois.size(0) && levels.scalar_type() == at::kLong &&
                  levels.device() == f0.device(),
              format_message("%s: levels must be an int64 Tensor[K] on the features' device", op));
  if (roi_map.has_value()) {
    TORCH_CHECK(roi_map->dim() == 3 && roi_map->size(0) == rois.size(0) && roi_map->size(1) == ph &&
                    roi_map->size(2) == pw && roi_map->device() == f0.device(),
                format_message("%s: roi_map must be a Tensor[K, Ho, Wo] on the features' device", op));
  }
}

}  // namespace opmask_fast
