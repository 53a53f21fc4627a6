"""linear_act's and fused_mlp's Triton kernels: :mod:`.forward` and :mod:`.backward`."""
