"""Conformance: every op on every backend against the NumPy reference backend (the truth).

Each test states its inputs and the op; ``check`` runs it on the backend under test
and on the reference, each on fresh copies, and compares every array afterwards
(outputs, and inputs too, so an op that clobbers an input it should not is caught)
with per-dtype tolerances.  Outputs start as NaN, so an element a kernel forgets to
write fails.  Shapes are irregular (1, 7, 31, 33, 37, 257) and include rows wider than
a block (1100 columns against the simulator's 32-thread and a GPU's 256-thread
blocks).  The ``backend`` fixture (tests/conftest.py) runs each test on numpy,
cuda-sim and, on a machine with a GPU, cuda.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from gpunn.backend import NumpyBackend
from gpunn.backend.ops import ACTIVATIONS, OPS
from gpunn.layers import Dense, Sequential

REF = NumpyBackend()

#: Tolerances per dtype: float32 relative error, and an absolute floor scaled by the
#: largest reference magnitude (sums of many terms); integers must match exactly.
TOLERANCE = {np.dtype(np.float32): (2e-5, 2e-6), np.dtype(np.int32): (0, 0)}

ROW_SHAPES = [(1, 1), (7, 31), (31, 33), (33, 7), (2, 257), (3, 1100)]
#: the kernel versions' shapes: one element, rows narrower and wider than a block, and more rows (9)
#: than the simulated grid has blocks (8)
VERSION_SHAPES = [(1, 1), (9, 7), (2, 257), (3, 1100)]
ELEMENTWISE_SHAPES = [(1, 1), (7, 31), (37, 33), (2, 1100)]  # 1,221 elements: several passes of a grid


def rng_for(*key):
    """A generator seeded by the test's own key (not hash(): that changes per process)."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def normal(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def labels_for(rng, n, c):
    return rng.integers(0, c, n).astype(np.int32)


def nan(shape):
    return np.full(shape, np.nan, np.float32)


def run(be, op, arrays):
    """``op(be, device_arrays)`` on copies of ``arrays``; every array back on the host."""
    dev = {name: be.asarray(a.copy()) for name, a in arrays.items()}
    op(be, dev)
    return {name: be.to_numpy(a) for name, a in dev.items()}


def check(be, op, **arrays):
    """Run ``op`` on ``be`` and on the reference and compare every array; returns be's results."""
    got, want = run(be, op, arrays), run(REF, op, arrays)
    for name in arrays:
        g, w = got[name], want[name]
        assert g.dtype == w.dtype and g.shape == w.shape, name
        rtol, atol = TOLERANCE[w.dtype]
        finite = w[np.isfinite(w)] if w.dtype.kind == "f" else w
        scale = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol * scale, err_msg=f"{be.describe()}: {name}")
    return got


# ---------------------------------------------------------------------------- gemm
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_transposes_and_accumulate(backend, trans_a, trans_b, accumulate):
    m, k, n = 33, 37, 31  # every tile edge is ragged
    rng = rng_for("gemm", trans_a, trans_b, accumulate)
    a = normal(rng, (k, m) if trans_a else (m, k))
    b = normal(rng, (n, k) if trans_b else (k, n))
    out = normal(rng, (m, n)) if accumulate else nan((m, n))
    check(backend, lambda be, d: be.gemm(d["a"], d["b"], d["out"], trans_a, trans_b, accumulate), a=a, b=b, out=out)


@pytest.mark.parametrize("version", OPS["gemm"].versions)
@pytest.mark.parametrize("trans_a, trans_b, accumulate", [(False, False, False), (True, False, True),
                                                          (False, True, True), (True, True, False)])
def test_gemm_versions(versioned, version, trans_a, trans_b, accumulate):
    """Every kernel version of GEMM (the conformance of the one the backend uses is above)."""
    rng = rng_for("gemm-version", trans_a, trans_b)
    m, k, n = 33, 40, 17  # more tiles than the simulated grid's 8 blocks along M and N
    a = normal(rng, (k, m) if trans_a else (m, k))
    b = normal(rng, (n, k) if trans_b else (k, n))
    check(versioned("gemm", version), lambda be, d: be.gemm(d["a"], d["b"], d["out"], trans_a=trans_a,
                                                              trans_b=trans_b, accumulate=accumulate),
          a=a, b=b, out=normal(rng, (m, n)))


@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (7, 1, 33), (1, 257, 7), (31, 33, 1)])
def test_gemm_irregular_shapes(backend, m, k, n):
    rng = rng_for("gemm", m, k, n)
    check(backend, lambda be, d: be.gemm(d["a"], d["b"], d["out"]), a=normal(rng, (m, k)), b=normal(rng, (k, n)),
          out=nan((m, n)))


