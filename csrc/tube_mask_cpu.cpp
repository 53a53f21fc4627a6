// CPU kernel of tube_mask: the math is in internvideo_fast/ops/tube_mask/__init__.py's docstring.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <tuple>
#include <vector>

#include "output_alloc.h"
#include "philox.h"
#include "tube_mask_common.h"

namespace internvideo_fast {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> tube_mask_cpu(const at::Tensor& seed, int64_t batch,
                                                             int64_t frames, int64_t height,
                                                             int64_t width, int64_t num_masked) {
  check_tube_mask_args(seed, batch, frames, height, width, num_masked);
  const int64_t positions = height * width;
  const int64_t num_visible = positions - num_masked;
  const auto index_options = at::TensorOptions().dtype(at::kLong).device(seed.device());
  at::Tensor ids_keep = new_output({batch, frames * num_visible}, index_options);
  at::Tensor ids_masked = new_output({batch, frames * num_masked}, index_options);
  at::Tensor mask = new_output({batch, frames * positions}, index_options.dtype(at::kBool));
  const uint64_t seed_value = static_cast<uint64_t>(seed.item<int64_t>());

  int64_t* keep_ptr = ids_keep.data_ptr<int64_t>();
  int64_t* masked_ptr = ids_masked.data_ptr<int64_t>();
  bool* mask_ptr = mask.data_ptr<bool>();

  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> keys(positions);
    std::vector<int64_t> order(positions);
    std::vector<char> is_masked(positions);
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t s = 0; s < positions; ++s) {
        keys[s] = tube_mask_key(seed_value, static_cast<uint32_t>(b), static_cast<uint32_t>(s));
      }
      // The num_masked smallest keys, ties broken by position: a uniformly random subset.
      std::iota(order.begin(), order.end(), int64_t{0});
      std::nth_element(order.begin(), order.begin() + num_masked, order.end(),
                       [&](int64_t i, int64_t j) { return keys[i] < keys[j] || (keys[i] == keys[j] && i < j); });
      std::fill(is_masked.begin(), is_masked.end(), 0);
      for (int64_t r = 0; r < num_masked; ++r) is_masked[order[r]] = 1;

      int64_t* keep_row = keep_ptr + b * frames * num_visible;
      int64_t* masked_row = masked_ptr + b * frames * num_masked;
      bool* mask_row = mask_ptr + b * frames * positions;
      for (int64_t t = 0; t < frames; ++t) {
        int64_t next_visible = t * num_visible, next_masked = t * num_masked;
        for (int64_t s = 0; s < positions; ++s) {
          const int64_t token = t * positions + s;
          mask_row[token] = is_masked[s] != 0;
          if (is_masked[s]) {
            masked_row[next_masked++] = token;
          } else {
            keep_row[next_visible++] = token;
          }
        }
      }
    }
  });
  return {ids_keep, ids_masked, mask};
}

}  // namespace

TORCH_LIBRARY_IMPL(internvideo_fast, CPU, m) { m.impl("tube_mask", &tube_mask_cpu); }

}  // namespace internvideo_fast
