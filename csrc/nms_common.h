// IoU test shared by the CPU and CUDA NMS kernels (same formula and evaluation order as torchvision).
#pragma once

#include <c10/macros/Macros.h>

namespace opmask_fast {

// Boxes are (x1, y1, x2, y2) with areas (x2 - x1) * (y2 - y1) computed beforehand. Scalar arguments keep the CPU
// inner loop over structure-of-arrays data vectorisable. The threshold's type matters for an IoU that rounds to it:
// torchvision compares a float IoU with the double threshold on the CPU (our CPU kernel uses the float threshold
// rounded down, which gives the same answers) and with a float threshold on CUDA (our CUDA kernel does the same).
template <typename acc_t, typename threshold_t>
C10_HOST_DEVICE inline bool iou_above(acc_t ax1, acc_t ay1, acc_t ax2, acc_t ay2, acc_t area_a, acc_t bx1, acc_t by1,
                                      acc_t bx2, acc_t by2, acc_t area_b, threshold_t threshold) {
  const acc_t left = ax1 > bx1 ? ax1 : bx1;
  const acc_t top = ay1 > by1 ? ay1 : by1;
  const acc_t right = ax2 < bx2 ? ax2 : bx2;
  const acc_t bottom = ay2 < by2 ? ay2 : by2;
  const acc_t w = right - left > 0 ? right - left : static_cast<acc_t>(0);
  const acc_t h = bottom - top > 0 ? bottom - top : static_cast<acc_t>(0);
  const acc_t inter = w * h;
  return inter / (area_a + area_b - inter) > threshold;
}

}  // namespace opmask_fast
