"""``gpunn profile``: one training step, op by op, against the device's roofline.

Usage::

    gpunn profile --backend numpy                      # the default model, batch 128, on the CPU
    gpunn profile --hidden 1024,1024 --batch-size 512 --json p.json --csv p.csv --trace p.trace.json
    NUMBA_ENABLE_CUDASIM=1 gpunn profile --backend cuda --hidden 16 --batch-size 8   # launch trace

How ``gpunn profile`` measures.  :class:`gpunn.instrument.OpRecorder` replaces one backend *instance*'s
``backend.unchecked`` (the one door to its op implementations) with wrappers that record
the op, its argument shapes, its cost (the op's record in :mod:`gpunn.backend.ops`) and
its time, and puts it back on exit; the CUDA backend's launch hook adds every kernel
launch (name, grid, block) to the op that made it.  One step is the trainer's own
``Trainer.train_step`` (forward, loss, accuracy count, backward, SGD update) on a
random batch of MNIST's shape, so no data files are needed.

* CPU (numpy backend): ``time.perf_counter`` around each op; NumPy returns when
  the work is done.
* GPU (cuda backend): CUDA events recorded on CuPy's current stream (the one every
  kernel and cuBLAS call is queued on) before and after each op, read after the
  step is synchronised.  A short spin kernel is queued ahead of each op so that
  the GPU is still busy while Python launches the op: the events then time the
  GPU's work, not the host's launch overhead.  When the spin was too short (the
  GPU reached the start event before the op was queued) the sample is flagged and
  the spin doubles.
* Numba's CUDA simulator: times mean nothing (kernels run as Python threads), so
  one step is run and its launch trace printed instead.

Each op's time is the median over ``--reps`` steps after ``--warmup`` steps; its
share is of the sum over all ops, which is the table's total.  The step's own wall
time is measured separately, without the wrappers.
"""
from __future__ import annotations

import functools
import json
import statistics
import time
from dataclasses import dataclass

import numpy as np

from gpunn.instrument import OpRecorder, cuda_profiler_range, make_timer, nvtx_ranges
from gpunn.options import (
    add_backend_options,
    add_model_options,
    add_peak_options,
    make_backend,
    nonneg_int,
    positive_int,
    train_config,
)
from gpunn.output import check_outputs, write_json, write_text
from gpunn.report import chrome_trace, format_profile, jsonable, profile_csv, summarize, total_row
from gpunn.roofline import Peaks, peaks_for

MNIST_FEATURES, MNIST_CLASSES = 784, 10


# ---------------------------------------------------------------------------- one step


def synthetic_trainer(cfg, backend, in_features=MNIST_FEATURES, num_classes=MNIST_CLASSES, fused_step=False,
                      batches=1):
    """A Trainer on ``batches`` random batches of MNIST's shape (its epoch's order: the rows in
    order; its cursor at the start): the real step, no data files."""
    from gpunn.data import Dataset
    from gpunn.train import Trainer

    rng = np.random.default_rng(cfg.seed)
    n = cfg.batch_size * batches
    x = rng.random((n, in_features), dtype=np.float32)
    y = rng.integers(0, num_classes, n).astype(np.int32)
    data = Dataset(x, y, x[:1], y[:1], num_classes, name="synthetic")
    trainer = Trainer(cfg, data, backend=backend, progress=False, log=lambda *a: None, graphs=False,  # times its own graph
                      fused_step=fused_step)
    trainer.loop.start_epoch(np.arange(n), np.full(trainer.steps_per_epoch + 1, cfg.lr, np.float32), 0)
    return trainer


def whole_step(trainer):
    """The trainer's whole step of one batch from device state (``Trainer.device_step``), the
    cursor put back at the start first: on the synthetic one-batch data set, every call trains
    the same batch."""
    be, loop, n = trainer.backend, trainer.loop, trainer.cfg.batch_size

    def step():
        be.upload(np.array([0, 0], np.int32), loop.cursor)
        trainer.device_step(n)

    return step


