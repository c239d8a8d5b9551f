"""Softmax + cross-entropy: the loss, the logits' gradient and (optionally) the correct count.

Per row of logits z (N,C) with label t: ``m = max(z)``, ``s = sum(exp(z - m))``; the row's
loss is ``log(s) - (z[t] - m)`` and ``grad = (exp(z - m)/s - onehot(t)) / N``; with a
``correct`` counter, ``correct[0] += (argmax(z) == t)``.  grad may be the logits buffer itself.
The per-row losses go to a workspace; ``reduce.finish_loss_kernel`` (one block, fixed order)
turns them into ``loss[0] = mean`` (``+=`` with accumulate).  With ``bias_grad`` (D,), the op
also writes ``grad`` summed over the rows: the bias gradient of the layer that made the logits,
so the trainer's last layer skips its own.  No float atomics: bit-identical results run to run
(the count is an integer atomic: exact in any order).

The versions (:data:`VERSIONS`, in the order of the op's record):

1. ``two_kernels``: the textbook pipeline, llm.c's ``softmax_forward`` then
   ``crossentropy_forward``: the softmax kernel stores the probabilities (in grad), a second
   kernel reads them back for ``-log(p[t])`` and ``p - onehot``.  The probabilities make a round
   trip through memory (4 extra bytes written and read per element), and ``log(p)`` of a
   probability that underflows to 0 (a logit 104 below the row's max) is infinite: the reason
   the fused versions work from the log-sum-exp instead.  The count is a third kernel.
2. ``fused`` (the backend's): one block per row does the softmax, the loss from the log-sum-exp
   (so logits of ±1e4 are fine) and the gradient: no probability is stored.  Three passes over
   the row (max, sum, write); the count is still a separate kernel.
3. ``classifier`` (llm.c's ``fused_classifier``): one pass computes the max, the sum (online)
   and the argmax together, a second writes the gradient: 2 reads of the row instead of 3, one
   reduction instead of two, and the correct count in the same kernel: training's loss, accuracy
   and gradient are 2 launches (with the loss reduction) instead of 3 or 4.  Its loss reduction
   also sums the bias gradient (``reduce.finish_loss_colsum_kernel``), where versions 1 and 2
   launch ``bias_grad``'s kernels after theirs: loss, count, logits' and bias's gradients in 2
   launches instead of 4 or 5.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, int32, void

from .count_correct import count_correct_kernel
from .count_correct import launch_config as count_config
from .launch import (ELEMENTWISE_THREADS, F0, NEG_INF, ONE, ROW_THREADS, KernelSpec, Version, elementwise_config,
                     row_config)
from .bias_grad import bias_grad_launches
from .reduce import finish_colsum_launch, finish_launch, online_merge
from .softmax import launch_config as softmax_config
from .softmax import row_max_sumexp, softmax_forward_kernel


@cuda.jit
def softmax_cross_entropy_kernel(logits, labels, grad, row_loss, inv_n):
    """Version 2. Per row r: ``row_loss[r] = logsumexp(z) - z[label]``, ``grad[r] = (softmax(z) - onehot) * inv_n``."""
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


@cuda.jit
def xent_from_probs_kernel(probs, labels, grad, row_loss, inv_n):
    """Version 1's second kernel, one thread per element: ``grad = (p - onehot) * inv_n`` and, by
    the thread of the label's column, ``row_loss[r] = -log(p[t])``.  grad may be probs."""
    c = probs.shape[1]
    for i in range(cuda.grid(1), probs.shape[0] * c, cuda.gridsize(1)):
        row, j = i // c, i % c
        p = probs[row, j]
        if j == labels[row]:
            row_loss[row] = -math.log(p)
            p -= ONE
        grad[row, j] = p * inv_n


@cuda.jit(device=True)
def block_reduce_classifier(shm, shs, shi, m, s, i):
    """Every thread's running (max, sum of exp, first index of the max) merged over the block."""
    tid = cuda.threadIdx.x
    shm[tid], shs[tid], shi[tid] = m, s, i
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if tid < half:
            m2, i2 = shm[tid + half], shi[tid + half]
            if m2 > shm[tid] or (m2 == shm[tid] and i2 < shi[tid]):
                shi[tid] = i2
            shm[tid], shs[tid] = online_merge(shm[tid], shs[tid], m2, shs[tid + half])
        cuda.syncthreads()
        half //= 2
    m, s, i = shm[0], shs[0], shi[0]
    cuda.syncthreads()
    return m, s, i


@cuda.jit
def classifier_kernel(logits, labels, grad, row_loss, inv_n, correct, count):
    """Version 3: per row one pass for max, sum and argmax, one for the gradient;
    ``correct[0] += hits`` (one integer atomic per block) when ``count``."""
    shm = cuda.shared.array(ROW_THREADS, float32)
    shs = cuda.shared.array(ROW_THREADS, float32)
    shi = cuda.shared.array(ROW_THREADS, int32)
    c = logits.shape[1]
    hits = 0
    for row in range(cuda.blockIdx.x, logits.shape[0], cuda.gridDim.x):
        t = labels[row]
        z_true = logits[row, t]  # read before the barriers: grad may be logits
        m, s, best = NEG_INF, F0, c  # best = c: no column yet, loses every tie with a real one
        for j in range(cuda.threadIdx.x, c, cuda.blockDim.x):
            x = logits[row, j]
            if x > m:
                s = s * math.exp(m - x) + ONE
                m, best = x, j
            else:
                s += math.exp(x - m)
                if best == c:
                    best = j
        m, s, best = block_reduce_classifier(shm, shs, shi, m, s, best)
        if cuda.threadIdx.x == 0:
            row_loss[row] = math.log(s) - (z_true - m)
            if best == t:
                hits += 1
        for j in range(cuda.threadIdx.x, c, cuda.blockDim.x):
            p = math.exp(logits[row, j] - m) / s
            if j == t:
                p -= ONE
            grad[row, j] = p * inv_n
    if count and cuda.threadIdx.x == 0 and hits > 0:
        cuda.atomic.add(correct, 0, hits)


