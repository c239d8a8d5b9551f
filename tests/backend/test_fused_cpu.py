"""The Numba-fused CPU loops against the pure-NumPy reference, op by op, and how they are chosen.

Each test runs one op on the reference (``NumpyBackend()``) and on the fused backend
(``FusedNumpyBackend()``), each on its own copies of the same inputs, over
irregular shapes, and compares every array.  The elementwise ops do the reference's
float32 arithmetic in its order, so they must agree bit for bit; the losses sum in
float64, so they agree to ``atol + |ref| * rtol``.
"""
from __future__ import annotations

import numpy as np
import pytest

from gpunn.backend import NumpyBackend, get_backend
from gpunn.backend.ops import ACTIVATIONS

pytest.importorskip("numba")
from gpunn.backend.numpy_fused import FusedNumpyBackend  # noqa: E402  (needs numba)

REF = NumpyBackend()
FUSED = FusedNumpyBackend()
SHAPES = [(1, 1), (5, 23), (37, 10), (128, 512), (3, 1100)]


def rand(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def labels(n, c, seed):
    return np.random.default_rng(seed).integers(0, c, n).astype(np.int32)


def both(op, *arrays):
    """op(backend, *copies) on the reference and the fused backend; the copies afterwards."""
    ref, fused = [a.copy() for a in arrays], [a.copy() for a in arrays]
    op(REF, *ref)
    op(FUSED, *fused)
    return ref, fused


def assert_same(ref, fused, rtol=0.0, atol=0.0):
    for i, (r, f) in enumerate(zip(ref, fused)):
        if rtol or atol:
            np.testing.assert_allclose(f, r, rtol=rtol, atol=atol, err_msg=f"array {i}")
        else:
            np.testing.assert_array_equal(f, r, err_msg=f"array {i}")


def test_the_fused_backend_says_so_and_the_reference_stays_pure():
    assert FUSED.fused and "Numba-fused" in FUSED.describe() and FUSED.dtype == np.float32
    assert not REF.fused and REF.describe() == "numpy (CPU)"
    overridden = set(vars(FusedNumpyBackend))
    assert {"_sgd_update", "_softmax_cross_entropy", "_count_correct"} <= overridden
    assert not {"_gemm", "_bias_grad"} & overridden                      # BLAS stays BLAS


def test_the_registry_picks_the_fused_loops_unless_told_not_to(monkeypatch):
    assert type(get_backend("numpy")) is FusedNumpyBackend
    monkeypatch.setenv("GPUNN_FUSED", "0")
    assert type(get_backend("numpy")) is NumpyBackend


def test_without_numba_the_registry_falls_back_to_the_reference(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gpunn.backend.numpy_fused", None)  # as if Numba were missing
    be = get_backend("numpy")
    assert type(be) is NumpyBackend and be.describe() == "numpy (CPU)"


def test_with_numbas_jit_switched_off_the_registry_keeps_the_reference(monkeypatch):
    from gpunn.backend import numpy_fused

    monkeypatch.setattr(numpy_fused.numba_config, "DISABLE_JIT", True)   # the loops would run as Python
    assert type(get_backend("numpy")) is NumpyBackend


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bias_act_and_act_backward_bit_for_bit(shape, act):
    x, b, dy = rand(shape, 1, 3.0), rand(shape[1:], 2), rand(shape, 3)
    out = np.full(shape, np.nan, np.float32)
    assert_same(*both(lambda be, x, b, out: be.bias_act(x, b, act, out), x, b, out))
    assert_same(*both(lambda be, x, out: be.bias_act(x, None, act, out), x, out))
    assert_same(*both(lambda be, x, b: be.bias_act(x, b, act, x), x, b))               # in place
    y = np.empty_like(x)
    REF.bias_act(x, b, act, y)
    assert_same(*both(lambda be, y, dy, out: be.act_backward(y, dy, act, out), y, dy, out))
    assert_same(*both(lambda be, y, dy: be.act_backward(y, dy, act, dy), y, dy))      # out is dy


@pytest.mark.filterwarnings("ignore:invalid value encountered")   # inf * 0 in the mask multiply
def test_relu_keeps_nan_and_masks_like_the_reference():
    x = np.array([[np.nan, -1.0, 0.0, 2.0, -0.0, np.inf]], np.float32)
    b = np.zeros(6, np.float32)
    out = np.empty_like(x)
    assert_same(*both(lambda be, x, b, out: be.bias_act(x, b, "relu", out), x, b, out))
    y = np.array([[0.0, 1.0, 0.0, 3.0, 0.0, 1.0]], np.float32)
    dy = np.array([[np.inf, np.inf, -2.0, 5.0, np.nan, 1.0]], np.float32)
    assert_same(*both(lambda be, y, dy, out: be.act_backward(y, dy, "relu", out), y, dy, out))


@pytest.mark.parametrize("shape", [(1, 1), (5, 23), (128, 10), (33, 7)])
@pytest.mark.parametrize("scale", [1.0, 30.0, 4096.0])
def test_softmax_cross_entropy_agrees(shape, scale):
    logits, y = rand(shape, 5, scale), labels(shape[0], shape[1], 6)
    grad, loss = np.full(shape, np.nan, np.float32), np.array([0.25], np.float32)
    ref, fused = both(lambda be, z, y, g, l: be.softmax_cross_entropy(z, y, g, l, accumulate=True), logits, y, grad, loss)
    assert_same(ref, fused, rtol=2e-6, atol=1e-7)
    ref, fused = both(lambda be, z, y, l: be.softmax_cross_entropy(z, y, z, l), logits, y, loss)   # grad is logits
    assert_same(ref, fused, rtol=2e-6, atol=1e-7)


def test_cross_entropy_stays_finite_when_the_true_class_underflows():
    """The reference's own case: p(true) = e^-20000 underflows, the loss must not."""
    z = np.array([[1e4, -1e4, 0], [1e30, -1e30, 0]], np.float32)
    y = np.array([1, 1], np.int32)
    grad, loss = np.empty_like(z), np.zeros(1, np.float32)
    FUSED.softmax_cross_entropy(z, y, grad, loss)
    assert loss[0] == pytest.approx((2e4 + 2e30) / 2, rel=1e-5)
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0], [0.5, -0.5, 0]], atol=1e-7)


