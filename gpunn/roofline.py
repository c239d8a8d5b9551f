"""Device peaks and the roofline bound that the profiler and the benchmarks report against.

An op of ``F`` FLOPs that moves ``B`` bytes cannot take less than
``max(F / peak_flops, B / peak_bandwidth)`` (the roofline: compute-bound when its
arithmetic intensity ``F/B`` exceeds ``peak_flops / peak_bandwidth``, memory-bound
below).  ``% of peak`` is that bound divided by the time measured, which is the
same as achieved GFLOP/s over ``min(peak_flops, intensity * peak_bandwidth)``.

Where the peaks come from:

* CPU: measured once by :func:`calibrate_cpu` (a float32 1024² GEMM through NumPy's
  BLAS, and a 64 MiB ``np.copyto`` for bandwidth; best of a few runs each, about
  half a second), then cached in ``peaks.json`` under the cache folder
  (``$GPUNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/gpunn``, else ``~/.cache/gpunn``),
  keyed by CPU model, thread count and NumPy version.  Small ops run from the CPU's
  caches, faster than the DRAM bandwidth measured here: their "% of peak" can pass 100.
* GPU: the vendor's FP32 (non-tensor-core) TFLOP/s and memory bandwidth for the
  GPUs of :data:`GPU_PEAKS`, matched on the device's name; otherwise computed from
  the device's properties (SMs × clock × FP32 lanes × 2, and memory clock × 2 ×
  bus width).
* ``--peak-gflops`` / ``--peak-gbs`` override either.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from gpunn.backend.ops import Cost
from gpunn.env import cache_dir
from gpunn.inputs import read_regular
from gpunn.output import write_cache_file


class Peaks(NamedTuple):
    gflops: float  # peak float32 GFLOP/s
    gbs: float  # peak memory bandwidth, GB/s (1e9 bytes)
    device: str
    source: str  # where the numbers come from, in words

    @property
    def ridge(self) -> float:
        """The intensity (FLOP/byte) where the roofline turns from memory- to compute-bound."""
        return self.gflops / self.gbs

    def as_dict(self):
        return {"gflops": self.gflops, "gbs": self.gbs, "device": self.device, "source": self.source,
                "ridge_flop_per_byte": self.ridge}


def roofline_seconds(cost: Cost, peaks: Peaks) -> float:
    """The least time ``cost`` can take on a device with ``peaks``."""
    return max(cost.flops / (peaks.gflops * 1e9), cost.bytes / (peaks.gbs * 1e9))


def bound(cost: Cost, peaks: Peaks) -> str:
    """``"compute"`` or ``"memory"``: which roof limits an op of this cost."""
    return "compute" if cost.flops / (peaks.gflops * 1e9) >= cost.bytes / (peaks.gbs * 1e9) else "memory"


def percent_of_peak(cost: Cost, seconds: float, peaks: Peaks) -> float:
    """Achieved performance as a percentage of the roofline bound that applies."""
    return percent_of_bound(roofline_seconds(cost, peaks), seconds)


def percent_of_bound(least_seconds: float, seconds: float) -> float:
    """The least time the roofline allows (one op's, or a sum of them) as a percentage of the
    time taken: 100 at the roofline."""
    return 100.0 * least_seconds / seconds if seconds > 0 else float("nan")


# ---------------------------------------------------------------------------- the CPU


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_threads() -> int:
    """CPUs this process may run on, capped by the usual BLAS/OpenMP thread variables."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(var, "")
        if value.isdigit() and int(value) > 0:
            n = min(n, int(value))
    return n


def cpu_key() -> str:
    return f"{cpu_model()} | {cpu_threads()} threads | numpy {np.__version__}"


def _best_seconds(fn, budget: float, min_runs: int = 3) -> float:
    fn()  # warm up (page faults, BLAS thread start)
    best, runs, stop = float("inf"), 0, time.perf_counter() + budget
    while runs < min_runs or time.perf_counter() < stop:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


def calibrate_cpu(budget: float = 0.4, gemm_size: int = 1024, copy_bytes: int = 64 << 20) -> tuple[float, float]:
    """Measure (GFLOP/s, GB/s): a float32 ``gemm_size``² GEMM, and a copy between two
    ``copy_bytes`` arrays (reads and writes count: 2 × copy_bytes per copy), best of runs
    within ``budget`` seconds in all."""
    rng = np.random.default_rng(0)
    n = gemm_size
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    gemm_s = _best_seconds(lambda: np.matmul(a, b, out=c), budget / 2)
    src = np.ones(copy_bytes // 4, np.float32)
    dst = np.empty_like(src)
    copy_s = _best_seconds(lambda: np.copyto(dst, src), budget / 2)
    return 2 * n**3 / gemm_s / 1e9, 2 * src.nbytes / copy_s / 1e9


PEAKS_LIMIT = 1 << 20  # the largest peaks.json read (an entry is about 100 bytes)


def _usable(entry) -> bool:
    """True when a peaks.json entry holds two finite positive rates and when they were measured."""
    def rate(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0

    return (isinstance(entry, dict) and rate(entry.get("gflops")) and rate(entry.get("gbs"))
            and isinstance(entry.get("measured"), str))


def _read_peaks(path: Path, key: str) -> tuple[dict, str | None]:
    """(the table in ``path``, why this machine's entry cannot be used; None when it can)."""
    try:
        table = json.loads(read_regular(path, PEAKS_LIMIT, follow_links=False))
    except FileNotFoundError:
        return {}, "absent"
    except OSError as exc:
        return {}, exc.strerror or str(exc)
    except (ValueError, RecursionError):
        return {}, "not valid JSON"
    if not isinstance(table, dict):
        return {}, "not a JSON object"
    if key not in table:
        return table, "absent"
    return table, None if _usable(table[key]) else f"the entry for {key!r} is not two positive rates and a date"


def cpu_peaks(recalibrate: bool = False, cache: Path | None = None) -> Peaks:
    """The CPU's peaks from the cache, calibrating (and caching) when absent or asked.

    ``peaks.json`` is untrusted input: a file that is not a regular file, not JSON, or whose
    entry is not two positive rates and a date is ignored (saying so in one line) and measured
    again."""
    path = (cache or cache_dir()) / "peaks.json"
    key = cpu_key()
    table, problem = _read_peaks(path, key)
    if problem not in (None, "absent"):
        print(f"gpunn: ignoring {path} ({problem}); measuring the CPU's peaks again", file=sys.stderr)
    if recalibrate or problem is not None:
        gflops, gbs = calibrate_cpu()
        table[key] = {"gflops": gflops, "gbs": gbs, "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_cache_file(path, (json.dumps(table, indent=2) + "\n").encode())
        except OSError:
            pass  # an unwritable cache costs a recalibration next time, nothing more
    entry = table[key]
    return Peaks(float(entry["gflops"]), float(entry["gbs"]), f"{cpu_model()}, {cpu_threads()} threads",
                 f"calibrated {entry['measured']} (float32 GEMM 1024², 64 MiB copy; cached in {path})")


# ---------------------------------------------------------------------------- NVIDIA GPUs

#: (regular expression matched against the device name, label, FP32 non-tensor TFLOP/s, memory GB/s),
#: from NVIDIA's data sheets; the first match wins, so the more specific names come first.
GPU_PEAKS = (
    (r"GH200", "GH200", 67.0, 4000),
    (r"H200 NVL", "H200 NVL", 60.0, 4800),
    (r"H200", "H200 SXM", 67.0, 4800),
    (r"H100 NVL", "H100 NVL", 60.0, 3900),
    (r"H100 PCIe", "H100 PCIe", 51.2, 2000),
    (r"H100", "H100 SXM", 67.0, 3350),
    (r"A100.*80GB.*PCIe|A100.*PCIE.*80GB", "A100 80GB PCIe", 19.5, 1935),
    (r"A100.*PCIE", "A100 40GB PCIe", 19.5, 1555),
    (r"A100.*80GB", "A100 80GB SXM", 19.5, 2039),
    (r"A100", "A100 40GB SXM", 19.5, 1555),
    (r"L40S", "L40S", 91.6, 864),
    (r"L40\b", "L40", 90.5, 864),
    (r"\bL4\b", "L4", 30.3, 300),
    (r"RTX 4090", "GeForce RTX 4090", 82.6, 1008),
    (r"RTX 3090 Ti", "GeForce RTX 3090 Ti", 40.0, 1008),
    (r"RTX 3090", "GeForce RTX 3090", 35.6, 936),
    (r"V100S", "V100S PCIe", 16.4, 1134),
    (r"V100.*PCIE", "V100 PCIe", 14.0, 900),
    (r"V100", "V100 SXM2", 15.7, 900),
    (r"\bT4\b", "T4", 8.1, 320),
    (r"A10G", "A10G", 31.2, 600),
    (r"\bA10\b", "A10", 31.2, 600),
)

#: FP32 lanes (CUDA cores) per SM by compute capability, for GPUs not in the table.
FP32_LANES = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128, (9, 0): 128}


def lookup_gpu(name: str):
    """``(label, TFLOP/s, GB/s)`` of the first :data:`GPU_PEAKS` entry matching ``name``, or None."""
    for pattern, label, tflops, gbs in GPU_PEAKS:
        if re.search(pattern, name, re.IGNORECASE):
            return label, tflops, gbs
    return None


def peaks_from_properties(props: dict) -> tuple[float, float]:
    """(GFLOP/s, GB/s) from cudaDeviceProp fields (clock rates in kHz, bus width in bits); 0 when unknown."""
    lanes = FP32_LANES.get((props.get("major"), props.get("minor")), 128)
    gflops = props.get("multiProcessorCount", 0) * props.get("clockRate", 0) * 1e3 * lanes * 2 / 1e9
    gbs = props.get("memoryClockRate", 0) * 1e3 * 2 * props.get("memoryBusWidth", 0) / 8 / 1e9
    return gflops, gbs


def gpu_peaks(device_id: int | None = None) -> Peaks:
    """The current CUDA device's peaks: the table by name, else its properties (needs CuPy)."""
    import cupy

    dev = cupy.cuda.Device() if device_id is None else cupy.cuda.Device(device_id)
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    found = lookup_gpu(name)
    if found:
        label, tflops, gbs = found
        return Peaks(tflops * 1e3, float(gbs), name, f"data sheet of the {label} (FP32 without tensor cores)")
    gflops, gbs = peaks_from_properties(props)
    return Peaks(gflops, gbs, name, "device properties (SMs x clock x FP32 lanes x 2; memory clock x 2 x bus width)")


def peaks_for(backend, gflops: float | None = None, gbs: float | None = None, recalibrate: bool = False) -> Peaks | None:
    """The peaks of ``backend``'s device with the overrides applied; None in the CUDA simulator
    (no peak means anything there) unless both are given."""
    simulated = getattr(backend, "simulated", False)
    if gflops and gbs:
        base = Peaks(gflops, gbs, backend.describe(), "given on the command line")
        return base
    if simulated:
        return None
    base = gpu_peaks() if backend.name == "cuda" else cpu_peaks(recalibrate)
    if gflops or gbs:
        what = " and ".join(w for w, v in (("GFLOP/s", gflops), ("GB/s", gbs)) if v)
        base = Peaks(gflops or base.gflops, gbs or base.gbs, base.device, f"{base.source}; {what} given on the command line")
    return base
