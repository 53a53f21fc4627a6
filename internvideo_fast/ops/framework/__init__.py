"""What every fused op shares: the backend choice (:mod:`.backend`), the eager fast path past
torch.library's dispatch (:mod:`.dispatch`), the run-time plan tuner (:mod:`.autotuning`), the registry of
Triton kernels and their configs (:mod:`.kernel_registry`) with its ahead-of-time sm_90a check
(:mod:`.aot`), output allocation (:mod:`.outputs`), dropout seeds (:mod:`.seeds`) and launch arithmetic
(:mod:`.launch_math`); the tuner checks candidates with :mod:`.agreement`."""
