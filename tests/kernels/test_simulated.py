"""The kernels in Numba's CUDA simulator: paths the conformance tests do not reach.

Full 256-thread blocks on rows wider than a block, grids smaller than the problem
(grid-stride loops over rows and GEMM tiles), and a check that every launch the
backend makes has argument types that are one of its kernel's declared signatures,
so the PTX tier compiles exactly what runs.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

from gpunn.backend import NumpyBackend
from gpunn.backend.ops import OPS
from gpunn.env import simulator_on
from gpunn.ptx import kernel_specs

pytestmark = pytest.mark.cudasim

REF = NumpyBackend()


@pytest.fixture
def sim(new_backend):
    return lambda **options: new_backend("cuda-sim", **options)


def record(be):
    """Attach a hook that records every launch; returns the list it fills."""
    launches = []

    def hook(launch, run):
        launches.append(launch)
        run()

    be.launch_hooks.append(hook)
    return launches


def every_op(be, rng):
    """Call each op once, in each variant that changes what is launched."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    x, w, b = f(5, 7), f(7, 3), f(3)
    t = np.array([0, 2, 1, 2, 0], np.int32)
    out, g = np.empty((5, 3), np.float32), np.empty((5, 3), np.float32)
    be.gemm(x, w, out)
    be.gemm(x, out, np.empty((7, 3), np.float32), trans_a=True)
    be.gemm(out, w, np.empty((5, 7), np.float32), trans_b=True, accumulate=True)
    be.linear(x, w, b, "relu", out)  # gpunn's GEMM with its epilogue (the simulator's options: gemm="numba")
    be.bias_act(out, b, "relu", out)
    be.linear_backward(x, g, w, np.empty_like(w), np.empty_like(x), x, "relu", np.empty(7, np.float32))
    be.bias_act(out, None, "sigmoid", out)
    be.act_backward(out, g, "tanh", g)
    be.bias_grad(g, np.empty(3, np.float32))
    be.bias_grad(f(600, 3), np.empty(3, np.float32))  # two stages
    be.act_bias_backward(out, g, "relu", np.empty_like(g), np.empty(3, np.float32))
    be.softmax(out, g)
    be.softmax_backward(g, out, out)
    loss = np.zeros(1, np.float32)
    be.softmax_cross_entropy(out, t, g, loss)
    be.mse(out, t, g, loss, accumulate=True)
    be.count_correct(out, t, np.zeros(1, np.int32))
    be.sgd_update(w, w.copy(), None, 0.1)
    be.sgd_update(w, w.copy(), np.zeros_like(w), 0.1, 0.9, 1e-4, True)
    be.sgd_update(w, w.copy(), None, np.array([0.1], np.float32))  # the rate read on the device
    cursor = np.array([1, 0], np.int32)
    be.gather_batch(x, t, np.arange(5, dtype=np.int32), cursor, np.empty((3, 7), np.float32), np.empty(3, np.int32))
    be.advance_step(cursor, 3, np.ones(4, np.float32), np.empty(1, np.float32))
    be.next_batch(x, t, np.arange(5, dtype=np.int32), np.array([0, 0], np.int32), np.ones(4, np.float32),
                  np.empty(1, np.float32), np.empty((3, 7), np.float32), np.empty(3, np.int32))
    step = np.zeros(1, np.int32)
    be.count_step(step)
    m, v = np.zeros_like(w), np.zeros_like(w)
    be.adam_update(w, w.copy(), m, v, 1e-3, step)
    be.adam_update(w, w.copy(), m, v, np.array([1e-3], np.float32), step, weight_decay=0.01, decoupled=True)
    be.dropout(x, np.empty_like(x), 0.3, 7, step)
    be.dropout_backward(x, np.empty_like(x), 0.3, 7, step)
    params = f(7 * 4 + 4 + 4 * 3 + 3)  # a 7-4-3 narrow network, with momentum
    be.narrow_step(x, t, np.arange(5, dtype=np.int32), np.array([0, 0], np.int32), np.ones(4, np.float32),
                   np.ones(1, np.float32), params, np.empty_like(params), np.zeros_like(params), (7, 4, 3),
                   ("sigmoid", "identity"), (0, 28, 32, 44), "cross-entropy", 5, np.zeros(1, np.float32),
                   np.zeros(1, np.int32), 0.9)
    versioned = {  # each kernel version of each versioned op, with each argument that changes its launches
        "gemm": lambda: (be.gemm(x, w, out), be.gemm(x, out, np.empty((7, 3), np.float32), trans_a=True)),
        "softmax": lambda: be.softmax(out, g),
        "softmax_cross_entropy": lambda: (be.softmax_cross_entropy(out, t, g, loss),
                                          be.softmax_cross_entropy(out, t, g, loss, correct=np.zeros(1, np.int32),
                                                                   bias_grad=np.zeros(out.shape[1], np.float32))),
    }
    assert set(versioned) == set(versioned_ops())
    for op, call in versioned.items():
        for version in OPS[op].versions:
            be.use_version(op, version)
            call()


def versioned_ops():
    from gpunn.backend.cuda_backend import versioned_ops

    return versioned_ops()


