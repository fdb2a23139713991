// RoIAlign CPU kernels: multi-threaded with at::parallel_for and deterministic.
//
// Each RoI's bilinear taps (pixel offset within a channel plane, weight already divided by the bin's sample count)
// are built once and reused for every channel. Forward parallelises over RoIs (each writes its own output rows)
// and reads a channels-last copy of the input when many RoIs share it.
// Backward first builds the taps of a group of RoIs, then parallelises over channels: a thread owns whole channel
// planes of grad_input and visits the RoIs in order, so the sums never race and never depend on thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../roi_align_checks.h"
#include "../roi_align_common.h"
#include "roi_align_taps.h"

namespace opmask_fast {
namespace {

using cpu::build_taps;
using cpu::kChannelBlock;
using cpu::pool_channels;
using cpu::RoiTaps;

// The first RoI whose batch index is outside the batch, found inside a dispatch and reported after it.
struct BadRoi {
  int64_t roi = -1;
  double batch_index = 0.0;

  void check(const char* op, int64_t batch_size) const {
    TORCH_CHECK(roi < 0, format_message("%s: RoI %lld has batch index %g outside [0, %lld)", op,
                                        static_cast<long long>(roi), batch_index,
                                        static_cast<long long>(batch_size)));
  }
};

// All bins and channels of one RoI from a channels-last (H, W, C) image: sums per bin in acc ([bin][channel]),
// then one transposed write into the (C, bins) output block of the RoI.
template <typename scalar_t, typename acc_t>
inline void pool_roi_channels_last(const RoiTaps<acc_t>& t, const scalar_t* image, scalar_t* dst, const scalar_t* map,
                                   int64_t channels, int64_t nbins, std::vector<acc_t>& acc) {
  acc.assign(nbins * channels, acc_t(0));
  for (int64_t b = 0; b < nbins; ++b) {
    acc_t* sum = acc.data() + b * channels;
    for (int64_t i = t.bin_begin[b]; i < t.bin_begin[b + 1]; ++i) {
      const acc_t wi = t.weight[i];
      const scalar_t* px = image + static_cast<int64_t>(t.offset[i]) * channels;
      for (int64_t ch = 0; ch < channels; ++ch) sum[ch] += wi * static_cast<acc_t>(px[ch]);
    }
  }
  for (int64_t ch = 0; ch < channels; ++ch)
    for (int64_t b = 0; b < nbins; ++b)
      dst[ch * nbins + b] = static_cast<scalar_t>(acc[b * channels + ch] + (map ? static_cast<acc_t>(map[b]) : acc_t(0)));
}

// Gradient of channels [c0, c0 + count) for one RoI: scatter grad_out through the same taps.
template <typename scalar_t, typename acc_t, int64_t BLOCK>
inline void scatter_channels(const RoiTaps<acc_t>& t, const scalar_t* grad, acc_t* planes, int64_t c0,
                             int64_t count, int64_t plane, int64_t nbins) {
  const int32_t* off = t.offset.data();
  const acc_t* wt = t.weight.data();
  for (int64_t cs = c0; cs < c0 + count; cs += BLOCK) {
    acc_t* dst = planes + cs * plane;
    for (int64_t b = 0; b < nbins; ++b) {
      acc_t gv[BLOCK];
      for (int64_t j = 0; j < BLOCK; ++j) gv[j] = static_cast<acc_t>(grad[(cs + j) * nbins + b]);
      for (int64_t i = t.bin_begin[b]; i < t.bin_begin[b + 1]; ++i) {
        const acc_t wi = wt[i];
        acc_t* p = dst + off[i];
        for (int64_t j = 0; j < BLOCK; ++j) p[j * plane] += wi * gv[j];
      }
    }
  }
}

// The forward of roi_align (map_weight 0) and roi_align_weighted (1, 2: map_weight.h); the map's weight per RoI goes
// to `weights` (Tensor[K] in the accumulation dtype) when it is defined.
at::Tensor roi_align_forward_impl(const at::Tensor& input_, const at::Tensor& rois_, double spatial_scale, int64_t ph,
                                  int64_t pw, int64_t sampling_ratio, bool aligned,
                                  const std::optional<at::Tensor>& roi_map_, int64_t map_weight, at::Tensor weights) {
  TORCH_CHECK(input_.dim() == 4, "opmask_fast::roi_align: input must be a Tensor[N, C, H, W]");
  check_roi_align_rois(rois_, input_, ph, pw, sampling_ratio);
  TORCH_CHECK(input_.size(2) * input_.size(3) < (int64_t(1) << 31), "opmask_fast::roi_align: H * W must be < 2^31");
  const at::Tensor rois = rois_.contiguous();
  const int64_t n = input_.size(0), c = input_.size(1), h = input_.size(2), w = input_.size(3), k = rois.size(0);
  // Channels-last pays when the RoIs read more taps than the map has pixels (hundreds of RoIs on a pyramid
  // level): each tap then loads one contiguous, vectorisable run of C values instead of C scattered ones. The
  // layout change costs one copy of the input; an input already channels-last needs none.
  const bool channels_last =
      c >= 8 && (input_.is_contiguous(at::MemoryFormat::ChannelsLast) || k * ph * pw * 16 >= n * h * w);
  const at::Tensor input = channels_last ? input_.permute({0, 2, 3, 1}).contiguous() : input_.contiguous();
  const at::Tensor roi_map = checked_roi_map(roi_map_, input, k, ph, pw);
  at::Tensor out = at::zeros({k, c, ph, pw}, input.options());
  if (k == 0 || c == 0) return out;
  BadRoi bad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* in = input.const_data_ptr<scalar_t>();
    const acc_t* roi = rois.const_data_ptr<acc_t>();
    const scalar_t* map = roi_map.defined() ? roi_map.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    acc_t* weight = weights.defined() ? weights.mutable_data_ptr<acc_t>() : nullptr;
    const int64_t nbins = ph * pw;
    // Geometry first, serially, as the backward does: a bad batch index is refused before any work, and the error
    // is raised after the dispatch (error_message.h).
    std::vector<RoiGeometry<acc_t>> geo(k);
    for (int64_t r = 0; r < k; ++r) {
      geo[r] = roi_geometry<acc_t>(roi + 5 * r, n, static_cast<acc_t>(spatial_scale), ph, pw, sampling_ratio, aligned);
      if (geo[r].batch < 0) {
        bad = {r, static_cast<double>(roi[5 * r])};
        return;
      }
    }
    at::parallel_for(0, k, 1, [&](int64_t begin, int64_t end) {
      RoiTaps<acc_t> taps;
      std::vector<acc_t> acc;
      for (int64_t r = begin; r < end; ++r) {
        const RoiGeometry<acc_t>& g = geo[r];
        build_taps(g, ph, pw, h, w, taps);
        const scalar_t* planes = in + g.batch * c * h * w;
        scalar_t* dst = o + r * c * nbins;
        // A weighted map is added after the pooling, once the RoI's statistics are known.
        const scalar_t* map_r = map && map_weight == kMapWeightNone ? map + r * nbins : nullptr;
        if (channels_last) {
          pool_roi_channels_last<scalar_t, acc_t>(taps, planes, dst, map_r, c, nbins, acc);
        } else {
          int64_t ch = 0;
          for (; ch + kChannelBlock <= c; ch += kChannelBlock)
            pool_channels<scalar_t, acc_t, kChannelBlock>(taps, planes, dst, map_r, ch, kChannelBlock, h * w, nbins);
          if (ch < c) pool_channels<scalar_t, acc_t, 1>(taps, planes, dst, map_r, ch, c - ch, h * w, nbins);
        }
        if (map_weight != kMapWeightNone)
          weight[r] = cpu::add_weighted_map<scalar_t, acc_t>(dst, dst, map + r * nbins, c, nbins, map_weight);
      }
    });
  });
  bad.check("opmask_fast::roi_align", n);
  return out;
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t ph,
                                 int64_t pw, int64_t sampling_ratio, bool aligned,
                                 const std::optional<at::Tensor>& roi_map) {
  return roi_align_forward_impl(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, roi_map, kMapWeightNone,
                                at::Tensor());
}

