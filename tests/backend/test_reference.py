"""The NumPy reference backend against hand-computed values: it defines what each op means."""
import math

import numpy as np
import pytest

from gpunn.backend import NumpyBackend, get_backend
from gpunn.backend import ops
from gpunn.errors import BackendUnavailable, ShapeError

be = NumpyBackend()
f32 = lambda *a: np.array(a, np.float32)  # noqa: E731


def test_gemm_with_transposes_and_accumulate():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)   # [[0,1,2],[3,4,5]]
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = np.empty((2, 4), np.float32)
    be.gemm(a, b, out)
    assert out.tolist() == [[20, 23, 26, 29], [56, 68, 80, 92]]
    be.gemm(a, b, out, accumulate=True)
    assert out.tolist() == [[40, 46, 52, 58], [112, 136, 160, 184]]
    out2 = np.empty((3, 3), np.float32)
    be.gemm(a, a, out2, trans_a=True)                  # aᵀa
    assert out2.tolist() == [[9, 12, 15], [12, 17, 22], [15, 22, 29]]
    out3 = np.empty((2, 2), np.float32)
    be.gemm(a, a, out3, trans_b=True)                  # a aᵀ
    assert out3.tolist() == [[5, 14], [14, 50]]
    with pytest.raises(ShapeError, match="inner dimensions"):
        be.gemm(a, a, out3)
    square = np.eye(3, dtype=np.float32)
    with pytest.raises(ShapeError, match="gemm: out must not share memory with a"):
        be.gemm(square, np.eye(3, dtype=np.float32), square)  # the product would read what it writes


def test_bias_act_each_activation():
    x = f32([-2, 0, 3]).reshape(1, 3)
    b = f32(1, 1, -1)
    out = np.empty_like(x)
    expect = {"identity": [-1, 1, 2], "relu": [0, 1, 2],
              "sigmoid": [1 / (1 + math.e), 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-2))],
              "tanh": [math.tanh(-1), math.tanh(1), math.tanh(2)],
              "gelu": [0.5 * z * (1 + math.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3))) for z in (-1, 1, 2)],
              "silu": [z / (1 + math.exp(-z)) for z in (-1, 1, 2)]}
    for act, want in expect.items():
        be.bias_act(x, b, act, out)
        np.testing.assert_allclose(out[0], want, rtol=1e-6)
    be.bias_act(f32(-1e4, 1e4).reshape(1, 2), None, "sigmoid", out[:, :2].copy())  # no overflow warning
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        be.bias_act(x, b, "swish", out)


@pytest.mark.parametrize("act", ops.ACTIVATIONS)
def test_each_activations_backward_is_its_forwards_derivative(act):
    """The record's backward, given what its grad_from says (the output or the input), against a
    central difference of its forward, in float64 (the reference runs in either dtype)."""
    from gpunn.kernels.activations import ACTIVATIONS as RECORDS

    be64 = NumpyBackend(np.float64)
    z = np.linspace(-4, 4, 41).reshape(1, -1)
    z = z[:, np.abs(z[0]) > 1e-3]  # not at 0, where a piecewise activation (relu) has no derivative
    y, up, down = (np.empty_like(z) for _ in range(3))
    be64.bias_act(z, None, act, y)
    h = 1e-6
    be64.bias_act(z + h, None, act, up)
    be64.bias_act(z - h, None, act, down)
    dy = np.full_like(z, 1.5)
    got = np.empty_like(z)
    be64.act_backward(z if RECORDS[act].grad_from == "input" else y, dy, act, got)
    np.testing.assert_allclose(got, 1.5 * (up - down) / (2 * h), rtol=1e-6, atol=1e-8)


def test_act_backward_from_saved_output():
    y = f32(0, 0.5, 2).reshape(1, 3)
    dy = f32(1, 2, 3).reshape(1, 3)
    out = np.empty_like(y)
    be.act_backward(y, dy, "relu", out)
    assert out.tolist() == [[0, 2, 3]]
    be.act_backward(y, dy, "sigmoid", out)              # dy * y * (1 - y)
    np.testing.assert_allclose(out, [[0, 0.5, -6]])
    be.act_backward(y, dy, "tanh", out)                 # dy * (1 - y²)
    np.testing.assert_allclose(out, [[1, 1.5, -9]])
    d = dy.copy()
    be.act_backward(y, d, "relu", d)                    # in place
    assert d.tolist() == [[0, 2, 3]]


