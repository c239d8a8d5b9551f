"""``gpunn bench KERNEL``: one kernel across sizes, every variant side by side.

Usage::

    gpunn bench softmax                          # 4096 rows x 10..4096 columns
    gpunn bench gemm --sizes 128x512x784,1024,2048 --plot gemm.png --json gemm.json
    gpunn bench bias-act --act tanh --rows 1024 --sizes 128,512
    NUMBA_ENABLE_CUDASIM=1 gpunn bench softmax-cross-entropy   # validates our kernels in the simulator
    gpunn bench softmax --version mine.py:mine   # yours beside them (see gpunn.lab)

Variants: ``numpy`` (the reference backend, on the CPU), each of gpunn's kernel versions of
the op (its record's ``versions``; ``ours`` for an op with one kernel) through the cuda
backend, on a GPU or validated only in the simulator, the built-in where CuPy has one
(``cuBLAS`` for GEMM, ``cupyx.scipy.special.softmax``, and CuPy array expressions, unfused,
for the rest) and a user's versions (``--version FILE.py:NAME``).

As llm.c does, every variant is first checked against a float64 run of the NumPy
reference at every size, *before* anything is timed: a mismatch beyond
``atol + rtol * |ref|`` prints the first few wrong elements and stops with exit
status 1.  Then each variant is timed (median of ``--reps`` calls after warm-up;
wall clock on the CPU, CUDA events behind a spin kernel on a GPU, as in ``gpunn
profile``) and reported as GB/s (memory-bound kernels) or GFLOP/s (GEMM), using
the op set's cost formulas, next to the device's peak.  ``--plot`` draws it
(matplotlib: ``pip install "gpunn[plot]"``) with the peak as a horizontal line; a reading
above the peak is marked as a calibration problem, not drawn as a result.
"""
from __future__ import annotations

import io
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gpunn.backend import check_backend_name, get_backend, ops
from gpunn.backend.numpy_backend import NumpyBackend
from gpunn.kernels.activations import ACTIVATIONS as ACTIVATION_RECORDS
from gpunn.kernels.activations import numpy_form
from gpunn.env import simulator_on
from gpunn.errors import GpunnError
from gpunn.instrument import CudaEvents, WallClock
from gpunn.options import add_peak_options, add_threads_option, nonneg_float, nonneg_int, positive_int
from gpunn.output import check_outputs, write_bytes, write_json
from gpunn.report import text_table
from gpunn.roofline import peaks_for

ROW_SIZES = ((4096, 10), (4096, 128), (4096, 512), (4096, 1024), (4096, 4096))
SIM_ROW_SIZES = ((5, 10), (3, 70))


class ValidationFailed(GpunnError):
    """A variant's output differs from the reference beyond the tolerance."""


# ---------------------------------------------------------------------------- the kernels


@dataclass(frozen=True)
class BenchKernel:
    """One benchmark of one op: how to build inputs of a size and the op's arguments from them.
    Its name (the op's command-line word) and its cost come from the op's record."""

    op: str  # the op's name, a key of gpunn.backend.ops.OPS
    metric: str  # "GB/s" or "GFLOP/s"
    dims: str  # the size's form, for help and errors: "ROWSxCOLS", "P", "MxNxK"
    sizes: tuple  # defaults
    sim_sizes: tuple  # defaults in the CUDA simulator (which runs kernels as Python threads)
    make: Callable  # (size, rng, options) -> {argument name: float32/int32 host array}
    outputs: tuple  # names of the arrays the op writes
    builtin_name: str | None = None
    builtin: Callable | None = None  # (cupy, arrays, options) -> None, writing the outputs
    rtol: float = 1e-4
    atol: Callable = lambda size: 1e-5  # noqa: E731
    scalars: Callable = lambda options: {}  # noqa: E731  (options) -> {argument name: value}; others default
    run: Callable | None = None  # (backend, arrays, options) -> None; default: backend.<op>(*args)

    def __post_init__(self):
        if self.run is None:
            checked = self.op
            object.__setattr__(self, "run", lambda be, a, o: getattr(be, checked)(*self.args(a, o)))

    def args(self, arrays, options) -> tuple:
        """The op's arguments in its record's order: the arrays and scalars by their names in the
        record, the rest at the record's defaults."""
        return tuple(ops.OPS[self.op].bind(**self.scalars(options), **arrays).values())

    @property
    def name(self) -> str:
        return ops.OPS[self.op].word

    def cost(self, arrays, options) -> ops.Cost:
        """FLOPs and bytes of one call on these arrays (the op record's formula)."""
        return ops.OPS[self.op].cost_of(*self.args(arrays, options))


