// Schema of NMS (and of nms_topk, its fixed-size form). Kernels live in cpu/nms_kernel.cpp and cuda/nms_kernel.cu; fake kernels in opmask_fast/ops/nms.py.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(opmask_fast, m) {
  // Indices (int64) of the boxes kept by greedy NMS, in descending score order.
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  // Same, but a box only suppresses boxes with the same idxs value (one pass, no per-class loop).
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // Fixed-size NMS for static shapes: the first max_keep indices batched_nms (or nms, without idxs) would return,
  // padded with -1, and their count (a 0-dim int64). Boxes whose score is -inf or NaN are never kept and suppress
  // nothing (invalid candidates are masked that way instead of being filtered out).
  m.def("nms_topk(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, int max_keep) -> (Tensor, Tensor)");
}
