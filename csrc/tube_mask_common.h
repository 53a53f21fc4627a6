// Argument checks shared by the CPU and CUDA tube_mask kernels. The Python wrapper checks the same
// things first with friendlier messages; these guard direct torch.ops calls.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace internvideo_fast {

inline void check_tube_mask_args(const at::Tensor& seed, int64_t batch, int64_t frames,
                                 int64_t height, int64_t width, int64_t num_masked) {
  TORCH_CHECK_VALUE(seed.numel() == 1 && seed.scalar_type() == at::kLong,
                    "tube_mask: seed must be a one-element int64 tensor, got ", seed.scalar_type(),
                    " with ", seed.numel(), " elements");
  TORCH_CHECK_VALUE(batch >= 0, "tube_mask: batch must be >= 0, got ", batch);
  TORCH_CHECK_VALUE(frames >= 1, "tube_mask: frames must be >= 1, got ", frames);
  TORCH_CHECK_VALUE(height >= 1 && width >= 1, "tube_mask: height and width must be >= 1, got ",
                    height, "x", width);
  TORCH_CHECK_VALUE(height * width <= (int64_t{1} << 31),
                    "tube_mask: height * width must fit in 32 bits, got ", height * width);
  TORCH_CHECK_VALUE(num_masked >= 0 && num_masked < height * width,
                    "tube_mask: num_masked must be in [0, height*width), got ", num_masked);
}

}  // namespace internvideo_fast
