// Shared by the CPU and CUDA tubelet kernels (masked_tubelet_patches, its backward, mae_targets):
// index math and argument checks. The math is in internvideo_fast/ops/masked_patch_embed/ and
// internvideo_fast/ops/mae_targets/.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/ArrayRef.h>

#include <optional>

#include <array>
#include <type_traits>
#include <vector>

#include "host_device.h"

namespace internvideo_fast {

// The token grid of a [B, C, T, H, W] video cut into tubelet x patch x patch tubes.
struct TubeletGeometry {
  int64_t batch, channels, frames, height, width;  // video
  int64_t tubelet, patch;
  int64_t grid_t, grid_h, grid_w;  // tokens
  IVF_HOST_DEVICE int64_t num_tokens() const { return grid_t * grid_h * grid_w; }
  IVF_HOST_DEVICE int64_t patch_volume() const { return tubelet * patch * patch; }
  // Offset of pixel (c, dt, dy, dx) of token `token` in sample b of a contiguous video.
  IVF_HOST_DEVICE int64_t pixel_offset(int64_t b, int64_t c, int64_t token, int64_t dt, int64_t dy, int64_t dx) const {
    const int64_t tw = token % grid_w, th = (token / grid_w) % grid_h, tt = token / (grid_w * grid_h);
    return (((b * channels + c) * frames + tt * tubelet + dt) * height + th * patch + dy) * width +
           tw * patch + dx;
  }
};

// Checks a [B, C, T, H, W] video shape against the tubelet and ids [B, n] (int64, same device as
// `device_of`), and returns its token grid.
inline TubeletGeometry tubelet_geometry(const char* op, at::IntArrayRef video, const at::Tensor& ids,
                                        const at::Tensor& device_of, int64_t tubelet, int64_t patch) {
  TORCH_CHECK_VALUE(video.size() == 5, op, ": video must be [B, C, T, H, W], got ", video.size(), " dims");
  TORCH_CHECK_VALUE(tubelet >= 1 && patch >= 1, op, ": tubelet and patch must be >= 1");
  TORCH_CHECK_VALUE(video[2] % tubelet == 0, op, ": video frames ", video[2],
                    " must be divisible by tubelet ", tubelet);
  TORCH_CHECK_VALUE(video[3] % patch == 0 && video[4] % patch == 0, op, ": video size ", video[3], "x",
                    video[4], " must be divisible by patch ", patch);
  TORCH_CHECK_VALUE(ids.dim() == 2 && ids.scalar_type() == at::kLong && ids.size(0) == video[0], op,
                    ": ids must be a [B, n] int64 tensor with video's batch");
  TORCH_CHECK_VALUE(ids.device() == device_of.device(), op, ": ids is on ", ids.device(),
                    " but video is on ", device_of.device());
  return TubeletGeometry{video[0], video[1], video[2], video[3], video[4], tubelet, patch,
                         video[2] / tubelet, video[3] / patch, video[4] / patch};
}

// Token ids must name tokens of the grid (checked on the host: CPU tensors only).
inline void check_token_ids(const char* op, const at::Tensor& ids, int64_t num_tokens) {
  const int64_t* id = ids.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < ids.numel(); ++r) {
    TORCH_CHECK_VALUE(id[r] >= 0 && id[r] < num_tokens, op, ": ids must be in [0, ", num_tokens,
                      "), found ", id[r]);
  }
}

// Per-channel affine x = v * scale[c] + shift[c]: normalization (scale 1/std, shift -mean/std, with
// 1/255 folded in for uint8 video) or its inverse, in float.
inline std::vector<double> channel_affine(const char* op, int64_t channels, bool is_uint8,
                                         std::optional<c10::ArrayRef<double>> mean,
                                         std::optional<c10::ArrayRef<double>> std, bool invert) {
  TORCH_CHECK_VALUE(mean.has_value() == std.has_value(), op, ": give both mean and std, or neither");
  std::vector<double> affine(2 * channels);
  const double in_scale = is_uint8 ? 1.0 / 255.0 : 1.0;
  for (int64_t c = 0; c < channels; ++c) {
    double m = 0.0, s = 1.0;
    if (mean.has_value()) {
      TORCH_CHECK_VALUE(static_cast<int64_t>(mean->size()) == channels &&
                            static_cast<int64_t>(std->size()) == channels,
                        op, ": mean and std need one value per channel (", channels, ")");
      m = (*mean)[c];
      s = (*std)[c];
      TORCH_CHECK_VALUE(s > 0.0, op, ": std must be > 0");
    }
    // forward: (v * in_scale - m) / s ; inverse (undo the loader's normalization): v * s + m
    affine[c] = invert ? s * in_scale : in_scale / s;
    affine[channels + c] = invert ? m : -m / s;
  }
  return affine;
}

}  // namespace internvideo_fast
