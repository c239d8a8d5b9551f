"""Profiling: one training step op by op (``gpunn profile``), and what each kernel costs
a GPU without running it (``gpunn kernels``).

Usage::

    gpunn profile --backend numpy                      # the default model, batch 128, on the CPU
    gpunn profile --hidden 1024,1024 --batch-size 512 --json p.json --csv p.csv --trace p.trace.json
    NUMBA_ENABLE_CUDASIM=1 gpunn profile --backend cuda --hidden 16 --batch-size 8   # launch trace
    gpunn kernels --arch sm_90                         # registers, shared memory, spills, occupancy

How ``gpunn profile`` measures.  :class:`OpRecorder` replaces one backend *instance*'s
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

import contextlib
import csv
import functools
import io
import json
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from gpunn.backend import ops
from gpunn.backend.base import Unchecked
from gpunn.backend.ops import Cost
from gpunn.errors import GpunnError
from gpunn.roofline import Peaks, bound, peaks_for, roofline_seconds

MNIST_FEATURES, MNIST_CLASSES = 784, 10

# ---------------------------------------------------------------------------- what a call costs


def call_cost(op, *args, **kwargs) -> tuple[Cost, str]:
    """``(Cost, variant)`` of one call ``backend.<op>(*args, **kwargs)``, from the op's record."""
    record = ops.OPS[op]
    return record.cost(*args, **kwargs), record.variant(*args, **kwargs)


def call_shapes(*args, **kwargs) -> tuple:
    """The shapes of a call's array arguments, leaving out one-element outputs (a loss, a count)."""
    return tuple(tuple(int(d) for d in a.shape) for a in (*args, *kwargs.values())
                 if hasattr(a, "shape") and getattr(a, "size", 0) > 1)


def format_shape(shape) -> str:
    return "x".join(map(str, shape))


# ---------------------------------------------------------------------------- timers


class Sample:
    """One op's timing: start (seconds since the timer's origin) and duration, once resolved."""

    __slots__ = ("start", "seconds", "host_bound")

    def __init__(self):
        self.start = self.seconds = None
        self.host_bound = False


class WallClock:
    """CPU timing: ``perf_counter`` around the op (NumPy ops finish before they return)."""

    method = "wall clock around each op (time.perf_counter)"
    meaningful = True

    def __init__(self):
        self.origin = time.perf_counter()

    def measure(self, fn) -> Sample:
        s = Sample()
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        s.start, s.seconds = t0 - self.origin, t1 - t0
        return s

    def resolve(self):
        """Fill in the samples taken since the last call (a wall clock has them already)."""


class SimulatorClock(WallClock):
    """The CUDA simulator: wall-clock times of Python threads, kept only to order the trace."""

    method = "none: the CUDA simulator runs kernels as Python threads, so times mean nothing"
    meaningful = False


_HOLD_SOURCE = r"""
extern "C" __global__ void gpunn_hold(unsigned long long ns) {
    unsigned long long start, now;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now)); } while (now - start < ns);
}
"""


class CudaEvents:
    """GPU timing: CUDA events on CuPy's current stream around each op.

    Before the start event, a one-thread kernel spins for ``hold_ns`` on the GPU's
    global timer, so the GPU is busy while the host queues the op; the events then
    bracket only the op's GPU work.  If the GPU had already passed the start event
    by the time the op was queued, the sample is flagged ``host_bound`` (the time
    may include launch overhead) and the hold doubles for the next op.
    :meth:`resolve` synchronises on the last event and reads every elapsed time."""

    method = ("CUDA events around each op on CuPy's current stream, behind a spin kernel that hides "
              "the host's launch overhead; read after the step is synchronised")
    meaningful = True
    MAX_HOLD_NS = 20_000_000

    def __init__(self, hold_us: float = 100.0):
        import cupy

        self._cp = cupy
        self._hold = cupy.RawKernel(_HOLD_SOURCE, "gpunn_hold")
        self.hold_ns = int(hold_us * 1000)
        self._pending = []
        self.origin = cupy.cuda.Event()
        self.origin.record(cupy.cuda.get_current_stream())

    def measure(self, fn) -> Sample:
        cp, s = self._cp, Sample()
        stream = cp.cuda.get_current_stream()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        self._hold((1,), (1,), (np.uint64(self.hold_ns),))
        start.record(stream)
        fn()
        end.record(stream)
        if start.done:  # the GPU reached the start before the op was queued: it may have waited for us
            s.host_bound = True
            self.hold_ns = min(2 * self.hold_ns, self.MAX_HOLD_NS)
        self._pending.append((s, start, end))
        return s

    def resolve(self):
        if not self._pending:
            return
        self._pending[-1][2].synchronize()
        elapsed = self._cp.cuda.get_elapsed_time  # milliseconds
        for s, start, end in self._pending:
            s.start, s.seconds = elapsed(self.origin, start) / 1e3, elapsed(start, end) / 1e3
        self._pending.clear()


