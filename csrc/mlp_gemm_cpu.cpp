// CPU kernels of mlp_gemm_bias_act / mlp_gemm_act_grad (ATen, fp32 math): the same results as the
// CUTLASS epilogues of kernels/mlp_gemm_sm90.cu, where the math is described.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "mlp_gemm_common.h"
#include "output_alloc.h"

namespace internvideo_fast {
namespace {

constexpr double kInvSqrt2 = 0.7071067811865476, kInvSqrt2Pi = 0.3989422804014327;
constexpr double kSqrt2OverPi = 0.7978845608028654, kQuickGeluScale = 1.702;

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

at::Tensor activation_slope(const at::Tensor& pre, MlpActivation kind) {
  switch (kind) {
    case MlpActivation::kGelu:
      return 0.5 * (1.0 + at::erf(pre * kInvSqrt2)) + pre * kInvSqrt2Pi * at::exp(-0.5 * pre * pre);
    case MlpActivation::kGeluTanh: {
      const at::Tensor t = at::tanh(kSqrt2OverPi * (pre + 0.044715 * pre * pre * pre));
      const at::Tensor du = kSqrt2OverPi * (1.0 + 3.0 * 0.044715 * pre * pre);
      return 0.5 * (1.0 + t) + 0.5 * pre * (1.0 - t * t) * du;
    }
    case MlpActivation::kQuickGelu: {
      const at::Tensor s = at::sigmoid(pre * kQuickGeluScale);
      return s + kQuickGeluScale * pre * s * (1.0 - s);
    }
  }
  TORCH_CHECK(false, "unreachable");
}

at::Tensor into_output(const at::Tensor& value, const at::TensorOptions& options) {
  at::Tensor out = new_output(value.sizes(), options);
  out.copy_(value);
  return out;
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

// dpre = (dz @ weight2) * act'(pre), dbias = sum of dpre's rows before rounding (fp32), h = act(pre).
std::tuple<at::Tensor, at::Tensor, at::Tensor> mlp_gemm_act_grad_cpu(const at::Tensor& dz,
                                                                     const at::Tensor& weight2,
                                                                     const at::Tensor& pre,
                                                                     c10::string_view activation,
                                                                     c10::string_view schedule) {
  const MlpActivation kind = check_mlp_gemm_act_grad_args(dz, weight2, pre, activation);
  parse_mlp_schedule("mlp_gemm_act_grad", schedule);
  const at::Tensor pre32 = pre.to(at::kFloat);
  const at::Tensor dpre = at::mm(dz.to(at::kFloat), weight2.to(at::kFloat)) * activation_slope(pre32, kind);
  return {into_output(dpre, pre.options()), into_output(dpre.sum(0), pre.options().dtype(at::kFloat)),
          into_output(activation_value(pre32, kind), pre.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(internvideo_fast, CPU, m) {
  m.impl("mlp_gemm_bias_act", &mlp_gemm_bias_act_cpu);
  m.impl("mlp_gemm_act_grad", &mlp_gemm_act_grad_cpu);
}

}  // namespace internvideo_fast
