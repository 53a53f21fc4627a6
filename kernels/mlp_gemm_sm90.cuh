// CUTLASS GEMMs for the MLP (H100, sm_90a) with fc1's elementwise work in their epilogues: the kernel
// templates, shared by the translation unit of each schedule (kernels/mlp_gemm_sm90.cu, which also holds
// the ops, and kernels/mlp_gemm_sm90_pingpong.cu: one schedule per file, so they compile in parallel).
// The ops and the math are described in kernels/mlp_gemm_sm90.cu.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/epilogue/fusion/sm90_callbacks_tma_warpspecialized.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "mlp_gemm_common.h"

namespace internvideo_fast {

// Defined in kernels/mlp_gemm_sm90_pingpong.cu: the pingpong schedule's launcher (arguments checked).
void mlp_gemm_sm90_pingpong_bias_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     int kind, const at::Tensor& y, const at::Tensor& pre);

// An anonymous namespace: each translation unit's kernels are its own (and carry its name).
namespace {

using namespace cute;

// ------------------------------------------------------------------------------------------------------
// Activations (fp32), as the Triton kernels' _activation. `kind` is a run-time argument (uniform over the
// grid), so one kernel per dtype serves every activation.
//
// Why one branch per fragment and __fdividef: CUTLASS unrolls the epilogue over its subtiles (8 per
// 128 x 256 tile), so this code is inlined 8 times per kernel. With the branch on `kind` inside each
// element and IEEE division (a slow-path call per division), the forward kernel is 13.6k SASS
// instructions, more than the SM's instruction cache holds: every tile re-fetches its epilogue, and on an
// H100 it runs 3-4x slower than cuBLAS's GEMM plus a separate GELU pass (a one-tile problem takes 27 us
// against 4). Branching once per fragment keeps the executed code to one activation's (3x faster;
// bench/results/HISTORY.md, 2026-11-27); __fdividef (2 ulp) is exact enough for 16-bit outputs.
// ------------------------------------------------------------------------------------------------------
struct ActivationArgs {
  int kind = static_cast<int>(MlpActivation::kGelu);
};

// sigmoid(u) = 1 / (1 + e^-u): both tails exact enough for 16-bit outputs (e^-u = inf gives 0).
CUTLASS_DEVICE float sigmoid_of(float u) { return __fdividef(1.0f, 1.0f + __expf(-u)); }

// MUFU.EX2 and MUFU.RSQ alone: exp2f and rsqrtf add a rescaling of subnormal inputs (a compare and a
// predicated multiply each). Flushing subnormal results to zero is harmless where they are used below.
CUTLASS_DEVICE float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
CUTLASS_DEVICE float rsqrt_ftz(float x) {
  float y;
  asm("rsqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// The standard normal CDF, as linear_act's _normal_cdf_and_gauss (the same fit, the same constants):
// Phi(-|x|) = t Q(t) exp(-x^2 / 2) with t = 1 / (1 + 0.375 |x| / sqrt 2) and Q a degree-6 minimax fit of
// erfcx (relative error 6.2e-7); Phi(|x|) = 1 - that. Why not erff: 0.5 (1 + erf) cancels for x < 0, and
// this form is cheaper: a 4-element test kernel compiles to 128 sm_90a SASS instructions with erff, 96
// with this (quick_gelu: 56), and the CUTLASS forward kernels went from 8.8k to 7.0k instructions. t is
// rsqrt(d^2) (d >= 1): one MUFU.RSQ, where 1 / d compiles to IEEE division. exp(-x^2 / 2) flushes to 0
// for |x| > 13.2, where gelu(x) is below 1e-37 (x < 0) or x itself (x > 0).
CUTLASS_DEVICE float normal_cdf(float x) {
  const float d = fmaf(fabsf(x), 0.2651650309562683f, 1.0f);
  const float t = rsqrt_ftz(d * d);  // d * d = inf past |x| ~ 4e19: t = 0, the limit
  float q = -0.06757182627916336f;
  q = fmaf(q, t, 0.19405218958854675f);
  q = fmaf(q, t, -0.06491463631391525f);
  q = fmaf(q, t, 0.14161314070224762f);
  q = fmaf(q, t, 0.08330093324184418f);
  q = fmaf(q, t, 0.10785061120986938f);
  q = fmaf(q, t, 0.10566926747560501f);
  const float tail = t * q * exp2_ftz(x * x * -0.7213475108146667f);  // exp(-x^2 / 2)
  return x >= 0.0f ? 1.0f - tail : tail;
}

CUTLASS_DEVICE float gelu(float x) { return x * normal_cdf(x); }
// 0.5 x (1 + tanh u) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3).
CUTLASS_DEVICE float gelu_tanh(float x) {
  return x * sigmoid_of(1.5957691216057308f * fmaf(0.044715f * x, x * x, x));
}
CUTLASS_DEVICE float quick_gelu(float x) { return x * sigmoid_of(1.702f * x); }

// act(pre), elementwise; Sm90Compute instantiates it for ElementCompute (to find Arguments) and for
// fragments Array<ElementCompute, N> (to compute).
template <class T>
struct Activation {
  using Arguments = ActivationArgs;
  CUTLASS_HOST_DEVICE T operator()(T const& pre, Arguments const& args) const;
};

template <class T, int N>
struct Activation<cutlass::Array<T, N>> {
  using Arguments = ActivationArgs;
  CUTLASS_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& pre,
                                                 Arguments const& args) const {
    cutlass::Array<T, N> out;
    if (args.kind == static_cast<int>(MlpActivation::kGelu)) {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < N; ++i) out[i] = gelu(pre[i]);
    } else if (args.kind == static_cast<int>(MlpActivation::kGeluTanh)) {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < N; ++i) out[i] = gelu_tanh(pre[i]);
    } else {
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < N; ++i) out[i] = quick_gelu(pre[i]);
    }
    return out;
  }
};