def simulator_on() -> bool:
    """True when Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM=1) and the cuda backend imports."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() in ("", "0"):
        return False
    try:
        from gpunn.backend.cuda_backend import simulator_enabled
    except ImportError:
        return False
    return simulator_enabled()


def make_timer(backend):
    """The timer that is honest for ``backend``'s device."""
    if getattr(backend, "simulated", False):
        return SimulatorClock()
    if backend.name == "cuda":
        return CudaEvents()
    return WallClock()


# ---------------------------------------------------------------------------- recording ops


@dataclass
class OpCall:
    """One call of one op within a step."""

    op: str
    variant: str = ""
    shapes: tuple = ()
    cost: Cost = Cost(0, 0)
    launches: list = field(default_factory=list)  # (kernel name, grid, block) of each kernel launched
    sample: Sample | None = None

    @property
    def key(self):
        return self.op, self.variant, self.shapes


def _nvtx_module(backend):
    """The nvtx package when ``backend`` is a real GPU and the package is installed, else None."""
    if getattr(backend, "name", None) != "cuda" or getattr(backend, "simulated", False):
        return None
    try:
        import nvtx
    except ImportError:
        return None
    return nvtx


class OpRecorder:
    """Context manager: record every op ``backend`` runs (and every kernel it launches).

    Replaces the instance's ``backend.unchecked`` with one whose ops record each call,
    and puts the original back on exit (other backends are unaffected).  That is where
    every call arrives: the public methods call through it after checking their
    arguments, and layers that have checked their own buffers call it directly.
    Calls go to ``self.calls`` as :class:`OpCall`, timed by ``timer`` when one is given.  An op called from inside
    another op is not recorded twice."""

    def __init__(self, backend, timer=None):
        self.backend, self.timer = backend, timer
        self.calls: list[OpCall] = []
        self.stray_launches: list = []  # launches outside any op (none are expected)
        self._current = None
        self._saved = None
        self._nvtx = _nvtx_module(backend)

    def __enter__(self):
        be = self.backend
        self._saved = be.unchecked
        be.unchecked = Unchecked({name: self._wrap(name, getattr(self._saved, name)) for name in ops.OPS})
        hooks = getattr(be, "launch_hooks", None)
        if hooks is not None:
            hooks.insert(0, self._on_launch)
        return self

    def __exit__(self, *exc):
        be = self.backend
        be.unchecked, self._saved = self._saved, None
        hooks = getattr(be, "launch_hooks", None)
        if hooks is not None and self._on_launch in hooks:
            hooks.remove(self._on_launch)
        return False

    def take(self) -> list[OpCall]:
        """The calls recorded so far (timings resolved), and start afresh."""
        if self.timer is not None:
            self.timer.resolve()
        calls, self.calls = self.calls, []
        return calls

    def _on_launch(self, launch, run):
        entry = (launch.name, launch.grid, launch.block)
        (self._current.launches if self._current is not None else self.stray_launches).append(entry)
        run()

    def _wrap(self, name, method):
        timer, nvtx = self.timer, self._nvtx

        @functools.wraps(method)
        def op(*args, **kwargs):
            if self._current is not None:  # nested: the outer op accounts for it
                return method(*args, **kwargs)
            call = self._current = OpCall(name)
            try:
                if nvtx is not None:
                    run = nvtx.annotate(message=name, color="green", domain="gpunn")(method)
                else:
                    run = method
                if timer is None:
                    run(*args, **kwargs)
                else:
                    call.sample = timer.measure(lambda: run(*args, **kwargs))
            finally:
                self._current = None
            call.cost, call.variant = call_cost(name, *args, **kwargs)
            call.shapes = call_shapes(*args, **kwargs)
            self.calls.append(call)

        return op


