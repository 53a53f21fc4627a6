// Argument checks shared by the CPU and CUDA mlp_gemm_bias_act kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>

namespace internvideo_fast {

enum class MlpActivation : int { kGelu = 0, kGeluTanh = 1, kQuickGelu = 2 };

inline MlpActivation parse_mlp_activation(const char* op, c10::string_view activation) {
  if (activation == "gelu") return MlpActivation::kGelu;
  if (activation == "gelu_tanh") return MlpActivation::kGeluTanh;
  if (activation == "quick_gelu") return MlpActivation::kQuickGelu;
  TORCH_CHECK_VALUE(false, op, ": activation must be gelu, gelu_tanh or quick_gelu, got ", activation);
}

// The CUDA kernel's schedule (kernels/mlp_gemm_sm90.cuh); the CPU kernels check it and compute the same.
enum class MlpSchedule : int { kCooperative = 0, kPingpong = 1 };

inline MlpSchedule parse_mlp_schedule(const char* op, c10::string_view schedule) {
  if (schedule == "cooperative") return MlpSchedule::kCooperative;
  if (schedule == "pingpong") return MlpSchedule::kPingpong;
  TORCH_CHECK_VALUE(false, op, ": schedule must be cooperative or pingpong, got ", schedule);
}

inline void check_mlp_matrix(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like,
                             int64_t rows, int64_t cols) {
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": ", name, " must be [",
                    rows, ", ", cols, "], got ", t.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == like.scalar_type(), op, ": ", name, " must have dtype ",
                    like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": ", name, " is on ", t.device(),
                    " but the input is on ", like.device());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

inline void check_mlp_input(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 2, op, ": ", name, " must be 2-D [rows, features], got ", t.dim(), " dims");
  TORCH_CHECK_VALUE(
      t.scalar_type() == at::kFloat || t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, op,
      ": ", name, " must be float32, float16 or bfloat16, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// A pre of shape [0] asks for y alone (no backward will need pre).
inline bool mlp_pre_skipped(const at::Tensor& pre) { return pre.dim() == 1 && pre.size(0) == 0; }

// x [M, K], weight [N, K], bias [N]; outputs y [M, N] and pre [M, N] (or [0]: not stored).
inline MlpActivation check_mlp_gemm_bias_act_args(const at::Tensor& x, const at::Tensor& weight,
                                                  const at::Tensor& bias, c10::string_view activation,
                                                  const at::Tensor& y, const at::Tensor& pre) {
  const char* op = "mlp_gemm_bias_act";
  check_mlp_input(op, "x", x);
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight must be [N, K], got ", weight.sizes());
  check_mlp_matrix(op, "weight", weight, x, weight.size(0), x.size(1));
  TORCH_CHECK_VALUE(bias.dim() == 1 && bias.size(0) == weight.size(0), op, ": bias must be [", weight.size(0),
                    "], got ", bias.sizes());
  TORCH_CHECK_VALUE(bias.scalar_type() == x.scalar_type() && bias.device() == x.device(), op,
                    ": bias must have x's dtype and device");
  TORCH_CHECK_VALUE(bias.is_contiguous(), op, ": bias must be contiguous");
  check_mlp_matrix(op, "y", y, x, x.size(0), weight.size(0));
  if (!mlp_pre_skipped(pre)) {
    check_mlp_matrix(op, "pre", pre, x, x.size(0), weight.size(0));
    TORCH_CHECK_VALUE(!y.is_same(pre), op, ": y and pre must be different tensors");
  }
  return parse_mlp_activation(op, activation);
}

}  // namespace internvideo_fast