def _row_size(text, rows):
    parts = text.lower().split("x")
    if len(parts) == 1:
        return rows, _positive(parts[0], text)
    if len(parts) == 2:
        return tuple(_positive(p, text) for p in parts)
    raise ValueError(f"size {text!r}: expected ROWSxCOLS or COLS")


def _positive(part, text):
    try:
        value = float(part) if any(c in part for c in "e.") else int(part)
    except ValueError:
        raise ValueError(f"size {text!r}: {part!r} is not a number") from None
    if value != int(value) or value < 1:
        raise ValueError(f"size {text!r}: {part!r} must be a positive integer")
    return int(value)


def parse_size(kernel: BenchKernel, text: str, rows: int = 4096) -> tuple:
    """``"4096x10"`` (or ``"10"``, with ``rows`` rows) for the row kernels; ``"1e6"`` for sgd-update;
    ``"128x512x784"`` (M x N x K) or ``"1024"`` (square) for gemm."""
    text = text.strip()
    if kernel.dims == "P":
        return (_positive(text, text),)
    if kernel.dims == "MxNxK":
        parts = text.lower().split("x")
        if len(parts) == 1:
            return (_positive(parts[0], text),) * 3
        if len(parts) == 3:
            return tuple(_positive(p, text) for p in parts)
        raise ValueError(f"size {text!r}: expected MxNxK or N")
    return _row_size(text, rows)


def size_label(size) -> str:
    return "x".join(map(str, size))


def _logits(size, rng, _):
    n, c = size
    return {"x": (3 * rng.standard_normal((n, c))).astype(np.float32), "out": np.zeros((n, c), np.float32)}


def _xent(size, rng, _):
    n, c = size
    return {"logits": (3 * rng.standard_normal((n, c))).astype(np.float32),
            "labels": rng.integers(0, c, n).astype(np.int32),
            "grad": np.zeros((n, c), np.float32), "loss": np.zeros(1, np.float32), "correct": np.zeros(1, np.int32)}


def _bias_act(size, rng, _):
    n, d = size
    return {"x": rng.standard_normal((n, d)).astype(np.float32), "bias": rng.standard_normal(d).astype(np.float32),
            "out": np.zeros((n, d), np.float32)}


def _sgd(size, rng, _):
    (p,) = size
    return {"param": rng.standard_normal(p).astype(np.float32), "grad": rng.standard_normal(p).astype(np.float32),
            "velocity": rng.standard_normal(p).astype(np.float32)}


def _gemm(size, rng, _):
    m, n, k = size
    return {"a": rng.uniform(-1, 1, (m, k)).astype(np.float32), "b": rng.uniform(-1, 1, (k, n)).astype(np.float32),
            "out": np.zeros((m, n), np.float32)}


def _cupy_softmax(cp, a, _):
    try:
        from cupyx.scipy.special import softmax  # CuPy 12 on
    except ImportError:
        x = a["x"]
        e = cp.exp(x - x.max(axis=1, keepdims=True))
        cp.divide(e, e.sum(axis=1, keepdims=True), out=a["out"])
    else:
        a["out"][...] = softmax(a["x"], axis=1)


def _cupy_xent(cp, a, _):
    x, labels, grad = a["logits"], a["labels"], a["grad"]
    n = x.shape[0]
    rows = cp.arange(n)
    z = x - x.max(axis=1, keepdims=True)
    e = cp.exp(z)
    s = e.sum(axis=1, keepdims=True)
    a["loss"][0] = (cp.log(s[:, 0]) - z[rows, labels]).mean()
    a["correct"][0] += (x.argmax(axis=1) == labels).sum()
    cp.divide(e, s, out=grad)
    grad[rows, labels] -= 1
    grad *= np.float32(1.0 / n)


