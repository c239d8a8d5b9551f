"""Row-wise softmax, forward and backward (one block per row).

Forward, per row of x (N,C): ``m = max(x)``; ``s = sum(exp(x - m))``;
``out = exp(x - m) / s``.  Three block-strided passes over the row (the exp is
recomputed in the third instead of stored, so out may be x); the max and the sum
are shared-memory tree reductions (``gpunn.kernels.reduce``).

Backward, per row: ``out = y * (dy - sum(dy * y))`` with y the forward output;
out may be dy.

Rows beyond the grid are handled by a grid-stride loop; columns beyond the block
by a block-stride loop, so any (N, C) is one legal launch (``launch_config``).
"""
from __future__ import annotations

import math

from numba import cuda, float32, void

from .launch import F0, NEG_INF, ROW_THREADS, KernelSpec, row_config
from .reduce import MAX, SUM, block_reduce


@cuda.jit(device=True)
def row_max_sumexp(sh, x, row):
    """(max, sum of exp(x - max)) of ``x[row]``, returned to every thread of the block."""
    tid = cuda.threadIdx.x
    c = x.shape[1]
    m = NEG_INF
    for j in range(tid, c, cuda.blockDim.x):
        m = max(m, x[row, j])
    m = block_reduce(sh, m, MAX)
    s = F0
    for j in range(tid, c, cuda.blockDim.x):
        s += math.exp(x[row, j] - m)
    return m, block_reduce(sh, s, SUM)


@cuda.jit
def softmax_forward_kernel(x, out):
    """``out[r] = softmax(x[r])`` for every row r."""
    sh = cuda.shared.array(ROW_THREADS, float32)
    for row in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        m, s = row_max_sumexp(sh, x, row)
        for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            out[row, j] = math.exp(x[row, j] - m) / s


@cuda.jit
def softmax_backward_kernel(y, dy, out):
    """``out[r] = y[r] * (dy[r] - dot(dy[r], y[r]))`` for every row r."""
    sh = cuda.shared.array(ROW_THREADS, float32)
    for row in range(cuda.blockIdx.x, y.shape[0], cuda.gridDim.x):
        acc = F0
        for j in range(cuda.threadIdx.x, y.shape[1], cuda.blockDim.x):
            acc += dy[row, j] * y[row, j]
        dot = block_reduce(sh, acc, SUM)
        for j in range(cuda.threadIdx.x, y.shape[1], cuda.blockDim.x):
            out[row, j] = y[row, j] * (dy[row, j] - dot)


def launch_config(n: int, c: int, max_threads: int = ROW_THREADS, max_blocks: int | None = None):
    """(grid, block) for an (n, c) input, forward or backward: a block per row."""
    return row_config(n, c, max_threads, max_blocks)


SIGNATURES_FORWARD = [void(float32[:, ::1], float32[:, ::1])]
SIGNATURES_BACKWARD = [void(float32[:, ::1], float32[:, ::1], float32[:, ::1])]

KERNELS = (
    KernelSpec("softmax_forward", softmax_forward_kernel, tuple(SIGNATURES_FORWARD), ROW_THREADS,
               4 * ROW_THREADS, "softmax"),
    KernelSpec("softmax_backward", softmax_backward_kernel, tuple(SIGNATURES_BACKWARD), ROW_THREADS,
               4 * ROW_THREADS, "softmax_backward"),
)
