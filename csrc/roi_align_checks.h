// Host-side argument checks of the RoIAlign kernels, shared by the CPU and CUDA backends so both refuse the same
// inputs with the same messages when the op is called directly (the Python wrapper checks first).
#pragma once

#include <ATen/ATen.h>

#include "error_message.h"

namespace opmask_fast {

inline void check_roi_align_rois(const at::Tensor& rois, const at::Tensor& ref, int64_t ph, int64_t pw) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, "opmask_fast::roi_align: rois must be a Tensor[K, 5]");
  TORCH_CHECK(ph > 0 && pw > 0, "opmask_fast::roi_align: output size must be positive");
  TORCH_CHECK(rois.device() == ref.device(), "opmask_fast::roi_align: rois and input must be on the same device");
  const auto want = ref.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(rois.scalar_type() == want,
              format_message("opmask_fast::roi_align: rois must be %s for %s input, got %s", c10::toString(want),
                             c10::toString(ref.scalar_type()), c10::toString(rois.scalar_type())));
}

inline void check_roi_align_grad(const at::Tensor& grad, const at::Tensor& rois, int64_t ph, int64_t pw,
                                 int64_t channels) {
  check_roi_align_rois(rois, grad, ph, pw);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels && grad.size(2) == ph &&
                  grad.size(3) == pw,
              "opmask_fast::roi_align_backward: grad must be a Tensor[K, C, Ho, Wo]");
}

}  // namespace opmask_fast