// ------------------------------------------------------------------------------------------------------
// Kernel types: persistent, TMA loads by a producer warp, wgmma by consumer warp groups, 2-CTA clusters
// along M (the B tile is multicast). Two schedules, timed against each other by the run-time tuner:
// - cooperative, 128 x 256 x 64 tiles: both consumer warp groups work on one tile (cuBLAS's usual choice
//   for these shapes on an H100); the tensor cores idle while they run the epilogue;
// - pingpong, 128 x 128 x 64 tiles: each consumer warp group owns a tile, and one's epilogue runs while
//   the other's mainloop does. With K = 768 (ViT-B) a tile's mainloop is 12 steps and its epilogue
//   stores two [128, 128] outputs, so the epilogue is a large share of each tile.
// ------------------------------------------------------------------------------------------------------
struct CooperativeSchedule {
  using TileShape = Shape<_128, _256, _64>;
  using ClusterShape = Shape<_2, _1, _1>;
  using Mainloop = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
  using Epilogue = cutlass::epilogue::TmaWarpSpecializedCooperative;
};

struct PingpongSchedule {
  using TileShape = Shape<_128, _128, _64>;
  using ClusterShape = Shape<_2, _1, _1>;
  using Mainloop = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
  using Epilogue = cutlass::epilogue::TmaWarpSpecialized;
};