def _cupy_bias_act(cp, a, opt):
    """The built-in: CuPy's ufuncs running the activation record's own formula on whole arrays."""
    out = a["out"]
    cp.add(a["x"], a["bias"], out=out)
    cp.copyto(out, numpy_form(ACTIVATION_RECORDS[opt["act"]].forward, cp)(out))


def _cupy_sgd(cp, a, opt):
    m, lr = np.float32(opt["momentum"]), np.float32(opt["lr"])
    v, g = a["velocity"], a["grad"]
    if not m:  # plain SGD: the velocity is not used, and stays as it was
        a["param"] -= lr * g
        return
    v *= m
    v += g
    a["param"] -= lr * (g + m * v)


def _cupy_gemm(cp, a, _):
    cp.matmul(a["a"], a["b"], out=a["out"])


#: The benchmarks, by command-line name (each op's word: ``softmax-cross-entropy``, ``sgd-update``).
KERNELS = {k.name: k for k in (
    BenchKernel("softmax", "GB/s", "ROWSxCOLS", ROW_SIZES, SIM_ROW_SIZES, _logits, ("out",), "cupy", _cupy_softmax),
    BenchKernel("softmax_cross_entropy", "GB/s", "ROWSxCOLS", ROW_SIZES, SIM_ROW_SIZES, _xent,
                ("grad", "loss", "correct"), "cupy (unfused)", _cupy_xent),
    BenchKernel("bias_act", "GB/s", "ROWSxCOLS", ROW_SIZES, SIM_ROW_SIZES, _bias_act, ("out",), "cupy",
                _cupy_bias_act, scalars=lambda o: {"act": o["act"]}),
    BenchKernel("sgd_update", "GB/s", "P", ((7840,), (100_000,), (401_408,), (1_000_000,), (4_000_000,),
                                           (16_000_000,)), ((300,), (1000,)), _sgd,
                ("param", "velocity"), "cupy (unfused)", _cupy_sgd,
                scalars=lambda o: {"lr": o["lr"], "momentum": o["momentum"], "nesterov": o["momentum"] > 0}),
    BenchKernel("gemm", "GFLOP/s", "MxNxK", ((128, 512, 784), (256, 256, 256), (512, 512, 512),
                                            (1024, 1024, 1024), (2048, 2048, 2048)),
                ((5, 7, 23), (33, 17, 40)), _gemm, ("out",), "cuBLAS", _cupy_gemm, atol=lambda size: 2e-6 * size[2]),
)}


# ---------------------------------------------------------------------------- variants


@dataclass
class Variant:
    name: str  # "numpy", a gpunn version's name ("ours" for an op with one kernel), the built-in's, a user's
    device: str
    run: Callable  # (arrays on this variant's device) -> None
    to_device: Callable
    to_host: Callable
    timer_factory: Callable | None  # None: validated but not timed (the simulator)
    sync: Callable = lambda: None  # noqa: E731
    origin: str | None = None  # a user's version: "FILE.py:NAME", named in its errors
    kind: str = "gpunn"  # "reference", "gpunn", "built-in" or "user"


def _gpunn_versions(kernel, options, make_backend, to_device, to_host, timer):
    """One variant per kernel version of the op (its record's ``versions``), or "ours" for one kernel."""
    versions = ops.OPS[kernel.op].versions or (None,)
    out = []
    for version in versions:
        be = make_backend({kernel.op: version} if version else {})
        out.append(Variant(version or "ours", be.describe(), lambda a, be=be: kernel.run(be, a, options),
                           to_device, to_host, timer, be.synchronize))
    return out


def _user_variant(kernel, user, options, device, to_device, to_host, timer, sync):
    call = lambda a: user.fn(*kernel.args(a, options))  # noqa: E731 - the op's arguments, in order
    return Variant(user.name, device, call, to_device, to_host, timer, sync, user.origin, "user")


