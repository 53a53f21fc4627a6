// CUDA kernels of the tubelet ops: masked_tubelet_patches (+ backward) and mae_targets. The math is in
// internvideo_fast/ops/masked_patch_embed/ and internvideo_fast/ops/mae_targets/.
//
// Patches: one thread per output element; consecutive threads read consecutive pixels of a patch row, so
// loads and stores are coalesced. The backward writes each pixel once (ids are unique): no atomics.
// Targets: one warp per (token, channel) tube; two passes over its pixels for the mean and the unbiased
// variance, then the normalized write. Ids are read on the device (no host sync); an id out of range
// writes nothing rather than touching memory it does not own.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

#include "output_alloc.h"
#include "tubelet_common.h"

namespace internvideo_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxChannels = 8;

struct ChannelAffine {
  double scale[kMaxChannels];
  double shift[kMaxChannels];
};

ChannelAffine to_device_affine(const char* op, const std::vector<double>& affine, int64_t channels) {
  TORCH_CHECK_VALUE(channels <= kMaxChannels, op, " (cuda): at most ", kMaxChannels, " channels, got ",
                    channels);
  ChannelAffine result{};
  for (int64_t c = 0; c < channels; ++c) {
    result.scale[c] = affine[c];
    result.shift[c] = affine[channels + c];
  }
  return result;
}

template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

// x * scale + shift rounded twice, as the CPU kernels compute it: nvcc would contract it into one FMA
// (one rounding), and 16-bit outputs would then differ from the CPU's by an ulp.
__device__ __forceinline__ float apply_affine(float x, float scale, float shift) {
  return __fadd_rn(__fmul_rn(x, scale), shift);
}
__device__ __forceinline__ double apply_affine(double x, double scale, double shift) {
  return __dadd_rn(__dmul_rn(x, scale), shift);
}

// Element k of a patch row is pixel (c, dt, dy, dx) with k = ((c * tubelet + dt) * patch + dy) * patch + dx.
__device__ __forceinline__ int64_t patch_pixel(const TubeletGeometry& g, int64_t b, int64_t token, int64_t k,
                                               int64_t& c) {
  const int64_t dx = k % g.patch, dy = (k / g.patch) % g.patch, dt = (k / (g.patch * g.patch)) % g.tubelet;
  c = k / g.patch_volume();
  return g.pixel_offset(b, c, token, dt, dy, dx);
}

