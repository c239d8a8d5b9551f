"""Fused Adam / AdamW update (PyTorch's ``torch.optim.Adam`` and ``AdamW``), in place, and the
optimizer's step count on the device.

Per element, in float32 (:func:`.update_rules.adam_rule`, written once: this file's kernel
compiles it as a CUDA device function, the numpy backend's fused CPU loop with ``numba.njit``)::

    Adam:   g = grad + weight_decay * p              AdamW:  p = p * (1 - lr * weight_decay)
    m = m + (1 - beta1) * (g - m)                    (PyTorch's lerp)
    v = beta2 * v + (1 - beta2) * g * g
    p = p - (lr / (1 - beta1^t)) * (m / (sqrt(v) / sqrt(1 - beta2^t) + eps))

``t`` is the step number (1 for the first), read on the device from ``step[0]``, and the rate
is a number fixed at launch or read from ``lr_ref[0]``: a step replayed as a CUDA graph then
uses the count and rate of the moment.  ``step_kernel`` adds one to ``step[0]`` before the
updates of a step (one thread: a launch of its own, since every update thread reads the count).
The bias corrections are computed once per thread, not per element.  One grid-stride pass over
the flattened parameter: reads p, g, m, v and writes p, m, v (28 bytes per element): memory-bound.
"""
from __future__ import annotations

from numba import cuda, float32, int32, void

from .launch import ELEMENTWISE_THREADS, KernelSpec, elementwise_config
from .update_rules import adam_corrections, adam_rule


_rule = cuda.jit(device=True)(adam_rule)
_corrections = cuda.jit(device=True)(adam_corrections)


@cuda.jit
def adam_kernel(param, grad, m, v, lr_value, lr_ref, lr_on_device, step, beta1, beta2, eps, weight_decay,
                decoupled):
    """One Adam(W) step on flat (P,) arrays; the step number is ``step[0]``, the rate ``lr_ref[0]``
    when ``lr_on_device``, else ``lr_value``."""
    lr = lr_ref[0] if lr_on_device else lr_value
    step_size, bc2_sqrt = _corrections(lr, beta1, beta2, step[0])
    for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
        p, mi, vi = _rule(param[i], grad[i], m[i], v[i], lr, beta1, beta2, eps, weight_decay, decoupled,
                          step_size, bc2_sqrt)
        param[i] = p
        m[i] = mi
        v[i] = vi


@cuda.jit
def step_kernel(step):
    """``step[0] += 1`` (launched with one thread)."""
    if cuda.grid(1) == 0:
        step[0] += 1


def launch_config(p: int, threads: int = ELEMENTWISE_THREADS, max_blocks: int | None = None):
    """(grid, block) for a parameter of ``p`` elements."""
    return elementwise_config(p, threads, max_blocks)


SIGNATURES = [void(float32[::1], float32[::1], float32[::1], float32[::1], float32, float32[::1], int32,
                   int32[::1], float32, float32, float32, float32, int32)]
STEP_SIGNATURES = [void(int32[::1])]

KERNELS = (KernelSpec("adam_update", adam_kernel, tuple(SIGNATURES), ELEMENTWISE_THREADS, 0, "adam_update"),
           KernelSpec("count_step", step_kernel, tuple(STEP_SIGNATURES), 1, 0, "count_step"))
