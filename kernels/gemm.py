"""GEMM, ``out (M,N) = op(a) @ op(b)`` (``+ out`` with accumulate), in three versions.

The alternative to cuBLAS (``CudaBackend(gemm="numba")``, ``--gemm numba``).
op is a transpose when ``trans_a``/``trans_b`` is set, which gives the three
products a dense layer needs without copying: forward ``X W``, backward
``Xᵀ dY`` (trans_a) and ``dY Wᵀ`` (trans_b).  The versions (:data:`VERSIONS`):

1. ``naive``: one thread per output, the K loop straight from global memory: 2K loads per
   2K FLOPs (intensity 0.25 FLOP/B before caches), and a transposed operand read with a
   stride.
2. ``tiled``: a 16x16 block stages 16x16 tiles of op(a) and op(b) in shared memory, one
   output per thread: each element loaded from global memory is used 16 times (16x fewer
   loads), every load coalesced whatever the transposes.
3. ``blocked`` (the backend's): 32x32 tiles and each thread 4 outputs of a column (register
   blocking): a value read from shared memory serves 4 multiply-adds, 32x reuse from global
   memory, and a quarter of the threads.  Described below.

Version 3: a (32, 8) block computes a 32x32 tile of out, each thread 4 rows of one column
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

import numpy as np
from numba import cuda, float32, int32, void

from .bias_act import ACT_CODES, act_grad, activate
from .bias_grad import ROW_LANES, TILE_COLS, tile_sum
from .launch import F0, MAX_GRID_YZ, KernelSpec, Version, cdiv, clamp_grid

TILE = 32  # out tile is TILE x TILE; K is consumed TILE at a time
LANES = 8  # threadIdx.y; each thread owns TILE // LANES rows of the tile
ROWS_PER_THREAD = TILE // LANES
PADDED = TILE + 1  # shared tiles' row length: transposed stores hit 32 different banks
# gemm_backward sums its dx tiles' columns with bias_grad's tile_sum, which reads a block of that shape
assert (TILE, LANES) == (TILE_COLS, ROW_LANES)


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


SMALL = 16  # the tiled version's tile and block edge
SMALL_PADDED = SMALL + 1  # a module constant: shared array shapes must be compile-time constants


@cuda.jit
def gemm_naive_kernel(a, b, out, trans_a, trans_b, accumulate):
    """Version 1: ``out[row, col]`` by one thread, straight from global memory."""
    m, n = out.shape
    k_dim = a.shape[0] if trans_a else a.shape[1]
    col0, row0 = cuda.grid(2)
    cols, rows = cuda.gridsize(2)
    for row in range(row0, m, rows):
        for col in range(col0, n, cols):
            acc = F0
            for k in range(k_dim):
                av = a[k, row] if trans_a else a[row, k]
                bv = b[col, k] if trans_b else b[k, col]
                acc += av * bv
            if accumulate:
                acc += out[row, col]
            out[row, col] = acc


@cuda.jit
def gemm_tiled_kernel(a, b, out, trans_a, trans_b, accumulate):
    """Version 2: 16x16 shared-memory tiles, one output per thread; launch with ``tiled_config``."""
    a_tile = cuda.shared.array((SMALL, SMALL_PADDED), float32)
    b_tile = cuda.shared.array((SMALL, SMALL_PADDED), float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    m, n = out.shape
    k_dim = a.shape[0] if trans_a else a.shape[1]
    for tile_m in range(cuda.blockIdx.y, (m + SMALL - 1) // SMALL, cuda.gridDim.y):
        for tile_n in range(cuda.blockIdx.x, (n + SMALL - 1) // SMALL, cuda.gridDim.x):
            row0 = tile_m * SMALL
            col0 = tile_n * SMALL
            acc = F0
            for k0 in range(0, k_dim, SMALL):
                stage(a_tile, a, trans_a, ty, row0, k0, m, k_dim)  # a_tile = op(a)[row0:, k0:]
                stage(b_tile, b, trans_b, ty, k0, col0, k_dim, n)  # b_tile = op(b)[k0:, col0:]
                cuda.syncthreads()
                for k in range(SMALL):
                    acc += a_tile[ty, k] * b_tile[k, tx]
                cuda.syncthreads()
            row, col = row0 + ty, col0 + tx
            if row < m and col < n:
                if accumulate:
                    acc += out[row, col]
                out[row, col] = acc


@cuda.jit(device=True)
def blocked_tile(a_tile, b_tile, acc, a, b, trans_a, trans_b, row0, col0, m, n, k_dim):
    """Version 3's work on one 32x32 tile of out: ``acc[i]`` (this thread's 4 rows of its column)
    ``= Σ_k op(a)[row, k] op(b)[k, col]``, a 32-wide slice of K at a time through the shared tiles.
    All threads of the block call it (it has barriers)."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
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


