"""The command line's option types and the configuration built from them.

The ``gpunn`` commands (``train`` and ``eval`` in :mod:`gpunn.cli`, ``profile``, ``bench``
and ``kernels`` in their own modules) share these: each command imports what it needs from
here, and :mod:`gpunn.cli` builds the parser from the commands.  Nothing here imports a
command.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import sys

from gpunn.backend.cublas import GEMM_IMPLEMENTATIONS
from gpunn.backend.ops import ACTIVATIONS
from gpunn.checks import BETA, DROP_PROBABILITY, EPSILON, LEARNING_RATE, MOMENTUM, WEIGHT_DECAY
from gpunn.errors import GpunnError
from gpunn.layers import OUTPUT_ACTIVATIONS
from gpunn.losses import LOSSES
from gpunn.optim import OPTIMIZERS, Schedule

#: ``--activation``: the activations a hidden layer may have (identity would collapse the network).
HIDDEN_ACTIVATIONS = tuple(a for a in ACTIVATIONS if a != "identity")


def number(cast, ok, what):
    """An argparse type: ``cast(text)`` that must satisfy ``ok``, else one clear error."""

    def parse(text):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = number(int, lambda v: v > 0, "a positive integer")
positive_float = number(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
nonneg_float = number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
nonneg_int = number(int, lambda v: v >= 0, "an integer >= 0")
# the SGD scalars' rules are the sgd_update op's (gpunn.backend.ops): one definition each
learning_rate = number(float, LEARNING_RATE.ok, LEARNING_RATE.what)
momentum = number(float, MOMENTUM.ok, MOMENTUM.what)
weight_decay = number(float, WEIGHT_DECAY.ok, WEIGHT_DECAY.what)
beta = number(float, BETA.ok, BETA.what)
probability = number(float, DROP_PROBABILITY.ok, DROP_PROBABILITY.what)
epsilon = number(float, EPSILON.ok, EPSILON.what)


def hidden_sizes(text):
    """``"512,512"`` → (512, 512); ``""`` → () (softmax regression)."""
    if text.strip() == "":
        return ()
    sizes = []
    for i, part in enumerate(text.split(",")):
        part = part.strip()
        try:
            v = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"entry {i + 1} ({part!r}) is not an integer in {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"entry {i + 1} ({v}) must be a positive size in {text!r}")
        sizes.append(v)
    return tuple(sizes)


def add_data_options(p):
    p.add_argument("--data-dir", help="folder with the four MNIST-format files (default: $GPUNN_DATA_DIR, else the cache, downloading if needed)")
    p.add_argument("--train-samples", type=positive_int, metavar="N", help="use only the first N training examples")
    p.add_argument("--test-samples", type=positive_int, metavar="N", help="use only the first N test examples")


def add_backend_options(p):
    from gpunn.backend import backend_names

    p.add_argument("--backend", choices=backend_names(), default=None,
                   help="array backend (default: $GPUNN_BACKEND, else auto: cuda when a GPU is present, else numpy)")
    p.add_argument("--gemm", choices=GEMM_IMPLEMENTATIONS, default=None,
                   help="cuda backend: GEMM through cuBLAS (default) or gpunn's tiled Numba kernel")
    p.add_argument("--version", action="append", metavar="OP=VERSION", dest="op_versions",
                   help="run OP as VERSION: one of gpunn's kernel versions (softmax=online, gemm=tiled, "
                        "softmax-cross-entropy=classifier) or yours, FILE.py:NAME (see gpunn.lab); repeatable")
    p.add_argument("--precision", choices=("fp32", "tf32"), default=None,
                   help="cuda backend: cuBLAS's GEMM arithmetic, FP32 (default: as the CPU reference) or TF32 "
                        "tensor cores (faster, inputs rounded to 10 mantissa bits)")
    p.add_argument("--fused-step", action="store_true",
                   help="narrow networks (Dense layers at most 32 wide after the input, SGD, mse or "
                        "cross-entropy; the primer's): the whole step as one op, two kernels on a GPU")
    add_threads_option(p)


def op_versions(texts) -> dict:
    """``["softmax=online", "gemm=mine.py:tiled"]`` -> ``{op: version name or a user's function}``."""
    from gpunn.versions import VersionError, load_version, op_named

    chosen = {}
    for text in texts or ():
        word, sep, version = text.partition("=")
        if not sep or not version:
            raise VersionError(f"--version {text!r}: expected OP=VERSION (softmax=online, softmax=mine.py:mine)")
        op = op_named(word.strip())
        if op in chosen:
            raise VersionError(f"--version names {word.strip()} twice")
        chosen[op] = load_version(version, op).fn if ":" in version else version
    return chosen


def add_threads_option(p):
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads of BLAS and OpenMP (default: theirs, one per core); "
                        "1 or 2 when other processes keep the CPU busy")


