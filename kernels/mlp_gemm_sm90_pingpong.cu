// The pingpong schedule of the CUTLASS MLP GEMM (kernels/mlp_gemm_sm90.cuh), in its own translation unit
// so that the two schedules compile in parallel; kernels/mlp_gemm_sm90.cu checks the arguments and calls
// it.
#include "mlp_gemm_sm90.cuh"

namespace internvideo_fast {

void mlp_gemm_sm90_pingpong_bias_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     int kind, const at::Tensor& y, const at::Tensor& pre) {
  run_bias_act<PingpongSchedule>(x, weight, bias, kind, y, pre);
}

}  // namespace internvideo_fast
