"""Activation backward: ``out (N,D) = dy * act'(z)``, written with what the activation's record
says its derivative needs: the saved output y = act(z) (relu ``dy * (y > 0)``, sigmoid
``dy * (1 - y) * y``, tanh ``dy * (1 - y²)``) or the saved input z (GELU, SiLU).  The formulas are
the records' (kernels/activations.py).  One grid-stride loop over the flattened arrays; ``out``
may be ``dy``.  Reads s and dy, writes out: memory-bound.
"""
from __future__ import annotations

from numba import cuda, float32, int32, void

from .bias_act import act_grad
from .launch import ELEMENTWISE_THREADS, KernelSpec, elementwise_config


@cuda.jit
def act_backward_kernel(s, dy, out, act):
    """``out[i] = dy[i] * act'`` from ``s[i]`` (the saved output or input), over flat (N*D,) arrays."""
    for i in range(cuda.grid(1), s.shape[0], cuda.gridsize(1)):
        out[i] = act_grad(dy[i], s[i], act)


def launch_config(n: int, d: int, threads: int = ELEMENTWISE_THREADS, max_blocks: int | None = None):
    """(grid, block) for an (n, d) input: one thread per element, grid-stride beyond the grid."""
    return elementwise_config(n * d, threads, max_blocks)


SIGNATURES = [void(float32[::1], float32[::1], float32[::1], int32)]

KERNELS = (KernelSpec("act_backward", act_backward_kernel, tuple(SIGNATURES), ELEMENTWISE_THREADS, 0,
                      "act_backward"),)
