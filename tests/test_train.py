"""Training end to end on the NumPy backend: learning, resuming bit for bit, divergence, no allocations."""
import dataclasses
import tracemalloc

import numpy as np
import pytest

from gpunn import checkpoint
from gpunn.data import Dataset
from gpunn.errors import TrainingDiverged
from gpunn.train import Interrupted, TrainConfig, Trainer, evaluate
from mnist_data import needs_mnist


def toy_data(n=600, n_test=200, d=20, c=4, seed=0):
    """Linearly separable-ish clusters: learnable in a few epochs, fast to train."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((c, d)) * 2
    def split(m):
        y = rng.integers(0, c, m).astype(np.int32)
        x = (centers[y] + rng.standard_normal((m, d))).astype(np.float32)
        return x, y
    (tx, ty), (vx, vy) = split(n), split(n_test)
    return Dataset(train_x=tx, train_y=ty, test_x=vx, test_y=vy, num_classes=c, source="toy")


def make(cfg_kw, data=None, **kw):
    cfg = TrainConfig(**{"hidden": (16,), "epochs": 4, "batch_size": 32, "lr": 0.05, **cfg_kw})
    return Trainer(cfg, data or toy_data(), backend="numpy", progress=False, log=lambda s: None, **kw)


def params(trainer):
    return [p.copy() for p in trainer.model.params]


def test_loss_falls_and_accuracy_rises_on_toy_data():
    t = make({"epochs": 3})
    hist = t.fit()
    assert hist[0].loss > hist[-1].loss
    assert hist[-1].test_accuracy > 0.9
    assert all(h.seconds > 0 and h.samples_per_second > 0 for h in hist)


@pytest.mark.parametrize("schedule", ["constant", "step", "cosine"])
def test_resume_between_epochs_is_bit_exact(tmp_path, schedule):
    """Train 2 epochs, stop, resume for 2 more: the same weights, bit for bit, as 4 straight."""
    kw = {"epochs": 4, "lr_schedule": schedule, "step_size": 1, "gamma": 0.5, "weight_decay": 1e-3}
    straight = make(kw)
    straight.fit()
    first = make(kw, save_path=tmp_path / "ck.npz")
    first.cfg.epochs = 2        # stop after two epochs (the schedule still spans four)
    first.schedule.epochs = 4
    first.fit()
    resumed = make(kw)
    resumed.restore(tmp_path / "ck.npz")
    assert (resumed.epoch, resumed.step) == (2, 0)
    resumed.fit()
    for a, b in zip(params(straight), params(resumed)):
        assert np.array_equal(a, b)
    assert [h.loss for h in resumed.history] == [h.loss for h in straight.history]
    for a, b in zip(straight.optimizer.velocities, resumed.optimizer.velocities):
        assert np.array_equal(a, b)


def test_interrupt_mid_epoch_saves_and_resumes_bit_exact(tmp_path):
    path = tmp_path / "ck.npz"
    straight = make({"epochs": 2})
    straight.fit()
    t = make({"epochs": 2}, save_path=path)
    real_step, calls = t.train_step, []

    def step_then_interrupt(*a):
        real_step(*a)
        calls.append(1)
        if len(calls) == 25:   # as the SIGINT handler does: finish this step, then stop
            t._stop_requested = True
    t.train_step = step_then_interrupt
    with pytest.raises(Interrupted) as info:
        t.fit()
    assert (info.value.epoch, info.value.step) == (1, 6)   # 19 steps per epoch: epoch 2, step 6
    meta = checkpoint.load(path)[0]
    assert (meta["epoch"], meta["step"]) == (1, 6)
    resumed = make({"epochs": 2})
    resumed.restore(path)
    resumed.fit()
    for a, b in zip(params(straight), params(resumed)):
        assert np.array_equal(a, b)
    assert resumed.history[-1].loss == pytest.approx(straight.history[-1].loss, rel=1e-6)


def test_divergence_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "ck.npz"
    t = make({"epochs": 3, "lr": 0.05, "lr_schedule": "constant"}, save_path=path)
    t.run_epoch()
    t.save(path)
    good = checkpoint.load(path)[1]
    t.optimizer.lr = 1e30
    t.schedule.lr = 1e30
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 2 of 19.*learning rate.*last good checkpoint"):
        t.fit()
    kept = checkpoint.load(path)[1]
    assert all(np.array_equal(a, b) and np.isfinite(a).all() for a, b in zip(good, kept))


def test_batch_larger_than_the_data_set_is_one_batch():
    t = make({"epochs": 1, "batch_size": 10_000})
    assert t.steps_per_epoch == 1
    t.fit()


@pytest.mark.parametrize("registry", [False, True], ids=["numpy", "registry"])
@pytest.mark.parametrize("kw", [
    {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-4},
    {"activation": "sigmoid", "loss": "mse", "momentum": 0.0, "nesterov": False},
    {"activation": "tanh", "loss": "mse", "output_activation": "softmax", "momentum": 0.9, "nesterov": False},
], ids=["relu-xent-nesterov-wd", "sigmoid-mse-sgd", "tanh-softmax-mse"])
def test_steady_state_training_step_allocates_nothing(kw, registry):
    """After the first steps, a step neither keeps memory (200 steps: a leak of even 20 bytes
    a step shows) nor makes a temporary the size of an activation or a parameter: with
    256-wide layers and batches of 128 each of those is at least 128 KiB, and the peak may
    rise only by NumPy's own iterator buffer (at most 32 KiB, borrowed while a
    broadcasting ufunc runs).  Checked on the pure-NumPy reference and on what the
    registry gives (the fused loops when Numba is installed)."""
    from gpunn.backend import NumpyBackend, get_backend

    backend = get_backend("numpy") if registry else NumpyBackend()
    cfg = TrainConfig(**{"hidden": (256, 256), "epochs": 1, "batch_size": 128, "lr": 0.01, **kw})
    t = Trainer(cfg, toy_data(), backend=backend, progress=False, log=lambda s: None)
    xb, yb = t.train_x[:128].copy(), t.train_y[:128].copy()
    for _ in range(5):
        t.train_step(xb, yb, 0.01)
    tracemalloc.start()
    try:
        for _ in range(20):   # traced from here: NumPy's caches of small blocks fill up once
            t.train_step(xb, yb, 0.01)
        before = tracemalloc.take_snapshot()
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(200):
            t.train_step(xb, yb, 0.01)
        _, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(s.size_diff for s in after.compare_to(before, "filename") if s.size_diff > 0)
    assert grown < 4096, f"200 training steps kept {grown} more bytes"
    assert peak - start < 64 * 1024, f"a training step allocated a temporary: the peak rose by {peak - start} bytes"


def test_evaluate_counts_in_large_batches():
    t = make({"epochs": 1})
    acc = evaluate(t.model, t.test_x, t.test_y, batch_size=64)
    out = t.model.forward(t.test_x)
    assert acc == pytest.approx((out.argmax(1) == t.test_y).mean())


def test_config_validation():
    for bad, msg in [({"hidden": (0,)}, "positive"), ({"lr": float("nan")}, "learning rate"),
                     ({"lr": -1.0}, "learning rate"), ({"batch_size": 0}, "batch_size"),
                     ({"loss": "hinge"}, "unknown loss"), ({"lr_schedule": "warm"}, "schedule"),
                     ({"activation": "swish"}, "activation")]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**bad)


@pytest.mark.slow
@needs_mnist
def test_real_mnist_short_training(mnist):
    """A short run on real MNIST: loss falls, accuracy far above chance (10%)."""
    data = dataclasses.replace(mnist, train_x=mnist.train_x[:10000], train_y=mnist.train_y[:10000])
    t = Trainer(TrainConfig(hidden=(64,), epochs=2, lr=0.1), data, backend="numpy", progress=False, log=lambda s: None)
    hist = t.fit()
    assert hist[1].loss < hist[0].loss
    assert hist[-1].test_accuracy > 0.9


@pytest.mark.slow
@needs_mnist
def test_seed_network_learns_on_real_mnist(mnist):
    """The primer's 784-16-16-10 sigmoid net, MSE, batches of 100: well past chance in one epoch."""
    cfg = TrainConfig(hidden=(16, 16), activation="sigmoid", loss="mse", batch_size=100, lr=3.0,
                      momentum=0.0, nesterov=False, lr_schedule="constant", epochs=2)
    t = Trainer(cfg, mnist, backend="numpy", progress=False, log=lambda s: None)
    hist = t.fit()
    assert hist[-1].test_accuracy > 0.85


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: setattr(d, "train_y", d.train_y.astype(np.float32)), "integer class indices"),
    (lambda d: d.train_y.__setitem__(5, 4), "train label 4 at index 5 is outside 0..3"),
    (lambda d: d.test_y.__setitem__(0, -1), "test label -1 at index 0"),
    (lambda d: setattr(d, "test_y", d.test_y[:-1]), "200 images but 199 labels"),
    (lambda d: setattr(d, "test_x", d.test_x[:, :10].copy()), "20 pixels but test images 10"),
])
def test_bad_datasets_are_refused_before_any_kernel_runs(mutate, msg):
    from gpunn.errors import DataError
    d = toy_data()
    mutate(d)
    with pytest.raises(DataError, match=msg):
        make({}, data=d)


