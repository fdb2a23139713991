// Schema of NMS. Kernels live in cpu/nms_kernel.cpp and cuda/nms_kernel.cu; fake kernels in opmask_fast/ops/nms.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(opmask_fast, m) {
  // Indices (int64) of the boxes kept by greedy NMS, in descending score order.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  // Same, but a box only suppresses boxes with the same idxs value (one pass, no per-class loop).
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
}
