"""The trainer's CUDA-graph path, checked without a GPU.

A captured CUDA graph replays the kernels it recorded with the arguments they had:
arrays by address, numbers by value.  :class:`RecordingBackend` gives the NumPy
backend exactly those semantics (capture records each op call without running it; a
replay runs the recorded calls again), so the trainer's graph path runs here: if a
step took any number from the host that changes between steps (a learning rate, a
batch offset), its replays would reuse the captured value and drift from eager
training.  The GPU tier (tests/gpu) checks the same bits on a device.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import simulator_on
from gpunn.backend import NumpyBackend
from gpunn.backend.base import Unchecked
from gpunn.train import TrainConfig, Trainer
from test_train import toy_data

# 21 full batches of 32 and a 13-row last one: replays, the eager partial batch, a changing rate
DATA = dict(n=21 * 32 + 13, n_test=100, d=20, c=4)
NETS = {
    "relu-xent-nesterov-cosine": dict(hidden=(16,), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "sigmoid-mse-step": dict(hidden=(8, 6), activation="sigmoid", loss="mse", lr=3.0, momentum=0.0,
                             nesterov=False, lr_schedule="step", step_size=1, gamma=0.5),
    # Adam's step count and dropout's masks come from device counters a replay advances
    "gelu-adamw-dropout": dict(hidden=(16, 12), activation="gelu", optimizer="adamw", lr=3e-3, dropout=0.3),
}


class RecordingBackend(NumpyBackend):
    """The NumPy backend with a CUDA graph's semantics, under the cuda backend's name."""

    name = "cuda"  # the trainer captures only on a cuda backend

    def __init__(self):
        super().__init__()
        self.captures = self.replays = 0

    def capture(self, fn):
        calls = []
        real = self.unchecked  # record, do not run: nothing executes during a capture
        self.unchecked = Unchecked.wrapping(real, lambda op, impl: lambda *a: calls.append((impl, a)))
        try:
            fn()
        finally:
            self.unchecked = real
        self.captures += 1

        def replay():
            self.replays += 1
            for impl, a in calls:
                impl(*a)

        return replay


class FailingCaptureBackend(NumpyBackend):
    name = "cuda"

    def capture(self, fn):
        raise RuntimeError("CUBLAS_STATUS_NOT_SUPPORTED during stream capture")


def fitted(backend, net, **kw):
    cfg = TrainConfig(epochs=2, batch_size=32, **NETS[net])
    t = Trainer(cfg, toy_data(**DATA), backend=backend, progress=False, log=lambda s: None, **kw)
    t.fit()
    return t


def assert_same_training(a, b):
    for i, (p, q) in enumerate(zip(a.model.params, b.model.params)):
        assert np.asarray(p).tobytes() == np.asarray(q).tobytes(), f"parameter {i}"
    assert [(h.loss, h.train_accuracy, h.test_accuracy, h.lr) for h in a.history] == \
           [(h.loss, h.train_accuracy, h.test_accuracy, h.lr) for h in b.history]


@pytest.mark.parametrize("net", NETS)
def test_replayed_steps_train_exactly_like_eager_steps(net):
    graph = fitted(RecordingBackend(), net)
    eager = fitted(NumpyBackend(), net)
    be = graph.backend
    assert graph.graphs_on and set(graph.graphed.graphs) == {32, 13} and be.captures == 2  # a full and the last batch
    assert be.replays == (2 * 21 - 1) + 1  # every step but the first of each shape (eager, then captured)
    assert_same_training(graph, eager)


@pytest.mark.parametrize("net", ["relu-xent-nesterov-cosine", "gelu-adamw-dropout"])
def test_several_steps_in_one_graph_train_exactly_like_eager_steps(net):
    """steps_per_graph=4: one replay runs four full-batch steps (each reads its batch and rate at the
    device's cursor); the partial last batch keeps its own one-step graph. The same training."""
    graph = fitted(RecordingBackend(), net, steps_per_graph=4)
    eager = fitted(NumpyBackend(), net)
    be = graph.backend
    # 21 full batches an epoch: 5 calls of 4 (the first of the run eager, then captured), the 21st on its
    # own (too few left for 4), then the partial last batch: each shape's first eager, then captured
    assert set(graph.graphed.graphs) == {(32, 4), 32, 13} and be.captures == 3
    assert be.replays == (5 - 1) + 5 + (1 - 1) + 1 + (1 - 1) + 1
    assert_same_training(graph, eager)


def test_steps_per_graph_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="steps_per_graph must be a positive integer, got 0"):
        fitted(RecordingBackend(), "relu-xent-nesterov-cosine", steps_per_graph=0)


def test_a_failed_capture_trains_on_eagerly_and_says_why():
    said = []
    t = fitted(FailingCaptureBackend(), "relu-xent-nesterov-cosine", notice=said.append)
    assert not t.graphs_on and not t.graphed.graphs
    assert said == ["gpunn: CUDA graph capture failed, training eagerly: RuntimeError: "
                    "CUBLAS_STATUS_NOT_SUPPORTED during stream capture"]
    assert "capture failed" in t.metrics(1.0)["cuda_graphs_note"] and t.metrics(1.0)["cuda_graphs"] is False
    assert_same_training(t, fitted(NumpyBackend(), "relu-xent-nesterov-cosine"))


def test_graphs_turned_off_by_the_option_and_the_environment(monkeypatch):
    t = fitted(RecordingBackend(), "sigmoid-mse-step", graphs=False)
    assert t.backend.captures == 0 and t.graphs_note == "turned off (graphs=False)"
    monkeypatch.setenv("GPUNN_GRAPHS", "0")
    t = fitted(RecordingBackend(), "sigmoid-mse-step")
    assert t.backend.captures == 0 and t.graphs_note == "turned off by GPUNN_GRAPHS=0"


def test_the_numpy_backend_has_no_graphs_and_says_so_only_when_asked():
    said = []
    t = fitted(NumpyBackend(), "sigmoid-mse-step", notice=said.append)
    assert not t.graphs_on and said == []
    t = fitted(NumpyBackend(), "sigmoid-mse-step", notice=said.append, graphs=True)
    assert said == ["gpunn: training without CUDA graphs: the numpy backend has none"]


@pytest.mark.cudasim
@pytest.mark.skipif(not simulator_on(), reason="the CUDA simulator is off in this run (GPUNN_CUDASIM=0 or pytest -m gpu)")
def test_the_simulator_never_captures_and_says_so(new_backend):
    said = []
    cfg = TrainConfig(epochs=1, batch_size=16, hidden=(8,))
    t = Trainer(cfg, toy_data(n=40, n_test=10, d=6, c=3), backend=new_backend("cuda-sim"), progress=False,
                log=lambda s: None, notice=said.append)
    t.fit()
    assert not t.graphs_on and not t.graphed.graphs
    assert said == ["gpunn: training without CUDA graphs: the CUDA simulator has none"]


def test_the_cli_option_reaches_the_trainer(monkeypatch):
    from gpunn import cli

    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr("gpunn.train.Trainer", fake_trainer)
    monkeypatch.setattr(cli, "load_data", lambda args, progress: toy_data(n=40, n_test=10))
    for flag, want in (("--no-graphs", False), ("--graphs", True), (None, None)):
        with pytest.raises(Stop):
            cli.cmd_train(cli.build_parser().parse_args(["train", "--backend", "numpy", *([flag] if flag else [])]))
        assert seen["graphs"] is want
