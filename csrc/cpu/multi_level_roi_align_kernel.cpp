// Multi-level RoIAlign CPU kernel: RoI r is pooled from features[levels[r]] with that level's spatial scale, in one
// pass over the RoIs (at::parallel_for, each RoI writes its own output rows). Same taps and sums as
// roi_align_kernel.cpp, so each RoI's output equals roi_align on its own level bit for bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../roi_align_checks.h"
#include "../roi_align_common.h"
#include "roi_align_taps.h"

namespace opmask_fast {
namespace {

at::Tensor multi_level_roi_align_cpu(at::TensorList features_, const at::Tensor& rois_, const at::Tensor& levels_,
                                     at::ArrayRef<double> scales, int64_t ph, int64_t pw, int64_t sampling_ratio,
                                     bool aligned, const std::optional<at::Tensor>& roi_map_,
                                     int64_t map_weight) {
  check_multi_level_roi_align(features_, rois_, levels_, scales, ph, pw, sampling_ratio, roi_map_, map_weight);
  const int64_t num_levels = static_cast<int64_t>(features_.size());
  std::vector<at::Tensor> features;
  for (const at::Tensor& f : features_) features.push_back(f.contiguous());
  const at::Tensor rois = rois_.contiguous();
  const at::Tensor levels = levels_.contiguous();
  const int64_t n = features[0].size(0), c = features[0].size(1), k = rois.size(0);
  // Levels are checked before any work (and outside the dispatch lambda: error_message.h).
  const int64_t* lv = levels.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < k; ++r)
    TORCH_CHECK(lv[r] >= 0 && lv[r] < num_levels,
                format_message("opmask_fast::multi_level_roi_align: RoI %lld has level %lld outside [0, %lld)",
                               static_cast<long long>(r), static_cast<long long>(lv[r]),
                               static_cast<long long>(num_levels)));
  at::Tensor roi_map;
  if (roi_map_.has_value()) roi_map = roi_map_->to(features[0].scalar_type()).contiguous();
  // Every element is written below (no zero fill), so a test that finds garbage finds a missed one.
  at::Tensor out = at::empty({k, c, ph, pw}, features[0].options());
  if (k == 0 || c == 0) return out.zero_();
  int64_t bad_roi = -1;
  double bad_batch = 0.0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "multi_level_roi_align_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* roi = rois.const_data_ptr<acc_t>();
    const scalar_t* map = roi_map.defined() ? roi_map.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const int64_t nbins = ph * pw;
    std::vector<RoiGeometry<acc_t>> geo(k);
    for (int64_t r = 0; r < k; ++r) {
      geo[r] = roi_geometry<acc_t>(roi + 5 * r, n, static_cast<acc_t>(scales[lv[r]]), ph, pw, sampling_ratio,
                                   aligned);
      if (geo[r].batch < 0) {
        bad_roi = r;
        bad_batch = static_cast<double>(roi[5 * r]);
        return;
      }
    }
    at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
      cpu::RoiTaps<acc_t> taps;
      for (int64_t r = begin; r < end; ++r) {
        const at::Tensor& f = features[lv[r]];
        const int64_t h = f.size(2), w = f.size(3);
        const RoiGeometry<acc_t>& g = geo[r];
        cpu::build_taps(g, ph, pw, h, w, taps);
        const scalar_t* planes = f.const_data_ptr<scalar_t>() + g.batch * c * h * w;
        scalar_t* dst = o + r * c * nbins;
        const scalar_t* map_r = map && map_weight == kMapWeightNone ? map + r * nbins : nullptr;
        int64_t ch = 0;
        for (; ch + cpu::kChannelBlock <= c; ch += cpu::kChannelBlock)
          cpu::pool_channels<scalar_t, acc_t, cpu::kChannelBlock>(taps, planes, dst, map_r, ch, cpu::kChannelBlock,
                                                                  h * w, nbins);
        if (ch < c) cpu::pool_channels<scalar_t, acc_t, 1>(taps, planes, dst, map_r, ch, c - ch, h * w, nbins);
        if (map_weight != kMapWeightNone)
          cpu::add_weighted_map<scalar_t, acc_t>(dst, dst, map + r * nbins, c, nbins, map_weight);
      }
    });
  });
  TORCH_CHECK(bad_roi < 0, format_message("opmask_fast::multi_level_roi_align: RoI %lld has batch index %g outside "
                                          "[0, %lld)", static_cast<long long>(bad_roi), bad_batch,
                                          static_cast<long long>(n)));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(opmask_fast, CPU, m) {
  m.impl("multi_level_roi_align", &multi_level_roi_align_cpu);
}

}  // namespace opmask_fast
