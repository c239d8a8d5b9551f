"""Instrumentation: what a profiler hooks into a training step, below the trainer.

* NVTX ranges (:func:`annotate_nvtx`, :func:`nvtx_ranges`) around each layer's forward
  and backward and the optimizer's step, so Nsight Systems shows them; the trainer
  puts them on, and they cost nothing off a real GPU or without the ``nvtx`` package;
* timers that are honest for a device (:func:`make_timer`): the wall clock on the CPU,
  CUDA events behind a spin kernel on a GPU, nothing meaningful in the simulator;
* :class:`OpRecorder`, which records every op a backend runs (:class:`OpCall`: its
  shapes, its cost by the op's record in :mod:`gpunn.backend.ops`, its time and its kernel
  launches).

``gpunn profile`` (:mod:`gpunn.profile`) and ``gpunn bench`` (:mod:`gpunn.bench`) build on
these; nothing here imports the trainer or a command.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field

import numpy as np

from gpunn.backend import ops
from gpunn.backend.base import Unchecked
from gpunn.backend.ops import Cost

# ---------------------------------------------------------------------------- what a call costs


def call_cost(op, *args, **kwargs) -> tuple[Cost, str]:
    """``(Cost, variant)`` of one call ``backend.<op>(*args, **kwargs)``, from the op's record."""
    record = ops.OPS[op]
    return record.cost_of(*args, **kwargs), record.variant_of(*args, **kwargs)


def call_shapes(*args, **kwargs) -> tuple:
    """The shapes of a call's array arguments, leaving out one-element outputs (a loss, a count)."""
    return tuple(tuple(int(d) for d in a.shape) for a in (*args, *kwargs.values())
                 if hasattr(a, "shape") and getattr(a, "size", 0) > 1)


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
    Calls go to ``self.calls`` as :class:`OpCall`, timed by ``timer`` when one is given.
    An op called from inside another op is not recorded twice."""

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
        be.unchecked = Unchecked.wrapping(self._saved, self._wrap)
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
def cuda_profiler_range(backend):
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