def test_resume_refuses_another_data_set(tmp_path):
    """Other examples mean other batches: resuming on them would not continue the run."""
    from gpunn.errors import CheckpointError
    t = make({"epochs": 1}, save_path=tmp_path / "ck.npz")
    t.fit()
    for other, msg in [(toy_data(n=300), "trained on 600 examples; this data set has 300"),
                       (toy_data(seed=5), "trained on 600 examples with other labels")]:
        with pytest.raises(CheckpointError, match=msg):
            make({"epochs": 2}, data=other).restore(tmp_path / "ck.npz")


def test_a_resumed_epoch_keeps_the_time_it_had_spent(tmp_path):
    path = tmp_path / "ck.npz"
    t = make({"epochs": 1}, save_path=path)
    real_step = t.train_step

    def step_then_interrupt(*a):
        real_step(*a)
        if t.step == 17:                 # inside the 18th step of 19
            t._stop_requested = True
    t.train_step = step_then_interrupt
    with pytest.raises(Interrupted):
        t.fit()
    partial = checkpoint.load(path)[0]["partial"]
    assert partial["seconds"] > 0 and partial["seen"] == 18 * 32
    resumed = make({"epochs": 1})
    resumed.restore(path)
    stats = resumed.run_epoch()
    assert stats.seconds >= partial["seconds"] and stats.samples_per_second == pytest.approx(600 / stats.seconds)