template <class Schedule, class Element, class LayoutA, class LayoutB, class LayoutD, class Fusion>
struct Gemm {
  static constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, typename Schedule::TileShape,
      typename Schedule::ClusterShape, cutlass::epilogue::collective::EpilogueTileAuto, float, float, void,
      LayoutD, kAlign, Element, LayoutD, kAlign, typename Schedule::Epilogue, Fusion>::CollectiveOp;
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA, kAlign, Element, LayoutB, kAlign,
      float, typename Schedule::TileShape, typename Schedule::ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Schedule::Mainloop>::CollectiveOp;
  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop, CollectiveEpilogue>;
  using Device = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

// Forward: x [M, K] row-major (A), weight [N, K] row-major = B column-major, pre / y [M, N] row-major.
template <class Schedule, class Element>
using BiasActGemm =
    Gemm<Schedule, Element, cutlass::layout::RowMajor, cutlass::layout::ColumnMajor,
         cutlass::layout::RowMajor,
         cutlass::epilogue::fusion::LinCombPerColBiasEltActAux<cutlass::layout::RowMajor, Activation, Element,
                                                               float, Element, Element>>;

template <class Device>
void run_gemm(typename Device::Arguments& args, const at::Tensor& like, const char* op) {
  Device gemm;
  cutlass::Status status = gemm.can_implement(args);
  TORCH_CHECK(status == cutlass::Status::kSuccess, op, ": CUTLASS cannot run this problem (",
              cutlassGetStatusString(status), "); the Python plans offer it only for aligned 16-bit inputs");
  const size_t workspace_bytes = Device::get_workspace_size(args);
  at::Tensor workspace = at::empty({static_cast<int64_t>(workspace_bytes)}, like.options().dtype(at::kByte));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  status = gemm.initialize(args, workspace_bytes ? workspace.data_ptr() : nullptr, stream);
  TORCH_CHECK(status == cutlass::Status::kSuccess, op, ": CUTLASS initialize failed (",
              cutlassGetStatusString(status), ")");
  status = gemm.run(stream);
  TORCH_CHECK(status == cutlass::Status::kSuccess, op, ": CUTLASS launch failed (",
              cutlassGetStatusString(status), ")");
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

cutlass::KernelHardwareInfo hardware_info(const at::Tensor& like) {
  cutlass::KernelHardwareInfo info;
  info.device_id = like.get_device();
  info.sm_count = at::cuda::getDeviceProperties(info.device_id)->multiProcessorCount;  // cached by torch
  return info;
}

template <class Schedule, class Element>
void bias_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int kind,
              const at::Tensor& y, const at::Tensor& pre) {
  using Device = typename BiasActGemm<Schedule, Element>::Device;
  using Kernel = typename BiasActGemm<Schedule, Element>::Kernel;
  const int M = static_cast<int>(x.size(0)), K = static_cast<int>(x.size(1)),
            N = static_cast<int>(weight.size(0));
  typename Kernel::StrideA stride_x{int64_t(K), _1{}, int64_t(M) * K};
  typename Kernel::StrideB stride_w{int64_t(K), _1{}, int64_t(N) * K};
  typename Kernel::StrideD stride_y{int64_t(N), _1{}, int64_t(M) * N};
  typename Device::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm,
                                  {M, N, K, 1},
                                  {reinterpret_cast<const Element*>(x.const_data_ptr()), stride_x,
                                   reinterpret_cast<const Element*>(weight.const_data_ptr()), stride_w},
                                  {{}, nullptr, stride_y, reinterpret_cast<Element*>(y.data_ptr()), stride_y},
                                  hardware_info(x)};
  auto& fusion = args.epilogue.thread;
  fusion.alpha = 1.0f;
  fusion.beta = 0.0f;
  fusion.bias_ptr = reinterpret_cast<const Element*>(bias.const_data_ptr());
  fusion.activation = ActivationArgs{kind};
  // No pre wanted: a null aux pointer turns the aux store off (Sm90AuxStore's EnableNullptr).
  fusion.aux_ptr = mlp_pre_skipped(pre) ? nullptr : reinterpret_cast<Element*>(pre.data_ptr());
  fusion.dAux = stride_y;
  run_gemm<Device>(args, x, "mlp_gemm_bias_act");
}

// The launcher a schedule's translation unit instantiates, by dtype.
template <class Schedule>
void run_bias_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int kind,
                  const at::Tensor& y, const at::Tensor& pre) {
  if (x.scalar_type() == at::kBFloat16) {
    bias_act<Schedule, cutlass::bfloat16_t>(x, weight, bias, kind, y, pre);
  } else {
    bias_act<Schedule, cutlass::half_t>(x, weight, bias, kind, y, pre);
  }
}

}  // namespace
}  // namespace internvideo_fast
