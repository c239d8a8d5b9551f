"""Property-based tests: every op, random shapes and values, against a float64 formula.

Unlike tests/backend/test_ops.py (each backend against the NumPy backend), the truth
here is the op's mathematical definition evaluated in float64, written out again in a
line or two per op, so the reference backend is checked too.  Runs on every backend;
the simulator runs each CUDA thread as a Python thread, so it gets fewer, smaller cases.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gpunn.backend import NumpyBackend
from gpunn.backend.ops import ACTIVATIONS
from gpunn.kernels.activations import ACTIVATIONS as RECORDS

SMALL = {"numpy": (40, 70), "cuda-sim": (6, 12), "cuda": (40, 300)}  # (max_examples, max width)


def f32_arrays(shape, bound):
    return hnp.arrays(np.float32, shape, elements=st.floats(-bound, bound, width=32, allow_subnormal=False))


@st.composite
def matrix(draw, max_rows, max_cols, bound=100.0, min_cols=1):
    n = draw(st.integers(1, max_rows))
    c = draw(st.integers(min_cols, max_cols))
    return draw(f32_arrays((n, c), bound))


def property_test(fn=None, *, sim_examples=None):
    """Run ``fn(backend, data, width)`` under hypothesis with the backend's example budget."""
    if fn is None:
        return lambda f: property_test(f, sim_examples=sim_examples)

    def test(backend_name, new_backend):
        examples, width = SMALL[backend_name]
        if backend_name == "cuda-sim" and sim_examples:
            examples = sim_examples
        backends = [new_backend(backend_name)]
        if backend_name == "numpy":  # the registry's numpy backend, and the pure reference itself
            backends.append(NumpyBackend())
        for be in backends:

            @settings(max_examples=examples, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
            @given(st.data())
            def inner(data):
                fn(be, data, width)

            inner()

    test.__name__ = fn.__name__
    test.__doc__ = fn.__doc__
    return test


def draw_labels(data, n, c):
    """n int32 class indices in 0..c-1."""
    return np.asarray(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), np.int32)


def dev(be, a):
    """A device copy of host array ``a`` (the NumPy backend would otherwise share its memory)."""
    return be.asarray(a.copy())


def close(be, got, want, rtol=1e-4, atol=1e-5):
    got = be.to_numpy(got).astype(np.float64)
    scale = max(1.0, float(np.abs(want).max())) if np.size(want) else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol * scale)


# float64 truths, written independently of the records' float32 formulas (kernels/activations.py)
GELU_C = np.sqrt(2 / np.pi)


def act64(z, act):
    return {"identity": lambda: z, "relu": lambda: np.maximum(z, 0), "sigmoid": lambda: 1 / (1 + np.exp(-z)),
            "tanh": lambda: np.tanh(z), "gelu": lambda: 0.5 * z * (1 + np.tanh(GELU_C * (z + 0.044715 * z ** 3))),
            "silu": lambda: z / (1 + np.exp(-z))}[act]()


def deriv64(y, z, act):
    """act'(z), from the output y (what relu, sigmoid and tanh save) or the input z."""
    t = np.tanh(GELU_C * (z + 0.044715 * z ** 3))
    sig = 1 / (1 + np.exp(-z))
    return {"identity": lambda: 1.0, "relu": lambda: (y > 0), "sigmoid": lambda: y * (1 - y),
            "tanh": lambda: 1 - y ** 2,
            "gelu": lambda: 0.5 * (1 + t) + 0.5 * z * (1 - t ** 2) * GELU_C * (1 + 3 * 0.044715 * z ** 2),
            "silu": lambda: sig + z * sig * (1 - sig)}[act]()


@property_test(sim_examples=3)  # the tiled GEMM is slow to simulate; test_ops.py covers its shapes
def test_gemm_property(be, data, width):
    m, k, n = (data.draw(st.integers(1, width)) for _ in range(3))  # up to 12 on cuda-sim: one 16×16 tile
    ta, tb, acc = data.draw(st.booleans()), data.draw(st.booleans()), data.draw(st.booleans())
    a = data.draw(f32_arrays((k, m) if ta else (m, k), 10))
    b = data.draw(f32_arrays((n, k) if tb else (k, n), 10))
    out0 = data.draw(f32_arrays((m, n), 10))
    out = dev(be, out0)
    be.gemm(dev(be, a), dev(be, b), out, trans_a=ta, trans_b=tb, accumulate=acc)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = (a64.T if ta else a64) @ (b64.T if tb else b64) + (out0 if acc else 0)
    close(be, out, want, atol=1e-6 * k * 100)


@property_test
def test_bias_act_property(be, data, width):
    x = data.draw(matrix(8, width, bound=60))
    b = data.draw(f32_arrays((x.shape[1],), 20))
    act = data.draw(st.sampled_from(ACTIVATIONS))
    out = be.empty(x.shape)
    be.bias_act(dev(be, x), dev(be, b), act, out)
    close(be, out, act64(x.astype(np.float64) + b, act))