def test_ctrl_c_after_a_divergence_keeps_the_good_checkpoint(tmp_path):
    """A GPU reads the loss every 50 steps; Ctrl-C in between must not save NaN weights."""
    path = tmp_path / "ck.npz"
    t = make({"epochs": 3, "lr_schedule": "constant"}, save_path=path)
    t.run_epoch()
    t.save(path)
    good = checkpoint.load(path)[1]
    t.backend.host_reads_free = False                 # check every 50 steps, as on a GPU
    t.schedule.lr = 1e30
    real_step = t.train_step

    def step_then_interrupt(*a):
        real_step(*a)
        if t.step == 5:
            t._stop_requested = True
    t.train_step = step_then_interrupt
    with pytest.raises(TrainingDiverged, match="epoch 2, step 6 of 19"):
        t.fit()
    assert all(np.array_equal(a, b) for a, b in zip(good, checkpoint.load(path)[1]))


def test_a_divergence_found_at_ctrl_c_names_the_rate_of_the_last_step_done(tmp_path):
    """The stop path once named the next step's rate (``+step`` where the loop used ``+step-1``);
    one global-step function now serves the rate table, the checks and the stop."""
    t = make({"epochs": 2, "lr_schedule": "cosine", "lr": 0.5}, save_path=tmp_path / "ck.npz")
    real_step, calls = t.train_step, []

    def step_then_diverge(*a):
        real_step(*a)
        calls.append(1)
        if len(calls) == 25:  # epoch 2, step 6: the loss overflows, then Ctrl-C arrives
            t.loop.loss_sum[...] = np.inf
            t._stop_requested = True
    t.train_step = step_then_diverge
    with pytest.raises(TrainingDiverged) as info:
        t.fit()
    assert (t.epoch, t.step) == (1, 6) and t.global_step(5) == 24
    assert f"({t.schedule(24):.4g})" in str(info.value) and t.schedule(24) != t.schedule(25)
    assert checkpoint.load(tmp_path / "ck.npz")[0]["epoch"] == 1  # the last good one, not the diverged weights