def variants_for(kernel: BenchKernel, options: dict, wanted=None, user_versions=()) -> tuple[list[Variant], str]:
    """The variants that can run here (the reference, gpunn's versions, the built-in, the user's),
    and a line saying why any are missing."""
    out = []
    np_be = NumpyBackend()
    out.append(Variant("numpy", np_be.describe(), lambda a: kernel.run(np_be, a, options), lambda x: x.copy(),
                       np.asarray, WallClock, kind="reference"))
    note = ""
    gpu = None
    try:
        from gpunn.backend.cuda_backend import CudaBackend, cuda_unavailable_reason
    except ImportError as exc:
        note = f"only numpy: the GPU packages are not installed ({exc.name or exc})"
    else:
        if simulator_on():
            gpu = (lambda x: x.copy(), np.asarray, None)
            out += _gpunn_versions(kernel, options, lambda v: CudaBackend(gemm="numba", versions=v), *gpu)
            note = "gpunn's versions run in the CUDA simulator: validated against the reference, but not timed"
        elif cuda_unavailable_reason() is None:
            import cupy

            gpu = (cupy.asarray, cupy.asnumpy, CudaEvents)
            out += _gpunn_versions(kernel, options, lambda v: CudaBackend(versions=v), *gpu)
            if kernel.builtin is not None:
                be = CudaBackend()
                out.append(Variant(kernel.builtin_name, be.describe(), lambda a: kernel.builtin(cupy, a, options),
                                   *gpu, be.synchronize, kind="built-in"))
        else:
            note = f"only numpy: {cuda_unavailable_reason()}"
    if user_versions:
        if gpu is None:
            from gpunn.versions import VersionError

            raise VersionError(f"{user_versions[0].origin}: a version runs on the cuda backend (a GPU, or the CUDA "
                               f"simulator: NUMBA_ENABLE_CUDASIM=1), and there is none here: {note}")
        default = ops.OPS[kernel.op].version or "ours"
        host = next(v for v in out if v.name == default)  # a user's version gets the default backend's arrays
        for user in user_versions:
            if user.op != kernel.op:
                raise GpunnError(f"{user.origin} is a version of {user.op}, not of {kernel.op}")
            if user.name in {v.name for v in out}:
                raise GpunnError(f"{user.origin}: {user.name!r} is already a variant's name here; rename the function")
            out.append(_user_variant(kernel, user, options, host.device.split(";")[0] + ")", *gpu, host.sync))
    if wanted:
        known = [v.name for v in out]
        missing = [w for w in wanted if w not in known]
        if missing:
            raise GpunnError(f"variant {missing[0]!r} is not available here (available: {', '.join(known)})"
                             + (f"; {note}" if note else ""))
        out = [v for v in out if v.name in wanted]
    return out, note


def _run_user_code(variant, what, call):
    """``call()``; an exception raised by a user's version becomes one line naming it."""
    if variant.origin is None:
        return call()
    try:
        return call()
    except Exception as exc:  # the user's code: anything
        from gpunn.versions import VersionError, one_line

        raise VersionError(f"{variant.origin} raised while {what}: {one_line(exc)}") from None


# ---------------------------------------------------------------------------- validate, then time


def reference(kernel: BenchKernel, arrays: dict, options: dict) -> dict:
    """The outputs of the NumPy backend in float64 on the same inputs."""
    be64 = NumpyBackend(np.float64)
    a64 = {k: v.astype(np.float64) if v.dtype == np.float32 else v.copy() for k, v in arrays.items()}
    kernel.run(be64, a64, options)
    return {k: a64[k] for k in kernel.outputs}


def mismatches(got, ref, rtol, atol, limit=5) -> tuple[int, list[str]]:
    """(number of elements outside ``atol + rtol*|ref|``, descriptions of the first ``limit``)."""
    tol = atol + rtol * np.abs(ref)
    bad = ~(np.abs(got.astype(np.float64) - ref) <= tol)  # NaN counts as bad
    where = np.argwhere(bad)[:limit]
    lines = [f"[{', '.join(map(str, idx))}]: got {float(got[tuple(idx)]):.9g}, expected {float(ref[tuple(idx)]):.9g} "
             f"(tolerance {float(tol[tuple(idx)]):.3g})" for idx in where]
    return int(bad.sum()), lines


