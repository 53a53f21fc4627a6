// Output allocation for every C++/CUDA op. Tests can ask for poisoned outputs (NaN, the integer minimum,
// true) through torch.ops.internvideo_fast._set_poison_outputs, so an element a kernel forgets to write
// fails the comparison with the reference instead of passing by luck of what memory held.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <limits>

namespace internvideo_fast {

std::atomic<bool>& poison_outputs_flag();

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (poison_outputs_flag().load(std::memory_order_relaxed)) {
    if (at::isFloatingType(out.scalar_type())) {
      out.fill_(std::numeric_limits<double>::quiet_NaN());
    } else if (out.scalar_type() == at::kBool) {
      out.fill_(true);
    } else {
      out.fill_(std::numeric_limits<int64_t>::min() >> (64 - 8 * out.element_size()));
    }
  }
  return out;
}

}  // namespace internvideo_fast
