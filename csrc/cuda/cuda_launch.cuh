// The GPU side of the launch plans in roi_align_kernels.cuh and nms_kernels.cuh: a launcher on the current stream
// that checks each launch (grid, threads per block, dynamic shared memory bytes), and the buffer of per-block
// statistics the weighted RoIAlign plans fill.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "../map_weight.h"

namespace opmask_fast {

struct CudaLaunch {
  template <typename... KernelArgs, typename... Args>
  void operator()(dim3 grid, int threads, size_t shared_bytes, void (*kernel)(KernelArgs...), Args... args) const {
    kernel<<<grid, threads, shared_bytes, at::cuda::getCurrentCUDAStream()>>>(static_cast<KernelArgs>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// Room for one MapStats per block of grid (K x groups), uninitialised (every block writes its own slot); undefined
// for map_weight none, which reads no statistics.
inline at::Tensor map_stats_buffer(int64_t map_weight, int64_t k, dim3 grid, const at::Device& device) {
  static_assert(sizeof(MapStats) % sizeof(double) == 0, "MapStats is stored as doubles");
  if (map_weight == kMapWeightNone) return at::Tensor();
  const int64_t per_block = sizeof(MapStats) / sizeof(double);
  return at::empty({k, static_cast<int64_t>(grid.y), per_block},
                   at::TensorOptions().dtype(at::kDouble).device(device));
}

// The buffer as the kernels take it (null when undefined).
inline MapStats* map_stats_ptr(at::Tensor& buffer) {
  return buffer.defined() ? reinterpret_cast<MapStats*>(buffer.mutable_data_ptr<double>()) : nullptr;
}

}  // namespace opmask_fast
