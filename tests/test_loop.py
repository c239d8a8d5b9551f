"""gpunn.loop: the device loop's state, one step from it, and the graphed step's capture per batch size."""
import numpy as np

from gpunn.backend import NumpyBackend
from gpunn.errors import GraphUnavailable
from gpunn.loop import DeviceLoop, GraphedStep, global_step, graph_setting


def test_global_step_counts_across_epochs():
    assert [global_step(e, s, 5) for e, s in ((0, 0), (0, 4), (1, 0), (3, 2))] == [0, 4, 5, 17]


def test_a_step_takes_its_batch_and_rate_from_the_device_and_advances_the_cursor():
    be = NumpyBackend()
    x = np.arange(14, dtype=np.float32).reshape(7, 2)
    y = np.arange(7, dtype=np.int32)
    loop = DeviceLoop(be, x, y, batch_size=3, steps_per_epoch=3)
    order = np.array([6, 5, 4, 3, 2, 1, 0], np.int32)
    rates = np.array([0.3, 0.2, 0.1, 0.05], np.float32)
    loop.set_sums(9.0, 4)
    loop.start_epoch(order, rates, step=1)  # a resumed epoch: the cursor at its second batch
    assert (loop.loss(), loop.correct_count()) == (9.0, 4)  # the sums it had are kept
    seen = []
    loop.step(3, lambda xb, yb, lr: seen.append((yb.copy(), xb[:, 0].copy(), float(lr[0]))))
    (yb, x0, lr), = seen
    np.testing.assert_array_equal(yb, [3, 2, 1])
    np.testing.assert_array_equal(x0, [6, 4, 2])
    assert lr == np.float32(0.2)
    np.testing.assert_array_equal(loop.cursor, [6, 2])
    assert loop.lr[0] == np.float32(0.2)  # the step's rate, set with its batch (next_batch)
    loop.start_epoch(order, rates, step=0)
    assert (loop.loss(), loop.correct_count()) == (0.0, 0)  # a new epoch starts its sums at zero


class Capturing(NumpyBackend):
    name = "cuda"

    def __init__(self, fail=False):
        super().__init__()
        self.fail, self.captured = fail, []

    def capture(self, fn):
        if self.fail:
            raise GraphUnavailable("no graphs today\nsecond line")
        self.captured.append(fn)
        return lambda: self.replays.append(fn)


def test_the_graphed_step_captures_each_batch_size_once_then_replays():
    be, steps, said = Capturing(), [], []
    be.replays = []
    graphed = GraphedStep(be, steps.append, True, None, said.append)
    for m in (4, 4, 4, 2, 4, 2):
        graphed(m)
    assert steps == [4, 2] and sorted(graphed.graphs) == [2, 4] and graphed.used
    assert len(be.replays) == 4 and not said


def test_a_failed_capture_runs_eagerly_from_then_on_and_says_why_once():
    be, steps, said = Capturing(fail=True), [], []
    graphed = GraphedStep(be, steps.append, True, None, said.append)
    for m in (4, 4, 4):
        graphed(m)
    assert steps == [4, 4, 4] and not graphed.on and not graphed.used
    assert graphed.note == "capture failed (GraphUnavailable: no graphs today)"
    assert said == ["CUDA graph capture failed, training eagerly: GraphUnavailable: no graphs today"]


def test_graph_setting_names_why_graphs_are_off(monkeypatch):
    said = []
    monkeypatch.delenv("GPUNN_GRAPHS", raising=False)
    assert graph_setting(NumpyBackend(), None, said.append) == (False, "the numpy backend has no CUDA graphs")
    assert not said  # not asked for: nothing to say
    assert graph_setting(NumpyBackend(), True, said.append)[0] is False and said
    assert graph_setting(Capturing(), None, said.append) == (True, None)
    assert graph_setting(Capturing(), False, said.append) == (False, "turned off (graphs=False)")
    monkeypatch.setenv("GPUNN_GRAPHS", "0")
    assert graph_setting(Capturing(), None, said.append) == (False, "turned off by GPUNN_GRAPHS=0")