template <typename scalar_t, typename out_t>
__global__ void __launch_bounds__(kThreads)
    patches_kernel(const scalar_t* __restrict__ video, const int64_t* __restrict__ ids, out_t* __restrict__ out,
                   TubeletGeometry g, ChannelAffine affine, int64_t n, int64_t total) {
  using acc_t = acc_type<scalar_t>;
  const int64_t K = g.channels * g.patch_volume();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / K, token = ids[r];
    if (token < 0 || token >= g.num_tokens()) continue;
    int64_t c;
    const int64_t pixel = patch_pixel(g, r / n, token, i % K, c);
    out[i] = static_cast<out_t>(apply_affine(static_cast<acc_t>(video[pixel]), static_cast<acc_t>(affine.scale[c]),
                                             static_cast<acc_t>(affine.shift[c])));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    patches_backward_kernel(const scalar_t* __restrict__ grad, const int64_t* __restrict__ ids,
                            scalar_t* __restrict__ grad_video, TubeletGeometry g, ChannelAffine affine, int64_t n,
                            int64_t total) {
  using acc_t = acc_type<scalar_t>;
  const int64_t K = g.channels * g.patch_volume();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / K, token = ids[r];
    if (token < 0 || token >= g.num_tokens()) continue;
    int64_t c;
    const int64_t pixel = patch_pixel(g, r / n, token, i % K, c);
    grad_video[pixel] = static_cast<scalar_t>(static_cast<acc_t>(grad[i]) * static_cast<acc_t>(affine.scale[c]));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    mae_targets_kernel(const scalar_t* __restrict__ video, const int64_t* __restrict__ ids, acc_t* __restrict__ out,
                       TubeletGeometry g, ChannelAffine affine, int64_t n, int64_t tubes, bool normalize, double eps) {
  const int64_t tube = blockIdx.x * static_cast<int64_t>(kThreads / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (tube >= tubes) return;
  const int64_t C = g.channels, r = tube / C, c = tube % C, token = ids[r], volume = g.patch_volume();
  if (token < 0 || token >= g.num_tokens()) return;
  const acc_t scale = affine.scale[c], shift = affine.shift[c];
  const auto value = [&](int64_t j) {
    const int64_t dx = j % g.patch, dy = (j / g.patch) % g.patch, dt = j / (g.patch * g.patch);
    return apply_affine(static_cast<acc_t>(video[g.pixel_offset(r / n, c, token, dt, dy, dx)]), scale, shift);
  };
  acc_t center = 0, inv_spread = 1;
  if (normalize) {
    acc_t sum = 0;
    for (int64_t j = lane; j < volume; j += 32) sum += value(j);
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    center = sum / static_cast<acc_t>(volume);
    acc_t squares = 0;
    for (int64_t j = lane; j < volume; j += 32) {
      const acc_t d = value(j) - center;
      squares += d * d;
    }
    for (int offset = 16; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
    inv_spread = static_cast<acc_t>(1) / (sqrt(squares / static_cast<acc_t>(volume - 1)) + static_cast<acc_t>(eps));
  }
  acc_t* row = out + r * volume * C + c;
  for (int64_t j = lane; j < volume; j += 32) row[j * C] = (value(j) - center) * inv_spread;
}

unsigned grid_for(int64_t work, int64_t per_block) {
  return static_cast<unsigned>(std::min<int64_t>((work + per_block - 1) / per_block, int64_t{1} << 20));
}

at::Tensor masked_tubelet_patches_cuda(const at::Tensor& video_in, const at::Tensor& ids_in, int64_t tubelet,
                                       int64_t patch, std::optional<c10::ArrayRef<double>> mean,
                                       std::optional<c10::ArrayRef<double>> std) {
  const char* op = "masked_tubelet_patches";
  const TubeletGeometry g = tubelet_geometry(op, video_in.sizes(), ids_in, video_in, tubelet, patch);
  const c10::cuda::CUDAGuard device_guard(video_in.device());
  const at::Tensor video = video_in.contiguous(), ids = ids_in.contiguous();
  const bool is_uint8 = video.scalar_type() == at::kByte;
  const ChannelAffine affine =
      to_device_affine(op, channel_affine(op, g.channels, is_uint8, mean, std, false), g.channels);
  const int64_t n = ids.size(1), K = g.channels * g.patch_volume(), total = ids.numel() * K;
  at::Tensor out = new_output({g.batch, n, K}, video.options().dtype(is_uint8 ? at::kFloat : video.scalar_type()));
  if (total == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(), "masked_tubelet_patches", [&] {
    using out_t = std::conditional_t<std::is_same_v<scalar_t, uint8_t>, float, scalar_t>;
    patches_kernel<scalar_t, out_t><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        video.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), static_cast<out_t*>(out.data_ptr()), g,
        affine, n, total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor masked_tubelet_patches_backward_cuda(const at::Tensor& grad_in, const at::Tensor& ids_in,
                                                at::IntArrayRef video_shape, int64_t tubelet, int64_t patch,
                                                std::optional<c10::ArrayRef<double>> mean,
                                                std::optional<c10::ArrayRef<double>> std) {
  const char* op = "masked_tubelet_patches_backward";
  const TubeletGeometry g = tubelet_geometry(op, video_shape, ids_in, grad_in, tubelet, patch);
  const c10::cuda::CUDAGuard device_guard(grad_in.device());
  const at::Tensor grad = grad_in.contiguous(), ids = ids_in.contiguous();
  const ChannelAffine affine = to_device_affine(op, channel_affine(op, g.channels, false, mean, std, false), g.channels);
  const int64_t n = ids.size(1), K = g.channels * g.patch_volume(), total = ids.numel() * K;
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == g.batch && grad.size(1) == n && grad.size(2) == K, op,
                    ": grad must be [B, n, C*tubelet*patch*patch]");
  at::Tensor grad_video = at::zeros(video_shape, grad.options());
  if (total == 0) return grad_video;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "masked_tubelet_patches_backward", [&] {
    patches_backward_kernel<scalar_t><<<grid_for(total, kThreads), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), grad_video.data_ptr<scalar_t>(), g, affine, n,
        total);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grad_video;
}

at::Tensor mae_targets_cuda(const at::Tensor& video_in, const at::Tensor& ids_in, int64_t tubelet, int64_t patch,
                            bool normalize, double eps, std::optional<c10::ArrayRef<double>> mean,
                            std::optional<c10::ArrayRef<double>> std) {
  const char* op = "mae_targets";
  const TubeletGeometry g = tubelet_geometry(op, video_in.sizes(), ids_in, video_in, tubelet, patch);
  TORCH_CHECK_VALUE(!normalize || g.patch_volume() >= 2, op, ": normalizing needs at least 2 pixels per tube");
  const c10::cuda::CUDAGuard device_guard(video_in.device());
  const at::Tensor video = video_in.contiguous(), ids = ids_in.contiguous();
  const bool is_uint8 = video.scalar_type() == at::kByte;
  const ChannelAffine affine =
      to_device_affine(op, channel_affine(op, g.channels, is_uint8, mean, std, true), g.channels);
  const at::ScalarType out_type = video.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t n = ids.size(1), tubes = ids.numel() * g.channels;
  at::Tensor out = new_output({g.batch, n, g.patch_volume() * g.channels}, video.options().dtype(out_type));
  if (tubes == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const unsigned blocks = static_cast<unsigned>((tubes + kThreads / 32 - 1) / (kThreads / 32));
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(), "mae_targets", [&] {
    using acc_t = acc_type<scalar_t>;
    mae_targets_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        video.const_data_ptr<scalar_t>(), ids.const_data_ptr<int64_t>(), static_cast<acc_t*>(out.data_ptr()), g,
        affine, n, tubes, normalize, eps);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(internvideo_fast, CUDA, m) {
  m.impl("masked_tubelet_patches", &masked_tubelet_patches_cuda);
  m.impl("masked_tubelet_patches_backward", &masked_tubelet_patches_backward_cuda);
  m.impl("mae_targets", &mae_targets_cuda);
}

}  // namespace internvideo_fast
