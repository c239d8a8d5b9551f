"""Dropout (inverted: kept elements scaled by 1/(1-p)), forward and backward in one kernel.

``out[i] = x[i] * (scale if philox2x32(i, t, seed) >= threshold else 0)`` with ``t = step[0]``
read on the device (kernels/random.py: the generator and the constants).  The backward pass is
the same kernel on ``dy``: it recomputes the mask rather than storing it.  A NaN in x stays NaN
(a multiply, as PyTorch's).  One grid-stride pass: reads x, writes out (8 bytes per element).
"""
from __future__ import annotations

from numba import cuda, float32, int32, int64, uint64, void

from .launch import ELEMENTWISE_THREADS, F0, KernelSpec, elementwise_config
from .random import philox2x32

_philox = cuda.jit(device=True)(philox2x32)


@cuda.jit
def dropout_kernel(x, out, threshold, scale, seed, step):
    """out (P,) = x (P,) * mask * scale; the mask from (element, step[0], seed)."""
    t = uint64(step[0])
    key = uint64(seed)
    thr = uint64(threshold)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        keep = _philox(uint64(i), t, key) >= thr
        out[i] = x[i] * (scale if keep else F0)


def launch_config(n: int, threads: int = ELEMENTWISE_THREADS, max_blocks: int | None = None):
    """(grid, block) for ``n`` elements."""
    return elementwise_config(n, threads, max_blocks)


SIGNATURES = [void(float32[::1], float32[::1], int64, float32, int64, int32[::1])]

KERNELS = (KernelSpec("dropout", dropout_kernel, tuple(SIGNATURES), ELEMENTWISE_THREADS, 0, "dropout,dropout_backward"),)
