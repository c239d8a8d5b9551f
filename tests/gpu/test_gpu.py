"""The real-GPU tier (``pytest -m gpu``): what only a device can show.

The conformance suite (tests/backend/test_ops.py) also runs here, on its ``cuda``
backend.  This file adds: the tiled GEMM and the grid-stride paths on the device at
sizes the simulator cannot reach, and the check that a training step queues its
work without ever making the host wait for the GPU.  Everything here skips, with
the reason, on a machine without an NVIDIA GPU and CuPy.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import gpu_unavailable_reason
from gpunn.backend import NumpyBackend

_reason = gpu_unavailable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

REF = NumpyBackend()


def cuda_backend(**options):
    from gpunn.backend.cuda_backend import CudaBackend

    return CudaBackend(**options)


@pytest.mark.parametrize("trans_a, trans_b, accumulate", [(False, False, False), (True, False, True),
                                                          (False, True, False), (True, True, True)])
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (257, 784, 33), (1000, 513, 700)])
def test_tiled_gemm_on_the_device(m, k, n, trans_a, trans_b, accumulate):
    be = cuda_backend(gemm="numba")
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    out0 = rng.standard_normal((m, n)).astype(np.float32)
    want = out0.copy()
    REF.gemm(a, b, want, trans_a, trans_b, accumulate)
    out = be.asarray(out0)
    be.gemm(be.asarray(a), be.asarray(b), out, trans_a, trans_b, accumulate)
    np.testing.assert_allclose(be.to_numpy(out), want, rtol=1e-4, atol=1e-4 * np.sqrt(k))


@pytest.mark.parametrize("n, k, d", [(128, 784, 512), (300, 512, 10), (1000, 513, 700)])
def test_the_gemm_epilogues_on_the_device(n, k, d):
    """gpunn's GEMM with its epilogues at training shapes and past 256 rows (two chunks of the bias
    sum's order): ``linear`` (``gemm_bias_act``) and ``linear_backward`` (``gemm_backward``: both
    GEMMs, relu's derivative and the row sum) against the reference."""
    be = cuda_backend(gemm="numba")
    rng = np.random.default_rng(n + k + d)
    x, w = rng.standard_normal((n, k)).astype(np.float32), (rng.standard_normal((k, d)) / np.sqrt(k)).astype(np.float32)
    b, dz = rng.standard_normal(d).astype(np.float32), rng.standard_normal((n, d)).astype(np.float32)
    s = np.maximum(rng.standard_normal((n, k)), 0).astype(np.float32)  # a relu layer's saved output
    y, dw, dx, db = np.empty((n, d), np.float32), np.empty((k, d), np.float32), np.empty((n, k), np.float32), \
        np.empty(k, np.float32)
    REF.linear(x, w, b, "relu", y)
    REF.linear_backward(x, dz, w, dw, dx, s, "relu", db)
    out, gw, gx, gb = be.empty((n, d)), be.empty((k, d)), be.empty((n, k)), be.empty((k,))
    be.linear(be.asarray(x), be.asarray(w), be.asarray(b), "relu", out)
    be.linear_backward(be.asarray(x), be.asarray(dz), be.asarray(w), gw, gx, be.asarray(s), "relu", gb)
    for got, want, K in ((out, y, k), (gw, dw, n), (gx, dx, d), (gb, db, n * d)):
        np.testing.assert_allclose(be.to_numpy(got), want, rtol=1e-4, atol=1e-4 * np.sqrt(K))