def launch_config(n: int, c: int, max_threads: int = ROW_THREADS, max_blocks: int | None = None):
    """(grid, block) of the row kernels; the loss reduction uses ``reduce.finish_launch``."""
    return row_config(n, c, max_threads, max_blocks)


# ---------------------------------------------------------------------------- the versions' launches

def _count(ctx, logits, labels, correct):
    """The separate count of versions 1 and 2, queued first: their gradient may overwrite the logits."""
    if correct is None:
        return []
    return [("count_correct", count_correct_kernel, *count_config(*logits.shape, ctx.threads, ctx.max_blocks),
             (logits, labels, correct))]


def _finish(ctx, row_loss, loss, n, accumulate, grad, bias_grad):
    """The loss reduction, then (with ``bias_grad``) the bias gradient's own column sum of grad."""
    found = [finish_launch(ctx.threads, row_loss, loss, n, accumulate)]
    if bias_grad is not None:
        found += bias_grad_launches(ctx, grad, bias_grad)
    return found


def _plan_two_kernels(ctx, logits, labels, grad, loss, accumulate, correct, bias_grad):
    n, c = logits.shape
    row_loss = ctx.workspace("row_loss", (n,))
    return [*_count(ctx, logits, labels, correct),
            ("softmax_forward", softmax_forward_kernel, *softmax_config(n, c, ctx.threads, ctx.max_blocks),
             (logits, grad)),
            ("xent_from_probs", xent_from_probs_kernel,
             *elementwise_config(n * c, ctx.elementwise_threads, ctx.max_blocks),
             (grad, labels, grad, row_loss, np.float32(1.0 / n))),
            *_finish(ctx, row_loss, loss, n, accumulate, grad, bias_grad)]


def _plan_fused(ctx, logits, labels, grad, loss, accumulate, correct, bias_grad):
    n, c = logits.shape
    row_loss = ctx.workspace("row_loss", (n,))
    return [*_count(ctx, logits, labels, correct),
            ("softmax_cross_entropy", softmax_cross_entropy_kernel, *launch_config(n, c, ctx.threads, ctx.max_blocks),
             (logits, labels, grad, row_loss, np.float32(1.0 / n))),
            *_finish(ctx, row_loss, loss, n, accumulate, grad, bias_grad)]


def _plan_classifier(ctx, logits, labels, grad, loss, accumulate, correct, bias_grad):
    """The classifier kernel, then one launch for the loss (and, beside it, the bias gradient)."""
    n, c = logits.shape
    row_loss = ctx.workspace("row_loss", (n,))
    counter = ctx.workspace("no_count", (1,), np.int32) if correct is None else correct
    finish = (finish_launch(ctx.threads, row_loss, loss, n, accumulate) if bias_grad is None else
              finish_colsum_launch(ctx.threads, ctx.max_blocks, row_loss, loss, n, accumulate, grad, bias_grad))
    return [("classifier", classifier_kernel, *launch_config(n, c, ctx.threads, ctx.max_blocks),
             (logits, labels, grad, row_loss, np.float32(1.0 / n), counter, np.int32(correct is not None))),
            finish]


#: The versions of this family's op, in the order of its record.
VERSIONS = {"softmax_cross_entropy": (
    Version("two_kernels", "softmax stores p, a second kernel takes -log p[t]: p round-trips memory; "
            "-log p overflows when p underflows", _plan_two_kernels),
    Version("fused", "one kernel per row from the log-sum-exp: p never stored, any finite logits; "
            "the count separate", _plan_fused),
    Version("classifier", "max, sum and argmax in one pass, the gradient in a second: 2 reads of the "
            "row, the count in the same kernel", _plan_classifier),
)}


SIGNATURES = [void(float32[:, ::1], int32[::1], float32[:, ::1], float32[::1], float32)]
SIGNATURES_CLASSIFIER = [void(float32[:, ::1], int32[::1], float32[:, ::1], float32[::1], float32, int32[::1],
                              int32)]

KERNELS = (
    KernelSpec("softmax_cross_entropy", softmax_cross_entropy_kernel, tuple(SIGNATURES), ROW_THREADS,
               4 * ROW_THREADS, "softmax_cross_entropy"),
    KernelSpec("xent_from_probs", xent_from_probs_kernel, tuple(SIGNATURES), ELEMENTWISE_THREADS, 0,
               "softmax_cross_entropy"),
    KernelSpec("classifier", classifier_kernel, tuple(SIGNATURES_CLASSIFIER), ROW_THREADS, 12 * ROW_THREADS,
               "softmax_cross_entropy"),
)
