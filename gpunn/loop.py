"""The training loop's device side: what changes from one step to the next, and the step as a graph.

* :class:`DeviceLoop` holds, in device memory, everything a step reads that is not a weight: the
  epoch's order of examples, a cursor (position in that order, step in the epoch), the epoch's
  table of learning rates and the step's rate, the batch buffers, and the epoch's sums of
  the loss and of correct predictions.  Its :meth:`~DeviceLoop.step` is ``next_batch →
  train_step`` with no number passed from the host.
* :class:`GraphedStep` runs such a step as a CUDA graph, one per batch size (the full batch, and a
  partial last one): the first step of a size runs eagerly (so everything is compiled and
  allocated) and is captured; later steps of that size replay it, one host call each.  Where
  there are no graphs, or a capture fails, steps run eagerly, with one line saying why.
* :func:`global_step`: the run-wide index of a step, what a learning-rate schedule reads.

The trainer (:mod:`gpunn.train`) is the loop that reports: epochs, the progress bar, divergence
checks, checkpoints and signals; it owns one of each of these.
"""
from __future__ import annotations

import os

import numpy as np


def global_step(epoch: int, step: int, steps_per_epoch: int) -> int:
    """The run-wide index (0-based) of step ``step`` (0-based) of epoch ``epoch`` (0-based)."""
    return epoch * steps_per_epoch + step


class DeviceLoop:
    """The loop's state in device memory for training on ``x`` (N, D), int32 ``y`` (N,) in batches
    of ``batch_size`` rows, ``steps_per_epoch`` steps an epoch."""

    def __init__(self, backend, x, y, batch_size: int, steps_per_epoch: int):
        be = self.backend = backend
        self.x, self.y = x, y
        n = x.shape[0]
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        bs = min(batch_size, n)
        self.xb = be.empty((bs, x.shape[1]))           # the step's batch, gathered on the device
        self.yb = be.empty((bs,), np.int32)
        self.loss_sum = be.zeros((1,))                 # Σ of the epoch's batch losses so far
        self.correct = be.zeros((1,), np.int32)        # correct predictions in the epoch so far
        self.order = be.empty((n,), np.int32)          # the epoch's permutation of 0..N-1
        self.cursor = be.zeros((2,), np.int32)         # (position in order, step in the epoch)
        self.lr_table = be.empty((steps_per_epoch + 1,))  # the epoch's rates (+1: after its last step)
        self.lr = be.empty((1,))                       # the step's rate, which its update reads

    def start_epoch(self, order, rates, step: int) -> None:
        """Put the epoch's ``order`` (N,) and ``rates`` (steps + 1,) on the device and the cursor
        at ``step``; the sums start at zero unless the epoch resumes part-way (``step`` > 0)."""
        be = self.backend
        be.upload(np.asarray(order, np.int32), self.order)
        be.upload(np.asarray(rates, be.dtype), self.lr_table)
        be.upload(np.array([step * self.batch_size, step], np.int32), self.cursor)
        be.upload(np.asarray(rates[step:step + 1], be.dtype), self.lr)
        if step == 0:
            self.set_sums(0.0, 0)

    def set_sums(self, loss_sum: float, correct: int) -> None:
        """Set the epoch's sums (a resumed epoch's, from its checkpoint)."""
        self.loss_sum[...] = loss_sum
        self.correct[...] = correct

    def loss(self) -> float:
        """The epoch's summed loss so far (on a GPU, a synchronisation)."""
        return float(self.backend.to_numpy(self.loss_sum)[0])

    def correct_count(self) -> int:
        """The epoch's correct predictions so far (on a GPU, a synchronisation)."""
        return int(self.backend.to_numpy(self.correct)[0])

    def step(self, m: int, train_step) -> None:
        """One step of ``m`` rows from device state alone: gather the batch at the cursor, run
        ``train_step(xb, yb, lr)`` (lr: the device's rate): ``next_batch`` gathers the batch, sets the
        step's rate and moves the cursor on (one kernel on a GPU), then the step."""
        xb, yb = self.xb[:m], self.yb[:m]
        self.backend.unchecked.next_batch(self.x, self.y, self.order, self.cursor, self.lr_table, self.lr, xb, yb)
        train_step(xb, yb, self.lr)