@contextlib.contextmanager
def cpu_threads(n):
    """Limit the CPU libraries' thread pools (OpenBLAS, MKL, OpenMP) to ``n`` threads while
    the command runs (threadpoolctl); ``None`` leaves them as they are, and says so when the
    machine is already busy (:func:`say_if_cpu_busy`)."""
    if n is None:
        say_if_cpu_busy()
        yield
        return
    import numpy  # noqa: F401  (a library's pool can only be limited once it is loaded)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n):
        yield


def say_if_cpu_busy():
    """One line on stderr when the 1-minute load average is above the number of cores: then a
    thread per core (BLAS's default) fights the other processes, and a run can take tens of
    times longer than with ``--threads 1``.  ``GPUNN_LOAD_HINT=0`` keeps it quiet."""
    if os.environ.get("GPUNN_LOAD_HINT", "1") == "0":
        return
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average here (Windows)
        return
    cores = os.cpu_count() or 1
    if load > cores:
        print(f"gpunn: the machine is busy (load average {load:.1f} on {cores} cores): BLAS's thread per core "
              "will compete with the other processes; --threads 1 may run many times faster", file=sys.stderr)


def add_model_options(p, defaults):
    """Options of the model and optimizer; default None so a resumed run can tell what was given."""
    p.add_argument("--hidden", type=hidden_sizes, default=None, metavar="SIZES",
                   help=f"hidden layer sizes, comma-separated; empty for softmax regression (default: {','.join(map(str, defaults.hidden))})")
    p.add_argument("--activation", choices=HIDDEN_ACTIVATIONS, default=None, help=f"hidden activation (default: {defaults.activation})")
    p.add_argument("--loss", choices=tuple(LOSSES), default=None, help=f"loss (default: {defaults.loss})")
    p.add_argument("--output-activation", choices=OUTPUT_ACTIVATIONS, default=None,
                   help="last layer's activation (default: identity for cross-entropy, sigmoid for mse)")
    p.add_argument("--dropout", type=probability, default=None, metavar="P",
                   help=f"dropout probability after each hidden layer (default: {defaults.dropout:g}, none)")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"epochs (default: {defaults.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"mini-batch size (default: {defaults.batch_size})")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=None,
                   help=f"optimizer, as PyTorch's SGD, Adam, AdamW (default: {defaults.optimizer}; try --optimizer adamw --lr 1e-3)")
    p.add_argument("--lr", type=learning_rate, default=None, help=f"learning rate (default: {defaults.lr})")
    p.add_argument("--momentum", type=momentum, default=None, help=f"SGD momentum (default: {defaults.momentum})")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None, help=f"Nesterov momentum (default: {defaults.nesterov})")
    p.add_argument("--beta1", type=beta, default=None, help=f"Adam/AdamW first-moment decay (default: {defaults.beta1})")
    p.add_argument("--beta2", type=beta, default=None, help=f"Adam/AdamW second-moment decay (default: {defaults.beta2})")
    p.add_argument("--eps", type=epsilon, default=None, help=f"Adam/AdamW epsilon (default: {defaults.eps:g})")
    p.add_argument("--weight-decay", type=weight_decay, default=None,
                   help="weight decay: L2 through the gradient for sgd and adam, decoupled for adamw "
                        "(default: 0, and 0.01 for adamw)")
    p.add_argument("--lr-schedule", choices=Schedule.NAMES, default=None, help=f"learning-rate schedule (default: {defaults.lr_schedule})")
    p.add_argument("--step-size", type=positive_int, default=None, help="step schedule: epochs between decays (default: epochs/3)")
    p.add_argument("--gamma", type=positive_float, default=None, help="step schedule: decay factor (default: 0.1)")
    p.add_argument("--seed", type=nonneg_int, default=None, help=f"seed for initialisation and shuffling (default: {defaults.seed})")


