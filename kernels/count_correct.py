"""Argmax-correct count: ``out[0] += number of rows whose argmax equals the label``.

One block per row: each thread finds the first maximum of its block-strided
columns, a shared-memory tree picks the block's maximum with the smallest index
on ties (numpy.argmax's rule), and thread 0 counts a hit.  Each block adds its
count to ``out[0]`` with one integer atomic: integer addition is exact and
commutative, so the result is deterministic.  Rows holding NaN may count
differently from numpy.argmax (which picks the first NaN); training stops on a
NaN loss before that matters.
"""
from __future__ import annotations

from numba import cuda, float32, int32, void

from .launch import NEG_INF, ROW_THREADS, KernelSpec, row_config
from .reduce import block_argmax


@cuda.jit
def count_correct_kernel(scores, labels, out):
    """``out[0] += sum over rows of (argmax(scores[r]) == labels[r])``."""
    shv = cuda.shared.array(ROW_THREADS, float32)
    shi = cuda.shared.array(ROW_THREADS, int32)
    tid = cuda.threadIdx.x
    c = scores.shape[1]
    hits = 0
    for row in range(cuda.blockIdx.x, scores.shape[0], cuda.gridDim.x):
        best_v = NEG_INF
        best_i = c  # past every column: loses every tie with a real one
        for j in range(tid, c, cuda.blockDim.x):
            v = scores[row, j]
            if v > best_v or best_i == c:  # first column taken as is (even if -inf)
                best_v = v
                best_i = j
        if block_argmax(shv, shi, best_v, best_i) == labels[row]:
            hits += 1
    if tid == 0 and hits > 0:
        cuda.atomic.add(out, 0, hits)


def launch_config(n: int, c: int, max_threads: int = ROW_THREADS, max_blocks: int | None = None):
    """(grid, block) for (n, c) scores: a block per row."""
    return row_config(n, c, max_threads, max_blocks)


SIGNATURES = [void(float32[:, ::1], int32[::1], int32[::1])]

KERNELS = (KernelSpec("count_correct", count_correct_kernel, tuple(SIGNATURES), ROW_THREADS, 8 * ROW_THREADS,
                      "count_correct"),)
