// Op schemas of the internvideo_fast library, and the Python module `internvideo_fast._C`.
//
// Importing `_C` only loads this shared library: the static TORCH_LIBRARY blocks below (schemas)
// and in the kernel files (CPU and CUDA implementations) register the ops with the dispatcher,
// where Python finds them as torch.ops.internvideo_fast.*. Fake (meta) implementations and autograd
// formulas are registered in Python, next to each op's reference (internvideo_fast/ops/).
#include <Python.h>
#include <torch/library.h>

#include "output_alloc.h"

namespace internvideo_fast {

std::atomic<bool>& poison_outputs_flag() {
  static std::atomic<bool> flag{false};
  return flag;
}

void set_poison_outputs(bool enabled) { poison_outputs_flag().store(enabled); }

}  // namespace internvideo_fast

TORCH_LIBRARY(internvideo_fast, m) {
  // Test support: fill every output with a poison value before the kernel writes it.
  m.def("_set_poison_outputs(bool enabled) -> ()", &internvideo_fast::set_poison_outputs);
  // Tube masking (internvideo_fast/ops/tube_mask/). `seed` is a one-element int64 tensor on the
  // target device, so a captured CUDA graph can draw a new mask per step without a host sync.
  m.def(
      "tube_mask(Tensor seed, int batch, int frames, int height, int width, int num_masked) -> "
      "(Tensor ids_keep, Tensor ids_masked, Tensor mask)");
  // Token gather / scatter (internvideo_fast/ops/token_gather/): each is the other's backward.
  m.def("gather_tokens(Tensor x, Tensor ids) -> Tensor");
  m.def("scatter_tokens(Tensor x, Tensor ids, SymInt num_tokens) -> Tensor");
  // Tubelet ops (internvideo_fast/ops/masked_patch_embed/, mae_targets/): the pixels of the tubes
  // that `ids` names, normalized, in Conv3d weight order (c, dt, dy, dx) or in the MAE target order.
  m.def(
      "masked_tubelet_patches(Tensor video, Tensor ids, int tubelet, int patch, float[]? mean=None, "
      "float[]? std=None) -> Tensor");
  m.def(
      "masked_tubelet_patches_backward(Tensor grad, Tensor ids, SymInt[] video_shape, int tubelet, "
      "int patch, float[]? mean=None, float[]? std=None) -> Tensor");
  // fc1's GEMM with the bias and activation in its epilogue (internvideo_fast/ops/linear_act/): CUTLASS on
  // sm_90a (kernels/mlp_gemm_sm90.cu) when built with it, ATen on the CPU (csrc/mlp_gemm_cpu.cpp).
  m.def(
      "mlp_gemm_bias_act(Tensor x, Tensor weight, Tensor bias, str activation, str schedule, Tensor(a!) y, "
      "Tensor(b!) pre) -> ()");
  m.def(
      "mae_targets(Tensor video, Tensor ids, int tubelet, int patch, bool normalize=True, float eps=1e-6, "
      "float[]? mean=None, float[]? std=None) -> Tensor");
}

#ifndef IVF_CUDA_ARCHS
#define IVF_CUDA_ARCHS ""
#endif

static PyModuleDef ivf_module = {PyModuleDef_HEAD_INIT, "_C",
                                 "Compiled ops of internvideo_fast (registered with torch.library).",
                                 -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&ivf_module);
  if (module == nullptr) return nullptr;
  // What this build holds, for `ivf info` and the build tests.
  PyModule_AddStringConstant(module, "cuda_archs", IVF_CUDA_ARCHS);
#ifdef IVF_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
#ifdef IVF_WITH_CUTLASS_SM90
  PyModule_AddIntConstant(module, "with_cutlass_sm90", 1);
#else
  PyModule_AddIntConstant(module, "with_cutlass_sm90", 0);
#endif
  return module;
}
