"""End to end on the cuda backend: the same training as the NumPy reference, step for step.

On the CPU this runs the cuda backend in the simulator (NumPy arrays, simulated
kernels, the tiled GEMM): the same backend code a GPU runs.  On a GPU (``pytest -m
gpu``) the same tests run on the device, plus a full MNIST epoch.
"""
import numpy as np
import pytest

from conftest import backend_params, make_backend
from gpunn.backend.ops import OPS
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


def assert_three_steps_match(ref, dut):
    """Three train_steps of 16 rows on each; then the same parameters, loss sum and count."""
    be = dut.backend
    for step in range(3):
        sl = slice(16 * step, 16 * step + 16)
        ref.train_step(ref.train_x[sl], ref.train_y[sl], 0.1)
        dut.train_step(dut.train_x[sl], dut.train_y[sl], 0.1)
    for i, (a, b) in enumerate(zip(ref.model.params, dut.model.params)):
        np.testing.assert_allclose(be.to_numpy(b), a, rtol=1e-4, atol=1e-5, err_msg=f"parameter {i}")
    assert float(be.to_numpy(dut.loop.loss_sum)[0]) == pytest.approx(float(ref.loop.loss_sum[0]), rel=1e-5)
    assert int(be.to_numpy(dut.loop.correct)[0]) == int(ref.loop.correct[0])


@pytest.mark.parametrize("net", NETWORKS)
@pytest.mark.parametrize("cuda_name", CUDA_PARAMS)
def test_sgd_steps_match_the_numpy_backend(cuda_name, net):
    """A few SGD steps from the same initial weights give the same parameters."""
    ref, dut = trainer("numpy", net), trainer(make_backend(cuda_name), net)
    for a, b in zip(ref.model.params, dut.model.params):
        np.testing.assert_array_equal(a, dut.backend.to_numpy(b))
    assert_three_steps_match(ref, dut)


@pytest.mark.parametrize("version", [v for v in OPS["softmax_cross_entropy"].versions if v != "fused"])
@pytest.mark.parametrize("cuda_name", CUDA_PARAMS)
def test_each_loss_version_trains_like_the_reference(cuda_name, version):
    """The step with another softmax-cross-entropy version (the classifier's loss, count and both
    gradients in 2 launches) gives the reference's parameters, loss and count."""
    ref = trainer("numpy", "relu-xent-momentum")
    dut = trainer(make_backend(cuda_name, versions={"softmax_cross_entropy": version}), "relu-xent-momentum")
    assert_three_steps_match(ref, dut)


@pytest.mark.parametrize("net", NETWORKS)
@pytest.mark.parametrize("cuda_name", CUDA_PARAMS)
def test_the_fused_step_trains_like_the_reference(cuda_name, net):
    """``--fused-step`` on the cuda backend (two kernels a step) against the numpy backend's steps:
    the same parameters, loss sum and count after three whole steps, the partial last batch too."""
    def fused_trainer(backend):
        cfg = TrainConfig(epochs=1, batch_size=16, **NETWORKS[net])
        return Trainer(cfg, toy_data(n=40, n_test=20, d=12, c=4), backend=backend, progress=False,
                       log=lambda s: None, fused_step=True)

    ref, dut = fused_trainer("numpy"), fused_trainer(make_backend(cuda_name))
    be = dut.backend
    for t in (ref, dut):
        t.loop.start_epoch(np.random.default_rng(1).permutation(40), np.linspace(0.2, 0.1, 4), 0)
        for m in (16, 16, 8):
            t.device_step(m)
    for i, (a, b) in enumerate(zip(ref.model.params, dut.model.params)):
        np.testing.assert_allclose(be.to_numpy(b), a, rtol=1e-4, atol=1e-5, err_msg=f"parameter {i}")
    assert dut.loop.loss() == pytest.approx(ref.loop.loss(), rel=1e-5)
    assert dut.loop.correct_count() == ref.loop.correct_count()
    assert list(be.to_numpy(dut.loop.cursor)) == [40, 3] and dut.last_rate() == ref.last_rate()


@pytest.mark.parametrize("hidden, activation", [((8,), "relu"), ((9, 7), "gelu"), ((6, 5), "sigmoid")], ids=str)
@pytest.mark.parametrize("cuda_name", CUDA_PARAMS)
def test_the_fused_backward_is_the_unfused_one_bit_for_bit(cuda_name, hidden, activation):
    """With gpunn's GEMM each layer but the first runs its backward as one ``gemm_backward`` (both
    GEMMs, the layer below's activation derivative and bias sum): three whole steps of it give
    the unfused ops' bits exactly (the same backend with its GEMM fusions turned off)."""
    def run(fused):
        be = make_backend(cuda_name, gemm="numba")
        if not fused:
            be._own_blocked_gemm = lambda: False  # the same GEMM kernel, called op by op
        kernels = []
        be.launch_hooks.append(lambda launch, go: (kernels.append(launch.name), go()))
        cfg = TrainConfig(epochs=1, batch_size=16, hidden=hidden, activation=activation, lr=0.1, momentum=0.9)
        t = Trainer(cfg, toy_data(n=48, n_test=20, d=12, c=4), backend=be, progress=False, log=lambda s: None)
        t.loop.start_epoch(np.arange(48), np.full(4, 0.1, np.float32), 0)
        for _ in range(3):
            t.device_step(16)
        return [be.to_numpy(p).tobytes() for p in t.model.params], be.to_numpy(t.loop.loss_sum).tobytes(), kernels

    (fused, fused_loss, kernels), (plain, plain_loss, plain_kernels) = run(True), run(False)
    assert kernels.count("gemm_backward") == 3 * len(hidden) and "gemm_backward" not in plain_kernels
    assert "act_bias_grad_partial" not in kernels and len(kernels) < len(plain_kernels)
    assert fused == plain and fused_loss == plain_loss


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


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_name", [p for p in CUDA_PARAMS if p.id == "cuda"])
def test_tf32_is_cublas_tensor_core_arithmetic_and_trains_like_fp32(cuda_name):
    """--precision tf32 on the device: a GEMM differs from FP32 by TF32's rounding (so the mode took
    effect) and no more; a few training steps stay close to the FP32 reference."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((256, 784)).astype(np.float32), rng.standard_normal((784, 512)).astype(np.float32)
    got = {}
    for precision in ("fp32", "tf32"):
        be = make_backend(cuda_name, precision=precision)
        out = be.zeros((256, 512))
        be.gemm(be.asarray(a), be.asarray(b), out)
        got[precision] = be.to_numpy(out)
    want = a.astype(np.float64) @ b
    err = {p: np.abs(g - want).max() / np.abs(want).max() for p, g in got.items()}
    assert err["fp32"] < 1e-5 < err["tf32"] < 1e-2, err
    ref = trainer("numpy", "relu-xent-momentum")
    dut = trainer(make_backend(cuda_name, precision="tf32"), "relu-xent-momentum")
    for step in range(3):
        sl = slice(16 * step, 16 * step + 16)
        ref.train_step(ref.train_x[sl], ref.train_y[sl], 0.1)
        dut.train_step(dut.train_x[sl], dut.train_y[sl], 0.1)
    for a, b in zip(ref.model.params, dut.model.params):
        np.testing.assert_allclose(dut.backend.to_numpy(b), a, rtol=2e-2, atol=2e-3)
