"""gpunn.optim: SGD, Adam and AdamW against their formulas written here, on every backend (and
against PyTorch where it is installed); checks of their settings; schedules are in test_train.py."""
from __future__ import annotations

import numpy as np
import pytest

from gpunn.optim import OPTIMIZERS, SGD, Adam, AdamW


def adam64(p, grads, lr, betas, eps, wd, decoupled):
    """PyTorch's Adam/AdamW algorithm (its documentation's pseudocode), in float64."""
    p = p.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, 1):
        g = g.astype(np.float64)
        if decoupled:
            p = p - lr * wd * p
        elif wd:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


def grads_for(shape, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(steps)]


@pytest.mark.parametrize("cls, wd", [(Adam, 0.0), (Adam, 0.05), (AdamW, 0.0), (AdamW, None)],
                         ids=["adam", "adam-wd", "adamw-no-wd", "adamw-default-wd"])
def test_adam_and_adamw_follow_pytorchs_algorithm(backend, cls, wd):
    be = backend
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal((7, 33)).astype(np.float32)
    grads = grads_for(p0.shape, 25)
    p, g = be.asarray(p0.copy()), be.zeros(p0.shape)
    opt = cls([p], [g], lr=1e-2, betas=(0.8, 0.99), eps=1e-6, weight_decay=wd, backend=be)
    for gi in grads:
        be.upload(gi, g)
        opt.step()
    want_wd = 0.01 if wd is None else wd
    assert opt.weight_decay == want_wd and opt.steps_taken == 25
    want, m, v = adam64(p0, grads, 1e-2, (0.8, 0.99), 1e-6, want_wd, cls is AdamW)
    np.testing.assert_allclose(be.to_numpy(p), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(be.to_numpy(opt.m[0]), m, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(be.to_numpy(opt.v[0]), v, rtol=1e-4, atol=1e-7)


def test_adam_on_a_model_is_one_update_over_the_flat_parameters():
    from gpunn.backend import NumpyBackend
    from gpunn.layers import mlp

    be = NumpyBackend()
    model = mlp([5, 4, 3], "relu", "identity", backend=be, seed=0)
    opt = AdamW(model.params, model.grads, backend=be)
    assert len(opt._steps) == 1 and opt._steps[0][0] is model.params.flat
    assert all(np.shares_memory(m, opt._steps[0][2]) and m.shape == p.shape for m, p in zip(opt.m, model.params))


def test_a_step_at_a_device_rate_counts_and_reads_it_on_the_device():
    from gpunn.backend import NumpyBackend

    be = NumpyBackend()
    p0 = np.linspace(-1, 1, 12, dtype=np.float32)
    grads = grads_for(p0.shape, 3, seed=2)
    a, b = be.asarray(p0.copy()), be.asarray(p0.copy())
    ga, gb = be.zeros(p0.shape), be.zeros(p0.shape)
    by_number, by_array = Adam([a], [ga], backend=be), Adam([b], [gb], backend=be)
    lr = be.zeros((1,))
    for rate, gi in zip((1e-3, 2e-2, 5e-3), grads):
        be.upload(gi, ga), be.upload(gi, gb)
        be.upload(np.array([rate], np.float32), lr)
        by_number.step(rate)
        by_array.step(lr)
    assert a.tobytes() == b.tobytes() and by_array.counters()["step"][0] == 3


def test_adam_matches_torch_where_it_is_installed():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: compared with the formula only")
    from gpunn.backend import NumpyBackend

    be = NumpyBackend()
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(40).astype(np.float32)
    grads = grads_for(p0.shape, 20, seed=4)
    for cls, tcls, wd in ((Adam, torch.optim.Adam, 0.1), (AdamW, torch.optim.AdamW, 0.1), (Adam, torch.optim.Adam, 0.0)):
        p, g = be.asarray(p0.copy()), be.zeros(p0.shape)
        opt = cls([p], [g], lr=3e-3, weight_decay=wd, backend=be)
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        topt = tcls([tp], lr=3e-3, weight_decay=wd)
        for gi in grads:
            be.upload(gi, g)
            opt.step()
            tp.grad = torch.from_numpy(gi.copy())
            topt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=cls.__name__)


@pytest.mark.parametrize("kwargs, message", [
    ({"betas": (1.0, 0.999)}, "Adam: beta1 must be a number in \\[0, 1\\)"),
    ({"betas": (0.9, -0.1)}, "Adam: beta2 must be a number in \\[0, 1\\)"),
    ({"betas": 0.9}, "Adam: betas must be a pair"),
    ({"eps": 0.0}, "Adam: eps must be a positive finite number"),
    ({"eps": float("nan")}, "Adam: eps must be"),
    ({"weight_decay": -1.0}, "Adam: weight decay must be a finite number >= 0"),
    ({"lr": 0.0}, "Adam: learning rate must be a positive finite number"),
])
def test_adams_settings_are_checked(kwargs, message):
    from gpunn.backend import NumpyBackend

    be = NumpyBackend()
    with pytest.raises(ValueError, match=message):
        Adam([be.zeros((3,))], [be.zeros((3,))], **kwargs, backend=be)


def test_the_optimizers_by_name():
    assert OPTIMIZERS == {"sgd": SGD, "adam": Adam, "adamw": AdamW}