def test_grid_stride_paths_on_the_device():
    """Four blocks for 1000 rows of 1500 columns: every row kernel loops over rows and columns."""
    be = cuda_backend(max_blocks=4)
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((1000, 1500)) * 4).astype(np.float32)
    t = rng.integers(0, 1500, 1000).astype(np.int32)
    grad, loss, hits = np.empty_like(z), np.zeros(1, np.float32), np.zeros(1, np.int32)
    REF.softmax_cross_entropy(z, t, grad, loss)
    REF.count_correct(z, t, hits)
    dz, dg, dl, dh = be.asarray(z), be.empty(z.shape), be.zeros(1), be.zeros(1, np.int32)
    be.softmax_cross_entropy(dz, be.asarray(t), dg, dl)
    be.count_correct(dz, be.asarray(t), dh)
    np.testing.assert_allclose(be.to_numpy(dg), grad, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(be.to_numpy(dl), loss, rtol=1e-5)
    assert be.to_numpy(dh)[0] == hits[0]


SPIN = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


def queue_spin(seconds):
    """Queue a kernel that keeps the GPU busy for about ``seconds``, and return at once."""
    import cupy

    spin = cupy.RawKernel(SPIN, "spin")
    cycles = int(cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["clockRate"] * 1e3 * seconds)
    spin((1,), (1,), (np.int64(cycles),))


class Mlp:
    """A 2-layer MLP's buffers, all allocated once, and one SGD step through backend ops."""

    def __init__(self, be, n=256, d=784, h=128, c=10, seed=0):
        rng = np.random.default_rng(seed)
        f = lambda *s: be.asarray((rng.standard_normal(s) * 0.05).astype(np.float32))  # noqa: E731
        self.be = be
        self.x, self.t = f(n, d), be.asarray(rng.integers(0, c, n).astype(np.int32))
        self.w1, self.b1, self.w2, self.b2 = f(d, h), f(h), f(h, c), f(c)
        self.params = [self.w1, self.b1, self.w2, self.b2]
        self.grads = [be.zeros(p.shape) for p in self.params]
        self.vel = [be.zeros(p.shape) for p in self.params]
        self.h, self.dh, self.z, self.dz = be.empty((n, h)), be.empty((n, h)), be.empty((n, c)), be.empty((n, c))
        self.loss, self.hits = be.zeros(1), be.zeros(1, np.int32)

    def step(self):
        be = self.be
        dw1, db1, dw2, db2 = self.grads
        be.gemm(self.x, self.w1, self.h)  # forward
        be.bias_act(self.h, self.b1, "relu", self.h)
        be.gemm(self.h, self.w2, self.z)
        be.bias_act(self.z, self.b2, "identity", self.z)
        # the label-taking ops unchecked, as the trainer calls them: their checked forms read the
        # labels back to validate them (a synchronisation, by design)
        be.unchecked.softmax_cross_entropy(self.z, self.t, self.dz, self.loss, True)
        be.unchecked.count_correct(self.z, self.t, self.hits)
        be.bias_grad(self.dz, db2)  # backward
        be.gemm(self.h, self.dz, dw2, trans_a=True)
        be.gemm(self.dz, self.w2, self.dh, trans_b=True)
        be.act_backward(self.h, self.dh, "relu", self.dh)
        be.bias_grad(self.dh, db1)
        be.gemm(self.x, self.dh, dw1, trans_a=True)
        for p, g, v in zip(self.params, self.grads, self.vel):  # update
            be.sgd_update(p, g, v, 0.1, 0.9, 1e-4, True)


@pytest.mark.parametrize("gemm", ["cublas", "numba"])
def test_a_training_step_does_not_synchronise(gemm):
    """Queue ~0.5 s of GPU work, then three steps: the host must return at once, the work still queued."""
    import cupy
    import cupyx

    be = cuda_backend(gemm=gemm)
    mlp = Mlp(be)
    mlp.step()  # first call compiles the kernels
    be.synchronize()
    spin_s = 0.5
    queue_spin(spin_s)
    start = time.perf_counter()
    with cupyx.allow_synchronize(False):
        for _ in range(3):
            mlp.step()
    host_s = time.perf_counter() - start
    queued = cupy.cuda.Event()
    queued.record()
    assert host_s < spin_s / 2, f"three steps took {host_s:.3f} s on the host: something waited for the GPU"
    assert not queued.done, "the GPU had finished: a step synchronised with it"
    loss = float(be.to_numpy(mlp.loss)[0])  # the loss reaches the host only when asked for
    assert queued.done and np.isfinite(loss) and loss > 0


def test_the_trainers_step_does_not_synchronise():
    """The same check through gpunn's own training step (layers, fused loss, count, SGD)."""
    import cupy
    import cupyx

    from gpunn.train import TrainConfig, Trainer
    from test_train import toy_data

    trainer = Trainer(TrainConfig(hidden=(512, 512), epochs=1, batch_size=128), toy_data(n=1024, d=784, c=10),
                      backend=cuda_backend(), progress=False, log=lambda s: None)
    xb, yb = trainer.train_x[:128], trainer.train_y[:128]
    trainer.train_step(xb, yb, 0.01)  # compiles the kernels
    trainer.backend.synchronize()
    queue_spin(0.5)
    start = time.perf_counter()
    with cupyx.allow_synchronize(False):
        for _ in range(3):
            trainer.train_step(xb, yb, 0.01)
    host_s = time.perf_counter() - start
    queued = cupy.cuda.Event()
    queued.record()
    assert host_s < 0.25, f"three trainer steps took {host_s:.3f} s on the host: something waited for the GPU"
    assert not queued.done, "the GPU had finished: a step synchronised with it"


# ---------------------------------------------------------------------------- launches without the dispatcher
def test_a_pre_bound_launch_equals_a_dispatcher_launch():
    """The backend's own launch (compiled once, arguments flattened once, cuLaunchKernel) and
    Numba's ``kernel[grid, block](...)`` write the same bits, kernel by kernel."""
    import cupy
    from numba import cuda

    from gpunn.kernels import batch, bias_act, sgd, softmax_cross_entropy

    be = cuda_backend()
    rng = np.random.default_rng(7)
    x, b = rng.standard_normal((130, 257)).astype(np.float32), rng.standard_normal(257).astype(np.float32)
    z, t = (rng.standard_normal((130, 10)) * 3).astype(np.float32), rng.integers(0, 10, 130).astype(np.int32)
    order = rng.permutation(130).astype(np.int32)
    f32, i32 = np.float32, np.int32
    cases = [  # (kernel, grid, block, host arguments; arrays are copied to the device for each launch)
        (bias_act.bias_act_kernel, *bias_act.launch_config(130, 257), (x.reshape(-1), b, np.empty_like(x).reshape(-1),
                                                                       i32(2), i32(1))),
        (softmax_cross_entropy.softmax_cross_entropy_kernel, *softmax_cross_entropy.launch_config(130, 10),
         (z, t, np.empty_like(z), np.empty(130, f32), f32(1 / 130))),
        (sgd.sgd_kernel, *sgd.launch_config(257), (b.copy(), b * 0.5, b * 0.1, f32(0.0), np.array([0.05], f32), i32(1),
                                                   f32(0.9), f32(1e-4), i32(1))),
        (batch.gather_batch_kernel, *batch.launch_config(64, 257), (x, t, order, np.array([40, 0], i32),
                                                                     np.empty((64, 257), f32), np.empty(64, i32))),
    ]
    stream = cuda.external_stream(cupy.cuda.get_current_stream().ptr)
    for kernel, grid, block, host_args in cases:
        ours = [be.asarray(a) if isinstance(a, np.ndarray) else a for a in host_args]
        theirs = [be.asarray(a) if isinstance(a, np.ndarray) else a for a in host_args]
        be._launcher.launch(kernel.__name__, kernel, grid, block, ours, be._current_stream())
        kernel[grid, block, stream](*theirs)
        be.synchronize()
        for a, c in zip(ours, theirs):
            if hasattr(a, "shape") and a.ndim:
                assert be.to_numpy(a).tobytes() == be.to_numpy(c).tobytes(), kernel.__name__


# ---------------------------------------------------------------------------- the training step as a CUDA graph
GRAPH_NETS = {
    "relu-xent-nesterov-cosine": dict(hidden=(64, 32), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4,
                                      lr_schedule="cosine"),
    "primer-sigmoid-mse-step": dict(hidden=(16, 16), activation="sigmoid", loss="mse", lr=3.0, momentum=0.0,
                                    nesterov=False, lr_schedule="step", step_size=1, gamma=0.5),
}


GRAPH_PATHS = {"cublas": {},  # the default step, and the ten-kernel one (gpunn's GEMM and the classifier)
               "own-gemm-classifier": {"gemm": "numba", "versions": {"softmax_cross_entropy": "classifier"}}}


@pytest.mark.parametrize("path", GRAPH_PATHS)
@pytest.mark.parametrize("net", GRAPH_NETS)
def test_graph_replay_equals_eager_bit_for_bit(net, path):
    """Two epochs of 22 steps each (a 37-row last batch with a graph of its own), the rate changing every
    step or every epoch: replaying the captured step gives the bits the eager steps give, on the
    default path and on the fused one (next_batch's ticket, gemm_backward, the classifier)."""
    from gpunn.train import TrainConfig, Trainer
    from test_train import toy_data

    data = toy_data(n=21 * 64 + 37, n_test=100, d=784, c=10)
    cfg = TrainConfig(epochs=2, batch_size=64, **GRAPH_NETS[net])
    runs = {}
    for graphs in (True, False):
        t = Trainer(cfg, data, backend=cuda_backend(**GRAPH_PATHS[path]), graphs=graphs, progress=False,
                    log=lambda s: None)
        t.fit()
        runs[graphs] = t
    replayed, eager = runs[True], runs[False]
    assert replayed.graphs_on and set(replayed._graphs) == {64, 37} and not eager._graphs
    for i, (a, b) in enumerate(zip(replayed.model.params, eager.model.params)):
        assert replayed.backend.to_numpy(a).tobytes() == eager.backend.to_numpy(b).tobytes(), f"parameter {i}"
    assert [h.loss for h in replayed.history] == [h.loss for h in eager.history]
    assert [h.train_accuracy for h in replayed.history] == [h.train_accuracy for h in eager.history]
    assert [h.lr for h in replayed.history] == [h.lr for h in eager.history]


def test_replaying_the_step_never_synchronises():
    """With ~0.5 s of GPU work queued, 50 replays of the trainer's captured step return at once."""
    import cupy
    import cupyx

    from gpunn.train import TrainConfig, Trainer
    from test_train import toy_data

    trainer = Trainer(TrainConfig(hidden=(512, 512), epochs=1, batch_size=128, lr=0.01), toy_data(n=128 * 60, d=784, c=10),
                      backend=cuda_backend(), progress=False, log=lambda s: None)
    trainer.run_epoch()  # compiles, captures
    assert trainer.graphs_used, trainer.graphs_note
    trainer.backend.upload(np.zeros(2, np.int32), trainer.loop.cursor)  # the 50 replays stay within the epoch
    trainer.backend.synchronize()
    queue_spin(0.5)
    start = time.perf_counter()
    with cupyx.allow_synchronize(False):
        for _ in range(50):
            trainer.graphed.graphs[128]()
    host_s = time.perf_counter() - start
    queued = cupy.cuda.Event()
    queued.record()
    assert host_s < 0.25, f"50 replays took {host_s:.3f} s on the host: something waited for the GPU"
    assert not queued.done, "the GPU had finished: a replay synchronised with it"
    trainer.backend.synchronize()  # and they ran without a fault


def test_a_kernel_from_the_disk_cache_is_the_kernel_compiled(tmp_path, monkeypatch):
    """A second launcher over the same cache folder loads the cubin the first one compiled
    (compiling again fails this test) and computes the same bits, which are the reference's."""
    from gpunn.backend.cuda_launch import Launcher
    from gpunn.kernels import bias_act

    be = cuda_backend()
    rng = np.random.default_rng(3)
    x, b = rng.standard_normal((33, 257)).astype(np.float32), rng.standard_normal(257).astype(np.float32)
    want = np.empty_like(x)
    REF.bias_act(x, b, "tanh", want)
    dx, db = be.asarray(x), be.asarray(b)
    grid, block = bias_act.launch_config(33, 257)
    outs = []
    for attempt in range(2):
        launcher = Launcher(bias_act.KERNELS, cc=be._launcher.cc, cache_dir=tmp_path)
        if attempt:
            monkeypatch.setattr(bias_act.bias_act_kernel, "compile", lambda sig: pytest.fail("compiled again"))
        out = be.empty(x.shape)
        launcher.launch("bias_act", bias_act.bias_act_kernel, grid, block,
                        (dx.reshape(-1), db, out.reshape(-1), np.int32(bias_act.TANH), np.int32(1)),
                        be._current_stream())
        outs.append(be.to_numpy(out))
    assert len(list(tmp_path.glob("bias_act-sm*.cubin"))) == 1
    assert outs[0].tobytes() == outs[1].tobytes()
    np.testing.assert_allclose(outs[0], want, rtol=2e-6, atol=1e-6)