def stop_after(t, steps):
    """Run ``t.fit()`` and stop it as SIGINT does after ``steps`` steps (it saves, then raises Interrupted)."""
    real_step, calls = t.train_step, []

    def step_then_interrupt(*a):
        real_step(*a)
        calls.append(1)
        if len(calls) == steps:
            t._stop_requested = True
    t.train_step = step_then_interrupt
    with pytest.raises(Interrupted):
        t.fit()
    return t


@pytest.mark.parametrize("optimizer, wd", [("adam", 0.0), ("adamw", None)])
def test_adam_runs_resume_mid_epoch_bit_exact_with_their_moments_and_count(tmp_path, optimizer, wd):
    """Stop Adam(W) in the middle of an epoch, resume: the weights, both moments and the step count
    are those of a run that never stopped (the count lives on the device and in the checkpoint)."""
    kw = {"epochs": 2, "optimizer": optimizer, "lr": 3e-3, "weight_decay": wd, "beta1": 0.8, "eps": 1e-7}
    straight = make(kw)
    straight.fit()
    assert straight.optimizer.steps_taken == 2 * straight.steps_per_epoch == 38
    path = tmp_path / "ck.npz"
    stop_after(make(kw, save_path=path), 23)
    assert checkpoint.read_meta(path)["optimizer"] == {"name": optimizer, "counters": {"step": 23}}
    resumed = make(kw)
    resumed.restore(path)
    assert resumed.optimizer.steps_taken == 23
    resumed.fit()
    for a, b in zip(params(straight), params(resumed)):
        assert np.array_equal(a, b)
    for name in ("m", "v"):
        for a, b in zip(straight.optimizer.state()[name], resumed.optimizer.state()[name]):
            assert np.array_equal(a, b)
    assert resumed.optimizer.steps_taken == 38


def test_a_checkpoint_of_one_optimizer_does_not_resume_another(tmp_path):
    from gpunn.errors import CheckpointError

    t = make({"epochs": 1, "optimizer": "adam", "lr": 1e-3}, save_path=tmp_path / "ck.npz")
    t.fit()
    other = make({"epochs": 1})
    with pytest.raises(CheckpointError, match="the checkpoint holds adam's state, this run's optimizer is sgd"):
        other.restore(tmp_path / "ck.npz")


def test_dropout_runs_resume_mid_epoch_bit_exact(tmp_path):
    """Dropout's masks come from (seed, step count, element): a resumed run sets each layer's count
    to the steps taken and draws the masks the straight run drew."""
    kw = {"epochs": 2, "hidden": (16, 12), "dropout": 0.25}
    straight = make(kw)
    straight.fit()
    path = tmp_path / "ck.npz"
    stop_after(make(kw, save_path=path), 27)
    resumed = make(kw)
    resumed.restore(path)
    resumed.fit()
    for a, b in zip(params(straight), params(resumed)):
        assert np.array_equal(a, b)
    no_dropout = make({**kw, "dropout": 0.0})
    no_dropout.fit()
    assert not np.array_equal(params(no_dropout)[0], params(straight)[0])  # dropout did change the training