# ---------------------------------------------------------------------------- NVTX ranges


def annotate_nvtx(model, optimizer=None):
    """Put an NVTX range around each layer's forward and backward and the optimizer's step,
    so Nsight Systems shows them; returns a function that takes them off again.

    Only on a real GPU (``model.backend`` is the cuda backend outside the simulator)
    with the ``nvtx`` package installed; anywhere else it wraps nothing and costs
    nothing.  The wrappers are set on the instances, not the classes; a method already
    in a range is not wrapped again."""
    nvtx = _nvtx_module(getattr(model, "backend", None))
    if nvtx is None:
        return lambda: None
    wrapped = []

    def wrap(obj, attr, message, color):
        original = getattr(obj, attr)
        if getattr(original, "_gpunn_nvtx", False):  # already in a range (annotated twice): leave it
            return
        had_own = attr in vars(obj)
        annotated = nvtx.annotate(message=message, color=color, domain="gpunn")(original)

        def ranged(*args, **kwargs):
            return annotated(*args, **kwargs)

        ranged._gpunn_nvtx = True
        setattr(obj, attr, ranged)
        wrapped.append((obj, attr, original if had_own else None))

    for i, layer in enumerate(getattr(model, "layers", [model])):
        wrap(layer, "forward", f"{i}: {layer!r}.forward", "blue")
        wrap(layer, "backward", f"{i}: {layer!r}.backward", "purple")
    if optimizer is not None:
        wrap(optimizer, "step", f"{type(optimizer).__name__}.step", "orange")

    def remove():
        for obj, attr, original in reversed(wrapped):
            if original is None:
                delattr(obj, attr)
            else:
                setattr(obj, attr, original)
        wrapped.clear()

    return remove


@contextlib.contextmanager
def nvtx_ranges(model, optimizer=None):
    """:func:`annotate_nvtx` for the duration of a ``with`` block."""
    remove = annotate_nvtx(model, optimizer)
    try:
        yield
    finally:
        remove()


@contextlib.contextmanager
def _cuda_profiler_range(backend):
    """cudaProfilerStart/Stop on a real GPU, so ``nsys --capture-range=cudaProfilerApi`` and
    ``ncu --profile-from-start off`` capture just what is inside."""
    if backend.name != "cuda" or getattr(backend, "simulated", False):
        yield
        return
    import cupy

    cupy.cuda.runtime.profilerStart()
    try:
        yield
    finally:
        cupy.cuda.runtime.profilerStop()


# ---------------------------------------------------------------------------- one step


def synthetic_trainer(cfg, backend, in_features=MNIST_FEATURES, num_classes=MNIST_CLASSES):
    """A Trainer on one random batch of MNIST's shape: the real step, no data files."""
    from gpunn.data import Dataset
    from gpunn.train import Trainer

    rng = np.random.default_rng(cfg.seed)
    n = cfg.batch_size
    x = rng.random((n, in_features), dtype=np.float32)
    y = rng.integers(0, num_classes, n).astype(np.int32)
    data = Dataset(x, y, x[:1], y[:1], num_classes, name="synthetic")
    return Trainer(cfg, data, backend=backend, progress=False, log=lambda *a: None, graphs=False)  # times its own graph


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
            "launches": [{"op": c.op, "kernel": k, "grid": _jsonable(g), "block": _jsonable(b)}
                         for c in self.steps[0] for k, g, b in c.launches],
        }


def profile_step(cfg, backend, reps: int = 20, warmup: int = 3, peaks: Peaks | None = None) -> StepProfile:
    """Profile ``Trainer.train_step`` for ``cfg`` on ``backend`` (see the module docstring)."""
    trainer = synthetic_trainer(cfg, backend)
    lr = cfg.lr
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
            with _cuda_profiler_range(backend):  # nsys/ncu capture these steps, as they run in training
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
    return StepProfile(backend.name, backend.describe(), repr(trainer.model), cfg.batch_size, cfg.as_dict(),
                       timer.method, timer.meaningful, reps, warmup, steps, step_seconds, peaks,
                       graph_seconds, graph_note)