class NarrowStep:
    """``narrow(m)``: the whole step of ``m`` rows (``DeviceLoop.step`` with the trainer's step in it)
    as the one op ``narrow_step``: two kernels on a GPU instead of ~20.  For a Sequential of Dense
    layers at most 32 wide after the input, trained by SGD (momentum, Nesterov and weight decay
    included) over its flat storage with the quadratic cost or cross-entropy; the constructor says
    in one line why a model cannot (``NarrowStep.problem``)."""

    def __init__(self, loop: DeviceLoop, model, optimizer, loss: str):
        problem = self.problem(model, optimizer, loss)
        if problem is not None:
            raise ValueError(f"the fused step cannot train this run: {problem}")
        self.loop = loop
        layers = model.layers
        self.widths = (layers[0].in_features, *(layer.out_features for layer in layers))
        self.acts = tuple(layer.activation for layer in layers)
        self.offsets = model.params.offsets  # each W and b in the flat storage (aligned: gaps between)
        self.loss = loss
        (self.params, self.grads, self.velocity), = optimizer._steps  # flat (P,) arrays, updated in place
        self.momentum, self.weight_decay, self.nesterov = optimizer.momentum, optimizer.weight_decay, optimizer.nesterov

    @staticmethod
    def problem(model, optimizer, loss):
        """Why ``narrow_step`` cannot train ``model`` with ``optimizer`` and ``loss``, or None."""
        from gpunn.backend.ops import narrow_network_problem
        from gpunn.layers import Dense
        from gpunn.optim import SGD

        layers = getattr(model, "layers", None)
        if not layers or any(type(layer) is not Dense for layer in layers):
            kinds = sorted({type(layer).__name__ for layer in layers or () if type(layer) is not Dense})
            return f"it takes Dense layers only (this model has {', '.join(kinds) or 'none'})"
        if type(optimizer) is not SGD:
            return f"it updates with SGD (momentum, Nesterov and weight decay included), not {optimizer.name}"
        if len(optimizer._steps) != 1:
            return "the parameters must be the model's own flat storage (model.parameters())"
        problem = narrow_network_problem((layers[0].in_features, *(layer.out_features for layer in layers)),
                                         tuple(layer.activation for layer in layers), loss)
        return None if problem is None else problem[1]

    def __call__(self, m: int) -> None:
        loop = self.loop
        ops = loop.backend.unchecked  # looked up per call: a profiler may have wrapped it
        ops.narrow_step(loop.x, loop.y, loop.order, loop.cursor, loop.lr_table, loop.lr, self.params, self.grads,
                        self.velocity, self.widths, self.acts, self.offsets, self.loss, m, loop.loss_sum, loop.correct,
                        self.momentum, self.weight_decay, self.nesterov)


def graph_setting(backend, requested: bool | None, say) -> tuple[bool, str | None]:
    """``(on, why not)``: graphs on a real GPU unless turned off (``requested=False`` or
    ``$GPUNN_GRAPHS=0``); ``say`` gets a line when they were asked for and cannot be had."""
    if requested is False:
        return False, "turned off (graphs=False)"
    if os.environ.get("GPUNN_GRAPHS", "1") == "0":
        return False, "turned off by GPUNN_GRAPHS=0"
    if getattr(backend, "simulated", False):
        say("training without CUDA graphs: the CUDA simulator has none")
        return False, "the CUDA simulator has no CUDA graphs"
    if backend.name != "cuda":
        if requested:
            say(f"training without CUDA graphs: the {backend.name} backend has none")
        return False, f"the {backend.name} backend has no CUDA graphs"
    return True, None


class GraphedStep:
    """``graphed(m)`` runs ``step(m)`` (a step of ``m`` rows that reads everything it needs from
    device memory), captured as a CUDA graph per ``m`` when ``on``.  ``note`` says why graphs
    are off; ``say`` gets a line when a capture fails."""

    def __init__(self, backend, step, on: bool, note: str | None, say):
        self.backend, self._step, self._say = backend, step, say
        self.on, self.note = on, note
        self.graphs: dict = {}  # batch rows -> the captured step

    @property
    def used(self) -> bool:
        """Whether steps have run as CUDA graphs."""
        return bool(self.graphs)

    def __call__(self, m: int, repeat: int = 1) -> None:
        """``repeat`` steps of ``m`` rows, back to back: one graph replay (one host call) for all of
        them once a graph of that many was captured (its key: ``m``, or ``(m, repeat)``)."""
        key = m if repeat == 1 else (m, repeat)
        graph = self.graphs.get(key)
        if graph is not None:
            graph()  # the captured steps: one host call
            return
        for _ in range(repeat):
            self._step(m)
        if self.on:  # after the eager steps of this size: compiled, allocated
            self._capture(key, m, repeat)

    def _capture(self, key, m, repeat):
        def steps():
            for _ in range(repeat):
                self._step(m)

        try:
            self.graphs[key] = self.backend.capture(steps)
        except Exception as exc:  # no graphs here, or a driver or cuBLAS refusal: train on, eagerly
            self.on = False
            first = str(exc).splitlines()[0] if str(exc) else ""
            self.note = f"capture failed ({type(exc).__name__}: {first})"
            self._say(f"CUDA graph capture failed, training eagerly: {type(exc).__name__}: {first}")