@dataclass
class StepProfile:
    """What :func:`profile_step` measured."""

    backend: str
    device: str
    model: str
    batch: int
    config: dict
    timing: str
    meaningful: bool
    reps: int
    warmup: int
    steps: list  # one list of OpCall per timed step
    step_seconds: list  # wall time of each step run without the wrappers (empty in the simulator)
    peaks: Peaks | None = None
    #: seconds per step when the step is one CUDA graph replayed back to back (None: no graphs here)
    graph_step_seconds: float | None = None
    graph_note: str | None = None  # why there is no graph time
    #: every kernel a whole training step launches on the cuda path, [(op, kernel)] (see step_kernels)
    step_kernels: list | None = None
    step_kernels_how: str = ""

    def rows(self, sort: str = "step") -> list[dict]:
        return summarize(self.steps, self.peaks, self.meaningful, sort)

    def as_dict(self, sort: str = "step") -> dict:
        rows = self.rows(sort)
        return {
            "backend": self.backend, "device": self.device, "model": self.model, "batch": self.batch,
            "config": self.config,
            "timing": {"method": self.timing, "meaningful": self.meaningful, "reps": self.reps,
                       "warmup": self.warmup, "statistic": "median over steps" if self.meaningful else None},
            "peaks": self.peaks.as_dict() if self.peaks else None,
            "ops": rows,
            "total": total_row(rows, self.peaks),
            "step_seconds_uninstrumented": statistics.median(self.step_seconds) if self.step_seconds else None,
            "step_seconds_graph": self.graph_step_seconds,
            "graph_note": self.graph_note,
            "kernels_per_step": None if self.step_kernels is None else len(self.step_kernels),
            "kernels_per_step_counted": self.step_kernels_how,
            "step_kernels": None if self.step_kernels is None else [{"op": op, "kernel": k}
                                                                     for op, k in self.step_kernels],
            "launches": [{"op": c.op, "kernel": k, "grid": jsonable(g), "block": jsonable(b)}
                         for c in self.steps[0] for k, g, b in c.launches],
        }


def profile_step(cfg, backend, reps: int = 20, warmup: int = 3, peaks: Peaks | None = None,
                 fused_step: bool = False) -> StepProfile:
    """Profile ``Trainer.train_step`` for ``cfg`` on ``backend`` (see the module docstring); with
    ``fused_step``, the whole step as the one op ``narrow_step``."""
    # the fused step reads its batch at the cursor: enough batches for the graph's replays (time_graph_step)
    trainer = synthetic_trainer(cfg, backend, fused_step=fused_step, batches=reps + 4 if fused_step else 1)
    lr = cfg.lr
    if fused_step:
        step = whole_step(trainer)
    else:
        step = functools.partial(trainer.train_step, trainer.train_x, trainer.train_y, lr)
    timer = make_timer(backend)
    if not timer.meaningful:
        reps, warmup = 1, 0
    step_seconds, steps = [], []
    with nvtx_ranges(trainer.model, trainer.optimizer):
        if timer.meaningful:
            for _ in range(warmup):
                step()
            backend.synchronize()
            with cuda_profiler_range(backend):  # nsys/ncu capture these steps, as they run in training
                for _ in range(reps):
                    t0 = time.perf_counter()
                    step()
                    backend.synchronize()
                    step_seconds.append(time.perf_counter() - t0)
            graph_seconds, graph_note = time_graph_step(trainer, reps) if timer.meaningful else (None, None)
        with OpRecorder(backend, timer) as rec:
            if timer.meaningful:  # one more step to warm the wrappers (and size the GPU's hold)
                step()
                rec.take()
            for _ in range(reps):
                step()
                steps.append(rec.take())
    if rec.stray_launches:
        raise RuntimeError(f"kernels launched outside any op: {rec.stray_launches[:3]}")
    if not timer.meaningful:
        graph_seconds, graph_note = None, "the simulator's times mean nothing"
    kernels, kernels_how = step_kernels(cfg, backend, fused_step)
    return StepProfile(backend.name, backend.describe(), repr(trainer.model), cfg.batch_size, cfg.as_dict(),
                       timer.method, timer.meaningful, reps, warmup, steps, step_seconds, peaks,
                       graph_seconds, graph_note, kernels, kernels_how)