def time_graph_step(trainer, reps: int):
    """``(seconds per step, None)`` of the trainer's step captured as one CUDA graph and replayed
    ``reps`` times back to back (as training replays it), or ``(None, why not)``."""
    be = trainer.backend
    be.upload(np.array([trainer.cfg.lr], dtype=be.dtype), trainer._lr)  # the graph reads its rate on the device
    try:
        graph = be.capture(lambda: trainer.train_step(trainer.train_x, trainer.train_y, trainer._lr))
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


def summarize(steps, peaks, meaningful=True, sort="step") -> list[dict]:
    """One row per distinct (op, variant, shapes) of a step, with its median time per step."""
    first = steps[0]
    for i, s in enumerate(steps[1:], 2):
        if [c.key for c in s] != [c.key for c in first]:
            raise RuntimeError(f"step {i} ran different ops from step 1")
    groups = {}
    for c in first:
        g = groups.setdefault(c.key, {"op": c.op, "variant": c.variant, "shapes": [list(s) for s in c.shapes],
                                      "calls": 0, "launches": 0, "kernels": Counter(), "cost": Cost(0, 0)})
        g["calls"] += 1
        g["launches"] += len(c.launches)
        g["kernels"].update(k for k, _, _ in c.launches)
        g["cost"] += c.cost
    per_step = {key: [] for key in groups}
    host_bound = Counter()
    for s in steps:
        sums = Counter()
        for c in s:
            if meaningful:
                sums[c.key] += c.sample.seconds
            host_bound[c.key] += bool(c.sample and c.sample.host_bound)
        for key in groups:
            per_step[key].append(sums[key])
    rows = []
    for key, g in groups.items():
        cost = g.pop("cost")
        seconds = statistics.median(per_step[key]) if meaningful else None
        row = {**g, "kernels": dict(g["kernels"]), "seconds": seconds, "flops": cost.flops, "bytes": cost.bytes,
               "intensity": cost.intensity if cost.bytes else None,
               "gflops": cost.flops / seconds / 1e9 if seconds else None,
               "gbs": cost.bytes / seconds / 1e9 if seconds else None,
               "bound": bound(cost, peaks) if peaks else None,
               "roofline_seconds": roofline_seconds(cost, peaks) if peaks else None,
               "percent_of_peak": 100 * roofline_seconds(cost, peaks) / seconds if peaks and seconds else None,
               "host_bound_samples": host_bound[key]}
        rows.append(row)
    total = sum(r["seconds"] for r in rows) if meaningful else 0
    for r in rows:
        r["share"] = 100 * r["seconds"] / total if total else None
    if sort == "time" and meaningful:
        rows.sort(key=lambda r: -r["seconds"])
    return rows


def total_row(rows, peaks) -> dict:
    seconds = sum(r["seconds"] for r in rows) if rows and rows[0]["seconds"] is not None else None
    flops, nbytes = sum(r["flops"] for r in rows), sum(r["bytes"] for r in rows)
    roof = sum(r["roofline_seconds"] for r in rows) if peaks else None
    return {"op": "total", "calls": sum(r["calls"] for r in rows), "launches": sum(r["launches"] for r in rows),
            "seconds": seconds, "flops": flops, "bytes": nbytes,
            "gflops": flops / seconds / 1e9 if seconds else None, "gbs": nbytes / seconds / 1e9 if seconds else None,
            "percent_of_peak": 100 * roof / seconds if roof and seconds else None,
            "share": sum(r["share"] for r in rows) if seconds else None}


def _jsonable(v):
    return list(v) if isinstance(v, tuple) else v


# ---------------------------------------------------------------------------- output


def _fmt(v, spec, missing="-"):
    return missing if v is None else format(v, spec)


def text_table(headers, rows, right=()) -> str:
    """Rows of strings as aligned columns; columns named in ``right`` are right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, headers)).rstrip()

    return "\n".join([fmt(headers), fmt(["-" * w for w in widths]), *map(fmt, rows)])


PROFILE_COLUMNS = ("#", "op", "variant", "shapes", "calls", "kernels", "time µs", "FLOPs", "bytes", "GFLOP/s",
                   "GB/s", "FLOP/B", "bound", "% peak", "% step")


def si(n) -> str:
    """``2269184`` -> ``"2.27M"``: three significant digits and a k/M/G/T suffix."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.3g}{suffix}"
    return f"{n:.3g}"


