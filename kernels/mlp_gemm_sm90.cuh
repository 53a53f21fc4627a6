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

// Defined in kernels/mlp_gemm_sm90_pingpong.cu: the pingpong schedule's launchers (arguments checked).
void mlp_gemm_sm90_pingpong_bias_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     int kind, const at::Tensor& y, const at::Tensor& pre);
void mlp_gemm_sm90_pingpong_act_grad(const at::Tensor& dz, const at::Tensor& weight2, const at::Tensor& pre,
                                     int kind, at::Tensor& dpre, at::Tensor& dbias, at::Tensor& h);

// An anonymous namespace: each translation unit's kernels are its own (and carry its name).
namespace {

using namespace cute;

// ------------------------------------------------------------------------------------------------------
// Activations (fp32), as the Triton kernels' _activation / _activation_grad. `kind` is a run-time
// argument (uniform over the grid), so one kernel per dtype serves every activation.
// ------------------------------------------------------------------------------------------------------
struct ActivationArgs {
  int kind = static_cast<int>(MlpActivation::kGelu);
};

CUTLASS_DEVICE float tanh_of(float u) { return 2.0f / (1.0f + __expf(-2.0f * u)) - 1.0f; }
CUTLASS_DEVICE float sigmoid_of(float u) { return 1.0f / (1.0f + __expf(-u)); }

CUTLASS_DEVICE float activation_value(float pre, int kind) {
  if (kind == static_cast<int>(MlpActivation::kGelu)) {
    return 0.5f * pre * (1.0f + erff(pre * 0.7071067811865476f));
  }
  if (kind == static_cast<int>(MlpActivation::kGeluTanh)) {
    return 0.5f * pre * (1.0f + tanh_of(0.7978845608028654f * (pre + 0.044715f * pre * pre * pre)));
  }
  return pre * sigmoid_of(1.702f * pre);  // quick_gelu
}

CUTLASS_DEVICE float activation_slope(float pre, int kind) {
  if (kind == static_cast<int>(MlpActivation::kGelu)) {
    const float cdf = 0.5f * (1.0f + erff(pre * 0.7071067811865476f));
    return cdf + pre * 0.3989422804014327f * __expf(-0.5f * pre * pre);
  }
  if (kind == static_cast<int>(MlpActivation::kGeluTanh)) {
    const float t = tanh_of(0.7978845608028654f * (pre + 0.044715f * pre * pre * pre));
    const float du = 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * pre * pre);
    return 0.5f * (1.0f + t) + 0.5f * pre * (1.0f - t * t) * du;
  }
  const float s = sigmoid_of(1.702f * pre);
  return s + 1.702f * pre * s * (1.0f - s);
}

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
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = activation_value(pre[i], args.kind);
    return out;
  }
};

// dh * act'(pre); the third operand is h, which the tree stores on its way here and this node ignores.
template <class T>
struct ActivationGrad {
  using Arguments = ActivationArgs;
  CUTLASS_HOST_DEVICE T operator()(T const& dh, T const& pre, T const& h, Arguments const& args) const;
};