def test_gemm_default_blas_path(backend_with):
    """The cuda backend's default GEMM (cuBLAS; NumPy in the simulator) with each transpose."""
    be = backend_with(gemm="cublas")
    rng = rng_for("blas")
    for trans_a, trans_b, accumulate in [(False, False, False), (True, False, True), (False, True, False)]:
        a = normal(rng, (7, 5) if trans_a else (5, 7))
        b = normal(rng, (3, 7) if trans_b else (7, 3))
        check(be, lambda be, d: be.gemm(d["a"], d["b"], d["out"], trans_a, trans_b, accumulate), a=a, b=b,
              out=normal(rng, (5, 3)))


# ---------------------------------------------------------------------------- bias + activation
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bias_act(backend, act, shape):
    rng = rng_for("bias_act", act, shape)
    x = normal(rng, shape, 3.0)
    x.flat[:: 5] = np.float32(1e4) * np.sign(x.flat[:: 5])  # saturating sigmoid/tanh, no overflow
    check(backend, lambda be, d: be.bias_act(d["x"], d["b"], act, d["out"]), x=x, b=normal(rng, shape[1]),
          out=nan(shape))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bias_act_without_bias_in_place(backend, act):
    x = normal(rng_for("bias_act_inplace", act), (33, 7), 3.0)
    check(backend, lambda be, d: be.bias_act(d["x"], None, act, d["x"]), x=x)


@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_act_backward(backend, act, shape):
    rng = rng_for("act_backward", act, shape)
    z = normal(rng, shape, 2.0)
    y = np.empty_like(z)
    REF.bias_act(z, None, act, y)  # a saved output: relu's has zeros, sigmoid's lies in (0, 1)
    check(backend, lambda be, d: be.act_backward(d["y"], d["dy"], act, d["out"]), y=y, dy=normal(rng, shape),
          out=nan(shape))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_act_backward_in_place(backend, act):
    rng = rng_for("act_backward_inplace", act)
    y = np.empty((7, 33), np.float32)
    REF.bias_act(normal(rng, y.shape), None, act, y)
    check(backend, lambda be, d: be.act_backward(d["y"], d["dy"], act, d["dy"]), y=y, dy=normal(rng, y.shape))


# ---------------------------------------------------------------------------- bias gradient
@pytest.mark.parametrize("shape", [(1, 1), (7, 31), (257, 33), (33, 257), (600, 5), (3, 1100)], ids=str)
def test_bias_grad(backend, shape):
    # (600, 5) splits the rows into three chunks: the two-stage path.
    dy = normal(rng_for("bias_grad", shape), shape)
    check(backend, lambda be, d: be.bias_grad(d["dy"], d["out"]), dy=dy, out=nan(shape[1]))


@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 1), (7, 31), (128, 16), (600, 5), (3, 1100)], ids=str)
def test_act_bias_backward(backend, act, shape):
    """The fused backward equals act_backward then bias_grad; (600, 5) takes the two-stage path."""
    rng = rng_for("act_bias_backward", act, shape)
    y = np.empty(shape, np.float32)
    REF.bias_act(normal(rng, shape), None, act, y)
    check(backend, lambda be, d: be.act_bias_backward(d["y"], d["dy"], act, d["dz"], d["db"]),
          y=y, dy=normal(rng, shape), dz=nan(shape), db=nan(shape[1]))


def test_act_bias_backward_in_place(backend):
    rng = rng_for("act_bias_backward_inplace")
    y = np.empty((7, 33), np.float32)
    REF.bias_act(normal(rng, y.shape), None, "sigmoid", y)
    check(backend, lambda be, d: be.act_bias_backward(d["y"], d["dy"], "sigmoid", d["dy"], d["db"]),
          y=y, dy=normal(rng, y.shape), db=nan(33))