def _profile_cells(i, r):
    return [str(i), r["op"], r.get("variant", ""), " ".join(format_shape(s) for s in r.get("shapes", [])),
            str(r["calls"]), str(r["launches"]) if r["launches"] else "-",
            _fmt(r["seconds"] and r["seconds"] * 1e6, ".1f"), si(r["flops"]), si(r["bytes"]),
            _fmt(r["gflops"], ".2f"), _fmt(r["gbs"], ".2f"), _fmt(r.get("intensity"), ".2f"), r.get("bound") or "-",
            _fmt(r["percent_of_peak"], ".1f"), _fmt(r["share"], ".1f")]


def format_profile(prof: StepProfile, sort="step") -> str:
    rows = prof.rows(sort)
    lines = [f"gpunn profile: one training step of {prof.model}, batch {prof.batch}, on {prof.device}"]
    if not prof.meaningful:
        lines.append("times are not meaningful in the CUDA simulator (kernels run as Python threads on the CPU): "
                     "this is the launch trace of one step, with each op's cost")
        lines += ["", _launch_table(prof.steps[0]), "", _kernel_counts(prof.steps[0]), ""]
        cells = [[str(i), r["op"], r["variant"], " ".join(format_shape(s) for s in r["shapes"]), str(r["calls"]),
                  str(r["launches"]), si(r["flops"]), si(r["bytes"])] for i, r in enumerate(rows, 1)]
        lines.append(text_table(("#", "op", "variant", "shapes", "calls", "kernels", "FLOPs", "bytes"), cells,
                                right=("#", "calls", "kernels", "FLOPs", "bytes")))
        return "\n".join(lines)
    p = prof.peaks
    lines.append(f"timing: {prof.timing}; median of {prof.reps} steps after {prof.warmup} warm-up steps")
    if p:
        lines.append(f"peaks: {p.gflops:,.1f} GFLOP/s, {p.gbs:,.1f} GB/s (ridge {p.ridge:.2f} FLOP/B) - {p.source}")
    cells = [_profile_cells(i, r) for i, r in enumerate(rows, 1)]
    total = total_row(rows, p)
    cells.append(_profile_cells("", {**total, "variant": "", "shapes": [], "intensity": None, "bound": None}))
    lines.append(text_table(PROFILE_COLUMNS, cells, right=PROFILE_COLUMNS[4:12] + PROFILE_COLUMNS[13:]))
    if prof.step_seconds:
        wall = statistics.median(prof.step_seconds)
        lines.append(f"step wall time without the profiler: {wall * 1e3:.3f} ms (median of {len(prof.step_seconds)}); "
                     f"the ops' {total['seconds'] * 1e3:.3f} ms are {100 * total['seconds'] / wall:.0f}% of it")
        if prof.graph_step_seconds is not None:
            g = prof.graph_step_seconds
            lines.append(f"step as one CUDA graph: {g * 1e3:.3f} ms ({prof.reps} replays back to back; "
                         f"{wall / g:.1f}x the eager step)")
    over = [r["op"] for r in rows if r["bound"] == "compute" and (r["percent_of_peak"] or 0) > 110]
    if over:
        lines.append(f"{', '.join(sorted(set(over)))} ran above the compute peak: the peaks are too low "
                     "(a CPU calibration taken under load?); measure them again with --recalibrate")
    flagged = sum(r["host_bound_samples"] for r in rows)
    if flagged:
        lines.append(f"{flagged} op samples may include host launch overhead (the GPU waited for the host)")
    return "\n".join(lines)


def _launch_table(calls) -> str:
    cells = []
    for i, c in enumerate(calls, 1):
        for k, grid, block in c.launches:
            threads = int(np.prod(grid)) * int(np.prod(block))
            cells.append([str(i), c.op, k, str(_jsonable(grid)), str(_jsonable(block)), f"{threads:,}"])
        if not c.launches:
            cells.append([str(i), c.op, "(library GEMM, no gpunn kernel)", "-", "-", "-"])
    return text_table(("op #", "op", "kernel", "grid", "block", "threads"), cells, right=("op #", "threads"))


def _kernel_counts(calls) -> str:
    counts = Counter(k for c in calls for k, _, _ in c.launches)
    return "launches per step: " + ", ".join(f"{k} {n}" for k, n in counts.items()) + f" ({sum(counts.values())} in all)"


CSV_COLUMNS = ("op", "variant", "shapes", "calls", "launches", "seconds", "flops", "bytes", "intensity", "gflops",
               "gbs", "bound", "percent_of_peak", "share")


