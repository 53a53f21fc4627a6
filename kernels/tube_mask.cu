// CUDA kernel of tube_mask: the math is in internvideo_fast/ops/tube_mask/__init__.py's docstring.
//
// One thread block per sample. Each spatial position gets a Philox key (csrc/philox.h); its rank
// among the sample's keys (ties broken by position) decides whether it is masked, and its ordinal
// among the positions of the same kind gives its slot in ids_keep / ids_masked. Every step is
// O(positions^2 / threads) in shared memory, tiny next to the work it feeds (196 positions for
// ViT-B/16 at 224 px). The seed is read on the device, so there is no host sync and the op can be
// captured in a CUDA graph.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "output_alloc.h"
#include "philox.h"
#include "tube_mask_common.h"

namespace internvideo_fast {
namespace {

constexpr int kThreads = 256;
// keys (8 B) + flag (1 B) per position must fit in the default 48 KB of shared memory.
constexpr int64_t kMaxPositions = 4096;

__global__ void __launch_bounds__(kThreads)
    tube_mask_kernel(const int64_t* __restrict__ seed, int frames, int positions, int num_masked,
                     int64_t* __restrict__ ids_keep, int64_t* __restrict__ ids_masked,
                     bool* __restrict__ mask) {
  extern __shared__ int64_t keys[];
  bool* is_masked = reinterpret_cast<bool*>(keys + positions);
  const int sample = blockIdx.x;
  const uint64_t seed_value = static_cast<uint64_t>(*seed);
  const int num_visible = positions - num_masked;

  for (int s = threadIdx.x; s < positions; s += blockDim.x) {
    keys[s] = tube_mask_key(seed_value, static_cast<uint32_t>(sample), static_cast<uint32_t>(s));
  }
  __syncthreads();
  for (int s = threadIdx.x; s < positions; s += blockDim.x) {
    const int64_t key = keys[s];
    int rank = 0;
    for (int j = 0; j < positions; ++j) {
      const int64_t other = keys[j];
      rank += (other < key) || (other == key && j < s);
    }
    is_masked[s] = rank < num_masked;
  }
  __syncthreads();

  int64_t* keep_row = ids_keep + static_cast<int64_t>(sample) * frames * num_visible;
  int64_t* masked_row = ids_masked + static_cast<int64_t>(sample) * frames * num_masked;
  bool* mask_row = mask + static_cast<int64_t>(sample) * frames * positions;
  for (int s = threadIdx.x; s < positions; s += blockDim.x) {
    const bool masked = is_masked[s];
    int ordinal = 0;  // positions before s of the same kind
    for (int j = 0; j < s; ++j) ordinal += is_masked[j] == masked;
    for (int t = 0; t < frames; ++t) {
      const int64_t token = static_cast<int64_t>(t) * positions + s;
      mask_row[token] = masked;
      if (masked) {
        masked_row[static_cast<int64_t>(t) * num_masked + ordinal] = token;
      } else {
        keep_row[static_cast<int64_t>(t) * num_visible + ordinal] = token;
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tube_mask_cuda(const at::Tensor& seed, int64_t batch,
                                                              int64_t frames, int64_t height,
                                                              int64_t width, int64_t num_masked) {
  check_tube_mask_args(seed, batch, frames, height, width, num_masked);
  const int64_t positions = height * width;
  TORCH_CHECK_VALUE(positions <= kMaxPositions, "tube_mask (cuda): height*width must be <= ",
                    kMaxPositions, ", got ", positions, "; use the cpu backend for larger grids");
  const c10::cuda::CUDAGuard device_guard(seed.device());
  const auto index_options = at::TensorOptions().dtype(at::kLong).device(seed.device());
  at::Tensor ids_keep = new_output({batch, frames * (positions - num_masked)}, index_options);
  at::Tensor ids_masked = new_output({batch, frames * num_masked}, index_options);
  at::Tensor mask = new_output({batch, frames * positions}, index_options.dtype(at::kBool));
  if (batch == 0) return {ids_keep, ids_masked, mask};

  const size_t shared_bytes = positions * (sizeof(int64_t) + sizeof(bool));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  tube_mask_kernel<<<static_cast<unsigned>(batch), kThreads, shared_bytes, stream>>>(
      seed.data_ptr<int64_t>(), static_cast<int>(frames), static_cast<int>(positions),
      static_cast<int>(num_masked), ids_keep.data_ptr<int64_t>(), ids_masked.data_ptr<int64_t>(),
      mask.data_ptr<bool>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {ids_keep, ids_masked, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(internvideo_fast, CUDA, m) { m.impl("tube_mask", &tube_mask_cuda); }

}  // namespace internvideo_fast
