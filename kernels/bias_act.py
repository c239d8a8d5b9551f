"""Bias + activation forward: ``out (N,D) = act(x + bias)``, elementwise, fused.

One grid-stride loop over the N*D elements of the flattened arrays; element ``i``
is in column ``i % D``.  ``out`` may be ``x`` (each element is read, then written,
by the same thread).  ``act`` is a record of kernels/activations.py, whose formula the NumPy
reference runs too (sigmoid is ``(tanh(z/2) + 1) / 2``, which cannot overflow).

Napkin math: reads x (4ND bytes) and bias (4D), writes out (4ND); 1 add plus the
activation's FLOPs per element, so it is memory-bound on every GPU.
"""
from __future__ import annotations

from numba import cuda, float32, int32, void

from .activations import ACTIVATIONS, compiled_forms, dispatcher
from .launch import ELEMENTWISE_THREADS, KernelSpec, elementwise_config

#: The code each activation's record gives it, which the kernels branch on (a uniform branch, so
#: one kernel serves them all; see kernels/activations.py).
ACT_CODES = {name: a.code for name, a in ACTIVATIONS.items()}

#: ``activate(z, code)`` and ``act_grad(g, s, code)``: each record's formulas as device functions
_device = cuda.jit(device=True)
activate, act_grad = dispatcher(compiled_forms(_device), _device)


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