def test_bias_grad_is_column_sum():
    dy = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = np.empty(2, np.float32)
    be.bias_grad(dy, out)
    assert out.tolist() == [6, 9]


def test_softmax_forward_backward():
    x = f32(1, 2, 3, 1000, 1000, 1000).reshape(2, 3)
    out = np.empty_like(x)
    be.softmax(x, out)
    e = np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum()
    np.testing.assert_allclose(out[0], e, rtol=1e-6)
    np.testing.assert_allclose(out[1], [1 / 3] * 3, rtol=1e-6)
    dy = f32(1, 0, 0, 0, 0, 0).reshape(2, 3)
    dx = np.empty_like(x)
    be.softmax_backward(out, dy, dx)                    # y * (dy - Σ dy y)
    np.testing.assert_allclose(dx[0], e * (np.array([1, 0, 0]) - e[0]), rtol=1e-5)
    assert not dx[1].any()


def test_softmax_cross_entropy_values_and_gradient():
    z = f32(0, 0, 0, 1, 2, 3).reshape(2, 3)
    labels = np.array([1, 2], np.int32)
    grad = np.empty_like(z)
    loss = np.zeros(1, np.float32)
    be.softmax_cross_entropy(z, labels, grad, loss)
    l0, l1 = math.log(3), math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3
    assert loss[0] == pytest.approx((l0 + l1) / 2, rel=1e-6)
    p1 = np.exp([1, 2, 3]) / np.exp([1, 2, 3]).sum()
    np.testing.assert_allclose(grad, np.array([[1 / 3, -2 / 3, 1 / 3], p1 - [0, 0, 1]]) / 2, rtol=1e-5, atol=1e-7)
    be.softmax_cross_entropy(z, labels, grad, loss, accumulate=True)
    assert loss[0] == pytest.approx(l0 + l1, rel=1e-6)


def test_cross_entropy_stays_finite_when_the_true_class_underflows():
    z = f32(1e4, -1e4, 0, 1e30, -1e30, 0).reshape(2, 3)
    labels = np.array([1, 1], np.int32)
    grad = np.empty_like(z)
    loss = np.zeros(1, np.float32)
    be.softmax_cross_entropy(z, labels, grad, loss)     # p(true) = e^-20000 underflows to 0
    assert np.isfinite(loss[0]) and np.isfinite(grad).all()
    assert loss[0] == pytest.approx((2e4 + 2e30) / 2, rel=1e-5)
    np.testing.assert_allclose(grad, [[0.5, -0.5, 0], [0.5, -0.5, 0]], atol=1e-7)


def test_softmax_finite_for_the_extreme_float32_range():
    big = np.finfo(np.float32).max
    z = f32(big, -big, 0).reshape(1, 3)
    out = np.empty_like(z)
    be.softmax(z, out)
    assert out.tolist() == [[1, 0, 0]]


def test_mse_is_the_primers_quadratic_cost():
    y = f32(0.5, 0.5, 0.0, 1.0).reshape(2, 2)
    labels = np.array([0, 0], np.int32)                 # onehot [1,0] both rows
    grad = np.empty_like(y)
    loss = np.zeros(1, np.float32)
    be.mse(y, labels, grad, loss)
    assert loss[0] == pytest.approx((0.25 + 0.25 + 1 + 1) / 4)   # Σ‖y−a‖² / 2N
    np.testing.assert_allclose(grad, [[-0.25, 0.25], [-0.5, 0.5]])


@pytest.mark.parametrize("momentum,wd,nesterov", [(0, 0, False), (0.9, 0, False), (0.9, 0.1, True), (0, 0.5, False)])
def test_sgd_update_matches_pytorch_definition(momentum, wd, nesterov):
    p = f32(1.0, -2.0)
    g = f32(0.5, 0.25)
    v = f32(0.1, 0.2)
    p0, v0 = p.astype(np.float64), v.astype(np.float64)
    be.sgd_update(p, g, v if momentum else None, 0.1, momentum, wd, nesterov)
    gg = g + wd * p0
    if momentum:
        v1 = momentum * v0 + gg
        step = gg + momentum * v1 if nesterov else v1
        np.testing.assert_allclose(v, v1, rtol=1e-6)
    else:
        step = gg
    np.testing.assert_allclose(p, p0 - 0.1 * step, rtol=1e-6)


