"""End to end on the cuda backend: the same training as the NumPy reference, step for step.

On the CPU this runs the cuda backend in the simulator (NumPy arrays, simulated
kernels, the tiled GEMM): the same backend code a GPU runs.  On a GPU (``pytest -m
gpu``) the same tests run on the device, plus a full MNIST epoch.
"""
import numpy as np
import pytest

from conftest import backend_params, make_backend
from gpunn.train import TrainConfig, Trainer
from mnist_data import needs_mnist
from test_train import toy_data

CUDA_PARAMS = [p for p in backend_params() if p.id != "numpy"]

NETWORKS = {
    "relu-xent-momentum": dict(hidden=(8,), activation="relu", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "seed-sigmoid-mse": dict(hidden=(6, 5), activation="sigmoid", loss="mse", lr=3.0, momentum=0.0, nesterov=False,
                             lr_schedule="constant"),
}


def trainer(backend, net, epochs=1, data=None, batch_size=16):
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, **NETWORKS[net])
    return Trainer(cfg, data or toy_data(n=48, n_test=20, d=12, c=4), backend=backend, progress=False, log=lambda s: None)


@pytest.mark.parametrize("net", NETWORKS)
@pytest.mark.parametrize("cuda_name", CUDA_PARAMS)
def test_sgd_steps_match_the_numpy_backend(cuda_name, net):
    """A few SGD steps from the same initial weights give the same parameters."""
    ref, dut = trainer("numpy", net), trainer(make_backend(cuda_name), net)
    be = dut.backend
    for a, b in zip(ref.model.params, dut.model.params):
        np.testing.assert_array_equal(a, be.to_numpy(b))
    for step in range(3):
        sl = slice(16 * step, 16 * step + 16)
        ref.train_step(ref.train_x[sl], ref.train_y[sl], 0.1)
        dut.train_step(dut.train_x[sl], dut.train_y[sl], 0.1)
    for i, (a, b) in enumerate(zip(ref.model.params, dut.model.params)):
        np.testing.assert_allclose(be.to_numpy(b), a, rtol=1e-4, atol=1e-5, err_msg=f"parameter {i}")
    assert float(be.to_numpy(dut.loop.loss_sum)[0]) == pytest.approx(float(ref.loop.loss_sum[0]), rel=1e-5)
    assert int(be.to_numpy(dut.loop.correct)[0]) == int(ref.loop.correct[0])


@pytest.mark.parametrize("cuda_name", CUDA_PARAMS)
def test_a_whole_epoch_with_the_trainer(cuda_name):
    """The trainer's own loop (device-side batch gather, loss sums, evaluation) on the cuda backend."""
    ref, dut = trainer("numpy", "relu-xent-momentum"), trainer(make_backend(cuda_name), "relu-xent-momentum")
    a, b = ref.run_epoch(), dut.run_epoch()
    assert b.loss == pytest.approx(a.loss, rel=1e-4)
    assert (b.train_accuracy, b.test_accuracy) == (a.train_accuracy, a.test_accuracy)


@pytest.mark.gpu
@needs_mnist
@pytest.mark.parametrize("cuda_name", [p for p in CUDA_PARAMS if p.id == "cuda"])
def test_a_full_mnist_epoch_on_the_gpu_reaches_the_cpu_accuracy(cuda_name, mnist):
    cfg = dict(hidden=(512, 512), epochs=1, batch_size=128)
    cpu = Trainer(TrainConfig(**cfg), mnist, backend="numpy", progress=False, log=lambda s: None).run_epoch()
    trainer = Trainer(TrainConfig(**cfg), mnist, backend=make_backend(cuda_name), progress=False, log=lambda s: None)
    gpu = trainer.run_epoch()
    assert trainer.graphs_used, f"the epoch ran without a CUDA graph: {trainer.graphs_note}"
    assert gpu.test_accuracy >= cpu.test_accuracy - 0.003