# ---------------------------------------------------------------------------- softmax
def logits(rng, shape, extreme=True):
    """Normal logits, with ±1e4 in some rows: any exp() without the max shift overflows."""
    z = normal(rng, shape, 3.0)
    if extreme and shape[0] > 1:
        z[0, :: 2] = 1e4
        z[-1, :] = -1e4
        z[-1, shape[1] // 2] = 1e4
    return z


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_softmax(backend, shape):
    x = logits(rng_for("softmax", shape), shape)
    got = check(backend, lambda be, d: be.softmax(d["x"], d["out"]), x=x, out=nan(shape))
    np.testing.assert_allclose(got["out"].sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("version", OPS["softmax"].versions)
@pytest.mark.parametrize("shape", VERSION_SHAPES, ids=str)
def test_softmax_versions(versioned, version, shape):
    x = logits(rng_for("softmax", shape), shape)
    be = versioned("softmax", version)
    check(be, lambda be, d: be.softmax(d["x"], d["out"]), x=x, out=nan(shape))
    check(be, lambda be, d: be.softmax(d["x"], d["x"]), x=x)  # in place


def test_softmax_in_place(backend):
    x = logits(rng_for("softmax_inplace"), (7, 33))
    check(backend, lambda be, d: be.softmax(d["x"], d["x"]), x=x)


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_softmax_backward(backend, shape):
    rng = rng_for("softmax_backward", shape)
    y = np.empty(shape, np.float32)
    REF.softmax(logits(rng, shape), y)
    check(backend, lambda be, d: be.softmax_backward(d["y"], d["dy"], d["out"]), y=y, dy=normal(rng, shape),
          out=nan(shape))


def test_softmax_backward_in_place(backend):
    rng = rng_for("softmax_backward_inplace")
    y = np.empty((5, 33), np.float32)
    REF.softmax(logits(rng, y.shape), y)
    check(backend, lambda be, d: be.softmax_backward(d["y"], d["dy"], d["dy"]), y=y, dy=normal(rng, y.shape))


# ---------------------------------------------------------------------------- losses
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
def test_softmax_cross_entropy(backend, shape, accumulate):
    rng = rng_for("xent", shape)
    z = logits(rng, shape)
    loss = np.array([2.5 if accumulate else np.nan], np.float32)
    got = check(backend, lambda be, d: be.softmax_cross_entropy(d["z"], d["t"], d["grad"], d["loss"], accumulate),
                z=z, t=labels_for(rng, shape[0], shape[1]), grad=nan(shape), loss=loss)
    assert np.isfinite(got["loss"]).all() and np.isfinite(got["grad"]).all()


@pytest.mark.parametrize("shape", VERSION_SHAPES, ids=str)
def test_softmax_cross_entropy_counts_the_correct_rows(backend, shape):
    """With ``correct``: the count of ``count_correct`` on the logits, even when grad overwrites them."""
    rng = rng_for("xent-count", shape)
    z, t = logits(rng, shape), labels_for(rng, shape[0], shape[1])
    t[: shape[0] // 2] = np.argmax(z[: shape[0] // 2], axis=1)  # some hits whatever C is
    got = check(backend, lambda be, d: be.softmax_cross_entropy(d["z"], d["t"], d["z"], d["loss"],
                                                                correct=d["hits"]),
                z=z, t=t, loss=nan(1), hits=np.array([3], np.int32))
    assert got["hits"][0] == 3 + np.count_nonzero(np.argmax(z, axis=1) == t)


@pytest.mark.parametrize("shape", VERSION_SHAPES, ids=str)
def test_softmax_cross_entropy_sums_the_bias_gradient(backend, shape):
    """With ``bias_grad``: the gradient's row sum, as ``bias_grad`` of it would give, in place too."""
    rng = rng_for("xent-db", shape)
    z, t = logits(rng, shape), labels_for(rng, shape[0], shape[1])
    got = check(backend, lambda be, d: be.softmax_cross_entropy(d["z"], d["t"], d["z"], d["loss"],
                                                                bias_grad=d["db"]),
                z=z, t=t, loss=nan(1), db=nan(shape[1]))
    np.testing.assert_allclose(got["db"], got["z"].astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("version", OPS["softmax_cross_entropy"].versions)
@pytest.mark.parametrize("shape", VERSION_SHAPES, ids=str)
def test_softmax_cross_entropy_versions(versioned, version, shape):
    """Every version, with and without the count, out of place and in place.  ``two_kernels`` logs a
    probability, so it is held to moderate logits (its limit is the next test)."""
    rng = rng_for("xent-version", shape)
    z, t = logits(rng, shape, extreme=version != "two_kernels"), labels_for(rng, shape[0], shape[1])
    be = versioned("softmax_cross_entropy", version)
    check(be, lambda be, d: be.softmax_cross_entropy(d["z"], d["t"], d["grad"], d["loss"], True),
          z=z, t=t, grad=nan(shape), loss=np.array([2.5], np.float32))
    check(be, lambda be, d: be.softmax_cross_entropy(d["z"], d["t"], d["z"], d["loss"], correct=d["hits"]),
          z=z, t=t, loss=nan(1), hits=np.zeros(1, np.int32))
    check(be, lambda be, d: be.softmax_cross_entropy(d["z"], d["t"], d["z"], d["loss"], False, d["hits"], d["db"]),
          z=z, t=t, loss=nan(1), hits=np.zeros(1, np.int32), db=nan(shape[1]))


def test_two_kernels_loss_overflows_where_the_fused_versions_do_not(versioned):
    """The limit the module docstring states: p[t] underflows to 0 for a logit 1e4 below the max, and
    -log(0) is infinite on a GPU (the simulator runs Python's math.log, which raises instead)."""
    z = np.array([[1e4, 0.0, -1e4]], np.float32)
    t = np.array([2], np.int32)
    for version in OPS["softmax_cross_entropy"].versions:
        be = versioned("softmax_cross_entropy", version)
        d = {"z": be.asarray(z.copy()), "t": be.asarray(t), "grad": be.asarray(nan(z.shape)), "loss": be.asarray(nan(1))}
        if version == "two_kernels" and be.simulated:
            with pytest.raises(ValueError, match="math domain error"):
                be.softmax_cross_entropy(d["z"], d["t"], d["grad"], d["loss"])
            continue
        be.softmax_cross_entropy(d["z"], d["t"], d["grad"], d["loss"])
        loss = be.to_numpy(d["loss"])[0]
        assert (loss == np.inf) if version == "two_kernels" else loss == np.float32(2e4), (version, loss)


def test_softmax_cross_entropy_grad_overwrites_logits(backend):
    rng = rng_for("xent_inplace")
    z = logits(rng, (7, 33))
    check(backend, lambda be, d: be.softmax_cross_entropy(d["z"], d["t"], d["z"], d["loss"]), z=z,
          t=labels_for(rng, 7, 33), loss=nan(1))


@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
@pytest.mark.parametrize("accumulate", [False, True])
def test_mse(backend, shape, accumulate):
    rng = rng_for("mse", shape)
    loss = np.array([2.5 if accumulate else np.nan], np.float32)
    check(backend, lambda be, d: be.mse(d["y"], d["t"], d["grad"], d["loss"], accumulate),
          y=rng.random(shape, dtype=np.float32), t=labels_for(rng, shape[0], shape[1]), grad=nan(shape), loss=loss)


def test_mse_grad_overwrites_y(backend):
    rng = rng_for("mse_inplace")
    check(backend, lambda be, d: be.mse(d["y"], d["t"], d["y"], d["loss"]), y=rng.random((7, 33), dtype=np.float32),
          t=labels_for(rng, 7, 33), loss=nan(1))


def test_losses_and_count_over_many_rows(backend):
    """37 rows: more rows than the simulated grid has blocks (8), so every row kernel grid-strides."""
    rng = rng_for("many_rows")
    n, c = 37, 10
    z, t = logits(rng, (n, c)), labels_for(rng, n, c)

    def op(be, d):
        be.softmax_cross_entropy(d["z"], d["t"], d["grad"], d["loss"])
        be.mse(d["z"], d["t"], d["grad2"], d["loss2"])
        be.count_correct(d["z"], d["t"], d["hits"])

    check(backend, op, z=z, t=t, grad=nan((n, c)), loss=nan(1), grad2=nan((n, c)), loss2=nan(1),
          hits=np.zeros(1, np.int32))


# ---------------------------------------------------------------------------- SGD
SGD_SETTINGS = [  # (momentum, weight_decay, nesterov)
    (0.0, 0.0, False),
    (0.0, 1e-2, False),
    (0.9, 0.0, False),
    (0.9, 1e-2, False),
    (0.9, 0.0, True),
    (0.9, 1e-2, True),
]


@pytest.mark.parametrize("momentum, weight_decay, nesterov", SGD_SETTINGS)
@pytest.mark.parametrize("shape", [(33,), (7, 150)], ids=str)  # 1,050 elements: several blocks
def test_sgd_update(backend, shape, momentum, weight_decay, nesterov):
    rng = rng_for("sgd", shape, momentum, weight_decay, nesterov)
    arrays = {"p": normal(rng, shape), "g": normal(rng, shape), "v": normal(rng, shape, 0.1)}

    def op(be, d):
        for _ in range(3):  # momentum carries over between steps
            be.sgd_update(d["p"], d["g"], d["v"] if momentum else None, 0.05, momentum, weight_decay, nesterov)

    check(backend, op, **arrays)


@pytest.mark.parametrize("momentum, weight_decay, nesterov", SGD_SETTINGS)
def test_sgd_update_reads_the_rate_on_the_device(backend, momentum, weight_decay, nesterov):
    """lr as a one-element device array: the rate it holds when the op runs, changed between steps."""
    rng = rng_for("sgd-device-lr", momentum, weight_decay, nesterov)
    shape = (7, 150)
    arrays = {"p": normal(rng, shape), "g": normal(rng, shape), "v": normal(rng, shape, 0.1),
              "lr": np.array([0.05], np.float32)}

    def op(be, d):
        for rate in (0.05, 0.2, 0.0125):
            be.upload(np.array([rate], np.float32), d["lr"])
            be.sgd_update(d["p"], d["g"], d["v"] if momentum else None, d["lr"], momentum, weight_decay, nesterov)

    got = check(backend, op, **arrays)
    # and the same as passing the three rates as numbers
    p, v = arrays["p"].copy(), arrays["v"].copy()
    for rate in (0.05, 0.2, 0.0125):
        REF.sgd_update(p, arrays["g"], v if momentum else None, rate, momentum, weight_decay, nesterov)
    if backend.name == "numpy":  # the same arithmetic, so the same bits
        assert got["p"].tobytes() == p.tobytes()
    else:
        np.testing.assert_allclose(got["p"], p, rtol=2e-5, atol=2e-6)


# ---------------------------------------------------------------------------- the loop's state
@pytest.mark.parametrize("rows, width, start", [(1, 1, 0), (7, 31, 5), (33, 784, 64), (40, 1100, 0)], ids=str)
def test_gather_batch(backend, rows, width, start):
    rng = rng_for("gather", rows, width, start)
    n = 100
    order = rng.permutation(n).astype(np.int32)
    arrays = dict(x=normal(rng, (n, width)), y=labels_for(rng, n, 10), order=order,
                  cursor=np.array([start, 3], np.int32), xb=nan((rows, width)),
                  yb=np.full(rows, -1, np.int32))
    got = check(backend, lambda be, d: be.gather_batch(d["x"], d["y"], d["order"], d["cursor"], d["xb"], d["yb"]),
                **arrays)
    index = order[start:start + rows]
    assert got["xb"].tobytes() == arrays["x"][index].tobytes() and (got["yb"] == arrays["y"][index]).all()


def test_advance_step_walks_the_schedule(backend):
    table = np.array([0.5, 0.25, 0.125, 0.0625], np.float32)

    def op(be, d):
        for _ in range(5):  # past the end of the table: its last entry
            be.advance_step(d["cursor"], 128, d["table"], d["lr"])

    got = check(backend, op, cursor=np.array([256, 0], np.int32), table=table, lr=nan(1))
    assert got["cursor"].tolist() == [256 + 5 * 128, 5] and got["lr"][0] == table[-1]


@pytest.mark.parametrize("rows, width, start", [(1, 1, 0), (33, 784, 64), (40, 1100, 0)], ids=str)
def test_next_batch_gathers_then_sets_the_rate_and_moves_the_cursor(backend, rows, width, start):
    """Three steps' batches in a row (the simulated grid has 8 blocks: its last block to finish moves
    the cursor), each with its step's rate, the last one past the end of the table."""
    rng = rng_for("next_batch", rows, width, start)
    n, table = 200, np.array([0.5, 0.25, 0.125], np.float32)
    order = rng.permutation(n).astype(np.int32)
    arrays = dict(x=normal(rng, (n, width)), y=labels_for(rng, n, 10), order=order, table=table, lr=nan(1),
                  cursor=np.array([start, 1], np.int32), xb=nan((rows, width)), yb=np.full(rows, -1, np.int32))
    seen = []

    def op(be, d):
        for _ in range(3):
            be.next_batch(d["x"], d["y"], d["order"], d["cursor"], d["table"], d["lr"], d["xb"], d["yb"])
            seen.append((be.to_numpy(d["yb"]).copy(), float(be.to_numpy(d["lr"])[0])))

    got = check(backend, op, **arrays)
    assert got["cursor"].tolist() == [start + 3 * rows, 4]
    for i, (yb, lr) in enumerate(seen[:3]):  # this backend's (the reference's are seen[3:])
        assert (yb == arrays["y"][order[start + i * rows:start + (i + 1) * rows]]).all()
        assert lr == table[min(1 + i, 2)]
    assert got["xb"].tobytes() == arrays["x"][order[start + 2 * rows:start + 3 * rows]].tobytes()


def test_gather_batch_and_advance_step_check_their_arguments(backend):
    from gpunn.errors import ShapeError

    be = backend
    x, y = be.zeros((10, 3)), be.zeros((10,), np.int32)
    order, xb, yb = be.asarray(np.arange(10, dtype=np.int32)), be.zeros((4, 3)), be.zeros((4,), np.int32)
    with pytest.raises(ShapeError, match=r"gather_batch: cursor\[0\] = 8 leaves no room for 4 rows"):
        be.gather_batch(x, y, order, be.asarray(np.array([8, 0], np.int32)), xb, yb)
    bad = be.asarray(np.array([0, 1, 2, 12, 4, 5, 6, 7, 8, 9], np.int32))
    with pytest.raises(ShapeError, match=r"gather_batch: order\[3\] = 12 is outside 0..9"):
        be.gather_batch(x, y, bad, be.zeros((2,), np.int32), xb, yb)
    with pytest.raises(ShapeError, match="gather_batch: xb must have 3 columns"):
        be.gather_batch(x, y, order, be.zeros((2,), np.int32), be.zeros((4, 2)), yb)
    with pytest.raises(ShapeError, match=r"next_batch: cursor\[0\] = 8 leaves no room for 4 rows"):
        be.next_batch(x, y, order, be.asarray(np.array([8, 0], np.int32)), be.zeros((3,)), be.zeros((1,)), xb, yb)
    with pytest.raises(ShapeError, match="next_batch: lr_table is empty"):
        be.next_batch(x, y, order, be.zeros((2,), np.int32), be.zeros((0,)), be.zeros((1,)), xb, yb)
    with pytest.raises(ShapeError, match=r"next_batch: lr must have shape \(1,\)"):
        be.next_batch(x, y, order, be.zeros((2,), np.int32), be.zeros((3,)), be.zeros((2,)), xb, yb)
    with pytest.raises(ShapeError, match="advance_step: lr_table is empty"):
        be.advance_step(be.zeros((2,), np.int32), 1, be.zeros((0,)), be.zeros((1,)))
    with pytest.raises(ShapeError, match="advance_step: stride must be a non-negative int32"):
        be.advance_step(be.zeros((2,), np.int32), -1, be.zeros((3,)), be.zeros((1,)))
    with pytest.raises(ShapeError, match=r"sgd_update: lr must have shape \(1,\)"):
        be.sgd_update(be.zeros((3,)), be.zeros((3,)), None, be.zeros((2,)))


# ---------------------------------------------------------------------------- a dense layer's forward
@pytest.mark.parametrize("act", ["identity", "relu", "sigmoid", "gelu"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("n, k, d", [(1, 1, 1), (33, 37, 31), (5, 784, 10)], ids=str)
def test_linear(backend, act, with_bias, n, k, d):
    """``act(x @ w + bias)``: on gpunn's GEMM one kernel (its epilogue), on cuBLAS two; every tile
    edge ragged."""
    rng = rng_for("linear", act, with_bias, n, k, d)
    arrays = dict(x=normal(rng, (n, k)), w=normal(rng, (k, d), 1 / np.sqrt(k)), out=nan((n, d)))
    if with_bias:
        arrays["b"] = normal(rng, (d,))
    check(backend, lambda be, a: be.linear(a["x"], a["w"], a.get("b"), act, a["out"]), **arrays)


def test_linear_checks_its_arguments(backend):
    from gpunn.errors import ShapeError

    be = backend
    x, w, out = be.zeros((4, 3)), be.zeros((3, 2)), be.zeros((4, 2))
    with pytest.raises(ShapeError, match=r"linear: w must have 3 rows \(x's columns\), got shape \(2, 2\)"):
        be.linear(x, be.zeros((2, 2)), None, "relu", out)
    with pytest.raises(ShapeError, match="linear: out must have shape"):
        be.linear(x, w, None, "relu", be.zeros((4, 3)))
    with pytest.raises(ValueError, match="linear: unknown activation 'swish'"):
        be.linear(x, w, None, "swish", out)
    with pytest.raises(ShapeError, match="linear: out must not share memory with x"):
        be.linear(x, be.zeros((3, 3)), None, "relu", x)


# ---------------------------------------------------------------------------- a dense layer's backward
@pytest.mark.parametrize("act, with_bias", [("identity", False), ("identity", True), ("relu", True),
                                            ("sigmoid", False), ("gelu", True)])
@pytest.mark.parametrize("n, k, d", [(1, 1, 1), (70, 37, 31), (5, 40, 10)], ids=str)
def test_linear_backward(backend, act, with_bias, n, k, d):
    """``dw = xᵀ dz`` and ``dx = (dz wᵀ) * act'(s)`` with its row sum: on gpunn's GEMM one kernel
    (70 rows: three tiles down each strip; 37 inputs: a ragged second strip), on cuBLAS three."""
    rng = rng_for("linear_backward", act, with_bias, n, k, d)
    s = np.empty((n, k), np.float32)
    REF.bias_act(normal(rng, (n, k)), None, act, s)  # what the activation's backward reads
    arrays = dict(x=normal(rng, (n, k)), dz=normal(rng, (n, d)), w=normal(rng, (k, d), 1 / np.sqrt(d)),
                  dw=nan((k, d)), dx=nan((n, k)), s=s)
    if with_bias:
        arrays["db"] = nan(k)
    check(backend, lambda be, a: be.linear_backward(a["x"], a["dz"], a["w"], a["dw"], a["dx"],
                                                    None if act == "identity" else a["s"], act, a.get("db")),
          **arrays)


def test_linear_backward_checks_its_arguments(backend):
    from gpunn.errors import ShapeError

    be = backend
    x, dz, w, dx = be.zeros((4, 3)), be.zeros((4, 2)), be.zeros((3, 2)), be.zeros((4, 3))
    with pytest.raises(ShapeError, match=r"linear_backward: dz must have 4 rows \(x's\), got shape \(5, 2\)"):
        be.linear_backward(x, be.zeros((5, 2)), w, be.zeros((3, 2)), dx, None, "identity", None)
    with pytest.raises(ShapeError, match=r"linear_backward: dw must have shape \(3, 2\)"):
        be.linear_backward(x, dz, w, be.zeros((2, 3)), dx, None, "identity", None)
    with pytest.raises(ValueError, match=r"linear_backward: s \(what relu's backward reads\) is required"):
        be.linear_backward(x, dz, w, be.zeros((3, 2)), dx, None, "relu", None)
    with pytest.raises(ShapeError, match=r"linear_backward: dx_bias must have shape \(3,\)"):
        be.linear_backward(x, dz, w, be.zeros((3, 2)), dx, x, "relu", be.zeros((2,)))
    # an output that is an input (or a view of one) would be read by the kernel as it writes it
    with pytest.raises(ShapeError, match="linear_backward: dw must not share memory with w"):
        be.linear_backward(x, dz, w, w, dx, None, "identity", None)
    with pytest.raises(ShapeError, match="linear_backward: dx must not share memory with s"):
        be.linear_backward(x, dz, w, be.zeros((3, 2)), dx, dx, "relu", None)
    flat = be.zeros((4 * 3 + 3,))
    with pytest.raises(ShapeError, match="linear_backward: dx_bias must not share memory with x"):
        be.linear_backward(flat[:12].reshape(4, 3), dz, w, be.zeros((3, 2)), dx, None, "identity", flat[11:14])


# ---------------------------------------------------------------------------- the narrow step
NARROW_NETS = {  # widths, activations, loss, momentum, weight decay, Nesterov; rows of 120 examples
    "primer-like": ((13, 7, 5, 4), ("sigmoid", "tanh", "sigmoid"), "mse", 0.9, 1e-3, True),
    "widest-xent": ((9, 32, 3), ("relu", "identity"), "cross-entropy", 0.0, 0.0, False),
    "one-layer": ((37, 1), ("identity",), "mse", 0.5, 0.0, False),
    "four-layers": ((6, 3, 32, 2, 10), ("tanh", "relu", "sigmoid", "identity"), "cross-entropy", 0.9, 0.0, False),
}


@pytest.mark.parametrize("net", NARROW_NETS)
@pytest.mark.parametrize("rows", [1, 33])
def test_narrow_step(backend, net, rows):
    """Two whole steps (the second reads the cursor and rate the first left) from an irregular place
    in the order: the parameters, gradients, velocity, sums, cursor and rate of the ops it is."""
    widths, acts, loss, momentum, wd, nesterov = NARROW_NETS[net]
    rng = rng_for("narrow", net, rows)
    n = 120
    if net == "one-layer":  # packed with no gaps
        offsets, p = (0, widths[0] * widths[1]), widths[0] * widths[1] + widths[1]
    else:  # as a Sequential packs them: every array at a multiple of 16 floats, gaps between
        packed = Sequential([Dense(a, b, act, backend=REF) for a, b, act in zip(widths[:-1], widths[1:], acts)]).params
        offsets, p = packed.offsets, packed.flat.shape[0]
    arrays = dict(x=rng.random((n, widths[0]), dtype=np.float32), y=labels_for(rng, n, widths[-1]),
                  order=rng.permutation(n).astype(np.int32), cursor=np.array([5, 2], np.int32),
                  table=np.array([0.5, 0.3, 0.2, 0.1], np.float32), lr=np.array([0.2], np.float32),
                  params=normal(rng, (p,), 0.7), grads=nan(p), velocity=normal(rng, (p,), 0.1),
                  loss=np.array([1.5], np.float32), hits=np.array([3], np.int32))

    def two_steps(be, d):
        for _ in range(2):
            be.narrow_step(d["x"], d["y"], d["order"], d["cursor"], d["table"], d["lr"], d["params"], d["grads"],
                           d["velocity"] if momentum else None, widths, acts, offsets, loss, rows, d["loss"], d["hits"],
                           momentum, wd, nesterov)

    got = check(backend, two_steps, **arrays)
    assert list(got["cursor"]) == [5 + 2 * rows, 4] and got["lr"][0] == np.float32(0.1)


def test_narrow_step_checks_its_arguments(backend):
    from gpunn.errors import ShapeError

    be = backend
    x, y, order = be.zeros((10, 3)), be.zeros((10,), np.int32), be.asarray(np.arange(10, dtype=np.int32))
    cursor, table, lr, s, c = be.zeros((2,), np.int32), be.zeros((3,)), be.zeros((1,)), be.zeros((1,)), \
        be.zeros((1,), np.int32)
    p = be.zeros((3 * 4 + 4,))

    def step(widths=(3, 4), acts=("relu",), loss="mse", rows=4, params=p, cursor=cursor, offsets=(0, 12)):
        be.narrow_step(x, y, order, cursor, table, lr, params, params, None, widths, acts, offsets, loss, rows, s, c)

    step()  # the arguments below differ from these in one place each
    for kwargs, error, message in (
            (dict(widths=(3, 33), params=be.zeros((3 * 33 + 33,)), offsets=(0, 99)), ShapeError, "at most 32 wide"),
            (dict(widths=(3, 2, 2, 2, 2, 2), acts=("relu",) * 5, offsets=(0,) * 10), ShapeError, "1..4 layers"),
            (dict(widths=(4, 4)), ShapeError, "starting with x's 3 columns"),
            (dict(acts=("gelu",)), ValueError, "gelu's derivative reads its input"),
            (dict(loss="cross-entropy"), ValueError, "the last activation must be identity"),
            (dict(loss="hinge"), ValueError, "unknown loss 'hinge'"),
            (dict(params=be.zeros((15,))), ShapeError, "the layers need 16 parameters at offsets"),
            (dict(offsets=(0, 8)), ShapeError, "overlap or are out of order"),
            (dict(offsets=(0,)), ShapeError, "offsets must be 2 integers"),
            (dict(rows=0), ShapeError, "rows must be a positive int32"),
            (dict(cursor=be.asarray(np.array([8, 0], np.int32))), ShapeError, "leaves no room for 4 rows")):
        with pytest.raises(error, match=f"narrow_step: .*{message}"):
            step(**kwargs)


# ---------------------------------------------------------------------------- accuracy count
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=str)
def test_count_correct(backend, shape):
    rng = rng_for("count", shape)
    scores = normal(rng, shape)
    t = labels_for(rng, *shape)
    right = np.arange(0, shape[0], 2)  # every other row is right for sure
    scores[right, t[right]] = scores[right].max(axis=1) + 1
    check(backend, lambda be, d: be.count_correct(d["s"], d["t"], d["hits"]), s=scores, t=t,
          hits=np.array([5], np.int32))  # out[0] += count


def test_count_correct_ties_go_to_the_first_maximum(backend):
    c = 1100  # ties far apart: in different threads' strides and beyond one block
    scores = np.zeros((6, c), np.float32)
    scores[0, [3, 700]] = 1  # label 3: the first max -> hit
    scores[1, [3, 700]] = 1  # label 700: a later tie -> miss
    scores[2, :] = 7  # all equal: argmax 0 -> hit for label 0
    scores[3, :] = -np.inf  # all -inf: numpy's argmax is 0 -> hit for label 0
    scores[4, [1099, 40]] = 2  # label 40: the first of the two maxima -> hit
    scores[5, 1099] = 5  # label 1099: the last column -> hit
    t = np.array([3, 700, 0, 0, 40, 1099], np.int32)
    got = check(backend, lambda be, d: be.count_correct(d["s"], d["t"], d["hits"]), s=scores, t=t,
                hits=np.zeros(1, np.int32))
    assert got["hits"][0] == 5


# ---------------------------------------------------------------------------- determinism
def test_reductions_are_bit_identical_run_to_run(backend):
    rng = rng_for("determinism")
    z, t, dy = logits(rng, (33, 257), extreme=False), labels_for(rng, 33, 257), normal(rng, (600, 33))

    def op(be, d):
        be.softmax_cross_entropy(d["z"], d["t"], d["grad"], d["loss"])
        be.bias_grad(d["dy"], d["db"])

    arrays = dict(z=z, t=t, dy=dy, grad=nan(z.shape), loss=nan(1), db=nan(33))
    first, second = run(backend, op, arrays), run(backend, op, arrays)
    for name in arrays:
        assert first[name].tobytes() == second[name].tobytes(), name


# ---------------------------------------------------------------------------- adam
ADAM_SETTINGS = [(0.0, False), (1e-2, False), (1e-2, True)]  # (weight_decay, decoupled)


@pytest.mark.parametrize("weight_decay, decoupled", ADAM_SETTINGS)
@pytest.mark.parametrize("shape", [(33,), (7, 150)], ids=str)  # 1,050 elements: more than one 256-thread block
def test_adam_update(backend, shape, weight_decay, decoupled):
    """Three steps (the count on the device, the moments carried over), the rate a number, then
    a device array changed between steps."""
    rng = rng_for("adam", shape, weight_decay, decoupled)
    arrays = {"p": normal(rng, shape), "g": normal(rng, shape), "m": normal(rng, shape, 0.1),
              "v": np.abs(normal(rng, shape, 0.1)), "t": np.array([4], np.int32), "lr": np.array([1e-3], np.float32)}

    def op(be, d):
        for i, rate in enumerate((1e-3, 3e-3, 5e-4)):
            be.count_step(d["t"])
            be.upload(np.array([rate], np.float32), d["lr"])
            be.adam_update(d["p"], d["g"], d["m"], d["v"], rate if i == 0 else d["lr"], d["t"], 0.9, 0.999, 1e-8,
                           weight_decay, decoupled)

    got = check(backend, op, **arrays)
    assert got["t"][0] == 7


# ---------------------------------------------------------------------------- dropout
@pytest.mark.parametrize("p", [0.0, 0.2, 0.9])
@pytest.mark.parametrize("shape", [(1, 1), (7, 31), (9, 130)], ids=str)  # 1,170: several blocks
def test_dropout_forward_and_backward(backend, shape, p):
    """The same mask (a hash of element, step and seed) on every backend, bit for bit; the backward
    recomputes it; in place works; a NaN stays NaN."""
    rng = rng_for("dropout", shape, p)
    x = normal(rng, shape)
    x.flat[0] = np.nan
    arrays = {"x": x, "out": nan(shape), "dy": normal(rng, shape), "dx": nan(shape), "t": np.array([12], np.int32)}

    def op(be, d):
        be.dropout(d["x"], d["out"], p, 123456789, d["t"])
        be.dropout_backward(d["dy"], d["dx"], p, 123456789, d["t"])
        be.dropout(d["dy"], d["dy"], p, 123456789, d["t"])  # in place: the same as dx

    got = check(backend, op, **arrays)
    np.testing.assert_array_equal(got["dy"], got["dx"])
    assert np.isnan(got["out"].flat[0])
    want = REF.to_numpy(got["out"])
    assert ((want == 0) | np.isclose(want, x / (1 - np.float32(p)), equal_nan=True)).all()
