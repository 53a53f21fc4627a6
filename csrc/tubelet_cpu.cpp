// CPU kernels of the tubelet ops: masked_tubelet_patches (+ backward) and mae_targets. The math is in
// internvideo_fast/ops/masked_patch_embed/ and internvideo_fast/ops/mae_targets/.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "output_alloc.h"
#include "tubelet_common.h"

namespace internvideo_fast {
namespace {

// Accumulate in double for double tensors, in float otherwise.
template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

at::Tensor masked_tubelet_patches_cpu(const at::Tensor& video_in, const at::Tensor& ids_in, int64_t tubelet,
                                      int64_t patch, std::optional<c10::ArrayRef<double>> mean,
                                      std::optional<c10::ArrayRef<double>> std) {
  const char* op = "masked_tubelet_patches";
  const TubeletGeometry g = tubelet_geometry(op, video_in.sizes(), ids_in, video_in, tubelet, patch);
  const at::Tensor video = video_in.contiguous(), ids = ids_in.contiguous();
  check_token_ids(op, ids, g.num_tokens());
  const bool is_uint8 = video.scalar_type() == at::kByte;
  const std::vector<double> affine = channel_affine(op, g.channels, is_uint8, mean, std, /*invert=*/false);
  const int64_t rows = ids.numel(), n = ids.size(1), volume = g.patch_volume(), K = g.channels * volume;
  at::Tensor out = new_output({g.batch, n, K}, video.options().dtype(is_uint8 ? at::kFloat : video.scalar_type()));
  const int64_t* id = ids.const_data_ptr<int64_t>();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(), "masked_tubelet_patches", [&] {
    using out_t = std::conditional_t<std::is_same_v<scalar_t, uint8_t>, float, scalar_t>;
    using acc_t = acc_type<scalar_t>;
    const scalar_t* src = video.const_data_ptr<scalar_t>();
    out_t* dst = static_cast<out_t*>(out.data_ptr());
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        out_t* row = dst + r * K;
        for (int64_t c = 0; c < g.channels; ++c) {
          const acc_t scale = affine[c], shift = affine[g.channels + c];
          for (int64_t dt = 0; dt < g.tubelet; ++dt) {
            for (int64_t dy = 0; dy < g.patch; ++dy) {
              const scalar_t* line = src + g.pixel_offset(r / n, c, id[r], dt, dy, 0);
              for (int64_t dx = 0; dx < g.patch; ++dx) {
                *row++ = static_cast<out_t>(static_cast<acc_t>(line[dx]) * scale + shift);
              }
            }
          }
        }
      }
    });
  });
  return out;
}

// grad_video[pixel of (r, k)] = grad[r, k] * scale[c]; every pixel belongs to at most one visible token.
at::Tensor masked_tubelet_patches_backward_cpu(const at::Tensor& grad_in, const at::Tensor& ids_in,
                                               at::IntArrayRef video_shape, int64_t tubelet, int64_t patch,
                                               std::optional<c10::ArrayRef<double>> mean,
                                               std::optional<c10::ArrayRef<double>> std) {
  const char* op = "masked_tubelet_patches_backward";
  const TubeletGeometry g = tubelet_geometry(op, video_shape, ids_in, grad_in, tubelet, patch);
  const at::Tensor grad = grad_in.contiguous(), ids = ids_in.contiguous();
  check_token_ids(op, ids, g.num_tokens());
  const std::vector<double> affine = channel_affine(op, g.channels, false, mean, std, false);
  const int64_t rows = ids.numel(), n = ids.size(1), K = g.channels * g.patch_volume();
  TORCH_CHECK_VALUE(grad.dim() == 3 && grad.size(0) == g.batch && grad.size(1) == n && grad.size(2) == K,
                    op, ": grad must be [B, n, C*tubelet*patch*patch]");
  at::Tensor grad_video = at::zeros(video_shape, grad.options());
  const int64_t* id = ids.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "masked_tubelet_patches_backward", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* src = grad.const_data_ptr<scalar_t>();
    scalar_t* dst = grad_video.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = src + r * K;
        for (int64_t c = 0; c < g.channels; ++c) {
          const acc_t scale = affine[c];
          for (int64_t dt = 0; dt < g.tubelet; ++dt) {
            for (int64_t dy = 0; dy < g.patch; ++dy) {
              scalar_t* line = dst + g.pixel_offset(r / n, c, id[r], dt, dy, 0);
              for (int64_t dx = 0; dx < g.patch; ++dx) {
                line[dx] = static_cast<scalar_t>(static_cast<acc_t>(*row++) * scale);
              }
            }
          }
        }
      }
    });
  });
  return grad_video;
}