MODEL_FIELDS = ("hidden", "activation", "loss", "output_activation", "dropout", "epochs", "batch_size", "optimizer", "lr",
                "momentum", "nesterov", "weight_decay", "beta1", "beta2", "eps", "lr_schedule", "step_size", "gamma",
                "seed")
#: the options that only one kind of optimizer reads: given with another, they are an error
_OPTIMIZER_OPTIONS = {"sgd": ("momentum", "nesterov"), "adam": ("beta1", "beta2", "eps")}


def train_config(args, base=None):
    """TrainConfig from the options given, on top of ``base`` (a resumed run's) or the defaults."""
    from gpunn.train import TrainConfig

    values = dict(base or {})
    given = {k: getattr(args, k) for k in MODEL_FIELDS if getattr(args, k, None) is not None}
    kind = "sgd" if given.get("optimizer", values.get("optimizer", "sgd")) == "sgd" else "adam"
    for other, names in _OPTIMIZER_OPTIONS.items():
        stray = [n for n in names if n in given]
        if other != kind and stray:
            raise GpunnError(f"--{stray[0].replace('_', '-')} is {'SGD' if other == 'sgd' else 'Adam and AdamW'}'s "
                             f"option; this run's optimizer is {given.get('optimizer', values.get('optimizer', 'sgd'))}")
    if "optimizer" in given and base and given["optimizer"] != base.get("optimizer", "sgd"):
        raise GpunnError(f"--optimizer {given['optimizer']}: the checkpoint was trained with "
                         f"{base.get('optimizer', 'sgd')}, whose state a resumed run continues")
    values.update(given)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:  # a checkpoint from another version of gpunn
        raise GpunnError(f"the checkpoint's training options include ones this gpunn does not know: {', '.join(unknown)}")
    return TrainConfig(**values)


def make_backend(args):
    """The backend the options name; ``--gemm`` only where the cuda backend runs."""
    from gpunn.backend import auto_choice, check_backend_name, get_backend

    name = check_backend_name(args.backend)
    gemm = getattr(args, "gemm", None)
    precision = getattr(args, "precision", None)
    versions = op_versions(getattr(args, "op_versions", None))
    if gemm or precision:
        chosen, why = auto_choice() if name == "auto" else (name, None)
        if chosen != "cuda":
            option = f"--gemm {gemm}" if gemm else f"--precision {precision}"
            raise GpunnError(f"{option} chooses the cuda backend's GEMM, but this run uses the {chosen} "
                             f"backend{f' ({why})' if why else ''}; drop {option.split()[0]} or use --backend cuda")
        backend = get_backend(chosen, **({"gemm": gemm} if gemm else {}),
                              **({"precision": precision} if precision else {}))
    else:
        backend = get_backend(name)
    for op, version in versions.items():
        backend.use_version(op, version)  # a kernel version's name on the numpy backend: one line, why not
    return backend


def add_peak_options(p):
    """The roofline's peaks: given, or measured/looked up (gpunn profile and gpunn bench)."""
    p.add_argument("--peak-gflops", type=positive_float, metavar="X", help="peak GFLOP/s of the roofline (default: measured or looked up)")
    p.add_argument("--peak-gbs", type=positive_float, metavar="X", help="peak memory bandwidth in GB/s (default: measured or looked up)")
    p.add_argument("--recalibrate", action="store_true", help="CPU: measure the peaks again instead of using the cached ones")
