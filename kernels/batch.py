"""The training loop's own state on the device: gather the next batch, advance the step.

A CUDA graph replays the numbers it was captured with, so whatever changes from one
step to the next is read from device memory by these kernels instead:

* ``gather_batch_kernel``: the batch of this step, ``xb[i] = x[order[cursor[0] + i]]``
  and ``yb[i] = labels[order[cursor[0] + i]]``, where ``order`` is the epoch's
  permutation (uploaded once per epoch) and ``cursor[0]`` the position in it.
* ``advance_step_kernel``: one thread moves the cursor to the next batch
  (``cursor[0] += stride``; ``cursor[1] += 1``, the step) and reads the next step's
  learning rate from the schedule's table, ``lr[0] = lr_table[cursor[1]]`` (its last
  entry past the end), for the SGD kernel to read.
* ``next_batch_kernel`` (what the trainer's step runs): the gather, then, by its last block,
  this step's rate (``lr[0] = lr_table[cursor[1]]``) and the cursor's advance: one kernel
  where the two above are two.

Napkin math: the gather reads and writes one batch (4·N·D bytes each way, 400 KiB for
MNIST's 128 x 784) plus the indices and labels; the advance moves a few bytes.  Both
exist to keep the host out of the step, not for their arithmetic.
"""
from __future__ import annotations

from numba import cuda, float32, int32, uint32, void

from .launch import ROW_THREADS, KernelSpec, row_config


@cuda.jit(device=True)
def gather_rows(x, labels, order, start, xb, yb):
    """This block's rows of ``xb[i] = x[order[start + i]]``, ``yb[i] = labels[order[start + i]]``.

    One block per batch row (grid-stride beyond the grid), its threads striding along
    the row: each warp copies consecutive floats of one image."""
    d = xb.shape[1]
    for i in range(cuda.blockIdx.x, min(xb.shape[0], order.shape[0] - start), cuda.gridDim.x):
        src = order[start + i]  # (a cursor past the order, which the trainer never leaves, reads nothing)
        for j in range(cuda.threadIdx.x, d, cuda.blockDim.x):
            xb[i, j] = x[src, j]
        if cuda.threadIdx.x == 0:
            yb[i] = labels[src]


@cuda.jit
def gather_batch_kernel(x, labels, order, cursor, xb, yb):
    """Rows ``order[cursor[0] + i]`` of x (N, D) and labels (N,) into xb (B, D), yb (B,)."""
    gather_rows(x, labels, order, cursor[0], xb, yb)


@cuda.jit
def next_batch_kernel(x, labels, order, cursor, lr_table, lr, xb, yb, tickets):
    """The gather, then the step's rate and the cursor's advance by the grid's last block to finish:
    ``lr[0] = lr_table[min(cursor[1], last)]``, ``cursor += (B, 1)``.

    Every block reads the cursor first, so none may move it until all have: each block's first
    thread, once its block is done, takes a ticket (``tickets[0]``, an integer atomic that wraps
    to 0 at the grid's size, so every launch leaves it at 0) after a fence, and the block that
    draws the last one does the advance (the CUDA samples' threadFenceReduction pattern).  Integer
    work only: nothing here depends on the order in which blocks finish."""
    start = cursor[0]
    gather_rows(x, labels, order, start, xb, yb)
    cuda.syncthreads()  # every thread of this block has read the cursor
    if cuda.threadIdx.x == 0:
        cuda.threadfence()
        if cuda.atomic.inc(tickets, 0, cuda.gridDim.x - 1) == cuda.gridDim.x - 1:
            t = cursor[1]
            last = lr_table.shape[0] - 1
            lr[0] = lr_table[t if t < last else last]
            cursor[0] = start + xb.shape[0]
            cursor[1] = t + 1


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
SIGNATURES_NEXT = [void(float32[:, ::1], int32[::1], int32[::1], int32[::1], float32[::1], float32[::1],
                         float32[:, ::1], int32[::1], uint32[::1])]
SIGNATURES_ADVANCE = [void(int32[::1], int32, float32[::1], float32[::1])]

KERNELS = (
    KernelSpec("gather_batch", gather_batch_kernel, tuple(SIGNATURES_GATHER), ROW_THREADS, 0, "gather_batch"),
    KernelSpec("next_batch", next_batch_kernel, tuple(SIGNATURES_NEXT), ROW_THREADS, 0, "next_batch"),
    KernelSpec("advance_step", advance_step_kernel, tuple(SIGNATURES_ADVANCE), 1, 0, "advance_step"),
)
