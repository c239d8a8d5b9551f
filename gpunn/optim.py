"""Optimizers (SGD with momentum, Nesterov and weight decay; Adam; AdamW), each one fused backend
op over the flat parameters, and learning-rate schedules."""
from __future__ import annotations

import math

import numpy as np

from gpunn.checks import BETA, EPSILON, LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, array, rate


def valid_learning_rate(lr) -> bool:
    """Whether ``lr`` can be a learning rate: a number above 0, finite in float32 (the trainer's
    options, :class:`SGD` and the command line's ``--lr`` all ask this; the rule itself is
    :data:`gpunn.checks.LEARNING_RATE`, which the ``sgd_update`` op checks too)."""
    return LEARNING_RATE.ok(lr)


class Optimizer:
    """What every optimizer shares: its parameters and gradients, checked once, and its state.

    When ``params`` and ``grads`` are views into one flat array each (``Sequential.params``/
    ``.grads`` carry it as ``.flat``), every per-parameter state array is a view into one flat
    array too, and a step is a single op over all the parameters: the same arithmetic element
    by element, one call instead of one per array.  ``state()`` names the per-parameter arrays a
    checkpoint saves (``<name>/<i>``); ``counters()`` the one-element int32 device arrays it saves
    in its metadata (Adam's step count)."""

    name = "optimizer"  # its word on the command line (--optimizer) and in configurations
    op = "update"  # its update op's name: where its array checks say a problem is
    default_weight_decay = 0.0

    def __init__(self, params, grads, lr, backend):
        kind = type(self).__name__
        self.lr = LEARNING_RATE.check(kind, "learning rate", lr)
        self.params, self.grads = list(params), list(grads)
        self.backend = backend
        if len(self.params) != len(self.grads):
            raise ValueError(f"{kind}: {len(self.params)} parameters but {len(self.grads)} gradients")
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            array(self.op, f"param {i}", p, dtype=backend.dtype, backend=backend)
            array(self.op, f"grad {i}", g, shape=p.shape, dtype=backend.dtype, backend=backend)
        flat_p, flat_g = getattr(params, "flat", None), getattr(grads, "flat", None)
        if flat_p is not None and flat_g is not None and flat_p.shape == flat_g.shape and params.offsets == grads.offsets:
            self._targets = [(flat_p, flat_g)]  # one op over the flat arrays
            self._offsets = params.offsets
        else:
            self._targets = list(zip(self.params, self.grads))
            self._offsets = None

    def _zeros(self):
        """A zeroed state array per parameter, and the same per update target (one flat array
        whose views they are, when the parameters are flat)."""
        be = self.backend
        if self._offsets is not None:
            flat = be.zeros(self._targets[0][0].shape)
            return [flat[o:o + p.size].reshape(p.shape) for o, p in zip(self._offsets, self.params)], [flat]
        views = [be.zeros(p.shape) for p in self.params]
        return views, views

    def _rate(self, lr):
        """This step's rate: the constructor's, a number checked like it, or a device array."""
        return self.lr if lr is None else rate(f"{type(self).__name__}.step", self.backend, lr)

    def step(self, lr=None):
        """Update every parameter in place with its gradient.

        lr: this step's rate (from a schedule), or a one-element device array holding it,
        which the update reads when it runs (a step captured as a CUDA graph needs that).
        A number is checked like the constructor's (above 0, finite in float32); of an array
        only the shape and dtype are: its value is on the device."""
        lr = self._rate(lr)
        self.backend.join()  # every gradient a branch computed is complete (see Backend.branch)
        self._update(self.backend.unchecked, lr)

    def _update(self, ops, lr):
        raise NotImplementedError

    def state(self) -> dict:
        """The optimizer's per-parameter state to checkpoint, by name: one array per parameter
        (None where that parameter keeps none), saved as ``<name>/<i>`` (:mod:`gpunn.checkpoint`)."""
        return {}

    def counters(self) -> dict:
        """The optimizer's one-element int32 device counters, by name (saved in a checkpoint's meta)."""
        return {}

    def config(self) -> dict:
        """The optimizer's name and settings (what ``make_optimizer`` takes)."""
        return {"name": self.name, "lr": self.lr}


