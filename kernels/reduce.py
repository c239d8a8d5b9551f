"""Deterministic block reductions in shared memory, and the final loss reduction.

Every row-wise kernel reduces a value per thread to one value per block with a
tree in shared memory: ``cuda.syncthreads()`` between levels, no warp shuffles (the
CUDA simulator has none) and no floating-point atomics, so the order of additions
depends only on the block size and two runs give bit-identical results.

The block size must be a power of two no larger than ``ROW_THREADS`` (the length
of the shared buffer the caller allocates); ``launch.row_threads`` guarantees it.
All threads of the block must call a reduction (they contain barriers).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32, void

from .launch import F0, NEG_INF, ONE, ROW_THREADS, KernelSpec, check_pow2_threads


SUM = 0
MAX = 1


@cuda.jit(device=True)
def block_reduce(sh, value, op):
    """``value`` reduced over the block by ``op`` (SUM or MAX), returned to every thread.

    ``sh`` is the caller's float32[ROW_THREADS] shared buffer; it is free again on return."""
    tid = cuda.threadIdx.x
    sh[tid] = value
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            other = sh[tid + s]
            sh[tid] = max(sh[tid], other) if op == MAX else sh[tid] + other
        cuda.syncthreads()
        s //= 2
    result = sh[0]
    cuda.syncthreads()  # sh may be reused as soon as this returns
    return result


@cuda.jit(device=True)
def block_argmax(shv, shi, value, index):
    """Index of the block's largest ``value``, the smallest index on ties (like numpy.argmax)."""
    tid = cuda.threadIdx.x
    shv[tid] = value
    shi[tid] = index
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if tid < s:
            v, i = shv[tid + s], shi[tid + s]
            if v > shv[tid] or (v == shv[tid] and i < shi[tid]):
                shv[tid] = v
                shi[tid] = i
        cuda.syncthreads()
        s //= 2
    best = shi[0]
    cuda.syncthreads()
    return best


@cuda.jit(device=True)
def online_add(m, s, x):
    """One more element ``x`` into a running (max m, sum of exp(· - m) s): the online softmax's
    step (Milakov & Gimelshein, 2018).  When x is a new maximum the sum so far is rescaled."""
    if x > m:
        return x, s * math.exp(m - x) + ONE  # m = -inf at the start: exp(-inf) = 0
    return m, s + math.exp(x - m)


@cuda.jit(device=True)
def online_merge(m1, s1, m2, s2):
    """Two running (max, sum) pairs as one; a pair that has seen nothing is (-inf, 0)."""
    if m2 == NEG_INF:
        return m1, s1
    if m1 == NEG_INF:
        return m2, s2
    m = max(m1, m2)
    return m, s1 * math.exp(m1 - m) + s2 * math.exp(m2 - m)


@cuda.jit(device=True)
def block_reduce_online(shm, shs, m, s):
    """Every thread's running (max, sum of exp) merged over the block, returned to every thread.

    ``shm``, ``shs``: the caller's float32[ROW_THREADS] shared buffers; one tree, not two."""
    tid = cuda.threadIdx.x
    shm[tid] = m
    shs[tid] = s
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            shm[tid], shs[tid] = online_merge(shm[tid], shs[tid], shm[tid + half], shs[tid + half])
        cuda.syncthreads()
        half //= 2
    m, s = shm[0], shs[0]
    cuda.syncthreads()
    return m, s


@cuda.jit(device=True)
def finish_block(sh, row_loss, loss, divisor, accumulate):
    """``loss[0] = sum(row_loss) / divisor`` (``+=`` if accumulate), by the one block that calls it:
    each thread sums a fixed, strided subset of the per-row losses, then the block tree adds the
    partial sums, so the result does not depend on timing."""
    acc = F0
    for i in range(cuda.threadIdx.x, row_loss.shape[0], cuda.blockDim.x):
        acc += row_loss[i]
    total = block_reduce(sh, acc, SUM)
    if cuda.threadIdx.x == 0:
        value = total / divisor
        if accumulate:
            value += loss[0]
        loss[0] = value