// out[b, i, j*C + c] = (x_j - mean_j(x)) / (std_unbiased_j(x) + eps) over the tube's pixels j of channel c.
at::Tensor mae_targets_cpu(const at::Tensor& video_in, const at::Tensor& ids_in, int64_t tubelet, int64_t patch,
                           bool normalize, double eps, std::optional<c10::ArrayRef<double>> mean,
                           std::optional<c10::ArrayRef<double>> std) {
  const char* op = "mae_targets";
  const TubeletGeometry g = tubelet_geometry(op, video_in.sizes(), ids_in, video_in, tubelet, patch);
  const at::Tensor video = video_in.contiguous(), ids = ids_in.contiguous();
  check_token_ids(op, ids, g.num_tokens());
  const int64_t volume = g.patch_volume(), C = g.channels, rows = ids.numel(), n = ids.size(1);
  TORCH_CHECK_VALUE(!normalize || volume >= 2, op, ": normalizing needs at least 2 pixels per tube");
  const bool is_uint8 = video.scalar_type() == at::kByte;
  const std::vector<double> affine = channel_affine(op, C, is_uint8, mean, std, /*invert=*/true);
  const at::ScalarType out_type = video.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = new_output({g.batch, n, volume * C}, video.options().dtype(out_type));
  const int64_t* id = ids.const_data_ptr<int64_t>();
  AT_DISPATCH_ALL_TYPES_AND2(at::kHalf, at::kBFloat16, video.scalar_type(), "mae_targets", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* src = video.const_data_ptr<scalar_t>();
    acc_t* dst = static_cast<acc_t*>(out.data_ptr());
    at::parallel_for(0, rows, 4, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> tube(volume);
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t c = 0; c < C; ++c) {
          const acc_t scale = affine[c], shift = affine[C + c];
          int64_t j = 0;
          for (int64_t dt = 0; dt < g.tubelet; ++dt) {
            for (int64_t dy = 0; dy < g.patch; ++dy) {
              const scalar_t* line = src + g.pixel_offset(r / n, c, id[r], dt, dy, 0);
              for (int64_t dx = 0; dx < g.patch; ++dx) tube[j++] = static_cast<acc_t>(line[dx]) * scale + shift;
            }
          }
          acc_t center = 0, inv_spread = 1;
          if (normalize) {
            double sum = 0, squares = 0;
            for (acc_t v : tube) sum += v;
            const double m = sum / volume;
            for (acc_t v : tube) squares += (v - m) * (v - m);
            center = static_cast<acc_t>(m);
            inv_spread = static_cast<acc_t>(1.0 / (std::sqrt(squares / (volume - 1)) + eps));
          }
          acc_t* row = dst + r * volume * C + c;
          for (int64_t k = 0; k < volume; ++k) row[k * C] = (tube[k] - center) * inv_spread;
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(internvideo_fast, CPU, m) {
  m.impl("masked_tubelet_patches", &masked_tubelet_patches_cpu);
  m.impl("masked_tubelet_patches_backward", &masked_tubelet_patches_backward_cpu);
  m.impl("mae_targets", &mae_targets_cpu);
}

}  // namespace internvideo_fast
