"""The Python API refuses what would train wrong, in one line naming the op (or layer) and the argument.

Each case runs on every backend (the ``backend`` fixture: numpy, cuda-sim, and cuda on a GPU).
In the simulator the cuda backend's device arrays are NumPy arrays, so "not this backend's
array" is tested there with arrays of no backend (a list, :class:`Foreign`); a NumPy array
handed to the cuda backend on a real GPU is tested by the gpu tier.
"""
from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from gpunn.checks import LEARNING_RATE, MOMENTUM, WEIGHT_DECAY
from gpunn.errors import GpunnError, ShapeError
from gpunn.layers import Dense, ReLU, Sequential, mlp
from gpunn.optim import SGD, valid_learning_rate

BAD_RATES = [float("nan"), float("inf"), -1, 0, "0.1", 1e39, True]


class Foreign:
    """An array of no backend that looks like a C-contiguous float32 array to a check that reads only
    ``dtype``, ``shape``, ``ndim`` and ``flags`` (as a NumPy array looks to CuPy's backend)."""

    def __init__(self, a):
        self._a = np.ascontiguousarray(a)
        self.dtype, self.shape, self.ndim, self.flags, self.size = (self._a.dtype, self._a.shape, self._a.ndim,
                                                                    self._a.flags, self._a.size)


def foreign_array_kind(be):
    return "a device \\(CuPy\\) array" if be.xp.__name__ == "cupy" else "a numpy.ndarray"


# ---------------------------------------------------------------------------- the learning rate, momentum, weight decay
@pytest.mark.parametrize("lr", BAD_RATES, ids=repr)
def test_step_checks_its_rate(backend, lr):
    be = backend
    p, g = be.zeros((3,)), be.asarray(np.ones(3, np.float32))
    opt = SGD([p], [g], 0.1, backend=be)
    with pytest.raises(ValueError, match=r"^SGD\.step: lr must be a positive finite number \(as float32: at most 3\.4e38\)"):
        opt.step(lr)
    assert not be.to_numpy(p).any()  # nothing was updated


def test_step_takes_a_number_or_a_one_element_device_rate(backend):
    be = backend
    p, g = be.zeros((3,)), be.asarray(np.ones(3, np.float32))
    opt = SGD([p], [g], 0.1, backend=be)
    opt.step(np.float32(0.5))
    opt.step(be.asarray(np.array([0.25], np.float32)))  # the value lives on the device: unchecked
    np.testing.assert_allclose(be.to_numpy(p), -0.75)
    with pytest.raises(ShapeError, match=r"SGD\.step: lr must have shape \(1,\), got \(2,\)"):
        opt.step(be.zeros((2,)))
    with pytest.raises(ShapeError, match=r"SGD\.step: lr must be float32, got int32"):
        opt.step(be.zeros((1,), np.int32))
    with pytest.raises(ShapeError, match=rf"SGD\.step: lr must be {foreign_array_kind(be)}"):
        opt.step(Foreign(np.zeros(1, np.float32)))


@pytest.mark.parametrize("lr", [*BAD_RATES, None], ids=repr)
def test_sgd_update_refuses_a_bad_rate(backend, lr):
    be = backend
    p, g = be.zeros((3,)), be.zeros((3,))
    with pytest.raises(ValueError, match=r"^sgd_update: lr must be a positive finite number \(as float32: at most 3\.4e38\)"):
        be.sgd_update(p, g, None, lr)


@pytest.mark.parametrize("momentum", [1.5, 1, -0.1, float("nan"), 0.99999999, "0.9"], ids=repr)
def test_sgd_update_refuses_a_bad_momentum(backend, momentum):
    be = backend
    p = be.zeros((3,))
    with pytest.raises(ValueError, match=r"^sgd_update: momentum must be a number in \[0, 1\)"):
        be.sgd_update(p, be.zeros((3,)), be.zeros((3,)), 0.1, momentum)


