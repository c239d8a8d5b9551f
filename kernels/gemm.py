"""Shared-memory tiled GEMM: ``out (M,N) = op(a) @ op(b)`` (``+ out`` with accumulate).

The alternative to cuBLAS (``CudaBackend(gemm="numba")``, ``--gemm numba``).
op is a transpose when ``trans_a``/``trans_b`` is set, which gives the three
products a dense layer needs without copying: forward ``X W``, backward
``Xᵀ dY`` (trans_a) and ``dY Wᵀ`` (trans_b).

A (32, 8) block computes a 32x32 tile of out, each thread 4 rows of one column
(register blocking).  For each 32-wide slice of K, the block stages a 32x32 tile of
op(a) and of op(b) in shared memory; transposed operands are read with the
thread roles swapped, so global reads stay coalesced either way, and the tiles
are padded to 33 columns so those transposed shared stores do not conflict on
banks.  Guards zero-fill the tiles past M, N, K, so any (irregular) shape works.
The tile loops stride over the grid, so grid y stays within 65535 for any M.

Napkin math: 2MNK FLOPs; each K-slice loads 2 KiB per operand per block and
reuses every element 32 times from shared memory.
"""
from __future__ import annotations

from numba import cuda, float32, int32, void

from .launch import F0, MAX_GRID_YZ, KernelSpec, cdiv, clamp_grid

TILE = 32  # out tile is TILE x TILE; K is consumed TILE at a time
LANES = 8  # threadIdx.y; each thread owns TILE // LANES rows of the tile
ROWS_PER_THREAD = TILE // LANES
PADDED = TILE + 1  # shared tiles' row length: transposed stores hit 32 different banks


@cuda.jit(device=True)
def stage(tile, src, trans, r, off0, off1, lim0, lim1):
    """This thread's share of ``tile[i, j] = op(src)[off0 + i, off1 + j]`` (zero outside
    op(src)'s shape (lim0, lim1)): tile row ``r``, column threadIdx.x.

    Transposed, op(src)[p, q] is src[q, p], so the thread takes tile[tx, r] instead:
    either way a warp reads 32 consecutive floats of one row of ``src``."""
    tx = cuda.threadIdx.x
    if trans:  # src is (lim1, lim0)
        tile[tx, r] = src[off1 + r, off0 + tx] if off0 + tx < lim0 and off1 + r < lim1 else F0
    else:  # src is (lim0, lim1)
        tile[r, tx] = src[off0 + r, off1 + tx] if off0 + r < lim0 and off1 + tx < lim1 else F0


@cuda.jit
def gemm_kernel(a, b, out, trans_a, trans_b, accumulate):
    """Tiled ``out = op(a) @ op(b) [+ out]``; launch with ``launch_config(M, N)``."""
    a_tile = cuda.shared.array((TILE, PADDED), float32)  # a_tile[i, k] = op(a)[row0 + i, k0 + k]
    b_tile = cuda.shared.array((TILE, PADDED), float32)  # b_tile[k, j] = op(b)[k0 + k, col0 + j]
    acc = cuda.local.array(ROWS_PER_THREAD, float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    m, n = out.shape
    k_dim = a.shape[0] if trans_a else a.shape[1]
    for tile_m in range(cuda.blockIdx.y, (m + TILE - 1) // TILE, cuda.gridDim.y):
        for tile_n in range(cuda.blockIdx.x, (n + TILE - 1) // TILE, cuda.gridDim.x):
            row0 = tile_m * TILE
            col0 = tile_n * TILE
            for i in range(ROWS_PER_THREAD):
                acc[i] = F0
            for k0 in range(0, k_dim, TILE):
                for i in range(ROWS_PER_THREAD):
                    r = ty + i * LANES
                    stage(a_tile, a, trans_a, r, row0, k0, m, k_dim)  # a_tile = op(a)[row0:, k0:]
                    stage(b_tile, b, trans_b, r, k0, col0, k_dim, n)  # b_tile = op(b)[k0:, col0:]
                cuda.syncthreads()
                for k in range(TILE):
                    bv = b_tile[k, tx]
                    for i in range(ROWS_PER_THREAD):
                        acc[i] += a_tile[ty + i * LANES, k] * bv
                cuda.syncthreads()
            col = col0 + tx
            if col < n:
                for i in range(ROWS_PER_THREAD):
                    row = row0 + ty + i * LANES
                    if row < m:
                        v = acc[i]
                        if accumulate:
                            v += out[row, col]
                        out[row, col] = v


def launch_config(m: int, n: int, max_blocks: int | None = None):
    """(grid, block) for an (m, n) output: N tiles on grid x, M tiles on grid y (≤ 65535)."""
    y_limit = MAX_GRID_YZ if max_blocks is None else min(max_blocks, MAX_GRID_YZ)
    return (clamp_grid(cdiv(n, TILE), max_blocks), clamp_grid(cdiv(m, TILE), y_limit)), (TILE, LANES)


SIGNATURES = [void(float32[:, ::1], float32[:, ::1], float32[:, ::1], int32, int32, int32)]

KERNELS = (KernelSpec("gemm", gemm_kernel, tuple(SIGNATURES), TILE * LANES, 2 * 4 * TILE * PADDED, "gemm"),)
