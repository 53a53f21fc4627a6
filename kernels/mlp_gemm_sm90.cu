// A CUTLASS GEMM for the MLP's fc1 (H100, sm_90a) with the bias and activation in its epilogue: the math
// is in internvideo_fast/ops/linear_act/ (reference: csrc/mlp_gemm_cpu.cpp, the same op on the CPU).
//
//   mlp_gemm_bias_act(x [M, K], weight [N, K], bias [N], activation, schedule, y [M, N], pre [M, N] or [0])
//       pre = x @ weight.T + bias (rounded to x's dtype; not stored if pre is [0]), y = act(pre before
//       rounding)
//
// Why: our Triton GEMMs reached 77-83% of cuBLAS on an H100 (2026-11-27), so the tuned fc1 ran cuBLAS's
// GEMM plus a separate elementwise pass over [M, hidden]. CUTLASS's warp-specialized TMA / wgmma kernels
// run at cuBLAS's speed and let the epilogue visitor tree apply the activation to the accumulator in
// registers: y and pre are written in one pass and pre is never read back (without pre, for inference or
// frozen backbones, only y is written). It is a run-time tuner candidate beside cuBLAS (the tuner also
// checks its outputs against the default plan's), offered for 16-bit inputs with 16-byte aligned rows on
// sm_90.
//
// `schedule` ("cooperative" or "pingpong", see kernels/mlp_gemm_sm90.cuh) picks the kernel; the results
// are the same up to summation order.
//
// There is no backward twin (dh = dz @ weight2 with dpre, h and dbias in the epilogue): on an H100 it ran
// 2.8-4.5x slower than cuBLAS's dh GEMM plus our elementwise kernel (bench/results/HISTORY.md, 2026-11-27).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "mlp_gemm_sm90.cuh"

namespace internvideo_fast {
namespace {

// What TMA and this build need beyond the shared checks: 16-bit data, 16-byte aligned rows, an sm_90 GPU.
void check_cuda_operand(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16, op, ": ", name,
                    " must be float16 or bfloat16 on CUDA, got ", t.scalar_type());
  TORCH_CHECK_VALUE(
      (t.size(-1) * t.element_size()) % 16 == 0 && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0,
      op, ": ", name, " must start at a 16-byte aligned address and have rows of a multiple of 16 bytes",
      " (TMA), got ", t.size(-1), " elements per row");
  const cudaDeviceProp* props = at::cuda::getDeviceProperties(t.get_device());
  TORCH_CHECK_VALUE(props->major == 9 && props->minor == 0, op,
                    ": needs an sm_90 GPU (built for sm_90a), got sm_", props->major, props->minor);
}

void mlp_gemm_bias_act_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                            c10::string_view activation, c10::string_view schedule, at::Tensor& y,
                            at::Tensor& pre) {
  const char* op = "mlp_gemm_bias_act";
  const int kind = static_cast<int>(check_mlp_gemm_bias_act_args(x, weight, bias, activation, y, pre));
  const MlpSchedule chosen = parse_mlp_schedule(op, schedule);
  const c10::cuda::CUDAGuard device_guard(x.device());
  check_cuda_operand(op, "x", x);
  check_cuda_operand(op, "weight", weight);
  check_cuda_operand(op, "bias", bias);
  TORCH_CHECK_VALUE(x.size(1) > 0 && x.size(0) < INT32_MAX && weight.size(0) < INT32_MAX, op,
                    ": needs 0 < K and M, N < 2^31, got x ", x.sizes(), " and weight ", weight.sizes());
  check_cuda_operand(op, "y", y);
  if (!mlp_pre_skipped(pre)) check_cuda_operand(op, "pre", pre);
  if (x.size(0) == 0 || weight.size(0) == 0) return;
  if (chosen == MlpSchedule::kCooperative) {
    run_bias_act<CooperativeSchedule>(x, weight, bias, kind, y, pre);
  } else {
    mlp_gemm_sm90_pingpong_bias_act(x, weight, bias, kind, y, pre);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(internvideo_fast, CUDA, m) { m.impl("mlp_gemm_bias_act", &mlp_gemm_bias_act_cuda); }

}  // namespace internvideo_fast
