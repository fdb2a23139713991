// NMS CPU kernels. Boxes are sorted by descending score (stable, so ties keep the lower index first, as in
// torchvision), converted to structure-of-arrays and suppressed greedily (see greedy() below).
//
// batched_nms groups the sorted boxes by category (a stable sort keeps score order inside each group) and runs the
// greedy pass per group in parallel; the kept positions are then read back in global score order. Cost is the sum
// of per-category squares instead of N^2, with no coordinate-offset trick (exact for any coordinate range).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <numeric>
#include <optional>
#include <tuple>
#include <vector>

#include "../nms_common.h"

namespace opmask_fast {
namespace {

// float32 comparison equivalent to comparing the float32 IoU with the double threshold t (what torchvision does):
// for a float r, (double)r > t exactly when r > the largest float <= t. Keeps the inner loop in one SIMD width.
template <typename acc_t>
acc_t threshold_for(double t) {
  if constexpr (std::is_same_v<acc_t, double>) {
    return t;
  } else {
    float f = static_cast<float>(t);
    if (static_cast<double>(f) > t) f = std::nextafter(f, -std::numeric_limits<float>::infinity());
    return f;
  }
}

// Greedy NMS over the sorted boxes [begin, end) of x1/y1/x2/y2/area/pos (clobbered); sets keep[pos] = 1 for
// survivors, stopping after max_keep of them (nms_topk: later ones cannot be among the first max_keep). Each kept
// box marks later boxes dead in a branch-free loop the compiler vectorises (testing a box that is already dead costs
// less than a branch); once a quarter of the remaining boxes are dead they are compacted away, so later passes only
// stream live boxes.
template <typename acc_t>
void greedy(acc_t* x1, acc_t* y1, acc_t* x2, acc_t* y2, acc_t* area, int64_t* pos, int64_t begin, int64_t end,
            acc_t threshold, int64_t max_keep, uint8_t* keep, std::vector<uint8_t>& dead_buf) {
  x1 += begin, y1 += begin, x2 += begin, y2 += begin, area += begin, pos += begin;
  int64_t alive = end - begin;
  dead_buf.assign(alive, 0);
  uint8_t* dead = dead_buf.data();
  int64_t dead_after = 0;  // dead boxes at positions > i
  for (int64_t i = 0;; ++i) {
    while (i < alive && dead[i]) ++i, --dead_after;
    if (i >= alive || max_keep-- == 0) break;
    keep[pos[i]] = 1;
    const acc_t ix1 = x1[i], iy1 = y1[i], ix2 = x2[i], iy2 = y2[i], ia = area[i];
    int64_t newly = 0;
    for (int64_t j = i + 1; j < alive; ++j) {
      const uint8_t d = iou_above<acc_t, acc_t>(ix1, iy1, ix2, iy2, ia, x1[j], y1[j], x2[j], y2[j], area[j], threshold);
      newly += d & (dead[j] ^ 1);
      dead[j] |= d;
    }
    dead_after += newly;
    if (dead_after * 4 > alive - i && alive - i > 64) {
      int64_t next = i + 1;
      for (int64_t j = i + 1; j < alive; ++j) {
        if (dead[j]) continue;
        x1[next] = x1[j], y1[next] = y1[j], x2[next] = x2[j], y2[next] = y2[j], area[next] = area[j];
        pos[next] = pos[j];
        dead[next] = 0;
        ++next;
      }
      alive = next;
      dead_after = 0;
    }
  }
}

void check_inputs(const at::Tensor& boxes, const at::Tensor& scores) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, "opmask_fast::nms: boxes must be a Tensor[N, 4]");
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), "opmask_fast::nms: scores must be a Tensor[N]");
  TORCH_CHECK(boxes.is_floating_point() && scores.is_floating_point(),
              "opmask_fast::nms: boxes and scores must be floating point");
}

