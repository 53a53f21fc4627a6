"""cross_attention's Triton kernels: :mod:`.forward` and :mod:`.backward`."""
