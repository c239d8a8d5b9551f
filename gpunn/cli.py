"""The ``gpunn`` command line: ``gpunn train``, ``gpunn eval`` and the profiling tools.

Bad input is reported as one line on stderr with a non-zero exit status, never a
traceback: exit 2 for bad options or data, 1 for a run that failed (e.g. diverged),
130 when interrupted with Ctrl-C, 143 when stopped by SIGTERM (what ``timeout``, Slurm,
systemd and ``docker stop`` send), which is handled like Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import shlex
import signal
import sys
import threading
import time

from gpunn.errors import GpunnError
from gpunn.options import (
    MODEL_FIELDS,
    positive_int,
    add_backend_options,
    add_data_options,
    add_model_options,
    cpu_threads,
    make_backend,
    train_config,
)

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so that it stops a command the same way
    (one line, exit status 128 + 15); a training run with --save finishes its step and saves."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise Terminated


_raise_terminated.raises_keyboard_interrupt = True  # Trainer.fit may take it over (see there)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Handle SIGTERM like Ctrl-C while the block runs.  Left alone when SIGTERM is not at its
    default (ignored, or the caller's own handler) or off the main thread, where Python
    cannot set handlers."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped(prog, exc):
    """The line and exit status of a command stopped by Ctrl-C or SIGTERM."""
    if isinstance(exc, Terminated):
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return 128 + exc.signum
    print(f"{prog}: interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors in one line (no usage dump)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def load_data(args, progress, train=True):
    from gpunn.data import load_mnist

    return load_mnist(args.data_dir, train_samples=args.train_samples, test_samples=args.test_samples,
                      progress=progress, train=train)


def _option(k, v):
    """How option ``k`` with value ``v`` is written on the command line."""
    flag = "--" + k.replace("_", "-")
    if isinstance(v, bool):
        return flag if v else f"--no-{k}"
    if v is None:
        return f"no {flag}"
    if k == "hidden":
        return f"{flag} {shlex.quote(','.join(map(str, v)))}"
    return f"{flag} {v}"


def check_resume_options(args, path, saved):
    """Options given with --resume must equal the checkpoint's (only --epochs may change)."""
    for k in MODEL_FIELDS:
        given = getattr(args, k, None)
        if k == "epochs" or given is None:
            continue
        old = saved.get(k)
        same = tuple(given) == tuple(old or ()) if k == "hidden" else given == old
        if not same:
            raise GpunnError(f"{path}: --resume continues the checkpoint's run, which has {_option(k, old)}; "
                             f"got {_option(k, given)} (only --epochs may change)")


def resume_command(args, path):
    """The command line that continues this run from ``path``: the same data, backend and outputs."""
    words = ["gpunn", "train", "--resume", str(path), "--save", str(path)]
    for k in ("data_dir", "train_samples", "test_samples", "backend", "gemm", "precision", "threads", "metrics_json"):
        v = getattr(args, k, None)
        if v is not None:
            words += ["--" + k.replace("_", "-"), str(v)]
    if getattr(args, "graphs", None) is not None:
        words.append("--graphs" if args.graphs else "--no-graphs")
    if getattr(args, "fused_step", False):
        words.append("--fused-step")
    if getattr(args, "steps_per_graph", 1) != 1:
        words += ["--steps-per-graph", str(args.steps_per_graph)]
    return shlex.join(words)


def _plural(n, word):
    return f"{n} {word}{'' if n == 1 else 's'}"


def cmd_train(args):
    from gpunn import checkpoint, output
    from gpunn.train import Interrupted, Trainer

    output.check_outputs({"--save": args.save, "--metrics-json": args.metrics_json},  # before training, not after it
                         {"--resume": args.resume}, in_place={("--resume", "--save")})
    progress = args.progress if args.progress is not None else sys.stderr.isatty()
    base = None
    if args.resume:
        meta = checkpoint.read_meta(args.resume)
        base = meta.get("train")
        if not isinstance(base, dict):
            raise GpunnError(f"{args.resume}: checkpoint has no training state to resume (use gpunn eval)")
        try:  # the checkpoint's own options, through the one schema the command line's go through
            train_config(argparse.Namespace(), base)
        except ValueError as exc:
            raise GpunnError(f"{args.resume}: train.{exc}") from None
        except GpunnError as exc:
            raise GpunnError(f"{args.resume}: {exc}") from None
        check_resume_options(args, args.resume, base)
    cfg = train_config(args, base)
    backend = make_backend(args)
    data = load_data(args, progress)
    if base is not None and meta.get("in_features") not in (None, data.train_x.shape[1]):
        raise GpunnError(f"the images have {data.train_x.shape[1]} pixels, but the checkpoint's model "
                         f"expects {meta['in_features']} ({args.resume})")
    trainer = Trainer(cfg, data, backend=backend, progress=progress, save_path=args.save, graphs=args.graphs,
                      fused_step=args.fused_step, steps_per_graph=args.steps_per_graph)
    if args.resume:
        trainer.restore(args.resume)
        print(f"resuming {args.resume} at epoch {trainer.epoch + 1}, step {trainer.step}", file=sys.stderr)
        if not args.save:
            print(f"gpunn: this run saves no checkpoint ({args.resume} stays as it is); "
                  f"--save {shlex.quote(str(args.resume))} would continue it in place", file=sys.stderr)
    print(f"model {trainer.model} ({trainer.model.num_parameters():,} parameters) on {backend.describe()}; "
          f"{data.train_x.shape[0]:,} training / {data.test_x.shape[0]:,} test images", file=sys.stderr)
    trained_before = trainer.trained_seconds()
    t0 = time.perf_counter()
    try:
        trainer.fit()
    except Interrupted as exc:
        how = "terminated (SIGTERM)" if exc.signum == signal.SIGTERM else "interrupted"
        if exc.path:
            print(f"gpunn: {how} at epoch {exc.epoch + 1}, step {exc.step}; saved {exc.path}. "
                  f"Resume with: {resume_command(args, exc.path)}", file=sys.stderr)
        else:
            print(f"gpunn: {how} at epoch {exc.epoch + 1}, step {exc.step} (nothing saved: use --save PATH)", file=sys.stderr)
        return 128 + exc.signum
    wall = time.perf_counter() - t0
    train_seconds = trainer.trained_seconds()
    acc = trainer.history[-1].test_accuracy if trainer.history else float("nan")
    if args.resume:  # this run's figures, and then the whole run's training time
        times = (f"{train_seconds - trained_before:.1f} s training in this run, {wall:.1f} s with evaluation; "
                 f"{train_seconds:.1f} s training over all {_plural(trainer.epoch, 'epoch')}")
    else:
        times = f"{train_seconds:.1f} s training, {wall:.1f} s with evaluation"
    print(f"test accuracy {100 * acc:.2f}% after {_plural(trainer.epoch, 'epoch')} ({times})")
    if args.metrics_json:
        output.write_json(args.metrics_json, trainer.metrics(train_seconds))
    return 0