std::tuple<at::Tensor, at::Tensor> roi_align_weighted_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                          double spatial_scale, int64_t ph, int64_t pw,
                                                          int64_t sampling_ratio, bool aligned,
                                                          const at::Tensor& roi_map, int64_t map_weight) {
  check_map_weight(map_weight, "opmask_fast::roi_align_weighted");
  // Zeros: with no channels the statistics are NaN, so the weight is 0 as in the reference.
  at::Tensor weights = at::zeros({rois.size(0)}, input.options().dtype(at::toOpMathType(input.scalar_type())));
  at::Tensor out = roi_align_forward_impl(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, roi_map,
                                          map_weight, weights);
  return {out, weights};
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad_, const at::Tensor& rois_, double spatial_scale,
                                  int64_t ph, int64_t pw, int64_t batch_size, int64_t channels, int64_t height,
                                  int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_align_grad(grad_, rois_, ph, pw, sampling_ratio, channels);
  const int64_t k = rois_.size(0);
  TORCH_CHECK(height * width < (int64_t(1) << 31), "opmask_fast::roi_align_backward: H * W must be < 2^31");
  const at::Tensor grad = grad_.contiguous();
  const at::Tensor rois = rois_.contiguous();
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  // Half/bfloat16 gradients are summed in float32 and rounded once at the end.
  at::Tensor grad_in = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (k == 0 || channels == 0) return grad_in.to(grad.scalar_type());
  BadRoi bad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* go = grad.const_data_ptr<scalar_t>();
    const acc_t* roi = rois.const_data_ptr<acc_t>();
    acc_t* gi = grad_in.mutable_data_ptr<acc_t>();
    const int64_t nbins = ph * pw;
    // Taps of a group of RoIs are kept in memory while all channels consume them; the budget bounds that memory.
    constexpr int64_t kTapBudget = int64_t(1) << 21;
    std::vector<RoiGeometry<acc_t>> geo(k);
    for (int64_t r = 0; r < k; ++r) {
      geo[r] = roi_geometry<acc_t>(roi + 5 * r, batch_size, static_cast<acc_t>(spatial_scale), ph, pw,
                                   sampling_ratio, aligned);
      if (geo[r].batch < 0) {
        bad = {r, static_cast<double>(roi[5 * r])};
        return;
      }
    }
    std::vector<RoiTaps<acc_t>> taps;
    for (int64_t r0 = 0; r0 < k;) {
      int64_t r1 = r0, total = 0;
      while (r1 < k && (r1 == r0 || total < kTapBudget)) {
        total += nbins * geo[r1].grid_h * geo[r1].grid_w * 4;
        ++r1;
      }
      taps.resize(r1 - r0);
      at::parallel_for(r0, r1, 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) build_taps(geo[r], ph, pw, height, width, taps[r - r0]);
      });
      // Threads own blocks of whole channels, so no two threads ever add into the same grad_input element.
      const int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
      at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t blk = begin; blk < end; ++blk) {
          const int64_t c0 = blk * kChannelBlock, count = std::min(kChannelBlock, channels - c0);
          for (int64_t r = r0; r < r1; ++r) {
            acc_t* planes = gi + geo[r].batch * channels * height * width;
            const scalar_t* src = go + r * channels * nbins;
            if (count == kChannelBlock)
              scatter_channels<scalar_t, acc_t, kChannelBlock>(taps[r - r0], src, planes, c0, count,
                                                               height * width, nbins);
            else
              scatter_channels<scalar_t, acc_t, 1>(taps[r - r0], src, planes, c0, count, height * width, nbins);
          }
        }
      });
      r0 = r1;
    }
  });
  bad.check("opmask_fast::roi_align_backward", batch_size);
  return grad_in.scalar_type() == grad.scalar_type() ? grad_in : grad_in.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(opmask_fast, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("roi_align_weighted", &roi_align_weighted_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace opmask_fast