def test_count_correct_accumulates_and_takes_first_max_on_ties():
    s = f32(0.1, 0.9, 0.5, 0.5, 0.2, 0.1).reshape(3, 2)
    out = np.zeros(1, np.int32)
    be.count_correct(s, np.array([1, 0, 1], np.int32), out)
    assert out[0] == 2
    be.count_correct(s, np.array([1, 1, 0], np.int32), out)
    assert out[0] == 4


def test_ops_reject_wrong_dtype_shape_and_layout():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ShapeError, match="softmax: x must be float32, got float64"):
        be.softmax(x.astype(np.float64), x)
    with pytest.raises(ShapeError, match=r"bias_act: bias must have shape \(4,\), got \(3,\)"):
        be.bias_act(x, np.zeros(3, np.float32), "relu", x)
    with pytest.raises(ShapeError, match="C-contiguous"):
        be.softmax(np.zeros((4, 3), np.float32).T, x)
    with pytest.raises(ShapeError, match="labels must be int32"):
        be.softmax_cross_entropy(x, np.zeros(3, np.int64), x.copy(), np.zeros(1, np.float32))


def test_every_op_of_the_contract_is_implemented_and_costed():
    for name in ops.OPS:
        assert callable(getattr(be, name)) and callable(getattr(be, "_" + name)), name
        assert callable(getattr(be.unchecked, name)) and be.unchecked.impl is be, name
    assert ops.gemm_cost(2, 3, 4) == ops.Cost(2 * 2 * 3 * 4, 4 * (8 + 12 + 6))
    assert ops.bias_act_cost(2, 3, "relu") == ops.Cost(12, 4 * 15)
    assert ops.sgd_update_cost(10, 0.9, 0.1, True) == ops.Cost(80, 200)
    assert ops.sgd_update_cost(10, 0, 0, False) == ops.Cost(20, 120)


def test_registry():
    assert get_backend("numpy").name == "numpy"
    with pytest.raises(BackendUnavailable, match="unknown backend 'tpu'"):
        get_backend("tpu")


def test_float64_reference_for_gradient_checks():
    b64 = NumpyBackend(np.float64)
    x = np.ones((2, 2))
    out = np.empty((2, 2))
    b64.softmax(x, out)
    assert out.dtype == np.float64 and np.allclose(out, 0.5)
    with pytest.raises(ShapeError, match="float64"):
        b64.softmax(x.astype(np.float32), out)


def test_every_backends_implementations_take_the_records_argument_names():
    """Call sites may name an op's arguments (``trans_a=True``): every backend's ``_op`` method must
    have exactly its record's parameters, in order."""
    import inspect

    from gpunn.backend.cuda_backend import CudaBackend
    from gpunn.backend.numpy_fused import FusedNumpyBackend

    for name, op in ops.OPS.items():
        want = [p for p in op.signature.parameters if p != "self"]
        for cls in (NumpyBackend, FusedNumpyBackend, CudaBackend):
            got = list(inspect.signature(getattr(cls, "_" + name)).parameters)[1:]
            assert got == want, f"{cls.__name__}._{name}{tuple(got)}: the record has {tuple(want)}"


def test_the_interfaces_methods_take_the_records_arguments():
    """``backend.<op>`` and ``backend.unchecked.<op>`` are written out in base.py: each must have
    its record's signature, defaults included (the record is the argument list's one home)."""
    import inspect

    from gpunn.backend.base import Backend, Unchecked

    for name, op in ops.OPS.items():
        for cls in (Backend, Unchecked):
            got = inspect.signature(getattr(cls, name))
            assert got == op.signature, f"{cls.__name__}.{name}{got}: the record has {op.signature}"
        assert inspect.getdoc(getattr(Backend, name)) == op.doc


def test_a_backend_without_an_op_cannot_be_made():
    class Partial(NumpyBackend):
        _softmax = None

    with pytest.raises(TypeError, match="Partial lacks the op implementations _softmax"):
        Partial()