template <class T, int N>
struct ActivationGrad<cutlass::Array<T, N>> {
  using Arguments = ActivationArgs;
  CUTLASS_DEVICE cutlass::Array<T, N> operator()(cutlass::Array<T, N> const& dh,
                                                 cutlass::Array<T, N> const& pre, cutlass::Array<T, N> const&,
                                                 Arguments const& args) const {
    cutlass::Array<T, N> out;
    CUTLASS_PRAGMA_UNROLL
    for (int i = 0; i < N; ++i) out[i] = dh[i] * activation_slope(pre[i], args.kind);
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

constexpr auto kRound = cutlass::FloatRoundStyle::round_to_nearest;

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

// Backward, transposed: A = weight2^T [N, Nout] (weight2 [Nout, N] row-major: column-major A),
// B = dz^T (dz [M, Nout] row-major: column-major B), dpre^T / pre^T / h^T [N, M] column-major.
template <class Schedule, class Element>
struct ActGradTree {
  using TileShape = typename Schedule::TileShape;
  using Epilogue = cutlass::epilogue::collective::detail::EpilogueDescriptor<
      TileShape, cutlass::epilogue::collective::EpilogueTileAuto, void, Element, typename Schedule::Epilogue>;
  using PreDesc =
      cutlass::epilogue::collective::detail::AuxLoadDescriptor<Epilogue, cutlass::layout::ColumnMajor,
                                                               Element>;
  using HDesc =
      cutlass::epilogue::collective::detail::AuxStoreDescriptor<Epilogue, cutlass::layout::ColumnMajor,
                                                                Element>;
  using LoadPre =
      cutlass::epilogue::fusion::Sm90AuxLoad<PreDesc::Stages, typename Epilogue::EpilogueTile, Element,
                                             typename PreDesc::Stride, typename PreDesc::SmemLayoutAtom,
                                             typename PreDesc::CopyOpS2R>;
  using StoreH =
      cutlass::epilogue::fusion::Sm90AuxStore<HDesc::Stages, typename Epilogue::EpilogueTile, Element, kRound,
                                              typename HDesc::Stride, typename HDesc::SmemLayoutAtom,
                                              typename HDesc::CopyOpR2S>;
  using H = cutlass::epilogue::fusion::Sm90EVT<
      StoreH, cutlass::epilogue::fusion::Sm90EVT<
                  cutlass::epilogue::fusion::Sm90Compute<Activation, float, float, kRound>, LoadPre>>;
  using DPre = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<ActivationGrad, float, float, kRound>,
      cutlass::epilogue::fusion::Sm90AccFetch, LoadPre, H>;
  using DBias =
      cutlass::epilogue::fusion::Sm90ColReduction<cutlass::plus, cutlass::plus, cutlass::plus, 0, TileShape,
                                                  float, float, kRound, Stride<_1, _0, int64_t>, 4>;
  using Tree = cutlass::epilogue::fusion::Sm90EVT<
      cutlass::epilogue::fusion::Sm90Compute<cutlass::epilogue::thread::Identity, Element, float, kRound>,
      cutlass::epilogue::fusion::Sm90EVT<DBias, DPre>>;

  static typename Tree::Arguments arguments(const Element* pre, Element* h, float* dbias, int64_t N,
                                            int64_t M, int kind) {
    using StrideAux = typename PreDesc::Stride;  // column-major [N, M]: (1, N, N * M)
    const StrideAux stride{_1{}, N, N * M};
    const typename LoadPre::Arguments load_pre{pre, Element(0), stride};
    const typename StoreH::Arguments store_h{h, stride};
    return {                                  // identity (rounding to Element)
            {                                 // dbias reduction
             {                                // dpre = dh * act'(pre)
              {},                             // dh: the accumulator
              load_pre,                       // pre
              {{load_pre, {kind}}, store_h},  // h = store(act(pre))
              {kind}},
             {dbias, 0.0f, {_1{}, _0{}, N}}},
            {}};
  }
};

template <class Schedule, class Element>
using ActGradGemm = Gemm<Schedule, Element, cutlass::layout::ColumnMajor, cutlass::layout::ColumnMajor,
                         cutlass::layout::ColumnMajor, typename ActGradTree<Schedule, Element>::Tree>;

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

template <class Schedule, class Element>
void act_grad(const at::Tensor& dz, const at::Tensor& weight2, const at::Tensor& pre, int kind,
              at::Tensor& dpre, at::Tensor& dbias, at::Tensor& h) {
  using Device = typename ActGradGemm<Schedule, Element>::Device;
  using Kernel = typename ActGradGemm<Schedule, Element>::Kernel;
  const int M = static_cast<int>(dz.size(0)), Nout = static_cast<int>(dz.size(1));
  const int N = static_cast<int>(weight2.size(1));
  // GEMM (M', N', K) = (N, M, Nout).
  typename Kernel::StrideA stride_w2t{_1{}, int64_t(N), int64_t(N) * Nout};
  typename Kernel::StrideB stride_dzt{int64_t(Nout), _1{}, int64_t(M) * Nout};
  typename Kernel::StrideD stride_out{_1{}, int64_t(N), int64_t(N) * M};
  typename Device::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGemm,
      {N, M, Nout, 1},
      {reinterpret_cast<const Element*>(weight2.const_data_ptr()), stride_w2t,
       reinterpret_cast<const Element*>(dz.const_data_ptr()), stride_dzt},
      {ActGradTree<Schedule, Element>::arguments(reinterpret_cast<const Element*>(pre.const_data_ptr()),
                                                 reinterpret_cast<Element*>(h.data_ptr()),
                                                 dbias.data_ptr<float>(), N, M, kind),
       nullptr, stride_out, reinterpret_cast<Element*>(dpre.data_ptr()), stride_out},
      hardware_info(dz)};
  run_gemm<Device>(args, dz, "mlp_gemm_act_grad");
}

// The launchers a schedule's translation unit instantiates, by dtype.
template <class Schedule>
void run_bias_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int kind,
                  const at::Tensor& y, const at::Tensor& pre) {
  if (x.scalar_type() == at::kBFloat16) {
    bias_act<Schedule, cutlass::bfloat16_t>(x, weight, bias, kind, y, pre);
  } else {
    bias_act<Schedule, cutlass::half_t>(x, weight, bias, kind, y, pre);
  }
}

template <class Schedule>
void run_act_grad(const at::Tensor& dz, const at::Tensor& weight2, const at::Tensor& pre, int kind,
                  at::Tensor& dpre, at::Tensor& dbias, at::Tensor& h) {
  if (dz.scalar_type() == at::kBFloat16) {
    act_grad<Schedule, cutlass::bfloat16_t>(dz, weight2, pre, kind, dpre, dbias, h);
  } else {
    act_grad<Schedule, cutlass::half_t>(dz, weight2, pre, kind, dpre, dbias, h);
  }
}

}  // namespace
}  // namespace internvideo_fast
