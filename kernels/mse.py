"""MSE (quadratic cost against one-hot targets): loss and gradient in one pass per row.

Per row of y (N,C) with label t (one block per row): ``e = y - onehot(t)``;
``grad = e / N`` and the row's ``sum(e²)`` goes to a workspace, which
``reduce.finish_loss_kernel`` (one block, fixed order) turns into
``loss[0] = sum / (2N)`` (``+=`` with accumulate).  grad may be y.
"""
from __future__ import annotations

from numba import cuda, float32, int32, void

from .launch import F0, ONE, ROW_THREADS, KernelSpec, row_config
from .reduce import SUM, block_reduce


@cuda.jit
def mse_kernel(y, labels, grad, row_sq, inv_n):
    """Per row r: ``e = y[r] - onehot``; ``grad[r] = e * inv_n``; ``row_sq[r] = sum(e²)``."""
    sh = cuda.shared.array(ROW_THREADS, float32)
    for row in range(cuda.blockIdx.x, y.shape[0], cuda.gridDim.x):
        t = labels[row]
        acc = F0
        for j in range(cuda.threadIdx.x, y.shape[1], cuda.blockDim.x):
            e = y[row, j]
            if j == t:
                e -= ONE
            acc += e * e
            grad[row, j] = e * inv_n
        sq = block_reduce(sh, acc, SUM)
        if cuda.threadIdx.x == 0:
            row_sq[row] = sq


def launch_config(n: int, c: int, max_threads: int = ROW_THREADS, max_blocks: int | None = None):
    """(grid, block) of the row kernel; the loss reduction uses ``reduce.finish_config``."""
    return row_config(n, c, max_threads, max_blocks)


SIGNATURES = [void(float32[:, ::1], int32[::1], float32[:, ::1], float32[::1], float32)]

KERNELS = (KernelSpec("mse", mse_kernel, tuple(SIGNATURES), ROW_THREADS, 4 * ROW_THREADS, "mse"),)
