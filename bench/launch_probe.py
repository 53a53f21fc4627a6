"""A Triton kernel with the argument list of our ops' kernels (pointers, ints, floats, constexprs) and almost
no work: bench/host_overhead.py times its launch, the host cost that every Triton op call pays per kernel.
Imported lazily, after the caller has chosen TRITON_INTERPRET."""

import triton
import triton.language as tl


@triton.jit
def scale_rows_kernel(
    x_ptr, y_ptr, weight_ptr, bias_ptr, mean_ptr, rstd_ptr,
    rows, D, stride_x, stride_y, rows_per_program, rows_per_sample, seed, extra,
    scale, shift,
    BLOCK_D: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_STATS: tl.constexpr,
):
    # y[row] = x[row] * scale + shift for the first row of each program: launch cost, not work, is measured.
    row = tl.program_id(0) * rows_per_program
    cols = tl.arange(0, BLOCK_D)
    mask = (cols < D) & (row < rows)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    tl.store(y_ptr + row * stride_y + cols, x * scale + shift, mask=mask)
