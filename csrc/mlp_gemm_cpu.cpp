// CPU kernel of mlp_gemm_bias_act (ATen, fp32 math): the same results as the CUTLASS epilogue of
// kernels/mlp_gemm_sm90.cu, where the math is described.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "mlp_gemm_common.h"

namespace internvideo_fast {
namespace {

constexpr double kQuickGeluScale = 1.702;

at::Tensor activation_value(const at::Tensor& pre, MlpActivation kind) {
  switch (kind) {
    case MlpActivation::kGelu:
      return at::gelu(pre);
    case MlpActivation::kGeluTanh:
      return at::gelu(pre, "tanh");
    case MlpActivation::kQuickGelu:
      return pre * at::sigmoid(pre * kQuickGeluScale);
  }
  TORCH_CHECK(false, "unreachable");
}

// pre = x @ weight.T + bias (rounded), y = act(pre before rounding); written into y and pre (unless pre
// is [0]).
void mlp_gemm_bias_act_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           c10::string_view activation, c10::string_view schedule, at::Tensor& y,
                           at::Tensor& pre) {
  const MlpActivation kind = check_mlp_gemm_bias_act_args(x, weight, bias, activation, y, pre);
  parse_mlp_schedule("mlp_gemm_bias_act", schedule);
  const at::Tensor acc = at::addmm(bias.to(at::kFloat), x.to(at::kFloat), weight.to(at::kFloat).t());
  y.copy_(activation_value(acc, kind));
  if (!mlp_pre_skipped(pre)) pre.copy_(acc);
}

}  // namespace

TORCH_LIBRARY_IMPL(internvideo_fast, CPU, m) { m.impl("mlp_gemm_bias_act", &mlp_gemm_bias_act_cpu); }

}  // namespace internvideo_fast
