"""Fused softmax + cross-entropy: the loss and the logit gradient in one pass per row.

Per row of logits z (N,C) with label t (one block per row):
``m = max(z)``, ``s = sum(exp(z - m))``; the row's loss is ``log(s) - (z[t] - m)``
(log-sum-exp: no probability is ever logged, so logits of ±1e4 are fine) and
``grad = (exp(z - m)/s - onehot(t)) / N``.  ``z[t]`` is read before any gradient
is written, so grad may be the logits buffer itself.

The per-row losses go to a workspace; ``reduce.finish_loss_kernel`` (one block,
fixed order) turns them into ``loss[0] = mean`` (``+=`` with accumulate).  No
atomics: bit-identical results run to run.
"""
from __future__ import annotations

import math

from numba import cuda, float32, int32, void

from .launch import ONE, ROW_THREADS, KernelSpec, row_config
from .softmax import row_max_sumexp


@cuda.jit
def softmax_cross_entropy_kernel(logits, labels, grad, row_loss, inv_n):
    """Per row r: ``row_loss[r] = logsumexp(z) - z[label]``, ``grad[r] = (softmax(z) - onehot) * inv_n``."""
    sh = cuda.shared.array(ROW_THREADS, float32)
    for row in range(cuda.blockIdx.x, logits.shape[0], cuda.gridDim.x):
        t = labels[row]
        z_true = logits[row, t]  # every thread reads it before the barriers below
        m, s = row_max_sumexp(sh, logits, row)
        if cuda.threadIdx.x == 0:
            row_loss[row] = math.log(s) - (z_true - m)  # z - m first: no cancellation at large m
        for j in range(cuda.threadIdx.x, logits.shape[1], cuda.blockDim.x):
            p = math.exp(logits[row, j] - m) / s
            if j == t:
                p -= ONE
            grad[row, j] = p * inv_n


def launch_config(n: int, c: int, max_threads: int = ROW_THREADS, max_blocks: int | None = None):
    """(grid, block) of the row kernel; the loss reduction uses ``reduce.finish_config``."""
    return row_config(n, c, max_threads, max_blocks)


SIGNATURES = [void(float32[:, ::1], int32[::1], float32[:, ::1], float32[::1], float32)]

KERNELS = (KernelSpec("softmax_cross_entropy", softmax_cross_entropy_kernel, tuple(SIGNATURES), ROW_THREADS,
                      4 * ROW_THREADS, "softmax_cross_entropy"),)
