"""Bias gradient: ``out (D,) = dy (N,D) summed over rows``, a deterministic column reduction,
alone or with the activation's backward fused into its first stage (``act_bias_backward``).

Stage 1 (``bias_grad_partial_kernel``): a (32, 8) block owns 32 adjacent columns
(a warp reads 32 consecutive floats of a row: coalesced) and one chunk of rows;
its 8 row lanes each sum every 8th row of the chunk in order, then a shared-memory
tree adds the 8 lane sums.  The grid is (column tiles, chunks); chunks are as many
as keep the partial sums within a fixed workspace (and grid y within 65535).

Stage 2 (``bias_grad_sum_kernel``): one thread per column adds the chunks' partial
sums in chunk order.  With a single chunk, stage 1 writes ``out`` directly and
stage 2 is skipped.  No atomics anywhere: the order of additions depends only on
(N, D), so two runs are bit-identical.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, int32, int64, void

from .act_backward import act_grad
from .launch import (
    ELEMENTWISE_THREADS,
    F0,
    MAX_GRID_YZ,
    KernelSpec,
    cdiv,
    clamp_grid,
    elementwise_config,
)

TILE_COLS = 32  # columns per block (threadIdx.x)
ROW_LANES = 8  # rows summed in parallel per block (threadIdx.y); a power of two
MIN_ROWS_PER_CHUNK = 256
PARTIAL_BUDGET = 1 << 22  # most floats the stage-1 partial sums may take (16 MiB)


@cuda.jit(device=True)
def tile_sum(sh, acc, partial, chunk, col, d):
    """Add the block's ROW_LANES row-lane sums of its column tile in a shared-memory tree
    (a fixed order) and write ``partial[chunk, col]``; all threads of the block call it."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    sh[ty, tx] = acc
    cuda.syncthreads()
    s = ROW_LANES // 2
    while s > 0:
        if ty < s:
            sh[ty, tx] += sh[ty + s, tx]
        cuda.syncthreads()
        s //= 2
    if ty == 0 and col < d:
        partial[chunk, col] = sh[0, tx]
    cuda.syncthreads()  # sh is reused by the next tile


@cuda.jit
def bias_grad_partial_kernel(dy, partial, rows_per_chunk):
    """``partial[chunk, col] = sum of dy[r, col]`` over the chunk's rows, in a fixed order."""
    sh = cuda.shared.array((ROW_LANES, TILE_COLS), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    n, d = dy.shape
    chunk = cuda.blockIdx.y
    start = chunk * rows_per_chunk
    stop = min(start + rows_per_chunk, n)
    for tile in range(cuda.blockIdx.x, (d + TILE_COLS - 1) // TILE_COLS, cuda.gridDim.x):
        col = tile * TILE_COLS + tx
        acc = F0
        if col < d:
            for r in range(start + ty, stop, ROW_LANES):
                acc += dy[r, col]
        tile_sum(sh, acc, partial, chunk, col, d)


@cuda.jit
def act_bias_grad_partial_kernel(y, dy, act, dz, partial, rows_per_chunk):
    """Stage 1 with the activation's backward fused in: ``dz[r, col] = dy[r, col] * act'(y[r, col])``
    (written), and ``partial[chunk, col]`` its sum over the chunk's rows, in the same order as
    ``bias_grad_partial_kernel``.  One pass over dz instead of a write and a re-read."""
    sh = cuda.shared.array((ROW_LANES, TILE_COLS), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    n, d = dy.shape
    chunk = cuda.blockIdx.y
    start = chunk * rows_per_chunk
    stop = min(start + rows_per_chunk, n)
    for tile in range(cuda.blockIdx.x, (d + TILE_COLS - 1) // TILE_COLS, cuda.gridDim.x):
        col = tile * TILE_COLS + tx
        acc = F0
        if col < d:
            for r in range(start + ty, stop, ROW_LANES):
                g = act_grad(dy[r, col], y[r, col], act)
                dz[r, col] = g
                acc += g
        tile_sum(sh, acc, partial, chunk, col, d)


@cuda.jit
def bias_grad_sum_kernel(partial, out):
    """``out[col] = sum over chunks of partial[chunk, col]``, chunks in order."""
    for col in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        acc = F0
        for k in range(partial.shape[0]):
            acc += partial[k, col]
        out[col] = acc


def chunking(n: int, d: int):
    """(chunks, rows_per_chunk) for an (n, d) input: a function of the shape alone."""
    chunks = min(cdiv(n, MIN_ROWS_PER_CHUNK), MAX_GRID_YZ, max(1, PARTIAL_BUDGET // max(d, 1)))
    chunks = max(chunks, 1)
    rows_per_chunk = cdiv(n, chunks)
    return cdiv(n, rows_per_chunk) if n else 1, max(rows_per_chunk, 1)


def launch_config(n: int, d: int, max_blocks: int | None = None):
    """Both stages' (grid, block), and the chunking: ``(stage1, stage2, (chunks, rows_per_chunk))``.

    stage2 is None when there is a single chunk (stage 1 then writes ``out``)."""
    chunks, rows_per_chunk = chunking(n, d)
    stage1 = (clamp_grid(cdiv(d, TILE_COLS), max_blocks), chunks), (TILE_COLS, ROW_LANES)
    stage2 = elementwise_config(d, ELEMENTWISE_THREADS, max_blocks) if chunks > 1 else None
    return stage1, stage2, (chunks, rows_per_chunk)


def launches(ctx, first, dz, out):
    """Stage 1 (``first``: its name, kernel and leading arguments) and, with more than one chunk of
    rows, stage 2 of ``out (D,) = dz (N,D) summed over rows``: the launches of ``bias_grad`` and
    ``act_bias_backward`` (and of a loss that computes its layer's bias gradient).  ``ctx``: the
    backend (``max_blocks``, ``workspace``)."""
    n, d = dz.shape
    stage1, stage2, (chunks, rows_per_chunk) = launch_config(n, d, ctx.max_blocks)
    partial = out.reshape(1, d) if chunks == 1 else ctx.workspace("bias_grad", (chunks, d))
    name, kernel, args = first
    found = [(name, kernel, *stage1, (*args, partial, np.int64(rows_per_chunk)))]
    if stage2 is not None:
        found.append(("bias_grad_sum", bias_grad_sum_kernel, *stage2, (partial, out)))
    return found


def bias_grad_launches(ctx, dz, out):
    """``bias_grad``'s launches: the column sum of ``dz`` into ``out``."""
    return launches(ctx, ("bias_grad_partial", bias_grad_partial_kernel, (dz,)), dz, out)


SIGNATURES_PARTIAL = [void(float32[:, ::1], float32[:, ::1], int64)]
SIGNATURES_SUM = [void(float32[:, ::1], float32[::1])]
SIGNATURES_ACT_PARTIAL = [void(float32[:, ::1], float32[:, ::1], int32, float32[:, ::1], float32[:, ::1], int64)]

KERNELS = (
    KernelSpec("bias_grad_partial", bias_grad_partial_kernel, tuple(SIGNATURES_PARTIAL),
               TILE_COLS * ROW_LANES, 4 * TILE_COLS * ROW_LANES, "bias_grad"),
    KernelSpec("bias_grad_sum", bias_grad_sum_kernel, tuple(SIGNATURES_SUM), ELEMENTWISE_THREADS, 0,
               "bias_grad, act_bias_backward"),
    KernelSpec("act_bias_grad_partial", act_bias_grad_partial_kernel, tuple(SIGNATURES_ACT_PARTIAL),
               TILE_COLS * ROW_LANES, 4 * TILE_COLS * ROW_LANES, "act_bias_backward"),
)