@pytest.mark.parametrize("weight_decay", [-1, float("nan"), float("inf"), 1e39], ids=repr)
def test_sgd_update_refuses_a_bad_weight_decay(backend, weight_decay):
    be = backend
    with pytest.raises(ValueError, match=r"^sgd_update: weight_decay must be a finite number >= 0 \(as float32"):
        be.sgd_update(be.zeros((3,)), be.zeros((3,)), None, 0.1, 0.0, weight_decay)


def test_sgd_refuses_what_the_op_refuses(backend):
    be = backend
    p, g = [be.zeros((3,))], [be.zeros((3,))]
    for kwargs, what in (({"lr": 1e39}, "learning rate"), ({"momentum": 1.0}, "momentum"),
                         ({"weight_decay": 1e39}, "weight decay")):
        with pytest.raises(ValueError, match=f"^SGD: {what} must be"):
            SGD(p, g, **{"lr": 0.1, **kwargs}, backend=be)


def test_one_rule_per_scalar_everywhere():
    """The optimizer's valid_learning_rate and the command line's types are the op's rules."""
    from gpunn import options

    for lr in (0.1, 3e38, 1e-3):
        assert valid_learning_rate(lr) and options.learning_rate(repr(lr)) == lr
    for lr in BAD_RATES:
        assert not valid_learning_rate(lr)
    for text, parse, rule in (("1e39", options.learning_rate, LEARNING_RATE), ("1.5", options.momentum, MOMENTUM),
                              ("1e39", options.weight_decay, WEIGHT_DECAY), ("-1", options.weight_decay, WEIGHT_DECAY)):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^expected {re.escape(rule.what)}, got {text!r}$"):
            parse(text)


# ---------------------------------------------------------------------------- arrays of another kind
def test_checked_ops_refuse_arrays_of_another_kind(backend):
    be = backend
    kind = foreign_array_kind(be)
    x, out = be.zeros((2, 3)), be.zeros((2, 3))
    with pytest.raises(ShapeError, match=rf"^bias_act: x must be {kind} on the {be.name} backend, got builtins\.list; "
                                         r"copy it there with backend\.asarray"):
        be.bias_act([[0.0] * 3] * 2, None, "relu", out)
    with pytest.raises(ShapeError, match=rf"^bias_act: out must be {kind} .*got .*Foreign;"):
        be.bias_act(x, None, "relu", Foreign(np.zeros((2, 3), np.float32)))
    with pytest.raises(ShapeError, match=rf"^count_correct: labels must be {kind}"):
        be.count_correct(x, Foreign(np.zeros(2, np.int32)), be.zeros((1,), np.int32))
    with pytest.raises(ShapeError, match=rf"^sgd_update: grad must be {kind}"):
        be.sgd_update(be.zeros((3,)), Foreign(np.zeros(3, np.float32)), None, 0.1)
    with pytest.raises(ShapeError, match=rf"^sgd_update: grad 0 must be {kind}"):
        SGD([be.zeros((3,))], [Foreign(np.zeros(3, np.float32))], 0.1, backend=be)


def test_a_host_array_is_a_device_array_only_where_the_device_is_the_host(backend):
    """NumPy arrays are the numpy backend's and the simulator's arrays; on a GPU they are refused
    in one line instead of failing inside a launch (``memoryview has no .ptr``)."""
    be = backend
    host = np.zeros((2, 3), np.float32)
    if be.xp is np:
        be.bias_act(host, None, "relu", host)
    else:
        with pytest.raises(ShapeError, match=r"^bias_act: x must be a device \(CuPy\) array on the cuda backend, "
                                             r"got numpy\.ndarray; copy it there with backend\.asarray"):
            be.bias_act(host, None, "relu", be.zeros((2, 3)))


def test_layers_refuse_arrays_of_another_kind(backend):
    be = backend
    model = mlp([3, 4, 2], backend=be)
    kind = foreign_array_kind(be)
    with pytest.raises(ShapeError, match=rf"^Dense\(3→4, relu\): the input must be {kind}.*backend\.asarray"):
        model.forward([[0.0, 0.0, 0.0]])
    with pytest.raises(ShapeError, match=rf"^Dense\(3→4, relu\): the input must be {kind}"):
        model.forward(Foreign(np.zeros((1, 3), np.float32)))
    with pytest.raises(ShapeError, match=r"input must be C-contiguous"):  # a strided view of the backend's own
        model.forward(be.zeros((3, 2)).T)
    model.forward(be.zeros((1, 3)))
    with pytest.raises(ShapeError, match=rf"^Dense\(4→2\): the gradient must be {kind}"):
        model.backward(Foreign(np.zeros((1, 2), np.float32)))


