"""Activation backward: ``out (N,D) = dy * act'(z)``, written with the saved output y = act(z).

relu: ``dy * (y > 0)``; sigmoid: ``dy * (1 - y) * y``; tanh: ``dy * (1 - y²)``;
identity: ``dy``.  One grid-stride loop over the flattened arrays; ``out`` may be
``dy``.  Reads y and dy, writes out: memory-bound.
"""
from __future__ import annotations

from numba import cuda, float32, int32, void

from .bias_act import RELU, SIGMOID, TANH
from .launch import ELEMENTWISE_THREADS, F0, ONE, KernelSpec, elementwise_config


@cuda.jit(device=True)
def act_grad(g, y, act):
    """``g * act'`` written with the activation's output ``y`` (float32s)."""
    if act == RELU:
        return g if y > F0 else F0
    if act == SIGMOID:
        return g * ((ONE - y) * y)
    if act == TANH:
        return g * (ONE - y * y)
    return g


@cuda.jit
def act_backward_kernel(y, dy, out, act):
    """``out[i] = dy[i] * act'`` from ``y[i]``, over flat (N*D,) arrays."""
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):
        out[i] = act_grad(dy[i], y[i], act)


def launch_config(n: int, d: int, threads: int = ELEMENTWISE_THREADS, max_blocks: int | None = None):
    """(grid, block) for an (n, d) input: one thread per element, grid-stride beyond the grid."""
    return elementwise_config(n * d, threads, max_blocks)


SIGNATURES = [void(float32[::1], float32[::1], float32[::1], int32)]

KERNELS = (KernelSpec("act_backward", act_backward_kernel, tuple(SIGNATURES), ELEMENTWISE_THREADS, 0,
                      "act_backward"),)