at::Tensor nms_impl(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor* idxs, double threshold,
                    int64_t max_keep = std::numeric_limits<int64_t>::max()) {
  check_inputs(boxes, scores);
  const int64_t n = boxes.size(0);
  if (n == 0) return at::empty({0}, boxes.options().dtype(at::kLong));
  const at::Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
  const int64_t* ord = order.const_data_ptr<int64_t>();
  // pos[i]: rank (in score order) of the i-th box of the processing order, which groups boxes by category and
  // keeps score order inside each group (stable sort).
  std::vector<int64_t> pos(n);
  std::iota(pos.begin(), pos.end(), 0);
  std::vector<int64_t> group_begin = {0, n};
  if (idxs != nullptr) {
    const at::Tensor cls_t = idxs->to(at::kLong).contiguous();
    const int64_t* cls = cls_t.const_data_ptr<int64_t>();
    std::vector<int64_t> c(n);
    for (int64_t i = 0; i < n; ++i) c[i] = cls[ord[i]];
    std::stable_sort(pos.begin(), pos.end(), [&c](int64_t a, int64_t b) { return c[a] < c[b]; });
    group_begin = {0};
    for (int64_t i = 1; i < n; ++i)
      if (c[pos[i]] != c[pos[i - 1]]) group_begin.push_back(i);
    group_begin.push_back(n);
  }
  std::vector<uint8_t> keep_sorted(n, 0);
  // IoU in float32 for half/bfloat16 (their areas overflow or round badly), in the input type otherwise.
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // Structure-of-arrays copy in processing order: each group's greedy pass streams contiguous memory.
    std::vector<acc_t> soa(5 * n);
    acc_t *x1 = soa.data(), *y1 = x1 + n, *x2 = y1 + n, *y2 = x2 + n, *area = y2 + n;
    const scalar_t* b = boxes.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < n; ++i) {
      const scalar_t* box = b + 4 * ord[pos[i]];
      x1[i] = static_cast<acc_t>(box[0]);
      y1[i] = static_cast<acc_t>(box[1]);
      x2[i] = static_cast<acc_t>(box[2]);
      y2[i] = static_cast<acc_t>(box[3]);
      area[i] = (x2[i] - x1[i]) * (y2[i] - y1[i]);
    }
    std::vector<int64_t> packed(pos);
    const int64_t groups = static_cast<int64_t>(group_begin.size()) - 1;
    const acc_t thr = threshold_for<acc_t>(threshold);
    // Per-category passes are short: a second thread only pays off for very large inputs.
    const int64_t grain = n < 65536 ? groups : 1;
    at::parallel_for(0, groups, grain, [&](int64_t g0, int64_t g1) {
      std::vector<uint8_t> dead;
      for (int64_t g = g0; g < g1; ++g)
        greedy(x1, y1, x2, y2, area, packed.data(), group_begin[g], group_begin[g + 1], thr, max_keep,
               keep_sorted.data(), dead);
    });
  });
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += keep_sorted[i];
  at::Tensor out = at::empty({count}, order.options());
  int64_t* o = out.mutable_data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    if (keep_sorted[i]) *o++ = ord[i];
  return out;
}

at::Tensor nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  return nms_impl(boxes.contiguous(), scores.contiguous(), nullptr, iou_threshold);
}

at::Tensor batched_nms_cpu(const at::Tensor& boxes, const at::Tensor& scores, const at::Tensor& idxs,
                           double iou_threshold) {
  TORCH_CHECK(idxs.dim() == 1 && idxs.size(0) == boxes.size(0), "opmask_fast::batched_nms: idxs must be a Tensor[N]");
  TORCH_CHECK(!idxs.is_floating_point(), "opmask_fast::batched_nms: idxs must be an integer tensor");
  const at::Tensor cls = idxs.contiguous();
  return nms_impl(boxes.contiguous(), scores.contiguous(), &cls, iou_threshold);
}

// The valid candidates (score > -inf; NaN is not) through nms_impl, truncated to max_keep and padded with -1.
std::tuple<at::Tensor, at::Tensor> nms_topk_cpu(const at::Tensor& boxes, const at::Tensor& scores,
                                                const std::optional<at::Tensor>& idxs, double iou_threshold,
                                                int64_t max_keep) {
  check_inputs(boxes, scores);
  TORCH_CHECK(max_keep >= 0, "opmask_fast::nms_topk: max_keep must be >= 0");
  if (idxs.has_value()) {
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), "opmask_fast::nms_topk: idxs must be a Tensor[N]");
    TORCH_CHECK(!idxs->is_floating_point(), "opmask_fast::nms_topk: idxs must be an integer tensor");
  }
  const at::Tensor valid = scores.gt(-std::numeric_limits<double>::infinity());
  const at::Tensor where = valid.nonzero().squeeze(1);
  const at::Tensor sub_boxes = boxes.index_select(0, where).contiguous();
  const at::Tensor sub_scores = scores.index_select(0, where).contiguous();
  at::Tensor sub_cls;
  if (idxs.has_value()) sub_cls = idxs->index_select(0, where).contiguous();
  const at::Tensor kept =
      nms_impl(sub_boxes, sub_scores, idxs.has_value() ? &sub_cls : nullptr, iou_threshold, max_keep);
  const int64_t count = std::min<int64_t>(kept.size(0), max_keep);
  at::Tensor out = at::full({max_keep}, -1, scores.options().dtype(at::kLong));
  if (count > 0) out.narrow(0, 0, count).copy_(where.index_select(0, kept.narrow(0, 0, count)));
  return {out, at::scalar_tensor(count, scores.options().dtype(at::kLong))};
}

}  // namespace

TORCH_LIBRARY_IMPL(opmask_fast, CPU, m) {
  m.impl("nms", &nms_cpu);
  m.impl("batched_nms", &batched_nms_cpu);
  m.impl("nms_topk", &nms_topk_cpu);
}

}  // namespace opmask_fast
