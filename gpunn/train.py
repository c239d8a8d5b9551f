"""Training: the loop, evaluation, and the options that build a run.

One training step is ``forward → loss (+ gradient) → backward → SGD update``, every
part of it a backend op on device buffers allocated once.  The data set is moved to
the device once.  The loss and accuracy are summed on the device and read back only
when reported.

Everything that changes from one step to the next lives in device memory too
(:class:`gpunn.loop.DeviceLoop`): the epoch's order of examples and its learning rates
(uploaded once per epoch), and a cursor (position in that order, step in the epoch) from
which the device reads each step's batch and rate.  A step is therefore ``next_batch →
train_step`` (the gather also sets the step's rate and moves the cursor on) with no number
passed from the host, and on a GPU it is
captured once as a CUDA graph and replayed (:class:`gpunn.loop.GraphedStep`): one host call
per step instead of ~25 kernel launches.  A partial last batch gets a graph of its own.
``Trainer(graphs=False)``, ``gpunn train --no-graphs`` or ``GPUNN_GRAPHS=0`` turn graphs
off; the numpy backend and the CUDA simulator have none; a capture that fails falls back
to eager steps with one line saying why.

The :class:`Trainer` is the loop that reports: epochs, the progress bar, the divergence
check, checkpoints (whose position record is :func:`gpunn.checkpoint.run_meta`) and
signals.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from gpunn import checkpoint
from gpunn.backend import get_backend
from gpunn.backend.ops import ACTIVATIONS
from gpunn.checks import BETA, COUNT, DROP_PROBABILITY, EPSILON, LEARNING_RATE, MOMENTUM, WEIGHT_DECAY, is_integer
from gpunn.data import batch_slices, epoch_permutation
from gpunn.errors import CheckpointError, DataError, TrainingDiverged
from gpunn.instrument import annotate_nvtx
from gpunn.layers import OUTPUT_ACTIVATIONS, mlp
from gpunn.loop import DeviceLoop, GraphedStep, NarrowStep, global_step, graph_setting
from gpunn.losses import LOSSES, get_loss
from gpunn.optim import OPTIMIZERS, Schedule, make_optimizer


@dataclass
class TrainConfig:
    """Everything that defines a training run (also stored in checkpoints)."""

    hidden: tuple = (512, 512)
    activation: str = "relu"
    loss: str = "cross-entropy"
    #: activation of the last layer; None: identity (logits) for cross-entropy, sigmoid for MSE
    output_activation: str | None = None
    #: dropout probability after each hidden layer (0: none)
    dropout: float = 0.0
    epochs: int = 12
    batch_size: int = 128
    #: sgd, adam or adamw (gpunn.optim.OPTIMIZERS); momentum and nesterov are SGD's, the betas and
    #: eps Adam's and AdamW's
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    #: None: the optimizer's default (0 for sgd and adam, 0.01 for adamw, as PyTorch's)
    weight_decay: float | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    lr_schedule: str = "cosine"
    step_size: int | None = None
    gamma: float = 0.1
    seed: int = 0
    eval_batch_size: int = 1000

    def __post_init__(self):
        if isinstance(self.hidden, (list, tuple)):
            self.hidden = tuple(self.hidden)
        if self.output_activation is None and self.loss in LOSSES:
            self.output_activation = "identity" if self.loss == "cross-entropy" else "sigmoid"
        if self.weight_decay is None and self.optimizer in OPTIMIZERS:
            self.weight_decay = OPTIMIZERS[self.optimizer].default_weight_decay
        self.validate()

    def validate(self):
        """ValueError naming the first field that is not what a run can train with.

        The one schema of a run's options: the command line builds a TrainConfig from its
        options, and a resumed checkpoint's ``train`` record goes through the same checks
        (so a crafted file cannot train at a negative rate, or resume at step -2)."""
        for name, ok, what in _FIELD_RULES:
            value = getattr(self, name)
            if not ok(value):
                raise ValueError(f"{name} must be {what}, got {value!r}")
        if self.loss == "cross-entropy" and self.output_activation != "identity":
            raise ValueError("cross-entropy takes logits: the output activation must be identity")

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d


def _one_of(names):
    return lambda v: isinstance(v, str) and v in names


#: (field, ok(value), what it must be): TrainConfig.validate's table, one row per field.
_FIELD_RULES = (
    ("hidden", lambda v: isinstance(v, tuple) and all(COUNT.ok(h) for h in v), "a list of positive integers (hidden layer sizes)"),
    ("activation", _one_of(ACTIVATIONS), f"one of {', '.join(ACTIVATIONS)} (unknown activation)"),
    ("loss", _one_of(LOSSES), f"one of {', '.join(LOSSES)} (unknown loss)"),
    ("output_activation", _one_of(OUTPUT_ACTIVATIONS), f"one of {', '.join(OUTPUT_ACTIVATIONS)} (unknown output activation)"),
    ("dropout", DROP_PROBABILITY.ok, DROP_PROBABILITY.what),
    ("epochs", COUNT.ok, "a positive integer"),
    ("batch_size", COUNT.ok, "a positive integer (the batch size)"),
    ("optimizer", _one_of(OPTIMIZERS), f"one of {', '.join(OPTIMIZERS)} (unknown optimizer)"),
    ("lr", LEARNING_RATE.ok, f"{LEARNING_RATE.what} (the learning rate)"),
    ("momentum", MOMENTUM.ok, MOMENTUM.what),
    ("nesterov", lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    ("weight_decay", WEIGHT_DECAY.ok, WEIGHT_DECAY.what),
    ("beta1", BETA.ok, f"{BETA.what} (Adam's first-moment decay)"),
    ("beta2", BETA.ok, f"{BETA.what} (Adam's second-moment decay)"),
    ("eps", EPSILON.ok, f"{EPSILON.what} (Adam's epsilon)"),
    ("lr_schedule", _one_of(Schedule.NAMES), f"one of {', '.join(Schedule.NAMES)} (unknown learning-rate schedule)"),
    ("step_size", lambda v: v is None or COUNT.ok(v), "a positive integer (epochs between decays) or null"),
    ("gamma", lambda v: LEARNING_RATE.ok(v), "a positive finite number (the step schedule's decay factor)"),
    ("seed", lambda v: is_integer(v) and 0 <= v < 2**63,
     "an integer in [0, 2^63)"),
    ("eval_batch_size", COUNT.ok, "a positive integer"),
)


def build_model(cfg: TrainConfig, in_features: int, num_classes: int, backend):
    sizes = [in_features, *cfg.hidden, num_classes]
    return mlp(sizes, cfg.activation, cfg.output_activation, backend=backend, seed=cfg.seed, dropout=cfg.dropout)


def evaluate(model, x, y, batch_size=1000):
    """Accuracy (0..1) of ``model`` on device arrays x (N, D), int32 y (N,), in large batches.

    An empty x is refused: the accuracy of no rows is undefined."""
    from gpunn.checks import array, int32, labels_in_range
    from gpunn.errors import ShapeError

    be = model.backend
    array("evaluate", "x", x, ndim=2, dtype=be.dtype, backend=be)
    if x.shape[0] == 0:
        raise ShapeError("evaluate: x has no rows (an accuracy needs at least one example)")
    array("evaluate", "y", y, shape=(x.shape[0],), dtype=int32, backend=be)
    labels_in_range("evaluate", y, model.out_features, be)  # once here, not per batch (a GPU synchronisation)
    correct = be.zeros((1,), np.int32)
    with model.evaluating():  # dropout off; each layer's mode put back afterwards
        for start, stop in batch_slices(x.shape[0], batch_size):
            be.unchecked.count_correct(model.forward(x[start:stop]), y[start:stop], correct)
    return int(be.to_numpy(correct)[0]) / x.shape[0]


def check_dataset(d):
    """Validate a Dataset on the host, once, before any kernel sees it.

    On a GPU an out-of-range label would be a silent out-of-bounds read, so labels
    are checked here: integers in 0..num_classes-1, one per image."""
    c = int(d.num_classes)
    for split in ("train", "test"):
        x, y = getattr(d, f"{split}_x"), getattr(d, f"{split}_y")
        if getattr(x, "ndim", None) != 2 or x.dtype != np.float32:
            raise DataError(f"{split} images must be a float32 array of shape (N, pixels), got "
                            f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}")
        if getattr(y, "ndim", None) != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{split} labels must be a 1-D array of integer class indices, got "
                            f"{getattr(y, 'dtype', type(y).__name__)} {getattr(y, 'shape', '')}")
        if len(x) != len(y):
            raise DataError(f"{split} set: {len(x)} images but {len(y)} labels")
        bad = np.flatnonzero((y < 0) | (y >= c))
        if bad.size:
            raise DataError(f"{split} label {int(y[bad[0]])} at index {int(bad[0])} is outside 0..{c - 1}")
    if d.train_x.shape[1] != d.test_x.shape[1]:
        raise DataError(f"train images have {d.train_x.shape[1]} pixels but test images {d.test_x.shape[1]}")


@dataclass
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    test_accuracy: float
    seconds: float
    samples_per_second: float
    lr: float

    def line(self, epochs):
        return (f"epoch {self.epoch:>{len(str(epochs))}}/{epochs}  loss {self.loss:.4f}  "
                f"train acc {100 * self.train_accuracy:.2f}%  test acc {100 * self.test_accuracy:.2f}%  "
                f"{self.seconds:.2f} s  {self.samples_per_second:,.0f} samples/s  lr {self.lr:.4g}")


class Interrupted(Exception):
    """Training stopped by SIGINT or SIGTERM (``signum``); the checkpoint (if any) has been written."""

    def __init__(self, epoch, step, path, signum=signal.SIGINT):
        self.epoch, self.step, self.path, self.signum = epoch, step, path, signal.Signals(signum)
        super().__init__(f"interrupted at epoch {epoch + 1}, step {step}")


@dataclass
class Trainer:
    """Runs training on a backend; owns model, loss, optimizer, schedule and position."""

    cfg: TrainConfig
    data: object  # gpunn.data.Dataset (host arrays)
    backend: object = None
    progress: bool | None = None  # None: a bar when stderr is a terminal
    log: object = print
    save_path: str | None = None
    #: capture each full-batch step as a CUDA graph: None (default) on a GPU unless
    #: $GPUNN_GRAPHS is "0"; False never; True asks for it (and says why when it cannot)
    graphs: bool | None = None
    #: one-line notices (why graphs are off, a failed capture): default stderr
    notice: object = None
    #: a model of your own (a Sequential of gpunn layers, yours included) instead of the MLP that
    #: cfg describes; its input and output widths must be the data's
    model: object = None
    #: an optimizer of your own over ``model``'s parameters (else cfg's, over them); the schedule
    #: then scales its rate
    optimizer: object = None
    #: the whole step as the one op ``narrow_step`` (two kernels on a GPU): for narrow networks (every
    #: layer after the input at most 32 wide, Dense layers, SGD); ValueError says why not otherwise
    fused_step: bool = False
    #: full-batch steps per CUDA graph replay (one host call for that many steps; the loss is
    #: still checked every 50 steps, and Ctrl-C stops after the replay in flight)
    steps_per_graph: int = 1
    epoch: int = 0  # epochs completed
    step: int = 0  # steps completed within the current epoch
    history: list = field(default_factory=list)

    def __post_init__(self):
        be = self.backend = get_backend(self.backend)
        d, cfg = self.data, self.cfg
        check_dataset(d)
        if self.progress is None:
            self.progress = sys.stderr.isatty()
        self.in_features = d.train_x.shape[1]
        self.num_classes = int(d.num_classes)
        if self.model is None:
            self.model = build_model(cfg, self.in_features, self.num_classes, be)
        else:
            self._check_own_model()
        self.loss_fn = get_loss(cfg.loss, be, check_labels=False)  # check_dataset checked them once
        if self.optimizer is None:
            self.optimizer = make_optimizer(cfg, self.model.params, self.model.grads, be)
        else:  # the run's record names the optimizer and rate that train it
            mine, theirs = list(getattr(self.optimizer, "params", ())), list(self.model.params)
            if getattr(self.optimizer, "backend", None) is not be or len(mine) != len(theirs) or \
                    any(p is not q for p, q in zip(mine, theirs)):
                raise ValueError("Trainer: the optimizer must be over the model's parameters (model.parameters()), "
                                 "on the trainer's backend")
            self.cfg = cfg = dataclasses.replace(cfg, optimizer=self.optimizer.name, lr=self.optimizer.lr)
        # the last layer's db, when the loss writes it (see Sequential.output_bias_grad)
        head = getattr(self.model, "output_bias_grad", None)
        self._loss_bias_grad = head() if head is not None and self.loss_fn.takes_bias_grad else None
        annotate_nvtx(self.model, self.optimizer)  # NVTX ranges for Nsight Systems on a GPU; no-op on the CPU
        # the data set goes to the device once
        self.train_x, self.train_y = be.asarray(d.train_x), be.asarray(d.train_y, np.int32)
        self.test_x, self.test_y = be.asarray(d.test_x), be.asarray(d.test_y, np.int32)
        n = self.train_x.shape[0]
        if n == 0:
            raise DataError("the training set is empty")
        self.steps_per_epoch = -(-n // cfg.batch_size)
        self.schedule = Schedule(cfg.lr_schedule, cfg.lr, cfg.epochs, self.steps_per_epoch, cfg.step_size, cfg.gamma)
        # the loop's state on the device, and its step as a CUDA graph (see gpunn.loop)
        if not COUNT.ok(self.steps_per_graph):
            raise ValueError(f"steps_per_graph must be a positive integer, got {self.steps_per_graph!r}")
        self.loop = DeviceLoop(be, self.train_x, self.train_y, cfg.batch_size, self.steps_per_epoch)
        on, note = graph_setting(be, self.graphs, self._say)
        if self.fused_step:
            step = NarrowStep(self.loop, self.model, self.optimizer, cfg.loss)
        else:
            step = lambda m: self.loop.step(m, self.train_step)  # noqa: E731
        self.device_step = step  # one whole step of m rows from device state (what a graph captures)
        self.graphed = GraphedStep(be, step, on, note, self._say)
        self.first_step_time = None  # time.time() when the run's first step had been queued
        self._stop_requested = False
        self._epoch_progress = (0.0, 0)  # (seconds, samples) of the current epoch before a stop
        self.last_good = None  # the checkpoint this run last wrote or resumed from: the one a divergence names

    def _say(self, message):
        (self.notice or (lambda m: print(m, file=sys.stderr)))(f"gpunn: {message}")

    def _check_own_model(self):
        m, be = self.model, self.backend
        if getattr(m, "backend", None) is not be:
            raise ValueError(f"Trainer: the model is on the {getattr(getattr(m, 'backend', None), 'name', '?')} "
                             f"backend, the trainer on {be.name}: build it with backend=the trainer's backend")
        for what, got, want in (("input", m.in_features, self.in_features), ("output", m.out_features, self.num_classes)):
            if got != want:
                raise ValueError(f"Trainer: the model's {what} width is {got}, the data's is {want}")

    # ---------------------------------------------------------------- checkpoints
    def meta(self):
        """The run's position for a checkpoint (:func:`gpunn.checkpoint.run_meta`)."""
        partial = None
        if self.step:  # an epoch stopped part-way: its sums so far and the time it had taken
            seconds, seen = self._epoch_progress
            partial = {"loss_sum": self.loop.loss(), "correct": self.loop.correct_count(),
                       "seconds": seconds, "seen": seen}
        return checkpoint.run_meta(self.cfg.as_dict(), self.epoch, self.step, partial,
                                   [dataclasses.asdict(h) for h in self.history],
                                   checkpoint.data_identity(self.data.train_y), self.in_features, self.num_classes)

    def save(self, path):
        checkpoint.save(path, self.model, self.optimizer, self.meta())
        self.last_good = path

    def restore(self, path):
        """Continue the run saved at ``path``: its weights, velocities and position, every field
        checked first (a checkpoint is untrusted input: see :func:`gpunn.checkpoint.check_position`)."""
        meta = checkpoint.read_meta(path)
        try:
            position = checkpoint.check_position(meta, self.steps_per_epoch, self.cfg.batch_size,
                                                 checkpoint.data_identity(self.data.train_y),
                                                 self.in_features, self.num_classes,
                                                 [f.name for f in dataclasses.fields(EpochStats)])
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        meta = checkpoint.restore(path, self.model, self.optimizer)
        self.epoch, self.step, history, partial = position
        for layer in self.model.layers:  # a dropout layer's count of training forwards: the steps taken
            if hasattr(layer, "set_count"):
                layer.set_count(self.global_step(self.step))
        self.history = [EpochStats(**h) for h in history]
        self.loop.set_sums(partial["loss_sum"], partial["correct"])
        self._epoch_progress = (partial["seconds"], partial["seen"])
        self.last_good = path
        return meta

    # ---------------------------------------------------------------- the loop
    def train_step(self, xb, yb, lr):
        """One step: forward, loss and its gradient, backward (chain rule), SGD update."""
        out = self.model.forward(xb)
        # the accuracy count, and the last layer's bias gradient where the loss can sum it, in the
        # loss's own launches (one kernel for all of it with softmax-cross-entropy's classifier version)
        db = self._loss_bias_grad
        grad = self.loss_fn(out, yb, self.loop.loss_sum, accumulate=True, correct=self.loop.correct, bias_grad=db)
        if db is None:
            self.model.backward(grad)
        else:
            self.model.backward(grad, output_bias_grad_done=True)
        self.optimizer.step(lr)  # (after every branch: it joins them)

    def _check_finite(self, loss_sum, lr):
        if not math.isfinite(loss_sum):
            where = f"epoch {self.epoch + 1}, step {self.step} of {self.steps_per_epoch}"
            kept = f"; the last good checkpoint is {self.last_good}" if self.last_good else ""
            raise TrainingDiverged(f"the loss became {loss_sum} at {where}: the learning rate ({lr:.4g}) is "
                                   f"probably too high, try a smaller --lr{kept}")

    def run_epoch(self):
        """Train one epoch (from ``self.step`` if resuming mid-epoch); returns its EpochStats."""
        from tqdm import tqdm

        be, cfg = self.backend, self.cfg
        n = self.train_x.shape[0]
        slices = list(batch_slices(n, cfg.batch_size))
        # the epoch's order, its rates, the cursor and the first step's rate, into device memory
        # (a resumed epoch keeps the sums it had)
        rates = np.array([self.schedule(self.global_step(s)) for s in range(self.steps_per_epoch + 1)], dtype=be.dtype)
        self.loop.start_epoch(epoch_permutation(n, cfg.seed, self.epoch), rates, self.step)
        # CPU backends read the loss for free, so they check it every step; a GPU every 50
        check_every = 1 if getattr(be, "host_reads_free", False) else 50
        bar = tqdm(total=len(slices), initial=self.step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   leave=False, disable=not self.progress, file=sys.stderr, unit="batch")
        be.synchronize()
        # a resumed epoch goes on from the time and samples it had when it stopped
        done_s, seen = self._epoch_progress if self.step else (0.0, 0)
        t0 = time.perf_counter() - done_s
        # overflow to inf/NaN is reported by _check_finite in one clear line: no NumPy warnings
        with np.errstate(over="ignore", invalid="ignore"):
            try:
                while self.step < len(slices):
                    start, stop = slices[self.step]
                    m = stop - start
                    k = self._steps_now(slices, m)
                    self.graphed(m, k)  # replayed as a CUDA graph where one was captured
                    if self.first_step_time is None:
                        self.first_step_time = time.time()
                    before, self.step = self.step, self.step + k
                    seen += m * k
                    if self.step // check_every != before // check_every or self.step == len(slices):
                        loss_sum = self.loop.loss()
                        self._check_finite(loss_sum, self.last_rate())
                        if self.progress:
                            correct = self.loop.correct_count()
                            bar.set_postfix(loss=f"{loss_sum / self.step:.4f}",
                                            acc=f"{100 * correct / min(n, self.step * cfg.batch_size):.2f}%",
                                            samples_s=f"{seen / max(time.perf_counter() - t0, 1e-9):,.0f}", refresh=False)
                    bar.update(k)
                    if self._stop_requested:
                        raise KeyboardInterrupt
                be.synchronize()
                seconds = time.perf_counter() - t0
            except KeyboardInterrupt:
                be.synchronize()
                self._epoch_progress = (time.perf_counter() - t0, seen)
                raise
            finally:
                bar.close()
        lr = self.last_rate()  # the epoch's last step's (the device read it from the table)
        loss = self.loop.loss() / len(slices)
        train_acc = self.loop.correct_count() / n
        test_acc = evaluate(self.model, self.test_x, self.test_y, cfg.eval_batch_size)
        stats = EpochStats(self.epoch + 1, loss, train_acc, test_acc, seconds, seen / seconds if seconds else 0.0, lr)
        self.epoch, self.step = self.epoch + 1, 0
        self.history.append(stats)
        return stats

    def _steps_now(self, slices, m):
        """How many steps of ``m`` rows the next call runs: ``steps_per_graph`` while that many full
        batches remain, else one (a partial last batch, the epoch's tail, or eager steps)."""
        k = self.steps_per_graph
        if k == 1 or not self.graphs_on or self.step + k > len(slices):
            return 1
        last_start, last_stop = slices[self.step + k - 1]
        return k if m == self.cfg.batch_size and last_stop - last_start == m else 1

    #: the signals that stop a run cleanly: Ctrl-C, and what timeout, Slurm, systemd and docker stop send
    STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def fit(self):
        """Train until ``cfg.epochs``.  With ``save_path``, SIGINT and SIGTERM finish the step in
        flight, save, and raise Interrupted; without it a KeyboardInterrupt (or a subclass with a
        ``signum``, as :mod:`gpunn.cli` raises on SIGTERM) stops at once and raises Interrupted."""
        self._stop_requested, self._stop_signal = False, None
        previous = {}
        if self.save_path and threading.current_thread() is threading.main_thread():
            for signum in self.STOP_SIGNALS:
                # taken over only where it has Python's own behaviour, or a handler that raises
                # KeyboardInterrupt as Python's does for Ctrl-C (gpunn.cli's for SIGTERM): a signal
                # ignored (nohup, say) stays ignored, and a caller's own handler is left alone
                handler = signal.getsignal(signum)
                default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
                if handler is default or getattr(handler, "raises_keyboard_interrupt", False):
                    previous[signum] = signal.signal(signum, self._on_sigint)
        try:
            while self.epoch < self.cfg.epochs:
                try:
                    stats = self.run_epoch()
                except KeyboardInterrupt as exc:
                    signum = self._stop_signal or getattr(exc, "signum", signal.SIGINT)
                    if self.save_path:
                        # never replace the last good checkpoint with diverged weights (a GPU
                        # checks the loss only every 50 steps)
                        self._check_finite(self.loop.loss(), self.last_rate())
                        self.save(self.save_path)
                    raise Interrupted(self.epoch, self.step, self.save_path, signum) from None
                self.log(stats.line(self.cfg.epochs))
                if self.save_path:
                    self.save(self.save_path)
                if self._stop_requested and self.epoch < self.cfg.epochs:  # it came during the evaluation
                    raise Interrupted(self.epoch, self.step, self.save_path, self._stop_signal)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.history

    def _on_sigint(self, signum, frame):
        # SIGINT or SIGTERM: finish the step in flight, then stop (run_epoch looks after each
        # step): the weights are never saved half-updated
        self._stop_requested, self._stop_signal = True, signal.Signals(signum)

    def global_step(self, step: int) -> int:
        """The run-wide index (0-based) of step ``step`` of the current epoch: what the schedule reads."""
        return global_step(self.epoch, step, self.steps_per_epoch)

    def last_rate(self) -> float:
        """The learning rate of the last step done (the first step's before any)."""
        return self.schedule(self.global_step(max(self.step - 1, 0)))

    @property
    def device_rate(self):
        """The one-element device array a step reads its learning rate from (so a captured step
        replays with the rate of the moment)."""
        return self.loop.lr

    @property
    def graphs_on(self) -> bool:
        """Whether the next new batch size will be captured as a CUDA graph."""
        return self.graphed.on

    @property
    def graphs_note(self) -> str | None:
        """Why steps do not run as CUDA graphs (None when they do)."""
        return self.graphed.note

    @property
    def graphs_used(self) -> bool:
        """Whether steps have run as CUDA graphs (see ``graphs_note`` for why not)."""
        return self.graphed.used

    def trained_seconds(self):
        """Seconds of training (evaluation excluded) in the epochs done so far, a stopped one's included."""
        return sum(h.seconds for h in self.history) + (self._epoch_progress[0] if self.step else 0.0)

    def metrics(self, train_seconds):
        return {
            "test_accuracy": self.history[-1].test_accuracy if self.history else None,
            "backend": self.backend.name,
            "device": self.backend.describe(),
            "cuda_graphs": self.graphs_used,
            "cuda_graphs_note": self.graphs_note,
            "fused_step": self.fused_step,
            "first_step_unix_time": self.first_step_time,
            "train_seconds": train_seconds,
            "epochs": [dataclasses.asdict(h) for h in self.history],
            "config": self.cfg.as_dict(),
            "model": repr(self.model),
            "parameters": self.model.num_parameters(),
            "train_samples": int(self.train_x.shape[0]),
            "test_samples": int(self.test_x.shape[0]),
        }
