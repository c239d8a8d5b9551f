"""Launch configurations respect the hardware limits at any size; every op has a kernel.

Every kernel family's ``launch_config`` is asked for extreme shapes (a batch of 10⁶
rows, rows of 10⁵ columns, and their mixes); each answer must be a legal launch
(≤ 1024 threads per block, grid y/z ≤ 65535, static shared memory ≤ 48 KiB), and
the kernel's loops must cover the whole problem from that grid.
"""
from __future__ import annotations

import pytest

from gpunn.backend import ops
from gpunn.kernels import (
    act_backward,
    batch,
    bias_act,
    bias_grad,
    count_correct,
    gemm,
    launch,
    mse,
    reduce,
    sgd,
    softmax,
    softmax_cross_entropy,
)
from gpunn.kernels.launch import (
    MAX_GRID_X,
    MAX_GRID_YZ,
    MAX_STATIC_SHARED_BYTES,
    ROW_THREADS,
    check_launch,
)
from gpunn.ptx import kernel_specs

EXTREMES = [(1, 1), (10**6, 1), (1, 10**5), (10**6, 10), (10**6, 10**5), (60_000, 784), (3 * 10**9, 1)]
ROW_MODULES = (softmax, softmax_cross_entropy, mse, count_correct, batch)
ELEMENTWISE_MODULES = (bias_act, act_backward)


@pytest.mark.parametrize("n, d", EXTREMES, ids=str)
def test_row_kernels_one_block_per_row_within_limits(n, d):
    for module in ROW_MODULES:
        grid, block = module.launch_config(n, d)
        check_launch(grid, block, 4 * ROW_THREADS * 2)
        assert grid == min(n, MAX_GRID_X)  # blocks beyond the grid limit grid-stride over rows
        assert block & (block - 1) == 0 and 32 <= block <= ROW_THREADS
        assert block >= min(d, ROW_THREADS)  # narrow rows get a small block, wide ones block-stride


@pytest.mark.parametrize("n, d", EXTREMES, ids=str)
def test_elementwise_kernels_cover_every_element(n, d):
    for module in ELEMENTWISE_MODULES:
        grid, block = module.launch_config(n, d)
        check_launch(grid, block)
        assert grid * block >= n * d or grid == MAX_GRID_X  # else the grid-stride loop covers it
    grid, block = sgd.launch_config(n * d)
    check_launch(grid, block)


@pytest.mark.parametrize("n, d", EXTREMES, ids=str)
def test_bias_grad_chunks_cover_all_rows_within_limits(n, d):
    stage1, stage2, (chunks, rows_per_chunk) = bias_grad.launch_config(n, d)
    check_launch(*stage1, 4 * bias_grad.TILE_COLS * bias_grad.ROW_LANES)
    assert stage1[0][1] == chunks <= MAX_GRID_YZ
    assert chunks * rows_per_chunk >= n > (chunks - 1) * rows_per_chunk  # no empty chunk
    assert chunks * d <= max(bias_grad.PARTIAL_BUDGET, d)  # the partial-sum workspace stays bounded
    if chunks > 1:
        check_launch(*stage2)
    else:
        assert stage2 is None


@pytest.mark.parametrize("m, n", [(1, 1), (10**6, 10), (10**7, 10**5), (10, 10**7)], ids=str)
def test_gemm_grid_y_stays_within_65535(m, n):
    (gx, gy), block = gemm.launch_config(m, n)
    check_launch((gx, gy), block, 2 * 4 * gemm.TILE * gemm.PADDED)
    assert gx == launch.cdiv(n, gemm.TILE)
    assert gy == min(launch.cdiv(m, gemm.TILE), MAX_GRID_YZ)  # beyond: the kernel loops over tile rows


def test_advance_step_is_one_thread():
    assert batch.advance_config() == (1, 1)


def test_finish_loss_is_one_block():
    grid, block = reduce.finish_config()
    check_launch(grid, block, 4 * ROW_THREADS)
    assert grid == 1


def test_max_blocks_caps_every_grid():
    assert softmax.launch_config(10**6, 10, max_blocks=8)[0] == 8
    assert bias_act.launch_config(10**6, 10, max_blocks=8)[0] == 8
    assert gemm.launch_config(10**4, 10**4, max_blocks=8)[0] == (8, 8)
    assert bias_grad.launch_config(10, 10**5, max_blocks=8)[0][0] == (8, 1)


def test_check_launch_rejects_illegal_configurations():
    for grid, block, shared in [(1, 1025, 0), ((1, 65536), 32, 0), (2**31, 32, 0), (1, (32, 32, 2), 0),
                                (1, 32, MAX_STATIC_SHARED_BYTES + 1), (0, 32, 0)]:
        with pytest.raises(ValueError):
            check_launch(grid, block, shared)
    with pytest.raises(ValueError, match="power of two"):
        launch.row_threads(10, max_threads=48)


def test_every_kernel_declares_legal_blocks_and_shared_memory():
    names = set()
    for _, spec in kernel_specs():
        check_launch(1, spec.block, spec.shared_bytes)
        assert spec.signatures and spec.op
        names.add(spec.name)
    assert len(names) == len(kernel_specs())  # names are unique (they key the profiler's records)


def test_every_op_has_a_kernel_and_every_kernel_an_op():
    """A KernelSpec names the op it implements; what the op means and costs is its record in
    gpunn.backend.ops (the kernels carry no cost of their own)."""
    ops_named = {op.strip() for _, spec in kernel_specs() for op in spec.op.split(",")}
    assert ops_named == set(ops.OPS)  # every op of the contract has a kernel