class SGD(Optimizer):
    """Stochastic gradient descent, one fused backend op per parameter, or per model (PyTorch's definition).

    ``g = grad + weight_decay*p``; ``v = momentum*v + g``; ``p -= lr * (g + momentum*v if nesterov else v)``.

    The arrays are checked once, here; ``step`` then calls ``backend.unchecked.sgd_update``, once
    per model when the parameters are flat (see :class:`Optimizer`)."""

    name, op = "sgd", "sgd_update"

    def __init__(self, params, grads, lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False, *, backend):
        momentum = MOMENTUM.check("SGD", "momentum", momentum)
        weight_decay = WEIGHT_DECAY.check("SGD", "weight decay", weight_decay)
        if nesterov and not momentum:
            raise ValueError("SGD: Nesterov needs a momentum > 0")
        super().__init__(params, grads, lr, backend)
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, bool(nesterov)
        if momentum:
            self.velocities, flat = self._zeros()
        else:
            self.velocities, flat = [None] * len(self.params), [None] * len(self._targets)
        self._steps = [(p, g, v) for (p, g), v in zip(self._targets, flat)]

    def _update(self, ops, lr):
        for p, g, v in self._steps:
            ops.sgd_update(p, g, v, lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           nesterov=self.nesterov)

    def state(self) -> dict:
        """SGD keeps its momentum as ``velocity`` (none without momentum)."""
        return {"velocity": self.velocities}

    def config(self) -> dict:
        return {**super().config(), "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (PyTorch's ``torch.optim.Adam``): bias-corrected moments, ``eps`` added after the square
    root, ``weight_decay`` added to the gradient (L2).  See the ``adam_update`` op for the formula.

    The step count the bias corrections read lives in device memory (``counters()["step"]``) and is
    counted there by the ``count_step`` op, so a step captured as a CUDA graph replays correctly.
    The moments are ``m`` and ``v`` (``state()``), flat like the parameters when those are."""

    name, op = "adam", "adam_update"
    decoupled = False  # AdamW's decay of the weights themselves

    def __init__(self, params, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=None, *, backend):
        kind = type(self).__name__
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
            raise ValueError(f"{kind}: betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (BETA.check(kind, "beta1", betas[0]), BETA.check(kind, "beta2", betas[1]))
        self.eps = EPSILON.check(kind, "eps", eps)
        wd = self.default_weight_decay if weight_decay is None else weight_decay
        self.weight_decay = WEIGHT_DECAY.check(kind, "weight decay", wd)
        super().__init__(params, grads, lr, backend)
        self.m, m_flat = self._zeros()
        self.v, v_flat = self._zeros()
        self._step = backend.zeros((1,), np.int32)  # the steps taken: t of the next is this + 1
        self._steps = [(p, g, m, v) for (p, g), m, v in zip(self._targets, m_flat, v_flat)]

    def _update(self, ops, lr):
        ops.count_step(self._step)  # t += 1, on the device, before the updates read it
        b1, b2 = self.betas
        for p, g, m, v in self._steps:
            ops.adam_update(p, g, m, v, lr, self._step, beta1=b1, beta2=b2, eps=self.eps,
                            weight_decay=self.weight_decay, decoupled=self.decoupled)

    @property
    def steps_taken(self) -> int:
        """The steps counted so far (reading the device counter: on a GPU, a synchronisation)."""
        return int(self.backend.to_numpy(self._step)[0])

    def state(self) -> dict:
        return {"m": self.m, "v": self.v}

    def counters(self) -> dict:
        return {"step": self._step}

    def config(self) -> dict:
        return {**super().config(), "betas": list(self.betas), "eps": self.eps, "weight_decay": self.weight_decay}


class AdamW(Adam):
    """AdamW (PyTorch's ``torch.optim.AdamW``): Adam with decoupled weight decay,
    ``p -= lr * weight_decay * p`` before the moment step; ``weight_decay`` defaults to 0.01."""

    name = "adamw"
    decoupled = True
    default_weight_decay = 0.01


#: The optimizers by their command-line word.
OPTIMIZERS = {o.name: o for o in (SGD, Adam, AdamW)}


def make_optimizer(cfg, params, grads, backend):
    """The optimizer a run's options name (``cfg``: a TrainConfig, or anything with its fields)."""
    if cfg.optimizer == "sgd":
        return SGD(params, grads, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, backend=backend)
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer](params, grads, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay,
                                     backend=backend)


class Schedule:
    """Learning rate as a function of the global step ``t`` (0-based), with ``steps_per_epoch`` known.

    constant: ``lr``; step: ``lr * gamma ** (epoch // step_size)``;
    cosine: ``lr * (1 + cos(pi * t / total)) / 2`` over all steps, per step."""

    NAMES = ("constant", "step", "cosine")

    def __init__(self, name, lr, epochs, steps_per_epoch, step_size=None, gamma=0.1):
        if name not in self.NAMES:
            raise ValueError(f"unknown learning-rate schedule {name!r}; expected one of {', '.join(self.NAMES)}")
        self.name, self.lr, self.epochs, self.steps_per_epoch = name, float(lr), int(epochs), int(steps_per_epoch)
        self.step_size = int(step_size) if step_size else max(1, self.epochs // 3)
        self.gamma = float(gamma)

    def __call__(self, t):
        if self.name == "constant":
            return self.lr
        if self.name == "step":
            return self.lr * self.gamma ** ((t // self.steps_per_epoch) // self.step_size)
        total = max(1, self.epochs * self.steps_per_epoch)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total))