def profile_csv(prof: StepProfile, sort="step") -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(CSV_COLUMNS)
    for r in prof.rows(sort):
        w.writerow(["" if r[c] is None else (" ".join(map(format_shape, r[c])) if c == "shapes" else r[c])
                    for c in CSV_COLUMNS])
    return out.getvalue()


def chrome_trace(prof: StepProfile) -> dict:
    """The timed steps as Chrome trace events (Perfetto, chrome://tracing): one track of steps,
    one of ops; times in microseconds."""
    pid = 1
    events = [
        {"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
         "args": {"name": f"gpunn {prof.backend}: {prof.device}" + ("" if prof.meaningful else " (times not meaningful)")}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": 1, "args": {"name": "train step"}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": 2, "args": {"name": "ops"}},
    ]
    for n, calls in enumerate(prof.steps, 1):
        t0 = min(c.sample.start for c in calls)
        t1 = max(c.sample.start + c.sample.seconds for c in calls)
        events.append({"name": f"step {n}", "cat": "step", "ph": "X", "pid": pid, "tid": 1,
                       "ts": t0 * 1e6, "dur": (t1 - t0) * 1e6, "args": {"ops": len(calls)}})
        for c in calls:
            events.append({"name": c.op, "cat": "op", "ph": "X", "pid": pid, "tid": 2,
                           "ts": c.sample.start * 1e6, "dur": c.sample.seconds * 1e6,
                           "args": {"variant": c.variant, "shapes": [format_shape(s) for s in c.shapes],
                                    "flops": c.cost.flops, "bytes": c.cost.bytes,
                                    "kernels": [f"{k} grid={_jsonable(g)} block={_jsonable(b)}"
                                                for k, g, b in c.launches]}})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"model": prof.model, "batch": prof.batch, "timing": prof.timing,
                          "times_meaningful": prof.meaningful}}


def _write_text(path, text):
    from gpunn.output import write_text

    write_text(path, text)


# ---------------------------------------------------------------------------- gpunn kernels


def kernel_rows(arch: str = "sm_90", block: int | None = None) -> list[dict]:
    """One row per kernel: ptxas's resources on ``arch`` and the theoretical occupancy at the
    block size the backend launches it with (or ``block``)."""
    from gpunn.occupancy import normalize_arch, occupancy

    arch = normalize_arch(arch)
    try:
        from gpunn import ptx

        records = ptx.kernel_report([arch])
    except ImportError as exc:
        raise GpunnError(f'gpunn kernels needs numba and numba-cuda ({exc.name or exc}); '
                         'install them with: pip install "gpunn[sim]"') from None
    except RuntimeError as exc:  # ptxas missing or failing
        raise GpunnError(str(exc).strip().splitlines()[-1]) from None
    rows = []
    for r in records:
        threads = int(block or r["block"])
        occ = occupancy(arch, threads, r["registers"], r["shared_bytes"])
        rows.append({"kernel": r["kernel"], "op": r["op"], "module": r["module"], "signature": r["signature"],
                     "arch": arch, "block": threads, "registers": r["registers"],
                     "shared_bytes": r["shared_bytes"], "spill_store_bytes": r["spill_store_bytes"],
                     "spill_load_bytes": r["spill_load_bytes"], "stack_frame_bytes": r["stack_frame_bytes"],
                     "f64_instructions": len(r["f64_lines"]), "blocks_per_sm": occ.blocks_per_sm,
                     "warps_per_sm": occ.warps_per_sm, "max_warps_per_sm": occ.max_warps_per_sm,
                     "occupancy_percent": occ.percent, "limited_by": list(occ.limited_by)})
    return rows


def format_kernels(rows) -> str:
    headers = ("kernel", "op", "arch", "block", "regs", "smem B", "spill st/ld B", "stack B", "blocks/SM",
               "warps/SM", "occupancy", "limited by")
    cells = [[r["kernel"], r["op"], r["arch"], str(r["block"]), str(r["registers"]), str(r["shared_bytes"]),
              f"{r['spill_store_bytes']}/{r['spill_load_bytes']}", str(r["stack_frame_bytes"]),
              str(r["blocks_per_sm"]), f"{r['warps_per_sm']}/{r['max_warps_per_sm']}",
              f"{r['occupancy_percent']:.3g}%", ", ".join(r["limited_by"])] for r in rows]
    note = ("block: the most threads the backend launches the kernel with; the row-wise kernels (softmax, "
            "softmax_cross_entropy, mse, count_correct) use the smallest power of two >= the row width, at least 32 "
            "(32 for 10 classes): --block N shows another size, and `gpunn profile` in the simulator every launch.")
    return text_table(headers, cells, right=headers[3:10]) + "\n" + note


