// add_weighted_map CPU kernel: one RoI at a time (at::parallel_for), by the same helper roi_align_weighted runs on
// its pooled output (roi_align_taps.h), so add_weighted_map(roi_align(x), map) equals roi_align_weighted(x, map) bit
// for bit. The statistics pass leaves the RoI's features in cache for the add, which writes the output directly.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "../add_weighted_map.h"
#include "roi_align_taps.h"

namespace opmask_fast {
namespace {

std::tuple<at::Tensor, at::Tensor> add_weighted_map_cpu(const at::Tensor& features_, const at::Tensor& roi_map_,
                                                        int64_t map_weight) {
  check_add_weighted_map(features_, roi_map_, map_weight);
  const at::Tensor features = features_.contiguous();
  const at::Tensor roi_map = roi_map_.contiguous();
  const int64_t k = features.size(0), c = features.size(1), nbins = features.size(2) * features.size(3);
  at::Tensor out = at::empty_like(features, at::MemoryFormat::Contiguous);
  // Zeros: with no values the statistics are NaN, so the weight is 0 as in the reference.
  at::Tensor weights = at::zeros({k}, features.options().dtype(at::toOpMathType(features.scalar_type())));
  if (out.numel() == 0) return {out, weights};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "add_weighted_map_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x = features.const_data_ptr<scalar_t>();
    const scalar_t* map = roi_map.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    acc_t* weight = weights.mutable_data_ptr<acc_t>();
    at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r)
        weight[r] = cpu::add_weighted_map<scalar_t, acc_t>(x + r * c * nbins, o + r * c * nbins, map + r * nbins, c,
                                                           nbins, map_weight);
    });
  });
  return {out, weights};
}

}  // namespace

TORCH_LIBRARY_IMPL(opmask_fast, CPU, m) { m.impl("add_weighted_map", &add_weighted_map_cpu); }

}  // namespace opmask_fast
