"""Counter-based random numbers (Philox-2x32-10, Salmon et al., SC'11) and dropout's mask from them.

A counter-based generator has no state: the number for element ``i`` of step ``t`` of a run
seeded ``seed`` is ``philox2x32(i, t, seed)``, whatever ran before.  So a dropout mask needs no
generator on the host and no mask in memory (the backward pass recomputes it), is the same on
every backend, replays inside a CUDA graph (``t`` is read from device memory) and resumes bit
for bit (``t`` is the step count).

:func:`philox2x32` is written once, over ``numpy.uint64`` values holding 32-bit words: the CUDA
kernel (kernels/dropout.py) compiles it as a device function, and the NumPy reference runs the
same code on whole arrays of counters.  This module imports nothing but NumPy.
"""
from __future__ import annotations

import numpy as np

U64 = np.uint64
MASK32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)
PHILOX_M = np.uint64(0xD256D193)  # the Philox-2x32 round multiplier
PHILOX_W = np.uint64(0x9E3779B9)  # the key's increment per round (the golden ratio's bits)


def philox2x32(c0, c1, key):
    """The first 32-bit word of Philox-2x32 with 10 rounds of counter ``(c0, c1)`` under ``key``
    (each a uint64 holding 32 bits; arrays of them work the same, elementwise)."""
    for _ in range(10):
        product = PHILOX_M * c0
        hi, lo = product >> SHIFT32, product & MASK32
        c0, c1 = (hi ^ key ^ c1) & MASK32, lo
        key = (key + PHILOX_W) & MASK32
    return c0


def dropout_constants(p: float):
    """``(threshold, scale)`` of dropout with probability ``p`` in [0, 1): an element is kept when
    its 32-bit number is ``>= threshold = float32(p) * 2^32`` (exact: a power-of-two scaling), so
    with probability 1 - p, and a kept element is scaled by ``scale = 1 / (1 - p)`` in float32."""
    p32 = np.float32(p)
    return int(np.float64(p32) * 2.0**32), np.float32(1) / (np.float32(1) - p32)