def test_the_trainer_trains_a_model_and_optimizer_of_the_users_own_with_a_custom_layer(tmp_path):
    """Trainer(model=..., optimizer=...): a Sequential with a registered layer of the user's (a
    learnable per-feature scale), checkpointed and resumed like gpunn's own MLP."""
    from gpunn.backend import get_backend
    from gpunn.layers import Dense, Layer, Sequential, register_layer
    from gpunn.optim import AdamW

    @register_layer
    class Scale(Layer):
        param_names, grad_names = ("s",), ("ds",)

        def __init__(self, width, *, backend=None):
            super().__init__(backend)
            self.width = width
            self.s, self.ds = self.backend.asarray(np.ones(width, np.float32)), self.backend.zeros((width,))
            self.params, self.grads = (self.s,), (self.ds,)

        def config(self):
            return {"type": "Scale", "width": self.width}

        def forward(self, x):
            self._x = x
            self._y = x * self.s
            return self._y

        def backward(self, dy):
            self.ds[...] = (dy * self._x).sum(axis=0)
            return dy * self.s

    be = get_backend("numpy")

    def build():
        model = Sequential([Dense(20, 16, "relu", backend=be, rng=np.random.default_rng(0)), Scale(16, backend=be),
                            Dense(16, 4, backend=be, rng=np.random.default_rng(1))])
        return model, AdamW(model.parameters(), model.grads, lr=3e-3, backend=be)

    model, opt = build()
    assert repr(model) == "Sequential(Dense(20→16, relu), Scale(width=16), Dense(16→4))"
    cfg = TrainConfig(epochs=3, batch_size=32, lr_schedule="constant")
    t = Trainer(cfg, toy_data(), backend=be, model=model, optimizer=opt, progress=False, log=lambda s: None,
                save_path=tmp_path / "ck.npz")
    assert t.cfg.optimizer == "adamw" and t.cfg.lr == 3e-3
    t.fit()
    assert t.history[-1].test_accuracy > 0.9 and not np.array_equal(be.to_numpy(model.layers[1].s), np.ones(16))
    import gpunn
    loaded = gpunn.load(tmp_path / "ck.npz", backend=be)
    assert repr(loaded) == repr(model)
    np.testing.assert_array_equal(loaded.layers[1].s, model.layers[1].s)
    other, other_opt = build()
    with pytest.raises(ValueError, match="the model's output width is 4, the data's is 3"):
        Trainer(cfg, toy_data(c=3), backend=be, model=other, progress=False)
    with pytest.raises(ValueError, match="the optimizer must be over the model's parameters"):
        Trainer(cfg, toy_data(), backend=be, model=other, optimizer=opt, progress=False)


def test_a_layer_with_read_only_params_is_told_the_contract():
    from gpunn.backend import get_backend
    from gpunn.layers import Dense, Layer, Sequential

    class Frozen(Layer):
        @property
        def params(self):
            return (self.backend.zeros((3,)),)

        @property
        def grads(self):
            return (self.backend.zeros((3,)),)

    be = get_backend("numpy")
    with pytest.raises(TypeError, match="Frozen: params and grads must be plain attributes"):
        Sequential([Dense(3, 3, backend=be), Frozen(be)])


NARROW_RUNS = {  # the primer's kind of network, and a momentum one with cross-entropy; partial last batches
    "primer": dict(hidden=(16, 16), activation="sigmoid", loss="mse", lr=3.0, momentum=0.0, nesterov=False),
    "xent-nesterov": dict(hidden=(32,), activation="tanh", weight_decay=1e-3),
}


@pytest.mark.parametrize("run", NARROW_RUNS)
def test_the_fused_step_trains_exactly_like_the_ops_it_is(run, tmp_path):
    """On the numpy backend ``narrow_step`` is the ops it fuses, in order: the same run bit for bit,
    checkpoint and resume included (its arrays are the model's and the optimizer's own, in place)."""
    cfg = {**NARROW_RUNS[run], "epochs": 3}
    plain, fused = make(cfg), make(cfg, fused_step=True)
    a = plain.fit()
    fused.run_epoch()
    fused.save(tmp_path / "f.npz")
    resumed = make(cfg, fused_step=True)
    resumed.restore(tmp_path / "f.npz")
    b = resumed.fit()
    assert [dataclasses.replace(s, seconds=0, samples_per_second=0) for s in a] == \
        [dataclasses.replace(s, seconds=0, samples_per_second=0) for s in b]
    for p, q in zip(params(plain), params(resumed)):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("cfg_kw, message", [
    ({"hidden": (64,)}, "every layer must be at most 32 wide (a narrow network); 64 is not"),
    ({"optimizer": "adam"}, "it updates with SGD (momentum, Nesterov and weight decay included), not adam"),
    ({"dropout": 0.2}, "it takes Dense layers only (this model has Dropout)"),
    ({"activation": "gelu"}, "gelu's derivative reads its input"),
    ({"hidden": (8, 8, 8, 8)}, "1..4 layers"),
])
def test_the_fused_step_says_why_it_cannot_train_a_run(cfg_kw, message):
    with pytest.raises(ValueError, match=f"the fused step cannot train this run: .*{message.replace('(', '.').replace(')', '.')}"):
        make(cfg_kw, fused_step=True)