def cmd_eval(args):
    import numpy as np

    from gpunn import checkpoint, output
    from gpunn.errors import DataError
    from gpunn.layers import from_config
    from gpunn.train import evaluate

    output.check_outputs({"--metrics-json": args.metrics_json}, {"the evaluation": args.checkpoint})
    meta = checkpoint.read_meta(args.checkpoint)
    backend = make_backend(args)
    try:
        model = from_config(meta["model"], backend=backend)
    except (ValueError, TypeError) as exc:
        raise GpunnError(f"{args.checkpoint}: its model configuration is malformed ({exc})") from None
    checkpoint.restore(args.checkpoint, model)
    data = load_data(args, progress=False, train=False)  # the test split only: offline, no training files
    if data.test_x.shape[1] != model.in_features:
        raise DataError(f"the test images have {data.test_x.shape[1]} pixels, but the model expects {model.in_features}")
    if model.out_features < data.num_classes:
        raise DataError(f"the data has {data.num_classes} classes, but the model outputs {model.out_features}")
    acc = evaluate(model, backend.asarray(data.test_x), backend.asarray(data.test_y, np.int32))
    print(f"test accuracy {100 * acc:.2f}% ({data.test_x.shape[0]:,} images, {args.checkpoint})")
    if args.metrics_json:
        output.write_json(args.metrics_json, {"test_accuracy": acc, "backend": backend.name, "checkpoint": str(args.checkpoint)})
    return 0


def build_parser():
    from gpunn import __version__
    from gpunn.train import TrainConfig

    defaults = TrainConfig()
    parser = _Parser(prog="gpunn", description="Train small neural networks on MNIST with hand-written GPU kernels (NumPy fallback).")
    parser.add_argument("--version", action="version", version=f"gpunn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("train", help="train an MLP on MNIST (the defaults reach about 98.4%%)")
    add_model_options(p, defaults)
    add_data_options(p)
    add_backend_options(p)
    p.add_argument("--save", metavar="PATH", help="write a checkpoint after every epoch (atomically) and on Ctrl-C; "
                                                  "nothing else is ever saved")
    p.add_argument("--resume", metavar="PATH", help="continue a run from its checkpoint (weights, optimizer, schedule, "
                                                    "position); add --save PATH to keep saving it")
    p.add_argument("--metrics-json", metavar="PATH", help="write the run's metrics as JSON")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar (default: when stderr is a terminal)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="cuda backend: capture each training step once as a CUDA graph and replay it "
                        "(default: on, unless $GPUNN_GRAPHS is 0)")
    p.add_argument("--steps-per-graph", type=positive_int, default=1, metavar="N",
                   help="cuda backend: full-batch steps per graph replay, one host call for N steps (default 1)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="print a checkpoint's test accuracy")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    add_data_options(p)
    add_backend_options(p)
    p.add_argument("--metrics-json", metavar="PATH", help="write the accuracy as JSON")
    p.set_defaults(func=cmd_eval)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    """The tools beside train and eval, each a command in its own module: they import the
    options they share from :mod:`gpunn.options`, never this module."""
    from gpunn import bench, profile, resources

    return [profile.register_cli, resources.register_cli, bench.register_cli]


def report_errors(prog, func, *args):
    """``func(*args)``, with what a user can cause turned into one line on stderr and an exit
    status (never a traceback): bad input 2, a failed run 1, Ctrl-C 130, SIGTERM 143.  The
    examples use it too."""
    try:
        with sigterm_as_interrupt():
            return func(*args)
    except GpunnError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except (ValueError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        print(f"{prog}: error: not enough memory for this model or data size", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as exc:  # (Terminated too)
        return _stopped(prog, exc)


def main(argv=None):
    with sigterm_as_interrupt():
        try:  # importing the commands takes a moment: Ctrl-C or SIGTERM then is one line, too
            parser = build_parser()
            args = parser.parse_args(argv)
        except KeyboardInterrupt as exc:
            return _stopped("gpunn", exc)
        return _run(parser, args)


def _run(parser, args):
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE

    def run():
        with cpu_threads(args.threads) if hasattr(args, "threads") else contextlib.nullcontext():
            return args.func(args)

    return report_errors(f"gpunn {args.command}", run)


if __name__ == "__main__":
    sys.exit(main())
