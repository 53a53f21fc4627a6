// CUDA kernels of gather_tokens / scatter_tokens: the math is in internvideo_fast/ops/token_gather/.
//
// One warp per moved row, 16-byte vectors when the row allows it (ViT rows of 768 bf16 are 1536 B).
// The ids are read on the device (no host sync); an id out of range moves nothing instead of touching
// memory it does not own — the Python wrapper checks ranges eagerly when it can afford a sync.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "output_alloc.h"
#include "token_gather_common.h"

namespace internvideo_fast {
namespace {

constexpr int kWarpsPerBlock = 8;

// Moves row r of the [B*n] side to/from row (b, ids[r]) of the [B, num_tokens] side.
template <typename Vec, bool kGather>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    move_rows_kernel(const Vec* __restrict__ src, Vec* __restrict__ dst, const int64_t* __restrict__ ids,
                     int64_t rows, int64_t n, int64_t num_tokens, int64_t row_vecs) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (r >= rows) return;
  const int64_t id = ids[r];
  if (id < 0 || id >= num_tokens) return;
  const int64_t token_row = (r / n) * num_tokens + id;
  const Vec* from = src + (kGather ? token_row : r) * row_vecs;
  Vec* to = dst + (kGather ? r : token_row) * row_vecs;
  for (int64_t v = threadIdx.x % 32; v < row_vecs; v += 32) to[v] = from[v];
}

template <bool kGather>
void launch_move_rows(const at::Tensor& src, at::Tensor& dst, const at::Tensor& ids, int64_t num_tokens) {
  const int64_t rows = ids.numel(), n = ids.size(1);
  if (rows == 0 || src.size(2) == 0) return;
  const int64_t row_bytes = src.size(2) * src.element_size();
  const auto aligned = [&](int64_t bytes) {
    return row_bytes % bytes == 0 && reinterpret_cast<uintptr_t>(src.const_data_ptr()) % bytes == 0 &&
           reinterpret_cast<uintptr_t>(dst.data_ptr()) % bytes == 0;
  };
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* id = ids.const_data_ptr<int64_t>();
#define IVF_MOVE_ROWS(VEC)                                                                         \
  move_rows_kernel<VEC, kGather><<<grid, kWarpsPerBlock * 32, 0, stream>>>(                       \
      static_cast<const VEC*>(src.const_data_ptr()), static_cast<VEC*>(dst.data_ptr()), id, rows, n, \
      num_tokens, row_bytes / static_cast<int64_t>(sizeof(VEC)))
  if (aligned(16)) {
    IVF_MOVE_ROWS(int4);
  } else if (aligned(4)) {
    IVF_MOVE_ROWS(int);
  } else {
    IVF_MOVE_ROWS(char);
  }
#undef IVF_MOVE_ROWS
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor gather_tokens_cuda(const at::Tensor& x_in, const at::Tensor& ids_in) {
  check_token_move_args("gather_tokens", x_in, ids_in);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), ids = ids_in.contiguous();
  at::Tensor out = new_output({x.size(0), ids.size(1), x.size(2)}, x.options());
  launch_move_rows<true>(x, out, ids, x.size(1));
  return out;
}

at::Tensor scatter_tokens_cuda(const at::Tensor& x_in, const at::Tensor& ids_in, int64_t num_tokens) {
  check_scatter_args(x_in, ids_in, num_tokens);
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), ids = ids_in.contiguous();
  at::Tensor out = at::zeros({x.size(0), num_tokens, x.size(2)}, x.options());
  launch_move_rows<false>(x, out, ids, num_tokens);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(internvideo_fast, CUDA, m) {
  m.impl("gather_tokens", &gather_tokens_cuda);
  m.impl("scatter_tokens", &scatter_tokens_cuda);
}

}  // namespace internvideo_fast
