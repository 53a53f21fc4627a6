"""Triton helpers shared by the op kernels: Philox dropout masks (:mod:`.philox`) and the activations
(:mod:`.activations`)."""