@property_test
def test_act_backward_property(be, data, width):
    act = data.draw(st.sampled_from(ACTIVATIONS))
    z = data.draw(matrix(8, width, bound=10)).astype(np.float64)
    y = act64(z, act).astype(np.float32)                  # a saved activation output
    saved = z.astype(np.float32) if RECORDS[act].grad_from == "input" else y  # what its backward reads
    dy = data.draw(f32_arrays(y.shape, 10))
    out = be.empty(y.shape)
    be.act_backward(dev(be, saved), dev(be, dy), act, out)
    close(be, out, dy.astype(np.float64) * deriv64(y.astype(np.float64), saved.astype(np.float64), act))


@property_test
def test_bias_grad_property(be, data, width):
    dy = data.draw(matrix(40, width, bound=100))
    out = be.empty((dy.shape[1],))
    be.bias_grad(dev(be, dy), out)
    close(be, out, dy.astype(np.float64).sum(axis=0), atol=1e-6 * dy.shape[0])


@property_test
def test_softmax_property(be, data, width):
    x = data.draw(matrix(6, width, bound=1e4)).astype(np.float64)
    out = be.empty(x.shape)
    be.softmax(dev(be, x.astype(np.float32)), out)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    want = e / e.sum(axis=1, keepdims=True)
    assert np.isfinite(be.to_numpy(out)).all()
    close(be, out, want, atol=1e-6)


@property_test
def test_softmax_backward_property(be, data, width):
    x = data.draw(matrix(6, width, bound=20)).astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    y = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    dy = data.draw(f32_arrays(y.shape, 10))
    out = be.empty(y.shape)
    be.softmax_backward(dev(be, y), dev(be, dy), out)
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    close(be, out, y64 * (dy64 - (dy64 * y64).sum(axis=1, keepdims=True)), atol=1e-5)


@property_test
def test_softmax_cross_entropy_property(be, data, width):
    """Finite for logits up to ±1e4, including a true class whose probability underflows."""
    z = data.draw(matrix(6, width, bound=1e4, min_cols=2))
    n, c = z.shape
    labels = draw_labels(data, n, c)
    grad, loss = be.empty(z.shape), be.zeros((1,))
    be.softmax_cross_entropy(dev(be, z), dev(be, labels), grad, loss)
    z64 = z.astype(np.float64)
    m = z64.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z64 - m).sum(axis=1, keepdims=True)))[:, 0]
    p = np.exp(z64 - lse[:, None])
    onehot = np.eye(c)[labels]
    got_loss = float(be.to_numpy(loss)[0])
    assert np.isfinite(got_loss) and np.isfinite(be.to_numpy(grad)).all()
    assert got_loss == pytest.approx(np.mean(lse - z64[np.arange(n), labels]), rel=1e-4, abs=1e-4)
    close(be, grad, (p - onehot) / n, atol=1e-6)


@property_test
def test_mse_property(be, data, width):
    y = data.draw(matrix(8, width, bound=2, min_cols=2))
    n, c = y.shape
    labels = draw_labels(data, n, c)
    grad, loss = be.empty(y.shape), be.zeros((1,))
    be.mse(dev(be, y), dev(be, labels), grad, loss)
    diff = y.astype(np.float64) - np.eye(c)[labels]
    assert float(be.to_numpy(loss)[0]) == pytest.approx((diff ** 2).sum() / (2 * n), rel=1e-4, abs=1e-6)
    close(be, grad, diff / n)


@property_test
def test_sgd_update_property(be, data, width):
    size = data.draw(st.integers(1, width * 4))
    p0, g, v0 = (data.draw(f32_arrays((size,), 10)) for _ in range(3))
    lr = data.draw(st.floats(1e-4, 1.0))
    momentum = data.draw(st.sampled_from([0.0, 0.5, 0.9]))
    wd = data.draw(st.sampled_from([0.0, 1e-4, 0.1]))
    nesterov = bool(momentum) and data.draw(st.booleans())
    p, v = dev(be, p0), dev(be, v0) if momentum else None
    be.sgd_update(p, dev(be, g), v, lr, momentum, wd, nesterov)
    gg = g.astype(np.float64) + wd * p0
    step = gg
    if momentum:
        v1 = momentum * v0 + gg
        step = gg + momentum * v1 if nesterov else v1
        close(be, v, v1)
    close(be, p, p0 - np.float32(lr) * step)


@property_test
def test_count_correct_property(be, data, width):
    s = data.draw(matrix(40, width, bound=3))      # small bound: ties happen; the first max wins
    n, c = s.shape
    labels = draw_labels(data, n, c)
    out = be.zeros((1,), np.int32)
    be.count_correct(dev(be, s), dev(be, labels), out)
    assert int(be.to_numpy(out)[0]) == int((s.argmax(axis=1) == labels).sum())
