"""The training loop's own state on the device: gather the next batch, advance the step.

A CUDA graph replays the numbers it was captured with, so whatever changes from one
step to the next is read from device memory by these two kernels instead:

* ``gather_batch_kernel``: the batch of this step, ``xb[i] = x[order[cursor[0] + i]]``
  and ``yb[i] = labels[order[cursor[0] + i]]``, where ``order`` is the epoch's
  permutation (uploaded once per epoch) and ``cursor[0]`` the position in it.
* ``advance_step_kernel``: one thread moves the cursor to the next batch
  (``cursor[0] += stride``; ``cursor[1] += 1``, the step) and reads the next step's
  learning rate from the schedule's table, ``lr[0] = lr_table[cursor[1]]`` (its last
  entry past the end), for the SGD kernel to read.

Napkin math: the gather reads and writes one batch (4·N·D bytes each way, 400 KiB for
MNIST's 128 x 784) plus the indices and labels; the advance moves a few bytes.  Both
exist to keep the host out of the step, not for their arithmetic.
"""
from __future__ import annotations

from numba import cuda, float32, int32, void

from .launch import ROW_THREADS, KernelSpec, row_config


@cuda.jit
def gather_batch_kernel(x, labels, order, cursor, xb, yb):
    """Rows ``order[cursor[0] + i]`` of x (N, D) and labels (N,) into xb (B, D), yb (B,).

    One block per batch row (grid-stride beyond the grid), its threads striding along
    the row: each warp copies consecutive floats of one image."""
    start = cursor[0]
    d = xb.shape[1]
    for i in range(cuda.blockIdx.x, min(xb.shape[0], order.shape[0] - start), cuda.gridDim.x):
        src = order[start + i]  # (a cursor past the order, which the trainer never leaves, reads nothing)
        for j in range(cuda.threadIdx.x, d, cuda.blockDim.x):
            xb[i, j] = x[src, j]
        if cuda.threadIdx.x == 0:
            yb[i] = labels[src]


@cuda.jit
def advance_step_kernel(cursor, stride, lr_table, lr):
    """``cursor[0] += stride``, ``cursor[1] += 1``, ``lr[0] = lr_table[min(cursor[1], last)]``; one thread."""
    if cuda.grid(1) == 0:
        cursor[0] += stride
        t = cursor[1] + 1
        cursor[1] = t
        last = lr_table.shape[0] - 1
        lr[0] = lr_table[t if t < last else last]


def launch_config(rows: int, width: int, max_threads: int = ROW_THREADS, max_blocks: int | None = None):
    """(grid, block) of the gather: one block per batch row, threads along the row."""
    return row_config(rows, width, max_threads, max_blocks)


def advance_config():
    """(grid, block) of the advance: a single thread."""
    return 1, 1


SIGNATURES_GATHER = [void(float32[:, ::1], int32[::1], int32[::1], int32[::1], float32[:, ::1], int32[::1])]
SIGNATURES_ADVANCE = [void(int32[::1], int32, float32[::1], float32[::1])]

KERNELS = (
    KernelSpec("gather_batch", gather_batch_kernel, tuple(SIGNATURES_GATHER), ROW_THREADS, 0, "gather_batch"),
    KernelSpec("advance_step", advance_step_kernel, tuple(SIGNATURES_ADVANCE), 1, 0, "advance_step"),
)