@cuda.jit
def gemm_kernel(a, b, out, trans_a, trans_b, accumulate):
    """Tiled ``out = op(a) @ op(b) [+ out]``; launch with ``launch_config(M, N)``."""
    a_tile = cuda.shared.array((TILE, PADDED), float32)  # a_tile[i, k] = op(a)[row0 + i, k0 + k]
    b_tile = cuda.shared.array((TILE, PADDED), float32)  # b_tile[k, j] = op(b)[k0 + k, col0 + j]
    acc = cuda.local.array(ROWS_PER_THREAD, float32)
    m, n = out.shape
    k_dim = a.shape[0] if trans_a else a.shape[1]
    for tile_m in range(cuda.blockIdx.y, (m + TILE - 1) // TILE, cuda.gridDim.y):
        for tile_n in range(cuda.blockIdx.x, (n + TILE - 1) // TILE, cuda.gridDim.x):
            row0, col0 = tile_m * TILE, tile_n * TILE
            blocked_tile(a_tile, b_tile, acc, a, b, trans_a, trans_b, row0, col0, m, n, k_dim)
            col = col0 + cuda.threadIdx.x
            if col < n:
                for i in range(ROWS_PER_THREAD):
                    row = row0 + cuda.threadIdx.y + i * LANES
                    if row < m:
                        v = acc[i]
                        if accumulate:
                            v += out[row, col]
                        out[row, col] = v


@cuda.jit
def gemm_bias_act_kernel(x, w, out, bias, has_bias, act):
    """Version 3 with the ``linear`` op's epilogue: ``out = act(x @ w + bias)``, the bias and the
    activation applied to each output in registers before its one store: a layer's forward in one
    kernel instead of a GEMM and a ``bias_act``, the same float32 operations in the same order.
    Its own kernel, so that the plain GEMM keeps its registers (the activations' code costs ~9)."""
    a_tile = cuda.shared.array((TILE, PADDED), float32)
    b_tile = cuda.shared.array((TILE, PADDED), float32)
    acc = cuda.local.array(ROWS_PER_THREAD, float32)
    m, n = out.shape
    k_dim = x.shape[1]
    for tile_m in range(cuda.blockIdx.y, (m + TILE - 1) // TILE, cuda.gridDim.y):
        for tile_n in range(cuda.blockIdx.x, (n + TILE - 1) // TILE, cuda.gridDim.x):
            row0, col0 = tile_m * TILE, tile_n * TILE
            blocked_tile(a_tile, b_tile, acc, x, w, 0, 0, row0, col0, m, n, k_dim)
            col = col0 + cuda.threadIdx.x
            if col < n:
                for i in range(ROWS_PER_THREAD):
                    row = row0 + cuda.threadIdx.y + i * LANES
                    if row < m:
                        v = acc[i]
                        if has_bias:
                            v += bias[col]
                        out[row, col] = activate(v, act)


@cuda.jit
def gemm_backward_kernel(x, dz, w, dw, dx, s, act, dx_bias, has_dx_bias):
    """The ``linear_backward`` op in one launch: a layer's two backward GEMMs side by side, with the
    layer below's activation derivative and bias gradient in the input gradient's epilogue.

    A 1-D grid of work items, each a block's: first the input gradient's 32-column strips, each
    all of its rows (``dx = (dz @ wᵀ) * act'(s)``, tile after tile down the strip, and its lanes'
    running column sums, so ``dx_bias = Σ_rows dx`` needs no second kernel and no atomics); then the
    weight gradient's 32x32 tiles (``dw = xᵀ @ dz``).  Both are version 3's tiles (``blocked_tile``)
    with the plain GEMM's transposes, so dx and dw are the plain GEMM's bits; each lane adds its rows
    in the order of ``act_bias_backward``'s (rows lane, lane+8, ...) and ``tile_sum`` adds the lanes
    as it does, so for a batch of up to 256 rows (its one chunk) dx_bias is that op's bits too.
    The strips come first: they are the long items (N/32 tiles each, the dw tiles one)."""
    a_tile = cuda.shared.array((TILE, PADDED), float32)
    b_tile = cuda.shared.array((TILE, PADDED), float32)
    sh = cuda.shared.array((ROW_LANES, TILE_COLS), float32)
    acc = cuda.local.array(ROWS_PER_THREAD, float32)
    n, k_in = dx.shape
    d = dz.shape[1]
    strips = (k_in + TILE - 1) // TILE
    tiles_n = (d + TILE - 1) // TILE
    items = strips + strips * tiles_n
    col_in_tile, lane = cuda.threadIdx.x, cuda.threadIdx.y
    for item in range(cuda.blockIdx.x, items, cuda.gridDim.x):
        if item < strips:                                   # dx[:, col0:col0 + 32], every row
            col0 = item * TILE
            col = col0 + col_in_tile
            lane_sum = F0
            for row0 in range(0, n, TILE):
                blocked_tile(a_tile, b_tile, acc, dz, w, 0, 1, row0, col0, n, k_in, d)  # dz @ wᵀ
                if col < k_in:
                    for i in range(ROWS_PER_THREAD):
                        row = row0 + lane + i * LANES
                        if row < n:
                            v = act_grad(acc[i], s[row, col], act)
                            dx[row, col] = v
                            lane_sum += v
            if has_dx_bias:
                tile_sum(sh, lane_sum, dx_bias, 0, col, k_in)  # dx_bias is (1, K)
        else:                                               # a 32x32 tile of dw = xᵀ @ dz
            t = item - strips
            row0, col0 = (t // tiles_n) * TILE, (t % tiles_n) * TILE
            blocked_tile(a_tile, b_tile, acc, x, dz, 1, 0, row0, col0, k_in, d, n)
            col = col0 + col_in_tile
            if col < d:
                for i in range(ROWS_PER_THREAD):
                    row = row0 + lane + i * LANES
                    if row < k_in:
                        dw[row, col] = acc[i]


def launch_config(m: int, n: int, max_blocks: int | None = None):
    """(grid, block) for an (m, n) output: N tiles on grid x, M tiles on grid y (≤ 65535)."""
    y_limit = MAX_GRID_YZ if max_blocks is None else min(max_blocks, MAX_GRID_YZ)
    return (clamp_grid(cdiv(n, TILE), max_blocks), clamp_grid(cdiv(m, TILE), y_limit)), (TILE, LANES)


def tiled_config(m: int, n: int, max_blocks: int | None = None):
    """(grid, block) of versions 1 and 2: a 16x16 block per 16x16 tile of out (grid-strided)."""
    y_limit = MAX_GRID_YZ if max_blocks is None else min(max_blocks, MAX_GRID_YZ)
    return (clamp_grid(cdiv(n, SMALL), max_blocks), clamp_grid(cdiv(m, SMALL), y_limit)), (SMALL, SMALL)


def _flags(a, b, out, trans_a, trans_b, accumulate):
    return a, b, out, np.int32(trans_a), np.int32(trans_b), np.int32(accumulate)


def _plan_naive(ctx, a, b, out, trans_a, trans_b, accumulate):
    return [("gemm_naive", gemm_naive_kernel, *tiled_config(*out.shape, ctx.max_blocks),
             _flags(a, b, out, trans_a, trans_b, accumulate))]


def _plan_tiled(ctx, a, b, out, trans_a, trans_b, accumulate):
    return [("gemm_tiled", gemm_tiled_kernel, *tiled_config(*out.shape, ctx.max_blocks),
             _flags(a, b, out, trans_a, trans_b, accumulate))]


def _plan_blocked(ctx, a, b, out, trans_a, trans_b, accumulate):
    return [("gemm", gemm_kernel, *launch_config(*out.shape, ctx.max_blocks),
             _flags(a, b, out, trans_a, trans_b, accumulate))]


def linear_plan(ctx, x, w, bias, act, out):
    """The ``linear`` op's one launch, ``out = act(x @ w + bias)``: version 3 with its epilogue."""
    return [("gemm_bias_act", gemm_bias_act_kernel, *launch_config(*out.shape, ctx.max_blocks),
             (x, w, out, ctx.workspace(("gemm", "no_bias"), (1,)) if bias is None else bias,
              np.int32(bias is not None), np.int32(ACT_CODES[act])))]


def backward_config(n: int, k: int, d: int, max_blocks: int | None = None):
    """(grid, block) of ``gemm_backward_kernel`` for a layer of K inputs and D outputs: one block
    per work item (K/32 strips of dx, (K/32)(D/32) tiles of dw), grid-strided past ``max_blocks``."""
    strips = cdiv(k, TILE)
    return clamp_grid(strips + strips * cdiv(d, TILE), max_blocks), (TILE, LANES)


def linear_backward_plan(ctx, x, dz, w, dw, dx, s, act, dx_bias):
    """The ``linear_backward`` op's one launch (``gemm_backward_kernel``)."""
    n, k = dx.shape
    bias = ctx.workspace(("gemm", "no_dx_bias"), (1, 1)) if dx_bias is None else dx_bias.reshape(1, k)
    return [("gemm_backward", gemm_backward_kernel, *backward_config(n, k, dz.shape[1], ctx.max_blocks),
             (x, dz, w, dw, dx, x if s is None else s, np.int32(ACT_CODES[act]), bias,  # (identity reads no s)
              np.int32(dx_bias is not None)))]


#: The versions of this family's op, in the order of its record (cuBLAS is the built-in beside them).
VERSIONS = {"gemm": (
    Version("naive", "one thread per output from global memory: 2 loads per multiply-add", _plan_naive),
    Version("tiled", "16x16 shared-memory tiles: each loaded element used 16 times", _plan_tiled),
    Version("blocked", "32x32 tiles, 4 outputs per thread: 32x reuse, a shared read serves 4 FMAs",
            _plan_blocked),
)}

SIGNATURES = [void(float32[:, ::1], float32[:, ::1], float32[:, ::1], int32, int32, int32)]
SIGNATURES_BACKWARD = [void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[:, ::1],
                            float32[:, ::1], int32, float32[:, ::1], int32)]
SIGNATURES_EPILOGUE = [void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[::1], int32, int32)]

KERNELS = (
    KernelSpec("gemm_naive", gemm_naive_kernel, tuple(SIGNATURES), SMALL * SMALL, 0, "gemm"),
    KernelSpec("gemm_tiled", gemm_tiled_kernel, tuple(SIGNATURES), SMALL * SMALL, 2 * 4 * SMALL * SMALL_PADDED, "gemm"),
    KernelSpec("gemm", gemm_kernel, tuple(SIGNATURES), TILE * LANES, 2 * 4 * TILE * PADDED, "gemm"),
    KernelSpec("gemm_bias_act", gemm_bias_act_kernel, tuple(SIGNATURES_EPILOGUE), TILE * LANES,
               2 * 4 * TILE * PADDED, "linear"),
    KernelSpec("gemm_backward", gemm_backward_kernel, tuple(SIGNATURES_BACKWARD), TILE * LANES,
               2 * 4 * TILE * PADDED + 4 * ROW_LANES * TILE_COLS, "linear_backward"),
)
