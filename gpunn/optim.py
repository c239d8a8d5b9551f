"""SGD with momentum, Nesterov and weight decay, and learning-rate schedules."""
from __future__ import annotations

import math

from gpunn.checks import LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, array, rate


def valid_learning_rate(lr) -> bool:
    """Whether ``lr`` can be a learning rate: a number above 0, finite in float32 (the trainer's
    options, :class:`SGD` and the command line's ``--lr`` all ask this; the rule itself is
    :data:`gpunn.checks.LEARNING_RATE`, which the ``sgd_update`` op checks too)."""
    return LEARNING_RATE.ok(lr)


class SGD:
    """Stochastic gradient descent, one fused backend op per parameter, or per model (PyTorch's definition).

    ``g = grad + weight_decay*p``; ``v = momentum*v + g``; ``p -= lr * (g + momentum*v if nesterov else v)``.

    The arrays are checked once, here; ``step`` then calls
    ``backend.unchecked.sgd_update``.  When ``params`` and ``grads`` are views into one flat array each
    (``Sequential.params``/``.grads`` carry it as ``.flat``), the velocities are views
    into one flat array too, and a step is a single op over all the parameters: the
    same arithmetic element by element, with one call instead of one per array."""

    def __init__(self, params, grads, lr=0.1, momentum=0.0, weight_decay=0.0, nesterov=False, *, backend):
        lr = LEARNING_RATE.check("SGD", "learning rate", lr)
        momentum = MOMENTUM.check("SGD", "momentum", momentum)
        weight_decay = WEIGHT_DECAY.check("SGD", "weight decay", weight_decay)
        if nesterov and not momentum:
            raise ValueError("SGD: Nesterov needs a momentum > 0")
        self.params, self.grads = list(params), list(grads)
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, bool(nesterov)
        self.backend = backend
        if len(self.params) != len(self.grads):
            raise ValueError(f"SGD: {len(self.params)} parameters but {len(self.grads)} gradients")
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            array("sgd_update", f"param {i}", p, dtype=backend.dtype, backend=backend)
            array("sgd_update", f"grad {i}", g, shape=p.shape, dtype=backend.dtype, backend=backend)
        flat_p, flat_g = getattr(params, "flat", None), getattr(grads, "flat", None)
        if flat_p is not None and flat_g is not None and flat_p.shape == flat_g.shape and params.offsets == grads.offsets:
            # one op over the flat arrays; the velocities are views into one flat array too
            flat_v = backend.zeros(flat_p.shape) if momentum else None
            self._steps = [(flat_p, flat_g, flat_v)]
            self.velocities = [flat_v[o:o + p.size].reshape(p.shape) if momentum else None
                               for o, p in zip(params.offsets, self.params)]
        else:
            self.velocities = [backend.zeros(p.shape) if momentum else None for p in self.params]
            self._steps = list(zip(self.params, self.grads, self.velocities))

    def step(self, lr=None):
        """Update every parameter in place with its gradient.

        lr: this step's rate (from a schedule), or a one-element device array holding it,
        which the update reads when it runs (a step captured as a CUDA graph needs that).
        A number is checked like the constructor's (above 0, finite in float32); of an array
        only the shape and dtype are: its value is on the device."""
        lr = self.lr if lr is None else rate("SGD.step", self.backend, lr)
        self.backend.join()  # every gradient a branch computed is complete (see Backend.branch)
        ops = self.backend.unchecked
        for p, g, v in self._steps:
            ops.sgd_update(p, g, v, lr, momentum=self.momentum, weight_decay=self.weight_decay,
                           nesterov=self.nesterov)

    def state(self) -> dict:
        """The optimizer's state to checkpoint, by name: one array per parameter (None where that
        parameter keeps none), saved as ``<name>/<i>`` (:mod:`gpunn.checkpoint`). SGD keeps its
        momentum as ``velocity``; an optimizer with more state names each part."""
        return {"velocity": self.velocities}


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