# ---------------------------------------------------------------------------- command line


def _peak_options(p):
    from gpunn.cli import positive_float

    p.add_argument("--peak-gflops", type=positive_float, metavar="X", help="peak GFLOP/s of the roofline (default: measured or looked up)")
    p.add_argument("--peak-gbs", type=positive_float, metavar="X", help="peak memory bandwidth in GB/s (default: measured or looked up)")
    p.add_argument("--recalibrate", action="store_true", help="CPU: measure the peaks again instead of using the cached ones")


def cmd_profile(args):
    from gpunn.output import check_writable
    from gpunn.cli import make_backend, train_config

    check_writable(args.json, args.csv, args.trace)
    cfg = train_config(args)
    backend = make_backend(args)
    peaks = peaks_for(backend, args.peak_gflops, args.peak_gbs, args.recalibrate)
    prof = profile_step(cfg, backend, reps=args.reps, warmup=args.warmup, peaks=peaks)
    print(format_profile(prof, args.sort))
    if args.json:
        from gpunn.output import write_json

        write_json(args.json, prof.as_dict(args.sort))
    if args.csv:
        _write_text(args.csv, profile_csv(prof, args.sort))
    if args.trace:
        _write_text(args.trace, json.dumps(chrome_trace(prof)) + "\n")
    return 0


def cmd_kernels(args):
    from gpunn.output import check_writable, write_json
    from gpunn.occupancy import ARCHS, normalize_arch

    check_writable(args.json)
    archs = [normalize_arch(a) for a in args.arch.split(",") if a.strip()]
    if not archs:
        raise GpunnError(f"--arch names no architecture: {args.arch!r}")
    rows = [row for arch in archs for row in kernel_rows(arch, args.block)]
    print(format_kernels(rows))
    if args.json:
        write_json(args.json, {"archs": {a: ARCHS[a]._asdict() for a in archs}, "kernels": rows})
    return 0


def register_cli(sub):
    from gpunn.cli import _number, add_backend_options, add_model_options, nonneg_int, positive_int
    from gpunn.train import TrainConfig

    block_size = _number(int, lambda v: 1 <= v <= 1024, "a block size of 1 to 1024 threads (CUDA's limit)")

    p = sub.add_parser("profile", help="time one training step op by op, against the device's roofline",
                       description="Profile one training step of the model (same options as gpunn train) on a "
                                   "random batch of MNIST's shape: each op's time (median over steps), FLOPs, bytes, "
                                   "GFLOP/s, GB/s, % of the device's roofline and share of the step.")
    add_model_options(p, TrainConfig())
    add_backend_options(p)
    p.add_argument("--reps", type=positive_int, default=20, help="timed steps; each op's time is the median (default: 20)")
    p.add_argument("--warmup", type=nonneg_int, default=3, metavar="N", help="untimed steps first (default: 3)")
    p.add_argument("--sort", choices=("step", "time"), default="step", help="order of the rows: as in the step, or slowest first")
    _peak_options(p)
    p.add_argument("--json", metavar="PATH", help="write the profile as JSON")
    p.add_argument("--csv", metavar="PATH", help="write the table as CSV")
    p.add_argument("--trace", metavar="PATH", help="write the steps in Chrome's trace-event format (open in Perfetto or chrome://tracing)")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("kernels", help="registers, shared memory, spills and occupancy of every kernel (no GPU needed)",
                       description="Compile every kernel to PTX, ask ptxas for its resources on an architecture, "
                                   "and compute the theoretical occupancy at the backend's block size.")
    p.add_argument("--arch", default="sm_90", help="architecture(s), comma-separated: sm_70, sm_75, sm_80, sm_86, sm_89, sm_90 (default: sm_90)")
    p.add_argument("--block", type=block_size, metavar="N",
                   help="threads per block for the occupancy, at most 1024 (default: the backend's)")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON")
    p.set_defaults(func=cmd_kernels)
