"""Optimizer update rules, one element at a time, written once for the GPU and the CPU.

Plain Python over float32 scalars (the constants below are float32: a bare literal would be
float64 in a kernel's PTX).  The kernels compile each rule as a CUDA device function
(``cuda.jit(device=True)``) and the numpy backend's fused CPU loops with ``numba.njit``, so the
GPU and the CPU run the same arithmetic in the same order.  The plain NumPy reference
(:mod:`gpunn.backend.numpy_backend`) writes each optimizer on whole arrays, as its definition.

This module imports nothing but NumPy and math: the fused CPU loops need it without numba-cuda.
"""
from __future__ import annotations

import math

import numpy as np

F0 = np.float32(0.0)
ONE = np.float32(1.0)


def sgd_rule(p, g, v, lr, momentum, weight_decay, nesterov):
    """One element's ``(p, v)`` after an SGD step, PyTorch's definition: ``g += weight_decay * p``;
    with momentum ``v = momentum * v + g`` and the step ``g + momentum * v`` (Nesterov) or ``v``."""
    if weight_decay != F0:
        g = p * weight_decay + g
    if momentum != F0:
        v = v * momentum + g
        g = v * momentum + g if nesterov else v
    return p - g * lr, v


def adam_rule(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step_size, bc2_sqrt):
    """One element's ``(p, m, v)`` after an Adam (``decoupled`` false) or AdamW step, PyTorch's
    definition; ``step_size = lr / (1 - beta1^t)`` and ``bc2_sqrt = sqrt(1 - beta2^t)`` (see
    :func:`adam_corrections`)."""
    if weight_decay != F0:
        if decoupled:
            p = p * (ONE - lr * weight_decay)   # AdamW: p.mul_(1 - lr * wd)
        else:
            g = g + weight_decay * p            # Adam: grad.add(p, alpha=wd)
    m = m + (ONE - beta1) * (g - m)             # exp_avg.lerp_(grad, 1 - beta1)
    v = beta2 * v + (ONE - beta2) * (g * g)     # exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    p = p - step_size * (m / (math.sqrt(v) / bc2_sqrt + eps))  # p.addcdiv_(m, denom, value=-step_size)
    return p, m, v


def adam_corrections(lr, beta1, beta2, t):
    """Adam's bias corrections at step ``t`` (1-based), in float32:
    ``(lr / (1 - beta1^t), sqrt(1 - beta2^t))``."""
    tf = np.float32(t)
    return lr / (ONE - beta1 ** tf), math.sqrt(ONE - beta2 ** tf)