def test_every_launch_matches_a_declared_signature(sim):
    specs = {spec.name: spec for _, spec in kernel_specs()}
    be = sim()
    launches = record(be)
    every_op(be, np.random.default_rng(0))
    assert {launch.name for launch in launches} == set(specs)  # every kernel was launched
    for launch in launches:
        spec = specs[launch.name]
        assert launch.kernel is spec.kernel
        types = tuple(numba.typeof(a) for a in launch.args)
        assert types in [sig.args for sig in spec.signatures], f"{launch.name} launched with {types}"


def test_launch_hooks_wrap_each_launch_in_order(sim):
    be = sim()
    events = []

    def outer(launch, run):
        events.append(("outer", launch.name))
        run()
        events.append(("outer done", launch.name))

    def inner(launch, run):
        events.append(("inner", launch.name, launch.grid, launch.block))
        run()

    be.launch_hooks += [outer, inner]
    x = np.ones((3, 5), np.float32)
    be.softmax(x, x)
    assert events == [("outer", "softmax_forward"), ("inner", "softmax_forward", 3, 32), ("outer done", "softmax_forward")]
    np.testing.assert_allclose(x, 0.2, rtol=1e-6)


def test_full_blocks_on_rows_wider_than_a_block(sim):
    be = sim(threads=256)
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((2, 1500)) * 5).astype(np.float32)
    z[1, 1400] = 1e4
    t = np.array([7, 1400], np.int32)
    launches = record(be)
    got = {name: np.full(z.shape if name == "grad" else 1, np.nan, np.float32) for name in ("grad", "loss")}
    want = {name: a.copy() for name, a in got.items()}
    be.softmax_cross_entropy(z, t, got["grad"], got["loss"])
    REF.softmax_cross_entropy(z, t, want["grad"], want["loss"])
    assert launches[0].block == 256
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7)
    hits = np.zeros(1, np.int32)
    be.count_correct(z, t, hits)
    assert hits[0] == (np.argmax(z, axis=1) == t).sum()


def test_one_block_strides_over_every_row(sim):
    be = sim(max_blocks=1)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 40)).astype(np.float32)
    out, want = np.empty_like(x), np.empty_like(x)
    launches = record(be)
    be.softmax(x, out)
    REF.softmax(x, want)
    assert launches[0].grid == 1
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-7)


def test_gemm_one_block_loops_over_every_tile(sim):
    be = sim(max_blocks=1)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 65)).astype(np.float32)  # op(a) = aᵀ: (65, 40)
    b = rng.standard_normal((70, 40)).astype(np.float32)  # op(b) = bᵀ: (40, 70)
    out = np.empty((65, 70), np.float32)
    launches = record(be)
    be.gemm(a, b, out, trans_a=True, trans_b=True)
    assert launches[0].grid == (1, 1)
    np.testing.assert_allclose(out, a.T @ b.T, rtol=1e-5, atol=1e-5)


def test_workspaces_are_allocated_once(sim):
    be = sim()
    rng = np.random.default_rng(4)
    z = rng.standard_normal((7, 10)).astype(np.float32)
    t = rng.integers(0, 10, 7).astype(np.int32)
    g, loss = np.empty_like(z), np.zeros(1, np.float32)
    be.softmax_cross_entropy(z, t, g, loss)
    be.bias_grad(np.ones((600, 3), np.float32), np.empty(3, np.float32))
    before = dict(be._ws)
    be.softmax_cross_entropy(z, t, g, loss, accumulate=True)
    be.bias_grad(np.ones((600, 3), np.float32), np.empty(3, np.float32))
    assert be._ws.keys() == before.keys() and all(be._ws[k] is before[k] for k in before)


# ---------------------------------------------------------------------------- the simulator's shared arrays
from numba import cuda, float32  # noqa: E402 - below the helpers that use numba by its package name


@cuda.jit
def _two_shared_sums(x, out):
    a = cuda.shared.array(64, float32)
    b = cuda.shared.array(64, float32)
    tid = cuda.threadIdx.x
    a[tid] = x[tid]
    b[tid] = 2 * x[tid]
    cuda.syncthreads()
    if tid == 0:
        sa = float32(0)
        sb = float32(0)
        for i in range(64):
            sa += a[i]
            sb += b[i]
        out[0] = sa
        out[1] = sb


@pytest.mark.skipif(not simulator_on(), reason="the CUDA simulator is off in this run")
def test_a_blocks_threads_share_its_shared_arrays_however_threads_switch():
    """The root of a failure seen only on loaded machines (the simulator's shared arrays, made
    without a lock: see kernels/simulator.py). A thread switch at almost every bytecode makes
    the race likely in every launch: before the fix, about 2 launches in 100 summed wrong."""
    import sys

    from gpunn.kernels import launch  # noqa: F401 - applies the fix, as every kernel family does

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        wrong = []
        for n in range(100):
            x = np.arange(n, n + 64, dtype=np.float32)  # new values each launch: stale memory cannot pass
            out = np.zeros(2, np.float32)
            _two_shared_sums[1, 64](x, out)
            if tuple(out) != (x.sum(), 2 * x.sum()):
                wrong.append((n, tuple(out)))
    finally:
        sys.setswitchinterval(interval)
    assert wrong == [], f"{len(wrong)} of 100 launches summed memory other threads did not write: {wrong[:3]}"