def step_kernels(cfg, backend, fused_step=False) -> tuple[list | None, str]:
    """``(launches, how)``: every kernel one training step of ``cfg`` launches on the cuda path (the
    batch's gather with the cursor's advance, forward, loss, backward and update; each cuBLAS GEMM as
    one), as ``[(op, kernel), ...]`` in order, and how they were counted.

    On the cuda backend (a GPU, or the simulator) one step runs and its launches are recorded.  On
    any other backend the cuda backend's own plans run dry (``CudaBackend(dry=True)``: NumPy
    arrays, nothing launched), so the count is the GPU's on any machine.  A user's version's own
    launches are not gpunn's to see.  ``(None, why)`` where the kernels cannot be imported."""
    if backend.name == "cuda":
        how = "recorded from one step" + (" in the simulator" if backend.simulated else " on the GPU")
    else:
        try:
            from gpunn.backend.cuda_backend import CudaBackend
        except ImportError as exc:
            return None, f"not counted: the cuda path's kernels need Numba ({exc.name or exc}); pip install 'gpunn[sim]'"
        backend = CudaBackend(dry=True)
        how = "planned: the cuda backend's plans run dry, nothing launched"
    step = whole_step(synthetic_trainer(cfg, backend, fused_step=fused_step))
    with OpRecorder(backend, None) as rec:
        step()
        calls = rec.take()
    if rec.stray_launches:
        raise RuntimeError(f"kernels launched outside any op: {rec.stray_launches[:3]}")
    return [(c.op, k) for c in calls for k, _, _ in c.launches], how


def time_graph_step(trainer, reps: int):
    """``(seconds per step, None)`` of the trainer's step captured as one CUDA graph and replayed
    ``reps`` times back to back (as training replays it), or ``(None, why not)``."""
    be = trainer.backend
    be.upload(np.array([trainer.cfg.lr], dtype=be.dtype), trainer.device_rate)  # the graph reads its rate on the device
    if trainer.fused_step:  # the whole step, which moves the cursor on one batch per replay (3 + reps of them)
        be.upload(np.array([0, 0], np.int32), trainer.loop.cursor)
        step = functools.partial(trainer.device_step, trainer.cfg.batch_size)
    else:
        step = functools.partial(trainer.train_step, trainer.train_x, trainer.train_y, trainer.device_rate)
    try:
        graph = be.capture(step)
    except Exception as exc:  # no graphs on this backend, or a refused capture
        return None, str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for _ in range(3):
        graph()
    be.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        graph()
    be.synchronize()
    return (time.perf_counter() - t0) / reps, None


# ---------------------------------------------------------------------------- command line


def cmd_profile(args):
    check_outputs({"--json": args.json, "--csv": args.csv, "--trace": args.trace})
    cfg = train_config(args)
    backend = make_backend(args)
    peaks = peaks_for(backend, args.peak_gflops, args.peak_gbs, args.recalibrate)
    prof = profile_step(cfg, backend, reps=args.reps, warmup=args.warmup, peaks=peaks, fused_step=args.fused_step)
    print(format_profile(prof, args.sort))
    if args.json:
        write_json(args.json, prof.as_dict(args.sort))
    if args.csv:
        write_text(args.csv, profile_csv(prof, args.sort))
    if args.trace:
        write_text(args.trace, json.dumps(chrome_trace(prof)) + "\n")
    return 0


def register_cli(sub):
    from gpunn.train import TrainConfig

    p = sub.add_parser("profile", help="time one training step op by op, against the device's roofline",
                       description="Profile one training step of the model (same options as gpunn train) on a "
                                   "random batch of MNIST's shape: each op's time (median over steps), FLOPs, bytes, "
                                   "GFLOP/s, GB/s, % of the device's roofline and share of the step.")
    add_model_options(p, TrainConfig())
    add_backend_options(p)
    p.add_argument("--reps", type=positive_int, default=20, help="timed steps; each op's time is the median (default: 20)")
    p.add_argument("--warmup", type=nonneg_int, default=3, metavar="N", help="untimed steps first (default: 3)")
    p.add_argument("--sort", choices=("step", "time"), default="step", help="order of the rows: as in the step, or slowest first")
    add_peak_options(p)
    p.add_argument("--json", metavar="PATH", help="write the profile as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the table as CSV")
    p.add_argument("--trace", metavar="PATH", help="write the steps in Chrome's trace-event format (open in Perfetto or chrome://tracing)")
    p.set_defaults(func=cmd_profile)
