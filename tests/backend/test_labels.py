"""Labels outside the classes are refused at the public boundary, on every backend.

An out-of-range label is an out-of-bounds read in each kernel that takes labels: on the
Numba-fused CPU loops a wrong loss or a segmentation fault, on a GPU a silent read of
another row.  Every public op that takes labels (the three backend ops, the two losses,
``evaluate``) checks them and names the op, the label and its index, before any kernel
runs; the trainer's own steps, whose labels ``check_dataset`` validated once, do not.

``backend`` runs each test on the registry's numpy backend (fused when Numba is
installed), cuda in the simulator and cuda on a GPU; ``NumpyBackend()``, the pure
reference, is added here.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import backend_params, make_backend
from gpunn.backend import NumpyBackend
from gpunn.errors import ShapeError
from gpunn.layers import mlp
from gpunn.losses import MSE, SoftmaxCrossEntropy
from gpunn.train import evaluate

N, C = 6, 10
#: (label, where it goes): past the end, just past the end, negative, and far enough to
#: leave the process's memory (these crashed Python through the fused loops)
BAD = [(10, 3), (11, 0), (-1, 5), (1_000_000, 2), (2**31 - 1, 4), (-(2**31), 1)]


@pytest.fixture(params=[pytest.param("reference", id="reference"), *backend_params()])
def any_backend(request):
    """The pure reference, then every backend of the ``backend`` fixture (the gpu one skips without a GPU)."""
    return NumpyBackend() if request.param == "reference" else make_backend(request.param)


def labels_with(be, bad, at):
    y = (np.arange(N) % C).astype(np.int32)
    y[at] = bad
    return be.asarray(y, np.int32)


def scores(be):
    return be.asarray(np.random.default_rng(0).standard_normal((N, C)).astype(np.float32))


def ops(be):
    """name -> call(labels) for every public op that takes labels; each writes into fresh buffers."""
    grad, loss, out = be.zeros((N, C)), be.zeros((1,)), be.zeros((1,), np.int32)
    x = scores(be)
    model = mlp([C, C], backend=be, seed=0)
    return {
        "softmax_cross_entropy": lambda y: be.softmax_cross_entropy(x, y, grad, loss),
        "mse": lambda y: be.mse(x, y, grad, loss),
        "count_correct": lambda y: be.count_correct(x, y, out),
        "SoftmaxCrossEntropy()": lambda y: SoftmaxCrossEntropy(be)(x, y, loss),
        "MSE()": lambda y: MSE(be)(x, y, loss),
        "evaluate": lambda y: evaluate(model, x, y, batch_size=4),
    }, (grad, loss, out)


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "mse", "count_correct", "SoftmaxCrossEntropy()", "MSE()",
                                "evaluate"])
@pytest.mark.parametrize("bad,at", BAD)
def test_an_out_of_range_label_is_refused_naming_op_label_and_index(any_backend, op, bad, at):
    be = any_backend
    calls, buffers = ops(be)
    y = labels_with(be, bad, at)
    with pytest.raises(ShapeError) as info:
        calls[op](y)
    assert str(info.value) == (f"{op}: label {bad} at index {at} is outside 0..{C - 1} "
                               f"(the scores have {C} classes)")
    for b in buffers:   # refused before any kernel ran
        assert not np.any(be.to_numpy(b))


@pytest.mark.parametrize("op", ["softmax_cross_entropy", "mse", "count_correct", "SoftmaxCrossEntropy()", "MSE()",
                                "evaluate"])
def test_labels_at_both_ends_of_the_range_pass(any_backend, op):
    be = any_backend
    calls, _ = ops(be)
    y = labels_with(be, C - 1, 0)
    y[1] = 0
    calls[op](y)


def test_the_first_bad_label_is_named():
    be = NumpyBackend()
    y = be.asarray(np.array([1, 12, -3, 40, 2, 0], np.int32))
    with pytest.raises(ShapeError, match=r"count_correct: label 12 at index 1 is outside 0\.\.9"):
        be.count_correct(scores(be), y, be.zeros((1,), np.int32))


def test_the_trainers_steps_leave_labels_unchecked(monkeypatch, backend):
    """The hot path reads no labels back (on a GPU that would be a synchronisation a step):
    check_dataset validated the data set once on the host."""
    import gpunn.backend.ops as ops
    import gpunn.checks as checks
    from gpunn.data import Dataset
    from gpunn.train import TrainConfig, Trainer

    rng = np.random.default_rng(0)
    data = Dataset(rng.random((40, 7), dtype=np.float32), (np.arange(40) % 3).astype(np.int32),
                   rng.random((9, 7), dtype=np.float32), (np.arange(9) % 3).astype(np.int32), 3)
    for loss in ("cross-entropy", "mse"):
        t = Trainer(TrainConfig(hidden=(5,), loss=loss, epochs=1, batch_size=8), data, backend=backend,
                    progress=False, log=lambda s: None)
        calls = []
        monkeypatch.setattr(ops, "labels_in_range", lambda *a: calls.append(a[0]))  # the op records' binding
        monkeypatch.setattr(checks, "labels_in_range", lambda *a: calls.append(a[0]))  # the losses' (checks.…)
        t.train_step(t.train_x[:8], t.train_y[:8], 0.1)
        assert calls == []
        monkeypatch.undo()