def validate(kernel, variant, size, host, ref, options):
    arrays = {k: variant.to_device(v) for k, v in host.items()}
    _run_user_code(variant, f"validating {kernel.name} {size_label(size)}", lambda: (variant.run(arrays), variant.sync()))
    for name in kernel.outputs:
        got = variant.to_host(arrays[name])
        count, lines = mismatches(got, ref[name], kernel.rtol, kernel.atol(size))
        if count:
            raise ValidationFailed(
                f"{kernel.name} {size_label(size)}: {variant.origin or variant.name} differs from the float64 reference in "
                f"{count} of {got.size} elements of {name} (atol {kernel.atol(size):.3g} + rtol {kernel.rtol:g} * |ref|); "
                "the first:\n" + "\n".join("  " + line for line in lines))


def time_variant(variant, host, reps, warmup, budget=1.0) -> float:
    return _run_user_code(variant, "being timed", lambda: _time(variant, host, reps, warmup, budget))


def _time(variant, host, reps, warmup, budget) -> float:
    """Median seconds per call over ``reps`` calls (fewer, but at least 3, past ``budget`` seconds)."""
    arrays = {k: variant.to_device(v) for k, v in host.items()}
    call = lambda: variant.run(arrays)  # noqa: E731
    for _ in range(warmup):
        call()
    variant.sync()
    timer = variant.timer_factory()
    samples, stop = [], time.perf_counter() + budget
    for i in range(reps):
        samples.append(timer.measure(call))
        if i >= 2 and time.perf_counter() > stop:
            break
    timer.resolve()
    return statistics.median(s.seconds for s in samples)


@dataclass
class BenchResult:
    kernel: str
    metric: str
    sizes: list
    variants: list  # names
    seconds: dict  # variant -> [seconds or None per size]
    values: dict  # variant -> [metric or None per size]
    devices: dict
    peak: float | None
    peak_source: str | None
    note: str
    kinds: dict = None  # variant -> "reference", "gpunn", "built-in", "user"
    origins: dict = None  # a user's variant -> "FILE.py:NAME"
    default: str | None = None  # the gpunn version the backend uses
    dtype: str = "float32"
    cpu_threads: int | None = None  # the numpy variant's BLAS/OpenMP threads

    def above_peak(self, variant) -> list:
        """The indices of the sizes where the variant's reading exceeds the peak: a calibration
        problem (a peak too low, or a timer that missed work), not a result."""
        if not self.peak:
            return []
        return [i for i, y in enumerate(self.values[variant]) if y is not None and y > self.peak]

    def as_dict(self):
        return {"kernel": self.kernel, "metric": self.metric, "dtype": self.dtype, "cpu_threads": self.cpu_threads,
                "sizes": [list(s) for s in self.sizes], "default_version": self.default,
                "variants": {v: {"device": self.devices[v], "kind": (self.kinds or {}).get(v),
                                 "origin": (self.origins or {}).get(v), "seconds": self.seconds[v],
                                 self.metric: self.values[v],
                                 "above_peak": [size_label(self.sizes[i]) for i in self.above_peak(v)]}
                             for v in self.variants},
                "peak": self.peak, "peak_source": self.peak_source, "validated": True, "note": self.note}


def bench(kernel: BenchKernel, sizes, options, reps=20, warmup=3, wanted=None, peaks=None, seed=0,
          user_versions=()) -> BenchResult:
    """Validate every variant at every size, then time them; see the module docstring."""
    variants, note = variants_for(kernel, options, wanted, user_versions)
    rng = np.random.default_rng(seed)
    inputs = []
    for size in sizes:
        host = kernel.make(size, rng, options)
        ref = reference(kernel, host, options)
        for v in variants:
            validate(kernel, v, size, host, ref, options)
        inputs.append(host)
    seconds = {v.name: [] for v in variants}
    values = {v.name: [] for v in variants}
    for size, host in zip(sizes, inputs):
        cost = kernel.cost(host, options)
        work = cost.flops if kernel.metric == "GFLOP/s" else cost.bytes
        for v in variants:
            s = time_variant(v, host, reps, warmup) if v.timer_factory else None
            seconds[v.name].append(s)
            values[v.name].append(work / s / 1e9 if s else None)
    peak = source = None
    if peaks is not None:
        peak = peaks.gflops if kernel.metric == "GFLOP/s" else peaks.gbs
        source = f"{peaks.device}: {peaks.source}"
    return BenchResult(kernel.name, kernel.metric, list(sizes), [v.name for v in variants], seconds, values,
                       {v.name: v.device for v in variants}, peak, source, note,
                       {v.name: v.kind for v in variants}, {v.name: v.origin for v in variants if v.origin},
                       ops.OPS[kernel.op].version, cpu_threads=_blas_threads())


