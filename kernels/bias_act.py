"""Bias + activation forward: ``out (N,D) = act(x + bias)``, elementwise, fused.

One grid-stride loop over the N*D elements of the flattened arrays; element ``i``
is in column ``i % D``.  ``out`` may be ``x`` (each element is read, then written,
by the same thread).  Sigmoid is ``(tanh(z/2) + 1) / 2``, which cannot overflow,
exactly as the NumPy reference computes it.

Napkin math: reads x (4ND bytes) and bias (4D), writes out (4ND); 1 add plus the
activation's FLOPs per element, so it is memory-bound on every GPU.
"""
from __future__ import annotations

import math

from numba import cuda, float32, int32, void

from .launch import ELEMENTWISE_THREADS, F0, HALF, ONE, KernelSpec, elementwise_config

#: Activation codes passed to the kernels (a uniform branch, so one kernel serves all).
ACT_CODES = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
RELU, SIGMOID, TANH = ACT_CODES["relu"], ACT_CODES["sigmoid"], ACT_CODES["tanh"]


@cuda.jit(device=True)
def activate(z, act):
    """``act(z)`` for a float32 ``z``."""
    if act == RELU:
        return max(z, F0)
    if act == SIGMOID:
        return (math.tanh(z * HALF) + ONE) * HALF
    if act == TANH:
        return math.tanh(z)
    return z


@cuda.jit
def bias_act_kernel(x, bias, out, act, has_bias):
    """``out[i] = act(x[i] + bias[i % D])`` over flat (N*D,) arrays; bias is (D,).

    Without a bias the backend passes a one-element dummy and ``has_bias = 0``."""
    d = bias.shape[0]
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        z = x[i]
        if has_bias:
            z += bias[i % d]
        out[i] = activate(z, act)


def launch_config(n: int, d: int, threads: int = ELEMENTWISE_THREADS, max_blocks: int | None = None):
    """(grid, block) for an (n, d) input: one thread per element, grid-stride beyond the grid."""
    return elementwise_config(n * d, threads, max_blocks)


SIGNATURES = [void(float32[::1], float32[::1], float32[::1], int32, int32)]

KERNELS = (KernelSpec("bias_act", bias_act_kernel, tuple(SIGNATURES), ELEMENTWISE_THREADS, 0, "bias_act"),)