@cuda.jit
def finish_loss_kernel(row_loss, loss, divisor, accumulate):
    """``loss[0] = sum(row_loss) / divisor`` (``+=`` if accumulate), by ONE block: the last step
    of softmax_cross_entropy and mse.  Launch with ``finish_config()``."""
    sh = cuda.shared.array(ROW_THREADS, float32)
    finish_block(sh, row_loss, loss, divisor, accumulate)


@cuda.jit
def finish_loss_colsum_kernel(row_loss, loss, divisor, accumulate, x, colsum):
    """``finish_loss_kernel``'s loss by block 0 and, beside it, ``colsum[j] = sum of x[:, j]`` by the
    other blocks, one column per block at a time (threads strided over the rows, then the block
    tree: a fixed order, no atomics).  The classifier's gradient summed over the batch is the last
    layer's bias gradient: the loss reduction and the bias gradient in one launch instead of two
    or three.  Launch with ``finish_colsum_config``."""
    sh = cuda.shared.array(ROW_THREADS, float32)
    if cuda.blockIdx.x == 0:
        finish_block(sh, row_loss, loss, divisor, accumulate)
        return
    for j in range(cuda.blockIdx.x - 1, x.shape[1], cuda.gridDim.x - 1):
        acc = F0
        for r in range(cuda.threadIdx.x, x.shape[0], cuda.blockDim.x):
            acc += x[r, j]
        total = block_reduce(sh, acc, SUM)
        if cuda.threadIdx.x == 0:
            colsum[j] = total


def finish_config(max_threads: int = ROW_THREADS):
    """(grid, block) of ``finish_loss_kernel``: one block, always."""
    return 1, check_pow2_threads(max_threads)


def finish_colsum_config(columns: int, max_threads: int = ROW_THREADS, max_blocks: int | None = None):
    """(grid, block) of ``finish_loss_colsum_kernel``: block 0 for the loss, then a block per column
    (at least one, at most what ``max_blocks`` leaves; they loop over the rest)."""
    cap = max(1, (max_blocks or 65535) - 1)
    return 1 + max(1, min(columns, cap)), check_pow2_threads(max_threads)


def finish_launch(max_threads, row_loss, loss, divisor, accumulate):
    """The launch ``(name, kernel, grid, block, args)`` of ``loss[0] (+)= sum(row_loss) / divisor``:
    every loss's last step (mse, and each softmax_cross_entropy version's)."""
    return ("finish_loss", finish_loss_kernel, *finish_config(max_threads),
            (row_loss, loss, np.float32(divisor), np.int32(accumulate)))


def finish_colsum_launch(max_threads, max_blocks, row_loss, loss, divisor, accumulate, x, colsum):
    """The launch of ``finish_loss_colsum_kernel``: the loss as ``finish_launch``'s, and ``colsum = x.sum(0)``."""
    return ("finish_loss_colsum", finish_loss_colsum_kernel,
            *finish_colsum_config(x.shape[1], max_threads, max_blocks),
            (row_loss, loss, np.float32(divisor), np.int32(accumulate), x, colsum))


SIGNATURES = [void(float32[::1], float32[::1], float32, int32)]
SIGNATURES_COLSUM = [void(float32[::1], float32[::1], float32, int32, float32[:, ::1], float32[::1])]

KERNELS = (
    KernelSpec("finish_loss", finish_loss_kernel, tuple(SIGNATURES), ROW_THREADS, 4 * ROW_THREADS,
               "softmax_cross_entropy, mse"),
    KernelSpec("finish_loss_colsum", finish_loss_colsum_kernel, tuple(SIGNATURES_COLSUM), ROW_THREADS,
               4 * ROW_THREADS, "softmax_cross_entropy"),
)
