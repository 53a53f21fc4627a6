// Argument checks shared by the CPU and CUDA gather_tokens / scatter_tokens kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace internvideo_fast {

// x [B, rows_in, D] is moved row-wise by ids [B, n] (int64).
inline void check_token_move_args(const char* op, const at::Tensor& x, const at::Tensor& ids) {
  TORCH_CHECK_VALUE(x.dim() == 3, op, ": x must be [B, N, D], got ", x.dim(), " dims");
  TORCH_CHECK_VALUE(ids.dim() == 2 && ids.scalar_type() == at::kLong, op,
                    ": ids must be a [B, n] int64 tensor, got ", ids.scalar_type(), " with ", ids.dim(),
                    " dims");
  TORCH_CHECK_VALUE(ids.size(0) == x.size(0), op, ": ids has batch ", ids.size(0), " but x has ",
                    x.size(0));
  TORCH_CHECK_VALUE(ids.device() == x.device(), op, ": ids is on ", ids.device(), " but x is on ",
                    x.device());
}

inline void check_scatter_args(const at::Tensor& x, const at::Tensor& ids, int64_t num_tokens) {
  check_token_move_args("scatter_tokens", x, ids);
  TORCH_CHECK_VALUE(ids.size(1) == x.size(1), "scatter_tokens: ids has ", ids.size(1),
                    " tokens per sample but x has ", x.size(1));
  TORCH_CHECK_VALUE(num_tokens >= ids.size(1), "scatter_tokens: num_tokens must be >= ", ids.size(1),
                    ", got ", num_tokens);
}

}  // namespace internvideo_fast
