"""Hardware limits and the launch arithmetic every kernel family shares.

A launch is ``kernel[grid, block](...)``.  The helpers here turn a problem size
into a grid that never exceeds the device's limits: kernels loop (grid-stride or
block-stride) over whatever a clamped grid does not cover, so a batch of 10⁶ rows
or a row of 10⁵ columns is always a legal launch.

Limits (every CUDA GPU since compute capability 3.0, so also 7.0, 8.0 and 9.0):
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from . import simulator  # noqa: F401 - fixes the CUDA simulator's shared arrays when it is on

MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_Z = 64
MAX_GRID_X = 2**31 - 1
MAX_GRID_YZ = 65535
MAX_STATIC_SHARED_BYTES = 48 * 1024
WARP = 32

#: float32 constants for kernels: a bare Python literal would be float64 in the PTX.
F0 = np.float32(0.0)
HALF = np.float32(0.5)
ONE = np.float32(1.0)
NEG_INF = np.float32(-np.inf)

#: Threads of an elementwise (grid-stride) kernel's block.
ELEMENTWISE_THREADS = 256
#: Most threads one row of a row-wise kernel gets; also the length of the shared
#: buffers the block reductions use, so it is a power of two and a compile-time constant.
ROW_THREADS = 256


class KernelSpec(NamedTuple):
    """What the backend launches and the PTX checks compile: one entry per kernel."""

    name: str
    kernel: Callable  # the @cuda.jit dispatcher
    signatures: tuple  # the exact numba signatures the backend launches it with
    block: int  # threads per block at the backend's default settings (largest case)
    shared_bytes: int  # static shared memory per block
    op: str  # the op of gpunn.backend.ops this kernel (or its part) implements


class Version(NamedTuple):
    """One way of computing an op: a kernel family may hold several, from the obvious one to the
    fastest (the op's record in ``gpunn.backend.ops`` names them and the one the backend uses).

    ``plan(ctx, *args)`` takes the op's arguments in the record's order and returns the launches,
    ``[(kernel name, kernel, grid, block, launch arguments), ...]``, in order.  ``ctx`` is the
    backend: ``ctx.threads`` (most threads of a row-wise block), ``ctx.elementwise_threads``,
    ``ctx.max_blocks`` (a cap on grids, or None) and ``ctx.workspace(tag, shape, dtype)`` (a
    scratch array kept between calls)."""

    name: str
    summary: str  # one line: what it changes from the version before, and what that should buy
    plan: Callable


def cdiv(a: int, b: int) -> int:
    """Ceiling division for non-negative integers."""
    return -(-a // b)


def clamp_grid(blocks: int, limit: int | None = None) -> int:
    """At least one block, at most ``limit`` (and the grid-x limit); the kernel loops over the rest."""
    limit = MAX_GRID_X if limit is None else min(int(limit), MAX_GRID_X)
    return max(1, min(int(blocks), limit))


def check_pow2_threads(threads: int, cap: int = ROW_THREADS) -> int:
    """``threads`` if it is a power of two no larger than ``cap``, else ValueError."""
    if threads < 1 or threads > cap or threads & (threads - 1):
        raise ValueError(f"threads per block must be a power of two between 1 and {cap}, got {threads}")
    return threads


def elementwise_config(n: int, threads: int = ELEMENTWISE_THREADS, max_blocks: int | None = None):
    """(grid, block) of a 1-D grid-stride loop over ``n`` elements."""
    threads = min(int(threads), MAX_THREADS_PER_BLOCK)
    return clamp_grid(cdiv(n, threads), max_blocks), threads


def row_threads(width: int, max_threads: int = ROW_THREADS) -> int:
    """Threads for one row of ``width`` columns: the smallest power of two that covers
    the row, at least a warp, at most ``max_threads`` (wider rows are block-strided)."""
    check_pow2_threads(max_threads)
    t = WARP
    while t < width and t < max_threads:
        t *= 2
    return min(t, max_threads)


def row_config(rows: int, width: int, max_threads: int = ROW_THREADS, max_blocks: int | None = None):
    """(grid, block) of a row-wise kernel: one block per row (grid-stride beyond
    ``max_blocks`` rows), ``row_threads(width)`` threads striding along the row."""
    return clamp_grid(rows, max_blocks), row_threads(width, max_threads)


def check_launch(grid, block, shared_bytes: int = 0) -> None:
    """Raise ValueError when a launch configuration breaks a hardware limit."""
    grid = (grid,) if np.isscalar(grid) else tuple(grid)
    block = (block,) if np.isscalar(block) else tuple(block)
    gx, gy, gz = (*grid, 1, 1)[:3]
    bx, by, bz = (*block, 1, 1)[:3]
    if min(gx, gy, gz, bx, by, bz) < 1:
        raise ValueError(f"empty launch: grid {grid}, block {block}")
    if bx * by * bz > MAX_THREADS_PER_BLOCK or bz > MAX_BLOCK_Z:
        raise ValueError(f"block {block} has more than {MAX_THREADS_PER_BLOCK} threads")
    if gx > MAX_GRID_X or gy > MAX_GRID_YZ or gz > MAX_GRID_YZ:
        raise ValueError(f"grid {grid} exceeds ({MAX_GRID_X}, {MAX_GRID_YZ}, {MAX_GRID_YZ})")
    if shared_bytes > MAX_STATIC_SHARED_BYTES:
        raise ValueError(f"{shared_bytes} bytes of shared memory exceed {MAX_STATIC_SHARED_BYTES}")


# ---------------------------------------------------------------------- where compiled kernels are kept

def source_digest() -> str:
    """A short hash of every kernel family's source (this package's ``*.py`` files).

    Compiled kernels are kept in a folder named by it: a kernel's machine code depends on
    the device functions it calls from other families (``reduce.py``, ``softmax.py``...)
    too, so any edit to any family starts afresh."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]