def _blas_threads() -> int | None:
    """The threads NumPy's BLAS runs with now (threadpoolctl), for the title and the JSON."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [i.get("num_threads") for i in threadpool_info() if i.get("user_api") == "blas"]
    return max(counts) if counts else None


# ---------------------------------------------------------------------------- output


def format_bench(res: BenchResult) -> str:
    lines = [f"gpunn bench {res.kernel}: {res.metric} (higher is better), {res.dtype}"
             + (f"; peak {res.peak:,.1f} {res.metric} ({res.peak_source})" if res.peak else "")]
    lines.append("every variant matched the float64 NumPy reference at every size before it was timed")
    if res.note:
        lines.append(res.note)
    marked = False

    def cell(v, i):
        nonlocal marked
        y = res.values[v][i]
        if y is None:
            return "valid, not timed"
        if i in res.above_peak(v):
            marked = True
            return f"{y:,.2f} !"
        return f"{y:,.2f}"

    cells = [[size_label(s)] + [cell(v, i) for v in res.variants] for i, s in enumerate(res.sizes)]
    lines.append(text_table(("size", *res.variants), cells, right=tuple(res.variants)))
    if marked:
        lines.append("! above the peak: a calibration problem (a peak set too low, or a timer that missed work), "
                     "not a result; --peak-gbs/--peak-gflops or --recalibrate")
    for v in res.variants:
        what = {"reference": "the reference", "built-in": "the built-in", "user": f"yours, {(res.origins or {}).get(v)}",
                "gpunn": "gpunn's version" + (" (the backend's)" if v == res.default else "")}.get((res.kinds or {}).get(v))
        lines.append(f"{v}: {what + '; ' if what else ''}{res.devices[v]}")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot, drawing to files only; GpunnError saying how to install it if missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GpunnError('--plot needs matplotlib: pip install "gpunn[plot]"') from None
    return plt


def plot_title(res: BenchResult) -> str:
    """The device (the fastest variant's, else the reference's), the dtype and the CPU threads."""
    timed = [v for v in res.variants if (res.kinds or {}).get(v) != "reference"] or res.variants
    device = res.devices[timed[0]]
    threads = f"numpy on {res.cpu_threads} CPU thread{'s' if res.cpu_threads != 1 else ''}" if res.cpu_threads else ""
    return f"gpunn bench {res.kernel}: {device}\n{res.dtype}" + (f", {threads}" if threads else "")


def plot_figure(res: BenchResult):
    """The results as a matplotlib figure: one line per variant (every gpunn version, the built-in,
    the user's) over the sizes, the peak as a horizontal line; a reading above the peak is not drawn
    as a result but marked (a calibration problem).  Variants that were not timed are left out."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    x = np.arange(len(res.sizes))
    over_x = []
    for v in res.variants:
        above = set(res.above_peak(v))
        ys = [np.nan if y is None or i in above else y for i, y in enumerate(res.values[v])]
        over_x += [x[i] for i in above]
        if not all(np.isnan(ys)):
            label = v + (" (gpunn's default)" if v == res.default else "")
            ax.plot(x, ys, marker="o", label=label, linestyle="--" if (res.kinds or {}).get(v) == "user" else "-")
    if res.peak:
        ax.axhline(res.peak, color="k", linestyle=":", linewidth=1.2, label=f"peak {res.peak:,.0f} {res.metric}")
        if over_x:
            ax.plot(over_x, [res.peak] * len(over_x), linestyle="none", marker="x", color="red", markersize=10,
                    label="above the peak: calibration problem")
    ax.set_xticks(x, [size_label(s) for s in res.sizes], rotation=30, ha="right")
    ax.set_xlabel("size")
    ax.set_ylabel(res.metric)
    ax.set_ylim(bottom=0)
    ax.set_title(plot_title(res), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_png(res: BenchResult) -> bytes:
    """:func:`plot_figure` as PNG bytes."""
    plt = pyplot()
    fig = plot_figure(res)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------- command line


def cmd_bench(args):
    check_outputs({"--json": args.json, "--plot": args.plot})  # every output's requirements before the sweep, not after it
    if args.plot:
        pyplot()
    check_backend_name(None)  # a bad $GPUNN_BACKEND is an error here, as in gpunn train
    kernel = KERNELS[args.kernel]
    sim = simulator_on()
    if args.sizes:
        sizes = [parse_size(kernel, t, args.rows) for t in args.sizes.split(",") if t.strip()]
        if not sizes:
            raise GpunnError(f"--sizes names no size: {args.sizes!r}")
    else:
        sizes = list(kernel.sim_sizes if sim else kernel.sizes)
        if kernel.dims == "ROWSxCOLS" and args.rows and not sim:
            sizes = [(args.rows, c) for _, c in sizes]
    options = {"act": args.act, "momentum": args.momentum, "lr": 0.1}
    wanted = [w.strip() for w in args.variants.split(",")] if args.variants else None
    peaks = None
    if not sim:
        peaks = peaks_for(_peak_backend(), args.peak_gflops, args.peak_gbs, args.recalibrate)
    from gpunn.versions import load_version

    user = [load_version(text, kernel.op) for text in args.version or ()]
    try:
        res = bench(kernel, sizes, options, args.reps, args.warmup, wanted, peaks, user_versions=user)
    except ValidationFailed as exc:
        print(f"gpunn bench: validation failed, nothing timed: {exc}", file=sys.stderr)
        return 1
    print(format_bench(res))
    if args.json:
        write_json(args.json, res.as_dict())
    if args.plot:
        write_bytes(args.plot, plot_png(res))
    return 0


def _peak_backend():
    """The device the fastest variant runs on: the GPU when there is one, else the CPU."""
    return get_backend("auto", quiet=True)


def register_cli(sub):
    p = sub.add_parser("bench", help="one kernel across sizes: every variant validated, then timed (GB/s, GFLOP/s)",
                       description="Sweep one kernel across sizes: every variant (numpy, ours, the CuPy/cuBLAS "
                                   "built-in) is checked against a float64 NumPy reference first, then timed, and "
                                   "reported in GB/s or GFLOP/s next to the device's peak.")
    p.add_argument("kernel", choices=sorted(KERNELS), metavar="KERNEL", help=f"one of {', '.join(KERNELS)}")
    p.add_argument("--sizes", metavar="LIST", help="comma-separated sizes: ROWSxCOLS (or COLS) for softmax, "
                   "softmax-cross-entropy and bias-act; P for sgd-update; MxNxK (or N) for gemm (default: a sweep)")
    p.add_argument("--rows", type=positive_int, default=4096, help="rows of the row-wise kernels' sizes (default: 4096)")
    p.add_argument("--variants", metavar="LIST", help="only these variants (numpy, gpunn's versions or ours, "
                   "the built-in's name, your versions' names)")
    p.add_argument("--version", action="append", metavar="FILE.py:NAME",
                   help="your version of the op: the function NAME in FILE.py, taking the op's arguments in order; "
                        "validated first like every variant (repeatable; see gpunn.lab)")
    p.add_argument("--act", choices=ops.ACTIVATIONS, default="relu", help="bias-act: the activation (default: relu)")
    p.add_argument("--momentum", type=nonneg_float, default=0.9, help="sgd-update: momentum, Nesterov when > 0 (default: 0.9)")
    p.add_argument("--reps", type=positive_int, default=20, help="timed calls per variant and size; the median is reported (default: 20)")
    p.add_argument("--warmup", type=nonneg_int, default=3, help="untimed calls first (default: 3)")
    add_peak_options(p)
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG plot (needs matplotlib)")
    add_threads_option(p)
    p.set_defaults(func=cmd_bench)