# ---------------------------------------------------------------------------- order of calls
@pytest.mark.parametrize("make", [lambda be: Dense(3, 2, "tanh", backend=be), lambda be: ReLU(3, backend=be),
                                  lambda be: Sequential([Dense(3, 2, backend=be)])], ids=["Dense", "ReLU", "Sequential"])
def test_backward_before_forward_says_so(backend, make):
    layer = make(backend)
    with pytest.raises(GpunnError, match=r"^(Dense\(3→2(, tanh)?\)|ReLU\(3\)): backward\(\) called before forward\(\)"):
        layer.backward(backend.zeros((1, 2 if not isinstance(layer, ReLU) else 3)))


# ---------------------------------------------------------------------------- evaluate
def test_evaluate_refuses_no_rows_and_names_the_label_dtype(backend):
    from gpunn.train import evaluate

    be = backend
    model = mlp([3, 2], backend=be)
    with pytest.raises(ShapeError, match=r"^evaluate: x has no rows"):
        evaluate(model, be.zeros((0, 3)), be.zeros((0,), np.int32))
    with pytest.raises(ShapeError, match=r"^evaluate: y must be int32, got int64$"):
        evaluate(model, be.zeros((2, 3)), be.asarray(np.zeros(2, np.int64)))
    with pytest.raises(ShapeError, match=rf"^evaluate: x must be {foreign_array_kind(be)}"):
        evaluate(model, Foreign(np.zeros((2, 3), np.float32)), be.zeros((2,), np.int32))
    assert evaluate(model, be.zeros((2, 3)), be.zeros((2,), np.int32)) in (0.0, 1.0)


# ---------------------------------------------------------------------------- predict
def test_predict_returns_the_callers_own_class_indices(backend):
    """forward's output is a view of a buffer the next call overwrites; predict's is a host copy."""
    be = backend
    model = mlp([6, 5, 4], backend=be, seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 6)).astype(np.float32)
    want = be.to_numpy(model.forward(be.asarray(x))).argmax(axis=1)
    first = model.forward(be.asarray(x))
    snapshot = be.to_numpy(first).copy()
    model.forward(be.asarray(x[::-1].copy()))
    assert not np.array_equal(be.to_numpy(first), snapshot)  # the next forward overwrote it

    got = model.predict(x, batch_size=3)  # a host array, in three batches
    assert isinstance(got, np.ndarray) and got.dtype == np.int64 and got.shape == (7,)
    np.testing.assert_array_equal(got, want)
    model.predict(x[::-1].copy())
    np.testing.assert_array_equal(got, want)  # not overwritten by the next call
    np.testing.assert_array_equal(model.predict(be.asarray(x)), want)  # a device array too
    np.testing.assert_array_equal(model.predict(x.astype(np.float64)), want)  # copied to float32
    one = model.predict(x[2])
    assert one.shape == () and one.dtype == np.int64 and one == want[2]
    assert model.predict(np.zeros((0, 6), np.float32)).shape == (0,)


def test_predict_refuses_what_is_not_an_input(backend):
    model = mlp([6, 4], backend=backend)
    for bad in (np.zeros((2, 5), np.float32), np.zeros(5, np.float32), np.zeros((1, 2, 6), np.float32), 1.0):
        with pytest.raises(ShapeError, match=r"^Sequential\.predict: expected one input of shape \(6,\) or a batch"):
            model.predict(bad)
    with pytest.raises(ShapeError, match=r"^Sequential\.predict: x must be an array of numbers"):
        model.predict([["a"] * 6])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.predict(np.zeros(6, np.float32), batch_size=0)
