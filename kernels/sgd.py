"""Fused SGD update with momentum, Nesterov and weight decay (PyTorch's definition), in place.

Per element: ``g = grad + weight_decay * p``; with momentum ``v = momentum * v + g``
and ``step = g + momentum * v`` (Nesterov) or ``v``; without, ``step = g``;
``p -= lr * step``.  The rate is a number fixed at launch, or read on the device from
``lr_ref[0]`` (``lr_on_device = 1``): what a step replayed as a CUDA graph needs, since a
graph replays the numbers it was captured with.  One grid-stride pass over the flattened parameter: reads p, g
(and v), writes p (and v): memory-bound, and one launch per parameter instead of
the four or five separate passes the unfused update would make.
"""
from __future__ import annotations

from numba import cuda, float32, int32, void

from .launch import ELEMENTWISE_THREADS, F0, KernelSpec, elementwise_config
from .update_rules import sgd_rule


_rule = cuda.jit(device=True)(sgd_rule)


@cuda.jit
def sgd_kernel(param, grad, velocity, lr_value, lr_ref, lr_on_device, momentum, weight_decay, nesterov):
    """One SGD step on flat (P,) arrays (kernels/update_rules.py's ``sgd_rule`` per element);
    velocity is a one-element dummy when momentum is 0.

    The rate is ``lr_ref[0]`` when ``lr_on_device``, else ``lr_value``."""
    lr = lr_ref[0] if lr_on_device else lr_value
    with_velocity = momentum != F0
    for i in range(cuda.grid(1), param.shape[0], cuda.gridsize(1)):
        p, v = _rule(param[i], grad[i], velocity[i] if with_velocity else F0, lr, momentum, weight_decay, nesterov)
        param[i] = p
        if with_velocity:
            velocity[i] = v


def launch_config(p: int, threads: int = ELEMENTWISE_THREADS, max_blocks: int | None = None):
    """(grid, block) for a parameter of ``p`` elements."""
    return elementwise_config(p, threads, max_blocks)


SIGNATURES = [void(float32[::1], float32[::1], float32[::1], float32, float32[::1], int32, float32, float32, int32)]

KERNELS = (KernelSpec("sgd_update", sgd_kernel, tuple(SIGNATURES), ELEMENTWISE_THREADS, 0, "sgd_update"),)
