// CPU kernels of gather_tokens / scatter_tokens: the math is in internvideo_fast/ops/token_gather/.
// Rows are moved as bytes, so every dtype takes the same path.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "output_alloc.h"
#include "token_gather_common.h"

namespace internvideo_fast {
namespace {

// out[b, i] = x[b, ids[b, i]]
at::Tensor gather_tokens_cpu(const at::Tensor& x_in, const at::Tensor& ids_in) {
  check_token_move_args("gather_tokens", x_in, ids_in);
  const at::Tensor x = x_in.contiguous(), ids = ids_in.contiguous();
  const int64_t batch = x.size(0), num_tokens = x.size(1), n = ids.size(1);
  at::Tensor out = new_output({batch, n, x.size(2)}, x.options());
  const int64_t row_bytes = x.size(2) * x.element_size();
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t* id = ids.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < batch * n; ++r) {
    TORCH_CHECK_VALUE(id[r] >= 0 && id[r] < num_tokens, "gather_tokens: ids must be in [0, ", num_tokens,
                      "), found ", id[r]);
  }
  at::parallel_for(0, batch * n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / n;
      std::memcpy(dst + r * row_bytes, src + (b * num_tokens + id[r]) * row_bytes, row_bytes);
    }
  });
  return out;
}

// out[b, ids[b, i]] = x[b, i]; rows no id names are zero. ids must not repeat within a sample.
at::Tensor scatter_tokens_cpu(const at::Tensor& x_in, const at::Tensor& ids_in, int64_t num_tokens) {
  check_scatter_args(x_in, ids_in, num_tokens);
  const at::Tensor x = x_in.contiguous(), ids = ids_in.contiguous();
  const int64_t batch = x.size(0), n = ids.size(1);
  at::Tensor out = at::zeros({batch, num_tokens, x.size(2)}, x.options());
  const int64_t row_bytes = x.size(2) * x.element_size();
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t* id = ids.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < batch * n; ++r) {
    TORCH_CHECK_VALUE(id[r] >= 0 && id[r] < num_tokens, "scatter_tokens: ids must be in [0, ",
                      num_tokens, "), found ", id[r]);
  }
  at::parallel_for(0, batch * n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / n;
      std::memcpy(dst + (b * num_tokens + id[r]) * row_bytes, src + r * row_bytes, row_bytes);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(internvideo_fast, CPU, m) {
  m.impl("gather_tokens", &gather_tokens_cpu);
  m.impl("scatter_tokens", &scatter_tokens_cpu);
}

}  // namespace internvideo_fast