@pytest.mark.parametrize("shape", [(1, 1), (5, 23), (100, 10), (33, 7)])
def test_mse_agrees(shape):
    out, y = np.random.default_rng(7).random(shape, dtype=np.float32), labels(shape[0], shape[1], 8)
    grad, loss = np.full(shape, np.nan, np.float32), np.array([1.5], np.float32)
    ref, fused = both(lambda be, o, y, g, l: be.mse(o, y, g, l, accumulate=True), out, y, grad, loss)
    assert_same(ref, fused, rtol=2e-6, atol=1e-7)


def test_count_correct_first_max_on_ties_and_nan_like_argmax():
    scores = np.array([[1, 3, 3], [2, 2, 1], [0, np.nan, 5], [np.nan, 1, 1], [-1, -2, -3]], np.float32)
    for y in ([1, 0, 1, 0, 0], [2, 1, 2, 1, 1]):
        ref, fused = both(lambda be, s, y, out: be.count_correct(s, y, out), scores,
                          np.array(y, np.int32), np.array([4], np.int32))
        assert_same(ref, fused)
    big = rand((1000, 10), 9)
    assert_same(*both(lambda be, s, y, out: be.count_correct(s, y, out), big, labels(1000, 10, 10), np.zeros(1, np.int32)))


@pytest.mark.parametrize("momentum,wd,nesterov", [(0, 0, False), (0.9, 0, False), (0.9, 1e-3, True), (0, 1e-2, False)])
@pytest.mark.parametrize("shape", [(1,), (23, 5), (669_706,)])
def test_sgd_update_bit_for_bit(momentum, wd, nesterov, shape):
    p, g, v = rand(shape, 11), rand(shape, 12), rand(shape, 13)
    if momentum:
        op = lambda be, p, g, v: be.sgd_update(p, g, v, 0.05, momentum, wd, nesterov)  # noqa: E731
        assert_same(*both(op, p, g, v))
    else:
        assert_same(*both(lambda be, p, g: be.sgd_update(p, g, None, 0.05, momentum, wd, nesterov), p, g))


def test_checks_still_guard_the_fused_ops():
    from gpunn.errors import ShapeError

    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ShapeError, match=r"bias_act: bias must have shape \(4,\), got \(3,\)"):
        FUSED.bias_act(x, np.zeros(3, np.float32), "relu", x)
    with pytest.raises(ShapeError, match="C-contiguous"):
        FUSED.act_backward(np.zeros((4, 3), np.float32).T, x, "relu", x)


def test_training_on_the_fused_path_follows_the_reference():
    """A few hundred steps on both: the elementwise ops agree bit for bit and the losses to
    rounding, so the weights stay within float32 noise of each other."""
    from gpunn.layers import mlp
    from gpunn.losses import MSE, SoftmaxCrossEntropy
    from gpunn.optim import SGD

    rng = np.random.default_rng(0)
    x = rng.random((240, 30), dtype=np.float32)
    y = rng.integers(0, 4, 240).astype(np.int32)
    finals = []
    for act, loss_cls, out_act in (("relu", SoftmaxCrossEntropy, "identity"), ("sigmoid", MSE, "sigmoid")):
        for be in (REF, FUSED):
            model = mlp([30, 17, 9, 4], act, out_act, backend=be, seed=3)
            loss_fn, opt = loss_cls(be), SGD(model.params, model.grads, 0.1, momentum=0.9, backend=be)
            total = be.zeros((1,))
            for epoch in range(10):
                for s in range(0, 240, 24):
                    out = model.forward(x[s:s + 24])
                    model.backward(loss_fn(out, y[s:s + 24], total, accumulate=True))
                    opt.step()
            finals.append(([p.copy() for p in model.params], float(total[0])))
    for (pr, lr_), (pf, lf) in (finals[0:2], finals[2:4]):
        assert lf == pytest.approx(lr_, rel=1e-4)
        for a, b in zip(pr, pf):
            np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
