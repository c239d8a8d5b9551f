"""Row-wise softmax, forward and backward; the forward in three versions, naive to fast.

Forward, per row of x (N,C): ``m = max(x)``; ``s = sum(exp(x - m))``;
``out = exp(x - m) / s``.  The versions (:data:`VERSIONS`, in the order of the op's record):

1. ``thread_per_row``: one thread does a whole row, three loops (max, sum, write).  The
   obvious code.  Neighbouring threads read rows C floats apart, so a warp's loads are
   never coalesced, and a batch of N rows is only N threads: fine for C = 10, starved and
   strided for wide rows.
2. ``tree`` (the backend's): a block per row, its threads striding along the row so a warp
   reads 32 consecutive floats; the max and the sum are shared-memory tree reductions
   (``gpunn.kernels.reduce``).  Three passes over the row (the exp is recomputed in the third
   instead of stored, so out may be x): 3 reads and 1 write of each element, 2 reductions.
3. ``online``: the same block per row, but the max and the sum in *one* pass (the online
   softmax: a running sum rescaled whenever the running max grows), merged by one tree of
   (max, sum) pairs: 2 reads and 1 write per element, 1 reduction.  Wins when the row does
   not fit in cache; costs an extra exp per new maximum.

Backward, per row: ``out = y * (dy - sum(dy * y))`` with y the forward output;
out may be dy.

Rows beyond the grid are handled by a grid-stride loop; columns beyond the block
by a block-stride loop, so any (N, C) is one legal launch (``launch_config``).
"""
from __future__ import annotations

import math

from numba import cuda, float32, void

from .launch import ELEMENTWISE_THREADS, F0, NEG_INF, ROW_THREADS, KernelSpec, Version, elementwise_config, row_config
from .reduce import MAX, SUM, block_reduce, block_reduce_online, online_add


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
def softmax_thread_per_row_kernel(x, out):
    """Version 1: thread r computes ``out[r] = softmax(x[r])`` alone."""
    for row in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        m = NEG_INF
        for j in range(x.shape[1]):
            m = max(m, x[row, j])
        s = F0
        for j in range(x.shape[1]):
            s += math.exp(x[row, j] - m)
        for j in range(x.shape[1]):
            out[row, j] = math.exp(x[row, j] - m) / s


@cuda.jit
def softmax_online_kernel(x, out):
    """Version 3: a block per row; one pass for the max and the sum, one for the output."""
    shm = cuda.shared.array(ROW_THREADS, float32)
    shs = cuda.shared.array(ROW_THREADS, float32)
    for row in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        m, s = NEG_INF, F0
        for j in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
            m, s = online_add(m, s, x[row, j])
        m, s = block_reduce_online(shm, shs, m, s)
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


def _plan_thread_per_row(ctx, x, out):
    return [("softmax_thread_per_row", softmax_thread_per_row_kernel,
             *elementwise_config(x.shape[0], ctx.elementwise_threads, ctx.max_blocks), (x, out))]


def _plan_tree(ctx, x, out):
    return [("softmax_forward", softmax_forward_kernel, *launch_config(*x.shape, ctx.threads, ctx.max_blocks),
             (x, out))]


def _plan_online(ctx, x, out):
    return [("softmax_online", softmax_online_kernel, *launch_config(*x.shape, ctx.threads, ctx.max_blocks),
             (x, out))]


#: The versions of each op of this family, by op, in the order of the op's record.
VERSIONS = {"softmax": (
    Version("thread_per_row", "one thread per row: the obvious loops; uncoalesced, N threads in all",
            _plan_thread_per_row),
    Version("tree", "a block per row, coalesced strides, tree reductions: 3 reads of the row, 2 reductions",
            _plan_tree),
    Version("online", "one pass for max and sum (online softmax): 2 reads of the row, 1 reduction",
            _plan_online),
)}

SIGNATURES_FORWARD = [void(float32[:, ::1], float32[:, ::1])]
SIGNATURES_BACKWARD = [void(float32[:, ::1], float32[:, ::1], float32[:, ::1])]

KERNELS = (
    KernelSpec("softmax_forward", softmax_forward_kernel, tuple(SIGNATURES_FORWARD), ROW_THREADS,
               4 * ROW_THREADS, "softmax"),
    KernelSpec("softmax_thread_per_row", softmax_thread_per_row_kernel, tuple(SIGNATURES_FORWARD),
               ELEMENTWISE_THREADS, 0, "softmax"),
    KernelSpec("softmax_online", softmax_online_kernel, tuple(SIGNATURES_FORWARD), ROW_THREADS,
               8 * ROW_THREADS, "softmax"),
    KernelSpec("softmax_backward", softmax_backward_kernel, tuple(SIGNATURES_BACKWARD), ROW_THREADS,
               4 * ROW_THREADS, "softmax_backward"),
)
